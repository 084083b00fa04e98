/**
 * A reproduction: every model trained with every seed in the same protocol, one run after
 * the other, then a table of their test metrics and the mean over seeds. It can be
 * stopped and started again at any time: a finished run is kept, an unfinished one
 * continues from its last epoch (`train --resume`), a missing one starts.
 *
 * ```sh
 * deno task reproduce --data ../shared/data/Beauty.txt --out runs/beauty -- --backend wasm --patience 20
 * deno task reproduce --data ../shared/data/Beauty.txt --out runs/beauty --summary   # table only
 * deno task reproduce --data ../shared/data/Office_Products.txt --out runs/ablate --models sigma \
 *   --variant paper= --variant no-orth="--orthogonality false" --variant k8="--interests 8"
 * ```
 *
 * Flags: `--data FILE` (default: the embedded synthetic set), `--out DIR` (runs go to
 * `DIR/<model>-s<seed>/`, their output to `DIR/<model>-s<seed>.log`; default
 * runs/reproduce), `--models` (sasrec,sigma), `--seeds` (42,2,3), `--summary` (print the
 * table of the runs that exist and train nothing), `--variant NAME=FLAGS` (repeatable: each
 * model is run under each variant's train flags, into `DIR/<model>-<NAME>-s<seed>/`, its
 * rows named "model NAME"; an ablation table in one command). Everything after `--` goes to
 * every `train` command unchanged (backend, epochs, patience, model options), before a
 * variant's flags.
 *
 * The table: each run's test Recall and NDCG at 10, 20 and 40 at its best validation epoch
 * (and Diversity and coverage at 10 and 20 when runs measured them: `train --categories`),
 * each model's mean over its finished seeds, and the range over seeds (lowest-highest).
 *
 * A run counts as finished when its `metrics.json` says it stopped by patience, or by the
 * epoch cap at the `--epochs` asked for now or more; a larger `--epochs` continues it.
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import { CHILD_PERMISSIONS } from "./_flags.ts";
import { modelEntry, MODELS } from "../lib/models/mod.ts";
import { TRAIN_DEFAULTS } from "../lib/train/trainer.ts";
import { runFilesIn } from "../lib/train/run_folder.ts";
import { demonstrationEpochs } from "../cli/main.ts";

/** What `--help` prints. */
const REPRODUCE_USAGE = `Usage:
  deno task reproduce [--data FILE] [--out DIR] [--models M,M] [--seeds N,N]
                      [--variant NAME=FLAGS ...] [--summary] [-- TRAIN FLAGS]

  --data FILE       the data set (default: the embedded synthetic set)
  --out DIR         runs go to DIR/<model>-s<seed>/, logs to DIR/<model>-s<seed>.log
                    (default runs/reproduce)
  --models M,M      models to train (default sasrec,sigma)
  --seeds N,N       seeds (default 42,2,3)
  --variant N=F     repeatable: each model also under the train flags F, as "model N"
  --summary         print the table of the runs that exist; train nothing
  -- FLAGS          given to every train command (backend, epochs, patience, model options)

A finished run is kept, an unfinished one resumed, a missing one started.`;

/**
 * The `--epochs` the train commands of `model` get: the value after `--`, else the model's
 * own cap (`trainDefaults.epochs`), else the trainer's default.
 */
function requestedEpochs(trainFlags: string[], data: string | undefined, model: string): number {
  for (let i = 0; i < trainFlags.length; i++) {
    const f = trainFlags[i];
    if (f.startsWith("--epochs=")) return Number(f.slice("--epochs=".length));
    if (f === "--epochs") return Number(trainFlags[i + 1]);
  }
  // cli/main.ts trains the embedded data set for a short demonstration unless told otherwise.
  if (!data) return demonstrationEpochs(model);
  return modelEntry(model).trainDefaults?.epochs ?? TRAIN_DEFAULTS.epochs;
}

/** What `train` wrote to `DIR/metrics.json` that this script reads. */
interface RunMetrics {
  best_epoch: number;
  seconds: number;
  protocol: { stopped: string };
  train: { epochs: number };
  test: Record<string, number>;
}

async function readMetrics(dir: string): Promise<RunMetrics | null> {
  const path = `${dir}/metrics.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    return JSON.parse(text) as RunMetrics;
  } catch (e) {
    throw new SyntaxError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** Epochs an unfinished run has logged (`DIR/log.jsonl`, one line per epoch); 0 if none. */
async function epochsLogged(dir: string): Promise<number> {
  try {
    const text = await Deno.readTextFile(`${dir}/log.jsonl`);
    return text.split("\n").filter((line) => line.trim() !== "").length;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

/** Whether a run's metrics say it is done for a request of `epochs` epochs. */
function finished(m: RunMetrics | null, epochs: number): boolean {
  if (m === null) return false;
  return m.protocol.stopped === "patience" || m.train.epochs >= epochs;
}

/** Wall time as minutes with one decimal. */
const minutes = (seconds: number) => `${(seconds / 60).toFixed(1)} min`;

/** A markdown table row. */
const row = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;

const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;

async function main(): Promise<void> {
  // Everything after "--" belongs to the train commands; parseArgs sees only what is before.
  const dash = Deno.args.indexOf("--");
  const trainFlags = dash < 0 ? [] : Deno.args.slice(dash + 1);
  const { values } = parseArgs({
    args: dash < 0 ? Deno.args : Deno.args.slice(0, dash),
    options: {
      data: { type: "string" },
      out: { type: "string", default: "runs/reproduce" },
      models: { type: "string", default: "sasrec,sigma" },
      seeds: { type: "string", default: "42,2,3" },
      summary: { type: "boolean", default: false },
      variant: { type: "string", multiple: true },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(REPRODUCE_USAGE);
    return;
  }
  const models = values.models.split(",").map((m) => m.trim());
  for (const m of models) {
    if (!Object.hasOwn(MODELS, m)) {
      throw new RangeError(
        `--models: unknown model "${m}" (known: ${Object.keys(MODELS).join(", ")})`,
      );
    }
  }
  const seeds = values.seeds.split(",").map((text) => {
    const n = Number(text);
    if (text.trim() === "" || !Number.isInteger(n)) {
      throw new RangeError(`--seeds must be integers separated by commas, got "${values.seeds}"`);
    }
    return n;
  });
  checkOwnFlags(trainFlags, 'after "--"');
  const variants = (values.variant ?? []).map(parseVariant);
  const names = variants.map((v) => v.name);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw new RangeError(`--variant ${twice} is given twice`);
  const arms: Arm[] = models.flatMap((model) =>
    variants.length === 0
      ? [{ model, label: model, dir: model, flags: trainFlags }]
      : variants.map((v) => ({
        model,
        label: `${model} ${v.name}`,
        dir: `${model}-${v.name}`,
        flags: [...trainFlags, ...v.flags],
      }))
  );
  const epochs = (arm: Arm) => requestedEpochs(arm.flags, values.data, arm.model);
  const runDir = (arm: Arm, seed: number) => `${values.out}/${arm.dir}-s${seed}`;

  if (!values.summary) {
    await Deno.mkdir(values.out, { recursive: true });
    for (const arm of arms) {
      for (const seed of seeds) {
        const dir = runDir(arm, seed);
        if (finished(await readMetrics(dir), epochs(arm))) {
          console.log(`${dir}: finished, kept`);
          continue;
        }
        await trainRun(dir, arm, seed, [
          ...(values.data ? ["--data", values.data] : []),
          ...arm.flags,
        ]);
      }
    }
  }

  await printTable(arms, seeds, runDir, epochs);
}

/** One row group of the table: a model, under a variant's flags or none. */
interface Arm {
  model: string;
  /** The table's name for it: the model, or "model variant". */
  label: string;
  /** Its runs' folder names before `-s<seed>`. */
  dir: string;
  /** The flags its train commands get after the script's own. */
  flags: string[];
}

/** Refuses a train flag this script sets for every run. */
function checkOwnFlags(flags: string[], where: string): void {
  for (const flag of ["--model", "--seed", "--out", "--data", "--resume"]) {
    if (flags.some((f) => f === flag || f.startsWith(`${flag}=`))) {
      throw new RangeError(`${flag} ${where}: this script sets it for every run`);
    }
  }
}

/**
 * `--variant NAME=FLAGS`: a name (letters, digits, dots, dashes) and train flags separated
 * by spaces, given to every model's runs after the flags after `--`.
 */
function parseVariant(text: string): { name: string; flags: string[] } {
  const at = text.indexOf("=");
  const name = at < 0 ? text : text.slice(0, at);
  if (!/^[A-Za-z0-9][A-Za-z0-9.-]*$/.test(name)) {
    throw new RangeError(
      `--variant must be NAME=FLAGS with a NAME of letters, digits, dots and dashes, got "${text}"`,
    );
  }
  const flags = at < 0 ? [] : text.slice(at + 1).split(/\s+/).filter((f) => f !== "");
  checkOwnFlags(flags, `in --variant ${name}`);
  return { name, flags };
}

/**
 * Trains (or, when `dir` holds any run file, continues) one run in a child process: both
 * streams go to `dir.log`, and the terminal gets train's epoch lines. A run killed before
 * its first state, or inside a state's swap, has no `state/` but is resumed all the same
 * (train starts it again when no epoch finished).
 *
 * @throws {Error} The child failed, naming its log.
 */
async function trainRun(dir: string, arm: Arm, seed: number, flags: string[]) {
  const resume = (await runFilesIn(dir).catch(() => [])).length > 0;
  const args = [
    "run",
    ...CHILD_PERMISSIONS,
    MAIN,
    "train",
    "--model",
    arm.model,
    "--seed",
    String(seed),
    "--out",
    dir,
    ...(resume ? ["--resume"] : []),
    ...flags,
  ];
  console.log(`${dir}: ${resume ? "continuing" : "starting"}; output in ${dir}.log`);
  const log = await Deno.open(`${dir}.log`, { write: true, create: true, append: true });
  const child = new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .spawn();
  const encoder = new TextEncoder();
  let writes = Promise.resolve();
  const append = (text: string) => {
    const bytes = encoder.encode(text);
    writes = writes.then(async () => {
      for (let at = 0; at < bytes.length;) at += await log.write(bytes.subarray(at));
    });
    return writes;
  };
  const copy = async (stream: ReadableStream<Uint8Array>, echo: boolean) => {
    let pending = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      await append(chunk);
      if (!echo) continue;
      const parts = (pending + chunk).split("\n");
      pending = parts.pop()!;
      for (const line of parts) {
        if (line.startsWith("epoch ")) console.log(`  ${arm.label} s${seed} ${line}`);
      }
    }
  };
  await Promise.all([copy(child.stdout, false), copy(child.stderr, true)]);
  const status = await child.status;
  log.close();
  if (!status.success) {
    throw new Error(`${dir}: train exited with code ${status.code}; see ${dir}.log`);
  }
}

/** Test metrics every table shows. */
const COLUMNS = ["recall@10", "recall@20", "recall@40", "ndcg@10", "ndcg@20", "ndcg@40"];

/** Metrics a table shows when a run measured them (train --categories). */
const CATEGORY_COLUMNS = ["diversity@10", "diversity@20", "coverage@10", "coverage@20"];

/**
 * The table: test metrics of each run's best validation epoch, each model's mean over its
 * finished seeds and their range. Diversity and coverage columns appear when a run has
 * them; a run without them shows "-" there, and a mean is given only when every finished
 * seed has the metric.
 */
async function printTable(
  arms: Arm[],
  seeds: number[],
  runDir: (arm: Arm, seed: number) => string,
  epochs: (arm: Arm) => number,
): Promise<void> {
  const runs = new Map<string, RunMetrics | null>();
  for (const arm of arms) {
    for (const seed of seeds) runs.set(runDir(arm, seed), await readMetrics(runDir(arm, seed)));
  }
  const measured = [...runs.values()].filter((m) => m !== null) as RunMetrics[];
  const columns = COLUMNS.concat(
    CATEGORY_COLUMNS.filter((c) => measured.some((m) => typeof m.test[c] === "number")),
  );
  const value = (m: RunMetrics, c: string) =>
    typeof m.test[c] === "number" ? m.test[c].toFixed(4) : "-";
  console.log("\n" + row(["model", "seed", "best epoch", ...columns, "wall"]));
  console.log(row(["---", "---", "---", ...columns.map(() => "---"), "---"]));
  for (const arm of arms) {
    const { label } = arm;
    const done: RunMetrics[] = [];
    for (const seed of seeds) {
      const m = runs.get(runDir(arm, seed))!;
      if (m === null) {
        const epochsDone = await epochsLogged(runDir(arm, seed));
        const status = epochsDone === 0 ? "not run" : `running, ${epochsDone} epochs done`;
        console.log(row([label, seed, status, ...columns.map(() => ""), ""]));
        continue;
      }
      const state = finished(m, epochs(arm)) ? "" : " (unfinished)";
      const metrics = columns.map((c) => value(m, c));
      console.log(row([label, seed, `${m.best_epoch}${state}`, ...metrics, minutes(m.seconds)]));
      if (finished(m, epochs(arm))) done.push(m);
    }
    if (done.length === 0) continue;
    const everyRun = (c: string) => done.every((m) => typeof m.test[c] === "number");
    const mean = (c: string) =>
      everyRun(c)
        ? `**${(done.reduce((s, m) => s + m.test[c], 0) / done.length).toFixed(4)}**`
        : "-";
    const wall = done.reduce((s, m) => s + m.seconds, 0);
    console.log(
      row([`**${label} mean of ${done.length}**`, "", "", ...columns.map(mean), minutes(wall)]),
    );
    if (done.length > 1) {
      // The spread between seeds: what a difference between two means has to beat.
      const spread = (c: string) => {
        if (!everyRun(c)) return "-";
        const values = done.map((m) => m.test[c]);
        return `${Math.min(...values).toFixed(4)}-${Math.max(...values).toFixed(4)}`;
      };
      console.log(row([`${label} range over seeds`, "", "", ...columns.map(spread), ""]));
    }
  }
}

// A bad flag or a failed run ends the script with its message, not a stack trace.
try {
  await main();
} catch (e) {
  console.error(`reproduce: ${(e as Error).message}`);
  Deno.exit(1);
}
