/**
 * Item categories (attributes), used by the Diversity@K and coverage metrics.
 *
 * @module
 */
import type { SequenceDataset, Vocabulary } from "./types.ts";
import { plural, quote, splitLines, TokenIndex } from "./_dense.ts";

/** Item categories over a dataset's dense item ids, ready to attach to it. */
export interface ItemCategories {
  /** `categories[i]` lists the dense category ids of item `i`; `categories[0]` is empty. */
  categories: Int32Array[];
  /** Number of distinct categories; ids run 0..numCategories-1. */
  numCategories: number;
  /** `categoryTokens[c]` is the token of dense category `c` in the source file. */
  categoryTokens: string[];
  /** What was ignored or missing, e.g. items of the file that are not in the vocabulary. */
  notes: string[];
}

/** Options of {@linkcode parseCategories}. */
export interface ParseCategoriesOptions {
  /**
   * Category tokens to leave out, e.g. a root category nearly every item carries (which
   * makes Diversity@K, Eq. 15, 0 for every list). Each must occur in the file.
   */
  drop?: readonly string[];
}

/**
 * A category on more than this share of the data set's items is named in the notes: Eq. 15
 * counts two items that share it as alike, so Diversity@K is near 0 for every list.
 */
export const DOMINANT_CATEGORY_SHARE = 0.9;

/**
 * Parses an item-categories text against a vocabulary. Two layouts are accepted, told
 * apart by the first non-blank character:
 * - JSON `{ "itemToken": [category, ...], ... }` (like `Beauty_item2attributes.json`);
 *   categories may be numbers or strings;
 * - text lines `itemToken cat cat ...`, whitespace separated; blank lines ignored.
 *
 * Category tokens are densified to 0..C-1 in order of first appearance among items of the
 * vocabulary. Items absent from the vocabulary are ignored and counted in `notes`; vocabulary
 * items with no categories get an empty list (also counted). Repeated categories of one
 * item are kept once. `options.drop` leaves categories out; a category on more than 90% of
 * the items ({@linkcode DOMINANT_CATEGORY_SHARE}) is named in `notes` with how to drop it.
 *
 * @example Usage
 * ```ts
 * import { parseCategories } from "./categories.ts";
 * const vocab = { users: ["u"], items: ["<pad>", "a", "b"] };
 * const c = parseCategories('{"a": [7, 3], "b": [3]}', vocab, "cats.json");
 * // c.categories = [[], [0, 1], [1]], c.numCategories = 2
 * ```
 *
 * @param text The file's content.
 * @param vocab The dataset's vocabulary (item tokens to dense ids).
 * @param source A name for the text, used in error messages.
 * @param options See {@linkcode ParseCategoriesOptions}.
 * @throws {SyntaxError} Invalid JSON, a JSON value that is not a list of strings or
 * numbers, or an item listed twice (both line numbers named).
 * @throws {RangeError} No item of `vocab` has a category, or a category to drop that the
 * file does not have (named).
 */
export function parseCategories(
  text: string,
  vocab: Vocabulary,
  source: string,
  options: ParseCategoriesOptions = {},
): ItemCategories {
  const itemId = new Map<string, number>();
  for (let i = 1; i < vocab.items.length; i++) itemId.set(vocab.items[i], i);
  const cats = new TokenIndex(0);
  const lists: (Int32Array | undefined)[] = new Array(vocab.items.length).fill(undefined);
  let unknown = 0;
  let knownEmpty = 0;
  const start = text.trimStart()[0];
  // "[" is JSON too (an array at the top), not the lines layout: named as the wrong JSON.
  const read = start === "{" || start === "["
    ? jsonEntries(text, source)
    : lineEntries(text, source);
  const entries = withoutDropped(read, options.drop ?? [], source);
  for (const [item, tokens] of entries) {
    const i = itemId.get(item);
    if (i === undefined) {
      unknown++;
      continue;
    }
    if (tokens.length === 0) knownEmpty++;
    lists[i] = Int32Array.from(new Set(tokens.map((t) => cats.id(t))));
  }

  const empty = new Int32Array(0);
  let missing = 0;
  const categories = lists.map((l, i) => {
    if (i > 0 && (l === undefined || l.length === 0)) missing++;
    return i === 0 || l === undefined ? empty : l;
  });
  const items = vocab.items.length - 1;
  if (items > 0 && missing === items) {
    // Diversity and coverage would be 0 for every model: found out before training.
    throw new RangeError(
      knownEmpty > 0
        ? `${source}: no item of the data set has a category: the ${
          plural(knownEmpty, "item")
        } of the data set it names ${knownEmpty === 1 ? "has" : "have"} empty lists`
        : `${source}: no item of the data set has a category: the file names ${
          plural(unknown, "item")
        }, none of them in the data set (keyed by other item ids?)`,
    );
  }
  const notes: string[] = [];
  if (unknown > 0) {
    notes.push(`${source}: ${plural(unknown, "item")} not in the vocabulary ignored`);
  }
  if (missing > 0) {
    notes.push(`${source}: ${plural(missing, "vocabulary item")} without categories`);
  }
  notes.push(...dominantNotes(categories, [...cats.tokens], source));
  return { categories, numCategories: cats.size, categoryTokens: [...cats.tokens], notes };
}

/** `entries` with the categories `drop` names left out; each must occur. */
function withoutDropped(
  entries: [string, string[]][],
  drop: readonly string[],
  source: string,
): [string, string[]][] {
  if (drop.length === 0) return entries;
  const dropped = new Set(drop);
  const found = new Set<string>();
  const kept = entries.map(([item, tokens]): [string, string[]] => [
    item,
    tokens.filter((t) => {
      if (!dropped.has(t)) return true;
      found.add(t);
      return false;
    }),
  ]);
  const absent = drop.find((t) => !found.has(t));
  if (absent !== undefined) {
    throw new RangeError(`${source}: category ${quote(absent)} to drop is on no item of the file`);
  }
  return kept;
}

/** `text` as one shell word: as it is when plain, else in single quotes. */
function shellWord(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

/** A note for each category on more than {@linkcode DOMINANT_CATEGORY_SHARE} of the items. */
function dominantNotes(categories: Int32Array[], tokens: string[], source: string): string[] {
  const items = categories.length - 1;
  if (items < 1) return [];
  const counts = new Int32Array(tokens.length);
  for (const list of categories) for (const c of list) counts[c]++;
  const notes: string[] = [];
  counts.forEach((n, c) => {
    if (n / items <= DOMINANT_CATEGORY_SHARE) return;
    notes.push(
      `${source}: category ${quote(tokens[c])} is on ${(100 * n / items).toFixed(1)}% of ` +
        `the items, so Diversity@K (Eq. 15) counts nearly every pair as alike; ` +
        `--drop-category ${shellWord(tokens[c])} leaves it out (ILD@K weighs it less)`,
    );
  });
  return notes;
}

/** The `[item, categories]` pairs of the JSON layout, in the file's order. */
function jsonEntries(text: string, source: string): [string, string[]][] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${source}: invalid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new SyntaxError(`${source}: expected a JSON object mapping item tokens to lists`);
  }
  throwOnRepeatedKey(text, source);
  return Object.entries(json as Record<string, unknown>).map(([item, value]) => {
    // A category is a non-empty string or a finite number: 1e400 parses as Infinity and
    // "" names nothing; both were categories before.
    const isCategory = (v: unknown) =>
      (typeof v === "string" && v.trim() !== "") || (typeof v === "number" && Number.isFinite(v));
    if (!Array.isArray(value) || !value.every(isCategory)) {
      throw new SyntaxError(
        `${source}: item ${quote(item)} maps to ${
          quote(JSON.stringify(value) ?? String(value))
        }, expected a list of non-empty strings or finite numbers`,
      );
    }
    return [item, value.map(String)];
  });
}

/**
 * Throws if the top-level object of `text` (valid JSON) names an item twice: `JSON.parse`
 * would silently keep the last list, so one item's categories would depend on which of two
 * lines a person meant. Both lines are named.
 */
function throwOnRepeatedKey(text: string, source: string): void {
  const firstLine = new Map<string, number>();
  let depth = 0;
  let line = 1;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\n" || (c === "\r" && text[i + 1] !== "\n")) line++;
    else if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
    else if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === "\\") i++;
      // A string in the top object followed by ':' is a key (values there are lists).
      let next = i + 1;
      while (/\s/.test(text[next] ?? "")) next++;
      if (depth !== 1 || text[next] !== ":") continue;
      const key = JSON.parse(text.slice(start, i + 1)) as string;
      const seen = firstLine.get(key);
      if (seen !== undefined) {
        throw new SyntaxError(
          `${source}:${line}: item ${quote(key)} already has categories on line ${seen}`,
        );
      }
      firstLine.set(key, line);
    }
  }
}

/** The `[item, categories]` pairs of the text layout, in line order; an item only once. */
function lineEntries(text: string, source: string): [string, string[]][] {
  const lines = splitLines(text, source);
  const firstLine = new Map<string, number>();
  const entries: [string, string[]][] = [];
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (line === "") continue;
    const [item, ...tokens] = line.split(/\s+/);
    const seen = firstLine.get(item);
    if (seen !== undefined) {
      throw new SyntaxError(
        `${source}:${n + 1}: item ${quote(item)} already has categories on line ${seen}`,
      );
    }
    firstLine.set(item, n + 1);
    entries.push([item, tokens]);
  }
  return entries;
}

/**
 * Returns a copy of `dataset` with `categories` attached and their notes appended to the
 * report.
 *
 * @param dataset The dataset the categories were parsed against.
 * @param categories The result of {@linkcode parseCategories} (or `readCategories`).
 * @throws {RangeError} The categories cover a different number of items.
 */
export function attachCategories(
  dataset: SequenceDataset,
  categories: ItemCategories,
): SequenceDataset {
  if (categories.categories.length !== dataset.numItems + 1) {
    throw new RangeError(
      `categories cover ${
        categories.categories.length - 1
      } items, the dataset has ${dataset.numItems}`,
    );
  }
  return {
    ...dataset,
    categories: categories.categories,
    numCategories: categories.numCategories,
    report: { ...dataset.report, notes: [...dataset.report.notes, ...categories.notes] },
  };
}
