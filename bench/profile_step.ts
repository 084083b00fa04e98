/**
 * Where a training step's time goes: tfjs's kernel profile of one step of a model on one
 * of the trainer's batches, summed by kernel name (time, calls), plus the step's wall time.
 *
 * ```sh
 * deno run -A bench/profile_step.ts --model sigma --data ../shared/data/Beauty.txt --quantile 0.7
 *
 * deno run -A bench/profile_step.ts --reference-step   # the step torch_reference.py times
 * deno run -A bench/profile_step.ts --model sasrec --data ../shared/data/Beauty.txt --eval
 * ```
 *
 * Flags: `--model` (sigma), `--data FILE` (default: the embedded synthetic set),
 * `--quantile` (0.7: the batch at that quantile of the epoch's batch lengths, 1 = the
 * longest), `--eval` (instead of a training step: one evaluation batch of the trainer's
 * `evalBatchSize` validation users, scored, ranked and read back as `evaluate` does it),
 * `--preset NAME` (a model's named config bundle, as `deno task train --preset`, e.g. SIGMA's
 * `authors`; without it the model's defaults, SIGMA's paper text, as the profiles in
 * docs/performance.md were taken, where `train` applies SIGMA's default preset
 * `authors-bounded`), `--reference-step` (instead of a data set: SASRec's fixed step of batch 256, length 50,
 * 12,000 items that `bench/torch_reference.py` also times; `--model` must be sasrec, and
 * `--data`, `--preset` and `--batch-size` are refused),
 * `--backend` (wasm), `--threads`, `--blas` (off; auto: large matmuls on a native BLAS, as
 * `deno task train` does), `--batch-size` (the model's training default) and
 * `--max-positions` (the trainer's), `--top` (20 rows), `--trace` (also every kernel call of
 * the step in order, with shapes), `--synthetic-length N` (instead of the default synthetic
 * set, one of 2,000 items and histories of N/4 to N items: ML-1M-like lengths at 200), `--calls A,B` (also list the 10
 * slowest calls of kernels A and B with their input and output shapes). Kernel times of
 * ops that contain other ops (custom gradients appear as `forward` and `unnamed scope`)
 * include their inner kernels, so the column adds up to more than the wall time.
 *
 * The summary line also gives the step's dispatches (`bench/_dispatches.ts`): on webgpu the
 * GPU compute dispatches, queue submits and host readbacks, on cpu and wasm the kernel calls
 * that do work. They are counted on one more step after the profiled one, unprofiled:
 * under `tf.profile` tfjs-backend-webgpu closes its compute pass after every program (and
 * submits each where the adapter has timestamp queries), which is not how a step runs.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "../lib/train/adam.ts";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { countDispatches, describeCount, NO_WORK_KERNELS } from "./_dispatches.ts";
import { totalFlops } from "./_flops.ts";
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import type { EvalBatch } from "../lib/data/types.ts";
import { prepareBatch, type PreparedBatch, rankTensors, readRanks } from "../lib/eval/_device.ts";
import {
  evalBatches,
  leaveOneOut,
  Rng,
  syntheticDataset,
  type TrainBatch,
  trainBatches,
} from "../lib/data/mod.ts";
import { readDataset } from "../lib/data/files.ts";
import { modelEntry, modelPreset, type SequentialModel, stepSeeds } from "../lib/models/mod.ts";
import { SASREC_STEP_ITEMS, SASREC_STEP_LENGTH, sasrecStepBatch } from "./_shapes.ts";
import { TRAIN_DEFAULTS, trainStep } from "../lib/train/trainer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "sigma" },
    preset: { type: "string" },
    data: { type: "string" },
    quantile: { type: "string", default: "0.7" },
    backend: { type: "string", default: "wasm" },
    threads: { type: "string" },
    blas: { type: "string", default: "off" },
    top: { type: "string", default: "20" },
    calls: { type: "string" },
    "reference-step": { type: "boolean", default: false },
    eval: { type: "boolean", default: false },
    "batch-size": { type: "string" },
    "max-positions": { type: "string" },
    trace: { type: "boolean", default: false },
    "synthetic-length": { type: "string" },
  },
  strict: true,
});
const quantile = Number(values.quantile);
if (!(quantile >= 0 && quantile <= 1)) {
  throw new RangeError(`--quantile must be in [0, 1], got "${values.quantile}"`);
}
const top = positiveInt("top", values.top);
const threads = optionalPositiveInt("threads", values.threads);

const backend = await selectBackend(values.backend as BackendChoice, {
  wasmThreads: threads,
  blas: values.blas,
});
let model: SequentialModel;
let batch: TrainBatch;
let evalBatch: EvalBatch | undefined;
let source: string;
if (values["reference-step"]) {
  if (values.model !== "sasrec") {
    throw new RangeError(
      `--reference-step is SASRec's step: use --model sasrec, got "${values.model}"`,
    );
  }
  // The reference step is one fixed shape: flags that pick a data set, a batch or a config
  // would be ignored, so they are refused rather than silently dropped.
  const ignored = ["data", "preset", "batch-size"].filter((flag) =>
    values[flag as "data" | "preset" | "batch-size"] !== undefined
  );
  if (ignored.length > 0) {
    throw new RangeError(
      `--reference-step has a fixed shape and config: drop --${ignored.join(", --")}`,
    );
  }
  model = modelEntry("sasrec").create({
    numItems: SASREC_STEP_ITEMS,
    maxLength: SASREC_STEP_LENGTH,
  });
  batch = sasrecStepBatch();
  source = "the reference step (bench/torch_reference.py's shape)";
} else {
  // Long synthetic histories (ML-1M-like) with --synthetic-length: users' lengths from a
  // quarter of it up to it, 2,000 items.
  const long = optionalPositiveInt("synthetic-length", values["synthetic-length"]);
  const data = values.data ? await readDataset(values.data) : syntheticDataset(
    long === undefined
      ? { seed: 42 }
      : { seed: 42, items: 2000, minLength: Math.max(5, long >> 2), maxLength: long },
  );
  const { split } = leaveOneOut(data);
  const entry = modelEntry(values.model);
  const created = entry.create({
    ...modelPreset(values.model, values.preset),
    numItems: data.numItems,
  });
  model = created;
  const batches = trainBatches(split.train, {
    batchSize: optionalPositiveInt("batch-size", values["batch-size"]) ??
      entry.trainDefaults?.batchSize ?? TRAIN_DEFAULTS.batchSize,
    examples: entry.trainDefaults?.examples,
    maxLength: created.config.maxLength,
    rng: new Rng(TRAIN_DEFAULTS.seed),
  }).sort((a, b) => a.length - b.length);
  batch = batches[Math.min(batches.length - 1, Math.floor(quantile * batches.length))];
  source = data.source;
  if (values.eval) {
    evalBatch = evalBatches(split.valid, {
      batchSize: TRAIN_DEFAULTS.evalBatchSize,
      maxLength: created.config.maxLength,
    })[0];
  }
}
if (values.eval && !evalBatch) {
  throw new RangeError("--eval needs a data set, not --reference-step");
}
let positions = 0;
for (const t of batch.targets) if (t !== 0) positions++;
const optimizer = new Adam(TRAIN_DEFAULTS.learningRate);
const vars = model.params.list();
const step = async (i: number) => {
  const { values: packed } = trainStep(
    model,
    batch,
    stepSeeds(1, i),
    optimizer,
    vars,
    optionalPositiveInt("max-positions", values["max-positions"]) ?? TRAIN_DEFAULTS.maxPositions,
  );
  await packed.data();
  packed.dispose();
};
// One evaluation batch as `evaluate` runs it: scores, the target's rank, read back.
const evalStep = async () => {
  const b = evalBatch!;
  let prep: PreparedBatch | undefined;
  const tensors = tf.tidy(() => {
    const scores = model.scores(b);
    prep = prepareBatch(b, scores.shape);
    return rankTensors(scores, prep);
  });
  await readRanks(tensors, prep!, b);
};
const run = values.eval ? evalStep : step;
await run(0); // warm-up: kernel compilation, first allocations
const started = performance.now();
const info = await tf.profile(() => run(1));
const wall = performance.now() - started;
const { count } = await countDispatches(() => run(2)); // unprofiled: see the module doc
const byName = new Map<string, { ms: number; calls: number }>();
for (const k of info.kernels) {
  const e = byName.get(k.name) ?? { ms: 0, calls: 0 };
  e.ms += Number(k.kernelTimeMs);
  e.calls++;
  byName.set(k.name, e);
}
console.log(
  values.eval
    ? `${model.name} on ${source}, ${backend.name} (${backend.reason}): one evaluation batch ` +
      `of ${evalBatch!.batch} users x ${evalBatch!.length}; ${wall.toFixed(0)} ms wall ` +
      `(profiled), ${info.kernels.length} kernel calls; ${describeCount(count)}`
    : `${model.name} on ${source}, ${backend.name} (${backend.reason}): batch ${batch.batch} x ${batch.length}, ` +
      `${positions} target positions; one step ${wall.toFixed(0)} ms wall (profiled), ` +
      `${info.kernels.length} kernel calls; ${describeCount(count)}; ` +
      `${(totalFlops(info.kernels) / 1e9).toFixed(2)} GFLOP in matrix products`,
);
console.log("kernel                          ms     calls");
for (const [name, e] of [...byName].sort((a, b) => b[1].ms - a[1].ms).slice(0, top)) {
  console.log(`${name.padEnd(26)}${e.ms.toFixed(0).padStart(8)}${String(e.calls).padStart(10)}`);
}
for (const name of values.calls?.split(",") ?? []) {
  const calls = info.kernels.filter((k) => k.name === name);
  if (calls.length === 0) throw new RangeError(`--calls: no kernel "${name}" ran in the step`);
  console.log(`\nslowest ${Math.min(10, calls.length)} of ${calls.length} ${name} calls`);
  calls.sort((a, b) => Number(b.kernelTimeMs) - Number(a.kernelTimeMs));
  const shapes = (list: number[][]) => list.map((s) => `[${s}]`).join(" ");
  for (const k of calls.slice(0, 10)) {
    console.log(
      `${Number(k.kernelTimeMs).toFixed(1).padStart(8)} ms  ${shapes(k.inputShapes)} -> ${
        shapes(k.outputShapes)
      }`,
    );
  }
  // The same calls summed by shape: where a kernel's time goes when no one call is slow.
  const byShape = new Map<string, { ms: number; calls: number }>();
  for (const k of calls) {
    const key = `${shapes(k.inputShapes)} -> ${shapes(k.outputShapes)}`;
    const e = byShape.get(key) ?? { ms: 0, calls: 0 };
    e.ms += Number(k.kernelTimeMs);
    e.calls++;
    byShape.set(key, e);
  }
  console.log(`\n${name} by shape (10 largest totals): ms, calls`);
  for (const [key, e] of [...byShape].sort((a, b) => b[1].ms - a[1].ms).slice(0, 10)) {
    console.log(`${e.ms.toFixed(1).padStart(8)} ms ${String(e.calls).padStart(5)}  ${key}`);
  }
}
if (values.trace) {
  // Every kernel call of the profiled step in order (no-work kernels left out): which op
  // each dispatch comes from, for finding the next fusion.
  console.log("\nthe step's kernel calls in order");
  for (const k of info.kernels.filter((k) => !NO_WORK_KERNELS.has(k.name))) {
    const shapes = (list: number[][]) => list.map((s) => `[${s}]`).join(" ");
    console.log(`${k.name.padEnd(28)} ${shapes(k.inputShapes)} -> ${shapes(k.outputShapes)}`);
  }
}
optimizer.dispose();
