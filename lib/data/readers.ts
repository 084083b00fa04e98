/**
 * Readers for the three interaction formats of SIGMA.md ("Data and protocol"). Each parser
 * takes the file's text and a `source` name used in error messages, so it can be tested on
 * inline strings; {@linkcode parseDataset} picks the parser by format, and `readDataset`
 * (in the Deno-only `files.ts`) reads a file first.
 *
 * Ids in the files are tokens (strings). They are remapped to dense ids: users 0..U-1 and
 * items 1..N, both in order of first appearance, with 0 reserved for padding. An item whose
 * token is `"0"` is a real item and gets a dense id >= 1.
 *
 * @module
 */
import type { DataReport, SequenceDataset } from "./types.ts";
import { checkNonNegativeInt, PAD_TOKEN, plural, quote, splitLines, TokenIndex } from "./_dense.ts";
import { fiveCore } from "./filter.ts";

/** The interaction file formats {@linkcode parseDataset} understands. */
export type DatasetFormat = "lines" | "recbole" | "movielens";

/** Options of {@linkcode readMovieLensRatings}. */
export interface MovieLensOptions {
  /** Ratings below this are dropped (SIGMA.md keeps ratings >= 4). Default 4. */
  minRating?: number;
}

/** Options of `readDataset` (in `files.ts`). */
export interface ReadDatasetOptions extends MovieLensOptions {
  /**
   * The file format; by default taken from the extension: `.txt` sequence lines,
   * `.inter` RecBole atomic file, `.dat` MovieLens ratings.
   */
  format?: DatasetFormat;
  /**
   * When set (> 0), apply k-core filtering with this k after reading (see
   * {@linkcode fiveCore}). Default 0: no filtering, the shipped files are already 5-core.
   */
  kCore?: number;
  /** Path of an item-categories file to attach (see {@linkcode readCategories}). */
  categories?: string;
  /** Categories of that file to leave out (see `ParseCategoriesOptions.drop`). */
  dropCategories?: string[];
}

/**
 * Parses "sequence lines": `user item item ...`, whitespace separated, items in time order.
 *
 * Blank lines are ignored. A line with a user and no items is an empty history: it is
 * skipped and counted in `report.skippedUsers`. A user token on two lines is an error.
 *
 * @example Usage
 * ```ts
 * import { readSequenceLines } from "./readers.ts";
 * const ds = readSequenceLines("u1 0 7 9\nu2 7 0\n", "inline");
 * // ds.vocab.items = ["<pad>", "0", "7", "9"], ds.sequences[1] = [2, 1]
 * ```
 *
 * @param text The file's content.
 * @param source A name for the data (e.g. the path), used in errors and `dataset.source`.
 * @throws {SyntaxError} A user token repeated on a second line (both line numbers named).
 */
export function readSequenceLines(text: string, source: string): SequenceDataset {
  const users = new TokenIndex(0);
  const items = new TokenIndex(1);
  const firstLine = new Map<string, number>();
  const sequences: Int32Array[] = [];
  let interactions = 0;
  let empty = 0;
  const lines = splitLines(text, source);
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n].trim();
    if (line === "") continue;
    const fields = line.split(/\s+/);
    const user = fields[0];
    const seen = firstLine.get(user);
    if (seen !== undefined) {
      throw new SyntaxError(
        `${source}:${n + 1}: user ${quote(user)} already has a history on line ${seen}`,
      );
    }
    firstLine.set(user, n + 1);
    if (fields.length === 1) {
      // Nothing to learn from or evaluate on; counted so the drop is visible.
      empty++;
      continue;
    }
    users.id(user);
    const seq = new Int32Array(fields.length - 1);
    for (let j = 1; j < fields.length; j++) seq[j - 1] = items.id(fields[j]);
    sequences.push(seq);
    interactions += seq.length;
  }
  const notes: string[] = [];
  if (empty > 0) notes.push(`${plural(empty, "user")} with an empty history skipped`);
  return build(source, users, items, sequences, { interactions, skippedUsers: empty, notes });
}

/** One parsed interaction of a tabular file, before grouping by user. */
interface Row {
  user: string;
  item: string;
  time: number;
}

/**
 * Parses a RecBole atomic `.inter` file: a tab-separated header such as
 * `user_id:token\titem_id:token\trating:float\ttimestamp:float`, then one interaction per
 * line. Columns are found by name (`user_id`, `item_id`, `timestamp`; the part before the
 * `:` type suffix); `timestamp` is optional. Each user's interactions are sorted by
 * timestamp, stably, so file order breaks ties (and is the order when there is no
 * timestamp column).
 *
 * @example Usage
 * ```ts
 * import { readRecBoleInter } from "./readers.ts";
 * const ds = readRecBoleInter(
 *   "user_id:token\titem_id:token\ttimestamp:float\na\tx\t2\na\ty\t1\n",
 *   "inline.inter",
 * );
 * // ds.sequences[0] lists y then x
 * ```
 *
 * @param text The file's content.
 * @param source A name for the data (e.g. the path), used in errors and `dataset.source`.
 * @throws {SyntaxError} Missing header or column, wrong column count, empty token or a
 * timestamp that is not a number; the message names `source:line` and the text.
 */
export function readRecBoleInter(text: string, source: string): SequenceDataset {
  const lines = splitLines(text, source);
  let h = 0;
  while (h < lines.length && lines[h].trim() === "") h++;
  if (h === lines.length) throw new SyntaxError(`${source}: no header line (the file is empty)`);
  const header = lines[h].split("\t").map((f) => f.trim());
  const column = (name: string): number =>
    header.findIndex((f) => f === name || f.startsWith(`${name}:`));
  const userCol = column("user_id");
  const itemCol = column("item_id");
  const timeCol = column("timestamp");
  for (const [name, col] of [["user_id", userCol], ["item_id", itemCol]] as const) {
    if (col < 0) {
      throw new SyntaxError(
        `${source}:${h + 1}: header has no ${name} column: ${quote(lines[h])}`,
      );
    }
  }
  const rows: Row[] = [];
  for (let n = h + 1; n < lines.length; n++) {
    const raw = lines[n];
    if (raw.trim() === "") continue;
    const fields = raw.split("\t");
    if (fields.length !== header.length) {
      throw new SyntaxError(
        `${source}:${
          n + 1
        }: expected ${header.length} tab-separated columns, got ${fields.length}: ${quote(raw)}`,
      );
    }
    const user = fields[userCol].trim();
    const item = fields[itemCol].trim();
    if (user === "" || item === "") {
      throw new SyntaxError(`${source}:${n + 1}: empty user or item token: ${quote(raw)}`);
    }
    let time = 0;
    if (timeCol >= 0) time = parseNumber(fields[timeCol], "timestamp", source, n + 1, raw);
    rows.push({ user, item, time });
  }
  return fromRows(source, rows, timeCol >= 0, { interactions: rows.length, notes: [] });
}

/**
 * Parses MovieLens `ratings.dat`: `user::item::rating::timestamp` per line. Ratings below
 * `minRating` (default 4) are dropped and counted; users left with nothing are counted as
 * skipped. Each user's kept interactions are sorted by timestamp, stably.
 *
 * @example Usage
 * ```ts
 * import { readMovieLensRatings } from "./readers.ts";
 * const ds = readMovieLensRatings("1::10::5::200\n1::11::2::100\n1::12::4::100\n", "r.dat");
 * // ds.sequences[0] lists 12 then 10; the rating-2 line is dropped
 * ```
 *
 * @param text The file's content.
 * @param source A name for the data (e.g. the path), used in errors and `dataset.source`.
 * @param options See {@linkcode MovieLensOptions}.
 * @throws {SyntaxError} A line without exactly 4 `::` fields, an empty token or a
 * non-numeric rating or timestamp; the message names `source:line` and the text.
 * @throws {RangeError} `minRating` is not a finite number.
 */
export function readMovieLensRatings(
  text: string,
  source: string,
  options: MovieLensOptions = {},
): SequenceDataset {
  const minRating = options.minRating ?? 4;
  if (!Number.isFinite(minRating)) {
    throw new RangeError(`minRating must be a finite number, got ${minRating}`);
  }
  const lines = splitLines(text, source);
  const rows: Row[] = [];
  const allUsers = new Set<string>();
  let read = 0;
  for (let n = 0; n < lines.length; n++) {
    const raw = lines[n];
    if (raw.trim() === "") continue;
    const fields = raw.trim().split("::");
    if (fields.length !== 4) {
      throw new SyntaxError(
        `${source}:${n + 1}: expected user::item::rating::timestamp, got ${quote(raw)}`,
      );
    }
    const user = fields[0].trim();
    const item = fields[1].trim();
    if (user === "" || item === "") {
      throw new SyntaxError(`${source}:${n + 1}: empty user or item token: ${quote(raw)}`);
    }
    const rating = parseNumber(fields[2], "rating", source, n + 1, raw);
    const time = parseNumber(fields[3], "timestamp", source, n + 1, raw);
    read++;
    allUsers.add(user);
    if (rating >= minRating) rows.push({ user, item, time });
  }
  const notes: string[] = [];
  const dropped = read - rows.length;
  if (dropped > 0) notes.push(`${plural(dropped, "rating")} below ${minRating} dropped`);
  return fromRows(source, rows, true, { interactions: read, notes }, allUsers.size);
}

/** Options of {@linkcode parseDataset}: those of {@linkcode ReadDatasetOptions} but the file. */
export type ParseDatasetOptions = Omit<ReadDatasetOptions, "categories">;

/**
 * Parses an interaction file's text with the reader its format calls for, then optionally
 * applies k-core filtering. The part of `readDataset` (in `files.ts`) that needs no file
 * system, for data fetched or uploaded in a browser.
 *
 * @example Usage
 * ```ts
 * import { parseDataset } from "./readers.ts";
 * const ds = parseDataset("u1 a b c\nu2 b c\n", "inline.txt");
 * // ds.numItems = 3
 * ```
 *
 * @param text The file's content.
 * @param source Its name: the format comes from its extension unless `options.format` says.
 * @param options See {@linkcode ParseDatasetOptions}.
 * @throws {TypeError} No `format` given and the extension is not `.txt`, `.inter` or `.dat`;
 * or `minRating` given for data that is not MovieLens ratings.
 * @throws {SyntaxError} As the format's reader.
 * @throws {RangeError} No interaction is left (an empty file, or every one filtered out), or
 * `kCore` is not a non-negative integer.
 */
export function parseDataset(
  text: string,
  source: string,
  options: ParseDatasetOptions = {},
): SequenceDataset {
  const format = options.format ?? formatFromPath(source);
  if (options.minRating !== undefined && format !== "movielens") {
    // Other layouts have no ratings: ignoring it would look like a filter that ran.
    throw new TypeError(
      `minRating must go with MovieLens ratings (format "movielens"); ${source} is read as "${format}"`,
    );
  }
  if (options.kCore !== undefined) checkNonNegativeInt("kCore", options.kCore);
  let dataset: SequenceDataset;
  switch (format) {
    case "lines":
      dataset = readSequenceLines(text, source);
      break;
    case "recbole":
      dataset = readRecBoleInter(text, source);
      break;
    case "movielens":
      dataset = readMovieLensRatings(text, source, options);
      break;
    default:
      throw new TypeError(`unknown dataset format ${quote(String(format))} for ${source}`);
  }
  if (options.kCore !== undefined && options.kCore > 0) dataset = fiveCore(dataset, options.kCore);
  if (dataset.numItems === 0) {
    // Left to the model, this surfaced as "numItems must be a positive integer, got 0".
    const why = dataset.report.notes.length > 0
      ? `: ${dataset.report.notes.join("; ")}`
      : dataset.report.interactions === 0
      ? " (the file holds no interactions)"
      : "";
    throw new RangeError(`${source}: no interactions left to train or evaluate on${why}`);
  }
  return dataset;
}

/**
 * The format {@linkcode parseDataset} uses for `path` when none is given.
 *
 * @param path A file path.
 * @throws {TypeError} The extension is not `.txt`, `.inter` or `.dat`.
 */
export function formatFromPath(path: string): DatasetFormat {
  const lower = path.toLowerCase();
  if (lower.endsWith(".txt")) return "lines";
  if (lower.endsWith(".inter")) return "recbole";
  if (lower.endsWith(".dat")) return "movielens";
  throw new TypeError(
    `cannot tell the format of ${path} from its extension (expected .txt, .inter or .dat); ` +
      `give its format: --format on the command line, options.format in code ` +
      `("lines", "recbole" or "movielens")`,
  );
}

function parseNumber(
  field: string,
  name: string,
  source: string,
  line: number,
  raw: string,
): number {
  const t = field.trim();
  // Number("") is 0, which would hide an empty field; reject it explicitly.
  const x = t === "" ? NaN : Number(t);
  if (!Number.isFinite(x)) {
    throw new SyntaxError(`${source}:${line}: ${name} ${quote(t)} is not a number: ${quote(raw)}`);
  }
  return x;
}

/**
 * Groups rows by user (in order of first appearance), stably sorts each user's rows by time
 * when `sortByTime`, and assigns dense item ids in file order of the kept rows.
 */
function fromRows(
  source: string,
  rows: Row[],
  sortByTime: boolean,
  partial: Omit<DataReport, "skippedUsers">,
  usersSeen?: number,
): SequenceDataset {
  const byUser = new Map<string, Row[]>();
  for (const row of rows) {
    let list = byUser.get(row.user);
    if (list === undefined) byUser.set(row.user, list = []);
    list.push(row);
  }
  const items = new TokenIndex(1);
  // Item ids follow first appearance in the file, independent of the time sort.
  for (const row of rows) items.id(row.item);
  const users = new TokenIndex(0);
  const sequences: Int32Array[] = [];
  for (const [user, list] of byUser) {
    // Array.prototype.sort is stable, so equal timestamps keep file order.
    if (sortByTime) list.sort((a, b) => a.time - b.time);
    users.id(user);
    sequences.push(Int32Array.from(list, (r) => items.get(r.item)!));
  }
  const notes = [...partial.notes];
  const skippedUsers = usersSeen === undefined ? 0 : usersSeen - users.size;
  if (skippedUsers > 0) {
    notes.push(`${plural(skippedUsers, "user")} with no interaction left skipped`);
  }
  return build(source, users, items, sequences, {
    interactions: partial.interactions,
    skippedUsers,
    notes,
  });
}

function build(
  source: string,
  users: TokenIndex,
  items: TokenIndex,
  sequences: Int32Array[],
  report: DataReport,
): SequenceDataset {
  return {
    source,
    vocab: { users: [...users.tokens], items: [PAD_TOKEN, ...items.tokens] },
    numItems: items.size,
    sequences,
    report,
  };
}
