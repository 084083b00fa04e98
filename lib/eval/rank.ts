/**
 * Full-catalogue ranking of a target: a host reference ({@linkcode rankOfTarget}) and its
 * batched counterpart on the active tfjs backend ({@linkcode rankBatch}), plus the top-k
 * items after exclusion ({@linkcode topKBatch}) for the diversity metrics.
 *
 * The rule, shared by all three: item 0 (padding) and a row's excluded items (its history)
 * never compete; ties are pessimistic, so an item scoring equal to the target ranks above
 * it; and the target itself is never excluded, even when it appears in the history.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor2D } from "../nn/tensor_types.ts";
import type { EvalBatch } from "../data/types.ts";
import { prepareBatch, rankTensors, readRanks } from "./_device.ts";

export { RANK_OF_TARGET_KERNEL } from "./_device.ts";

/**
 * The 0-based rank of `target` among the items `1..scores.length - 1`: the number of items
 * `j` that are not the target, not padding (0) and not in `exclude`, with
 * `scores[j] >= scores[target]`. Ties count against the target (pessimistic), so a
 * constant scorer ranks every target last and scores 0 on every metric whose cutoff is at
 * most the number of competing items. Scores are compared as float32, as on the device.
 *
 * The target is never excluded, even when it is in `exclude`. SIGMA.md excludes history
 * items from the ranking; the usual reference code does that by setting their scores to
 * -inf, which also buries a target the user had already interacted with (a repeat
 * purchase or re-watch) and makes it a certain miss whatever the model predicts. Ranking
 * the target by its own score keeps those examples measurable; history items other than
 * the target are still removed from the competition.
 *
 * @example Usage
 * ```ts
 * import { rankOfTarget } from "./rank.ts";
 * // Items 1..4; item 2 is excluded, item 3 ties with the target 1 and ranks above it.
 * rankOfTarget([0, 0.5, 0.9, 0.5, 0.1], 1, [2]); // 1
 * ```
 *
 * @param scores Scores of items 0..numItems (index 0 is padding and ignored).
 * @param target The held-out item, 1..numItems.
 * @param exclude Items that do not compete (the history); may contain 0 and repeats.
 * @returns The number of competing items ranked above the target.
 * @throws {RangeError} A target or excluded id out of range, or a NaN score.
 */
export function rankOfTarget(
  scores: Float32Array | readonly number[],
  target: number,
  exclude: Iterable<number> = [],
): number {
  const width = scores.length;
  if (!Number.isInteger(target) || target < 1 || target >= width) {
    throw new RangeError(`Target ${target} is outside the item ids 1..${width - 1}`);
  }
  const excluded = new Set<number>();
  for (const e of exclude) {
    if (!Number.isInteger(e) || e < 0 || e >= width) {
      throw new RangeError(`Excluded item ${e} is outside the item ids 0..${width - 1}`);
    }
    excluded.add(e);
  }
  for (let j = 0; j < width; j++) {
    if (Number.isNaN(scores[j])) throw new RangeError(`scores[${j}] is NaN`);
  }
  const t = Math.fround(scores[target]);
  let rank = 0;
  for (let j = 1; j < width; j++) {
    if (j !== target && !excluded.has(j) && Math.fround(scores[j]) >= t) rank++;
  }
  return rank;
}

/**
 * The rank of each row's target, as {@linkcode rankOfTarget} defines it, computed on the
 * active backend. The exclusion mask is built on the host and uploaded once; the counts
 * are exact integer sums. No tensors are left behind; `scores` is not disposed.
 *
 * @example Usage
 * ```ts ignore
 * const ranks = await rankBatch(model.scores(batch), batch); // Int32Array, one per row
 * ```
 *
 * @param scores `[batch.batch, numItems + 1]` scores; column 0 is padding.
 * @param batch The rows' targets, users and exclusions.
 * @returns One 0-based rank per row.
 * @throws {RangeError} Scores of the wrong shape, a target or excluded id out of range, or
 * a row holding NaN scores (the row and user are named).
 */
export async function rankBatch(scores: Tensor2D, batch: EvalBatch): Promise<Int32Array> {
  const prep = prepareBatch(batch, scores.shape);
  const t = tf.tidy(() => rankTensors(scores, prep));
  return (await readRanks(t, prep, batch)).ranks;
}

/**
 * The `k` highest-scoring competing items of each row, best first: padding and the row's
 * excluded items removed, the target kept (as in {@linkcode rankOfTarget}). A row with
 * fewer than `k` competing items gets a shorter list. Equal scores come in the order
 * `tf.topk` gives them on the active backend.
 *
 * @example Usage
 * ```ts ignore
 * const lists = await topKBatch(model.scores(batch), batch, 20); // Int32Array per row
 * ```
 *
 * @param scores `[batch.batch, numItems + 1]` scores; column 0 is padding.
 * @param batch The rows' targets, users and exclusions.
 * @param k How many items per row, a positive integer.
 * @returns One list of item ids per row.
 * @throws {RangeError} `k` is not a positive integer, or as {@linkcode rankBatch}.
 */
export async function topKBatch(
  scores: Tensor2D,
  batch: EvalBatch,
  k: number,
): Promise<Int32Array[]> {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k must be a positive integer, got ${k}`);
  const prep = prepareBatch(batch, scores.shape);
  const t = tf.tidy(() => rankTensors(scores, prep, k));
  return (await readRanks(t, prep, batch)).top!;
}
