/**
 * Scaled dot-product attention, `softmax(q kᵀ · scale + mask) v`, as a fused op: tfjs
 * kernels under the names below, with the composed tfjs ops as the reference path.
 *
 * Why: tfjs-backend-webgpu runs one GPU dispatch per op, and on a GPU the fixed cost of a
 * dispatch, not its arithmetic, is most of a small op's time. Composed of tfjs ops,
 * attention is 5 dispatches forward (matMul, mul, add, softmax, matMul) and 9 backward; as
 * kernels it is 1 forward and 2 backward (`tests/attention_test.ts` counts them).
 * `backends/_webgpu_attention.ts` registers WGSL programs under these names for the webgpu
 * backend. Where the active backend has none (cpu, wasm), {@linkcode scaledDotAttention}
 * returns exactly the op sequence `lib/nn/layers.ts` used before, so results there stay
 * bit for bit what they were. Tests check that both paths agree.
 *
 * The backward pass is two kernels because its sums run two ways: dq sums over the keys of
 * a query row, dk and dv over the query rows of a key. The first recomputes each query
 * row's softmax and also writes the row's statistics (max, sum of exponentials, and
 * `D = Σ_j p_j dp_j`), from which the second recomputes any probability without a pass
 * over the row. Each kernel returns two tensors from one dispatch (dq and the statistics;
 * dk and dv), so no packed output has to be sliced apart (a slice is a dispatch on webgpu).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor, Tensor4D } from "./tensor_types.ts";

/**
 * Kernel `(q [B, h, Lq, dh], k [B, h, L, dh], v [B, h, L, dh], mask [B or 1, 1, Lq or 1, L];
 * scale) -> out [B, h, Lq, dh]`: `softmax(q kᵀ · scale + mask) v`, the softmax over L.
 */
export const ATTENTION_KERNEL = "SigmaAttention";
/**
 * Kernel `(dy [B, h, Lq, dh], q, k, v, mask; scale) -> (dq [B, h, Lq, dh], stats
 * [B, h, Lq, 3])`: the query gradient of {@linkcode ATTENTION_KERNEL} for the output
 * gradient `dy`, and per query row its softmax's max, its sum of exponentials and
 * `D = Σ_j p_j (dy · v_j)`, for {@linkcode ATTENTION_GRAD_KEY_VALUE_KERNEL}.
 */
export const ATTENTION_GRAD_QUERY_KERNEL = "SigmaAttentionGradQuery";
/**
 * Kernel `(dy, q, k, v, mask, stats; scale) -> (dk [B, h, L, dh], dv [B, h, L, dh])`: the
 * key and value gradients of {@linkcode ATTENTION_KERNEL}, each probability recomputed
 * from the statistics of {@linkcode ATTENTION_GRAD_QUERY_KERNEL}.
 */
export const ATTENTION_GRAD_KEY_VALUE_KERNEL = "SigmaAttentionGradKeyValue";

/**
 * The longest query or key axis (Lq, L) the kernels take; longer ones take the reference
 * path. The webgpu programs keep a row of scores in workgroup memory (16 KiB guaranteed).
 */
export const ATTENTION_MAX_LENGTH = 1024;
/** The widest head (dh) the kernels take; wider ones take the reference path. */
export const ATTENTION_MAX_DEPTH = 256;

function hasKernels(...names: string[]): boolean {
  const backend = tf.getBackend();
  return names.every((name) => tf.getKernel(name, backend) !== undefined);
}

/**
 * The attention probabilities `softmax(q kᵀ · scale + mask)` `[B, h, Lq, L]` as composed tfjs
 * ops, op for op what `lib/nn/layers.ts` computed before the fused kernels existed. The
 * path with attention dropout uses it (the kernels have no dropout), and so does
 * {@linkcode scaledDotAttentionReference}.
 */
export function attentionProbabilities(
  q: Tensor, // [B, h, Lq, dh]
  k: Tensor, // [B, h, L, dh]
  mask: Tensor, // additive, broadcast to [B, h, Lq, L]
  scale: number,
): Tensor {
  return tf.softmax(tf.add(tf.mul(tf.matMul(q, k, false, true), scale), mask)); // [B, h, Lq, L]
}

/**
 * Today's (composed) scaled dot-product attention, `matMul(attentionProbabilities(...), v)`:
 * the reference path of {@linkcode scaledDotAttention}.
 */
export function scaledDotAttentionReference(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  mask: Tensor,
  scale: number,
): Tensor4D {
  return tf.matMul(attentionProbabilities(q, k, mask, scale), v) as Tensor4D; // [B, h, Lq, dh]
}

/** Whether the kernels take these tensors: float32, non-empty, shapes as documented. */
function kernelsTake(q: Tensor, k: Tensor, v: Tensor, mask: Tensor): boolean {
  const all = [q, k, v, mask];
  if (!all.every((t) => t.rank === 4 && t.dtype === "float32" && t.size > 0)) return false;
  const [b, h, lq, dh] = q.shape;
  const l = k.shape[2];
  const [mb, mh, mq, ml] = mask.shape;
  return k.shape[0] === b && k.shape[1] === h && k.shape[3] === dh &&
    tf.util.arraysEqual(v.shape, k.shape) &&
    (mb === b || mb === 1) && mh === 1 && (mq === lq || mq === 1) && ml === l &&
    lq <= ATTENTION_MAX_LENGTH && l <= ATTENTION_MAX_LENGTH && dh <= ATTENTION_MAX_DEPTH &&
    hasKernels(ATTENTION_KERNEL, ATTENTION_GRAD_QUERY_KERNEL, ATTENTION_GRAD_KEY_VALUE_KERNEL);
}

/**
 * Scaled dot-product attention `softmax(q kᵀ · scale + mask) v` of queries `q`
 * `[B, h, Lq, dh]` over keys `k` and values `v` `[B, h, L, dh]`, the softmax over L, with
 * an additive `mask` (0 where a query may see a key, -1e9 where not) broadcast over the
 * heads: `[B, 1, Lq, L]` (or 1 for B or Lq). Returns `[B, h, Lq, dh]`. Differentiable in
 * q, k and v; the mask is a constant (no gradient flows to it). A fully masked row (a
 * padding query) attends uniformly to its keys, as the composed ops do.
 *
 * Where the active backend has the kernels (webgpu) this is one dispatch forward and two
 * backward; elsewhere, and for non-float32 or empty tensors, masks of other shapes, or Lq,
 * L over {@linkcode ATTENTION_MAX_LENGTH} or dh over {@linkcode ATTENTION_MAX_DEPTH}, it is
 * {@linkcode scaledDotAttentionReference}. Attention dropout is not fused: callers with a
 * dropout on the probabilities compose {@linkcode attentionProbabilities} themselves.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { scaledDotAttention } from "./attention.ts";
 * await selectBackend("cpu");
 * const q = tf.ones([1, 1, 2, 2]); // [B, h, Lq, dh]
 * const v = tf.tensor4d([[[[1, 0], [0, 1]]]]); // [B, h, L, dh]
 * const causal = tf.tensor4d([[[[0, -1e9], [0, 0]]]]); // [B, 1, Lq, L]
 * const out = scaledDotAttention(q, q, v, causal, 1 / Math.sqrt(2));
 * // out: [[[[1, 0], [0.5, 0.5]]]]: row 0 sees key 0 only, row 1 both keys alike
 * ```
 */
export function scaledDotAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  mask: Tensor,
  scale: number,
): Tensor4D {
  if (!kernelsTake(q, k, v, mask)) return scaledDotAttentionReference(q, k, v, mask, scale);
  const attrs = { scale } as unknown as tf.NamedAttrMap;
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const [qt, kt, vt] = args as Tensor[];
    const save = args[3] as tf.GradSaveFunc;
    // The mask too: the caller's tidy may dispose it before the backward pass runs.
    save([qt, kt, vt, mask]);
    return {
      value: tf.engine().runKernel(
        ATTENTION_KERNEL,
        { q: qt, k: kt, v: vt, mask },
        attrs,
      ) as Tensor,
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [qs, ks, vs, ms] = saved;
        const [dq, stats] = tf.engine().runKernel(
          ATTENTION_GRAD_QUERY_KERNEL,
          { dy, q: qs, k: ks, v: vs, mask: ms },
          attrs,
        ) as Tensor[]; // [B, h, Lq, dh], [B, h, Lq, 3]
        const [dk, dv] = tf.engine().runKernel(
          ATTENTION_GRAD_KEY_VALUE_KERNEL,
          { dy, q: qs, k: ks, v: vs, mask: ms, stats },
          attrs,
        ) as Tensor[]; // [B, h, L, dh] each
        stats.dispose();
        return [dq, dk, dv];
      },
    };
  });
  return f(q, k, v) as Tensor4D;
}
