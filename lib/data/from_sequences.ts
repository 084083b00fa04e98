/**
 * A data set from histories given in code, with its vocabulary: no file, and tokens may be
 * any strings (spaces included), unlike the whitespace-separated file formats.
 *
 * @module
 */
import type { SequenceDataset } from "./types.ts";
import { PAD_TOKEN, plural, quote, TokenIndex } from "./_dense.ts";

/**
 * User histories as code holds them: a `Map` or a plain object from user token to item
 * tokens in time order, or any iterable of `[user, items]` pairs.
 */
export type HistoriesInput =
  | ReadonlyMap<string, Iterable<string>>
  | Iterable<readonly [string, Iterable<string>]>
  | Readonly<Record<string, Iterable<string>>>;

/** Options of {@linkcode datasetFromSequences}. */
export interface FromSequencesOptions {
  /** A name for the data, used in `dataset.source` and in error messages. Default "sequences". */
  source?: string;
}

function entriesOf(histories: HistoriesInput): Iterable<readonly [string, Iterable<string>]> {
  if (histories instanceof Map) return histories.entries();
  if (Symbol.iterator in (histories as object)) {
    return histories as Iterable<readonly [string, Iterable<string>]>;
  }
  return Object.entries(histories as Record<string, Iterable<string>>);
}

/**
 * Builds a {@linkcode SequenceDataset} from histories held in code. Users get dense ids
 * 0..U-1 and items 1..N, both in order of first appearance (the same rule as the file
 * readers), so the same histories always give the same vocabulary. A user with an empty
 * history is skipped and counted in `report.skippedUsers`, as the readers do.
 *
 * @example Usage
 * ```ts
 * import { datasetFromSequences } from "./from_sequences.ts";
 * const data = datasetFromSequences(new Map([
 *   ["alice", ["Blue Mug", "Tea", "Kettle"]],
 *   ["bob", ["Tea", "Blue Mug"]],
 * ]));
 * // data.vocab.items = ["<pad>", "Blue Mug", "Tea", "Kettle"]; data.sequences[1] = [2, 1]
 * ```
 *
 * @param histories User token -> item tokens in time order (see {@linkcode HistoriesInput}).
 * @param options See {@linkcode FromSequencesOptions}.
 * @returns The data set, with `vocab.items[0]` the padding marker `"<pad>"`.
 * @throws {TypeError} A user or item token that is not a string, or an entry that is not a
 * `[user, items]` pair (the user and position are named).
 * @throws {RangeError} A user given twice, or no user with a non-empty history.
 */
export function datasetFromSequences(
  histories: HistoriesInput,
  options: FromSequencesOptions = {},
): SequenceDataset {
  const source = options.source ?? "sequences";
  const users = new TokenIndex(0);
  const items = new TokenIndex(1);
  const seen = new Set<string>();
  const sequences: Int32Array[] = [];
  let interactions = 0;
  let empty = 0;
  let index = 0;
  for (const entry of entriesOf(histories)) {
    if (!Array.isArray(entry) || entry.length !== 2) {
      throw new TypeError(`${source}: entry ${index} is not a [user, items] pair`);
    }
    const [user, history] = entry;
    if (typeof user !== "string") {
      throw new TypeError(`${source}: entry ${index} has user ${String(user)}, not a string`);
    }
    if (seen.has(user)) throw new RangeError(`${source}: user ${quote(user)} is given twice`);
    seen.add(user);
    if (history === null || typeof history !== "object" || !(Symbol.iterator in history)) {
      throw new TypeError(`${source}: the items of user ${quote(user)} are not a list`);
    }
    const ids: number[] = [];
    for (const token of history) {
      if (typeof token !== "string") {
        throw new TypeError(
          `${source}: item ${ids.length} of user ${quote(user)} is ${String(token)}, not a string`,
        );
      }
      ids.push(items.id(token));
    }
    index++;
    if (ids.length === 0) {
      empty++;
      continue;
    }
    users.id(user);
    sequences.push(Int32Array.from(ids));
    interactions += ids.length;
  }
  if (sequences.length === 0) {
    throw new RangeError(`${source}: no user has a non-empty history`);
  }
  const notes = empty > 0 ? [`${plural(empty, "user")} with an empty history skipped`] : [];
  return {
    source,
    vocab: { users: [...users.tokens], items: [PAD_TOKEN, ...items.tokens] },
    numItems: items.size,
    sequences,
    report: { interactions, skippedUsers: empty, notes },
  };
}
