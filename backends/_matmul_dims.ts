/**
 * The dimensions of a `BatchMatMul` call, shared by the project's matmul kernels
 * (`bmm.wasm` in `_kernels.ts`, the native BLAS in `_blas.ts`).
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";

/** A float32 `BatchMatMul` of `batch` products `[m, k] x [k, n]` after the transposes. */
export interface MatMulDims {
  /** Products per input: 1 means that input is broadcast over the other's batch. */
  batchA: number;
  batchB: number;
  /** Products in all: `max(batchA, batchB)`. */
  batch: number;
  m: number;
  n: number;
  k: number;
  /** The stored row lengths of `a` and `b` (their leading dimensions for BLAS). */
  rowA: number;
  rowB: number;
  /** Shape of the output: the larger batch's leading dimensions, then `[m, n]`. */
  outShape: number[];
}

/**
 * The dimensions of `a @ b` (with the transposes) when both are float32 of the same rank
 * >= 2 and their batches are equal or one of them is 1; null for every other call (general
 * broadcasting, other dtypes, mismatched inner dimensions), which tfjs's own kernel takes
 * and, where wrong, reports.
 */
export function matMulDims(
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transA: boolean,
  transB: boolean,
): MatMulDims | null {
  if (a.dtype !== "float32" || b.dtype !== "float32") return null;
  if (a.shape.length < 2 || a.shape.length !== b.shape.length) return null;
  const size = (s: number[]) => s.reduce((x, y) => x * y, 1);
  const leadA = a.shape.slice(0, -2);
  const leadB = b.shape.slice(0, -2);
  const batchA = size(leadA);
  const batchB = size(leadB);
  const same = leadA.every((x, i) => x === leadB[i]);
  if (!same && batchA !== 1 && batchB !== 1) return null;
  const [ra, ca] = a.shape.slice(-2);
  const [rb, cb] = b.shape.slice(-2);
  const m = transA ? ca : ra;
  const k = transA ? ra : ca;
  const n = transB ? rb : cb;
  if ((transB ? cb : rb) !== k) return null;
  return {
    batchA,
    batchB,
    batch: Math.max(batchA, batchB),
    m,
    n,
    k,
    rowA: ca,
    rowB: cb,
    outShape: [...(batchA >= batchB ? leadA : leadB), m, n],
  };
}
