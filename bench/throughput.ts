/**
 * Training and evaluation throughput per model, data set and backend, and one SASRec step
 * side by side with PyTorch.
 *
 * ```sh
 * deno task bench                                         # everything below, defaults
 * deno task bench --backends wasm --models sasrec --data office --steps 4
 * deno task bench --backends wasm+blas --threads 1 --models diffurec --data office
 * deno task bench --backends webgpu                       # whatever adapter is present
 * ```
 *
 * Each (model, data, backend) runs in a child process of its own, so that its peak RSS
 * (Linux `VmHWM`) is its own and the backends never share a tfjs engine. A child:
 * - trains `--steps` timed steps (after one untimed warm-up step) on the trainer's own
 *   batches (`--batch-size` rows, default the model's training default: 256 sequences, or
 *   DiffuRec's 512 one-target examples for the diffusion models; length-bucketed, seeded),
 *   taken at evenly spaced quantiles of
 *   their lengths so that the sample has an epoch's mix of short and long batches;
 *   `positions/s` counts target positions, and `s/epoch` is the mean sampled step time
 *   times the epoch's number of batches (an estimate from the sample, not a timed epoch);
 * - counts the GEMM floating-point operations of one step by profiling its kernels' shapes
 *   (MatMul, BatchMatMul, _FusedMatMul: 2·M·N·K each), so `GFLOP/s` is that count over
 *   the measured step time: the arithmetic rate the step achieves, not a peak;
 * - counts the dispatches of one more, untimed step on the warm-up batch
 *   (`bench/_dispatches.ts`): `dispatches/step` is the GPU compute dispatches on webgpu
 *   (each one fixed cost on a real GPU, which is why WebGPU trains slower than wasm there)
 *   and the kernel calls that do work on cpu and wasm;
 * - ranks the full catalogue for `--users` validation users (after a warm-up batch);
 *   `eval all s` extrapolates that rate to every user of the data set.
 *
 * Where a model ran on webgpu and on wasm, a line `ratio DATA MODEL webgpu/<wasm row>`
 * divides webgpu's training positions/s and evaluation users/s by the faster wasm row's.
 *
 * Data: `../shared/data/{Office_Products,Beauty}.txt` beside the repository where they
 * exist, else the embedded synthetic data set (said so in the output).
 *
 * The SASRec step comparison times this project's SASRec on a fixed synthetic batch (256
 * rows, length 50, 12,000 items, a target at every position, full softmax, Adam), and
 * `bench/torch_reference.py` times the same step in PyTorch on CPU, in the same run; the
 * line `ratio sasrec-step <backend>/pytorch: X.XX` divides the two times (the two sides
 * alternate, `--pairs` times (2), and the ratio is the median of the pairs'); with `sigma` among
 * `--models`, SIGMA's step on the same batch likewise (`ratio sigma-step`), PyTorch's by
 * the twin in interop/torch. `--torch-device cuda`
 * times PyTorch on the GPU instead (the anchor for the WebGPU rows on a machine with one).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "../lib/train/adam.ts";
import os from "node:os";
import { parseArgs } from "../cli/_args.ts";
import { totalFlops } from "./_flops.ts";
import { CHILD_PERMISSIONS, optionalPositiveInt, positiveInt } from "./_flags.ts";
import { SASREC_STEP_ITEMS, SASREC_STEP_LENGTH, sasrecStepBatch } from "./_shapes.ts";
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import {
  evalBatches,
  leaveOneOut,
  Rng,
  type SequenceDataset,
  syntheticDataset,
  type TrainBatch,
  trainBatches,
} from "../lib/data/mod.ts";
import { readDataset } from "../lib/data/files.ts";
import { evaluate } from "../lib/eval/mod.ts";
import { modelEntry, stepSeeds } from "../lib/models/mod.ts";
import { TRAIN_DEFAULTS, trainStep } from "../lib/train/trainer.ts";
import { findTorchPython } from "./_python.ts";
import { countDispatches } from "./_dispatches.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    backends: { type: "string", default: "cpu,wasm,wasm+blas,webgpu" },
    models: { type: "string", default: "sasrec,sigma" },
    data: { type: "string", default: "office,beauty" },
    steps: { type: "string", default: "8" },
    "slow-steps": { type: "string", default: "1" },
    users: { type: "string", default: "2048" },
    "slow-users": { type: "string", default: "128" },
    "batch-size": { type: "string" },
    threads: { type: "string" },
    torch: { type: "string", default: "true" },
    pairs: { type: "string", default: "2" },
    "torch-device": { type: "string", default: "cpu" },
    child: { type: "string" },
  },
  strict: true,
});

const steps = positiveInt("steps", values.steps);
const slowSteps = positiveInt("slow-steps", values["slow-steps"]);
const users = positiveInt("users", values.users);
const slowUsers = positiveInt("slow-users", values["slow-users"]);
/** `--batch-size`, or undefined for each model's own training default. */
const batchSizeFlag = values["batch-size"] === undefined
  ? undefined
  : positiveInt("batch-size", values["batch-size"]);

const DATA_FILES: Record<string, string> = {
  office: "Office_Products.txt",
  beauty: "Beauty.txt",
};

/** What one child process measures. */
interface Measurement {
  model: string;
  data: string;
  backend: string;
  label: string;
  steps: number;
  secondsPerStep: number;
  positionsPerSec: number;
  secondsPerEpoch: number;
  gflopPerStep: number;
  gflopPerSec: number;
  /** GPU dispatches (webgpu) or kernel calls doing work (cpu, wasm) of one training step. */
  dispatchesPerStep: number;
  evalUsers: number;
  usersPerSec: number;
  evalAllSeconds: number;
  peakRssMiB: number;
}

/** Peak resident set size of this process in MiB (Linux), else the current RSS. */
function peakRssMiB(): number {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const match = status.match(/VmHWM:\s+(\d+)\s+kB/);
    if (match) return Number(match[1]) / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

/** GEMM operations of one profiled call (`bench/_flops.ts`). */
async function gemmFlops(run: () => void): Promise<number> {
  return totalFlops((await tf.profile(run)).kernels);
}

function backendLabel(chosen: { name: string; reason: string }): string {
  if (chosen.name === "webgpu" && chosen.reason.includes("software")) {
    return "webgpu (software adapter)";
  }
  const threads = chosen.reason.match(/(\d+) thread\(s\)/);
  const blas = chosen.reason.includes("large matmuls on native BLAS") ? " + BLAS" : "";
  return chosen.name === "wasm" && threads ? `wasm (${threads[1]} threads)${blas}` : chosen.name;
}

/**
 * A `--backends` entry: a backend name, or `wasm+blas` (wasm with its large matrix
 * products on a native BLAS, `backends/_blas.ts`; plain wasm when none loads, as its label
 * then shows).
 */
function backendSpec(entry: string): { backend: BackendChoice; blas: string } {
  return entry === "wasm+blas"
    ? { backend: "wasm", blas: "auto" }
    : { backend: entry as BackendChoice, blas: "off" };
}

async function loadData(name: string): Promise<SequenceDataset> {
  if (name === "synthetic") return syntheticDataset();
  const file = DATA_FILES[name];
  if (!file) {
    throw new RangeError(
      `Unknown --data "${name}": expected ${Object.keys(DATA_FILES).join(", ")}`,
    );
  }
  return await readDataset(new URL(`../../shared/data/${file}`, import.meta.url).pathname);
}

/**
 * Times `count` training steps after one warm-up; returns seconds and positions, and the
 * dispatches of one more, untimed step on the warm-up batch.
 */
async function timeSteps(
  model: ReturnType<ReturnType<typeof modelEntry>["create"]>,
  batches: TrainBatch[],
  count: number,
): Promise<{ seconds: number; positions: number; gflop: number; dispatches: number }> {
  const optimizer = new Adam(TRAIN_DEFAULTS.learningRate);
  const vars = model.params.list();
  const step = (i: number) =>
    trainStep(
      model,
      batches[i % batches.length],
      stepSeeds(1, i),
      optimizer,
      vars,
      TRAIN_DEFAULTS.maxPositions,
    ).values;
  let gflop = 0;
  // Warm-up (kernel compilation, Adam's slots), profiled for its GEMM count. Bucketed
  // batches differ in length, so the count is scaled by positions below.
  let warmPositions = 0;
  gflop = (await gemmFlops(() => {
    step(0).dispose();
  })) / 1e9;
  for (const t of batches[0].targets) if (t !== 0) warmPositions++;
  let seconds = 0;
  let positions = 0;
  for (let i = 1; i <= count; i++) {
    const t0 = performance.now();
    const packed = step(i);
    await packed.data();
    packed.dispose();
    seconds += (performance.now() - t0) / 1000;
    for (const t of batches[i % batches.length].targets) if (t !== 0) positions++;
  }
  // After the timed steps, so that the counter's wrappers cost them nothing.
  const { count: dispatches } = await countDispatches(async () => {
    const packed = step(0);
    await packed.data();
    packed.dispose();
  });
  optimizer.dispose();
  return {
    seconds,
    positions,
    gflop: (gflop / warmPositions) * (positions / count),
    dispatches: dispatches.dispatches,
  };
}

async function runChild(spec: string): Promise<void> {
  const [model, dataName, entry] = spec.split(":");
  const { backend, blas } = backendSpec(entry);
  const chosen = await selectBackend(backend, {
    blas,
    wasmThreads: optionalPositiveInt("threads", values.threads),
  });
  const slow = chosen.name !== "wasm";
  const label = backendLabel(chosen);
  const stepsHere = slow ? slowSteps : steps;
  if (model === "sasrec-step" || model === "sigma-step") {
    // The fixed shape bench/torch_reference.py also times (SIGMA's by its PyTorch twin).
    const m = modelEntry(model.replace("-step", "")).create({
      numItems: SASREC_STEP_ITEMS,
      maxLength: SASREC_STEP_LENGTH,
    });
    const r = await timeSteps(m, [sasrecStepBatch()], stepsHere);
    m.params.dispose();
    console.log(JSON.stringify({ label, secondsPerStep: r.seconds / stepsHere }));
    return;
  }
  const data = await loadData(dataName);
  const { split } = leaveOneOut(data);
  const modelDefaults = modelEntry(model);
  const m = modelDefaults.create({ numItems: data.numItems });
  const maxLength = (m.config as { maxLength: number }).maxLength; // as the trainer truncates
  // The model's training rows and batch size, as `deno task train` makes them.
  const batches = trainBatches(split.train, {
    batchSize: batchSizeFlag ?? modelDefaults.trainDefaults?.batchSize ??
      TRAIN_DEFAULTS.batchSize,
    examples: modelDefaults.trainDefaults?.examples,
    maxLength,
    rng: new Rng(1),
    bucket: true,
  });
  // Timed batches at evenly spaced quantiles of the epoch's batch lengths (bucketing makes
  // lengths vary from a few items to the maximum), after the warm-up batch.
  const byLength = [...batches].sort((a, b) => a.length - b.length);
  const sample = [byLength[byLength.length >> 1]];
  for (let i = 0; i < stepsHere; i++) {
    sample.push(byLength[Math.floor(((i + 0.5) / stepsHere) * byLength.length)]);
  }
  const r = await timeSteps(m, sample, stepsHere);
  const evalUsers = split.valid.slice(0, (slow ? slowUsers : users) + 256);
  const [warm, ...rest] = evalBatches(evalUsers, {
    batchSize: TRAIN_DEFAULTS.evalBatchSize,
    maxLength,
  });
  await evaluate((b) => m.scores(b), [warm], { numItems: data.numItems });
  const timedUsers = rest.reduce((n, b) => n + b.batch, 0);
  const e0 = performance.now();
  await evaluate((b) => m.scores(b), rest, { numItems: data.numItems });
  const evalSeconds = (performance.now() - e0) / 1000;
  m.params.dispose();
  const positionsPerSec = r.positions / r.seconds;
  const result: Measurement = {
    model,
    data: `${dataName} (${data.sequences.length} users, ${data.numItems} items)`,
    backend: chosen.name,
    label,
    steps: stepsHere,
    secondsPerStep: r.seconds / stepsHere,
    positionsPerSec,
    secondsPerEpoch: (r.seconds / stepsHere) * batches.length,
    gflopPerStep: r.gflop,
    gflopPerSec: r.gflop / (r.seconds / stepsHere),
    dispatchesPerStep: r.dispatches,
    evalUsers: timedUsers,
    usersPerSec: timedUsers / evalSeconds,
    evalAllSeconds: data.sequences.length / (timedUsers / evalSeconds),
    peakRssMiB: peakRssMiB(),
  };
  console.log(JSON.stringify(result));
}

/** Runs one measurement in a child process; null (with the reason printed) on failure. */
async function child<T>(spec: string): Promise<T | null> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...CHILD_PERMISSIONS,
      new URL(import.meta.url).pathname,
      "--child",
      spec,
      ...Deno.args.filter((a) => !a.startsWith("--child")),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    console.log(`  ${spec}: failed (${err})`);
    return null;
  }
  return JSON.parse(text) as T;
}

let shim: Promise<string | null> | undefined;

/**
 * A shared library whose `mkl_serv_intel_cpu_true` returns 1, built once with the first C
 * compiler found (null without one), to preload into PyTorch: MKL, linked into pip's torch,
 * runs its fast code paths only on CPUs it takes for Intel's, and on this project's AMD EPYC
 * hosts that made the anchor's item GEMM 2.6x slower (bench/torch_gemm.py, 80 against 206-216
 * GFLOP/s single-threaded). On an Intel CPU the function already returns 1: no change.
 */
function mklShim(): Promise<string | null> {
  shim ??= (async () => {
    if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return null;
    const dir = await Deno.makeTempDir({ prefix: "mkl_shim_" });
    const source = `${dir}/mkl_shim.c`;
    const library = `${dir}/libmkl_shim.so`;
    await Deno.writeTextFile(source, "int mkl_serv_intel_cpu_true(void) { return 1; }\n");
    for (const cc of ["cc", "gcc", "clang", "clang-16"]) {
      try {
        const out = await new Deno.Command(cc, {
          args: ["-shared", "-fPIC", "-O2", "-o", library, source],
          stdout: "null",
          stderr: "null",
        }).output();
        if (out.success) return library;
      } catch {
        // not installed: the next one
      }
    }
    return null;
  })();
  return shim;
}

/** Runs bench/torch_reference.py for `model`'s step with the first python3 that has torch. */
async function torchReference(
  model: "sasrec" | "sigma",
): Promise<
  { secondsPerStep: number; blas: string; gemmGflops: number; gemmFreshGflops: number } | string
> {
  const script = new URL("./torch_reference.py", import.meta.url).pathname;
  const { python, missing } = await findTorchPython();
  if (missing) return missing;
  const preload = await mklShim();
  const out = await new Deno.Command(python, {
    // The script names torch's own BLAS and kernels, and times its item-logits GEMM.
    args: [script, "--steps", "3", "--device", values["torch-device"], "--model", model],
    env: preload ? { LD_PRELOAD: preload } : {},
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) return `${python} failed: ${new TextDecoder().decode(out.stderr).trim()}`;
  const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
  return {
    secondsPerStep: r.seconds_per_step,
    gemmGflops: r.gemm_gflops,
    gemmFreshGflops: r.gemm_fresh_gflops,
    blas: r.device === "cpu"
      ? `${python}, torch ${r.torch}, ${r.blas}, ${r.threads} threads, kernels ${r.coretype}`
      : `${python}, torch ${r.torch} on ${r.device}`,
  };
}

/** The CPU's model name and logical CPU count, e.g. "AMD EPYC x 2" ("?" when unknown). */
function cpuName(): string {
  // node:os, not /proc/cpuinfo: Deno 2 reads /proc files only under --allow-all.
  return `${os.cpus()[0]?.model ?? "?"} x ${navigator.hardwareConcurrency}`;
}

async function main(): Promise<void> {
  // Sessions here get different hosts (Intel or AMD): results are only comparable on one.
  console.log(`cpu: ${cpuName()}`);
  const backends = values.backends.split(",");
  const models = values.models.split(",");
  const dataNames = values.data.split(",").filter((name) => {
    if (name === "synthetic") return true;
    const path = new URL(`../../shared/data/${DATA_FILES[name] ?? name}`, import.meta.url);
    try {
      Deno.statSync(path);
      return true;
    } catch {
      console.log(`data: ${path.pathname} not found; skipped`);
      return false;
    }
  });
  if (dataNames.length === 0) dataNames.push("synthetic");
  const rows: Measurement[] = [];
  for (const dataName of dataNames) {
    for (const model of models) {
      for (const backend of backends) {
        const r = await child<Measurement>(`${model}:${dataName}:${backend}`);
        if (!r) continue;
        rows.push(r);
        console.log(
          `${r.model} on ${r.data}, ${r.label}: ${r.steps} steps, ` +
            `${r.secondsPerStep.toFixed(2)} s/step; ${r.evalUsers} users ranked`,
        );
      }
    }
  }
  console.log("");
  console.log(
    "data      model        backend                    positions/s  s/epoch  GFLOP/s  " +
      "dispatches/step  eval users/s  eval all s  peak RSS MiB",
  );
  for (const r of rows) {
    console.log(
      `${r.data.split(" ")[0].padEnd(10)}${r.model.padEnd(13)}${r.label.padEnd(26)}` +
        `${r.positionsPerSec.toFixed(0).padStart(12)}${r.secondsPerEpoch.toFixed(0).padStart(9)}` +
        `${r.gflopPerSec.toFixed(1).padStart(9)}${String(r.dispatchesPerStep).padStart(17)}` +
        `${r.usersPerSec.toFixed(0).padStart(14)}` +
        `${r.evalAllSeconds.toFixed(1).padStart(12)}${r.peakRssMiB.toFixed(0).padStart(14)}`,
    );
  }
  printWebGpuRatios(rows);
  if (values.torch !== "true") return;
  const pairs = positiveInt("pairs", values.pairs);
  for (const step of ["sasrec", "sigma"] as const) {
    if (step === "sigma" && !models.includes("sigma")) continue;
    for (const backend of backends.filter((b) => b !== "cpu")) {
      console.log("");
      // PyTorch and the library alternate (A, B, A, B): a host that slows down or speeds
      // up during the run moves both sides, and the ratio is the median of the pairs'.
      const ratios: number[] = [];
      for (let pair = 0; pair < pairs; pair++) {
        const torch = await torchReference(step);
        if (typeof torch === "string") {
          console.log(`${step}-step vs PyTorch skipped: ${torch}`);
          break;
        }
        console.log(
          `pytorch ${step}-step: ${torch.secondsPerStep.toFixed(2)} s (${torch.blas}; ` +
            `item-logits GEMM ${torch.gemmGflops.toFixed(1)} GFLOP/s, ` +
            `${torch.gemmFreshGflops.toFixed(1)} with a fresh output)`,
        );
        const r = await child<{ label: string; secondsPerStep: number }>(
          `${step}-step:none:${backend}`,
        );
        if (!r) break;
        console.log(`${r.label} ${step}-step: ${r.secondsPerStep.toFixed(2)} s`);
        ratios.push(r.secondsPerStep / torch.secondsPerStep);
      }
      if (ratios.length === 0) continue;
      const sorted = [...ratios].sort((a, b) => a - b);
      const mid = sorted.length >> 1;
      const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
      console.log(
        `ratio ${step}-step ${backend}/pytorch: ${median.toFixed(2)} (median of ${ratios.length} ` +
          `alternated pairs: ${ratios.map((x) => x.toFixed(2)).join(", ")})`,
      );
    }
  }
}

/**
 * For each data set and model measured on webgpu and on a wasm row (the fastest, with or
 * without BLAS), the webgpu/wasm ratio of training positions/s and of evaluation users/s:
 * what the training backend choice (`WEBGPU_TRAINING_RULE`) rests on.
 */
function printWebGpuRatios(rows: Measurement[]): void {
  const lines: string[] = [];
  for (const gpu of rows.filter((r) => r.backend === "webgpu")) {
    const same = rows.filter((r) =>
      r.backend.startsWith("wasm") && r.data === gpu.data && r.model === gpu.model
    );
    if (same.length === 0) continue;
    const wasm = same.reduce((a, b) => (b.positionsPerSec > a.positionsPerSec ? b : a));
    lines.push(
      `ratio ${gpu.data.split(" ")[0]} ${gpu.model} webgpu/${wasm.label}: training ${
        (gpu.positionsPerSec / wasm.positionsPerSec).toFixed(2)
      }, evaluation ${
        (gpu.usersPerSec / wasm.usersPerSec).toFixed(2)
      }; dispatches/step ${gpu.dispatchesPerStep} against ${wasm.dispatchesPerStep} kernel calls`,
    );
  }
  if (lines.length > 0) console.log(["", ...lines].join("\n"));
}

if (values.child) await runChild(values.child);
else await main();
