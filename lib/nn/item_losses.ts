/**
 * Next-item losses for queries made of one or several interest vectors: an item's score
 * is the maximum over the query's vectors of their dot products with the item (paper
 * Eq. 9; with one vector it is the plain dot product of Eq. 13). Three kinds: full
 * softmax over the catalogue (the paper's), one sampled negative with binary
 * cross-entropy (the authors' code), and sampled softmax with n uniform negatives.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { Rng } from "../data/random.ts";
import { embeddingLookup, fullSoftmaxCrossEntropy, matmul } from "./layers.ts";

/** The loss over items: `softmax` (full catalogue), `bce` (1 negative), `sampled`. */
export type ItemLossKind = "softmax" | "bce" | "sampled";

/** The item-loss kinds, for validation and help text. */
export const ITEM_LOSS_KINDS: readonly ItemLossKind[] = ["softmax", "bce", "sampled"];

/** Options of {@linkcode itemLoss}. */
export interface ItemLossOptions {
  /** Which loss. */
  kind: ItemLossKind;
  /** Negatives per position for `sampled` (`bce` always uses 1). */
  negatives: number;
  /** Scores are divided by this temperature (tau_rec or epsilon in the paper). */
  temperature: number;
  /** Seed of the negative sampling. */
  seed: number;
  /** Most positions per logits matmul of the full softmax. Default 4096. */
  chunk?: number;
}

/**
 * Per-position loss `[P]` of `queries` `[P, k, d]` for the targets (ids 1..N), against the
 * real items, rows 1..N of `itemTable` `[N + 1, d]` (row 0, padding, is never a candidate
 * and never a negative). Negatives are drawn uniformly from 1..N and may equal the target
 * (probability 1/N, the usual convention).
 */
export function itemLoss(
  queries: tf.Tensor3D,
  itemTable: tf.Tensor2D,
  targets: Int32Array,
  o: ItemLossOptions,
): tf.Tensor1D {
  const [positions, k, d] = queries.shape;
  const numItems = itemTable.shape[0] - 1;
  const q = o.temperature === 1 ? queries : tf.div(queries, o.temperature) as tf.Tensor3D;
  const targetIds = tf.tensor1d(targets, "int32");
  if (o.kind === "softmax") {
    const real = tf.slice(itemTable, [1, 0], [-1, -1]) as tf.Tensor2D; // [N, d]
    const rows = tf.tensor1d(targets.map((t) => t - 1), "int32"); // ids 1..N -> rows 0..N-1
    if (k === 1) {
      return fullSoftmaxCrossEntropy(tf.reshape(q, [positions, d]) as tf.Tensor2D, real, rows);
    }
    return maxInterestSoftmaxCrossEntropy(q, real, rows, o.chunk ?? 4096);
  }
  const n = o.kind === "bce" ? 1 : o.negatives;
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`negatives must be a positive integer, got ${o.negatives}`);
  }
  const rng = new Rng(o.seed);
  const negativeIds = new Int32Array(positions * n);
  for (let i = 0; i < negativeIds.length; i++) negativeIds[i] = 1 + rng.int(numItems);
  const positive = maxInterestScore(q, embeddingLookup(itemTable, targetIds)); // [P]
  const negItems = embeddingLookup(itemTable, tf.tensor2d(negativeIds, [positions, n], "int32")); // [P, n, d]
  // [P, n, k] scores of each negative against each interest, then max over interests.
  const negScores = tf.max(tf.matMul(negItems, q, false, true), -1); // [P, n]
  if (o.kind === "bce") {
    // -log sigmoid(s+) - log(1 - sigmoid(s-)) = softplus(-s+) + softplus(s-)
    return tf.add(tf.softplus(tf.neg(positive)), tf.sum(tf.softplus(negScores), -1)) as tf.Tensor1D;
  }
  const all = tf.concat([tf.expandDims(positive, 1), negScores], 1); // [P, 1 + n]
  return tf.sub(tf.logSumExp(all, 1), positive) as tf.Tensor1D;
}

/** `max_j queries[p, j] . items[p]`: `[P, k, d]` x `[P, d]` -> `[P]`. */
function maxInterestScore(queries: tf.Tensor3D, items: tf.Tensor): tf.Tensor1D {
  const dots = tf.sum(tf.mul(queries, tf.expandDims(items, 1)), -1); // [P, k]
  return tf.max(dots, -1) as tf.Tensor1D;
}

/**
 * Full-softmax cross-entropy `[P]` where an item's logit is the max over the `k` interest
 * vectors of the query (Eq. 9), chunked over positions so at most `chunk * k * N` logits
 * exist at once in the forward pass.
 */
function maxInterestSoftmaxCrossEntropy(
  queries: tf.Tensor3D, // [P, k, d]
  items: tf.Tensor2D, // [N, d]
  rows: tf.Tensor1D, // [P], rows of items
  chunk: number,
): tf.Tensor1D {
  const [positions, k, d] = queries.shape;
  const n = items.shape[0];
  const itemsT = tf.transpose(items) as tf.Tensor2D; // [d, N], explicit: see matmul()
  const parts: tf.Tensor1D[] = [];
  for (let start = 0; start < positions; start += chunk) {
    const size = Math.min(chunk, positions - start);
    const q = tf.slice(queries, [start, 0, 0], [size, -1, -1]) as tf.Tensor3D; // [c, k, d]
    const flat = tf.reshape(q, [size * k, d]) as tf.Tensor2D; // [c*k, d]
    const logits = tf.max(tf.reshape(matmul(flat, itemsT), [size, k, n]), 1); // [c, N]
    const lse = tf.logSumExp(logits, 1); // [c]
    const target = embeddingLookup(items, tf.slice(rows, [start], [size])); // [c, d]
    parts.push(tf.sub(lse, maxInterestScore(q, target)) as tf.Tensor1D);
  }
  return (parts.length === 1 ? parts[0] : tf.concat(parts)) as tf.Tensor1D;
}
