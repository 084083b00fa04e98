/**
 * LayerNorm (with the residual add folded in), the exact GELU and the tanh-approximated GELU
 * as fused ops: tfjs kernels under the names below, with the composed tfjs ops as the
 * reference path; and a broadcast add whose gradient is one column sum on webgpu.
 *
 * Why: tfjs-backend-webgpu runs one GPU dispatch per op, and on a GPU the fixed cost of a
 * dispatch, not its arithmetic, is most of a small op's time. Composed of tfjs ops, a
 * LayerNorm forward and backward is 31 dispatches (32 with the residual add) and a GELU 15;
 * as kernels they are 2 and 2, and a tanh GELU 2 (`tests/fused_ops_test.ts` counts them).
 * `backends/_webgpu_fused.ts` registers WGSL programs under these names for the webgpu
 * backend, and `backends/_wasm_fused.ts` the LayerNorm and GELU kernels for wasm (bmm.wasm,
 * on tfjs's threaded build). Where the active backend has no such kernel (cpu, wasm's
 * single-threaded build), each function returns exactly the op sequence `lib/nn/layers.ts`
 * used before, so results there stay bit for bit what they were. Tests check that both
 * paths agree.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { columnSum, hasColumnSumKernel } from "./fused_ops.ts";
import type { Tensor, Tensor2D } from "./tensor_types.ts";

/**
 * Kernel `(x [R, d], residual? [R, d], gamma [d], beta [d]; eps) -> (y [R, d],
 * stats [R, 2])`: LayerNorm over the last axis of `x + residual` (any leading shape; rows
 * are everything before it), and each row's mean and 1/std, which the backward pass uses.
 */
export const LAYER_NORM_KERNEL = "SigmaLayerNorm";
/**
 * Kernel `(dy [R, d], x [R, d], residual? [R, d], gamma [d], stats [R, 2]) -> (dx [R, d],
 * dgamma [d], dbeta [d])`: the gradients of {@linkcode LAYER_NORM_KERNEL} in one dispatch,
 * from the statistics it saved.
 */
export const LAYER_NORM_GRAD_KERNEL = "SigmaLayerNormGrad";
/** Kernel `x -> y`, any shape: the exact GELU `x Φ(x)`, Φ the standard normal CDF. */
export const GELU_KERNEL = "SigmaGelu";
/** Kernel `(dy, x) -> dx`, any shape: `dy (Φ(x) + x φ(x))`, the GELU's derivative. */
export const GELU_GRAD_KERNEL = "SigmaGeluGrad";
/**
 * Kernel `x -> y`, any shape: the tanh-approximated GELU `x sigmoid(x (c0 + c1 x²))` of
 * {@linkcode geluTanhReference}, `c0 = 2 sqrt(2/π)`, `c1 = 0.044715 c0`.
 */
export const GELU_TANH_KERNEL = "SigmaGeluTanh";
/**
 * Kernel `(dy, x) -> dx`, any shape: `dy (s + x s (1 - s) (c0 + 3 c1 x²))`, `s` the
 * sigmoid of {@linkcode GELU_TANH_KERNEL}: its derivative.
 */
export const GELU_TANH_GRAD_KERNEL = "SigmaGeluTanhGrad";
/** `2 sqrt(2/π)`: the slope of GELU's tanh approximation written with a sigmoid. */
export const GELU_TANH_SLOPE = 2 * Math.sqrt(2 / Math.PI);
/** The cubic coefficient of that slope, `0.044715 · 2 sqrt(2/π)`. */
export const GELU_TANH_CUBIC = GELU_TANH_SLOPE * 0.044715;

/**
 * The widest last axis the fused LayerNorm takes; wider rows go to the reference path.
 * The webgpu program keeps a row in registers, `d / 256` values per thread.
 */
export const FUSED_LAYER_NORM_MAX_WIDTH = 8192;

/**
 * The most rows the fused LayerNorm takes for a last axis of `d`; more run the reference
 * path. Its backward program sums the parameter gradients over every row in the threads of
 * a few workgroups (`d / 8` of them, `w / 8` threads a column for the `w` threads a row
 * gets): 16,384 rows a thread at most, because llvmpipe stops a shader after 65,535 loop
 * iterations (the sum was silently truncated past it), and a GPU runs such a sum serially.
 */
export function fusedLayerNormMaxRows(d: number): number {
  const threadsPerRow = Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(d))));
  return 16384 * (threadsPerRow / 8);
}

function hasKernels(...names: string[]): boolean {
  const backend = tf.getBackend();
  return names.every((name) => tf.getKernel(name, backend) !== undefined);
}

/**
 * Today's (composed) LayerNorm over the last axis of `residual + x`, or of `x` alone when
 * `residual` is null: the reference path of {@linkcode layerNormResidual}, op for op what
 * `lib/nn/layers.ts` computed before the fused kernels existed.
 */
export function layerNormResidualReference(
  x: Tensor,
  residual: Tensor | null,
  gamma: Tensor,
  beta: Tensor,
  eps: number,
): Tensor {
  const z = residual === null ? x : tf.add(residual, x);
  const axis = z.shape.length - 1;
  const mean = tf.mean(z, axis, true);
  const centred = tf.sub(z, mean);
  const variance = tf.mean(tf.square(centred), axis, true);
  const normed = tf.mul(centred, tf.rsqrt(tf.add(variance, eps)));
  return tf.add(tf.mul(normed, gamma), beta);
}

/**
 * LayerNorm over the last axis of `x + residual` (of `x` alone when `residual` is null):
 * `(z - mean(z)) / sqrt(var(z) + eps) * gamma + beta` per row, the variance the biased
 * one, as in BERT and the reference code. `residual` must have `x`'s shape; `gamma` and
 * `beta` are `[d]`, `d` the last axis. Differentiable in every tensor argument; the
 * gradient of `residual` is the gradient of `x`.
 *
 * Where the active backend has the kernels (webgpu, threaded wasm) this is one kernel call
 * forward and one backward; elsewhere, and for non-float32 input, an empty tensor or `d` over
 * {@linkcode FUSED_LAYER_NORM_MAX_WIDTH}, it is {@linkcode layerNormResidualReference}.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { layerNormResidual } from "./fused.ts";
 * await selectBackend("cpu");
 * const x = tf.tensor2d([[1, 2, 3], [0, 0, 6]]); // [R = 2, d = 3]
 * const attn = tf.zerosLike(x); // what a sublayer adds to x
 * const y = layerNormResidual(attn, x, tf.ones([3]), tf.zeros([3]), 1e-12);
 * // y: [[-1.22, 0, 1.22], [-0.71, -0.71, 1.41]], each row of mean 0 and variance 1
 * ```
 */
export function layerNormResidual(
  x: Tensor,
  residual: Tensor | null,
  gamma: Tensor,
  beta: Tensor,
  eps: number,
): Tensor {
  if (x.rank < 1) {
    throw new RangeError(`layerNormResidual needs rank >= 1, got shape [${x.shape}]`);
  }
  const d = x.shape[x.rank - 1];
  for (const [name, t] of [["gamma", gamma], ["beta", beta]] as const) {
    if (t.rank !== 1 || t.shape[0] !== d) {
      throw new RangeError(`layerNormResidual: ${name} must be [${d}], got [${t.shape}]`);
    }
  }
  if (residual !== null && !tf.util.arraysEqual(residual.shape, x.shape)) {
    throw new RangeError(
      `layerNormResidual: residual [${residual.shape}] must have x's shape [${x.shape}]`,
    );
  }
  const fused = x.dtype === "float32" && x.size > 0 && d <= FUSED_LAYER_NORM_MAX_WIDTH &&
    x.size / d <= fusedLayerNormMaxRows(d) &&
    (residual === null || residual.dtype === "float32") &&
    gamma.dtype === "float32" && beta.dtype === "float32" &&
    hasKernels(LAYER_NORM_KERNEL, LAYER_NORM_GRAD_KERNEL);
  if (!fused) return layerNormResidualReference(x, residual, gamma, beta, eps);
  const withResidual = residual !== null;
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const ts = args as Tensor[];
    const [xt, g, b] = withResidual ? [ts[0], ts[2], ts[3]] : ts;
    const rt: tf.NamedTensorMap = withResidual ? { residual: ts[1] } : {}; // optional input
    const [y, stats] = tf.engine().runKernel(
      LAYER_NORM_KERNEL,
      { x: xt, ...rt, gamma: g, beta: b },
      { eps },
    ) as Tensor[]; // [..., d], [R, 2]
    save(withResidual ? [xt, ts[1], g, stats] : [xt, g, stats]);
    return {
      value: y,
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [xs, gs, st] = [saved[0], saved[saved.length - 2], saved[saved.length - 1]];
        const rs: tf.NamedTensorMap = withResidual ? { residual: saved[1] } : {};
        const [dx, dgamma, dbeta] = tf.engine().runKernel(
          LAYER_NORM_GRAD_KERNEL,
          { dy, x: xs, ...rs, gamma: gs, stats: st },
        ) as Tensor[]; // [..., d], [d], [d]
        // The residual's gradient is dx; a clone (Identity: no dispatch, shared data) so
        // that tfjs can accumulate and dispose the two gradients independently.
        return withResidual ? [dx, tf.clone(dx), dgamma, dbeta] : [dx, dgamma, dbeta];
      },
    };
  });
  return residual !== null ? f(x, residual, gamma, beta) : f(x, gamma, beta);
}

/**
 * Today's (composed) exact GELU `0.5 x (1 + erf(x / √2))`: the reference path of
 * {@linkcode geluFused}, op for op what `lib/nn/layers.ts` computed before.
 */
export function geluReference(x: Tensor): Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
}

/**
 * The exact (erf) GELU `x Φ(x) = 0.5 x (1 + erf(x / √2))`, element-wise, any shape.
 *
 * Where the active backend has the kernels (webgpu, threaded wasm) this is one kernel call
 * forward and one backward, with an erf accurate to float32 (tfjs's own `Erf` is the Abramowitz-Stegun
 * 7.1.26 fit, 1.5e-7 absolute error); elsewhere, and for non-float32 input, it is
 * {@linkcode geluReference}.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { geluFused } from "./fused.ts";
 * await selectBackend("cpu");
 * const y = geluFused(tf.tensor1d([-1, 0, 1])); // about [-0.1587, 0, 0.8413]
 * ```
 */
export function geluFused(x: Tensor): Tensor {
  return elementwiseFused(x, GELU_KERNEL, GELU_GRAD_KERNEL, geluReference);
}

/**
 * Today's (composed) tanh-approximated GELU: the reference path of
 * {@linkcode geluTanhFused}, op for op what `geluTanh` of `lib/nn/pre_ln.ts` computed
 * before. `0.5 x (1 + tanh(u))`, `u = sqrt(2/π)(x + 0.044715 x³)`, is computed as
 * `x · sigmoid(2u)`, the same function (`(1 + tanh(u)) / 2 = sigmoid(2u)`):
 * tfjs-backend-wasm's `Tanh` took 42 ms on a `[2560, 512]` tensor against 8 ms for
 * `Sigmoid`, and this form makes 6 passes over the tensor instead of 9.
 */
export function geluTanhReference(x: Tensor): Tensor {
  // 2u = x · (2·sqrt(2/π) + 2·sqrt(2/π)·0.044715 · x²)
  const slope = tf.add(tf.mul(tf.square(x), GELU_TANH_CUBIC), GELU_TANH_SLOPE);
  return tf.mul(x, tf.sigmoid(tf.mul(x, slope)));
}

/**
 * The tanh-approximated GELU `0.5 x (1 + tanh(sqrt(2/π)(x + 0.044715 x³)))` (DiffuRec's,
 * the authors' code), element-wise, any shape.
 *
 * Where the active backend has the kernels (webgpu, threaded wasm) this is one kernel call
 * forward and one backward instead of 6 and about 15, the sigmoid taken in a form that
 * neither overflows nor cancels; elsewhere, and for non-float32 input, it is
 * {@linkcode geluTanhReference}, so cpu computes bit for bit what it did.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { geluTanhFused } from "./fused.ts";
 * await selectBackend("cpu");
 * const y = geluTanhFused(tf.tensor1d([-1, 0, 1])); // about [-0.1588, 0, 0.8412]
 * ```
 */
export function geluTanhFused(x: Tensor): Tensor {
  return elementwiseFused(x, GELU_TANH_KERNEL, GELU_TANH_GRAD_KERNEL, geluTanhReference);
}

/**
 * An element-wise op as a forward kernel (`x -> y`) and a gradient kernel (`dy, x -> dx`)
 * where the active backend has both, else `reference(x)` (also for non-float32 or empty x).
 */
function elementwiseFused(
  x: Tensor,
  forward: string,
  backward: string,
  reference: (x: Tensor) => Tensor,
): Tensor {
  if (x.dtype !== "float32" || x.size === 0 || !hasKernels(forward, backward)) {
    return reference(x);
  }
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const [t, save] = args as [Tensor, tf.GradSaveFunc];
    save([t]);
    return {
      value: tf.engine().runKernel(forward, { x: t }) as Tensor,
      gradFunc: (dy: Tensor, saved: Tensor[]) => [
        tf.engine().runKernel(backward, { dy, x: saved[0] }) as Tensor,
      ],
    };
  });
  return f(x);
}

/**
 * `x + y` for `y` of `x`'s trailing shape (`x` `[B, ...S]`, `y` `[...S]`), `y` broadcast
 * over the leading axis: SASRec's item plus position embeddings.
 *
 * The forward pass is `tf.add` everywhere. Where the active backend has the column-sum
 * kernel of `lib/nn/fused_ops.ts` (webgpu), the gradient of `y`, the sum of `dy` over the
 * leading axis, is that kernel on `dy` seen as `[B, size(S)]`: one dispatch instead of
 * tfjs's Transpose and Reduce (its Sum moves the reduced axis last first). Elsewhere, and
 * for non-float32 input, it is `tf.add` with tfjs's gradient, bit for bit as before.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { addLeadingBroadcast } from "./fused.ts";
 * await selectBackend("cpu");
 * const items = tf.ones([2, 3, 4]); // [B, L, d]
 * const pos = tf.zeros([3, 4]); // [L, d]
 * const x = addLeadingBroadcast(items, pos); // [2, 3, 4], all ones
 * ```
 */
export function addLeadingBroadcast(x: Tensor, y: Tensor): Tensor {
  if (x.rank !== y.rank + 1 || !tf.util.arraysEqual(x.shape.slice(1), y.shape)) {
    throw new RangeError(
      `addLeadingBroadcast: y [${y.shape}] must be x's [${x.shape}] without its first axis`,
    );
  }
  const fused = x.dtype === "float32" && y.dtype === "float32" && x.size > 0 &&
    hasColumnSumKernel();
  if (!fused) return tf.add(x, y);
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const [xt, yt] = args as [Tensor, Tensor];
    return {
      value: tf.add(xt, yt),
      gradFunc: (dy: Tensor) => [
        tf.reshape(dy, xt.shape), // a view (no dispatch), as tfjs's own Add gradient
        tf.reshape(columnSum(tf.reshape(dy, [xt.shape[0], yt.size]) as Tensor2D), yt.shape),
      ],
    };
  });
  return f(x, y);
}
