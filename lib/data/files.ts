/**
 * Reading data from files: the Deno-only side of the data module (the parsers in
 * `readers.ts` and `categories.ts` take text and run anywhere).
 *
 * @module
 */
import type { SequenceDataset, Vocabulary } from "./types.ts";
import { formatFromPath, parseDataset, type ReadDatasetOptions } from "./readers.ts";
import { attachCategories, type ItemCategories, parseCategories } from "./categories.ts";

/**
 * Reads a text file, re-throwing a missing file as `Deno.errors.NotFound` that names the
 * path and what it was meant to be.
 */
async function readText(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`${what} file not found: ${path}`, { cause: e });
    }
    throw e;
  }
}

/**
 * Reads an interaction file and parses it with the reader its format calls for, then
 * optionally applies k-core filtering and attaches item categories.
 *
 * @example Usage
 * ```ts ignore
 * import { readDataset } from "./files.ts";
 * const ds = await readDataset("data/Beauty.txt", {
 *   categories: "data/Beauty_item2attributes.json",
 * });
 * ```
 *
 * @param path The file to read.
 * @param options See {@linkcode ReadDatasetOptions}.
 * @throws {Deno.errors.NotFound} The file (or the categories file) does not exist.
 * @throws {TypeError} No `format` given and the extension is not `.txt`, `.inter` or `.dat`.
 */
export async function readDataset(
  path: string,
  options: ReadDatasetOptions = {},
): Promise<SequenceDataset> {
  const { categories, ...parse } = options;
  // An unknown extension is reported before the file is read.
  if (options.format === undefined) formatFromPath(path);
  let dataset = parseDataset(await readText(path, "dataset"), path, parse);
  if (categories !== undefined) {
    dataset = attachCategories(dataset, await readCategories(categories, dataset.vocab));
  }
  return dataset;
}

/**
 * Reads an item-categories file (JSON or text lines, see {@linkcode parseCategories}).
 *
 * @example Usage
 * ```ts ignore
 * import { readCategories } from "./files.ts";
 * const cats = await readCategories("data/Beauty_item2attributes.json", dataset.vocab);
 * ```
 *
 * @param path The file to read.
 * @param vocab The dataset's vocabulary.
 * @throws {Deno.errors.NotFound} The file does not exist.
 * @throws {SyntaxError} As {@linkcode parseCategories}.
 */
export async function readCategories(path: string, vocab: Vocabulary): Promise<ItemCategories> {
  return parseCategories(await readText(path, "categories"), vocab, path);
}
