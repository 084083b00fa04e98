/**
 * The loss and each of its parts, averaged over every `--every` Adam steps, for a model
 * on a data set: a look at training dynamics (which term moves, which collapses) finer
 * than the trainer's per-epoch log and without validation.
 *
 * ```sh
 * deno run -A bench/loss_trace.ts --data ../shared/data/Office_Products.txt --steps 120 \
 *   --config '{"logVarInit":-3,"mieKlWarmup":400}'
 * ```
 *
 * Flags: `--model` (default sigma), `--data FILE` (default: the embedded synthetic set),
 * `--steps` (120), `--every` (10), `--seed` (42, batching and draws, as `train --seed`),
 * `--backend` (wasm), `--threads` (wasm threads), `--config JSON` (model config fields),
 * `--objective PART` (train on that one part of the loss, e.g. `recon_mie`, instead of the
 * whole loss; every part is still printed). Batches, seeds and Adam are the trainer's, so
 * without `--objective` the first steps match `deno task train`.
 *
 * @module
 */
import { Adam } from "../lib/train/adam.ts";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import { leaveOneOut, Rng, syntheticDataset, trainBatches } from "../lib/data/mod.ts";
import { readDataset } from "../lib/data/files.ts";
import { modelEntry, stepSeeds } from "../lib/models/mod.ts";
import { TRAIN_DEFAULTS, trainStep } from "../lib/train/trainer.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "sigma" },
    data: { type: "string" },
    steps: { type: "string", default: "120" },
    every: { type: "string", default: "10" },
    seed: { type: "string", default: String(TRAIN_DEFAULTS.seed) },
    backend: { type: "string", default: "wasm" },
    threads: { type: "string" },
    config: { type: "string", default: "{}" },
    objective: { type: "string" },
  },
  strict: true,
});

const steps = positiveInt("steps", values.steps);
const every = positiveInt("every", values.every);
const seed = Number(values.seed);
if (!Number.isInteger(seed)) {
  throw new RangeError(`--seed must be an integer, got "${values.seed}"`);
}
let overrides: Record<string, unknown>;
try {
  overrides = JSON.parse(values.config);
} catch (e) {
  throw new SyntaxError(`--config is not valid JSON: ${(e as Error).message}`);
}
if (typeof overrides !== "object" || overrides === null || Array.isArray(overrides)) {
  throw new TypeError(`--config must be a JSON object of config fields, got ${values.config}`);
}

const backend = await selectBackend(values.backend as BackendChoice, {
  wasmThreads: optionalPositiveInt("threads", values.threads),
});
const data = values.data ? await readDataset(values.data) : syntheticDataset({ seed: 42 });
const { split } = leaveOneOut(data);
const entry = modelEntry(values.model);
const model = entry.create({ seed, ...overrides, numItems: data.numItems });
console.log(
  `# ${model.name} on ${data.source}, ${backend.name}; config ${JSON.stringify(model.config)}`,
);

const optimizer = new Adam(TRAIN_DEFAULTS.learningRate, 0.9, 0.999, 1e-8);
const vars = model.params.list();
const rng = new Rng(seed);
const sums = new Map<string, number>();
let step = 0;
while (step < steps) {
  const batches = trainBatches(split.train, {
    batchSize: TRAIN_DEFAULTS.batchSize,
    maxLength: model.config.maxLength,
    rng,
  });
  for (const batch of batches) {
    const seeds = stepSeeds(seed, step);
    const { values: packed, partNames } = trainStep(
      model,
      batch,
      seeds,
      optimizer,
      vars,
      TRAIN_DEFAULTS.maxPositions,
      { step, objective: values.objective },
    );
    const v = await packed.data();
    packed.dispose();
    ["loss", ...partNames].forEach((name, i) => sums.set(name, (sums.get(name) ?? 0) + v[i]));
    step++;
    if (step % every === 0 || step === steps) {
      const n = step % every === 0 ? every : step % every;
      const text = [...sums].map(([name, s]) => `${name}=${(s / n).toFixed(3)}`).join(" ");
      console.log(`step ${step} ${text}`);
      sums.clear();
    }
    if (step >= steps) break;
  }
}
optimizer.dispose();
