/**
 * DiffuRec (Li, Sun and Li, ACM TOIS 2023): the target item's embedding is noised by a
 * diffusion forward process, an Approximator (pre-LN Transformer) reads the history plus
 * the noised target scaled by random uncertainty weights Λ and predicts the clean target
 * embedding; recommendation runs the DDPM reverse chain from Gaussian noise and ranks items
 * by inner product with its result. Spec: `DIFFUREC.md` §2; what the authors' code does is
 * the `compat` setting of each option that fixes a bug.
 *
 * Training examples: every target position of a training batch becomes one example, its
 * history the prefix before it (DiffuRec's one target per prefix: the Approximator reads
 * the whole history without a causal mask and adds one noised target to all of it, so the
 * positions of a row cannot share one pass as in SASRec). The shared machinery (history
 * embedding, step MLP, Λ, loss, reverse chain) is in `_diffusion.ts`; this file is the
 * Approximator.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor3D } from "../nn/tensor_types.ts";
import { createPreLnBlock, preLnBlock, type PreLnSettings } from "../nn/pre_ln.ts";
import type { ParamStore } from "../nn/params.ts";
import {
  type ApproximatorInput,
  DIFFUSION_DEFAULTS,
  DIFFUSION_HELP,
  type DiffusionModelConfig,
  DiffusionRecommender,
  validateDiffusionConfig,
} from "./_diffusion.ts";

export { prefixExamples } from "./_diffusion.ts";

/** DiffuRec's configuration: the diffusion recommenders' fields (see `_diffusion.ts`). */
export type DiffuRecConfig = DiffusionModelConfig;

/** Defaults of every {@linkcode DiffuRecConfig} field except `numItems`: the authors' code's. */
export const DIFFUREC_DEFAULTS: Omit<DiffuRecConfig, "numItems"> = DIFFUSION_DEFAULTS;

/** One line per {@linkcode DiffuRecConfig} field, for `--help`. */
export const DIFFUREC_HELP: Record<keyof typeof DIFFUREC_DEFAULTS, string> = DIFFUSION_HELP;

/**
 * Checks every field of a full DiffuRec config, naming the first bad one.
 *
 * @throws {RangeError} A field out of its domain, with its value.
 */
export function validateDiffuRecConfig(c: DiffuRecConfig): void {
  validateDiffusionConfig(c);
}

/** The pre-LN block settings of a config. */
export function blockSettings(c: DiffusionModelConfig): PreLnSettings {
  return {
    hidden: c.hidden,
    heads: c.heads,
    inner: c.inner,
    dropout: c.dropout,
    layerNormEps: c.layerNormEps,
  };
}

/** DiffuRec behind the `SequentialModel` interface. */
export class DiffuRec extends DiffusionRecommender<DiffuRecConfig> {
  /** Always `"diffurec"`. */
  readonly name = "diffurec";

  /**
   * Creates DiffuRec with fresh, seeded parameters.
   *
   * @throws {RangeError} A config field out of its domain (the field is named).
   */
  constructor(config: Partial<DiffuRecConfig> & { numItems: number }) {
    super({ ...DIFFUREC_DEFAULTS, ...config }, validateDiffuRecConfig);
  }

  /** `layers` pre-LN blocks, `block0..`. */
  protected createApproximator(p: ParamStore, c: DiffuRecConfig): void {
    for (let l = 0; l < c.layers; l++) createPreLnBlock(p, `block${l}`, blockSettings(c));
  }

  /**
   * Z = H0 + Λ ⊙ (x_t + temb), Λ `[B, L, d]` drawn per element, added to every position
   * (padding included, as in the code), then the blocks; the last computes only the newest
   * position.
   */
  protected approximator(input: ApproximatorInput): Tensor3D {
    const c = this.config;
    const { h0, mask, target, lambdaSeeds, seeds } = input;
    const lambda = this.lambda(lambdaSeeds, h0.shape[1]); // [B, L, d]
    let h = tf.add(h0, tf.mul(lambda, tf.expandDims(target, 1))) as Tensor3D; // [B, L, d]
    for (let l = 0; l < c.layers; l++) {
      h = preLnBlock(
        this.params,
        `block${l}`,
        h,
        mask,
        blockSettings(c),
        seeds,
        l === c.layers - 1,
      );
    }
    return h; // [B, 1, d]
  }
}
