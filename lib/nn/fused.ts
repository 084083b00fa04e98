/**
 * LayerNorm (with the residual add folded in) and the exact GELU as fused ops: tfjs kernels
 * under the names below, with the composed tfjs ops as the reference path.
 *
 * Why: tfjs-backend-webgpu runs one GPU dispatch per op, and on a GPU the fixed cost of a
 * dispatch, not its arithmetic, is most of a small op's time. Composed of tfjs ops, a
 * LayerNorm forward and backward is 31 dispatches (32 with the residual add) and a GELU 15;
 * as kernels they are 3 and 2 (`tests/fused_ops_test.ts` counts them).
 * `backends/_webgpu_fused.ts` registers WGSL programs under these names for the webgpu
 * backend. Where the active backend has no such kernel (cpu, wasm), each function returns
 * exactly the op sequence `lib/nn/layers.ts` used before, so results there stay bit for bit
 * what they were. Tests check that both paths agree.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor } from "./tensor_types.ts";

/**
 * Kernel `(x [R, d], residual? [R, d], gamma [d], beta [d]; eps) -> y [R, d]`: LayerNorm
 * over the last axis of `x + residual` (any leading shape; rows are everything before it).
 */
export const LAYER_NORM_KERNEL = "SigmaLayerNorm";
/**
 * Kernel `(dy [R, d], x [R, d], residual? [R, d], gamma [d]; eps) -> (dx [R, d],
 * partials [C, 2, d])`: the input gradient of {@linkcode LAYER_NORM_KERNEL}, each row's
 * mean and 1/std recomputed, and per chunk of rows the column sums of `dy * x̂` (row 0)
 * and `dy` (row 1), from which {@linkcode LAYER_NORM_GRAD_PARAMS_KERNEL} finishes the
 * parameter gradients. (The rows must be read for dx anyway; summing there keeps the
 * parameter kernel a short reduction instead of a second pass over `[R, d]`.)
 */
export const LAYER_NORM_GRAD_X_KERNEL = "SigmaLayerNormGradX";
/**
 * Kernel `partials [C, 2, d] -> (dgamma [d], dbeta [d])`: the sums over chunks of the
 * partials of {@linkcode LAYER_NORM_GRAD_X_KERNEL}, as two outputs of one dispatch.
 */
export const LAYER_NORM_GRAD_PARAMS_KERNEL = "SigmaLayerNormGradParams";
/** Kernel `x -> y`, any shape: the exact GELU `x Φ(x)`, Φ the standard normal CDF. */
export const GELU_KERNEL = "SigmaGelu";
/** Kernel `(dy, x) -> dx`, any shape: `dy (Φ(x) + x φ(x))`, the GELU's derivative. */
export const GELU_GRAD_KERNEL = "SigmaGeluGrad";

/**
 * The widest last axis the fused LayerNorm takes; wider rows go to the reference path.
 * The webgpu program keeps a row in registers, `d / 256` values per thread.
 */
export const FUSED_LAYER_NORM_MAX_WIDTH = 8192;

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
 * Where the active backend has the kernels (webgpu) this is one dispatch forward and two
 * backward; elsewhere, and for non-float32 input, an empty tensor or `d` over
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
    (residual === null || residual.dtype === "float32") &&
    gamma.dtype === "float32" && beta.dtype === "float32" &&
    hasKernels(LAYER_NORM_KERNEL, LAYER_NORM_GRAD_X_KERNEL, LAYER_NORM_GRAD_PARAMS_KERNEL);
  if (!fused) return layerNormResidualReference(x, residual, gamma, beta, eps);
  const withResidual = residual !== null;
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const ts = args as Tensor[];
    const [xt, g, b] = withResidual ? [ts[0], ts[2], ts[3]] : ts;
    const rt: tf.NamedTensorMap = withResidual ? { residual: ts[1] } : {}; // optional input
    save(withResidual ? [xt, ts[1], g] : [xt, g]);
    return {
      value: tf.engine().runKernel(LAYER_NORM_KERNEL, { x: xt, ...rt, gamma: g, beta: b }, {
        eps,
      }) as Tensor,
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [xs, gs] = [saved[0], saved[saved.length - 1]];
        const rs: tf.NamedTensorMap = withResidual ? { residual: saved[1] } : {};
        const [dx, partials] = tf.engine().runKernel(
          LAYER_NORM_GRAD_X_KERNEL,
          { dy, x: xs, ...rs, gamma: gs },
          { eps },
        ) as Tensor[]; // [..., d], [C, 2, d]
        const [dgamma, dbeta] = tf.engine().runKernel(
          LAYER_NORM_GRAD_PARAMS_KERNEL,
          { partials },
        ) as Tensor[]; // [d], [d]
        partials.dispose();
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
 * Where the active backend has the kernels (webgpu) this is one dispatch forward and one
 * backward, with an erf accurate to float32 (tfjs's own `Erf` is the Abramowitz-Stegun
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
  if (x.dtype !== "float32" || x.size === 0 || !hasKernels(GELU_KERNEL, GELU_GRAD_KERNEL)) {
    return geluReference(x);
  }
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const [t, save] = args as [Tensor, tf.GradSaveFunc];
    save([t]);
    return {
      value: tf.engine().runKernel(GELU_KERNEL, { x: t }) as Tensor,
      gradFunc: (dy: Tensor, saved: Tensor[]) => [
        tf.engine().runKernel(GELU_GRAD_KERNEL, { dy, x: saved[0] }) as Tensor,
      ],
    };
  });
  return f(x);
}
