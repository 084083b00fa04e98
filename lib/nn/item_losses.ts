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
import { embeddingLookup, oneHotFloat, withCustomGradient } from "./layers.ts";
import { maxOverInterests, routeToInterests } from "./interest_kernels.ts";
import {
  hasSoftmaxCrossEntropyKernels,
  softmaxCrossEntropyRows,
  softmaxCrossEntropyRowsGrad,
} from "./fused_ops.ts";

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
    if (queries.shape[1] === 1 && hasSoftmaxCrossEntropyKernels()) {
      // One interest, fused kernels (webgpu, wasm): the whole table, its padding column 0 left
      // out of the softmax by the kernel, so no slice of the table (and no pad of its
      // gradient); the targets are then their own columns.
      const q2 = tf.reshape(q, [positions, queries.shape[2]]) as Tensor2D; // [P, d]
      return fusedSoftmaxCrossEntropy(q2, itemTable, targetIds, 1, o.logitBudget ?? 1 << 23);
    }
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
 * Full-softmax cross-entropy `[P]` of one query per position against every row of
 * `table` (`[M, d]`; pass the whole item table to keep the padding row in the softmax, as
 * DiffuRec's code does), with the target given as a row index. Chunked like
 * {@linkcode itemLoss}'s softmax, with the same memory-saving gradient.
 *
 * @param queries `[P, d]`.
 * @param table `[M, d]`.
 * @param rows Target row of each position `[P]`, each in `0..M-1`.
 * @param budget Most logits held at once. Default 2^23.
 */
export function softmaxCrossEntropy(
  queries: Tensor2D,
  table: Tensor2D,
  rows: Int32Array,
  budget = 1 << 23,
): Tensor1D {
  if (hasSoftmaxCrossEntropyKernels()) {
    return fusedSoftmaxCrossEntropy(queries, table, tf.tensor1d(rows, "int32"), 0, budget);
  }
  return maxInterestSoftmaxCrossEntropy(
    tf.expandDims(queries, 1) as Tensor3D,
    table,
    tf.tensor1d(rows, "int32"),
    budget,
  );
}

/**
 * How {@linkcode maxInterestSoftmaxCrossEntropy} cuts P positions into chunks whose
 * `[k*c, N]` logits fit the logit budget.
 */
interface ChunkPlan {
  positions: number; // P
  k: number; // interests
  d: number; // width
  n: number; // items
  starts: number[]; // first position of each chunk
  chunk: number; // positions per chunk (the last may have fewer)
}

function chunkPlan(queries: Tensor3D, items: Tensor2D, budget: number): ChunkPlan {
  const [positions, k, d] = queries.shape;
  const n = items.shape[0];
  const chunk = Math.max(1, Math.min(positions, Math.floor(budget / (k * n))));
  const starts: number[] = [];
  for (let start = 0; start < positions; start += chunk) starts.push(start);
  return { positions, k, d, n, starts, chunk };
}

function chunkSize(plan: ChunkPlan, start: number): number {
  return Math.min(plan.chunk, plan.positions - start);
}

/**
 * Queries of positions start..start+size in interest-major order `[k*c, d]`, so that
 * interest j's logits are the contiguous rows j*c..(j+1)*c of one `[k*c, N]` GEMM.
 */
function byInterestOf(q: Tensor, plan: ChunkPlan, start: number): Tensor2D {
  const { k, d } = plan;
  const size = chunkSize(plan, start);
  const qc = plan.starts.length === 1 ? q : tf.slice(q, [start, 0, 0], [size, -1, -1]); // [c, k, d]
  if (k === 1) return tf.reshape(qc, [size, d]) as Tensor2D;
  return tf.reshape(tf.transpose(qc, [1, 0, 2]), [k * size, d]) as Tensor2D; // [k*c, d]
}

/** Row offsets 0, N, 2N, ... plus each row's column `[c]` (int32 throughout). */
function rowMajorIndex(columns: Tensor, size: number, n: number): Tensor {
  // tf.mul of an int32 tensor by a JS number would give float32 indices, hence tf.range.
  return tf.add(tf.range(0, size * n, n, "int32"), columns);
}

/** One chunk's forward: its losses `[c]`, probabilities `[c, N]`, winning interests `[c*N]`. */
function forwardChunk(
  q: Tensor,
  itemsT: Tensor2D, // [d, N]
  rows: Tensor,
  plan: ChunkPlan,
  start: number,
): { loss: Tensor; prob: Tensor; winner: Tensor } {
  const { k, n } = plan;
  const size = chunkSize(plan, start);
  const all = tf.matMul(byInterestOf(q, plan, start), itemsT); // [k*c, N]
  let best: Tensor = all; // [c, N]: the max over interests of each logit
  let winner: Tensor = tf.zeros([0]); // [c*N] int32 for k > 1: the interest reaching it (first on ties)
  if (k > 1) {
    const max = maxOverInterests(tf.reshape(all, [k, size * n]));
    best = tf.reshape(max.best, [size, n]);
    winner = max.winner;
  }
  if (hasSoftmaxCrossEntropyKernels()) {
    // One kernel (webgpu, wasm) for the softmax, its log-sum-exp and the loss; the ops
    // below are its reference.
    const [prob, loss] = softmaxCrossEntropyRows(best as Tensor2D, rows as Tensor1D, start, 0);
    return { loss, prob, winner };
  }
  // One softmax kernel instead of exp, sum and divide passes. The log-sum-exp follows
  // exactly from the largest probability, which sits at the largest logit and is at least
  // 1/N, so its log never underflows: lse = max - log(p_max).
  const prob = tf.softmax(best); // [c, N]
  const lse = tf.sub(tf.max(best, 1), tf.log(tf.max(prob, 1))); // [c]
  const flatIndex = rowMajorIndex(tf.slice(rows, [start], [size]), size, n); // [c]
  const target = tf.gather(tf.reshape(best, [-1]), flatIndex); // [c]
  return { loss: tf.sub(lse, target), prob, winner };
}

/**
 * One chunk's share of the gradients, from its slice of the loss's gradient. (A type, not
 * an interface: `tf.tidy` returns only objects compatible with an index signature.)
 */
type ChunkGradients = {
  dq: Tensor; // [c, k, d]
  dItemsT: Tensor; // [d, N]: the running sum of the softmax part, this chunk added
  rows: Tensor; // [c]: the chunk's target rows
  dTarget: Tensor; // [c, d]: the one-hot part for those rows (subtracted by the caller)
};

/**
 * The gradient of the loss by the winning logits is `softmax - onehot(target)`: the
 * softmax part goes through two GEMMs, the one-hot part is a gather of the target items'
 * vectors (for the queries) and, returned as `rows`/`dTarget`, a scatter of the queries
 * into the target rows (for the items).
 */
function backwardChunk(
  dy: Tensor, // [P]
  saved: { q: Tensor; items: Tensor2D; rows: Tensor; prob: Tensor; winner: Tensor },
  dItemsT: Tensor, // [d, N]
  plan: ChunkPlan,
  start: number,
): ChunkGradients {
  const { k, d, n } = plan;
  const size = chunkSize(plan, start);
  const dyc = tf.reshape(tf.slice(dy, [start], [size]), [size, 1]); // [c, 1]
  const g = tf.mul(saved.prob, dyc); // [c, N]: softmax part of d loss / d best
  let gAll: Tensor = g; // [k*c, N]: routed to the interest that won each logit
  if (k > 1) {
    const routed = routeToInterests(tf.reshape(g, [-1]), saved.winner, k); // [k, c*N]
    gAll = tf.reshape(routed, [k * size, n]);
  }
  const byInterest = byInterestOf(saved.q, plan, start); // [k*c, d]
  const dqByInterest = tf.matMul(gAll as Tensor2D, saved.items); // [k*c, d]
  const di = tf.add(dItemsT, tf.matMul(tf.transpose(byInterest), gAll as Tensor2D)); // [d, N]
  // The one-hot part: -dy times the target item for the query interest that won the
  // target's logit, and -dy times that query for the target item.
  const rc = tf.slice(saved.rows, [start], [size]) as Tensor1D; // [c]
  const vt = tf.gather(saved.items, rc); // [c, d]
  const qc = tf.transpose(tf.reshape(byInterest, [k, size, d]), [1, 0, 2]); // [c, k, d]
  let won: Tensor = tf.ones([size, 1]); // [c, k]: which interest won the target
  if (k > 1) won = oneHotFloat(tf.gather(saved.winner, rowMajorIndex(rc, size, n)), k);
  const weight = tf.mul(won, dyc); // [c, k]
  const dq = tf.sub(
    tf.transpose(tf.reshape(dqByInterest, [k, size, d]), [1, 0, 2]),
    tf.mul(tf.expandDims(weight, 2), tf.expandDims(vt, 1)),
  ); // [c, k, d]
  const dTarget = tf.sum(tf.mul(tf.expandDims(weight, 2), qc), 1); // [c, d]
  return { dq, dItemsT: di, rows: rc, dTarget };
}

/** The tensors of a list, concatenated, or its one tensor as it is. */
function concatMany(list: Tensor[]): Tensor {
  return list.length === 1 ? list[0] : tf.concat(list);
}

/**
 * Full-softmax cross-entropy `[P]` where an item's logit is the max over the `k` interest
 * vectors of the query (Eq. 9; k = 1 is the plain full softmax), as one fused op.
 *
 * Forward, in chunks of at most `budget` logits (positions x interests x items): one GEMM
 * for all interests of a chunk, the max over interests, and the softmax, whose
 * probabilities `[P, N]` (and, for k > 1, the index of the winning interest of every
 * logit) are kept for the backward pass ({@linkcode backwardChunk}).
 * Memory: the transient `[k*c, N]` logits of one chunk, plus `[P, N]` kept floats (twice
 * that for k > 1); callers bound P (the trainer's `maxPositions`). tfjs's own gradients
 * would keep ~8 copies of the `[P, k, N]` logits, and recomputing them costs a GEMM.
 */
function maxInterestSoftmaxCrossEntropy(
  queries: Tensor3D, // [P, k, d]
  items: Tensor2D, // [N, d]
  rows: Tensor1D, // [P], rows of items
  budget: number,
): Tensor1D {
  const plan = chunkPlan(queries, items, budget);
  const chunks = plan.starts.length;
  const op = withCustomGradient(3, ([q, v, r], save) => {
    const itemsT = tf.transpose(v) as Tensor2D; // [d, N], explicit: see matmul()
    const outs = plan.starts.map((start) => tf.tidy(() => forwardChunk(q, itemsT, r, plan, start)));
    itemsT.dispose();
    const probs = outs.map((o) => o.prob);
    const winners = outs.map((o) => o.winner);
    save([q, v, r, ...probs, ...winners]);
    const losses = outs.map((o) => o.loss);
    const value = concatMany(losses);
    if (chunks > 1) tf.dispose(losses);
    return { value, gradFunc: (dy, saved) => backward(dy, saved) };
  });

  function backward(dy: Tensor, saved: Tensor[]): Tensor[] {
    const [q, v, r] = saved;
    let dItemsT: Tensor = tf.zeros([plan.d, plan.n]);
    const parts: ChunkGradients[] = plan.starts.map((start, c) => {
      const chunkSaved = {
        q,
        items: v as Tensor2D,
        rows: r,
        prob: saved[3 + c],
        winner: saved[3 + chunks + c],
      };
      const next = tf.tidy(() => backwardChunk(dy, chunkSaved, dItemsT, plan, start));
      dItemsT.dispose();
      dItemsT = next.dItemsT;
      return next;
    });
    const dQueries = concatMany(parts.map((p) => p.dq));
    const allRows = concatMany(parts.map((p) => p.rows));
    const allGrads = concatMany(parts.map((p) => p.dTarget));
    const dItems = tf.sub(
      tf.transpose(dItemsT),
      tf.scatterND(tf.reshape(allRows, [-1, 1]), allGrads, [plan.n, plan.d]),
    ); // [N, d]
    if (chunks > 1) tf.dispose(parts.flatMap((p) => [p.dq, p.rows, p.dTarget]));
    tf.dispose([dItemsT, allRows, allGrads]);
    return [dQueries, dItems, tf.zerosLike(r)];
  }

  return op(queries, items, rows) as Tensor1D;
}

/**
 * The full-softmax cross-entropy `[P]` of one query per position against the columns
 * `first..M-1` of `queries @ tableᵀ` (`table` `[M, d]`), on the fused kernels of
 * `lib/nn/fused_ops.ts` (webgpu, wasm): what {@linkcode maxInterestSoftmaxCrossEntropy} computes
 * for one interest, in the same chunks (of at most `budget` logits, counting the `M - first`
 * columns in the softmax). Per chunk, forward: one GEMM with a transposed operand (a free
 * flag on webgpu, the BLAS's on wasm) and one kernel for the softmax, its log-sum-exp and the loss; backward:
 * one kernel for `(softmax - onehot) dy` and two GEMMs. The probabilities are kept for the
 * backward pass, as there. Callers check {@linkcode hasSoftmaxCrossEntropyKernels}.
 *
 * @param queries `[P, d]`.
 * @param table `[M, d]`.
 * @param targets int32 `[P]`: each position's target column, in `first..M-1`.
 * @param first Columns before it are not candidates (1 leaves out the padding row).
 */
function fusedSoftmaxCrossEntropy(
  queries: Tensor2D,
  table: Tensor2D,
  targets: Tensor1D,
  first: number,
  budget: number,
): Tensor1D {
  const positions = queries.shape[0];
  const chunk = Math.max(1, Math.min(positions, Math.floor(budget / (table.shape[0] - first))));
  const starts: number[] = [];
  for (let start = 0; start < positions; start += chunk) starts.push(start);
  const size = (start: number) => Math.min(chunk, positions - start);
  const rowsOf = (q: Tensor, start: number) =>
    starts.length === 1 ? q as Tensor2D : tf.slice(q, [start, 0], [size(start), -1]) as Tensor2D;
  const op = withCustomGradient(2, ([q, v], save) => {
    const outs = starts.map((start) =>
      tf.tidy(() => {
        const logits = tf.matMul(rowsOf(q, start), v as Tensor2D, false, true) as Tensor2D;
        const [prob, loss] = softmaxCrossEntropyRows(logits, targets, start, first); // [c, M]
        return { prob, loss }; // [c, M], [c]
      })
    );
    const probs = outs.map((o) => o.prob);
    // The targets are not an input: saved, so that tfjs keeps them for the backward pass.
    save([q, v, targets, ...probs]);
    const losses = outs.map((o) => o.loss);
    const value = concatMany(losses);
    if (starts.length > 1) tf.dispose(losses);
    return {
      value,
      gradFunc: (dy, saved) => {
        const [qs, vs, ts] = saved as [Tensor2D, Tensor2D, Tensor1D];
        let dTable: Tensor | null = null; // [M, d], summed over chunks
        const dq = starts.map((start, c) => {
          const before: Tensor | null = dTable;
          const next = tf.tidy(() => {
            const prob = saved[3 + c] as Tensor2D;
            const g = softmaxCrossEntropyRowsGrad(prob, ts, dy as Tensor1D, start); // [c, M]
            const part = tf.matMul(g, rowsOf(qs, start), true, false); // [M, d]
            return { dq: tf.matMul(g, vs), sum: before === null ? part : tf.add(before, part) };
          }); // [c, d], [M, d]
          before?.dispose();
          dTable = next.sum;
          return next.dq;
        });
        const dQueries = concatMany(dq);
        if (starts.length > 1) tf.dispose(dq);
        return [dQueries, dTable!];
      },
    };
  });
  return op(queries, table) as Tensor1D;
}
