/**
 * The command line: `train`, `eval`, `recommend` and `serve`.
 *
 * ```sh
 * deno task train --model sasrec --data ../shared/data/Office_Products.txt --out runs/office
 * deno task eval --checkpoint runs/office/checkpoint
 * deno task recommend --model runs/office --history "B00004Z5D1 B00006IEI3"
 * deno task serve --model runs/office
 * ```
 *
 * @module
 */
import { parseArgs } from "./_args.ts";
import { evalBatches, leaveOneOut } from "../lib/data/mod.ts";
import {
  checkDiversityWeight,
  type DiversityMethod,
  evaluateDiversified,
} from "../lib/eval/diversify.ts";
import type { LeaveOneOutSplit, SequenceDataset } from "../lib/data/types.ts";
import { type ModelEntry, modelEntry, modelPreset, MODELS } from "../lib/models/mod.ts";
import { readCheckpoint, writeFileAtomic } from "../lib/train/checkpoint.ts";
import { openRunFolder } from "../lib/train/run_folder.ts";
import { shownPath } from "../lib/_io.ts";
import { EVAL_PROTOCOLS, type EvalProtocol } from "../lib/eval/evaluate.ts";
import {
  checkSeed,
  checkTrainOptions,
  checkValidSampling,
  evaluateModel,
  train,
  TRAIN_DEFAULTS,
  type TrainOptions,
  type TrainResult,
} from "../lib/train/trainer.ts";
import { alignToVocabulary, type DataSpec, loadData, withoutStrayMinRating } from "./_data.ts";
import {
  BACKEND_OPTIONS,
  booleanFlag,
  diversityFlags,
  flagsGiven,
  INFERENCE_OPTIONS,
  inferenceFlags,
  intFlag,
  kebab,
  numberFlag,
  progressWriter,
  startBackend,
  withFlagNames,
} from "./_flags.ts";
import type { ChosenBackend } from "../backends/mod.ts";
import { loadRecommender, modelFromCheckpoint } from "./_model.ts";
import { ITEM_DTYPES, type ItemDtype } from "../lib/inference/model_file.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { RECOMMEND_OPTIONS, RECOMMEND_USAGE, recommendCommand } from "./recommend.ts";
import { SERVE_OPTIONS, SERVE_USAGE, serveCommand } from "./serve.ts";

/** Defaults of a run on the embedded synthetic data set, a demonstration. */
const SYNTHETIC_EPOCHS = 20;
const SYNTHETIC_PATIENCE = 5;
/**
 * The demonstration of SIGMA and SASRec: 10 epochs of a smaller model (its longest history
 * the data set's, 30) at a larger step. Chosen on validation Recall@20 (docs/performance.md,
 * "The first run"): SIGMA 0.7817 against 0.7617 for 20 epochs of the paper's sizes, in a
 * quarter of the time; SASRec level (0.7850 both).
 */
const DEMO_EPOCHS = 10;
const DEMO_LEARNING_RATE = 1e-2;
/** The epochs `train` runs on the embedded data set for `model` when `--epochs` is not given. */
export function demonstrationEpochs(model: string): number {
  return Object.hasOwn(DEMO_CONFIG, model) ? DEMO_EPOCHS : SYNTHETIC_EPOCHS;
}

const DEMO_CONFIG: Record<string, Record<string, number>> = {
  sigma: { hidden: 64, inner: 128, maxLength: 30 },
  sasrec: { hidden: 64, inner: 128, maxLength: 30 },
};

/**
 * The demonstration's SIGMA is the paper's mode, not the default preset: on the embedded
 * data, at the demonstration's sizes and 10 epochs, it reached validation Recall@20 0.7817
 * where `authors-bounded` reached 0.7283 (lr 1e-2; 0.7033 at 5e-3, 0.6933 at 2e-2), whose
 * schedules (MIE's weight falling over 200 epochs, the GRU from epoch 32) are made for real
 * data (docs/performance.md, "The first run"). `--preset` given wins.
 */
const DEMO_PRESET: Record<string, string> = { sigma: "paper" };

/** Training flags: name -> [TrainOptions field, help]. */
const TRAIN_FLAGS: Record<string, [keyof typeof TRAIN_DEFAULTS, string]> = {
  "epochs": ["epochs", "most epochs to run"],
  "patience": [
    "patience",
    "stop after this many epochs without better valid recall@20 (paper 100)",
  ],
  "batch-size": ["batchSize", "sequences per training batch (paper 256)"],
  "eval-batch-size": [
    "evalBatchSize",
    "histories per evaluation batch (results do not depend on it)",
  ],
  "lr": ["learningRate", "Adam learning rate (paper 1e-3)"],
  "seed": ["seed", "seed of initialisation, batching and every random draw"],
  "eval-every": ["evalEvery", "validate every this many epochs"],
  "max-positions": [
    "maxPositions",
    "most target positions per forward/backward pass; larger batches are split (memory)",
  ],
  "weight-decay": ["weightDecay", "L2 penalty added to gradients before Adam (DiffuRecSys 1e-4)"],
  "lr-decay-every": [
    "lrDecayEvery",
    "multiply --lr by --lr-decay every this many epochs; 0 = never (DiffuRec 100)",
  ],
  "lr-decay": ["lrDecay", "factor of --lr-decay-every (StepLR gamma)"],
};

function usage(): string {
  const lines = [
    "Usage:",
    "  deno task train [--model M] [--data FILE] [--out DIR] [--seed N] [--backend B] [options]",
    "  deno task eval (--checkpoint DIR | --model FILE|RUN_DIR|URL) [--data FILE [--format F] [--k-core K] [--min-rating R]]",
    "                 [--backend B] [--threads N] [--blas L] [--eval-batch-size N]",
    "                 [--split test|valid] [--protocol library|diffurec]",
    "                 [--reverse-steps N] [--sampling chain|one] [--eval-seed N] [--lambda X]",
    "                 [--categories FILE [--drop-category C ...]]",
    "                 [--diversity W,W,... [--diversity-method auto|mmr|interests] [--diversity-pool N]]",
    "                 (--data is read as training read its data; --protocol diffurec: history",
    "                 not excluded, K = 5, 10, 20, as DiffuRec's code ranks; the next four:",
    "                 ablations of a diffurec/diffurecsys model's ranking; --diversity: the",
    "                 metrics of lists re-ranked for variety at each weight, 0 the model's own,",
    "                 from one scoring pass: MMR on item vectors, or interests (SIGMA))",
    "  deno task export --data FILE [--format F] [--k-core K] [--min-rating R] --out FILE",
    "                 (the data as training reads it, as sequence lines: what the PyTorch",
    "                 twins in interop/torch read)",
    "  deno task export --model FILE|RUN_DIR|URL --item-dtype f32|f16|i8 --out FILE",
    "                 (the model file again, its item table in float16 or int8 with a scale",
    "                 a row: a half or a quarter of the bytes; every loader reads it)",
    ...RECOMMEND_USAGE,
    ...SERVE_USAGE,
    "",
    "Data:",
    "  --data FILE         sequence lines (.txt), RecBole (.inter) or MovieLens ratings (.dat);",
    `                      default: the embedded synthetic data set, a demonstration (SIGMA and`,
    `                      SASRec: ${DEMO_EPOCHS} epochs, --lr ${DEMO_LEARNING_RATE}, --hidden 64, --inner 128,`,
    `                      --max-length 30; others ${SYNTHETIC_EPOCHS} epochs; patience ${SYNTHETIC_PATIENCE}; flags win)`,
    "  --format F          lines | recbole | movielens (default: from the extension)",
    "  --categories FILE   item categories (JSON item -> [category] or lines), for diversity",
    "  --drop-category C   leave category C of --categories out (repeatable; e.g. a root on every item)",
    "  --k-core K          apply K-core filtering first (default 0: none)",
    "  --min-rating R      MovieLens: keep ratings >= R (default 4)",
    "Run:",
    `  --model M           ${Object.keys(MODELS).join(" | ")} (default ${Object.keys(MODELS)[0]})`,
    "  --out DIR           write DIR/metrics.json, log.jsonl, checkpoint/, state/ (default runs/<model>)",
    "  --backend B         auto | webgpu | wasm | cpu (default auto)",
    "  --threads N         threads of the wasm backend (default: the logical CPUs)",
    "  --blas L            wasm backend: auto | off | a library path. auto runs large matrix",
    "                      products on OpenBLAS/Accelerate when one loads (needs --allow-ffi,",
    "                      which the deno tasks grant), else on wasm (default auto)",
    "  --no-bucket         pad every batch to its longest row without grouping similar lengths",
    "  --preset NAME       a model's named bundle of config values (listed under the model,",
    "                      its default marked); flags given beside it win",
    "  --resume            continue the run in --out from its last finished epoch (DIR/state/,",
    "                      written after every epoch); same model, data and settings, except",
    "                      --epochs, --patience, --eval-batch-size and --valid-sampling",
    "  --overwrite         replace the run --out holds (without it, or --resume, a folder that",
    "                      holds a run is refused; one run at a time may write to a folder)",
    "Training:",
  ];
  for (const [flag, [field, help]] of Object.entries(TRAIN_FLAGS)) {
    lines.push(`  --${flagColumn(flag)}${help} (default ${TRAIN_DEFAULTS[field]})`);
  }
  lines.push(
    `  --${flagColumn("examples")}sequences | prefixes: a row per user sequence, or per target ` +
      `position (default ${TRAIN_DEFAULTS.examples})`,
    `  --${flagColumn("valid-sampling")}model | one: validation (choosing the best epoch) ranks ` +
      `as the model does,`,
    `  ${" ".repeat(20)}or (diffurec, diffurecsys) with one Approximator call instead of the ` +
      `reverse chain;`,
    `  ${" ".repeat(20)}test metrics keep the model's ranking; may change on --resume ` +
      `(default ${TRAIN_DEFAULTS.validSampling})`,
  );
  lines.push(...RECOMMEND_OPTIONS, ...SERVE_OPTIONS);
  for (const [name, entry] of Object.entries(MODELS)) {
    lines.push(`Model ${name}:`);
    for (const [preset, values] of Object.entries(entry.presets ?? {})) {
      const fields = Object.entries(values).map(([f, x]) => `--${kebab(f)} ${x}`);
      if (fields.length === 0) fields.push("the defaults below, as they are");
      const mark = preset === entry.defaultPreset ? " (default)" : "";
      let line = `  --preset ${preset}${mark}:`;
      for (const field of fields) {
        if (line.length + field.length > 96) {
          lines.push(line + ",");
          line = "     ";
        } else if (!line.endsWith(":")) line += ",";
        line += ` ${field}`;
      }
      lines.push(line);
    }
    if (entry.trainDefaults) {
      const own = Object.entries(entry.trainDefaults).map(([f, x]) => `--${kebab(f)} ${x}`);
      lines.push(`  (training defaults of its code: ${own.join(", ")})`);
    }
    for (const [field, help] of Object.entries(entry.help)) {
      if (field === "seed") continue;
      lines.push(`  --${flagColumn(kebab(field))}${help} (default ${entry.defaults[field]})`);
    }
  }
  return lines.join("\n");
}

/** A flag name padded to the help column, with at least one space after a long name. */
function flagColumn(flag: string): string {
  return flag.length < 18 ? flag.padEnd(18) : `${flag} `;
}

function allModelFlags(): string[] {
  const flags = new Set<string>();
  for (const entry of Object.values(MODELS)) {
    for (const field of Object.keys(entry.defaults)) if (field !== "seed") flags.add(kebab(field));
  }
  return [...flags];
}

/** The flags of `train`, parsed; `help` set when asked for. */
type TrainFlags = Record<string, string | boolean | undefined>;

function parseTrainFlags(args: string[]): TrainFlags {
  const stringFlags = [
    "model",
    "data",
    "format",
    "categories",
    "k-core",
    "min-rating",
    "out",
    "backend",
    "threads",
    "blas",
    ...Object.keys(TRAIN_FLAGS),
    ...allModelFlags(),
  ];
  const { values } = parseArgs({
    args,
    options: {
      ...Object.fromEntries(stringFlags.map((f) => [f, { type: "string" as const }])),
      "no-bucket": { type: "boolean" },
      "drop-category": { type: "string", multiple: true },
      examples: { type: "string" },
      "valid-sampling": { type: "string" },
      preset: { type: "string" },
      resume: { type: "boolean" },
      overwrite: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  return values as TrainFlags;
}

/** The trainer's options: the model's own training defaults, then the flags, checked. */
function trainOptionsFrom(
  v: TrainFlags,
  modelName: string,
  entry: ModelEntry,
): Record<string, number | boolean | string> {
  const options: Record<string, number | boolean | string> = { ...entry.trainDefaults };
  for (const [flag, [field]] of Object.entries(TRAIN_FLAGS)) {
    if (typeof v[flag] === "string") options[field] = numberFlag(flag, v[flag] as string);
  }
  if (v["no-bucket"]) options.bucket = false;
  if (typeof v.examples === "string") options.examples = v.examples;
  if (typeof v["valid-sampling"] === "string") options.validSampling = v["valid-sampling"];
  if (options.seed !== undefined) checkSeed("--seed", options.seed as number);
  withFlagNames(
    () => {
      const o = checkTrainOptions(options);
      checkValidSampling(modelName, o.validSampling);
    },
    Object.fromEntries([
      ...Object.entries(TRAIN_FLAGS).map(([flag, [field]]) => [field, flag]),
      ["examples", "examples"],
      ["validSampling", "valid-sampling"],
    ]),
  );
  return options;
}

/**
 * The preset a run's config starts from: `--preset`; else, resuming, the one the run
 * recorded (none for a run from before presets were recorded: it resumes as it was
 * trained); else the demonstration's ({@linkcode DEMO_PRESET}, when `demo` names the
 * model of a run on the embedded data); else the model's default preset (SIGMA's
 * `authors-bounded`).
 */
async function presetOf(
  v: TrainFlags,
  entry: ModelEntry,
  out: string,
  demo?: string,
): Promise<string | undefined> {
  if (typeof v.preset === "string") return v.preset;
  if (v.resume === true) {
    // `state.prev/` is where the state is while a crash interrupted its swap (as
    // readCheckpoint reads it).
    for (const dir of [`${out}/state`, `${out}/state.prev`]) {
      try {
        const meta = JSON.parse(await Deno.readTextFile(`${dir}/model.json`));
        return typeof meta.preset === "string" ? meta.preset : undefined;
      } catch {
        // Not here: the next place, or the resume check names what is missing.
      }
    }
  }
  if (demo !== undefined && Object.hasOwn(DEMO_PRESET, demo)) return DEMO_PRESET[demo];
  return entry.defaultPreset;
}

/** The model's config: the preset, then the model's flags; checked, naming the flag. */
function modelConfigFrom(
  v: TrainFlags,
  modelName: string,
  entry: ModelEntry,
  seed: number,
  preset: string | undefined,
): Record<string, unknown> {
  const config: Record<string, unknown> = { ...modelPreset(modelName, preset), seed };
  for (const field of Object.keys(entry.defaults)) {
    const flag = kebab(field);
    if (field === "seed" || typeof v[flag] !== "string") continue;
    const def = entry.defaults[field];
    config[field] = typeof def === "number"
      ? numberFlag(flag, v[flag] as string)
      : typeof def === "boolean"
      ? booleanFlag(flag, v[flag] as string)
      : v[flag];
  }
  for (const flag of allModelFlags()) {
    if (
      typeof v[flag] === "string" &&
      !(flag.replace(/-([a-z])/g, (_, c) => c.toUpperCase()) in entry.defaults)
    ) {
      throw new RangeError(`--${flag} is not an option of model ${modelName}`);
    }
  }
  withFlagNames(
    () => entry.validate({ ...config, numItems: 1 }),
    Object.fromEntries(Object.keys(entry.defaults).map((field) => [field, kebab(field)])),
  );
  return config;
}

/** What to train on: `--data` with its reading flags, or the embedded synthetic set. */
function trainDataSpec(v: TrainFlags): DataSpec {
  const readFlags = ["format", "categories", "drop-category", "k-core", "min-rating"].filter((
    f,
  ) => v[f] !== undefined);
  if (typeof v.data !== "string" && readFlags.length > 0) {
    // Ignoring them would train on the embedded data set as if they had been applied.
    throw new TypeError(`--${readFlags[0]} goes with --data FILE (the embedded data set is fixed)`);
  }
  return typeof v.data === "string" ? fileDataSpec(v.data, v) : { kind: "synthetic", seed: 42 };
}

/**
 * The embedded data set is a demonstration: a short run unless the flags say otherwise (a
 * model's own epoch cap is for real data).
 */
function demonstrationRun(
  v: TrainFlags,
  options: Record<string, number | boolean | string>,
  modelName: string,
  config: Record<string, unknown>,
  preset: string | undefined,
): Record<string, number | boolean | string> {
  const sized = Object.hasOwn(DEMO_CONFIG, modelName);
  const short = {
    ...options,
    ...(typeof v.epochs !== "string" ? { epochs: sized ? DEMO_EPOCHS : SYNTHETIC_EPOCHS } : {}),
    ...(typeof v.patience !== "string" ? { patience: SYNTHETIC_PATIENCE } : {}),
    ...(sized && typeof v.lr !== "string" ? { learningRate: DEMO_LEARNING_RATE } : {}),
  };
  // A field the flags or a preset set is theirs; the rest take the demonstration's size.
  const sizes = Object.entries(DEMO_CONFIG[modelName] ?? {}).filter(([f]) => !(f in config));
  for (const [field, value] of sizes) config[field] = value;
  const changed = [
    ...(typeof v.preset !== "string" && Object.hasOwn(DEMO_PRESET, modelName)
      ? [`--preset ${preset}`]
      : []),
    ...(short.learningRate !== options.learningRate ? [`--lr ${short.learningRate}`] : []),
    ...sizes.map(([field, value]) => `--${kebab(field)} ${value}`),
  ];
  console.error(
    `data: the embedded synthetic set, a demonstration: ${short.epochs} epochs, patience ` +
      `${short.patience}${changed.length > 0 ? `, ${changed.join(", ")}` : ""} ` +
      `(flags given win)`,
  );
  return short;
}

/**
 * Most parameters `train` builds a model of: 2^28 float32 values (1 GiB), which with Adam's
 * two moments and the gradients fills most of wasm's 4 GiB heap.
 */
const MAX_TRAINED_PARAMETERS = 2 ** 28;

/**
 * Refuses a model whose sizes (`--hidden 1000000`, `--max-length 1e9`) would not fit, by
 * planning it (no allocation) instead of failing with "Array buffer allocation failed".
 */
function checkModelSize(build: () => unknown): void {
  try {
    ParamStore.plan(build, { tensors: 1e6, values: MAX_TRAINED_PARAMETERS });
  } catch (e) {
    if (!(e instanceof RangeError) || !e.message.includes("larger than")) throw e;
    const at = e.message.slice(e.message.indexOf("(at "));
    throw new RangeError(
      `the model would hold more than ${MAX_TRAINED_PARAMETERS} parameters ${at}: lower ` +
        `--hidden, --inner, --max-length or --layers`,
    );
  }
}

/** Reads the data and splits it, saying what it holds; refuses data nothing can train on. */
async function loadTrainData(spec: DataSpec) {
  const dataset = await loadData(spec);
  const { split, skipped } = leaveOneOut(dataset);
  const positions = split.train.reduce((n, s) => n + Math.max(0, s.length - 1), 0);
  console.error(
    `data: ${dataset.source}: ${dataset.sequences.length} users, ${dataset.numItems} items; ` +
      `${split.test.length} evaluated, ${skipped} skipped (fewer than 3 items), ` +
      `${positions} training positions`,
  );
  for (const note of dataset.report.notes) console.error(`data: ${note}`);
  if (dataset.categories && spec.kind === "file") {
    const covered = dataset.categories.filter((c) => c.length > 0).length;
    console.error(
      `data: ${spec.categories}: ${dataset.numCategories} categories; ` +
        `${covered} of ${dataset.numItems} items have one`,
    );
  }
  if (positions === 0) {
    throw new RangeError(
      `${dataset.source}: no training positions: no user has the 4 interactions training ` +
        `needs (2 to train on, then one each to validate and test)`,
    );
  }
  return { dataset, split };
}

/**
 * Scores the best epoch's model (which `train` left loaded) on the test split and writes
 * `out/metrics.json` with the protocol it was measured under.
 */
async function testBestEpoch(
  out: string,
  model: ReturnType<ModelEntry["create"]>,
  split: LeaveOneOutSplit,
  dataset: SequenceDataset,
  o: TrainOptions,
  result: TrainResult,
  backend: ChosenBackend,
): Promise<void> {
  console.error(`testing the best epoch (${result.bestEpoch}) on ${split.test.length} users...`);
  const test = await evaluateModel(
    model,
    split.test,
    dataset.numItems,
    o.evalBatchSize,
    model.config.maxLength,
    dataset.categories,
  );
  const metrics = {
    model: model.name,
    data: dataset.source,
    backend: backend.name,
    backend_detail: backend.reason,
    seed: o.seed,
    protocol: {
      split: "leave-one-out: train s[:-2], valid s[-2], test s[-1]",
      ranking: "full catalogue; history and padding excluded; ties pessimistic",
      maxLength: model.config.maxLength,
      users: split.test.length,
      items: dataset.numItems,
      selection: "best valid recall@20" + (
        result.history.find((r) => r.epoch === result.bestEpoch)?.validSampling === "one"
          ? " (valid ranked with one Approximator call: --valid-sampling one)"
          : ""
      ),
      patience: o.patience,
      stopped: result.stopped,
    },
    config: model.config,
    train: o,
    best_epoch: result.bestEpoch,
    seconds: Math.round(result.seconds * 10) / 10,
    valid: result.valid,
    test,
  };
  await writeFileAtomic(
    `${out}/metrics.json`,
    new TextEncoder().encode(JSON.stringify(metrics, null, 2) + "\n"),
  );
  console.log(JSON.stringify({ best_epoch: result.bestEpoch, test }, null, 1));
  console.error(
    `wrote ${out}/metrics.json, ${out}/model.safetensors, ${out}/log.jsonl, ${out}/checkpoint/, ${out}/state/`,
  );
}

/** `train`: checks every flag, locks the run folder, trains, tests the best epoch. */
async function trainCommand(args: string[]): Promise<void> {
  const v = parseTrainFlags(args);
  if (v.help) {
    console.log(usage());
    return;
  }
  const modelName = (v.model as string | undefined) ?? Object.keys(MODELS)[0];
  const entry = modelEntry(modelName);
  let options = trainOptionsFrom(v, modelName, entry);
  const out = (v.out as string | undefined) ?? `runs/${modelName}`;
  const spec = trainDataSpec(v);
  const preset = await presetOf(v, entry, out, spec.kind === "synthetic" ? modelName : undefined);
  const config = modelConfigFrom(
    v,
    modelName,
    entry,
    (options.seed as number | undefined) ?? TRAIN_DEFAULTS.seed,
    preset,
  );
  if (spec.kind === "synthetic") options = demonstrationRun(v, options, modelName, config, preset);
  if (v.resume === true && v.overwrite === true) {
    throw new TypeError(
      `--resume and --overwrite contradict each other: --resume continues the run in ${out}, ` +
        "--overwrite replaces it",
    );
  }
  // Locked and checked before anything slow: a second run into the same folder, or one that
  // would replace a run without --overwrite, stops here, and nothing of the old run is
  // touched until the new one has passed every check.
  const lock = await openRunFolder(out, {
    resume: v.resume === true,
    overwrite: v.overwrite === true,
  });
  try {
    const backend = await startBackend(
      v as Record<string, string | undefined>,
      undefined,
      "training",
    );
    const { dataset, split } = await loadTrainData(spec);
    checkModelSize(() => entry.create({ ...config, numItems: dataset.numItems }));
    const model = entry.create({ ...config, numItems: dataset.numItems });
    console.error(
      `model: ${model.name}, ${model.params.size().toLocaleString("en")} parameters, config ${
        JSON.stringify(model.config)
      }`,
    );
    const result = await train(model, split, dataset.numItems, options, {
      out,
      checkpointInfo: {
        data: spec as Record<string, unknown>,
        itemTokens: dataset.vocab.items,
        ...(preset !== undefined ? { preset } : {}),
      },
      progress: progressWriter(),
      resume: v.resume === true,
      overwrite: v.overwrite === true,
      lock,
    });
    await testBestEpoch(
      out,
      model,
      split,
      dataset,
      { ...TRAIN_DEFAULTS, ...options },
      result,
      backend,
    );
  } finally {
    lock.release();
  }
}

/**
 * The data `eval` reads: the run's own (as training read it), or `--data` read with the
 * run's read options (format, k-core, minimum rating, categories) unless the flags given
 * override them. Says which on stderr.
 */
function evalDataSpec(
  trained: DataSpec | undefined,
  flags: { data?: string; format?: string; "k-core"?: string; "min-rating"?: string },
  checkpoint: string,
): DataSpec {
  const overrides = {
    ...(flags.format !== undefined ? { format: flags.format as "lines" } : {}),
    ...(flags["k-core"] !== undefined ? { kCore: intFlag("k-core", flags["k-core"], 0, 0) } : {}),
    ...(flags["min-rating"] !== undefined
      ? { minRating: numberFlag("min-rating", flags["min-rating"]) }
      : {}),
  };
  if (flags.data === undefined) {
    if (Object.keys(overrides).length > 0) {
      throw new TypeError("--format, --k-core and --min-rating go with --data");
    }
    if (trained === undefined) {
      // A checkpoint folder keeps it in model.json, a model file in its info.
      const where = checkpoint.endsWith(".safetensors")
        ? `${checkpoint}: its info`
        : `${checkpoint}/model.json: field "data"`;
      throw new TypeError(
        `${where} does not say what the model was trained on; give --data FILE`,
      );
    }
    return trained;
  }
  const { kind: _kind, path: _path, ...options } = trained?.kind === "file"
    ? trained
    : { kind: "file", path: "" };
  const spec = {
    ...withoutStrayMinRating({ kind: "file" as const, path: flags.data, ...options }),
    ...overrides,
  };
  const { kind: _k, path: _p, ...read } = spec;
  const shown = Object.entries(read).filter(([, value]) => value !== undefined)
    .map(([field, value]) => `--${kebab(field)} ${value}`);
  console.error(
    `data: ${flags.data}, read as the run read its data` +
      (shown.length > 0 ? ` (${shown.join(" ")})` : ""),
  );
  return spec;
}

/**
 * `spec` with `eval`'s category flags applied: `--categories FILE` (with or without
 * `--data`) replaces the run's categories and what it dropped; `--drop-category C` drops C
 * too, beside what the run dropped when its categories are kept.
 */
function withCategoryFlags(spec: DataSpec, v: Record<string, unknown>): DataSpec {
  const drop = v["drop-category"] as string[] | undefined;
  if (v.categories === undefined && (drop === undefined || drop.length === 0)) return spec;
  if (spec.kind !== "file") {
    throw new TypeError(
      "--categories and --drop-category need a data file (the embedded data set's are fixed)",
    );
  }
  const categories = typeof v.categories === "string" ? v.categories : spec.categories;
  const { dropCategories: stored, ...rest } = spec;
  const given = dropCategoryFlags({ ...v, categories }) ?? [];
  const kept = v.categories === undefined ? stored ?? [] : [];
  const dropCategories = [...new Set([...kept, ...given])];
  return { ...rest, categories, ...(dropCategories.length > 0 ? { dropCategories } : {}) };
}

/**
 * The data a checkpoint says it was trained on. A run trained through the library without
 * `checkpointInfo` stores none (`{}`); `eval` then needs `--data`.
 */
function storedDataSpec(data: unknown): DataSpec | undefined {
  const d = data as Partial<Record<string, unknown>> | null;
  const known = d !== null && typeof d === "object" &&
    ((d.kind === "file" && typeof d.path === "string") ||
      (d.kind === "synthetic" && typeof d.seed === "number"));
  return known ? withoutStrayMinRating(data as DataSpec) : undefined;
}

/** A trained model to evaluate, its vocabulary, the data it says it was trained on, and where. */
interface TrainedForEval {
  model: ReturnType<typeof modelFromCheckpoint>;
  itemTokens: string[];
  data: unknown;
  path: string;
  epoch: unknown;
}

/** `eval --checkpoint DIR`: a run's checkpoint (`model.json` and weights). */
async function trainedFromCheckpoint(
  dir: string,
  overrides: Record<string, number | string>,
): Promise<TrainedForEval> {
  const { meta, values, path } = await readCheckpoint(dir);
  const model = withFlagNames(
    () => modelFromCheckpoint(meta, values, path, overrides),
    flagsGiven(overrides),
  );
  return { model, itemTokens: meta.itemTokens, data: meta.data, path, epoch: meta.epoch };
}

/**
 * `eval --model M`: a model file, a run folder holding one, or a URL, as `recommend` reads
 * them; a file written elsewhere (the PyTorch twin) says nothing of its data: `--data`.
 */
async function trainedFromModelFile(
  source: string,
  overrides: Record<string, number | string>,
): Promise<TrainedForEval> {
  const { recommender, from } = await withFlagNames(
    () => loadRecommender(source, { inference: overrides }),
    flagsGiven(overrides),
  );
  return {
    model: recommender.model as TrainedForEval["model"],
    itemTokens: [...recommender.items],
    data: recommender.info.data,
    path: from,
    epoch: recommender.info.epoch ?? null,
  };
}

async function evalCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      checkpoint: { type: "string" },
      model: { type: "string" },
      data: { type: "string" },
      format: { type: "string" },
      "k-core": { type: "string" },
      "min-rating": { type: "string" },
      ...BACKEND_OPTIONS,
      split: { type: "string" },
      protocol: { type: "string" },
      ...INFERENCE_OPTIONS,
      "eval-batch-size": { type: "string" },
      categories: { type: "string" },
      "drop-category": { type: "string", multiple: true },
      diversity: { type: "string" },
      "diversity-method": { type: "string" },
      "diversity-pool": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    return;
  }
  const diversity = diversityWeights(values);
  if ((values.checkpoint === undefined) === (values.model === undefined)) {
    throw new TypeError(
      "eval needs one of --checkpoint DIR (a run's checkpoint) and --model FILE|RUN_DIR|URL " +
        "(a model file, e.g. one the PyTorch twin wrote)",
    );
  }
  const protocol = (values.protocol ?? "library") as EvalProtocol;
  if (!EVAL_PROTOCOLS.includes(protocol)) {
    throw new RangeError(
      `--protocol must be one of ${EVAL_PROTOCOLS.join(", ")}, got "${values.protocol}"`,
    );
  }
  const which = values.split ?? "test";
  if (which !== "test" && which !== "valid") {
    throw new RangeError(`--split must be "test" or "valid", got "${which}"`);
  }
  await startBackend(values);
  const overrides = inferenceFlags(values);
  const trained = values.model !== undefined
    ? await trainedFromModelFile(values.model, overrides)
    : await trainedFromCheckpoint(values.checkpoint!, overrides);
  const { model, path, epoch } = trained;
  const spec = withCategoryFlags(evalDataSpec(storedDataSpec(trained.data), values, path), values);
  const source = spec.kind === "file" ? spec.path : "the embedded synthetic data set";
  const dataset = alignToVocabulary(await loadData(spec), trained.itemTokens, source);
  const { split } = leaveOneOut(dataset);
  if (split.test.length === 0) {
    throw new RangeError(
      `${source}: no user has the 3 items leave-one-out needs (history, validation item, ` +
        `test item), so there is nothing to evaluate`,
    );
  }
  for (const note of dataset.report.notes) console.error(`data: ${note}`);
  const batchSize = intFlag("eval-batch-size", values["eval-batch-size"], 256);
  const examples = which === "test" ? split.test : split.valid;
  const header = { checkpoint: path, epoch, split: which, protocol, overrides };
  if (diversity) {
    if (protocol !== "library") throw new TypeError("--diversity goes with --protocol library");
    const say = progressWriter();
    const onProgress = (done: number, total: number) =>
      say(`\rdiversified at ${diversity.weights.length} weights: ${done}/${total} histories`);
    const results = await withFlagNames(
      () =>
        evaluateDiversified(
          model,
          evalBatches(examples, { batchSize, maxLength: model.config.maxLength }),
          { numItems: dataset.numItems, categories: dataset.categories, onProgress, ...diversity },
        ),
      { method: "diversity-method", pool: "diversity-pool" },
    );
    say(`\rdiversified at ${diversity.weights.length} weights: ${examples.length} histories\n`);
    console.log(JSON.stringify({ ...header, diversified: results }, null, 1));
    return;
  }
  const metrics = await evaluateModel(
    model,
    examples,
    dataset.numItems,
    batchSize,
    model.config.maxLength,
    dataset.categories,
    protocol,
  );
  console.log(JSON.stringify({ ...header, metrics }, null, 1));
}

/** `--diversity W,W,...` with its method and pool, checked; undefined without it. */
function diversityWeights(
  v: Record<string, unknown>,
): { weights: number[]; method: DiversityMethod | "auto"; pool: number } | undefined {
  const flags = diversityFlags(v, "W,W,...");
  if (!flags) return undefined;
  const weights = (v.diversity as string).split(",").map((w) =>
    checkDiversityWeight(numberFlag("diversity", w.trim()), "--diversity")
  );
  return { weights, ...flags };
}

/**
 * `--drop-category NAME` (repeatable; a name as the categories file spells it, commas and
 * spaces included), which only means something beside `--categories`.
 */
function dropCategoryFlags(v: Record<string, unknown>): string[] | undefined {
  const names = v["drop-category"] as string[] | undefined;
  if (names === undefined || names.length === 0) return undefined;
  if (typeof v.categories !== "string") {
    throw new TypeError("--drop-category goes with --categories FILE");
  }
  if (names.some((t) => t === "")) throw new RangeError("--drop-category needs a category name");
  return names;
}

/** The data `--data FILE` and its read flags describe (`--format`, `--k-core`, ...). */
function fileDataSpec(path: string, v: Record<string, unknown>): DataSpec {
  return {
    kind: "file",
    path,
    format: v.format as "lines" | "recbole" | "movielens" | undefined,
    kCore: typeof v["k-core"] === "string" ? intFlag("k-core", v["k-core"], 0, 0) : undefined,
    categories: v.categories as string | undefined,
    dropCategories: dropCategoryFlags(v),
    minRating: typeof v["min-rating"] === "string"
      ? numberFlag("min-rating", v["min-rating"] as string)
      : undefined,
  };
}

/**
 * `export --model M --item-dtype f32|f16|i8 --out FILE`: the model file of M (a file, run
 * folder or URL) written again with its item table in that dtype; never replaces a file.
 */
async function exportModel(v: Record<string, string | boolean | undefined>): Promise<void> {
  if (typeof v.model !== "string") throw new TypeError("--item-dtype goes with --model M");
  const dataFlag = ["data", "format", "k-core", "min-rating"].find((f) => v[f] !== undefined);
  if (dataFlag) throw new TypeError(`--${dataFlag} goes with export --data, not --model`);
  const itemDtype = (v["item-dtype"] ?? "f32") as ItemDtype;
  if (!ITEM_DTYPES.includes(itemDtype)) {
    throw new RangeError(
      `--item-dtype must be one of ${ITEM_DTYPES.join(", ")}, got "${v["item-dtype"]}"`,
    );
  }
  if (typeof v.out !== "string") throw new TypeError("export --model needs --out FILE");
  const out = v.out;
  if (await Deno.stat(out).then(() => true, () => false)) {
    throw new Deno.errors.AlreadyExists(`--out ${shownPath(out)} exists; not replaced`);
  }
  await startBackend({ backend: "cpu" });
  const { recommender, from } = await loadRecommender(v.model);
  try {
    const bytes = await recommender.toBytes(recommender.info, { itemDtype });
    await writeFileAtomic(out, bytes);
    console.error(
      `wrote ${shownPath(out)}: ${recommender.model.name} over ${recommender.numItems} items ` +
        `from ${from}, item table ${itemDtype}, ${bytes.length.toLocaleString("en")} bytes`,
    );
  } finally {
    recommender.dispose();
  }
}

/**
 * `export`: the data as training reads it (any format, k-core and rating filters applied),
 * written as sequence lines, `user item item ...` in time order with the original tokens:
 * what the PyTorch twins (interop/torch) read. The same users, items and sequences; item
 * ids may be numbered differently (a reader numbers items by first appearance in its own
 * file), which model files make harmless: they name every item by its token. Refuses to
 * replace an existing file, and tokens that hold whitespace.
 */
async function exportCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      data: { type: "string" },
      format: { type: "string" },
      "k-core": { type: "string" },
      "min-rating": { type: "string" },
      out: { type: "string" },
      model: { type: "string" },
      "item-dtype": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(usage());
    return;
  }
  if (values.model !== undefined || values["item-dtype"] !== undefined) {
    return await exportModel(values);
  }
  if (!values.data) throw new TypeError("export needs --data FILE (or --model M --item-dtype D)");
  if (!values.out) throw new TypeError("export needs --out FILE (sequence lines)");
  const out = values.out;
  const exists = await Deno.stat(out).then(() => true, () => false);
  if (exists) throw new Deno.errors.AlreadyExists(`--out ${shownPath(out)} exists; not replaced`);
  const dataset = await loadData(fileDataSpec(values.data, values));
  const { users, items } = dataset.vocab;
  // Sequence lines split on whitespace: a token holding any would come back as others.
  for (const [kind, tokens] of [["user", users], ["item", items.slice(1)]] as const) {
    const bad = tokens.find((t) => /\s/.test(t));
    if (bad !== undefined) {
      throw new RangeError(
        `${values.data}: ${kind} ${JSON.stringify(bad)} holds whitespace, which sequence lines ` +
          `cannot hold`,
      );
    }
  }
  const lines = dataset.sequences.map((s, u) =>
    [users[u], ...Array.from(s, (i) => items[i])].join(" ")
  );
  await writeFileAtomic(out, new TextEncoder().encode(lines.join("\n") + "\n"));
  console.error(
    `wrote ${shownPath(out)}: ${dataset.sequences.length} users, ${dataset.numItems} items, ` +
      `${dataset.sequences.reduce((n, s) => n + s.length, 0)} interactions`,
  );
}

/** Runs the CLI with `args`; returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    if (command === "train") await trainCommand(rest);
    else if (command === "eval") await evalCommand(rest);
    else if (command === "recommend") await recommendCommand(rest);
    else if (command === "serve") await serveCommand(rest);
    else if (command === "export") await exportCommand(rest);
    else if (command === undefined || command === "--help" || command === "-h") {
      console.log(usage()); // asked for (or nothing asked): the usage is the output
      return 0;
    } else {
      console.error(
        `error: unknown command "${command}": expected train, eval, recommend, serve or export\n`,
      );
      console.error(usage());
      return 2;
    }
    return 0;
  } catch (e) {
    const err = e as Error;
    console.error(`error: ${err.message}`);
    const env = Deno.permissions.querySync({ name: "env", variable: "SIGMA_DEBUG" }).state;
    if (env === "granted" && Deno.env.get("SIGMA_DEBUG")) console.error(err.stack);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
