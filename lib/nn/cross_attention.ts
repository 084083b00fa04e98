/**
 * Cross-attention of a diffusion target over a history (DiffuRecSys's Approximator, spec
 * `DIFFUREC.md` §3.3-§3.4): the corrected single-query form and the authors' coded form.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor3D } from "./tensor_types.ts";
import { scaledDotAttention } from "./attention.ts";
import { dropout, layerNorm, linear, type SeedSource } from "./layers.ts";
import type { ParamStore } from "./params.ts";
import type { PreLnSettings } from "./pre_ln.ts";

/** Splits `[B, rows, d]` into heads `[B, h, rows, dh]`. */
function heads(t: tf.Tensor, h: number): tf.Tensor4D {
  const [batch, rows, d] = t.shape;
  return tf.transpose(tf.reshape(t, [batch, rows, h, d / h]), [0, 2, 1, 3]) as tf.Tensor4D;
}

/** Joins heads `[B, h, rows, dh]` into `[B, rows, d]`. */
function joinHeads(t: tf.Tensor4D): Tensor3D {
  const [batch, h, rows, dh] = t.shape;
  return tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [batch, rows, h * dh]) as Tensor3D;
}

/**
 * The corrected cross-attention (spec §3.4) of one query per example `[B, 1, d]` over the
 * history `h` `[B, L, d]` (normalised by the block's `ln0`), padding excluded: `efficient`
 * softmaxes q over features and k over positions and returns W_o (q̃ k̃ᵀ v); `softmax` is
 * scaled dot-product attention. Returns `[B, 1, d]`.
 */
export function crossAttention(
  p: ParamStore,
  name: string,
  h: Tensor3D,
  query: Tensor3D,
  real: Tensor3D, // [B, L, 1]
  s: PreLnSettings,
  kind: "efficient" | "softmax",
): Tensor3D {
  const normed = layerNorm(p, `${name}.ln0`, h, s.layerNormEps);
  const q = heads(linear(p, `${name}.ca.q`, query), s.heads); // [B, h, 1, dh]
  const k = heads(linear(p, `${name}.ca.k`, normed), s.heads); // [B, h, L, dh]
  const v = heads(linear(p, `${name}.ca.v`, normed), s.heads); // [B, h, L, dh]
  const padding = tf.mul(tf.sub(1, real), -1e9); // [B, L, 1]: -1e9 at padding
  let context: tf.Tensor4D;
  if (kind === "efficient") {
    const qSoft = tf.softmax(q); // over dh
    // Keys softmaxed over positions (axis 2), padded positions excluded.
    const kSoft = tf.softmax(
      tf.add(tf.transpose(k, [0, 1, 3, 2]), tf.reshape(padding, [-1, 1, 1, h.shape[1]])),
    ); // [B, h, dh, L]
    const summary = tf.matMul(kSoft, v); // [B, h, dh, dh]: sum over real positions
    context = tf.matMul(qSoft, summary) as tf.Tensor4D; // [B, h, 1, dh]
  } else {
    const dh = s.hidden / s.heads;
    const mask = tf.reshape(padding, [-1, 1, 1, h.shape[1]]); // [B, 1, 1, L]
    // softmax(q kᵀ / sqrt(dh) + mask) v: fused where the backend has the kernels (webgpu).
    context = scaledDotAttention(q, k, v, mask, 1 / Math.sqrt(dh)); // [B, h, 1, dh]
  }
  return linear(p, `${name}.ca.o`, joinHeads(context)) as Tensor3D;
}

/**
 * The authors' cross-attention (spec §3.3): queries `[B, L, d]` at every position, k
 * softmaxed over the heads axis, the summary kᵀv over all positions (padding included), no
 * scaling, padded outputs set to -1e9, dropout, then W_o. Returns `[B, L, d]`.
 */
export function compatCrossAttention(
  p: ParamStore,
  name: string,
  h: Tensor3D,
  queries: Tensor3D,
  real: Tensor3D, // [B, L, 1]
  s: PreLnSettings,
  seeds: SeedSource,
): Tensor3D {
  const normed = layerNorm(p, `${name}.ln1`, h, s.layerNormEps); // the LN shared with MHA
  const q = tf.softmax(heads(linear(p, `${name}.ca.q`, queries), s.heads)); // over dh
  const k = heads(linear(p, `${name}.ca.k`, normed), s.heads); // [B, h, L, dh]
  const kSoft = tf.transpose(tf.softmax(tf.transpose(k, [0, 2, 3, 1])), [0, 3, 1, 2]); // over heads
  const v = heads(linear(p, `${name}.ca.v`, normed), s.heads);
  const summary = tf.matMul(kSoft, v, true, false); // [B, h, dh, dh]
  const out = joinHeads(tf.matMul(q, summary) as tf.Tensor4D); // [B, L, d]
  const filled = tf.add(tf.mul(out, real), tf.mul(tf.sub(1, real), -1e9)); // padding: -1e9
  return linear(p, `${name}.ca.o`, dropout(filled, s.dropout, seeds ? seeds() : null)) as Tensor3D;
}
