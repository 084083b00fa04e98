import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { train } from "../lib/train/trainer.ts";
import { TINY_TRAIN_FLAGS } from "./_fixtures.ts";
import { SIGMA_DEFAULTS, SIGMA_PRESETS } from "../lib/models/sigma.ts";
import { decodeModelFile } from "../lib/inference/model_file.ts";
import { assert, assertEquals } from "./_assert.ts";

const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;

/** Runs the CLI in a subprocess; returns its exit code and output. */
function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return cliIn(undefined, ...args);
}

/** {@linkcode cli} in the working folder `cwd` (where a default `runs/` would go). */
async function cliIn(
  cwd: string | undefined,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", "--allow-sys", MAIN, ...args],
    env: { NO_COLOR: "1" },
    cwd,
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("cli train --help lists the flags of the run and of every model", async () => {
  const r = await cli("train", "--help");
  assertEquals(r.code, 0, r.stderr);
  const flags = ["--model", "--data", "--backend", "--threads", "--patience", "--categories"];
  for (const flag of [...flags, "--prior"]) {
    assert(r.stdout.includes(flag), `--help lacks ${flag}`);
  }
});

Deno.test("cli rejects bad input with messages that name the flag, file or line", async () => {
  const dir = await Deno.makeTempDir();
  const bad = `${dir}/bad.txt`;
  await Deno.writeTextFile(bad, "u1 1 2 3\nu2 1 2\nu1 4 5 6\n"); // u1 twice
  // Every user has 3 items: one each to train on, validate and test, so no training position.
  await Deno.writeTextFile(`${dir}/three.txt`, "a 1 2 3\nb 2 3 4\nc 3 4 5\n");
  // A folder holding a run: refused without --resume or --overwrite.
  await Deno.mkdir(`${dir}/held`);
  await Deno.writeTextFile(`${dir}/held/log.jsonl`, "");
  await Deno.writeTextFile(`${dir}/empty.txt`, "");
  await Deno.writeTextFile(`${dir}/d.csv`, "a 1 2 3 4\n");
  await Deno.writeTextFile(`${dir}/four.txt`, "a 1 2 3 4\nb 2 3 4 5\nc 3 4 5 6\n");
  await Deno.writeTextFile(`${dir}/other.json`, '{"x": ["c1"], "y": ["c2"]}');
  // Classic Mac line endings: read as spaces, u2 would become an item of u1.
  await Deno.writeTextFile(`${dir}/cr.txt`, "u1 1 2 3\ru2 4 5 6\r");
  // A run trained through the library without checkpointInfo stores no data spec.
  await selectBackend("cpu");
  const tinyData = syntheticDataset({ seed: 3, users: 20, items: 12, maxLength: 8 });
  const tiny = new SasRec({ numItems: 12, hidden: 8, heads: 1, layers: 1, inner: 8, maxLength: 8 });
  await train(tiny, leaveOneOut(tinyData).split, 12, { epochs: 1, batchSize: 16 }, {
    out: `${dir}/library-run`,
    progress: () => {},
  });
  tiny.params.dispose();
  const four = ["--backend", "cpu", "--data", `${dir}/four.txt`, "--out", `${dir}/four`];
  const relative = `missing-${crypto.randomUUID()}.txt`;
  const at = (name: string) => ["--backend", "cpu", "--out", `${dir}/${name}`];
  const cases: [string[], string][] = [
    [["train", "--no-such-flag"], "no-such-flag"],
    // Hardening item 12: Object's members are unknown models and presets, by name.
    [["train", "--model", "toString"], 'Unknown model "toString"'],
    [["train", "--preset", "constructor"], "--preset constructor is not a preset of model sigma"],
    // Item 11 of the hardening issue: messages a user can act on.
    [["train", ...at("empty"), "--data", `${dir}/empty.txt`], "no interactions left"],
    [["train", ...four, "--k-core", "9"], "no interactions left to train or evaluate on: 9-core"],
    [["train", ...four, "--k-core", "1.5"], "--k-core must be an integer >= 0"],
    [["train", ...at("no-data"), "--k-core", "5"], "--k-core goes with --data FILE"],
    [["train", "--batch-size", "0"], "--batch-size must be a positive integer"],
    [
      ["train", "--preset", "nope"],
      "--preset nope is not a preset of model sigma (known: authors-bounded, paper, authors)",
    ],
    [
      ["train", "--model", "sasrec", "--preset", "authors"],
      "--preset authors is not a preset of model sasrec (it has none)",
    ],
    [
      ["train", "--examples", "windows"],
      '--examples must be one of sequences, prefixes, got "windows"',
    ],
    [
      ["train", "--valid-sampling", "fast"],
      '--valid-sampling must be one of model, one, got "fast"',
    ],
    [
      ["train", "--model", "sasrec", "--valid-sampling", "one"],
      '--valid-sampling must be "model" for model sasrec',
    ],
    [["train", "--lr", "0"], "--lr must be a positive finite number"],
    [["train", "--eval-every", "1.5"], "--eval-every must be a positive integer"],
    [["train", "--hidden", "0"], "--hidden must be a positive integer"],
    [["train", "--max-length", "0"], "--max-length must be"],
    [["train", "--heads", "3"], "--hidden (128) must be divisible by --heads (3)"],
    [["train", "--model", "sigma", "--category-temperature", "0"], "--category-temperature"],
    [["train", "--backend", "cpu", "--out", "/proc/sigma-run"], "a kernel file system"],
    [["train", ...at("csv"), "--data", `${dir}/d.csv`], "--format on the command line"],
    [["train", ...at("relative"), "--data", relative], `${dir}/${relative}`],
    [["train", ...four, "--categories", `${dir}/other.json`], "no item of the data set has"],
    [["train", "--backend", "tpu"], "tpu"],
    [["train", ...at("missing"), "--data", `${dir}/missing.txt`], "missing.txt"],
    [["train", "--data", bad], `${bad}:3`],
    [["train", "--epochs", "three"], "--epochs"],
    // Hardening item 14: decimal numbers only, and counts a run can reach.
    [["train", "--epochs", "0x10"], '--epochs must be a decimal number, got "0x10"'],
    [["train", "--epochs", "1e20"], "--epochs must be a positive integer up to 2^53 - 1"],
    [["serve", "--port", "0x50", "--model", "x"], '--port must be a decimal number, got "0x50"'],
    [["frobnicate"], 'error: unknown command "frobnicate": expected train, eval'],
    // Hardening item 13: sizes that cannot fit are refused by name, not by the allocator.
    [
      ["train", ...at("huge"), "--model", "sasrec", "--max-length", "1000000000"],
      'more than 268435456 parameters (at "position" [1000000000,64]): lower --hidden',
    ],
    [["train", ...at("wide"), "--hidden", "1000000"], "more than 268435456 parameters"],
    [["train", "--threads", "0"], "--threads"],
    [["train", "--model", "sigma", "--orthogonality", "maybe"], "--orthogonality"],
    [["train", "--model", "sigma", "--prior", "laplace"], "prior"],
    [["train", "--model", "sasrec", "--prior", "standard"], "--prior"],
    [["train", "--model", "sasrec", "--loss", "hinge"], "hinge"],
    [["train", "--seed", "1.5"], "--seed"],
    [["train", "--backend", "cpu", "--out", `${dir}/held`], "--overwrite"],
    [["train", "--seed", "4294967296"], "--seed"],
    [
      ["train", "--backend", "cpu", "--data", `${dir}/three.txt`, "--out", `${dir}/three`],
      `${dir}/three.txt: no training positions`,
    ],
    [["eval", "--checkpoint", `${dir}/nothing`], `${dir}/nothing`],
    [["train", ...at("cr"), "--data", `${dir}/cr.txt`], `${dir}/cr.txt:1: a carriage return`],
    [["train", ...four, "--min-rating", "4"], "--min-rating must go with MovieLens ratings"],
    [["train", ...at("both"), "--resume", "--overwrite"], "--resume and --overwrite contradict"],
    [
      ["eval", "--checkpoint", `${dir}/library-run/checkpoint`, "--backend", "cpu"],
      'model.json: field "data" does not say what the model was trained on; give --data FILE',
    ],
    [["train", "--backend", "cpu", "--resume", "--out", `${dir}/fresh`], `${dir}/fresh/state`],
  ];
  for (const [args, word] of cases) {
    const r = await cliIn(dir, ...args);
    assertNotZero(r.code, args);
    assert(r.stderr.includes(word), `${args.join(" ")}: stderr lacks "${word}":\n${r.stderr}`);
    assert(!r.stderr.includes("    at "), `${args.join(" ")}: a stack trace instead of a message`);
    const error = r.stderr.slice(r.stderr.lastIndexOf("error:"));
    for (const internal of ["learningRate", "batchSize", "--allow-all", "numItems", "k must"]) {
      assert(!error.includes(internal), `${args.join(" ")}: says "${internal}":\n${error}`);
    }
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli reports users with empty histories as skipped, with their count", async () => {
  const dir = await Deno.makeTempDir();
  const lines = Array.from({ length: 12 }, (_, u) => `u${u} ${u % 5 + 1} ${u % 3 + 6} 9 10`);
  await Deno.writeTextFile(`${dir}/d.txt`, [...lines, "lonely", "alone"].join("\n") + "\n");
  const r = await cli(
    "train",
    "--model",
    "sasrec",
    "--backend",
    "cpu",
    "--epochs",
    "1",
    "--data",
    `${dir}/d.txt`,
    "--out",
    `${dir}/out`,
    "--hidden",
    "8",
    "--heads",
    "2",
    "--inner",
    "8",
    "--layers",
    "1",
  );
  assertEquals(r.code, 0, r.stderr);
  assert(/2 users with an empty history skipped/.test(r.stderr + r.stdout), r.stderr);
  await Deno.remove(dir, { recursive: true });
});

function assertNotZero(code: number, args: string[]) {
  assert(code !== 0, `${args.join(" ")} exited 0`);
}

Deno.test("cli train writes metrics.json and eval --checkpoint reproduces its test metrics", async () => {
  const out = await Deno.makeTempDir();
  const small = ["--hidden", "16", "--heads", "2", "--inner", "32", "--max-length", "20"];
  const r = await cli(
    "train",
    "--model",
    "sasrec",
    "--backend",
    "cpu",
    "--epochs",
    "1",
    "--out",
    out,
    ...small,
    "--layers",
    "1",
  );
  assertEquals(r.code, 0, r.stderr);
  const metrics = JSON.parse(await Deno.readTextFile(`${out}/metrics.json`));
  for (const key of ["model", "data", "backend", "seed", "protocol", "best_epoch", "seconds"]) {
    assert(key in metrics, `metrics.json lacks ${key}`);
  }
  for (
    const key of ["recall@10", "recall@20", "recall@40", "ndcg@10", "ndcg@20", "ndcg@40", "mrr"]
  ) {
    assert(typeof metrics.test[key] === "number", `test.${key}`);
    assert(typeof metrics.valid[key] === "number", `valid.${key}`);
  }
  assertEquals(metrics.model, "sasrec");
  assertEquals(metrics.backend, "cpu");
  const e = await cli("eval", "--checkpoint", `${out}/checkpoint`, "--backend", "cpu");
  assertEquals(e.code, 0, e.stderr);
  const evaluated = JSON.parse(e.stdout.slice(e.stdout.indexOf("{")));
  assertEquals(evaluated.metrics, metrics.test);
  // A run folder with only its model file (as the PyTorch twin writes one) evaluates the same
  // through --model (hardening item 23); the file knows its data, so --data is not needed.
  const fileOnly = await Deno.makeTempDir();
  await Deno.copyFile(`${out}/model.safetensors`, `${fileOnly}/model.safetensors`);
  const m = await cli("eval", "--model", fileOnly, "--backend", "cpu");
  assertEquals(m.code, 0, m.stderr);
  assertEquals(JSON.parse(m.stdout.slice(m.stdout.indexOf("{"))).metrics, metrics.test);
  const both = await cli("eval", "--model", fileOnly, "--checkpoint", `${out}/checkpoint`);
  assert(both.code !== 0 && both.stderr.includes("eval needs one of --checkpoint"), both.stderr);
  await Deno.remove(fileOnly, { recursive: true });
  // bench/adam_state.ts reads the run's resumable state: after one epoch on this data no item
  // row holds a second moment above 1, and every row that got a gradient holds one above 1e-30.
  const adamState = (...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-env", ADAM_STATE, "--run", out, ...args],
      env: { NO_COLOR: "1" },
    }).output().then((o) => new TextDecoder().decode(o.code === 0 ? o.stdout : o.stderr));
  const usual = await adamState();
  assert(usual.includes("epoch 1, Adam step"), usual);
  assert(/item rows with v > 1: 0 of \d+/.test(usual), usual);
  const touched = Number((await adamState("--frozen", "1e-30")).match(/v > 1e-30: (\d+) of/)?.[1]);
  assert(touched > 0, `no item row has a second moment: ${touched}`);
  await Deno.remove(out, { recursive: true });
});

const ADAM_STATE = new URL("../bench/adam_state.ts", import.meta.url).pathname;

const REPRODUCE = new URL("../bench/reproduce.ts", import.meta.url).pathname;
const ABLATIONS = new URL("../bench/diffusion_ablations.ts", import.meta.url).pathname;

/** Runs bench/reproduce.ts in a subprocess; returns its exit code and output. */
async function reproduce(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", "--allow-sys", "--allow-run"]
      .concat(REPRODUCE, ...args),
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** Writes `dir/metrics.json` as a finished run of `train` would, with the fields reproduce reads. */
async function writeRunMetrics(
  dir: string,
  run: { bestEpoch: number; stopped: string; epochs: number },
  test: Record<string, number>,
) {
  await Deno.mkdir(dir, { recursive: true });
  const metrics = {
    best_epoch: run.bestEpoch,
    seconds: 60,
    protocol: { stopped: run.stopped },
    train: { epochs: run.epochs },
    test,
  };
  await Deno.writeTextFile(`${dir}/metrics.json`, JSON.stringify(metrics));
}

Deno.test("reproduce trains every seed, keeps finished runs and prints their mean", async () => {
  const out = await Deno.makeTempDir();
  const tiny = ["--backend", "cpu", "--epochs", "1", "--hidden", "16", "--heads", "2"]
    .concat("--inner", "32", "--max-length", "20", "--layers", "1");
  const args = ["--out", out, "--models", "sasrec", "--seeds", "1,2", "--", ...tiny];
  const first = await reproduce(...args);
  assertEquals(first.code, 0, first.stderr);
  const tests: Record<string, number>[] = [];
  for (const seed of [1, 2]) {
    const m = JSON.parse(await Deno.readTextFile(`${out}/sasrec-s${seed}/metrics.json`));
    assertEquals(m.seed, seed);
    assert((await Deno.readTextFile(`${out}/sasrec-s${seed}.log`)).includes("epoch 1/1"));
    tests.push(m.test);
  }
  const mean = (key: string) => ((tests[0][key] + tests[1][key]) / 2).toFixed(4);
  const meanRow = first.stdout.split("\n").find((l) => l.includes("sasrec mean of 2"));
  assert(meanRow !== undefined, first.stdout);
  const rangeRow = first.stdout.split("\n").find((l) => l.includes("sasrec range over seeds"));
  assert(rangeRow !== undefined, first.stdout);
  for (const key of ["recall@10", "recall@20", "recall@40", "ndcg@10", "ndcg@20", "ndcg@40"]) {
    assert(meanRow.includes(`**${mean(key)}**`), `${key} mean ${mean(key)} not in ${meanRow}`);
    const [low, high] = [tests[0][key], tests[1][key]].sort((a, b) => a - b);
    const range = `${low.toFixed(4)}-${high.toFixed(4)}`;
    assert(rangeRow.includes(range), `${key} range ${range} not in ${rangeRow}`);
  }
  // A second call finds both runs finished and trains nothing.
  const second = await reproduce(...args);
  assertEquals(second.code, 0, second.stderr);
  assertEquals(second.stdout.split("finished, kept").length - 1, 2, second.stdout);
  assert(!second.stdout.includes("starting"), second.stdout);
  await Deno.remove(out, { recursive: true });
});

Deno.test("reproduce --variant runs each model under each variant's flags, one table for all", async () => {
  const out = await Deno.makeTempDir();
  const tiny = ["--backend", "cpu", "--epochs", "1", "--hidden", "16", "--heads", "2"]
    .concat("--inner", "32", "--max-length", "20", "--layers", "1");
  const args = ["--out", out, "--models", "sasrec", "--seeds", "1"];
  const variants = ["--variant", "base=", "--variant", "narrow=--hidden 8 --inner 8"];
  const r = await reproduce(...args, ...variants, "--", ...tiny);
  assertEquals(r.code, 0, r.stderr);
  const config = async (dir: string) =>
    JSON.parse(await Deno.readTextFile(`${out}/${dir}/metrics.json`)).config;
  // The variant's flags come after the common ones, so they win.
  assertEquals((await config("sasrec-base-s1")).hidden, 16);
  assertEquals((await config("sasrec-narrow-s1")).hidden, 8);
  for (const label of ["sasrec base", "sasrec narrow"]) {
    assert(r.stdout.includes(`| **${label} mean of 1** |`), r.stdout);
  }
  // Run again: both kept.
  const again = await reproduce(...args, ...variants, "--", ...tiny);
  assertEquals(again.stdout.split("finished, kept").length - 1, 2, again.stdout);
  await Deno.remove(out, { recursive: true });
});

Deno.test("reproduce counts a run finished at its model's own epoch cap (DiffuRecSys 41), not at the trainer's", async () => {
  const out = await Deno.makeTempDir();
  const test = Object.fromEntries(
    ["recall@10", "recall@20", "recall@40", "ndcg@10", "ndcg@20", "ndcg@40"].map((k) => [k, 0.1]),
  );
  // Both runs stopped by the epoch cap after 41 epochs, the cap of DiffuRecSys's code.
  for (const model of ["diffurecsys", "sasrec"]) {
    await writeRunMetrics(
      `${out}/${model}-s1`,
      { bestEpoch: 40, stopped: "epochs", epochs: 41 },
      test,
    );
  }
  const args = ["--out", out, "--models", "diffurecsys,sasrec", "--seeds", "1", "--summary"];
  const r = await reproduce("--data", `${out}/data.txt`, ...args);
  assertEquals(r.code, 0, r.stderr);
  const line = (start: string) => r.stdout.split("\n").find((l) => l.startsWith(start)) ?? "";
  assert(line("| diffurecsys | 1 | 40 |").length > 0, r.stdout); // finished
  assert(line("| **diffurecsys mean of 1**").length > 0, r.stdout);
  assert(line("| sasrec | 1 | 40 (unfinished) |").length > 0, r.stdout); // SASRec's cap is 200
  // --epochs after "--" is the cap for every model.
  const capped = await reproduce("--data", `${out}/data.txt`, ...args, "--", "--epochs", "41");
  assert(capped.stdout.includes("| **sasrec mean of 1**"), capped.stdout);
  await Deno.remove(out, { recursive: true });
});

Deno.test("reproduce's table shows diversity and coverage when runs measured them, '-' where one did not", async () => {
  const out = await Deno.makeTempDir();
  const base = { "recall@10": 0.1, "recall@20": 0.2, "recall@40": 0.3 };
  const accuracy = { ...base, "ndcg@10": 0.05, "ndcg@20": 0.06, "ndcg@40": 0.07 };
  const runs: [string, number, Record<string, number>][] = [
    ["sasrec", 1, {
      ...accuracy,
      "diversity@10": 0.5,
      "diversity@20": 0.6,
      "coverage@10": 0.01,
      "coverage@20": 0.02,
    }],
    ["sasrec", 2, {
      ...accuracy,
      "diversity@10": 0.7,
      "diversity@20": 0.8,
      "coverage@10": 0.03,
      "coverage@20": 0.04,
    }],
    ["sigma", 1, {
      ...accuracy,
      "diversity@10": 0.4,
      "diversity@20": 0.5,
      "coverage@10": 0.01,
      "coverage@20": 0.02,
    }],
    ["sigma", 2, accuracy], // trained without --categories
  ];
  for (const [model, seed, test] of runs) {
    const run = { bestEpoch: 3, stopped: "patience", epochs: 200 };
    await writeRunMetrics(`${out}/${model}-s${seed}`, run, test);
  }
  const r = await reproduce(
    "--out",
    out,
    "--models",
    "sasrec,sigma",
    "--seeds",
    "1,2",
    "--summary",
  );
  assertEquals(r.code, 0, r.stderr);
  const line = (start: string) => r.stdout.split("\n").find((l) => l.startsWith(start)) ?? "";
  const header = line("| model |");
  for (const c of ["diversity@10", "diversity@20", "coverage@10", "coverage@20"]) {
    assert(header.includes(`| ${c} |`), header);
  }
  assert(
    line("| **sasrec mean of 2** |").includes(
      "| **0.6000** | **0.7000** | **0.0200** | **0.0300** |",
    ),
    r.stdout,
  );
  assert(
    line("| sasrec range over seeds |").includes("| 0.5000-0.7000 | 0.6000-0.8000 |"),
    r.stdout,
  );
  assert(line("| sigma | 2 | 3 |").includes("| - | - | - | - |"), r.stdout);
  // No mean of a metric that one finished seed lacks.
  assert(
    line("| **sigma mean of 2** |").includes("| **0.0600** | **0.0700** | - | - | - | - |"),
    r.stdout,
  );
  await Deno.remove(out, { recursive: true });
});

Deno.test("bench tools stop on a bad flag with a message naming it, not a stack trace", async () => {
  const bench = (file: string, ...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-read",
        "--allow-env",
        new URL(`../bench/${file}`, import.meta.url).pathname,
      ]
        .concat(args),
      env: { NO_COLOR: "1" },
    }).output();
  const cases: [string, string[], string][] = [
    ["profile_step.ts", ["--quantile", "3"], 'error: --quantile must be in [0, 1], got "3"'],
    [
      "profile_step.ts",
      ["--preset", "nope"],
      "error: --preset nope is not a preset of model sigma (known: authors-bounded, paper, authors)",
    ],
    [
      "profile_step.ts",
      ["--reference-step", "--model", "sasrec", "--preset", "authors", "--batch-size", "8"],
      "error: --reference-step has a fixed shape and config: drop --preset, --batch-size",
    ],
    ["throughput.ts", ["--no-such-flag"], "error: Unknown option '--no-such-flag'"],
    ["scale.ts", ["--nope"], "error: Unknown option '--nope'"],
    ["adam_state.ts", [], "error: --run DIR is required"],
    ["adam_state.ts", ["--run", "x", "--frozen", "0"], 'error: --frozen must be positive, got "0"'],
  ];
  for (const [file, args, message] of cases) {
    const out = await bench(file, ...args);
    const stderr = new TextDecoder().decode(out.stderr);
    assertNotZero(out.code, [file, ...args]);
    assert(stderr.includes(message), `${file}: stderr lacks "${message}":\n${stderr}`);
    assert(!stderr.includes("    at "), `${file}: a stack trace:\n${stderr}`);
  }
});

Deno.test("reproduce rejects bad flags with a message that names them", async () => {
  const cases: [string[], string][] = [
    [["--seeds", "1,x"], "--seeds"],
    [["--models", "gru4rec"], "gru4rec"],
    [["--", "--seed", "3"], "--seed"],
    [["--no-such-flag"], "no-such-flag"],
    [["--variant", "a b=--hidden 8"], "--variant must be NAME=FLAGS with a NAME of letters"],
    [["--variant", "x=--seed 4"], "--seed in --variant x: this script sets it"],
    [["--variant", "x=", "--variant", "x=--hidden 8"], "--variant x is given twice"],
  ];
  for (const [args, word] of cases) {
    const r = await reproduce("--summary", ...args);
    assertNotZero(r.code, args);
    assert(r.stderr.includes(word), `${args.join(" ")}: stderr lacks "${word}":\n${r.stderr}`);
    assert(!r.stderr.includes("    at "), `${args.join(" ")}: a stack trace instead of a message`);
    const error = r.stderr.slice(r.stderr.lastIndexOf("error:"));
    for (const internal of ["learningRate", "batchSize", "--allow-all", "numItems", "k must"]) {
      assert(!error.includes(internal), `${args.join(" ")}: says "${internal}":\n${error}`);
    }
  }
});

Deno.test("-h and --help print the usage to stdout and exit 0, for the CLI and reproduce (hardening item 14)", async () => {
  for (const flag of ["-h", "--help"]) {
    const r = await cli(flag);
    assertEquals(r.code, 0, `${flag}: ${r.stderr}`);
    assert(r.stdout.includes("deno task train"), r.stdout);
    const rep = await reproduce(flag);
    assertEquals(rep.code, 0, `reproduce ${flag}: ${rep.stderr}`);
    assert(rep.stdout.includes("deno task reproduce [--data FILE]"), rep.stdout);
  }
});

Deno.test("cli eval --data reads the file as training read its data (k-core kept), unless told otherwise", async () => {
  const dir = await Deno.makeTempDir();
  // 30 users over items 1..8, and one rare item per user that 3-core filtering removes.
  const lines = Array.from(
    { length: 30 },
    (_, u) => `u${u} ${[0, 1, 2, 3, 4].map((j) => 1 + (u + j * 3) % 8).join(" ")} rare${u}`,
  );
  await Deno.writeTextFile(`${dir}/d.txt`, lines.join("\n") + "\n");
  const trained = await cli(
    "train",
    "--model",
    "sasrec",
    "--backend",
    "cpu",
    "--data",
    `${dir}/d.txt`,
    "--k-core",
    "3",
    ...TINY_TRAIN_FLAGS,
    "--out",
    `${dir}/run`,
  );
  assertEquals(trained.code, 0, trained.stderr);
  const evalRun = (...flags: string[]) =>
    cli("eval", "--backend", "cpu", "--checkpoint", `${dir}/run/checkpoint`, ...flags);
  const own = await evalRun();
  const again = await evalRun("--data", `${dir}/d.txt`);
  assertEquals(again.code, 0, again.stderr);
  assert(again.stderr.includes("read as the run read its data (--k-core 3)"), again.stderr);
  assertEquals(JSON.parse(again.stdout).metrics, JSON.parse(own.stdout).metrics);
  // --min-rating given for a file without ratings is refused by flag, not ignored.
  const rated = await evalRun("--data", `${dir}/d.txt`, "--min-rating", "3");
  assertNotZero(rated.code, ["eval --min-rating 3"]);
  assert(rated.stderr.includes("--min-rating must go with MovieLens ratings"), rated.stderr);
  // Without the k-core the rare items are not in the model: an error that names one.
  const unfiltered = await evalRun("--data", `${dir}/d.txt`, "--k-core", "0");
  assertNotZero(unfiltered.code, ["eval --k-core 0"]);
  assert(unfiltered.stderr.includes("rare"), unfiltered.stderr);
  // Known items, but no user long enough to hold out a validation and a test item.
  await Deno.writeTextFile(`${dir}/short.txt`, "a 1 2\nb 3\n");
  const short = await evalRun("--data", `${dir}/short.txt`, "--k-core", "0");
  assertNotZero(short.code, ["eval --data short.txt"]);
  assert(short.stderr.includes(`${dir}/short.txt: no user has the 3 items`), short.stderr);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli: --interests sets SIGMA's k and --categories FILE the data's item categories, for both models", async () => {
  const dir = await Deno.makeTempDir();
  const lines = Array.from(
    { length: 24 },
    (_, u) => `u${u} ${[0, 1, 2, 3, 4].map((j) => 1 + (u + j * 3) % 8).join(" ")}`,
  );
  await Deno.writeTextFile(`${dir}/d.txt`, lines.join("\n") + "\n");
  const cats = Object.fromEntries(
    Array.from({ length: 8 }, (_, i) => [String(i + 1), [`c${i % 3}`]]),
  );
  await Deno.writeTextFile(`${dir}/cats.json`, JSON.stringify(cats));
  const tiny = [
    ...TINY_TRAIN_FLAGS,
    "--backend",
    "cpu",
  ];
  for (const model of ["sigma", "sasrec"]) {
    const extra = model === "sigma" ? ["--interests", "3"] : [];
    const out = `${dir}/${model}`;
    const r = await cli(
      "train",
      "--model",
      model,
      "--data",
      `${dir}/d.txt`,
      "--categories",
      `${dir}/cats.json`,
      "--out",
      out,
      ...tiny,
      ...extra,
    );
    assertEquals(r.code, 0, r.stderr);
    const metrics = JSON.parse(await Deno.readTextFile(`${out}/metrics.json`));
    assert(metrics.test["diversity@20"] >= 0, JSON.stringify(metrics.test));
    assert(metrics.test["coverage@20"] > 0, JSON.stringify(metrics.test));
    if (model === "sigma") assertEquals(metrics.config.interests, 3);
  }
  const bad = await cli(
    "train",
    "--model",
    "sasrec",
    "--interests",
    "3",
    ...tiny,
    "--out",
    `${dir}/x`,
  );
  assertNotZero(bad.code, ["sasrec --interests"]);
  assert(bad.stderr.includes("--interests is not an option of model sasrec"), bad.stderr);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli eval --diversity: weight 0 gives the run's own test metrics, other weights re-rank; --drop-category and bad flags named", async () => {
  const dir = await Deno.makeTempDir();
  const lines = Array.from(
    { length: 30 },
    (_, u) => `u${u} ${[0, 1, 2, 3, 4, 5].map((j) => 1 + (u + j * 5) % 12).join(" ")}`,
  );
  await Deno.writeTextFile(`${dir}/d.txt`, lines.join("\n") + "\n");
  // Every item carries "root" (100%): the warning names it; --drop-category leaves it out.
  const cats = Object.fromEntries(
    Array.from({ length: 12 }, (_, i) => [String(i + 1), ["root", `c${i % 4}`]]),
  );
  await Deno.writeTextFile(`${dir}/cats.json`, JSON.stringify(cats));
  const out = `${dir}/sigma`;
  const trained = await cli(
    "train",
    ...["--model", "sigma", "--interests", "3", "--data", `${dir}/d.txt`],
    ...["--categories", `${dir}/cats.json`, "--out", out, "--backend", "cpu"],
    ...TINY_TRAIN_FLAGS,
  );
  assertEquals(trained.code, 0, trained.stderr);
  assert(trained.stderr.includes('"root" is on 100.0% of the items'), trained.stderr);
  const run = JSON.parse(await Deno.readTextFile(`${out}/metrics.json`));
  const evalArgs = ["eval", "--checkpoint", `${out}/checkpoint`, "--backend", "cpu"];
  const r = await cli(...evalArgs, "--diversity", "0,2", "--diversity-method", "interests");
  assertEquals(r.code, 0, r.stderr);
  const { diversified } = JSON.parse(r.stdout);
  assertEquals(diversified.map((d: { weight: number }) => d.weight), [0, 2]);
  assertEquals(diversified[0].method, "interests");
  assertEquals(diversified[0].metrics, run.test);
  assert(diversified[1].metrics["ild@20"] >= 0, JSON.stringify(diversified[1].metrics));
  // Dropping the root: Eq. 15 stops counting every pair alike.
  const dropped = await cli(...evalArgs, "--drop-category", "root");
  assertEquals(dropped.code, 0, dropped.stderr);
  const { metrics } = JSON.parse(dropped.stdout);
  assertEquals(run.test["diversity@20"], 0);
  assert(metrics["diversity@20"] > 0, JSON.stringify(metrics));
  for (
    const [args, message] of [
      [["--diversity=-1"], "--diversity must be a finite number >= 0"],
      [["--diversity", "1", "--diversity-method", "random"], "--diversity-method must be one of"],
      [["--diversity-method", "mmr"], "--diversity-method goes with --diversity"],
      [["--drop-category", "rot"], '"rot" to drop is on no item'],
    ] as const
  ) {
    const bad = await cli(...evalArgs, ...args);
    assertNotZero(bad.code, ["eval", ...args]);
    assert(bad.stderr.includes(message), `${args.join(" ")}: ${bad.stderr}`);
    assert(!bad.stderr.includes("    at "), `a stack trace: ${bad.stderr}`);
  }
  await Deno.remove(dir, { recursive: true });
});

/** Canonical JSON (keys sorted at every level), as checkpoints hash their `model.json`. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0
    );
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

Deno.test("cli: on a data file SIGMA trains its default preset (authors-bounded), recorded in the run; --preset paper the defaults; the demo the paper's mode; a run that recorded no preset resumes as it was trained", async () => {
  const dir = await Deno.makeTempDir();
  const lines = Array.from(
    { length: 24 },
    (_, u) => `u${u} ${[0, 1, 2, 3, 4].map((j) => 1 + (u + j * 3) % 9).join(" ")}`,
  );
  await Deno.writeTextFile(`${dir}/d.txt`, lines.join("\n") + "\n");
  const train = (out: string, ...flags: string[]) =>
    cli(
      "train",
      ...["--model", "sigma", "--data", `${dir}/d.txt`, "--backend", "cpu", "--out", out],
      ...TINY_TRAIN_FLAGS,
      ...flags,
    );
  const configOf = async (out: string) =>
    JSON.parse(await Deno.readTextFile(`${out}/metrics.json`)).config;
  const fields = { hidden: 8, heads: 1, inner: 8, numItems: 9, seed: 42 };
  const byDefault = await train(`${dir}/default`);
  assertEquals(byDefault.code, 0, byDefault.stderr);
  assertEquals(await configOf(`${dir}/default`), {
    ...SIGMA_DEFAULTS,
    ...SIGMA_PRESETS["authors-bounded"],
    ...fields,
  });
  const state = JSON.parse(await Deno.readTextFile(`${dir}/default/state/model.json`));
  assertEquals(state.preset, "authors-bounded");
  const file = await decodeModelFile(await Deno.readFile(`${dir}/default/model.safetensors`));
  assertEquals(file.info.preset, "authors-bounded");
  const paper = await train(`${dir}/paper`, "--preset", "paper");
  assertEquals(paper.code, 0, paper.stderr);
  assertEquals(await configOf(`${dir}/paper`), { ...SIGMA_DEFAULTS, ...fields });
  // A run from before presets were recorded: the paper's config, no "preset" in its state.
  const statePath = `${dir}/paper/state/model.json`;
  const { preset: _, checksum: __, ...old } = JSON.parse(await Deno.readTextFile(statePath));
  const weights = await Deno.readFile(`${dir}/paper/state/weights.bin`);
  const head = new TextEncoder().encode(canonical(old) + "\n");
  const digest = await crypto.subtle.digest("SHA-256", new Uint8Array([...head, ...weights]));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  await Deno.writeTextFile(statePath, JSON.stringify({ ...old, checksum: `sha256:${hex}` }));
  const resumed = await train(`${dir}/paper`, "--resume", "--epochs", "2");
  assertEquals(resumed.code, 0, resumed.stderr);
  assertEquals(await configOf(`${dir}/paper`), { ...SIGMA_DEFAULTS, ...fields });
  // Resuming the default run without --preset continues the preset it recorded.
  const again = await train(`${dir}/default`, "--resume", "--epochs", "2");
  assertEquals(again.code, 0, again.stderr);
  // The demonstration on the embedded data trains the paper's mode, and says so.
  const demo = await cli("train", "--out", `${dir}/demo`, "--backend", "cpu", ...TINY_TRAIN_FLAGS);
  assertEquals(demo.code, 0, demo.stderr);
  assert(demo.stderr.includes("--preset paper"), demo.stderr);
  assertEquals((await configOf(`${dir}/demo`)).mieInput, "raw");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli: --preset authors sets SIGMA's authors'-code fields, and a flag beside it wins", async () => {
  const dir = await Deno.makeTempDir();
  const r = await cliIn(
    dir,
    "train",
    "--model",
    "sigma",
    "--backend",
    "cpu",
    ...TINY_TRAIN_FLAGS,
    "--preset",
    "authors",
    "--mie-recon",
    "sample",
    "--out",
    "run",
  );
  assertEquals(r.code, 0, r.stderr);
  const config = JSON.parse(await Deno.readTextFile(`${dir}/run/metrics.json`)).config;
  assertEquals(
    [config.mieInput, config.interestLayerNorm, config.mieBoostEpochs, config.scoreAt],
    ["normed", true, 200, "mu+sigma"],
  );
  assertEquals(config.mieRecon, "sample");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli: DiffuRec trains from the command line, and eval ablates its ranking without retraining", async () => {
  const dir = await Deno.makeTempDir();
  const small = ["--layers", "1", "--steps", "4", "--max-length", "10"];
  const trained = await cliIn(
    dir,
    "train",
    "--model",
    "diffurec",
    "--backend",
    "cpu",
    ...TINY_TRAIN_FLAGS,
    ...small,
    "--valid-sampling",
    "one",
    "--out",
    "run",
  );
  assertEquals(trained.code, 0, trained.stderr);
  // The model's own training defaults apply (DiffuRec's examples, batch and StepLR), under
  // whatever flags say (TINY_TRAIN_FLAGS sets no batch size).
  const saved = JSON.parse(await Deno.readTextFile(`${dir}/run/metrics.json`));
  const settings = saved.train;
  assertEquals(
    [settings.examples, settings.batchSize, settings.lrDecayEvery],
    ["prefixes", 512, 100],
  );
  // Validation ranked with one call, and metrics.json says so; the test metrics are the
  // chain's (eval of the saved model, below, gives them again).
  assertEquals(settings.validSampling, "one");
  assert(saved.protocol.selection.includes("one Approximator call"), saved.protocol.selection);
  assertEquals(saved.config.sampling, "chain");
  const evalRun = (...flags: string[]) =>
    cliIn(dir, "eval", "--backend", "cpu", "--checkpoint", "run/checkpoint", ...flags);
  const plain = await evalRun();
  assertEquals(plain.code, 0, plain.stderr);
  const metrics = JSON.parse(await Deno.readTextFile(`${dir}/run/metrics.json`)).test;
  assertEquals(JSON.parse(plain.stdout).metrics, metrics); // the saved model ranks the same again
  const ablated = await evalRun("--sampling", "one", "--eval-seed", "7", "--protocol", "diffurec");
  assertEquals(ablated.code, 0, ablated.stderr);
  const out = JSON.parse(ablated.stdout);
  assertEquals(out.overrides, { sampling: "one", evalSeed: 7 });
  assert("recall@5" in out.metrics, "diffurec protocol keys");
  // One call runs no chain, so a number of chain steps would be ignored: refused, by flag.
  const ignored = await evalRun("--reverse-steps", "2", "--sampling", "one");
  assertNotZero(ignored.code, ["eval --reverse-steps 2 --sampling one"]);
  assert(
    ignored.stderr.includes('--reverse-steps (2) has no effect with sampling "one"'),
    ignored.stderr,
  );
  const bad = await evalRun("--reverse-steps", "9");
  assertNotZero(bad.code, ["eval --reverse-steps 9"]);
  assert(bad.stderr.includes("--reverse-steps (9) must be at most steps (4)"), bad.stderr);

  // recommend and serve take the same options: a one-call DiffuRec, from the run folder.
  const recommend = (...flags: string[]) =>
    cliIn(dir, "recommend", "--model", "run", "--backend", "cpu", "--history", "i1 i2", ...flags);
  const one = await recommend("--sampling", "one", "-k", "3");
  assertEquals(one.code, 0, one.stderr);
  assertEquals(one.stdout.trim().split("\n").length, 1 + 3, one.stdout); // head and 3 items
  const long = await recommend("--reverse-steps", "9");
  assertNotZero(long.code, ["recommend --reverse-steps 9"]);
  assert(long.stderr.includes("--reverse-steps (9) must be at most steps (4)"), long.stderr);

  // bench/diffusion_ablations.ts ranks the same model every way in one process; its first
  // row is the model's own chain, so it equals the test metrics training wrote.
  const ablations = (...flags: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-write", "--allow-env", "--allow-sys", ABLATIONS]
        .concat("--checkpoint", "run/checkpoint", "--backend", "cpu", ...flags),
      cwd: dir,
      env: { NO_COLOR: "1" },
    }).output();
  const bench = await ablations("--split", "test", "--steps", "4,2", "--json", "rows.json");
  assertEquals(bench.code, 0, new TextDecoder().decode(bench.stderr));
  const { rows } = JSON.parse(await Deno.readTextFile(`${dir}/rows.json`));
  assertEquals(
    rows.map((r: { overrides: unknown }) => r.overrides),
    [
      { sampling: "chain", reverseSteps: 0 },
      { sampling: "chain", reverseSteps: 2 },
      { sampling: "one", reverseSteps: 0 },
      { lambda: 0, sampling: "chain", reverseSteps: 0 },
    ],
  );
  const accuracy = Object.fromEntries(
    Object.entries(metrics).filter(([key]) => !/^(diversity|coverage|ild)@/.test(key)),
  );
  assertEquals(rows[0].metrics, accuracy); // the bench leaves out the category metrics
  assertEquals(rows[0].agree, { same: 1, overlap: 1 });
  const table = new TextDecoder().decode(bench.stdout).split("\n").filter((l) =>
    l.startsWith("| ")
  );
  assertEquals(table.length, 2 + rows.length); // head, rule, a line per row
  const tooMany = await ablations("--steps", "8");
  assertNotZero(tooMany.code, ["diffusion_ablations --steps 8"]);
  assert(
    new TextDecoder().decode(tooMany.stderr).includes(
      "8 is more than the model's 4 diffusion steps",
    ),
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli: on the embedded data set a model's own epoch cap gives way to the short demo run; its help lists the cap", async () => {
  const dir = await Deno.makeTempDir();
  // A folder holding a run stops train right after it has said what it would run.
  await Deno.mkdir(`${dir}/held`);
  await Deno.writeTextFile(`${dir}/held/log.jsonl`, "");
  const r = await cli(
    "train",
    "--model",
    "diffurecsys",
    "--backend",
    "cpu",
    "--out",
    `${dir}/held`,
  );
  assertNotZero(r.code, ["train into a held folder"]);
  assert(
    r.stderr.includes("the embedded synthetic set, a demonstration: 20 epochs, patience 5 "),
    r.stderr,
  );
  // SIGMA's and SASRec's demonstration is smaller and shorter; a flag given wins.
  const sigma = await cli("train", "--backend", "cpu", "--hidden", "32", "--out", `${dir}/held`);
  assert(
    sigma.stderr.includes(
      "a demonstration: 10 epochs, patience 5, --preset paper, --lr 0.01, --inner 128, --max-length 30",
    ),
    sigma.stderr,
  );
  const help = await cli("train", "--help");
  assert(help.stdout.includes("--weight-decay 0.0001, --epochs 41"), help.stdout);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli export writes the data as training reads it, as sequence lines that read back the same, and never replaces a file", async () => {
  const dir = await Deno.makeTempDir();
  const inter = [
    "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "u1\ti9\t5\t300",
    "u2\ti0\t3\t100",
    "u1\ti8\t4\t100",
    "u1\ti7\t4\t200",
    "u2\ti9\t1\t50",
    "",
  ].join("\n");
  await Deno.writeTextFile(`${dir}/d.inter`, inter);
  const r = await cli("export", "--data", `${dir}/d.inter`, "--out", `${dir}/d.txt`);
  assertEquals(r.code, 0, r.stderr);
  // Time order within a user; item tokens kept as they are.
  assertEquals(await Deno.readTextFile(`${dir}/d.txt`), "u1 i8 i7 i9\nu2 i9 i0\n");
  const again = await cli("export", "--data", `${dir}/d.inter`, "--out", `${dir}/d.txt`);
  assert(again.code !== 0 && again.stderr.includes("exists; not replaced"), again.stderr);
  const bare = await cli("export", "--data", `${dir}/d.inter`);
  assert(bare.code !== 0 && bare.stderr.includes("export needs --out FILE"), bare.stderr);
  // A token with a space survives RecBole's tab-separated fields, not sequence lines.
  await Deno.writeTextFile(`${dir}/s.inter`, "user_id:token\titem_id:token\nuser 1\ti1\n");
  const spaced = await cli("export", "--data", `${dir}/s.inter`, "--out", `${dir}/s.txt`);
  assert(
    spaced.code !== 0 && spaced.stderr.includes('user "user 1" holds whitespace'),
    spaced.stderr,
  );
  await Deno.remove(dir, { recursive: true });
});
