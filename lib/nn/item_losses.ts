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
import type { Tensor, Tensor1D, Tensor2D, Tensor3D } from "./tensor_types.ts";
import { Rng } from "../data/random.ts";
import { embeddingLookup, matmul, oneHotFloat, withCustomGradient } from "./layers.ts";

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
  /** Most logits (positions x interests x items) the full softmax holds at once. Default 2^23. */
  logitBudget?: number;
}

/**
 * Per-position loss `[P]` of `queries` `[P, k, d]` for the targets (ids 1..N), against the
 * real items, rows 1..N of `itemTable` `[N + 1, d]` (row 0, padding, is never a candidate
 * and never a negative). Negatives are drawn uniformly from 1..N and may equal the target
 * (probability 1/N, the usual convention).
 */
export function itemLoss(
  queries: Tensor3D,
  itemTable: Tensor2D,
  targets: Int32Array,
  o: ItemLossOptions,
): Tensor1D {
  const positions = queries.shape[0];
  const numItems = itemTable.shape[0] - 1;
  const q = o.temperature === 1 ? queries : tf.div(queries, o.temperature) as Tensor3D;
  const targetIds = tf.tensor1d(targets, "int32");
  if (o.kind === "softmax") {
    const real = tf.slice(itemTable, [1, 0], [-1, -1]) as Tensor2D; // [N, d]
    const rows = tf.tensor1d(targets.map((t) => t - 1), "int32"); // ids 1..N -> rows 0..N-1
    return maxInterestSoftmaxCrossEntropy(q, real, rows, o.logitBudget ?? 1 << 23);
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
    return tf.add(tf.softplus(tf.neg(positive)), tf.sum(tf.softplus(negScores), -1)) as Tensor1D;
  }
  const all = tf.concat([tf.expandDims(positive, 1), negScores], 1); // [P, 1 + n]
  return tf.sub(tf.logSumExp(all, 1), positive) as Tensor1D;
}

/** `max_j queries[p, j] . items[p]`: `[P, k, d]` x `[P, d]` -> `[P]`. */
function maxInterestScore(queries: Tensor3D, items: Tensor): Tensor1D {
  const dots = tf.sum(tf.mul(queries, tf.expandDims(items, 1)), -1); // [P, k]
  return tf.max(dots, -1) as Tensor1D;
}

/**
 * Full-softmax cross-entropy `[P]` where an item's logit is the max over the `k` interest
 * vectors of the query (Eq. 9; k = 1 is the plain full softmax), as one fused op. The
 * forward pass goes through positions in chunks of at most `budget` logits; the backward
 * pass recomputes each chunk's logits and forms the gradient `softmax - onehot(target)`
 * routed to the winning interest, so no `[P, k, N]` tensor is ever kept: tfjs's own
 * gradients would keep ~8 copies of it, gigabytes for a batch of long histories.
 */
function maxInterestSoftmaxCrossEntropy(
  queries: Tensor3D, // [P, k, d]
  items: Tensor2D, // [N, d]
  rows: Tensor1D, // [P], rows of items
  budget: number,
): Tensor1D {
  const [positions, k, d] = queries.shape;
  const n = items.shape[0];
  const chunk = Math.max(1, Math.min(positions, Math.floor(budget / (k * n))));
  // Logits of positions start..start+size for every interest with one matmul: queries in
  // interest-major order [k*c, d], so interest j's logits are the contiguous rows
  // j*c..(j+1)*c of the [k*c, N] result (one large GEMM runs faster than k small ones).
  const logitsOf = (q: Tensor, itemsT: Tensor2D, start: number, size: number) => {
    const qc = tf.slice(q, [start, 0, 0], [size, -1, -1]); // [c, k, d]
    const byInterest = tf.reshape(tf.transpose(qc, [1, 0, 2]), [k * size, d]) as Tensor2D; // [k*c, d]
    const all = matmul(byInterest, itemsT); // [k*c, N]
    const perInterest: Tensor2D[] = [];
    for (let j = 0; j < k; j++) {
      perInterest.push(tf.slice(all, [j * size, 0], [size, -1]) as Tensor2D); // [c, N]
    }
    return { byInterest, perInterest };
  };
  const op = withCustomGradient(3, ([q, v, r], save) => {
    save([q, v, r]);
    const itemsT = tf.transpose(v) as Tensor2D; // [d, N], explicit: see matmul()
    const parts: Tensor[] = [];
    for (let start = 0; start < positions; start += chunk) {
      const size = Math.min(chunk, positions - start);
      parts.push(tf.tidy(() => {
        const s = logitsOf(q, itemsT, start, size).perInterest;
        const best = s.reduce((a, b) => tf.maximum(a, b)); // [c, N]
        // Row offsets 0, N, 2N, ... plus the target column (int32 throughout: tf.mul of an
        // int32 tensor by a JS number would give float32 indices).
        const flatIndex = tf.add(tf.range(0, size * n, n, "int32"), tf.slice(r, [start], [size])); // [c]
        const target = tf.gather(tf.reshape(best, [-1]), flatIndex); // [c]
        return tf.sub(tf.logSumExp(best, 1), target);
      }));
    }
    const value = parts.length === 1 ? parts[0] : tf.concat(parts);
    if (parts.length > 1) tf.dispose(parts);
    return {
      value,
      gradFunc: (dy, saved) => {
        const [qs, vs, rs] = saved;
        const itemsT = tf.transpose(vs) as Tensor2D;
        let dItems = tf.zeros([n, d]);
        const dq: Tensor[] = [];
        for (let start = 0; start < positions; start += chunk) {
          const size = Math.min(chunk, positions - start);
          const next = tf.tidy(() => {
            const { byInterest, perInterest: s } = logitsOf(qs, itemsT, start, size);
            const best = s.reduce((a, b) => tf.maximum(a, b)); // [c, N]
            const onehot = oneHotFloat(tf.slice(rs, [start], [size]), n);
            const g = tf.mul(
              tf.sub(tf.softmax(best), onehot),
              tf.reshape(tf.slice(dy, [start], [size]), [size, 1]),
            ); // [c, N]: d loss / d best
            // Route each item's gradient to the interest that won its max (ties: the first).
            let free = tf.onesLike(best);
            const routed: Tensor[] = [];
            for (let j = 0; j < k; j++) {
              const wins = k === 1 ? free : tf.mul(tf.cast(tf.equal(s[j], best), "float32"), free);
              if (k > 1) free = tf.sub(free, wins);
              routed.push(k === 1 ? g : tf.mul(g, wins)); // [c, N]
            }
            const gAll = (k === 1 ? routed[0] : tf.concat(routed)) as Tensor2D; // [k*c, N]
            const dqByInterest = matmul(gAll, vs as Tensor2D); // [k*c, d]
            const di = tf.add(dItems, matmul(tf.transpose(gAll), byInterest)); // [N, d]
            const dqc = tf.transpose(tf.reshape(dqByInterest, [k, size, d]), [1, 0, 2]); // [c, k, d]
            return { dq: dqc, dItems: di };
          });
          dItems.dispose();
          dItems = next.dItems;
          dq.push(next.dq);
        }
        const dQueries = dq.length === 1 ? dq[0] : tf.concat(dq);
        if (dq.length > 1) tf.dispose(dq);
        return [dQueries, dItems, tf.zerosLike(rs)];
      },
    };
  });
  return op(queries, items, rows) as Tensor1D;
}
