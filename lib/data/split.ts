/**
 * The leave-one-out protocol of SIGMA.md ("Data and protocol").
 *
 * @module
 */
import type { EvalExample, LeaveOneOutSplit, SequenceDataset } from "./types.ts";

/** Fewest items a history needs to give a training prefix, a validation and a test target. */
export const MIN_HISTORY = 3;

/** The result of {@linkcode leaveOneOut}. */
export interface LeaveOneOutResult {
  /** The split. */
  split: LeaveOneOutSplit;
  /** Users skipped because their history had fewer than {@linkcode MIN_HISTORY} items. */
  skipped: number;
}

/**
 * Splits each history `s` (in user order) into training prefix `s[:-2]`, validation
 * (history `s[:-2]`, target `s[-2]`) and test (history `s[:-1]`, target `s[-1]`).
 *
 * Users with fewer than 3 items cannot give all three and are skipped and counted in
 * `skipped`, never silently. A training prefix is kept only when it has at least 2 items
 * (a single item has no next-item target), so `split.train.length` can be smaller than the
 * number of validation examples. The returned arrays are views on the dataset's sequences,
 * not copies.
 *
 * @example Usage
 * ```ts
 * import { leaveOneOut } from "./split.ts";
 * import { readSequenceLines } from "./readers.ts";
 * const { split, skipped } = leaveOneOut(readSequenceLines("a 1 2 3 4\nb 1 2\n", "x"));
 * // split.train = [[1, 2]], split.valid[0].target = 3, split.test[0].target = 4, skipped = 1
 * ```
 *
 * @param dataset The data to split.
 */
export function leaveOneOut(dataset: SequenceDataset): LeaveOneOutResult {
  const train: Int32Array[] = [];
  const valid: EvalExample[] = [];
  const test: EvalExample[] = [];
  let skipped = 0;
  dataset.sequences.forEach((s, user) => {
    const n = s.length;
    if (n < MIN_HISTORY) {
      skipped++;
      return;
    }
    const prefix = s.subarray(0, n - 2);
    if (prefix.length >= 2) train.push(prefix);
    valid.push({ user, history: prefix, target: s[n - 2] });
    test.push({ user, history: s.subarray(0, n - 1), target: s[n - 1] });
  });
  return { split: { train, valid, test }, skipped };
}
