/**
 * k-core filtering of a {@linkcode SequenceDataset}.
 *
 * @module
 */
import type { SequenceDataset } from "./types.ts";
import { checkPositiveInt, PAD_TOKEN, plural } from "./_dense.ts";

/**
 * Keeps the k-core: repeatedly removes users with fewer than `k` interactions and items
 * with fewer than `k` interactions (counting repeats) until nothing changes, so every
 * remaining user and item has at least `k`. Ids are re-densified keeping the original
 * relative order; categories, if any, follow their items. The counts removed are added to
 * `report.notes` and removed users to `report.skippedUsers`; `report.interactions` becomes
 * the number of interactions kept.
 *
 * @example Usage
 * ```ts
 * import { fiveCore } from "./filter.ts";
 * import { readSequenceLines } from "./readers.ts";
 * const core = fiveCore(readSequenceLines("a 1 2\nb 1 2\nc 3\n", "inline"), 2);
 * // core.sequences = [[1, 2], [1, 2]]; user c and item 3 are gone
 * ```
 *
 * @param dataset The data to filter; it is not modified.
 * @param k Minimum interactions per user and per item, a positive integer. Default 5.
 * @returns A new dataset.
 * @throws {RangeError} `k` is not a positive integer.
 */
export function fiveCore(dataset: SequenceDataset, k = 5): SequenceDataset {
  checkPositiveInt("k", k);
  const { userAlive, itemAlive, rounds } = coreMasks(dataset.sequences, dataset.numItems, k);
  const { items, newId } = keptItems(dataset, itemAlive);
  const users: string[] = [];
  const kept: Int32Array[] = [];
  let interactions = 0;
  dataset.sequences.forEach((sequence, u) => {
    if (!userAlive[u]) return;
    users.push(dataset.vocab.users[u]);
    const seq = sequence.filter((i) => itemAlive[i] === 1).map((i) => newId[i]);
    kept.push(seq);
    interactions += seq.length;
  });
  const before = dataset.sequences.reduce((sum, s) => sum + s.length, 0);
  const removedUsers = dataset.sequences.length - users.length;
  const removedItems = dataset.numItems - (items.length - 1);
  const result: SequenceDataset = {
    source: dataset.source,
    vocab: { users, items },
    numItems: items.length - 1,
    sequences: kept,
    report: {
      interactions,
      skippedUsers: dataset.report.skippedUsers + removedUsers,
      notes: [
        ...dataset.report.notes,
        `${k}-core filter (${plural(rounds, "pass", "passes")}): removed ${
          plural(removedUsers, "user")
        }, ` +
        `${plural(removedItems, "item")}, ${plural(before - interactions, "interaction")}`,
      ],
    },
  };
  if (dataset.categories !== undefined) {
    const cats: Int32Array[] = [new Int32Array(0)];
    for (let i = 1; i <= dataset.numItems; i++) if (itemAlive[i]) cats.push(dataset.categories[i]);
    result.categories = cats;
    result.numCategories = dataset.numCategories;
  }
  return result;
}

/**
 * Which users and items survive the k-core (1 = kept; item 0, the padding, never), and the
 * number of passes it took.
 */
function coreMasks(
  sequences: Int32Array[],
  numItems: number,
  k: number,
): { userAlive: Uint8Array; itemAlive: Uint8Array; rounds: number } {
  const userAlive = new Uint8Array(sequences.length).fill(1);
  const itemAlive = new Uint8Array(numItems + 1).fill(1);
  itemAlive[0] = 0;
  const count = new Int32Array(numItems + 1);
  let rounds = 0;
  // Each removal can push others below k, so iterate until a pass removes nothing; at that
  // point the counts were computed over exactly the surviving users and items.
  for (let changed = true; changed;) {
    changed = false;
    rounds++;
    count.fill(0);
    for (let u = 0; u < sequences.length; u++) {
      if (!userAlive[u]) continue;
      for (const i of sequences[u]) if (itemAlive[i]) count[i]++;
    }
    for (let i = 1; i <= numItems; i++) {
      if (itemAlive[i] && count[i] < k) {
        itemAlive[i] = 0;
        changed = true;
      }
    }
    for (let u = 0; u < sequences.length; u++) {
      if (!userAlive[u]) continue;
      let n = 0;
      for (const i of sequences[u]) if (itemAlive[i]) n++;
      if (n < k) {
        userAlive[u] = 0;
        changed = true;
      }
    }
  }
  return { userAlive, itemAlive, rounds };
}

/** The surviving items' names (padding first) and each old id's new, dense id. */
function keptItems(
  dataset: SequenceDataset,
  itemAlive: Uint8Array,
): { items: string[]; newId: Int32Array } {
  const newId = new Int32Array(dataset.numItems + 1);
  const items = [PAD_TOKEN];
  for (let i = 1; i <= dataset.numItems; i++) {
    if (itemAlive[i]) {
      newId[i] = items.length;
      items.push(dataset.vocab.items[i]);
    }
  }
  return { items, newId };
}
