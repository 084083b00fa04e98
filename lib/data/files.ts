/**
 * Reading data from files: the Deno-only side of the data module (the parsers in
 * `readers.ts` and `categories.ts` take text and run anywhere).
 *
 * @module
 */
import { shownPath } from "../_io.ts";
import type { SequenceDataset, Vocabulary } from "./types.ts";
import { formatFromPath, parseDataset, type ReadDatasetOptions } from "./readers.ts";
import {
  attachCategories,
  type ItemCategories,
  parseCategories,
  type ParseCategoriesOptions,
} from "./categories.ts";

/** The largest data file read: JavaScript strings stop at about 512 MiB. */
export const MAX_DATA_FILE_BYTES = 512 * 1024 * 1024;

/**
 * Reads a UTF-8 text file: a missing file is `Deno.errors.NotFound` naming the path and
 * what it was meant to be; a device, a folder, a file over {@linkcode MAX_DATA_FILE_BYTES}
 * or one that is not UTF-8 is refused before (or instead of) being read whole. A leading
 * byte-order mark is dropped.
 */
export async function readText(path: string, what: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`${what} file not found: ${shownPath(path)}`, { cause: e });
    }
    throw e;
  }
  if (!info.isFile) {
    throw new TypeError(`${what} file ${path} is not a regular file (a folder or a device?)`);
  }
  if (info.size > MAX_DATA_FILE_BYTES) {
    throw new RangeError(
      `${what} file ${path} holds ${info.size} bytes; at most ${MAX_DATA_FILE_BYTES} are read`,
    );
  }
  const bytes = await Deno.readFile(path);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SyntaxError(`${what} file ${path} is not UTF-8 text (a binary file?)`);
  }
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
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
  const { categories, dropCategories, ...parse } = options;
  // An unknown extension is reported before the file is read.
  if (options.format === undefined) formatFromPath(path);
  let dataset = parseDataset(await readText(path, "dataset"), path, parse);
  if (categories !== undefined) {
    dataset = attachCategories(
      dataset,
      await readCategories(categories, dataset.vocab, { drop: dropCategories }),
    );
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
 * @param options See {@linkcode ParseCategoriesOptions} (categories to drop).
 * @throws {Deno.errors.NotFound} The file does not exist.
 * @throws {SyntaxError} As {@linkcode parseCategories}.
 */
export async function readCategories(
  path: string,
  vocab: Vocabulary,
  options: ParseCategoriesOptions = {},
): Promise<ItemCategories> {
  return parseCategories(await readText(path, "categories"), vocab, path, options);
}
