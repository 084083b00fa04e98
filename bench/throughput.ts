/**
 * Training and evaluation throughput per backend, as ratios to the cpu backend measured in
 * the same run.
 *
 * ```sh
 * deno task bench                                   # sasrec and sigma on cpu and wasm
 * deno task bench --backends cpu,wasm,webgpu --models sasrec --steps 4
 * ```
 *
 * Data: `../shared/data/Office_Products.txt` beside the repository when it exists, else
 * the embedded synthetic data set (said so in the output). Training batches are the
 * trainer's own (256 rows, length-bucketed, seeded), so a step's cost is that of a real
 * epoch's mix of lengths, and the training ratio compares target positions per second (cpu
 * times fewer steps). Evaluation ranks the full catalogue for the first users of the
 * validation split.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import {
  evalBatches,
  leaveOneOut,
  readDataset,
  Rng,
  type SequenceDataset,
  syntheticDataset,
  trainBatches,
} from "../lib/data/mod.ts";
import { evaluate } from "../lib/eval/mod.ts";
import { modelEntry, stepSeeds } from "../lib/models/mod.ts";
import { TRAIN_DEFAULTS, trainStep } from "../lib/train/trainer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    backends: { type: "string", default: "cpu,wasm" },
    models: { type: "string", default: "sasrec,sigma" },
    steps: { type: "string", default: "3" },
    "cpu-steps": { type: "string", default: "1" },
    users: { type: "string", default: "512" },
    "cpu-users": { type: "string", default: "128" },
  },
  strict: true,
});
const positiveInt = (name: string, text: string) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`--${name} must be a positive integer, got "${text}"`);
  }
  return n;
};
const backends = values.backends.split(",") as BackendChoice[];
const models = values.models.split(",");
const steps = positiveInt("steps", values.steps);
const cpuSteps = positiveInt("cpu-steps", values["cpu-steps"]);
const users = positiveInt("users", values.users);
const cpuUsers = positiveInt("cpu-users", values["cpu-users"]);

const officePath = new URL("../../shared/data/Office_Products.txt", import.meta.url).pathname;
let data: SequenceDataset;
try {
  data = await readDataset(officePath);
  console.log(`data: ${officePath} (${data.sequences.length} users, ${data.numItems} items)`);
} catch (e) {
  if (!(e instanceof Deno.errors.NotFound)) throw e;
  data = syntheticDataset();
  console.log(`data: ${officePath} not found; using ${data.source}`);
}
const { split } = leaveOneOut(data);
const batches = trainBatches(split.train, {
  batchSize: TRAIN_DEFAULTS.batchSize,
  rng: new Rng(1),
  bucket: true,
});

interface Row {
  model: string;
  backend: string;
  label: string;
  seqPerSec: number;
  positionsPerSec: number;
  usersPerSec: number;
}
const rows: Row[] = [];
for (const name of models) {
  for (const choice of backends) {
    const chosen = await selectBackend(choice);
    const label = chosen.name === "webgpu" && chosen.reason.includes("fallback")
      ? "webgpu (software adapter)"
      : chosen.name;
    const entry = modelEntry(name);
    const model = entry.create({ numItems: data.numItems });
    const optimizer = tf.train.adam(TRAIN_DEFAULTS.learningRate);
    const vars = model.params.list();
    const n = chosen.name === "cpu" ? cpuSteps : steps;
    // One untimed warm-up step (kernel compilation, Adam's slots), then n timed ones.
    let sequences = 0;
    let positions = 0;
    let seconds = 0;
    for (let i = 0; i <= n; i++) {
      const batch = batches[i % batches.length];
      const t0 = performance.now();
      const { values: packed } = trainStep(
        model,
        batch,
        stepSeeds(1, i),
        optimizer,
        vars,
        TRAIN_DEFAULTS.maxPositions,
      );
      await packed.data();
      packed.dispose();
      if (i === 0) continue;
      seconds += (performance.now() - t0) / 1000;
      sequences += batch.batch;
      for (const t of batch.targets) if (t !== 0) positions++;
    }
    const evalUsers = split.valid.slice(0, chosen.name === "cpu" ? cpuUsers : users);
    const e0 = performance.now();
    await evaluate(
      (b) => model.scores(b),
      evalBatches(evalUsers, { batchSize: TRAIN_DEFAULTS.evalBatchSize }),
      { numItems: data.numItems },
    );
    const evalSeconds = (performance.now() - e0) / 1000;
    rows.push({
      model: name,
      backend: chosen.name,
      label,
      seqPerSec: sequences / seconds,
      positionsPerSec: positions / seconds,
      usersPerSec: evalUsers.length / evalSeconds,
    });
    console.log(
      `${name} on ${label}: ${n} steps, ${(seconds / n).toFixed(2)} s/step; ` +
        `${evalUsers.length} users ranked in ${evalSeconds.toFixed(2)} s`,
    );
    optimizer.dispose();
    model.params.dispose();
  }
}

console.log("");
console.log(
  "model   backend                     train seq/s  positions/s  eval users/s  train x cpu  eval x cpu",
);
for (const r of rows) {
  const cpu = rows.find((c) => c.model === r.model && c.backend === "cpu");
  const ratio = (a: number, b?: number) => (b ? (a / b).toFixed(2) : "-");
  console.log(
    `${r.model.padEnd(8)}${r.label.padEnd(28)}${r.seqPerSec.toFixed(1).padStart(12)}` +
      `${r.positionsPerSec.toFixed(0).padStart(13)}${r.usersPerSec.toFixed(1).padStart(14)}` +
      `${ratio(r.positionsPerSec, cpu?.positionsPerSec).padStart(13)}${
        ratio(r.usersPerSec, cpu?.usersPerSec).padStart(12)
      }`,
  );
}
