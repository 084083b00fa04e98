/**
 * The multiply-add work of profiled kernel calls: 2·M·N·K per (batched) matrix product,
 * and the per-position state products of the gated GRU kernels (`lib/nn/gru.ts`), which
 * replace thousands of small `BatchMatMul`s where a backend has them.
 *
 * @module
 */
import { GRU_BACKWARD_KERNEL, GRU_FORWARD_KERNEL } from "../lib/nn/gru.ts";

/** What this needs of one entry of `tf.profile(...).kernels`. */
export interface ProfiledKernel {
  name: string;
  inputShapes: number[][];
  outputShapes: number[][];
}

const size = (s: number[]) => s.reduce((x, y) => x * y, 1);

/** Floating-point operations of one kernel call (0 for kernels that are not products). */
export function kernelFlops(k: ProfiledKernel): number {
  if (["MatMul", "BatchMatMul", "_FusedMatMul"].includes(k.name)) {
    const a = k.inputShapes[0];
    const out = k.outputShapes[0];
    if (!a || a.length < 2 || !out || out.length < 2) return 0;
    // One product of a is [M, K] or [K, M] whatever the transposes, and M is out's rows;
    // a broadcast over out's batch (a batch of 1) counts once per product all the same.
    const inner = (a[a.length - 1] * a[a.length - 2]) / out[out.length - 2]; // K
    return 2 * size(out) * inner;
  }
  // Forward (xi, gates, wh, bh) and backward (dy, prev, acts, gates, wh): every state row
  // [B, L, k] of every position times W_h [d, 3d], once each way.
  const gates = k.name === GRU_FORWARD_KERNEL ? 1 : k.name === GRU_BACKWARD_KERNEL ? 3 : -1;
  if (gates < 0) return 0;
  const wh = k.inputShapes[gates + 1];
  if (!wh || !k.inputShapes[gates]) return 0;
  return 2 * size(k.inputShapes[gates]) * wh[0] * wh[1];
}

/** The operations of every call in `kernels`. */
export function totalFlops(kernels: readonly ProfiledKernel[]): number {
  return kernels.reduce((sum, k) => sum + kernelFlops(k), 0);
}
