/**
 * The training loop: Adam, explicit seeds, validation Recall@20 for model selection with
 * early stopping, the best checkpoint written atomically, a resumable state after every
 * epoch, a progress line, and a JSON-lines log of every epoch.
 *
 * @module
 */
import { writing } from "../_io.ts";
import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "./adam.ts";
import { Rng } from "../data/random.ts";
import { TRAIN_EXAMPLES, trainBatches, type TrainExamples } from "../data/mod.ts";
import type { LeaveOneOutSplit, TrainBatch } from "../data/types.ts";
import { evaluateModel } from "../eval/evaluate.ts";

export { evaluateModel };
import { type SequentialModel, stepSeeds } from "../models/_model.ts";
import { modelEntry, withInferenceOverrides } from "../models/mod.ts";
import { type CheckpointMeta, splitFingerprint, writeSynced } from "./checkpoint.ts";
import { clearRun, openRunFolder, runFilesIn, type RunLock } from "./run_folder.ts";
import { PAD_TOKEN } from "../data/_dense.ts";
import { splitBatch, type StepOptions, trainStep } from "./step.ts";
import { resumeRun, writeBest, writeState } from "./_saved_run.ts";

export { splitBatch, type StepOptions, trainStep };

/** Training settings. Defaults are the paper's (§4.1) unless said otherwise. */
export interface TrainOptions {
  /** Most epochs to run. Default 200. */
  epochs: number;
  /**
   * Stop after this many epochs without a better validation Recall@20. Paper: 100. With
   * `evalEvery` > 1 the count still runs in epochs (each validation without a better score
   * adds `evalEvery`), so a setting means the same span of training either way.
   */
  patience: number;
  /** Rows per training batch (sequences, or examples with `"prefixes"`). Paper: 256. */
  batchSize: number;
  /** Histories per evaluation batch; results do not depend on it. Default 256. */
  evalBatchSize: number;
  /** Adam learning rate. Paper: 1e-3. */
  learningRate: number;
  /** Seed of batching and of every random draw during training. Default 42. */
  seed: number;
  /** Validate every this many epochs. Default 1. */
  evalEvery: number;
  /** Pad each batch to its own longest history after grouping similar lengths. Default true. */
  bucket: boolean;
  /**
   * Most target positions one forward/backward pass holds. Larger batches are split into
   * pieces whose gradients are summed, weighted by their share of positions, before one
   * Adam step: the same update, with memory bounded. Default 2048.
   */
  maxPositions: number;
  /**
   * L2 penalty added to the gradient of every parameter the loss reached, before the Adam
   * step (PyTorch Adam's `weight_decay`, not AdamW). Default 0; DiffuRecSys's code: 1e-4.
   */
  weightDecay: number;
  /**
   * Multiply the learning rate by `lrDecay` every this many epochs (PyTorch's StepLR);
   * 0 = never. Default 0; DiffuRec's code: 100, DiffuRecSys's: 30.
   */
  lrDecayEvery: number;
  /** The factor of `lrDecayEvery`. Default 0.1. */
  lrDecay: number;
  /**
   * What a training row is (`TrainBatchOptions.examples`): `"sequences"` (default; SASRec,
   * SIGMA) or `"prefixes"`, one row per target position, shuffled across users
   * (DiffuRec's examples; its code: batches of 512).
   */
  examples: TrainExamples;
  /**
   * How validation ranks, for choosing the best epoch: `"model"` (default) as the model
   * does; `"one"`, a diffusion model's one-call ranking (`sampling: "one"`) instead of its
   * reverse chain: on Office it ranked within 0.0004 Recall@20 of the 32-step chain, 26-35
   * times faster (docs/diffusion-notes.md). The validation metrics (each epoch's record
   * says `validSampling: "one"`) are then the one call's; the test metrics and the saved
   * model keep the model's own ranking. May change on resume: no epoch's training depends
   * on it, though a best score and the patience count then span both rankings.
   */
  validSampling: ValidSampling;
}

/** The values of {@linkcode TrainOptions.validSampling}. */
export type ValidSampling = "model" | "one";

/** Every {@linkcode ValidSampling}, for parsing. */
export const VALID_SAMPLINGS: readonly ValidSampling[] = ["model", "one"];

/** Defaults of {@linkcode TrainOptions}. */
export const TRAIN_DEFAULTS: TrainOptions = {
  epochs: 200,
  patience: 100,
  batchSize: 256,
  evalBatchSize: 256,
  learningRate: 1e-3,
  seed: 42,
  evalEvery: 1,
  bucket: true,
  maxPositions: 2048,
  weightDecay: 0,
  lrDecayEvery: 0,
  lrDecay: 0.1,
  examples: "sequences",
  validSampling: "model",
};

/** One epoch's record in the JSON-lines log. */
export interface EpochRecord {
  /** 1-based epoch. */
  epoch: number;
  /** Mean training loss over the epoch's batches. */
  loss: number;
  /** Mean of each named loss part. */
  parts: Record<string, number>;
  /** Validation metrics, when this epoch was validated. */
  valid?: Record<string, number>;
  /** Wall seconds of the epoch's training steps. */
  trainSeconds: number;
  /** Training sequences per second. */
  sequencesPerSecond: number;
  /**
   * How `valid` was ranked when not as the model ranks (`TrainOptions.validSampling`):
   * `"one"`, a diffusion model's one-call ranking.
   */
  validSampling?: ValidSampling;
  /** Whether this epoch is the best so far. */
  best?: boolean;
  /**
   * The largest second moment in Adam's state after the epoch, and its parameter (see
   * `Adam.largestSecondMoment`): above {@linkcode FROZEN_ADAM_V} a gradient spike has
   * frozen that parameter's updates. A `v` that overflowed float32 is `Infinity` here and
   * `null` in `log.jsonl`.
   */
  adamMaxV?: { param: string; v: number };
}

/**
 * A second moment above which the trainer warns: Adam's step on that parameter is then
 * ~sqrt(g^2 / v) of its usual size, with g^2 ~1e-6 for item rows (1e-3 of it, or less), for
 * thousands of steps.
 */
export const FROZEN_ADAM_V = 1;

/** Where the trainer reports and what it writes. */
export interface TrainHooks {
  /**
   * Output folder: `checkpoint/`, `model.safetensors` (the best epoch as a portable model
   * file), `log.jsonl`, `state/`. Nothing is written when absent.
   */
  out?: string;
  /**
   * Stored in the checkpoint and the model file so evaluation can rebuild the data and
   * recommendations speak the data's tokens: `itemTokens` is the data set's
   * `vocab.items`. Default: no data description, and items named by their dense ids
   * ("1".."N"), so the files always carry a vocabulary.
   */
  checkpointInfo?: Pick<CheckpointMeta, "data" | "itemTokens" | "preset">;
  /** Receives progress text; `\r`-prefixed text replaces the current line. Default: none. */
  progress?: (text: string) => void;
  /**
   * Continue the run saved in `out/state/` (written after every epoch) instead of starting
   * afresh: parameters, Adam's moments, the batching generator, the step count, the best
   * epoch and the log resume where that epoch ended. The model config, training settings
   * (except `epochs`, `patience` and `evalBatchSize`) and data must be the run's; a
   * difference throws a `RangeError` naming the field. Default false.
   */
  resume?: boolean;
  /**
   * Replace the run that `out` holds, if any; without it (or `resume`) a folder holding a
   * run is refused. The old files are removed only once every check has passed. Not with
   * `resume` (a `TypeError`). Default false.
   */
  overwrite?: boolean;
  /**
   * The lock on `out`, when the caller already holds it (`openRunFolder`); otherwise
   * `train` locks `out` itself for the length of the run.
   */
  lock?: RunLock;
  /**
   * Called after each of an epoch's writes: the `"log"` line, the `"state"`, and the
   * `"best"` checkpoint and model file. For tests that stop a run at each boundary.
   */
  onWrite?: (what: "log" | "state" | "best", epoch: number) => void;
}

/** What {@linkcode train} returns. */
export interface TrainResult {
  /** Epoch of the best validation Recall@20 (1-based). */
  bestEpoch: number;
  /** Validation metrics at the best epoch. */
  valid: Record<string, number>;
  /** Every epoch's record. */
  history: EpochRecord[];
  /** Wall seconds of the whole run. */
  seconds: number;
  /** Why training stopped. */
  stopped: "epochs" | "patience";
}

/**
 * Checks a seed: an integer from 0 to 2^32 - 1, the range the generators use (a fraction
 * or a larger number would be silently truncated or wrapped, and recorded as given).
 *
 * @throws {RangeError} Naming `field` and the value.
 */
export function checkSeed(field: string, seed: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`${field} must be an integer from 0 to 4294967295, got ${seed}`);
  }
}

/** The metric that selects the best epoch. */
export const SELECTION_METRIC = "recall@20";

/** The learning rate of `epoch` (1-based) under `lrDecayEvery` and `lrDecay` (StepLR). */
export function learningRateAt(o: TrainOptions, epoch: number): number {
  if (o.lrDecayEvery === 0) return o.learningRate;
  return o.learningRate * o.lrDecay ** Math.floor((epoch - 1) / o.lrDecayEvery);
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, "0")}m`;
}

/**
 * Trains `model` on `split.train`, selecting the epoch with the best validation
 * Recall@20 and leaving the model's parameters at that epoch. With `hooks.out` it writes
 * `checkpoint/` (the best epoch), `log.jsonl` and, after every epoch, `state/`, from which
 * `hooks.resume` continues an interrupted run. Throws an `Error` naming the epoch and step
 * if the loss becomes NaN or infinite.
 */
export async function train(
  model: SequentialModel & { config: { maxLength: number } },
  split: LeaveOneOutSplit,
  numItems: number,
  options: Partial<TrainOptions> = {},
  hooks: TrainHooks = {},
): Promise<TrainResult> {
  const { o, itemTokens } = checkedRun(split, numItems, options, hooks);
  checkValidSampling(model.name, o.validSampling);
  if (!hooks.out) return await trainLoop(model, split, numItems, o, itemTokens, hooks);
  const { out, resume, overwrite } = hooks;
  const lock = hooks.lock ?? await openRunFolder(out, { resume, overwrite });
  try {
    // Only now, with every check passed and the folder locked, is an old run replaced.
    lock.begin();
    if (overwrite && !resume) await clearRun(out);
    return await trainLoop(model, split, numItems, o, itemTokens, hooks);
  } finally {
    if (!hooks.lock) lock.release();
  }
}

/**
 * The model validation ranks with: `model` itself, or, with `validSampling: "one"` (when
 * the model's own ranking is not already that), a twin whose ranking is one Approximator
 * call, holding `model`'s current parameters; the caller disposes a twin.
 */
function validationRanker(model: TrainedModel, o: TrainOptions): TrainedModel {
  const config = model.config as unknown as Record<string, unknown>;
  if (o.validSampling === "model" || config.sampling === o.validSampling) return model;
  const twinConfig = withInferenceOverrides(model.name, config, { sampling: o.validSampling });
  const twin = modelEntry(model.name).create(
    twinConfig as typeof twinConfig & { numItems: number },
  );
  twin.params.shareFrom(model.params, "validation twin");
  return twin;
}

/**
 * Checks that `model` (a `--model` name) can validate with `validSampling`.
 *
 * @throws {RangeError} `"one"` for a model without a `sampling` option, naming both.
 */
export function checkValidSampling(model: string, validSampling: ValidSampling): void {
  if (validSampling === "model") return;
  if (!(modelEntry(model).inferenceFields ?? []).includes("sampling")) {
    throw new RangeError(
      `validSampling must be "model" for model ${model}, which ranks one way only ` +
        `(got "${validSampling}", a diffusion model's one-call ranking)`,
    );
  }
}

/** A model the trainer can train and validate. */
type TrainedModel = SequentialModel & { config: { maxLength: number } };

/**
 * The options of a run with defaults filled in, checked before anything is read or written.
 *
 * @param options Options to check; missing ones take {@linkcode TRAIN_DEFAULTS}.
 * @returns The full options.
 * @throws {RangeError} A field out of its domain, naming the field and the value.
 */
export function checkTrainOptions(options: Partial<TrainOptions>): TrainOptions {
  const o = { ...TRAIN_DEFAULTS, ...options };
  for (
    const k of [
      "epochs",
      "patience",
      "batchSize",
      "evalBatchSize",
      "evalEvery",
      "maxPositions",
    ] as const
  ) {
    // Safe integers: a count of 1e20 could never be reached, and loses its last digits.
    if (!Number.isSafeInteger(o[k]) || o[k] < 1) {
      throw new RangeError(`${k} must be a positive integer up to 2^53 - 1, got ${o[k]}`);
    }
  }
  if (!(o.learningRate > 0 && Number.isFinite(o.learningRate))) {
    throw new RangeError(`learningRate must be a positive finite number, got ${o.learningRate}`);
  }
  if (!(o.weightDecay >= 0 && Number.isFinite(o.weightDecay))) {
    throw new RangeError(`weightDecay must be a finite number >= 0, got ${o.weightDecay}`);
  }
  if (!Number.isSafeInteger(o.lrDecayEvery) || o.lrDecayEvery < 0) {
    throw new RangeError(`lrDecayEvery must be an integer >= 0, got ${o.lrDecayEvery}`);
  }
  if (!(o.lrDecay > 0 && o.lrDecay <= 1)) {
    throw new RangeError(`lrDecay must be in (0, 1], got ${o.lrDecay}`);
  }
  if (!TRAIN_EXAMPLES.includes(o.examples)) {
    throw new RangeError(
      `examples must be one of ${TRAIN_EXAMPLES.join(", ")}, got "${o.examples}"`,
    );
  }
  if (!VALID_SAMPLINGS.includes(o.validSampling)) {
    throw new RangeError(
      `validSampling must be one of ${VALID_SAMPLINGS.join(", ")}, got "${o.validSampling}"`,
    );
  }
  checkSeed("seed", o.seed);
  return o;
}

/** Checks the options, the data and the vocabulary of a run before anything is written. */
function checkedRun(
  split: LeaveOneOutSplit,
  numItems: number,
  options: Partial<TrainOptions>,
  hooks: TrainHooks,
): { o: TrainOptions; itemTokens: string[] } {
  const o = checkTrainOptions(options);
  if (!split.train.some((s) => s.length >= 2)) {
    // Nothing to learn from: the loss would be NaN and the "trained" model untrained.
    throw new RangeError(
      `no training positions: every training sequence has fewer than 2 items ` +
        `(a user needs at least 4 interactions: 2 to train on, then one each to validate and test)`,
    );
  }
  const itemTokens = hooks.checkpointInfo?.itemTokens ??
    [PAD_TOKEN, ...Array.from({ length: numItems }, (_, i) => String(i + 1))];
  if (itemTokens.length !== numItems + 1) {
    throw new RangeError(
      `checkpointInfo.itemTokens has ${itemTokens.length} entries, expected numItems + 1 = ${
        numItems + 1
      }`,
    );
  }
  if (hooks.out === "") {
    // "" is falsy: the run would train and write nothing, or its files land in the root.
    throw new RangeError('hooks.out is "" (no folder): name the run folder, or leave it out');
  }
  if (hooks.resume && !hooks.out) {
    throw new TypeError("resume needs the run's output folder (hooks.out)");
  }
  if (hooks.resume && hooks.overwrite) {
    throw new TypeError(
      "resume and overwrite contradict each other: continue the run, or replace it",
    );
  }
  return { o, itemTokens };
}

/** Where a run stands between epochs: what resume restores and every epoch moves on. */
interface RunState {
  /** Adam steps taken (also the next step's seed index). */
  step: number;
  /** The best validated epoch so far (0: none) and its metrics. */
  best: { epoch: number; score: number; valid: Record<string, number> };
  /** The best epoch's parameters, kept on the host. */
  bestValues: Float32Array | null;
  /** Epochs since the best one. */
  sinceBest: number;
  /** Every finished epoch's record. */
  history: EpochRecord[];
  /** `performance.now()` at the run's start, moved back by a resumed run's seconds. */
  started: number;
  /** The first epoch this call runs. */
  firstEpoch: number;
  /** {@linkcode splitFingerprint} of the split, saved with each state (runs with `out`). */
  split?: string;
}

/** The epochs of a checked run (see {@linkcode train}). */
async function trainLoop(
  model: TrainedModel,
  split: LeaveOneOutSplit,
  numItems: number,
  o: TrainOptions,
  itemTokens: string[],
  hooks: TrainHooks,
): Promise<TrainResult> {
  const say = hooks.progress ?? (() => {});
  const rng = new Rng(o.seed);
  const optimizer = new Adam(o.learningRate, 0.9, 0.999, 1e-8);
  let stopped: TrainResult["stopped"] = "epochs";
  let warnedFrozen = false;
  let state: RunState;
  try {
    const fingerprint = hooks.out ? await splitFingerprint(split) : undefined;
    state = await startRun(model, o, hooks, optimizer, itemTokens, rng, say, fingerprint);
    if (state.sinceBest >= o.patience) stopped = "patience";
    for (let epoch = state.firstEpoch; epoch <= o.epochs && stopped !== "patience"; epoch++) {
      optimizer.learningRate = learningRateAt(o, epoch);
      const batches = trainBatches(split.train, {
        batchSize: o.batchSize,
        maxLength: model.config.maxLength,
        rng,
        bucket: o.bucket,
        examples: o.examples,
      });
      const record = await trainEpoch(model, batches, o, optimizer, state, epoch, say);
      if (epoch % o.evalEvery === 0 || epoch === o.epochs) {
        say(`\repoch ${epoch}/${o.epochs} validating ${split.valid.length} users...`);
        await validateEpoch(model, split, numItems, o, record, state);
      }
      state.history.push(record);
      await saveEpoch(model, optimizer, o, itemTokens, hooks, record, state, rng);
      say(epochLine(record, o, state));
      if (!warnedFrozen && (record.adamMaxV?.v ?? 0) > FROZEN_ADAM_V) {
        warnedFrozen = true;
        say(frozenWarning(model, record));
      }
      if (state.sinceBest >= o.patience) {
        stopped = "patience";
        break;
      }
    }
  } finally {
    optimizer.dispose();
  }
  if (state.bestValues) {
    model.params.assign(model.params.records(), state.bestValues, "best epoch");
  }
  return {
    bestEpoch: state.best.epoch,
    valid: state.best.valid,
    history: state.history,
    seconds: (performance.now() - state.started) / 1000,
    stopped,
  };
}

/**
 * The run's state before its first epoch: fresh (an empty log), or resumed from
 * `out/state/`. A run stopped during its first epoch has a log line at most and no state:
 * nothing was finished, so resuming it starts it again.
 */
async function startRun(
  model: SequentialModel,
  o: TrainOptions,
  hooks: TrainHooks,
  optimizer: Adam,
  itemTokens: string[],
  rng: Rng,
  say: (text: string) => void,
  split?: string,
): Promise<RunState> {
  const state: RunState = {
    step: 0,
    best: { epoch: 0, score: -Infinity, valid: {} },
    bestValues: null,
    sinceBest: 0,
    history: [],
    started: performance.now(),
    firstEpoch: 1,
    split,
  };
  const logFile = hooks.out ? `${hooks.out}/log.jsonl` : null;
  // Only a swapped-in state counts: `state.next` is one whose writing was cut short.
  const unstarted = hooks.resume &&
    !(await runFilesIn(hooks.out!)).some((f) => f === "state" || f === "state.prev");
  const log = unstarted ? await Deno.readTextFile(logFile!).catch(() => null) : null;
  if (unstarted && log !== null && log.split("\n").filter((l) => l).length <= 1) {
    say(`${hooks.out} has no finished epoch to resume: starting it again\n`);
    await writing(logFile!, () => Deno.writeTextFile(logFile!, ""));
  } else if (hooks.resume) {
    const r = await resumeRun(model, o, hooks, optimizer, itemTokens, split);
    Object.assign(state, {
      step: r.step,
      best: r.best,
      sinceBest: r.sinceBest,
      history: r.history,
      bestValues: r.bestValues,
      firstEpoch: r.epoch + 1,
      started: state.started - r.seconds * 1000,
    });
    rng.state = r.rngState;
    say(
      `resumed ${hooks.out} after epoch ${r.epoch} (best ${
        r.best.score.toFixed(4)
      }@${r.best.epoch})\n`,
    );
  } else if (logFile) {
    await writing(logFile, () => Deno.writeTextFile(logFile, ""));
  }
  return state;
}

/**
 * Steps between host reads of the loss on webgpu. A NaN loss is still reported at its own
 * step; the steps after it (at most this many less one) have run on NaN by then, which the
 * stopped run discards anyway.
 */
export const LOSS_READS_ON_GPU = 16;

/** One epoch of Adam steps over `batches`, with a progress line; its record, not validated. */
async function trainEpoch(
  model: SequentialModel,
  batches: TrainBatch[],
  o: TrainOptions,
  optimizer: Adam,
  state: RunState,
  epoch: number,
  say: (text: string) => void,
): Promise<EpochRecord> {
  const vars = model.params.list();
  const t0 = performance.now();
  let lossSum = 0;
  const partSums: Record<string, number> = {};
  let sequences = 0;
  // Each step's loss and parts, read back to the host in groups: a read is a full sync on a
  // GPU (~11 ms of waiting in Deno's WebGPU, and no recording of the next step meanwhile),
  // so webgpu reads every LOSS_READS_ON_GPU steps; cpu and wasm read every step (a copy).
  const readEvery = tf.getBackend() === "webgpu" ? LOSS_READS_ON_GPU : 1;
  let pending: { values: tf.Tensor1D; partNames: string[]; index: number }[] = [];
  const readPending = async () => {
    const stacked = tf.tidy(() => tf.stack(pending.map((p) => p.values)));
    const all = await stacked.data();
    stacked.dispose();
    const width = all.length / pending.length;
    for (const [k, { values: tensor, partNames, index }] of pending.entries()) {
      tensor.dispose();
      const values = all.subarray(k * width, (k + 1) * width);
      if (!Number.isFinite(values[0])) {
        tf.dispose(pending.slice(k + 1).map((p) => p.values));
        pending = [];
        throw new Error(
          `Training loss became ${values[0]} at epoch ${epoch}, step ${
            index + 1
          }/${batches.length}; try a lower --lr (now ${o.learningRate})`,
        );
      }
      lossSum += values[0];
      partNames.forEach((n, j) => partSums[n] = (partSums[n] ?? 0) + values[j + 1]);
    }
    const done = pending.at(-1)!.index + 1;
    pending = [];
    const elapsed = (performance.now() - t0) / 1000;
    const epochEta = (batches.length - done) * elapsed / done;
    say(
      `\repoch ${epoch}/${o.epochs} step ${done}/${batches.length} loss ${
        (lossSum / done).toFixed(4)
      } ${(sequences / elapsed).toFixed(0)} seq/s epoch ETA ${formatSeconds(epochEta)}`,
    );
  };
  for (let i = 0; i < batches.length; i++) {
    const batch = batches[i];
    const seeds = stepSeeds(o.seed, state.step);
    const packed = trainStep(model, batch, seeds, optimizer, vars, o.maxPositions, {
      step: state.step++,
      epoch,
      weightDecay: o.weightDecay,
    });
    pending.push({ ...packed, index: i });
    sequences += batch.batch;
    if (pending.length >= readEvery || i === batches.length - 1) await readPending();
  }
  const trainSeconds = (performance.now() - t0) / 1000;
  const largest = await optimizer.largestSecondMoment();
  // Adam knows tf's variable names; the log names the model's parameters.
  const param = model.params.records()[vars.findIndex((v) => v.name === largest?.param)]?.name;
  const adamMaxV = largest && { param: param ?? largest.param, v: largest.v };
  return {
    epoch,
    loss: lossSum / batches.length,
    parts: Object.fromEntries(Object.entries(partSums).map(([k, v]) => [k, v / batches.length])),
    trainSeconds,
    sequencesPerSecond: sequences / trainSeconds,
    ...(adamMaxV ? { adamMaxV } : {}),
  };
}

/** The once-a-run warning that a gradient spike froze part of the model (see `adamMaxV`). */
function frozenWarning(model: SequentialModel, record: EpochRecord): string {
  const { param, v } = record.adamMaxV!;
  const hint = model.frozenOptimizerHint?.();
  return `warning: after epoch ${record.epoch} Adam's second moment on "${param}" is ` +
    `${v.toExponential(2)}: a gradient spike has frozen its updates (and likely others'; ` +
    `the repository's bench/adam_state.ts lists them), which a factor of 10 takes ` +
    `~2,300 steps to thaw${hint ? `; ${hint}` : ""}\n`;
}

/**
 * Validates the epoch into `record` (ranked as `o.validSampling` says, see
 * {@linkcode validationRanker}), keeping `model`'s parameters when it is the best so far.
 */
async function validateEpoch(
  model: TrainedModel,
  split: LeaveOneOutSplit,
  numItems: number,
  o: TrainOptions,
  record: EpochRecord,
  state: RunState,
): Promise<void> {
  const ranker = validationRanker(model, o);
  try {
    record.valid = await evaluateModel(
      ranker,
      split.valid,
      numItems,
      o.evalBatchSize,
      model.config.maxLength,
    );
  } finally {
    if (ranker !== model) ranker.params.dispose();
  }
  if (ranker !== model) record.validSampling = o.validSampling;
  const score = record.valid[SELECTION_METRIC];
  if (score > state.best.score) {
    state.best = { epoch: record.epoch, score, valid: record.valid };
    record.best = true;
    state.sinceBest = 0;
    state.bestValues = (await model.params.toArrays()).values;
  } else {
    state.sinceBest += o.evalEvery;
  }
}

/**
 * The epoch's files, in an order that a kill between any two leaves resumable: the log
 * line, then the state (which holds the best weights when this epoch is the best), then the
 * best checkpoint and model file, which resume rebuilds from the state if the kill came
 * before them. Nothing without `hooks.out`.
 */
async function saveEpoch(
  model: SequentialModel,
  optimizer: Adam,
  o: TrainOptions,
  itemTokens: string[],
  hooks: TrainHooks,
  record: EpochRecord,
  state: RunState,
  rng: Rng,
): Promise<void> {
  if (!hooks.out) return;
  const { epoch } = record;
  const meta = (valid: Record<string, number>) => ({
    model: model.name,
    config: model.config as Record<string, unknown>,
    data: hooks.checkpointInfo?.data ?? {},
    itemTokens,
    train: { ...o },
    ...(hooks.checkpointInfo?.preset !== undefined ? { preset: hooks.checkpointInfo.preset } : {}),
    epoch,
    valid,
  });
  const logFile = `${hooks.out}/log.jsonl`;
  const line = JSON.stringify(record) + "\n";
  // Synced before the state: after a power loss the log must not lag the state it explains.
  await writing(logFile, () => writeSynced(logFile, new TextEncoder().encode(line), true));
  hooks.onWrite?.("log", epoch);
  await writeState(`${hooks.out}/state`, model, optimizer, meta(record.valid ?? {}), {
    step: state.step,
    rngState: rng.state,
    best: state.best,
    sinceBest: state.sinceBest,
    seconds: (performance.now() - state.started) / 1000,
    ...(state.split ? { split: state.split } : {}),
  }, record.best ? state.bestValues ?? undefined : undefined);
  hooks.onWrite?.("state", epoch);
  if (record.best) {
    await writeBest(hooks.out, meta(record.valid!), model, state.bestValues!);
    hooks.onWrite?.("best", epoch);
  }
}

/** The line printed after an epoch: loss, speed, validation, best so far, time. */
function epochLine(record: EpochRecord, o: TrainOptions, state: RunState): string {
  const total = (performance.now() - state.started) / 1000;
  const eta = total / record.epoch * (o.epochs - record.epoch);
  const valid = record.valid
    ? ` valid ${SELECTION_METRIC} ${record.valid[SELECTION_METRIC].toFixed(4)}`
    : "";
  return `\repoch ${record.epoch}/${o.epochs} loss ${record.loss.toFixed(4)} ${
    record.sequencesPerSecond.toFixed(0)
  } seq/s${valid} best ${state.best.score.toFixed(4)}@${state.best.epoch} elapsed ${
    formatSeconds(total)
  } ETA<=${formatSeconds(eta)}\n`;
}
