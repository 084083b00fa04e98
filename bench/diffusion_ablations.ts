/**
 * Inference ablations of one trained DiffuRec or DiffuRecSys model, timed in one process:
 * the reverse chain strided to fewer steps, one-step sampling, and lambda = 0 (the
 * history without the diffused target), each ranked over the full catalogue. Every row
 * is the same parameters ranked another way; the speed column is a ratio against the
 * model's own chain, measured in the same run. The agreement columns compare each row's
 * top 20 with the first row's on the first evaluation batch: the share of users whose top
 * 20 is the same list in the same order, and the mean share of items the two lists hold in
 * common.
 *
 * ```sh
 * deno run -A bench/diffusion_ablations.ts --checkpoint runs/office-diffurec/checkpoint \
 *   --split valid --backend wasm --threads 2
 * ```
 *
 * Flags: `--checkpoint DIR` (a run's `checkpoint/`; its data is read as training read it),
 * `--split` (valid | test, default valid: choose a schedule on validation), `--steps`
 * (reverse steps to try, default 32,16,8,4,2,1; 32 is the full chain of a model with 32
 * diffusion steps, and the first entry is the baseline of the speed ratios), `--one`
 * (default true: add one-step sampling), `--lambda0` (default true: add lambda = 0),
 * `--users N` (rank only the first N users, for a quick look; default all),
 * `--eval-batch-size` (256), `--eval-seed` (the model's), `--protocol` (library |
 * diffurec), `--backend` (wasm), `--threads`, `--blas` (auto), `--json FILE` (also write
 * the rows as JSON).
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import { booleanFlag, intFlag } from "../cli/_flags.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import * as tf from "@tensorflow/tfjs-core";
import { evalBatches, leaveOneOut } from "../lib/data/mod.ts";
import { readCheckpoint, writeFileAtomic } from "../lib/train/checkpoint.ts";
import { alignToVocabulary, type DataSpec, loadData } from "../cli/_data.ts";
import { modelFromCheckpoint } from "../cli/_model.ts";
import { EVAL_PROTOCOLS, type EvalProtocol, evaluateModel } from "../lib/eval/evaluate.ts";
import { modelEntry } from "../lib/models/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    checkpoint: { type: "string" },
    split: { type: "string", default: "valid" },
    steps: { type: "string", default: "32,16,8,4,2,1" },
    one: { type: "string", default: "true" },
    lambda0: { type: "string", default: "true" },
    users: { type: "string" },
    "eval-batch-size": { type: "string", default: "256" },
    "eval-seed": { type: "string" },
    protocol: { type: "string", default: "library" },
    backend: { type: "string", default: "wasm" },
    threads: { type: "string" },
    blas: { type: "string", default: "auto" },
    json: { type: "string" },
  },
  strict: true,
});

if (!values.checkpoint) throw new TypeError("needs --checkpoint DIR (a run's checkpoint/)");
if (values.split !== "valid" && values.split !== "test") {
  throw new RangeError(`--split must be valid or test, got "${values.split}"`);
}
const protocol = values.protocol as EvalProtocol;
if (!EVAL_PROTOCOLS.includes(protocol)) {
  throw new RangeError(
    `--protocol must be one of ${EVAL_PROTOCOLS.join(", ")}, got "${protocol}"`,
  );
}
const steps = values.steps.split(",").map((s) => positiveInt("steps", s.trim()));
const users = optionalPositiveInt("users", values.users);
const batchSize = positiveInt("eval-batch-size", values["eval-batch-size"]);
const seedText = values["eval-seed"];
const evalSeed = seedText === undefined ? undefined : intFlag("eval-seed", seedText, 0, 0);

const backend = await selectBackend(values.backend as BackendChoice, {
  wasmThreads: optionalPositiveInt("threads", values.threads),
  blas: values.blas,
});
const { meta, values: weights, path } = await readCheckpoint(values.checkpoint);
const inference = modelEntry(meta.model).inferenceFields ?? [];
if (!inference.includes("reverseSteps")) {
  throw new RangeError(
    `${path}: model ${meta.model} has no reverse chain; this bench is for diffurec and diffurecsys`,
  );
}
const config = meta.config as { steps: number; lambda: number; maxLength: number };
for (const s of steps) {
  if (s > config.steps) {
    throw new RangeError(
      `--steps: ${s} is more than the model's ${config.steps} diffusion steps`,
    );
  }
}
const spec = meta.data as DataSpec;
const source = spec.kind === "file" ? spec.path : "the embedded synthetic data set";
const dataset = alignToVocabulary(await loadData(spec), meta.itemTokens, source);
const { split } = leaveOneOut(dataset);
const all = values.split === "test" ? split.test : split.valid;
const examples = users === undefined ? all : all.slice(0, users);

/** One way of ranking: a name and the config fields it overrides. */
interface Variant {
  name: string;
  overrides: Record<string, unknown>;
}
const variants: Variant[] = steps.map((s) => ({
  name: s === config.steps ? `chain ${s} steps (trained)` : `chain strided to ${s}`,
  overrides: { sampling: "chain", reverseSteps: s === config.steps ? 0 : s },
}));
if (booleanFlag("one", values.one)) {
  variants.push({ name: "one step from x_T", overrides: { sampling: "one", reverseSteps: 0 } });
}
if (booleanFlag("lambda0", values.lambda0) && config.lambda !== 0) {
  variants.push({
    name: "lambda 0, chain",
    overrides: { lambda: 0, sampling: "chain", reverseSteps: 0 },
  });
}

console.error(
  `backend: ${backend.name}; ${path} (${meta.model}, epoch ${meta.epoch}); ` +
    `${examples.length} ${values.split} users of ${source}; protocol ${protocol}`,
);
const ks = protocol === "diffurec" ? [5, 10, 20] : [10, 20, 40];
const rows: Record<string, unknown>[] = [];
let baseline = 0;
// The first batch's top 20 of every variant, to compare with the first variant's.
const probe = evalBatches(examples, { batchSize, maxLength: config.maxLength })[0];
let baselineTop: Int32Array | null = null;
const TOP = 20;

/** Top `TOP` item ids of every row of the probe batch, `[rows * TOP]`. */
function topOfProbe(model: { scores(b: typeof probe): tf.Tensor2D }): Int32Array {
  const top = tf.tidy(() => tf.topk(model.scores(probe), TOP).indices);
  const ids = top.dataSync() as Int32Array;
  top.dispose();
  return ids;
}

/** Share of rows with the same list, and mean share of items held in common. */
function agreement(a: Int32Array, b: Int32Array): { same: number; overlap: number } {
  let same = 0;
  let overlap = 0;
  const rows = a.length / TOP;
  for (let r = 0; r < rows; r++) {
    const x = a.subarray(r * TOP, (r + 1) * TOP);
    const y = new Set(b.subarray(r * TOP, (r + 1) * TOP));
    if (x.every((id, i) => id === b[r * TOP + i])) same++;
    overlap += x.filter((id) => y.has(id)).length / TOP;
  }
  return { same: same / rows, overlap: overlap / rows };
}
for (const variant of variants) {
  const overrides = evalSeed === undefined ? variant.overrides : {
    ...variant.overrides,
    evalSeed,
  };
  const model = modelFromCheckpoint(meta, weights, path, overrides);
  let metrics: Record<string, number>;
  let seconds: number;
  let top: Int32Array;
  try {
    const started = performance.now();
    metrics = await evaluateModel(
      model,
      examples,
      dataset.numItems,
      batchSize,
      config.maxLength,
      undefined,
      protocol,
    );
    seconds = (performance.now() - started) / 1000;
    top = topOfProbe(model);
  } finally {
    model.params.dispose();
  }
  const usersPerSecond = examples.length / seconds;
  if (rows.length === 0) {
    baseline = usersPerSecond;
    baselineTop = top;
  }
  const agree = agreement(top, baselineTop!);
  const row = { variant: variant.name, overrides, seconds, usersPerSecond, metrics, agree };
  rows.push(row);
  console.error(`${variant.name}: ${seconds.toFixed(1)} s`);
}

const head = [
  "variant",
  ...ks.flatMap((k) => [`R@${k}`, `N@${k}`]),
  "users/s",
  "speed",
  "same top 20",
  "top-20 overlap",
];
console.log(`| ${head.join(" | ")} |`);
console.log(`| ${head.map(() => "---").join(" | ")} |`);
for (const row of rows) {
  const m = row.metrics as Record<string, number>;
  const rate = row.usersPerSecond as number;
  const cells = [
    row.variant as string,
    ...ks.flatMap((k) => [m[`recall@${k}`].toFixed(4), m[`ndcg@${k}`].toFixed(4)]),
    rate.toFixed(1),
    `${(rate / baseline).toFixed(2)}x`,
    (row.agree as { same: number }).same.toFixed(3),
    (row.agree as { overlap: number }).overlap.toFixed(3),
  ];
  console.log(`| ${cells.join(" | ")} |`);
}
if (values.json) {
  const text = JSON.stringify({ checkpoint: path, epoch: meta.epoch, split: values.split, rows });
  await writeFileAtomic(values.json, new TextEncoder().encode(text + "\n"));
}
