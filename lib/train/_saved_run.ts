/**
 * What a run leaves in its folder between epochs and reads back to resume: the best
 * checkpoint with the model file, the resumable state after every epoch, and the log's
 * history; a resumed run is checked to be the same run (data, settings, config).
 *
 * @module
 */
import type { Adam } from "./adam.ts";
import type { SequentialModel } from "../models/_model.ts";
import { upgradeSigmaConfig } from "../models/sigma.ts";
import { modelEntry } from "../models/mod.ts";
import {
  type CheckpointMeta,
  readCheckpoint,
  type ResumeState,
  writeCheckpoint,
  writeFileAtomic,
} from "./checkpoint.ts";
import { decodeModelFile, encodeModelFile, MODEL_FILE_NAME } from "../inference/model_file.ts";
import { type EpochRecord, TRAIN_DEFAULTS, type TrainHooks, type TrainOptions } from "./trainer.ts";

/** Whether `out` holds the checkpoint and model file of `epoch`, both complete. */
async function bestFilesAt(out: string, epoch: number): Promise<boolean> {
  try {
    const { meta } = await readCheckpoint(`${out}/checkpoint`);
    const file = await decodeModelFile(await Deno.readFile(`${out}/${MODEL_FILE_NAME}`));
    return meta.epoch === epoch && file.info.epoch === epoch;
  } catch {
    return false;
  }
}

/** Writes the best epoch's `checkpoint/` and model file (each atomically, in that order). */
export async function writeBest(
  out: string,
  meta: Omit<CheckpointMeta, "format" | "values" | "checksum" | "params" | "resume">,
  model: SequentialModel,
  values: Float32Array,
): Promise<void> {
  const params = model.params.records();
  await writeCheckpoint(`${out}/checkpoint`, { ...meta, params }, values);
  await writeFileAtomic(
    `${out}/${MODEL_FILE_NAME}`,
    await encodeModelFile({
      model: meta.model,
      config: meta.config,
      items: meta.itemTokens,
      params,
      values,
      info: {
        epoch: meta.epoch,
        valid: meta.valid,
        data: meta.data,
        ...(meta.preset !== undefined ? { preset: meta.preset } : {}),
      },
    }),
  );
}

/**
 * Writes `dir` (a checkpoint folder, atomically) with the current parameters, Adam's
 * moments and the resume state.
 */
export async function writeState(
  dir: string,
  model: SequentialModel,
  optimizer: Adam,
  meta: Omit<CheckpointMeta, "format" | "values" | "checksum" | "params" | "resume">,
  resume: ResumeState,
  current?: Float32Array, // the parameters, when the caller has just read them
): Promise<void> {
  const records = model.params.records();
  const values = current ?? (await model.params.toArrays()).values;
  const slots = await optimizer.state(model.params.list());
  // Before the first step Adam has no moments yet.
  const moments = slots.some((x) => x.steps > 0)
    ? [...slots.map((x) => x.m), ...slots.map((x) => x.v)]
    : [];
  const all = new Float32Array(values.length * (moments.length > 0 ? 3 : 1));
  all.set(values);
  let offset = values.length;
  for (const m of moments) {
    all.set(m, offset);
    offset += m.length;
  }
  const params = moments.length > 0
    ? [
      ...records,
      ...records.map((r) => ({ name: `adam.m/${r.name}`, shape: r.shape })),
      ...records.map((r) => ({ name: `adam.v/${r.name}`, shape: r.shape })),
    ]
    : records;
  // -Infinity (no best yet) has no JSON form: store the score as null.
  const best = { ...resume.best, score: resume.best.epoch === 0 ? null : resume.best.score };
  const adamSteps = slots.map((x) => x.steps);
  await writeCheckpoint(dir, {
    ...meta,
    params,
    resume: { ...resume, best: best as ResumeState["best"], adamSteps },
  }, all);
}

/** First key path where two JSON-like values differ, or null if they are equal. */
function firstDifference(a: unknown, b: unknown, path = ""): string | null {
  if (Object.is(a, b)) return null;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return path || "(value)";
  }
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const k of keys) {
    const d = firstDifference(
      (a as Record<string, unknown>)[k],
      (b as Record<string, unknown>)[k],
      path ? `${path}.${k}` : k,
    );
    if (d !== null) return d;
  }
  return null;
}

/** Settings that may change when a run is resumed: they do not alter what was trained. */
const RESUMABLE_CHANGES = new Set(["epochs", "patience", "evalBatchSize", "validSampling"]);

/** What {@linkcode resumeRun} restores: where the run stood after its last saved epoch. */
interface ResumedRun extends Omit<ResumeState, "best"> {
  /** The last finished epoch. */
  epoch: number;
  /** The best validated epoch (0 and -Infinity: none yet). */
  best: ResumeState["best"];
  /** The best epoch's parameters, or null before the first validation. */
  bestValues: Float32Array | null;
  /** The log's records of epochs 1..epoch. */
  history: EpochRecord[];
}

/** Reads `out/state`, checks it belongs to this run, and loads it into model and Adam. */
export async function resumeRun(
  model: SequentialModel,
  o: TrainOptions,
  hooks: TrainHooks,
  optimizer: Adam,
  itemTokens: string[],
  split?: string,
): Promise<ResumedRun> {
  const { meta, values, path } = await readCheckpoint(`${hooks.out}/state`);
  const where = `${path}/model.json`;
  const resume = checkSameRun(meta, where, model, o, hooks, itemTokens);
  if (resume.split !== undefined && resume.split !== split) {
    throw new RangeError(
      `${where}: the run's data differs from this one (its sequences: field "resume.split")`,
    );
  }
  restoreWeights(meta, resume, values, path, model, optimizer);
  const best = { ...resume.best, score: resume.best.epoch === 0 ? -Infinity : resume.best.score };
  return {
    epoch: meta.epoch,
    step: resume.step,
    rngState: resume.rngState,
    best,
    sinceBest: resume.sinceBest,
    seconds: resume.seconds,
    bestValues: await restoreBest(
      meta,
      resume.best.epoch,
      values.subarray(0, model.params.size()),
      hooks.out!,
      model,
    ),
    history: await restoreHistory(`${hooks.out}/log.jsonl`, meta.epoch),
  };
}

/**
 * The saved state's resume record; throws a `RangeError` naming `where` and the field unless
 * the state is this run's: the same model, config, training settings (but
 * {@linkcode RESUMABLE_CHANGES}) and data.
 */
function checkSameRun(
  meta: CheckpointMeta,
  where: string,
  model: SequentialModel,
  o: TrainOptions,
  hooks: TrainHooks,
  itemTokens: string[],
): ResumeState {
  if (!meta.resume) throw new RangeError(`${where}: field "resume" is missing`);
  if (meta.model !== model.name) {
    throw new RangeError(`${where}: field "model" is "${meta.model}", this run is "${model.name}"`);
  }
  // Configs saved by earlier versions may name a field differently, or lack a field added
  // since: that run ran with the field's default.
  const saved = {
    ...modelEntry(meta.model).defaults,
    ...(meta.model === "sigma" ? upgradeSigmaConfig(meta.config) : meta.config),
  };
  const configDiff = firstDifference(saved, model.config);
  if (configDiff !== null) {
    const field = configDiff.split(".")[0];
    const was = (saved as Record<string, unknown>)[field];
    const now = (model.config as unknown as Record<string, unknown>)[field];
    throw new RangeError(
      `${where}: config field "${configDiff}" is ${JSON.stringify(was)}, this run has ${
        JSON.stringify(now)
      }`,
    );
  }
  for (const [k, now] of Object.entries(o)) {
    if (RESUMABLE_CHANGES.has(k)) continue;
    // A setting an earlier version did not have ran as its default there.
    const saved = k in meta.train ? meta.train[k] : TRAIN_DEFAULTS[k as keyof TrainOptions];
    if (!Object.is(saved, now)) {
      throw new RangeError(
        `${where}: training setting "${k}" is ${JSON.stringify(saved)}, this run has ${
          JSON.stringify(now)
        }`,
      );
    }
  }
  const dataDiff = firstDifference(meta.data, hooks.checkpointInfo?.data ?? {});
  if (
    dataDiff !== null || meta.itemTokens.length !== itemTokens.length ||
    meta.itemTokens.some((t, i) => t !== itemTokens[i])
  ) {
    throw new RangeError(
      `${where}: the run's data differs from this one (${
        dataDiff !== null ? `field "data.${dataDiff}"` : "item vocabulary"
      })`,
    );
  }
  return meta.resume;
}

/** Loads the state's `weights.bin` (parameters, then Adam's m and v of each) into model and Adam. */
function restoreWeights(
  meta: CheckpointMeta,
  resume: ResumeState,
  values: Float32Array,
  path: string,
  model: SequentialModel,
  optimizer: Adam,
): void {
  const where = `${path}/model.json`;
  const mine = model.params.records();
  const size = model.params.size();
  // A state written before the first step holds the parameters only.
  const withMoments = values.length === 3 * size;
  if (values.length !== size && !withMoments) {
    throw new RangeError(
      `${path}/weights.bin: holds ${values.length} values, expected ${size} or ${3 * size}`,
    );
  }
  model.params.assign(meta.params.slice(0, mine.length), values.subarray(0, size), where);
  if (!withMoments) return;
  // A state written before Adam kept a step count per variable: tfjs's Adam gave every
  // variable a gradient at every step, zeros where the loss did not reach it. One that the
  // loss never reached kept moments of exactly 0 there: it joins now, as a first step.
  const sizes = mine.map((r) => r.shape.reduce((a, b) => a * b, 1));
  const starts = sizes.map((_, i) => sizes.slice(0, i).reduce((a, b) => a + b, 0));
  const zero = (from: number, n: number) => values.subarray(from, from + n).every((x) => x === 0);
  const steps = resume.adamSteps ??
    mine.map((_, i) =>
      zero(size + starts[i], sizes[i]) && zero(2 * size + starts[i], sizes[i]) ? 0 : resume.step
    );
  if (steps.length !== mine.length) {
    throw new RangeError(
      `${where}: field "resume.adamSteps" has ${steps.length} entries, expected ${mine.length}`,
    );
  }
  optimizer.restore(
    model.params.list(),
    mine.map((_, i) => ({
      m: values.slice(size + starts[i], size + starts[i] + sizes[i]),
      v: values.slice(2 * size + starts[i], 2 * size + starts[i] + sizes[i]),
      steps: steps[i],
    })),
  );
}

/**
 * The best epoch's parameters: the state's own when it was written at its best epoch (and
 * the best files are rebuilt if a kill left them behind), else `out/checkpoint`'s.
 */
async function restoreBest(
  meta: CheckpointMeta,
  bestEpoch: number,
  stateParams: Float32Array,
  out: string,
  model: SequentialModel,
): Promise<Float32Array | null> {
  if (bestEpoch === 0) return null;
  if (bestEpoch === meta.epoch) {
    const bestValues = stateParams.slice();
    if (!(await bestFilesAt(out, bestEpoch))) {
      const { resume: _, params: __, values: ___, checksum: ____, format: _____, ...rest } = meta;
      await writeBest(out, rest, model, bestValues);
    }
    return bestValues;
  }
  const saved = await readCheckpoint(`${out}/checkpoint`);
  if (saved.meta.epoch !== bestEpoch) {
    throw new RangeError(
      `${saved.path}/model.json: field "epoch" is ${saved.meta.epoch}, the state's best epoch is ${bestEpoch}`,
    );
  }
  return saved.values;
}

/**
 * The log's records of epochs 1..`epoch`, rewriting the log to hold exactly those: a kill
 * after an epoch's log line and before its state leaves one the state has not seen.
 */
async function restoreHistory(logFile: string, epoch: number): Promise<EpochRecord[]> {
  const lines = (await Deno.readTextFile(logFile).catch(() => "")).split("\n");
  // A line without its newline is an append cut short (a kill, a full disk): it belongs
  // to an epoch after the state's, since the state is written after the log line.
  lines.pop();
  const history: EpochRecord[] = [];
  for (const [i, line] of lines.entries()) {
    if (!line) continue;
    let record: EpochRecord;
    try {
      record = JSON.parse(line);
    } catch (e) {
      throw new SyntaxError(`${logFile}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (record.epoch <= epoch) history.push(record);
  }
  if (history.length !== epoch) {
    throw new RangeError(
      `${logFile}: holds ${history.length} epochs up to ${epoch}, the state is after epoch ${epoch}`,
    );
  }
  const text = history.map((r) => JSON.stringify(r) + "\n").join("");
  await writeFileAtomic(logFile, new TextEncoder().encode(text));
  return history;
}
