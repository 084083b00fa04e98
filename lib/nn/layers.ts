/**
 * The few layers the models share, as pure functions of a {@linkcode ParamStore}:
 * a matmul whose gradient avoids transposed GEMMs, an embedding lookup whose gradient is a
 * scatter, linear, LayerNorm, GELU, dropout, multi-head causal self-attention, and a
 * post-LayerNorm Transformer block.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { scaledDotAttention } from "./attention.ts";
import { dropout } from "./dropout.ts";
import { geluFused, geluTanhFused, layerNormResidual } from "./fused.ts";
import { embeddingGradient, fusedLinears } from "./fused_ops.ts";
import type { ParamStore } from "./params.ts";

// Inverted dropout, its mask a pure function of the seed and the element's index (Philox),
// drawn on the device where a backend has a kernel for it: see dropout.ts.
export { dropout };

/** What the forward function of {@linkcode withCustomGradient} returns. */
export interface CustomGradientResult {
  /** The op's output. */
  value: tf.Tensor;
  /** Gradients of the inputs, in order, from the output's gradient and the saved tensors. */
  gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[];
}

/**
 * `tf.customGrad` with a typed, fixed-arity signature. `forward` gets the `arity` input
 * tensors and tfjs's `save` function; tensors the gradient needs must go through `save`,
 * because tfjs disposes every other forward-pass intermediate before the backward pass.
 */
export function withCustomGradient(
  arity: number,
  forward: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => CustomGradientResult,
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const f = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const inputs = args.slice(0, arity) as tf.Tensor[];
    const save = args[arity] as tf.GradSaveFunc;
    return forward(inputs, save);
  });
  return (...inputs: tf.Tensor[]) => {
    if (inputs.length !== arity) {
      throw new RangeError(`custom-gradient op takes ${arity} tensors, got ${inputs.length}`);
    }
    return f(...inputs);
  };
}

/** `x` unchanged, with a zero gradient: what flows through it is treated as a constant. */
export function stopGradient(x: tf.Tensor): tf.Tensor {
  const f = withCustomGradient(1, ([t]) => ({
    value: tf.clone(t),
    gradFunc: (dy) => [tf.zerosLike(dy)],
  }));
  return f(x);
}

/**
 * `a @ b` for 2-D tensors, with a gradient written as untransposed matmuls of explicit
 * transposes. tfjs's own MatMul gradient asks for `transposeA`/`transposeB` products,
 * which tfjs-backend-wasm runs on a ~3 GFLOP/s loop instead of its ~40 GFLOP/s XNNPACK
 * path; a transpose is memory-bound and far cheaper than that difference. On webgpu,
 * where the flags cost nothing and a transpose is a dispatch, the gradient uses the flags.
 */
export function matmul(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  const f = withCustomGradient(2, ([x, y], save) => {
    save([x, y]);
    return {
      value: tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D),
      gradFunc: (dy, saved) => {
        const [xs, ys] = saved as tf.Tensor2D[];
        // On webgpu a transpose flag is free and an explicit transpose is a dispatch.
        if (tf.getBackend() === "webgpu") {
          return [
            tf.matMul(dy as tf.Tensor2D, ys, false, true), // [m, k]
            tf.matMul(xs, dy as tf.Tensor2D, true, false), // [k, n]
          ];
        }
        return [
          tf.matMul(dy as tf.Tensor2D, tf.transpose(ys)), // [m, k]
          tf.matMul(tf.transpose(xs), dy as tf.Tensor2D), // [k, n]
        ];
      },
    };
  });
  return f(a, b) as tf.Tensor2D;
}

/**
 * Every item's score for each history of `queries` `[B, q, d]`: the dot products with
 * `itemsT` `[d, N + 1]`, the max over a history's q queries where q > 1 (SIGMA's interests);
 * `[B, N + 1]`. The models' `scores()` from their `rankingQueries()`.
 */
export function queryScores(queries: tf.Tensor3D, itemsT: tf.Tensor2D): tf.Tensor2D {
  const [b, q, d] = queries.shape;
  const all = matmul(tf.reshape(queries, [b * q, d]) as tf.Tensor2D, itemsT); // [B*q, N+1]
  return q === 1 ? all : tf.max(tf.reshape(all, [b, q, -1]), 1) as tf.Tensor2D; // [B, N+1]
}

/**
 * The rows of parameter `name` (an item table) for `ids`, `[...ids.shape, d]`: its
 * {@linkcode embeddingLookup}, or where the table is held outside the store (an int8 table
 * kept for serving, `ParamStore.external`) that table's decoded rows.
 */
export function itemRows(params: ParamStore, name: string, ids: tf.Tensor): tf.Tensor {
  const external = params.external(name);
  return external ? external.rowsOf(ids) : embeddingLookup(params.get(name) as tf.Tensor2D, ids);
}

/**
 * Rows of `table` at `ids` (any shape), giving `[...ids.shape, d]`. Its gradient is a
 * ScatterNd of the incoming gradient (duplicates summed), because tfjs's gather gradient
 * needs UnsortedSegmentSum, which tfjs-backend-wasm lacks and tfjs-backend-cpu runs ~100x
 * slower than a scatter; on webgpu the same sums in one kernel (`embeddingGradient`).
 */
export function embeddingLookup(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
  const [n, d] = table.shape;
  const flatIds = tf.reshape(ids, [-1]) as tf.Tensor1D; // [M]
  const f = withCustomGradient(1, ([t], save) => {
    // The ids must be saved: tfjs disposes every forward-pass tensor that is not an
    // input, output or saved value before it runs gradient functions.
    save([flatIds]);
    return {
      value: tf.gather(t, flatIds),
      // A ScatterNd (tfjs's zero fill and scatter) on cpu and wasm, one kernel on webgpu.
      gradFunc: (dy, saved) => [embeddingGradient(saved[0], dy, n, d)], // [n, d]
    };
  });
  return tf.reshape(f(table), [...ids.shape, d]);
}

/** Inverted dropout of a layer's output: its rate and seed (null: inference, none). */
export interface OutputDropout {
  /** The rate, in [0, 1). */
  rate: number;
  /** The mask's seed; null for none. */
  seed: number | null;
}

/**
 * What follows a {@linkcode linear} layer's product, in this order: `activation`, then
 * `dropout`, then `+ residual`. On webgpu all of it runs in the product's own dispatches.
 */
export interface LinearOptions {
  /** The activation of `x W + b`. */
  activation?: LinearActivation;
  /** Inverted dropout of the (activated) output. */
  dropout?: OutputDropout;
  /** A tensor of the output's shape added last: a residual connection. */
  residual?: tf.Tensor;
}

/**
 * `x @ W + b` over the last axis; `W` is `[in, out]` named `${name}.w`, `b` `${name}.b`,
 * then what `options` adds (activation, dropout, residual).
 */
export function linear(
  p: ParamStore,
  name: string,
  x: tf.Tensor,
  options: LinearOptions = {},
): tf.Tensor {
  return linears(p, [name], x, [options])[0];
}

/**
 * An activation of a {@linkcode linear} layer's output, before its dropout: the exact
 * GELU, the tanh GELU, or the SiLU `x sigmoid(x)`.
 */
export type LinearActivation = "gelu" | "geluTanh" | "silu";

/** The functions the activations are elsewhere than in a fused kernel. */
const ACTIVATION_FUNCTIONS: Record<LinearActivation, (t: tf.Tensor) => tf.Tensor> = {
  gelu: geluFused,
  geluTanh: geluTanhFused,
  silu: (t) => tf.mul(t, tf.sigmoid(t)),
};

/**
 * Several {@linkcode linear} layers of one input (an attention's projections), layer `i`
 * followed by what `options[i]` adds: on webgpu one dispatch forward and one backward for up
 * to three of them (`fusedLinears`), the input's gradient summed, the activation, dropout
 * and residual applied in the same dispatches. Elsewhere each is `matmul`, an add
 * (explicit transposes, for wasm's fast path), the activation, `dropout` and an add, as
 * the composed ops always were.
 */
export function linears(
  p: ParamStore,
  names: string[],
  x: tf.Tensor,
  options: LinearOptions[] = [],
): tf.Tensor[] {
  const inDim = x.shape[x.shape.length - 1];
  const lead = x.shape.slice(0, -1);
  const x2 = tf.reshape(x, [-1, inDim]) as tf.Tensor2D; // [M, in]
  const layers = names.map((name, i) => {
    const { activation, dropout: drop, residual } = options[i] ?? {};
    const w = p.get(`${name}.w`) as tf.Tensor2D; // [in, out]
    return {
      w,
      b: p.get(`${name}.b`), // [out]
      dropout: drop,
      activation: activation && { name: activation, apply: ACTIVATION_FUNCTIONS[activation] },
      residual: residual && tf.reshape(residual, [-1, w.shape[1]]) as tf.Tensor2D, // [M, out]
    };
  });
  const ys = tf.getBackend() === "webgpu"
    ? fusedLinears(x2, layers) // each [M, out]
    : layers.map(({ w, b, dropout: drop, activation, residual }) => {
      const linear = tf.add(matmul(x2, w), b); // [M, out]
      const activated = activation ? activation.apply(linear) : linear;
      const y = drop ? dropout(activated, drop.rate, drop.seed) : activated;
      return residual ? tf.add(residual, y) : y;
    });
  return ys.map((y, i) => tf.reshape(y, [...lead, layers[i].w.shape[1]])); // each [..., out]
}

/** Creates the parameters of {@linkcode linear}. */
export function createLinear(
  p: ParamStore,
  name: string,
  inDim: number,
  outDim: number,
  bias = 0, // initial value of every bias entry (reference code: 0)
): void {
  p.create(`${name}.w`, [inDim, outDim], "normal");
  p.create(`${name}.b`, [outDim], bias === 0 ? "zeros" : bias);
}

/**
 * LayerNorm over the last axis of `residual + x` (of `x` when `residual` is null) with gain
 * `${name}.g` and bias `${name}.b`. `residual` must have `x`'s shape. The add is part of
 * the fused op (`lib/nn/fused.ts`): one dispatch with the normalisation on webgpu; on cpu
 * and wasm the same tfjs ops as `layerNorm(p, name, tf.add(residual, x))` always were.
 */
export function layerNorm(
  p: ParamStore,
  name: string,
  x: tf.Tensor,
  eps = 1e-12,
  residual: tf.Tensor | null = null,
): tf.Tensor {
  return layerNormResidual(x, residual, p.get(`${name}.g`), p.get(`${name}.b`), eps);
}

/** Creates the parameters of {@linkcode layerNorm}. */
export function createLayerNorm(p: ParamStore, name: string, dim: number, bias = 0): void {
  p.create(`${name}.g`, [dim], "ones");
  p.create(`${name}.b`, [dim], bias === 0 ? "zeros" : bias);
}

/**
 * The exact (erf) GELU, as in the reference code: one fused op on webgpu, the composed
 * tfjs ops elsewhere (`geluFused` in `lib/nn/fused.ts`).
 */
export function gelu(x: tf.Tensor): tf.Tensor {
  return geluFused(x);
}

/**
 * Additive attention mask `[B, 1, L, L]` built on the host from the padded inputs: 0 where
 * query t may see key s (s <= t and key s is not padding), -1e9 elsewhere. A fully masked
 * row (a padding query) then attends uniformly instead of producing NaN; its output is
 * never used. Masked keys get exp(-1e9 - max) = 0 exactly, so a row's result does not
 * depend on how much padding precedes it.
 */
export function causalPaddingMask(inputs: Int32Array, batch: number, length: number): tf.Tensor4D {
  const mask = new Float32Array(batch * length * length);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < length; t++) {
      const row = (b * length + t) * length;
      for (let s = 0; s < length; s++) {
        if (s > t || inputs[b * length + s] === 0) mask[row + s] = -1e9;
      }
    }
  }
  return tf.tensor4d(mask, [batch, 1, length, length]);
}

/** Settings shared by every Transformer encoder in this project. */
export interface TransformerSettings {
  /** Model width d. */
  hidden: number;
  /** Attention heads; must divide `hidden`. */
  heads: number;
  /** Width of the feed-forward layer. */
  inner: number;
  /** Dropout on embeddings, attention output and feed-forward output. */
  dropout: number;
  /** Number of blocks. */
  layers: number;
  /** LayerNorm epsilon (reference code: 1e-12). */
  layerNormEps: number;
  /**
   * Dropout on the attention probabilities (BERT's `attention_probs_dropout_prob`).
   * Default 0: none, and no seed is drawn for it, so runs without it draw as before.
   */
  attentionDropout?: number;
}

/**
 * Creates the parameters of {@linkcode transformer} under `prefix`. `outputBias` is the
 * initial bias of the last LayerNorm, i.e. where every output starts on average
 * (reference code: 0).
 */
export function createTransformer(
  p: ParamStore,
  prefix: string,
  s: TransformerSettings,
  outputBias = 0,
): void {
  if (s.hidden % s.heads !== 0) {
    throw new RangeError(`hidden size ${s.hidden} is not divisible by heads ${s.heads}`);
  }
  for (let l = 0; l < s.layers; l++) {
    const b = `${prefix}.block${l}`;
    for (const m of ["q", "k", "v", "o"]) createLinear(p, `${b}.attn.${m}`, s.hidden, s.hidden);
    createLayerNorm(p, `${b}.ln1`, s.hidden);
    createLinear(p, `${b}.ffn.in`, s.hidden, s.inner);
    createLinear(p, `${b}.ffn.out`, s.inner, s.hidden);
    createLayerNorm(p, `${b}.ln2`, s.hidden, l === s.layers - 1 ? outputBias : 0);
  }
}

/** Draws the dropout seeds of one forward pass; null means inference (no dropout). */
export type SeedSource = (() => number) | null;

function seedOf(seeds: SeedSource): number | null {
  return seeds ? seeds() : null;
}

/** Multi-head self-attention with an additive mask `[B, 1, L, L]`. */
function selfAttention(
  p: ParamStore,
  name: string,
  x: tf.Tensor3D, // [B, L, d]
  mask: tf.Tensor4D, // [B, 1, L, L]
  s: TransformerSettings,
  lastQueryOnly = false,
  attentionSeed: number | null = null,
  outputDropout?: OutputDropout,
): tf.Tensor3D {
  const [batch, length, hidden] = x.shape;
  const dh = hidden / s.heads;
  const queries = lastQueryOnly ? 1 : length;
  // Heads as a view, [B, rows, h, dh]: the attention takes this layout (no transposes on
  // webgpu; cpu and wasm transpose inside, as this function did before).
  const split = (t: tf.Tensor, rows: number) => tf.reshape(t, [batch, rows, s.heads, dh]);
  const xq = lastQueryOnly ? tf.slice(x, [0, length - 1, 0], [-1, 1, -1]) : x; // [B, Lq, d]
  const m = lastQueryOnly ? tf.slice(mask, [0, 0, length - 1, 0], [-1, -1, 1, -1]) : mask; // [B, 1, Lq, L]
  // One input for all three projections in training: one kernel each way on webgpu.
  const [q, k, v] = lastQueryOnly
    ? [
      split(linear(p, `${name}.q`, xq), queries),
      split(linear(p, `${name}.k`, x), length),
      split(linear(p, `${name}.v`, x), length),
    ]
    : linears(p, ["q", "k", "v"].map((m) => `${name}.${m}`), x).map((t) => split(t, length));
  const scale = 1 / Math.sqrt(dh);
  // Fused where the backend has the kernels (webgpu), attention dropout included.
  const ctx = scaledDotAttention(q, k, v, m, scale, {
    layout: "sequence",
    dropout: { rate: s.attentionDropout ?? 0, seed: attentionSeed },
  }); // [B, Lq, h, dh]
  const joined = tf.reshape(ctx, [batch, queries, hidden]);
  return linear(p, `${name}.o`, joined, { dropout: outputDropout }) as tf.Tensor3D; // [B, Lq, d]
}

/**
 * A stack of post-LayerNorm Transformer blocks (as in the reference code):
 * `x = LN(x + Drop(Attn(x)))`, `x = LN(x + Drop(FFN(x)))`, FFN = Linear-GELU-Linear.
 * With `lastOnly` the last block computes only the newest position (keys and values
 * still span the history), returning `[B, 1, d]`: what ranking needs, at a fraction of
 * the last block's work.
 */
export function transformer(
  p: ParamStore,
  prefix: string,
  x: tf.Tensor3D, // [B, L, d]
  mask: tf.Tensor4D, // [B, 1, L, L]
  s: TransformerSettings,
  seeds: SeedSource,
  lastOnly = false,
): tf.Tensor3D {
  let h = x;
  for (let l = 0; l < s.layers; l++) {
    const b = `${prefix}.block${l}`;
    const onlyLast = lastOnly && l === s.layers - 1;
    const attentionSeed = (s.attentionDropout ?? 0) > 0 ? seedOf(seeds) : null;
    // The output dropout's seed is drawn after the attention's, as it always was.
    const drop = { rate: s.dropout, seed: seedOf(seeds) };
    const attn = selfAttention(p, `${b}.attn`, h, mask, s, onlyLast, attentionSeed, drop); // [B, L or 1, d]
    const residual = onlyLast ? tf.slice(h, [0, h.shape[1] - 1, 0], [-1, 1, -1]) : h; // [B, L or 1, d]
    h = layerNorm(p, `${b}.ln1`, attn, s.layerNormEps, residual) as tf.Tensor3D;
    const inner = linear(p, `${b}.ffn.in`, h, { activation: "gelu" });
    const ffn = linear(p, `${b}.ffn.out`, inner, {
      dropout: { rate: s.dropout, seed: seedOf(seeds) },
    });
    h = layerNorm(p, `${b}.ln2`, ffn, s.layerNormEps, h) as tf.Tensor3D;
  }
  return h; // [B, L, d], or [B, 1, d] with lastOnly
}

/**
 * Inclusive cumulative sum along `axis`. Its gradient is the reversed cumulative sum of
 * the incoming gradient, computed directly: tfjs 4.22's own Cumsum gradient returns a
 * wrongly transposed shape for any axis but the last. Every cumsum here runs on a 2-D
 * tensor along its last axis, because tfjs-backend-webgpu 4.22 sums wrongly along axis 1
 * of a `[B, L, 1]` tensor (seen: counts off by 5 on a 5 x 6 batch).
 */
export function cumulativeSum(x: tf.Tensor, axis: number): tf.Tensor {
  const rank = x.shape.length;
  const ax = axis < 0 ? axis + rank : axis;
  // Move `axis` last, flatten the rest: [rows, n].
  const perm = [...Array(rank).keys()].filter((i) => i !== ax).concat(ax);
  const inverse = perm.map((_, i) => perm.indexOf(i));
  const n = x.shape[ax];
  // When every axis after `axis` has size 1 the memory order is already [rows, n].
  const trivial = x.shape.slice(ax + 1).every((size) => size === 1);
  const along = (t: tf.Tensor, reverse: boolean) => {
    if (trivial) return tf.reshape(tf.cumsum(tf.reshape(t, [-1, n]), 1, false, reverse), t.shape);
    const moved = tf.transpose(t, perm);
    const summed = tf.cumsum(tf.reshape(moved, [-1, n]), 1, false, reverse); // [rows, n]
    return tf.transpose(tf.reshape(summed, moved.shape), inverse);
  };
  const f = withCustomGradient(1, ([t]) => ({
    value: along(t, false),
    gradFunc: (dy) => [along(dy, true)],
  }));
  return f(x);
}

/**
 * One-hot float rows `[..., depth]` of int32 `indices`, built by arithmetic against a
 * range: `tf.oneHot` followed by a cast returns raw int bit patterns on tfjs-backend-wasm
 * 4.22, and `tf.oneHot` rejects depth 1.
 */
export function oneHotFloat(indices: tf.Tensor, depth: number): tf.Tensor {
  // 1 - min(|i - j|, 1) is 1 where i = j and 0 elsewhere for integer i, j. Float arithmetic
  // throughout: the bool result of tf.equal, cast to float inside a custom-gradient op,
  // came back as garbage on tfjs-backend-webgpu 4.22 once its buffer was reused.
  const range = tf.range(0, depth, 1, "float32"); // [depth]
  const distance = tf.abs(tf.sub(tf.expandDims(tf.cast(indices, "float32"), -1), range));
  return tf.sub(1, tf.minimum(distance, 1));
}
