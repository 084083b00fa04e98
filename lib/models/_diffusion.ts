/**
 * What the diffusion recommenders (DiffuRec, DiffuRecSys) share: the config fields of the
 * diffusion and the history, the item table and history embedding, the step-embedding MLP,
 * the uncertainty weights Λ, the training loss (x0-prediction with cross-entropy, one
 * example per target position) and recommendation by the reverse chain. A model adds its
 * Approximator: how the history and the noised target become a prediction of x0.
 *
 * Spec: `DIFFUREC.md` §2 (shared by both, §3.1).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Scalar, Tensor2D, Tensor3D, Tensor4D } from "../nn/tensor_types.ts";
import type { EvalBatch, TrainBatch } from "../data/types.ts";
import {
  createLayerNorm,
  dropout,
  embeddingLookup,
  itemRows,
  layerNorm,
  linear,
  queryScores,
  type SeedSource,
} from "../nn/layers.ts";
import { type AttentionMask, createTorchLinear, paddingMask } from "../nn/pre_ln.ts";
import { softmaxCrossEntropy } from "../nn/item_losses.ts";
import { ParamStore } from "../nn/params.ts";
import { Rng } from "../data/random.ts";
import {
  betaSchedule,
  type DiffusionSchedule,
  diffusionSchedule,
  forwardSample,
  type LambdaMode,
  mixSeed,
  networkSteps,
  respacedSchedule,
  reverseChain,
  rowNormals,
  SCHEDULE_NAMES,
  type ScheduleName,
  stepEmbedding,
  trainingNoise,
  uncertaintyWeights,
} from "../diffusion/mod.ts";
import { checkChoices, type SequentialModel } from "./_model.ts";

/** The fields both diffusion recommenders have; defaults are DiffuRec's code's (spec §4). */
export interface DiffusionModelConfig {
  /** Number of real items N; ids 1..N, 0 = padding. Set from the data. */
  numItems: number;
  /** Longest history read (code: 50). */
  maxLength: number;
  /** Width d (code: 128). */
  hidden: number;
  /** Attention heads (code: 4). */
  heads: number;
  /** Approximator blocks (code: 4). */
  layers: number;
  /** Feed-forward width (code: 4d = 512). */
  inner: number;
  /** Dropout in the Approximator (code: 0.1). */
  dropout: number;
  /** Dropout on the history's item embeddings, before their LayerNorm (code: 0.3). */
  embeddingDropout: number;
  /** LayerNorm epsilon (code: 1e-12). */
  layerNormEps: number;
  /** Diffusion steps T (code: 32). */
  steps: number;
  /** Noise schedule (code: trunc_lin). */
  schedule: ScheduleName;
  /** The network sees step t as t * 1000 / T (code: true). */
  rescaleSteps: boolean;
  /** Mean and standard deviation of the uncertainty weights Λ (code: 0.001; 0 = no diffusion input). */
  lambda: number;
  /** Λ drawn per element from N(lambda, lambda²) (`sampled`, code) or equal to lambda (`fixed`). */
  lambdaMode: LambdaMode;
  /**
   * Recommendation: `chain` runs the reverse chain of `reverseSteps` steps from noise;
   * `one` is one Approximator call at t = 0 from x = 0 (an ablation).
   */
  sampling: "chain" | "one";
  /** Steps of the reverse chain: 0 = all T (code), or fewer, taken evenly (faster). */
  reverseSteps: number;
  /** Padding in attention: `keys` masked (default) or `compat`, padded query rows (code). */
  attentionMask: AttentionMask;
  /** Position embeddings: `none` (code: the model sees a bag of items) or `learned`. */
  positions: "none" | "learned";
  /** Keep the padding row in the training softmax (code: true). */
  padLogit: boolean;
  /** Seed of the parameters and of training draws. */
  seed: number;
  /** Seed of recommendation's draws (x_T, Λ, per-step noise); a model's scores are fixed by it. */
  evalSeed: number;
}

/** Defaults of every {@linkcode DiffusionModelConfig} field except `numItems` (DiffuRec's). */
export const DIFFUSION_DEFAULTS: Omit<DiffusionModelConfig, "numItems"> = {
  maxLength: 50,
  hidden: 128,
  heads: 4,
  layers: 4,
  inner: 512,
  dropout: 0.1,
  embeddingDropout: 0.3,
  layerNormEps: 1e-12,
  steps: 32,
  schedule: "trunc_lin",
  rescaleSteps: true,
  lambda: 0.001,
  lambdaMode: "sampled",
  sampling: "chain",
  reverseSteps: 0,
  attentionMask: "keys",
  positions: "none",
  padLogit: true,
  seed: 1997,
  evalSeed: 1997,
};

/** One line per {@linkcode DiffusionModelConfig} field, for `--help`. */
export const DIFFUSION_HELP: Record<keyof typeof DIFFUSION_DEFAULTS, string> = {
  maxLength: "longest history read (code 50)",
  hidden: "width d (code 128)",
  heads: "attention heads (code 4)",
  layers: "Approximator blocks (code 4)",
  inner: "feed-forward width (code 4d = 512)",
  dropout: "Approximator dropout (code 0.1)",
  embeddingDropout: "dropout on history embeddings (code 0.3)",
  layerNormEps: "LayerNorm epsilon (code 1e-12)",
  steps: "diffusion steps T (code 32)",
  schedule: `noise schedule: ${SCHEDULE_NAMES.join(" | ")} (code trunc_lin)`,
  rescaleSteps: "network sees t * 1000 / T (code true)",
  lambda: "uncertainty weight mean and sd (code 0.001; 0 = no diffusion input)",
  lambdaMode: "sampled (N(lambda, lambda^2) per element, code) | fixed",
  sampling: "chain (reverse chain from noise) | one (one call at t = 0 from x = 0, ablation)",
  reverseSteps: "reverse chain steps: 0 = all --steps (code), fewer = faster",
  attentionMask: "keys (padded keys masked) | compat (padded query rows, code)",
  positions: "none (code) | learned",
  padLogit: "keep the padding row in the training softmax (code true)",
  seed: "seed of parameters and training draws (the CLI sets it from --seed)",
  evalSeed: "seed of recommendation's draws (x_T, Lambda, noise)",
};

/** A batch of histories as the Approximator reads them. */
export interface History {
  /** The history embedding H0 = LN(Drop(E[s])) `[B, L, d]`. */
  h0: Tensor3D;
  /** Its attention mask `[B, 1, L, L]` (`attentionMask`). */
  mask: Tensor4D;
  /** 1 at real positions, 0 at padding `[B, L, 1]`. */
  real: Tensor3D;
}

/** What an Approximator gets: the history, the noised target and the seeds of its draws. */
export interface ApproximatorInput extends History {
  /** x_t + the step embedding `[B, d]`: what Λ scales. */
  target: Tensor2D;
  /** The noised target x_t alone `[B, d]`. */
  xt: Tensor2D;
  /** One seed per row for Λ's draws. */
  lambdaSeeds: ArrayLike<number>;
  /** Dropout seeds; null in inference. */
  seeds: SeedSource;
}

/**
 * The shared part of DiffuRec and DiffuRecSys (see the module doc); a subclass creates
 * its Approximator's parameters and computes it.
 */
export abstract class DiffusionRecommender<C extends DiffusionModelConfig>
  implements SequentialModel<C> {
  /** The model kind, as in `--model`. */
  abstract readonly name: string;
  /** The full configuration. */
  readonly config: C;
  /** Trainable parameters. */
  readonly params: ParamStore;
  /** The noise schedule of training (T steps). */
  readonly schedule: DiffusionSchedule;
  /** The reverse chain's schedule (`reverseSteps` of the T steps). */
  readonly reverseSchedule: DiffusionSchedule;

  /**
   * Creates the shared parameters, in a fixed order: item table, positions, history
   * LayerNorm, step MLP, then the Approximator's (`createApproximator`), then the output
   * LayerNorm.
   */
  protected constructor(config: C, validate: (c: C) => void) {
    validate(config);
    this.config = config;
    const c = config;
    this.schedule = diffusionSchedule(betaSchedule(c.schedule, c.steps));
    this.reverseSchedule = respacedSchedule(this.schedule, c.reverseSteps || c.steps);
    const p = new ParamStore(c.seed);
    p.create("item", [c.numItems + 1, c.hidden], { normal: 1 }); // row 0 = padding, trained
    if (c.positions === "learned") p.create("position", [c.maxLength, c.hidden], { normal: 1 });
    createLayerNorm(p, "embed.ln", c.hidden);
    createTorchLinear(p, "time.l1", c.hidden, 4 * c.hidden);
    createTorchLinear(p, "time.l2", 4 * c.hidden, c.hidden);
    this.createApproximator(p, c);
    createLayerNorm(p, "out.ln", c.hidden);
    this.params = p;
  }

  /**
   * One target position is one example that re-reads its whole prefix: its memory grows
   * with the length the model reads, the batch's, or `maxLength` where every history is
   * padded to it ({@linkcode readsPadding}: compat). Half that length keeps a pass of the
   * trainer's default 2048 within 4096 history tokens, which the wasm heap holds (7,500
   * did, 15,000 did not, at d = 128). Counting the batch length alone, a compat batch of 512
   * short histories became one pass of 25,600 tokens and wasm aborted.
   */
  trainingCost(length: number): number {
    const read = this.readsPadding() ? Math.max(length, this.config.maxLength) : length;
    return Math.max(1, read / 2);
  }

  /** Creates the Approximator's parameters (called by the constructor). */
  protected abstract createApproximator(p: ParamStore, c: C): void;

  /** The Approximator's hidden state at the newest position `[B, 1, d]`, before the output LN. */
  protected abstract approximator(input: ApproximatorInput): Tensor3D;

  // ------------------------------------------------------------------ history

  /**
   * Whether the Approximator's output depends on padding positions (`compat` attention
   * masking attends to them): then every history is padded to `maxLength`, as the authors'
   * code always pads, so that a history scores the same in any batch.
   */
  protected readsPadding(): boolean {
    return this.config.attentionMask === "compat";
  }

  /**
   * H0 = LN(Drop(E[s] (+ positions))) `[B, L, d]` and the attention mask of left-padded
   * `inputs`; padded to `maxLength` first where {@linkcode readsPadding} says so.
   */
  protected history(
    inputs: Int32Array,
    batch: number,
    length: number,
    seeds: SeedSource,
  ): History {
    const c = this.config;
    if (this.readsPadding() && length < c.maxLength) {
      inputs = leftPad(inputs, batch, length, c.maxLength);
      length = c.maxLength;
    }
    const ids = tf.tensor2d(inputs, [batch, length], "int32");
    let x = itemRows(this.params, "item", ids); // [B, L, d]
    if (c.positions === "learned") {
      const at = tf.range(c.maxLength - length, c.maxLength, 1, "int32");
      x = tf.add(x, embeddingLookup(this.params.get("position") as Tensor2D, at)); // [B, L, d]
    }
    x = dropout(x, c.embeddingDropout, seeds ? seeds() : null);
    const h0 = layerNorm(this.params, "embed.ln", x, c.layerNormEps) as Tensor3D;
    const real = tf.tensor3d(Float32Array.from(inputs, (id) => id === 0 ? 0 : 1), [
      batch,
      length,
      1,
    ]);
    return { h0, mask: paddingMask(inputs, batch, length, c.attentionMask), real };
  }

  // -------------------------------------------------------------- Approximator

  /**
   * x̂0 `[B, d]`: the step embedding temb = MLP(φ(step)) (SiLU between two linear maps),
   * the Approximator, then LN(Drop(·)) of the newest position.
   */
  #predict(
    history: History,
    xt: Tensor2D,
    steps: Float64Array,
    lambdaSeeds: ArrayLike<number>,
    seeds: SeedSource,
  ): Tensor2D {
    const c = this.config;
    const [batch] = history.h0.shape;
    const phi = stepEmbedding(steps, c.hidden); // [B, d]
    const hiddenT = linear(this.params, "time.l1", phi, { activation: "silu" }); // SiLU(W1 φ + b1), [B, 4d]
    const temb = linear(this.params, "time.l2", hiddenT) as Tensor2D; // [B, d]
    const target = tf.add(xt, temb) as Tensor2D; // [B, d]
    const h = this.approximator({ ...history, target, xt, lambdaSeeds, seeds }); // [B, 1, d]
    const out = layerNorm(
      this.params,
      "out.ln",
      dropout(h, c.dropout, seeds ? seeds() : null),
      c.layerNormEps,
    );
    return tf.reshape(out, [batch, c.hidden]) as Tensor2D;
  }

  /**
   * The noise of the training forward process `[P, d]`, one seeded stream per row:
   * standard normal (DiffuRecSys adds its offset modes).
   */
  protected forwardNoise(rowSeeds: ArrayLike<number>): Tensor2D {
    return trainingNoise(rowSeeds, this.config.hidden, "none", 0);
  }

  /** Λ `[B, length, d]` of this config (see `uncertaintyWeights`). */
  protected lambda(rowSeeds: ArrayLike<number>, length: number): tf.Tensor {
    const c = this.config;
    return uncertaintyWeights(rowSeeds, length, c.hidden, c.lambda, c.lambdaMode);
  }

  // --------------------------------------------------------------------- loss

  /**
   * Mean cross-entropy of x̂0 · Eᵀ against the target, one example per target position,
   * with t uniform on 0..T-1 and x_t = sqrt(alphaBar_t) E[y] + sqrt(1 - alphaBar_t) noise.
   */
  loss(batch: TrainBatch, seeds: () => number): { loss: Scalar; parts: Record<string, Scalar> } {
    const c = this.config;
    const ex = prefixExamples(batch); // P examples of length L
    const p = ex.targets.length;
    const history = this.history(ex.inputs, p, batch.length, seeds);
    const rng = new Rng(seeds());
    const t = Int32Array.from({ length: p }, () => rng.int(c.steps));
    const noise = this.forwardNoise(rowSeedsOf(seeds(), p)); // [P, d]
    const table = this.params.get("item") as Tensor2D; // [N+1, d]
    const x0 = embeddingLookup(table, tf.tensor1d(ex.targets, "int32")) as Tensor2D; // [P, d]
    const xt = forwardSample(x0, t, noise, this.schedule); // [P, d]
    const lambdaSeeds = rowSeedsOf(seeds(), p);
    const steps = networkSteps(t, this.schedule, c.rescaleSteps);
    const predicted = this.#predict(history, xt, steps, lambdaSeeds, seeds); // [P, d]
    const perExample = c.padLogit
      ? softmaxCrossEntropy(predicted, table, ex.targets)
      : softmaxCrossEntropy(
        predicted,
        tf.slice(table, [1, 0], [-1, -1]) as Tensor2D,
        ex.targets.map((y) => y - 1),
      );
    const loss = tf.mean(perExample) as Scalar;
    return { loss, parts: { recon: loss } };
  }

  // ------------------------------------------------------------------- scores

  /** The item embedding table `[N + 1, d]` (not a copy), for MMR-diversified lists. */
  itemVectors(): Tensor2D {
    return this.params.get("item") as Tensor2D;
  }

  /**
   * Scores `[B, N + 1]`: x · Eᵀ for x the end of the reverse chain (or the one-call
   * ablation). Each row's draws come from `evalSeed` and its own history, so a history gets
   * the same scores alone or in any batch, on any backend.
   */
  scores(batch: EvalBatch): Tensor2D {
    return queryScores(this.rankingQueries(batch), this.params.transposed("item") as Tensor2D);
  }

  /** x, the end of the reverse chain (or the one-call ablation), `[B, 1, d]`: what {@linkcode DiffusionRecommender.scores} ranks by. */
  rankingQueries(batch: EvalBatch): Tensor3D {
    const c = this.config;
    const history = this.history(batch.inputs, batch.batch, batch.length, null);
    const rows = historySeeds(batch, c.evalSeed);
    const stream = (salt: number) => Array.from(rows, (s) => mixSeed(s, salt));
    const predict = (x: Tensor2D, t: number) => {
      const steps = networkSteps(
        new Int32Array(batch.batch).fill(t),
        this.reverseSchedule,
        c.rescaleSteps,
      );
      return this.#predict(history, x, steps, stream(1000 + t), null);
    };
    let x: Tensor2D;
    if (c.sampling === "one") {
      // One call at the first step of the full schedule, from x = 0.
      const steps = networkSteps(new Int32Array(batch.batch), this.schedule, c.rescaleSteps);
      x = this.#predict(history, tf.zeros([batch.batch, c.hidden]), steps, stream(999), null);
    } else {
      const normal = (salt: number) =>
        tf.tensor2d(rowNormals(stream(salt), c.hidden), [batch.batch, c.hidden]);
      x = reverseChain(predict, normal(0), this.reverseSchedule, (t) => normal(2000 + t));
    }
    return tf.reshape(x, [batch.batch, 1, c.hidden]) as Tensor3D; // [B, 1, d]
  }
}

/**
 * One example per target position of a training batch: the row's inputs up to and
 * including that position, right-aligned (left-padded) to the batch length, and the target.
 */
export function prefixExamples(batch: TrainBatch): { inputs: Int32Array; targets: Int32Array } {
  const { length } = batch;
  let count = 0;
  for (const y of batch.targets) if (y !== 0) count++;
  if (count === 0) throw new RangeError("Training batch has no position with a target");
  const inputs = new Int32Array(count * length);
  const targets = new Int32Array(count);
  let e = 0;
  for (let b = 0; b < batch.batch; b++) {
    for (let j = 0; j < length; j++) {
      const y = batch.targets[b * length + j];
      if (y === 0) continue;
      // inputs[b, 0..j] shifted right by length-1-j.
      inputs.set(
        batch.inputs.subarray(b * length, b * length + j + 1),
        e * length + length - 1 - j,
      );
      targets[e++] = y;
    }
  }
  return { inputs, targets };
}

/** `inputs` `[B, L]` left-padded to `[B, to]`. */
function leftPad(inputs: Int32Array, batch: number, length: number, to: number): Int32Array {
  const out = new Int32Array(batch * to);
  for (let b = 0; b < batch; b++) {
    out.set(inputs.subarray(b * length, (b + 1) * length), b * to + to - length);
  }
  return out;
}

/** `count` seeds of one stream. */
function rowSeedsOf(seed: number, count: number): Uint32Array {
  return Uint32Array.from({ length: count }, (_, r) => mixSeed(seed, r));
}

/** A seed per row from `seed` and the row's history items (not its padding). */
function historySeeds(batch: EvalBatch, seed: number): Uint32Array {
  const out = new Uint32Array(batch.batch);
  for (let b = 0; b < batch.batch; b++) {
    let h = mixSeed(seed, 0x7f4a7c15);
    for (let j = 0; j < batch.length; j++) {
      const id = batch.inputs[b * batch.length + j];
      if (id !== 0) h = mixSeed(h, id);
    }
    out[b] = h;
  }
  return out;
}

/** The most diffusion steps a model may have (see {@linkcode validateDiffusionConfig}). */
const MAX_STEPS = 1000;

/**
 * Checks every field of {@linkcode DiffusionModelConfig}, naming the first bad one.
 *
 * @throws {RangeError} A field out of its domain, with its value.
 */
export function validateDiffusionConfig(c: DiffusionModelConfig): void {
  for (
    const f of [
      "numItems",
      "maxLength",
      "hidden",
      "heads",
      "layers",
      "inner",
      "steps",
    ] as const
  ) {
    if (!Number.isInteger(c[f]) || c[f] < 1) {
      throw new RangeError(`${f} must be a positive integer, got ${c[f]}`);
    }
  }
  for (const f of ["dropout", "embeddingDropout"] as const) {
    if (!(c[f] >= 0 && c[f] < 1)) throw new RangeError(`${f} must be in [0, 1), got ${c[f]}`);
  }
  if (!(c.layerNormEps > 0)) {
    throw new RangeError(`layerNormEps must be positive, got ${c.layerNormEps}`);
  }
  if (c.hidden % c.heads !== 0) {
    throw new RangeError(`hidden (${c.hidden}) must be divisible by heads (${c.heads})`);
  }
  // Each reverse step's draws are salted by its index (1000 + t, 2000 + t): past 1000 steps
  // two streams that must be independent would coincide.
  if (c.steps > MAX_STEPS) {
    throw new RangeError(`steps must be at most ${MAX_STEPS}, got ${c.steps}`);
  }
  if (!Number.isInteger(c.reverseSteps) || c.reverseSteps < 0) {
    throw new RangeError(`reverseSteps must be an integer >= 0, got ${c.reverseSteps}`);
  }
  if (c.reverseSteps > c.steps) {
    throw new RangeError(`reverseSteps (${c.reverseSteps}) must be at most steps (${c.steps})`);
  }
  if (!(Number.isFinite(c.lambda) && c.lambda >= 0)) {
    throw new RangeError(`lambda must be a finite number >= 0, got ${c.lambda}`);
  }
  const choices: [keyof DiffusionModelConfig & string, readonly unknown[]][] = [
    ["schedule", SCHEDULE_NAMES],
    ["lambdaMode", ["sampled", "fixed"]],
    ["sampling", ["chain", "one"]],
    ["attentionMask", ["keys", "compat"]],
    ["positions", ["none", "learned"]],
    ["rescaleSteps", [true, false]],
    ["padLogit", [true, false]],
  ];
  checkChoices(c, choices);
  for (const f of ["seed", "evalSeed"] as const) {
    if (!Number.isInteger(c[f]) || c[f] < 0 || c[f] > 0xffffffff) {
      throw new RangeError(`${f} must be an integer from 0 to 4294967295, got ${c[f]}`);
    }
  }
}
