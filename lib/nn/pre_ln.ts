/**
 * The pre-LayerNorm Transformer block of the diffusion recommenders (DiffuRec's
 * Approximator, spec `DIFFUREC.md` §2.6): `h += Drop(MHA(LN1(h)))`, `h += Drop(FFN(LN2(h)))`,
 * `h = Drop(h)`, with dropout on the attention probabilities, a tanh-approximated GELU and
 * PyTorch's initialisation (uniform ±1/sqrt(fan_in) for the attention projections and every
 * bias, Xavier normal for the attention output and both feed-forward weights).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor3D, Tensor4D } from "./tensor_types.ts";
import { scaledDotAttention } from "./attention.ts";
import { createLayerNorm, dropout, layerNorm, linear, linears, type SeedSource } from "./layers.ts";
import type { ParamStore } from "./params.ts";
import { geluTanhFused } from "./fused.ts";

/** The settings of a stack of {@linkcode preLnBlock}s. */
export interface PreLnSettings {
  /** Width d. */
  hidden: number;
  /** Attention heads; divide `hidden`. */
  heads: number;
  /** Feed-forward width (the authors' code: 4d). */
  inner: number;
  /** Dropout on attention probabilities, sublayer outputs, the FFN's inner layer and the block output. */
  dropout: number;
  /** LayerNorm epsilon (the authors' code: 1e-12). */
  layerNormEps: number;
}

/** How padding is masked in attention (spec §2.6). */
export type AttentionMask = "keys" | "compat";

/** PyTorch `Linear`'s default bound, 1/sqrt(fan_in). */
const torchBound = (fanIn: number) => 1 / Math.sqrt(fanIn);

/** A linear map with PyTorch's default init, or a Xavier-normal weight (`xavier`). */
export function createTorchLinear(
  p: ParamStore,
  name: string,
  inDim: number,
  outDim: number,
  xavier = false,
): void {
  p.create(
    `${name}.w`,
    [inDim, outDim],
    xavier ? { normal: Math.sqrt(2 / (inDim + outDim)) } : { uniform: torchBound(inDim) },
  );
  p.create(`${name}.b`, [outDim], { uniform: torchBound(inDim) });
}

/** Creates the parameters of one {@linkcode preLnBlock} under `name`. */
export function createPreLnBlock(p: ParamStore, name: string, s: PreLnSettings): void {
  if (s.hidden % s.heads !== 0) {
    throw new RangeError(`hidden (${s.hidden}) must be divisible by heads (${s.heads})`);
  }
  for (const m of ["q", "k", "v"]) createTorchLinear(p, `${name}.attn.${m}`, s.hidden, s.hidden);
  createTorchLinear(p, `${name}.attn.o`, s.hidden, s.hidden, true);
  createLayerNorm(p, `${name}.ln1`, s.hidden);
  createTorchLinear(p, `${name}.ffn.in`, s.hidden, s.inner, true);
  createTorchLinear(p, `${name}.ffn.out`, s.inner, s.hidden, true);
  createLayerNorm(p, `${name}.ln2`, s.hidden);
}

/**
 * GELU, tanh approximation (the authors' code): `0.5 x (1 + tanh(u))`, `u = sqrt(2/π)(x +
 * 0.044715 x³)`, computed as `x · sigmoid(2u)`, the same function (`(1 + tanh(u)) / 2 =
 * sigmoid(2u)`). tfjs-backend-wasm's `Tanh` took 42 ms on a `[2560, 512]` tensor against 8 ms
 * for `Sigmoid`, and this form makes 6 passes over the tensor instead of 9: DiffuRec's
 * evaluation spent a quarter of its time in `Tanh`. It is `geluTanhFused` of `fused.ts`: one
 * dispatch forward and one backward on webgpu, elsewhere the composed ops, as before.
 */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  return geluTanhFused(x);
}

/**
 * The additive attention mask `[B, 1, L, L]` of left-padded `inputs`, without a causal part
 * (the Approximator reads the whole history):
 * - `keys`: -1e9 at every padded key, so padding never reaches a real position;
 * - `compat` (the authors' code): -1e9 over the whole row of a padded query, keys unmasked,
 *   so real positions attend to padding too.
 */
export function paddingMask(
  inputs: Int32Array,
  batch: number,
  length: number,
  mode: AttentionMask,
): Tensor4D {
  const mask = new Float32Array(batch * length * length);
  for (let b = 0; b < batch; b++) {
    for (let q = 0; q < length; q++) {
      const row = (b * length + q) * length;
      const paddedQuery = inputs[b * length + q] === 0;
      for (let k = 0; k < length; k++) {
        const masked = mode === "keys" ? inputs[b * length + k] === 0 : paddedQuery;
        if (masked) mask[row + k] = -1e9;
      }
    }
  }
  return tf.tensor4d(mask, [batch, 1, length, length]);
}

function seedOf(seeds: SeedSource): number | null {
  return seeds ? seeds() : null;
}

/**
 * `residual + Drop(MHA(xq, x))`: multi-head attention of queries `xq` `[B, Lq, d]` over `x`
 * `[B, L, d]`, its output projection's dropout and the residual add in that layer's kernel
 * on webgpu.
 */
function attention(
  p: ParamStore,
  name: string,
  xq: Tensor3D,
  x: Tensor3D,
  mask: Tensor4D, // [B, 1, Lq, L]
  s: PreLnSettings,
  seeds: SeedSource,
  residual: Tensor3D, // [B, Lq, d]
): Tensor3D {
  const [batch, length, hidden] = x.shape;
  const queries = xq.shape[1];
  const dh = hidden / s.heads;
  // Heads as a view, [B, rows, h, dh]: the attention takes this layout (no transposes on
  // webgpu; cpu and wasm transpose inside, as this function did before).
  const split = (t: tf.Tensor, rows: number) => tf.reshape(t, [batch, rows, s.heads, dh]);
  // One input for all three projections (not so for a last-position read-out): one kernel
  // each way on webgpu.
  const [q, k, v] = xq === x
    ? linears(p, ["q", "k", "v"].map((m) => `${name}.${m}`), x).map((t) => split(t, length))
    : [
      split(linear(p, `${name}.q`, xq), queries),
      split(linear(p, `${name}.k`, x), length),
      split(linear(p, `${name}.v`, x), length),
    ];
  const scale = 1 / Math.sqrt(dh);
  const seed = seedOf(seeds); // drawn as before, so that later draws do not move
  // Fused where the backend has the kernels (webgpu), the dropout on the probabilities
  // included (none in inference, or at a rate of 0).
  const context = scaledDotAttention(q, k, v, mask, scale, {
    layout: "sequence",
    dropout: { rate: s.dropout, seed },
  }); // [B, Lq, h, dh]
  // The output's dropout, drawn after the probabilities' as it always was.
  const drop = { rate: s.dropout, seed: seedOf(seeds) };
  const joined = tf.reshape(context, [batch, queries, hidden]);
  return linear(p, `${name}.o`, joined, { dropout: drop, residual }) as Tensor3D; // [B, Lq, d]
}

/**
 * The self-attention sublayer `h + Drop(MHA(LN(h)))` with the LayerNorm `ln` (default the
 * block's `ln1`). With `lastOnly` only the newest position is computed (keys and values
 * still span the history): `[B, 1, d]`.
 */
export function selfAttentionSublayer(
  p: ParamStore,
  name: string,
  h: Tensor3D, // [B, L, d]
  mask: Tensor4D, // [B, 1, L, L]
  s: PreLnSettings,
  seeds: SeedSource,
  lastOnly = false,
  ln = `${name}.ln1`,
): Tensor3D {
  const length = h.shape[1];
  const normed = layerNorm(p, ln, h, s.layerNormEps) as Tensor3D; // [B, L, d]
  const last = (t: tf.Tensor) => tf.slice(t, [0, length - 1, 0], [-1, 1, -1]) as Tensor3D;
  const queries = lastOnly ? last(normed) : normed;
  const rows = lastOnly ? tf.slice(mask, [0, 0, length - 1, 0], [-1, -1, 1, -1]) as Tensor4D : mask;
  return attention(p, `${name}.attn`, queries, normed, rows, s, seeds, lastOnly ? last(h) : h);
}

/** The feed-forward sublayer `x + Drop(W2 Drop(GELU(W1 LN2(x))))`. */
export function feedForwardSublayer(
  p: ParamStore,
  name: string,
  x: Tensor3D,
  s: PreLnSettings,
  seeds: SeedSource,
): Tensor3D {
  const normed = layerNorm(p, `${name}.ln2`, x, s.layerNormEps);
  const drop = { rate: s.dropout, seed: seedOf(seeds) };
  const inner = linear(p, `${name}.ffn.in`, normed, { dropout: drop, activation: "geluTanh" }); // dropout(GELU(W1 x))
  const drop2 = { rate: s.dropout, seed: seedOf(seeds) };
  return linear(p, `${name}.ffn.out`, inner, { dropout: drop2, residual: x }) as Tensor3D;
}

/**
 * One pre-LN block of DiffuRec: self-attention and feed-forward sublayers, then dropout on
 * the block's output. With `lastOnly` only the newest position is computed: `[B, 1, d]`,
 * all a read-out from the last position needs.
 */
export function preLnBlock(
  p: ParamStore,
  name: string,
  h: Tensor3D, // [B, L, d]
  mask: Tensor4D, // [B, 1, L, L]
  s: PreLnSettings,
  seeds: SeedSource,
  lastOnly = false,
): Tensor3D {
  const x = selfAttentionSublayer(p, name, h, mask, s, seeds, lastOnly);
  return dropout(feedForwardSublayer(p, name, x, s, seeds), s.dropout, seedOf(seeds)) as Tensor3D;
}
