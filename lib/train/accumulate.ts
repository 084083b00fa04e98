/**
 * Gradient sums across the pieces of a split batch (`step.ts`): `acc + g` per variable,
 * written into `acc` in place where the active backend has {@linkcode ACCUMULATE_KERNEL}
 * (webgpu: `backends/_webgpu_accumulate.ts`), several variables per dispatch. Elsewhere it
 * is `tf.add` per pair, as the step always summed, so cpu and wasm results do not change.
 *
 * Why: a step split into two pieces summed each of a model's 30-odd gradients with its own
 * `Add`, one GPU dispatch each; on webgpu a dispatch's fixed cost is most of a small op's
 * time (docs/performance.md).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/**
 * Kernel: `acc${i} += g${i}` for every pair `i` (float32, the same shape), in place; no
 * outputs. The caller guarantees that no other tensor shares any `acc${i}`'s data (see
 * {@linkcode accumulate}, which checks it).
 */
export const ACCUMULATE_KERNEL = "SigmaAccumulate";

/**
 * `acc[i] + g[i]` for each pair. Where the active backend has {@linkcode ACCUMULATE_KERNEL}
 * and `acc[i]` is a float32 tensor whose data no other tensor shares, the sum is written
 * into `acc[i]` and `acc[i]` itself is returned; otherwise the sum is a new tensor,
 * `tf.add(acc[i], g[i])`, bit for bit. Either way the caller owns the results and should
 * dispose an `acc[i]` that is not among them. The `g[i]` are not changed.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { accumulate } from "./accumulate.ts";
 * await selectBackend("cpu");
 * const acc = tf.ones([2]);
 * const [sum] = accumulate([acc], [tf.ones([2])]);
 * await sum.data(); // [2, 2]
 * ```
 */
export function accumulate(acc: tf.Tensor[], g: tf.Tensor[]): tf.Tensor[] {
  if (acc.length !== g.length) {
    throw new RangeError(`accumulate: ${acc.length} sums but ${g.length} gradients`);
  }
  const backend = tf.getBackend();
  const fused = tf.getKernel(ACCUMULATE_KERNEL, backend) !== undefined;
  const inPlace = (a: tf.Tensor, b: tf.Tensor) =>
    fused && a.dtype === "float32" && b.dtype === "float32" && a.size > 0 &&
    tf.util.arraysEqual(a.shape, b.shape) && tf.backend().refCount(a.dataId) === 1;
  const inputs: tf.NamedTensorMap = {};
  let pairs = 0;
  const sums = acc.map((a, i) => {
    if (!inPlace(a, g[i])) return tf.add(a, g[i]);
    inputs[`acc${pairs}`] = a;
    inputs[`g${pairs}`] = g[i];
    pairs++;
    return a;
  });
  if (pairs > 0) tf.engine().runKernel(ACCUMULATE_KERNEL, inputs, { pairs });
  return sums;
}
