/**
 * Scaled dot-product attention, `dropout(softmax(q kᵀ · scale + mask)) v`, as a fused op:
 * tfjs kernels under the names below, with the composed tfjs ops as the reference path.
 *
 * Why: tfjs-backend-webgpu runs one GPU dispatch per op, and on a GPU the fixed cost of a
 * dispatch, not its arithmetic, is most of a small op's time. Composed of tfjs ops,
 * attention is 5 dispatches forward (matMul, mul, add, softmax, matMul) and 9 backward;
 * with a dropout on the probabilities and the per-head transposes around it (`[B, L, h,
 * dh]` to `[B, h, L, dh]` for q, k and v, and the context back) 10 and 14. As kernels it
 * is 1 forward and 2 backward either way (`tests/attention_test.ts` counts them): the
 * kernels draw the dropout mask themselves and read and write either layout.
 * `backends/_webgpu_attention.ts` registers WGSL programs under these names for the webgpu
 * backend. Where the active backend has none (cpu, wasm), {@linkcode scaledDotAttention}
 * returns exactly the op sequence `lib/nn/layers.ts` used before, so results there stay
 * bit for bit what they were. Tests check that both paths agree.
 *
 * The dropout mask is `lib/nn/dropout.ts`'s, drawn as if on the probabilities `[B, h, Lq, L]`:
 * the probability (b, hh, i, j) is kept (times `1 / (1 - rate)`) when element
 * `((b h + hh) Lq + i) L + j` of a tensor of that shape would be, so the fused op equals
 * `matMul(dropout(softmax(...), rate, seed), v)`. With `p` the softmax, `m` the mask and
 * `p' = m p`: `out_i = Σ_j p'_ij v_j`; backward, `dv_j = Σ_i p'_ij dy_i`, and the softmax's
 * incoming gradient is `dp_ij = m_ij (dy_i · v_j)`, so `ds_ij = p_ij (dp_ij - D_i)` with
 * `D_i = Σ_j p_ij dp_ij` (which is also `Σ_j p'_ij (dy_i · v_j)`), `dq_i = scale Σ_j ds_ij
 * k_j` and `dk_j = scale Σ_i ds_ij q_i`. Without dropout `m` is 1.
 *
 * The backward pass is two kernels because its sums run two ways: dq sums over the keys of
 * a query row, dk and dv over the query rows of a key. The first recomputes each query
 * row's softmax and also writes the row's statistics (max, sum of exponentials, and D),
 * from which the second recomputes any probability without a pass over the row. Each kernel
 * returns two tensors from one dispatch (dq and the statistics; dk and dv), so no packed
 * output has to be sliced apart (a slice is a dispatch on webgpu).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { dropout, keepScale, keepThreshold } from "./dropout.ts";
import type { Tensor, Tensor4D } from "./tensor_types.ts";

/**
 * Kernel `(q, k, v, mask [B or 1, 1, Lq or 1, L]; attrs) -> out`: `dropout(softmax(q kᵀ ·
 * scale + mask)) v`, the softmax over L. In the `heads` layout q and out are `[B, h, Lq,
 * dh]`, k and v `[B, h, L, dh]`; in the `sequence` layout `[B, Lq, h, dh]` and `[B, L, h,
 * dh]`. Attributes: {@linkcode AttentionKernelAttrs}.
 */
export const ATTENTION_KERNEL = "SigmaAttention";
/**
 * Kernel `(dy, q, k, v, mask; attrs) -> (dq, stats [B, h, Lq, 3])`: the query gradient of
 * {@linkcode ATTENTION_KERNEL} for the output gradient `dy` (dy and dq in q's layout), and
 * per query row its softmax's max, its sum of exponentials and `D = Σ_j p_j dp_j`, for
 * {@linkcode ATTENTION_GRAD_KEY_VALUE_KERNEL}.
 */
export const ATTENTION_GRAD_QUERY_KERNEL = "SigmaAttentionGradQuery";
/**
 * Kernel `(dy, q, k, v, mask, stats; attrs) -> (dk, dv)` (in k's layout): the key and value
 * gradients of {@linkcode ATTENTION_KERNEL}, each probability recomputed from the
 * statistics of {@linkcode ATTENTION_GRAD_QUERY_KERNEL}.
 */
export const ATTENTION_GRAD_KEY_VALUE_KERNEL = "SigmaAttentionGradKeyValue";

/**
 * The attributes of the three kernels: the score scale, whether q, k, v (and out, dy, the
 * gradients) are in the `sequence` layout, and the dropout on the probabilities as
 * `lib/nn/dropout.ts`'s kernel takes it (`threshold` 0: no dropout).
 */
export interface AttentionKernelAttrs {
  /** The factor of `q kᵀ`. */
  scale: number;
  /** True for the `sequence` layout, false for `heads`. */
  sequence: boolean;
  /** The dropout seed (u32). */
  seed: number;
  /** The u32 a Philox word must reach to keep its probability; 0 keeps all (no dropout). */
  threshold: number;
  /** A kept probability's factor, `1 / (1 - rate)` in float32; 1 without dropout. */
  keepScale: number;
}

/**
 * The memory order of q, k, v and the output of {@linkcode scaledDotAttention}:
 * - `heads`: `[B, h, L, dh]`, one head's positions together;
 * - `sequence`: `[B, L, h, dh]`, one position's heads together: a linear map's `[B, L, d]`
 *   output reshaped (a view, no copy), so that no transpose is needed before or after.
 */
export type AttentionLayout = "heads" | "sequence";

/** The options of {@linkcode scaledDotAttention}. */
export interface AttentionOptions {
  /** The layout of q, k, v and the result (default `heads`). */
  layout?: AttentionLayout;
  /**
   * Dropout on the probabilities with `rate` and `seed`, exactly `lib/nn/dropout.ts`'s
   * `dropout` of the `[B, h, Lq, L]` probabilities; none when the rate is 0 or the seed
   * null (inference), or when this is left out.
   */
  dropout?: { rate: number; seed: number | null };
}

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
 * ops, op for op what `lib/nn/layers.ts` computed before the fused kernels existed: the core
 * of {@linkcode scaledDotAttentionReference}.
 */
export function attentionProbabilities(
  q: Tensor, // [B, h, Lq, dh]
  k: Tensor, // [B, h, L, dh]
  mask: Tensor, // additive, broadcast to [B, h, Lq, L]
  scale: number,
): Tensor {
  return tf.softmax(tf.add(tf.mul(tf.matMul(q, k, false, true), scale), mask)); // [B, h, Lq, L]
}

/** The dropout of `options` as (rate, seed), both 0 / null when there is none. */
function dropoutOf(options: AttentionOptions): { rate: number; seed: number | null } {
  return { rate: options.dropout?.rate ?? 0, seed: options.dropout?.seed ?? null };
}

/**
 * Today's (composed) scaled dot-product attention: the reference path of
 * {@linkcode scaledDotAttention}, with the same arguments. In the `heads` layout it is
 * `matMul(dropout(attentionProbabilities(...)), v)`; in the `sequence` layout q, k and v are
 * transposed to `[B, h, L, dh]` first and the result back to `[B, Lq, h, dh]`, the ops the
 * callers ran themselves before. Without dropout it is `matMul(attentionProbabilities(...),
 * v)` exactly (dropout is then the identity).
 */
export function scaledDotAttentionReference(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  mask: Tensor,
  scale: number,
  options: AttentionOptions = {},
): Tensor4D {
  const { rate, seed } = dropoutOf(options);
  const sequence = options.layout === "sequence";
  const toHeads = (t: Tensor) => sequence ? tf.transpose(t, [0, 2, 1, 3]) : t; // [B, h, L, dh]
  const [qh, kh, vh] = [q, k, v].map(toHeads);
  const probabilities = attentionProbabilities(qh, kh, mask, scale); // [B, h, Lq, L]
  const attended = tf.matMul(dropout(probabilities, rate, seed), vh); // [B, h, Lq, dh]
  return (sequence ? tf.transpose(attended, [0, 2, 1, 3]) : attended) as Tensor4D;
}

/** The shape of a rank-4 `t` in the `heads` layout, `[B, h, L, dh]`. */
function headsShape(t: Tensor, sequence: boolean): [number, number, number, number] {
  const [b, x, y, dh] = t.shape as [number, number, number, number];
  return sequence ? [b, y, x, dh] : [b, x, y, dh];
}

/**
 * Whether the kernels take these tensors: float32, non-empty, shapes as documented for the
 * layout.
 */
function kernelsTake(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, sequence: boolean) {
  const all = [q, k, v, mask];
  if (!all.every((t) => t.rank === 4 && t.dtype === "float32" && t.size > 0)) return false;
  const [b, h, lq, dh] = headsShape(q, sequence); // [B, h, Lq, dh]
  const [kb, kh, l, kdh] = headsShape(k, sequence); // [B, h, L, dh]
  const [mb, mh, mq, ml] = mask.shape;
  return kb === b && kh === h && kdh === dh && tf.util.arraysEqual(v.shape, k.shape) &&
    (mb === b || mb === 1) && mh === 1 && (mq === lq || mq === 1) && ml === l &&
    lq <= ATTENTION_MAX_LENGTH && l <= ATTENTION_MAX_LENGTH && dh <= ATTENTION_MAX_DEPTH &&
    hasKernels(ATTENTION_KERNEL, ATTENTION_GRAD_QUERY_KERNEL, ATTENTION_GRAD_KEY_VALUE_KERNEL);
}

/**
 * Scaled dot-product attention `dropout(softmax(q kᵀ · scale + mask)) v` of queries `q`
 * over keys `k` and values `v`, the softmax over the keys, with an additive `mask` (0
 * where a query may see a key, -1e9 where not) broadcast over the heads: `[B, 1, Lq, L]`
 * (or 1 for B or Lq). In the default `heads` layout q is `[B, h, Lq, dh]`, k and v
 * `[B, h, L, dh]` and the result `[B, h, Lq, dh]`; with `layout: "sequence"` they are
 * `[B, Lq, h, dh]`, `[B, L, h, dh]` and `[B, Lq, h, dh]` (see {@linkcode AttentionLayout}).
 * `options.dropout` drops probabilities exactly as `dropout` of `lib/nn/dropout.ts` on the
 * `[B, h, Lq, L]` probabilities would. Differentiable in q, k and v; the mask is a constant
 * (no gradient flows to it). A fully masked row (a padding query) attends uniformly to its
 * keys, as the composed ops do.
 *
 * Where the active backend has the kernels (webgpu) this is one dispatch forward and two
 * backward, whatever the layout and dropout; elsewhere, and for non-float32 or empty
 * tensors, masks of other shapes, or Lq, L over {@linkcode ATTENTION_MAX_LENGTH} or dh over
 * {@linkcode ATTENTION_MAX_DEPTH}, it is {@linkcode scaledDotAttentionReference}.
 *
 * @throws {RangeError} A dropout rate outside [0, 1), as `dropout` does.
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
  options: AttentionOptions = {},
): Tensor4D {
  const { rate, seed } = dropoutOf(options);
  if (!(rate >= 0 && rate < 1)) {
    throw new RangeError(`dropout rate must be in [0, 1), got ${rate}`);
  }
  const sequence = options.layout === "sequence";
  if (!kernelsTake(q, k, v, mask, sequence)) {
    return scaledDotAttentionReference(q, k, v, mask, scale, options);
  }
  const drop = rate > 0 && seed !== null;
  const kernelAttrs: AttentionKernelAttrs = {
    scale,
    sequence,
    seed: drop ? seed >>> 0 : 0,
    threshold: drop ? keepThreshold(rate) : 0,
    keepScale: drop ? keepScale(rate) : 1,
  };
  const attrs = kernelAttrs as unknown as tf.NamedAttrMap;
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
        ) as Tensor[]; // q's shape, [B, h, Lq, 3]
        const [dk, dv] = tf.engine().runKernel(
          ATTENTION_GRAD_KEY_VALUE_KERNEL,
          { dy, q: qs, k: ks, v: vs, mask: ms, stats },
          attrs,
        ) as Tensor[]; // k's shape each
        stats.dispose();
        return [dq, dk, dv];
      },
    };
  });
  return f(q, k, v) as Tensor4D;
}
