/**
 * The small interface every model implements (in the spirit of RecBole's models):
 * a loss for training, and scores of the full catalogue for ranking.
 *
 * @module
 */
import type { Scalar, Tensor2D, Tensor3D } from "../nn/tensor_types.ts";
import type { EvalBatch, TrainBatch } from "../data/types.ts";
import type { ParamStore } from "../nn/params.ts";

/** What every model offers to the trainer and the evaluator. */
export interface SequentialModel<C = unknown> {
  /** Short model name, as in `--model`. */
  readonly name: string;
  /** The full configuration, stored in checkpoints. */
  readonly config: C;
  /** The trainable parameters. */
  readonly params: ParamStore;
  /**
   * The scalar training loss of a batch, averaged over positions with a target.
   * `seeds` draws the seeds of every random choice of this step (dropout, sampling).
   * `step` is the 0-based Adam step and `epoch` the 1-based epoch this loss is for, for
   * models whose loss follows a schedule (SIGMA's KL warm-up, its authors'-code MIE
   * weight); absent means after every schedule has ended.
   * Also returns named parts of the loss for logging, as scalars.
   */
  loss(
    batch: TrainBatch,
    seeds: () => number,
    step?: number,
    epoch?: number,
  ): { loss: Scalar; parts: Record<string, Scalar> };
  /** Scores `[B, numItems + 1]` of every item (column 0 = padding) after each history. */
  scores(batch: EvalBatch): Tensor2D;
  /**
   * The query vectors `[B, q, d]` that {@linkcode SequentialModel.scores} ranks by: item
   * `i`'s score after history `b` is `max_j queries[b, j] · itemVectors()[i]` (q = 1: the
   * plain dot product), computed by `scores` from these very tensors. Lets a caller rank a
   * large catalogue in blocks (`lib/inference/_blocked_top_k.ts`) without the `[B, N + 1]`
   * scores. Models that have it also have `itemVectors`.
   */
  rankingQueries?(batch: EvalBatch): Tensor3D;
  /**
   * Item vectors `[N + 1, d]` whose cosine says how alike two items are, for diversified
   * lists (`lib/eval/diversify.ts`, MMR). The models here return their item embedding
   * table itself: the caller must not dispose it.
   */
  itemVectors?(): Tensor2D;
  /**
   * The user's interests after each history, for interest-aware diversified lists:
   * `profile` `[B, k]`, each row's interest weights (summing to 1), and `items`
   * `[N + 1, k]`, each item's membership in each interest (rows summing to 1). SIGMA: its
   * intensities alpha at the newest position and MIE-VAE's item-to-category
   * probabilities. Absent for models without interests.
   */
  interestsForRanking?(batch: EvalBatch): { profile: Tensor2D; items: Tensor2D };
  /**
   * Memory of one target position of a training batch padded to `length`, relative to one
   * SASRec position (default 1). The trainer splits batches so that positions times this
   * stays within its `maxPositions`: a model that re-reads a history per target (the
   * diffusion models) costs about `length` times more.
   */
  trainingCost?(length: number): number;
  /**
   * What in this model's config prevents a gradient spike that froze Adam's state, for the
   * trainer's warning when one did (see `Adam.largestSecondMoment`); undefined when nothing
   * known does.
   */
  frozenOptimizerHint?(): string | undefined;
}

/** A 32-bit seed stream for one training step, derived from a run seed and a step number. */
export function stepSeeds(runSeed: number, step: number): () => number {
  let state = (Math.imul(runSeed >>> 0, 0x9e3779b1) ^ Math.imul(step + 1, 0x85ebca77)) >>> 0;
  return () => {
    // splitmix32-style mixing: cheap, and different steps give unrelated streams.
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/**
 * The configuration fields every Transformer-based model here shares; each model's config
 * extends it (and documents its own `layers`, whose default differs between models).
 */
export interface SequenceEncoderConfig {
  /** Number of real items N; ids 1..N, 0 = padding. Set from the data. */
  numItems: number;
  /** Longest history the model reads; older items are dropped. Paper: 100. */
  maxLength: number;
  /** Embedding and hidden width d. Paper: 128 (useful range 32-256). */
  hidden: number;
  /** Attention heads; divides `hidden`. Paper: 4. */
  heads: number;
  /** Feed-forward width of the Transformer blocks. RecBole's SASRec default: 256. */
  inner: number;
  /** Dropout on embeddings and block outputs. Paper: 0.3 (range 0-0.5). */
  dropout: number;
  /** LayerNorm epsilon. Reference code: 1e-12. */
  layerNormEps: number;
  /** Standard deviation of the normal initialisation. Reference code: 0.02. */
  initStd: number;
  /** Seed of the initial parameters. */
  seed: number;
}

/** Defaults of the shared fields of {@linkcode SequenceEncoderConfig}. */
export const SEQUENCE_ENCODER_DEFAULTS: Omit<SequenceEncoderConfig, "numItems"> = {
  maxLength: 100,
  hidden: 128,
  heads: 4,
  inner: 256,
  dropout: 0.3,
  layerNormEps: 1e-12,
  initStd: 0.02,
  seed: 42,
};

/** `--help` lines of the shared fields of {@linkcode SequenceEncoderConfig}. */
export const SEQUENCE_ENCODER_HELP: Record<keyof typeof SEQUENCE_ENCODER_DEFAULTS, string> = {
  maxLength: "longest history read; older items dropped (paper 100)",
  hidden: "embedding and hidden width d (paper 128; 32-256)",
  heads: "attention heads, divides hidden (paper 4)",
  inner: "feed-forward width (RecBole default 256)",
  dropout: "dropout rate (paper 0.3; 0-0.5)",
  layerNormEps: "LayerNorm epsilon (reference code 1e-12)",
  initStd: "std of the normal initialisation (reference code 0.02)",
  seed: "seed of the initial parameters (the CLI sets it from --seed)",
};

/**
 * Checks the fields every Transformer model here shares, and its `layers`, naming the first
 * bad one.
 *
 * @throws {RangeError} A field out of its domain, with its value.
 */
export function validateSequenceEncoderConfig(
  c: SequenceEncoderConfig & { layers: number },
): void {
  for (const f of ["numItems", "maxLength", "hidden", "heads", "layers", "inner"] as const) {
    if (!Number.isInteger(c[f]) || c[f] < 1) {
      throw new RangeError(`${f} must be a positive integer, got ${c[f]}`);
    }
  }
  for (const f of ["layerNormEps", "initStd"] as const) {
    if (!(c[f] > 0)) throw new RangeError(`${f} must be positive, got ${c[f]}`);
  }
  if (!(c.dropout >= 0 && c.dropout < 1)) {
    throw new RangeError(`dropout must be in [0, 1), got ${c.dropout}`);
  }
  if (c.hidden % c.heads !== 0) {
    throw new RangeError(`hidden (${c.hidden}) must be divisible by heads (${c.heads})`);
  }
  if (!Number.isInteger(c.seed) || c.seed < 0 || c.seed > 0xffffffff) {
    throw new RangeError(`seed must be an integer from 0 to 4294967295, got ${c.seed}`);
  }
}

/**
 * Checks that each named config field holds one of its allowed values.
 *
 * @throws {RangeError} The first field that does not, naming it, the choices and the value.
 */
export function checkChoices<C>(c: C, choices: [keyof C & string, readonly unknown[]][]): void {
  for (const [f, allowed] of choices) {
    if (!allowed.includes(c[f])) {
      throw new RangeError(`${f} must be one of ${allowed.join(", ")}, got ${c[f]}`);
    }
  }
}
