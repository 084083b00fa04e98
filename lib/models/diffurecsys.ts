/**
 * DiffuRecSys (Zolghadr, Winther and Jeha, ROEGEN @ RecSys 2024): DiffuRec with a
 * cross-attention Approximator, where the noised target (scaled by Λ) attends to the
 * history instead of being added to it, and optional offset noise in the training forward
 * process. Spec: `DIFFUREC.md` §3.
 *
 * `ca: "fixed"` (default, spec §3.4): per block, one query per example from
 * x̃ = Λ ⊙ (x_t + temb) (Λ `[B, 1, d]`) attends over the history (keys normalised over
 * positions, padding excluded); its output is added to every real position; then
 * self-attention and feed-forward sublayers, each with its own LayerNorm; blocks chained.
 * `ca: "compat"` (spec §3.3, the authors' code): queries from Λ ⊙ (x_t + temb) at every
 * position, keys normalised over heads, padding included, padded outputs set to -1e9, one
 * LayerNorm shared by the first two sublayers, and every block applied to the history
 * itself, so only the last block's output counts (the others are not even computed here:
 * their parameters exist, as in the code, and get no gradient).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor3D } from "../nn/tensor_types.ts";
import { createLayerNorm, dropout, type SeedSource } from "../nn/layers.ts";
import { compatCrossAttention, crossAttention } from "../nn/cross_attention.ts";
import {
  createPreLnBlock,
  createTorchLinear,
  feedForwardSublayer,
  selfAttentionSublayer,
} from "../nn/pre_ln.ts";
import type { ParamStore } from "../nn/params.ts";
import { type OffsetNoise, trainingNoise } from "../diffusion/mod.ts";
import {
  type ApproximatorInput,
  DIFFUSION_DEFAULTS,
  DIFFUSION_HELP,
  type DiffusionModelConfig,
  DiffusionRecommender,
  validateDiffusionConfig,
} from "./_diffusion.ts";
import { blockSettings } from "./diffurec.ts";
import { checkChoices } from "./_model.ts";

/** DiffuRecSys's configuration: DiffuRec's fields and four of its own. */
export interface DiffuRecSysConfig extends DiffusionModelConfig {
  /** Cross-attention: `fixed` (default, spec §3.4) or `compat` (the authors' code, §3.3). */
  ca: "fixed" | "compat";
  /** With `ca: fixed`: `efficient` (the authors' intent) or `softmax` (scaled dot product). */
  caAttention: "efficient" | "softmax";
  /** Training noise: `none` (code at HEAD), `compat` (i.i.d., as coded when on), `shared` (offset). */
  offsetNoise: OffsetNoise;
  /** Scale of the extra noise (code: 0.1). */
  offsetScale: number;
}

/** Defaults of every {@linkcode DiffuRecSysConfig} field except `numItems` (spec §4, §8). */
export const DIFFURECSYS_DEFAULTS: Omit<DiffuRecSysConfig, "numItems"> = {
  ...DIFFUSION_DEFAULTS,
  maxLength: 100,
  hidden: 256,
  inner: 1024,
  seed: 2000,
  evalSeed: 2000,
  ca: "fixed",
  caAttention: "efficient",
  offsetNoise: "none",
  offsetScale: 0.1,
};

/** One line per {@linkcode DiffuRecSysConfig} field, for `--help`. */
export const DIFFURECSYS_HELP: Record<keyof typeof DIFFURECSYS_DEFAULTS, string> = {
  ...DIFFUSION_HELP,
  maxLength: "longest history read (code at HEAD 100)",
  hidden: "width d (code at HEAD 256)",
  inner: "feed-forward width (code 4d = 1024)",
  ca: "fixed (one query per example, blocks chained) | compat (the authors' code)",
  caAttention: "efficient (keys softmaxed over positions) | softmax (dot product), with --ca fixed",
  offsetNoise: "none (code at HEAD) | compat (i.i.d., as coded when on) | shared (offset noise)",
  offsetScale: "scale of the extra training noise (code 0.1)",
};

/**
 * Checks every field of a full DiffuRecSys config, naming the first bad one.
 *
 * @throws {RangeError} A field out of its domain, with its value.
 */
export function validateDiffuRecSysConfig(c: DiffuRecSysConfig): void {
  validateDiffusionConfig(c);
  const choices: [keyof DiffuRecSysConfig & string, readonly unknown[]][] = [
    ["ca", ["fixed", "compat"]],
    ["caAttention", ["efficient", "softmax"]],
    ["offsetNoise", ["none", "compat", "shared"]],
  ];
  checkChoices(c, choices);
  if (!(Number.isFinite(c.offsetScale) && c.offsetScale >= 0)) {
    throw new RangeError(`offsetScale must be a finite number >= 0, got ${c.offsetScale}`);
  }
}

/** DiffuRecSys behind the `SequentialModel` interface. */
export class DiffuRecSys extends DiffusionRecommender<DiffuRecSysConfig> {
  /** Always `"diffurecsys"`. */
  readonly name = "diffurecsys";

  /**
   * Creates DiffuRecSys with fresh, seeded parameters.
   *
   * @throws {RangeError} A config field out of its domain (the field is named).
   */
  constructor(config: Partial<DiffuRecSysConfig> & { numItems: number }) {
    super({ ...DIFFURECSYS_DEFAULTS, ...config }, validateDiffuRecSysConfig);
  }

  /** Per block: cross-attention `ca.{q,k,v,o}` (and its own `ln0` when fixed), then a pre-LN block. */
  protected createApproximator(p: ParamStore, c: DiffuRecSysConfig): void {
    for (let l = 0; l < c.layers; l++) {
      const b = `block${l}`;
      for (const m of ["q", "k", "v"]) createTorchLinear(p, `${b}.ca.${m}`, c.hidden, c.hidden);
      createTorchLinear(p, `${b}.ca.o`, c.hidden, c.hidden, true);
      if (c.ca === "fixed") createLayerNorm(p, `${b}.ln0`, c.hidden);
      createPreLnBlock(p, b, blockSettings(c));
    }
  }

  /** The training noise: standard normal, or with `offsetNoise`'s extra part. */
  protected override forwardNoise(rowSeeds: ArrayLike<number>): tf.Tensor2D {
    const c = this.config;
    return trainingNoise(rowSeeds, c.hidden, c.offsetNoise, c.offsetScale);
  }

  /** `ca: compat` sums keys and values over every position, padding included. */
  protected override readsPadding(): boolean {
    return super.readsPadding() || this.config.ca === "compat";
  }

  protected approximator(input: ApproximatorInput): Tensor3D {
    const c = this.config;
    const s = blockSettings(c);
    const { h0, mask, real, target, lambdaSeeds, seeds } = input;
    const length = h0.shape[1];
    if (c.ca === "compat") {
      // Every block reads the history itself: only the last one's output is kept.
      const b = `block${c.layers - 1}`;
      const lambda = this.lambda(lambdaSeeds, length); // [B, L, d]: one draw per position
      const queries = tf.mul(lambda, tf.expandDims(target, 1)) as Tensor3D; // [B, L, d]
      const attended = compatCrossAttention(this.params, b, h0, queries, real, s, seeds);
      const a = tf.add(h0, dropout(attended, s.dropout, seedOf(seeds))) as Tensor3D;
      const x = selfAttentionSublayer(this.params, b, a, mask, s, seeds, true);
      return feedForwardSublayer(this.params, b, x, s, seeds); // [B, 1, d]
    }
    // One Λ per example, drawn once per call: every block's query is the same x̃.
    const lambda = this.lambda(lambdaSeeds, 1); // [B, 1, d]
    const query = tf.mul(lambda, tf.expandDims(target, 1)) as Tensor3D; // [B, 1, d]
    let h = h0;
    for (let l = 0; l < c.layers; l++) {
      const b = `block${l}`;
      const context = crossAttention(this.params, b, h, query, real, s, c.caAttention); // [B, 1, d]
      h = tf.add(h, dropout(tf.mul(real, context), s.dropout, seedOf(seeds))) as Tensor3D;
      const last = l === c.layers - 1;
      h = feedForwardSublayer(
        this.params,
        b,
        selfAttentionSublayer(this.params, b, h, mask, s, seeds, last),
        s,
        seeds,
      );
    }
    return h; // [B, 1, d]
  }
}

function seedOf(seeds: SeedSource): number | null {
  return seeds ? seeds() : null;
}
