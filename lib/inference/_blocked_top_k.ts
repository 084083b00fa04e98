/**
 * The top items of a large catalogue without its full score matrix: the item table is
 * scored in blocks of rows against each history's ranking queries
 * (`SequentialModel.rankingQueries`), and a running top-k is merged block by block. At
 * 1M items a pass of 64 histories would otherwise hold `[64, 1M]` scores (256 MB) and the
 * scoring matmul a transposed copy of the table (512 MB at d 128). Backend-agnostic tfjs
 * ops (wasm, webgpu, cpu); the full `scores` followed by `tf.topk` is its reference.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor2D, Tensor3D } from "../nn/tensor_types.ts";

/** The top `k` of each row: scores best first, and their item ids (int32). */
export interface TopK {
  /** `[B, k]` scores, best first. */
  values: Tensor2D;
  /** `[B, k]` item ids (rows of the table), int32. */
  indices: Tensor2D;
}

/** Most scores ({@linkcode blockedTopK}'s `[B·q, n]`) a block holds: 2^22 floats, 16 MB. */
export const BLOCK_SCORES = 1 << 22;

/**
 * Rows of the table a block of {@linkcode blockedTopK} scores for `rowsOfQueries` (`B·q`)
 * queries: as many as `budget` scores allow ({@linkcode BLOCK_SCORES}), and at least `least`. One history
 * (B·q = 1) thus scores up to 4M items in one block, with no slice of the table; 64 histories
 * 65,536 at a time.
 */
export function blockRows(rowsOfQueries: number, least: number, budget = BLOCK_SCORES): number {
  return Math.max(least, Math.floor(budget / Math.max(1, rowsOfQueries)));
}

/**
 * The `k` best rows of `table` `[M, d]` for each history, where row `i`'s score after
 * history `b` is `max_j queries[b, j] · table[i]` (`queries` `[B, q, d]`), scoring at most
 * `block` rows at a time. The values equal those of the full scores' `tf.topk` up to the
 * float rounding of the products; on equal scores the lower id comes first.
 *
 * Returns kept tensors (call inside `tf.tidy`, or dispose them). Between blocks only the
 * running `[B, k]` values and ids are held.
 *
 * @throws {RangeError} `k` or `block` is not a positive integer, or `k` exceeds the rows.
 */
export function blockedTopK(queries: Tensor3D, table: Tensor2D, k: number, block: number): TopK {
  const [b, q, d] = queries.shape;
  const rows = table.shape[0];
  if (!Number.isInteger(k) || k < 1 || k > rows) {
    throw new RangeError(`k must be an integer from 1 to ${rows} (the table's rows), got ${k}`);
  }
  if (!Number.isInteger(block) || block < 1) {
    throw new RangeError(`block must be a positive integer, got ${block}`);
  }
  const flat = tf.reshape(queries, [b * q, d]) as Tensor2D; // [B*q, d]
  let best: TopK | null = null;
  for (let start = 0; start < rows; start += block) {
    const size = Math.min(block, rows - start);
    const running: TopK | null = best;
    const next: TopK = tf.tidy(() => {
      // One block is the table itself: a slice would copy it (512 MB at 1M items of d 128).
      const part = size === rows ? table : tf.slice(table, [start, 0], [size, d]) as Tensor2D; // [n, d]
      // (part · flatᵀ)ᵀ, not flat · partᵀ: a transpose flag on the big operand made
      // tfjs-wasm without the BLAS copy it transposed (1 s at 1M items of d 128, against
      // 0.17 s this way); the flag on the small one, and the transpose of the result, are cheap.
      let scores = tf.transpose(tf.matMul(part, flat, false, true)) as Tensor2D; // [B*q, n]
      if (q > 1) scores = tf.max(tf.reshape(scores, [b, q, size]), 1) as Tensor2D; // [B, n]
      const top = tf.topk(scores, Math.min(k, size), true);
      const ids = tf.add(top.indices, tf.scalar(start, "int32")) as Tensor2D; // [B, k']
      if (running === null) return { values: top.values as Tensor2D, indices: ids };
      // The running top first: on equal scores topk keeps the earlier column, the lower id.
      const values = tf.concat([running.values, top.values], 1) as Tensor2D; // [B, k + k']
      const indices = tf.concat([running.indices, ids], 1) as Tensor2D;
      const width = values.shape[1];
      const merged = tf.topk(values, Math.min(k, width), true);
      // The ids of the picked columns, each row's own (on wasm by backends/_kernels.ts's gather:
      // tfjs-backend-wasm 4.22's returns wrong int32 values along a batch axis).
      const picked = tf.gather(indices, merged.indices, 1, 1); // [B, k]
      return {
        values: merged.values as Tensor2D,
        indices: picked as Tensor2D, // [B, k]
      };
    });
    if (running !== null) tf.dispose([running.values, running.indices]);
    best = next;
  }
  flat.dispose();
  return best!;
}
