// The PyTorch twin (interop/torch) against this library: the same model file both ways, the
// same scores and loss, and data-parallel training under torchrun. Skipped, with the
// reason printed, where no python3 with torch is installed (.ci/run installs it as root).
import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "../lib/train/adam.ts";
import { selectBackend } from "../backends/mod.ts";
import { syntheticDataset } from "../lib/data/mod.ts";
import { readDataset } from "../lib/data/files.ts";
import { encodeModelFile, VOCABULARY_TENSOR_ITEMS } from "../lib/inference/model_file.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { SasRec, type SasRecConfig } from "../lib/models/sasrec.ts";
import { Sigma, type SigmaConfig } from "../lib/models/sigma.ts";
import { gumbelNoise } from "../lib/prob/distributions.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { trainStep } from "../lib/train/trainer.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import { assert, assertEquals } from "./_assert.ts";
import { findTorchPython } from "../bench/_python.ts";

const TWIN = new URL("../interop/torch/", import.meta.url).pathname;

const { python: PYTHON, missing } = await findTorchPython();
if (missing) console.log(`torch_twin_test: skipped, no python3 imports torch (${missing})`);

/** Runs `python3 args` in interop/torch with `input` as JSON on stdin; returns stdout. */
async function python(args: string[], input?: unknown): Promise<string> {
  const child = new Deno.Command(PYTHON, {
    args,
    cwd: TWIN,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: "1" },
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(input === undefined ? "" : JSON.stringify(input)));
  await writer.close();
  const out = await child.output();
  const text = new TextDecoder();
  if (!out.success) {
    throw new Error(`${PYTHON} ${args.join(" ")} failed:\n${text.decode(out.stderr)}`);
  }
  return text.decode(out.stdout);
}

const parity = async (command: string, file: string, input: unknown) =>
  JSON.parse((await python(["-m", "sigmarec_torch.parity", command, file], input)).trim());

const TINY: Partial<SasRecConfig> & { numItems: number } = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  inner: 32,
  maxLength: 8,
  layers: 2,
  dropout: 0,
  seed: 4,
  // Weights far from 0, so that every layer shapes the scores: the tests then tell apart
  // near-misses such as GELU's tanh approximation (checked: it fails them).
  initStd: 0.5,
};
const EVAL = tinyEvalBatch(3, 5, 30);

/** Rows `[B][L]` of a flat left-padded id array. */
function rows(flat: Int32Array, batch: number, length: number): number[][] {
  return Array.from({ length: batch }, (_, b) => [...flat.subarray(b * length, (b + 1) * length)]);
}

/** Largest |a - b| over nested score rows, relative to the largest |score|. */
function relativeGap(a: number[][], b: number[][]): number {
  let gap = 0;
  let scale = 1e-6;
  a.forEach((row, r) =>
    row.forEach((x, i) => {
      gap = Math.max(gap, Math.abs(x - b[r][i]));
      scale = Math.max(scale, Math.abs(x));
    })
  );
  return gap / scale;
}

/** The embedded synthetic data set written to `path` as sequence lines; returns the lines. */
async function syntheticLines(path: string, users: number, items: number): Promise<string[]> {
  const data = syntheticDataset({ users, items });
  const lines = data.sequences.map((s, u) =>
    [data.vocab.users[u], ...Array.from(s, (i) => data.vocab.items[i])].join(" ")
  );
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  return lines;
}

const topK = (row: number[], k: number) =>
  row.map((s, i) => [s, i]).slice(1).sort((x, y) => y[0] - x[0]).slice(0, k).map((p) => p[1]);

const ITEMS = ["<pad>", ...Array.from({ length: 30 }, (_, i) => `item${i + 1}`)];

/** `model`'s current weights as model-file bytes, under `config` (default: its own). */
async function modelBytes(
  model: SasRec | Sigma,
  config: object = model.config,
): Promise<Uint8Array> {
  const { records, values } = await model.params.toArrays();
  return await encodeModelFile({
    model: model.name,
    config: config as Record<string, unknown>,
    items: ITEMS,
    params: records,
    values,
    info: {},
  });
}

/** {@linkcode modelBytes} in a fresh temporary file; returns its path. */
async function modelFile(model: SasRec | Sigma, config?: object): Promise<string> {
  const file = await Deno.makeTempFile({ suffix: ".safetensors" });
  await Deno.writeFile(file, await modelBytes(model, config));
  return file;
}

/** Three Adam steps (lr 1e-2) on a tiny batch, so that no weight is at its initial value. */
function trainAFewSteps(model: SasRec | Sigma, batch: ReturnType<typeof tinyTrainBatch>) {
  const optimizer = new Adam(1e-2);
  for (let step = 0; step < 3; step++) {
    trainStep(model, batch, stepSeeds(1, step), optimizer, model.params.list(), 2048, {
      step,
      epoch: 1,
    }).values.dispose();
  }
  optimizer.dispose();
}

Deno.test({
  name: "torch twin: a SASRec trained here loads in PyTorch with the same scores and loss",
  ignore: missing !== "",
  async fn() {
    await selectBackend("cpu");
    const model = new SasRec(TINY);
    const batch = tinyTrainBatch(4, 6, 30);
    trainAFewSteps(model, batch);
    const file = await modelFile(model);
    const ours = tf.tidy(() => model.scores(EVAL).arraySync() as number[][]);
    const theirs = await parity("scores", file, { inputs: rows(EVAL.inputs, 3, 5) });
    const gap = relativeGap(ours, theirs.scores);
    assert(gap < 1e-5, `scores differ by ${gap} of the largest`);
    const ourLoss = tf.tidy(() => model.loss(batch, stepSeeds(9, 0)).loss.dataSync()[0]);
    const theirLoss = (await parity("loss", file, {
      inputs: rows(batch.inputs, 4, 6),
      targets: rows(batch.targets, 4, 6),
    })).loss;
    assert(Math.abs(ourLoss - theirLoss) < 1e-5 * ourLoss, `loss ${ourLoss} here, ${theirLoss}`);
    model.params.dispose();
    await Deno.remove(file);
  },
});

Deno.test({
  name:
    "torch twin: a version 3 file (65,537 items, the vocabulary a gzip tensor) loads in PyTorch with its tokens and the same scores",
  ignore: missing !== "",
  async fn() {
    await selectBackend("cpu");
    const n = VOCABULARY_TENSOR_ITEMS + 1;
    const model = new SasRec({ ...TINY, numItems: n });
    const items = ["<pad>", ...Array.from({ length: n }, (_, i) => `i${i + 1}`)];
    const { records, values } = await model.params.toArrays();
    const file = await Deno.makeTempFile({ suffix: ".safetensors" });
    await Deno.writeFile(
      file,
      await encodeModelFile({
        model: model.name,
        config: model.config as unknown as Record<string, unknown>,
        items,
        params: records,
        values,
        info: {},
      }),
    );
    assertEquals((await parity("items", file, {})).items, items);
    const ours = tf.tidy(() => model.scores(EVAL).arraySync() as number[][]);
    const theirs = await parity("scores", file, { inputs: rows(EVAL.inputs, 3, 5) });
    const gap = relativeGap(ours, theirs.scores);
    assert(gap < 1e-5, `scores differ by ${gap} of the largest`);
    model.params.dispose();
    await Deno.remove(file);
  },
});

for (const [kind, config] of [["sasrec", TINY], ["sigma", { ...TINY, layers: 1, interests: 3 }]]) {
  Deno.test({
    name:
      `torch twin: a ${kind} model trained in PyTorch loads here with the same scores and top-10`,
    ignore: missing !== "",
    async fn() {
      await selectBackend("cpu");
      const file = await Deno.makeTempFile({ suffix: ".safetensors" });
      await parity("train", file, {
        model: kind,
        config: { ...(config as object), dropout: 0.1 },
        steps: 5,
        seed: 3,
      });
      const theirs = (await parity("scores", file, { inputs: rows(EVAL.inputs, 3, 5) }))
        .scores as number[][];
      const rec = await Recommender.load(await Deno.readFile(file));
      assertEquals(rec.model.name, kind);
      const ours = tf.tidy(() => rec.model.scores(EVAL).arraySync() as number[][]);
      const gap = relativeGap(ours, theirs);
      assert(gap < 1e-5, `scores differ by ${gap} of the largest`);
      for (let r = 0; r < 3; r++) assertEquals(topK(ours[r], 10), topK(theirs[r], 10), `row ${r}`);
      await Deno.remove(file);
    },
  });
}

Deno.test({
  name: "torch twin: torchrun trains on 2 processes with identical replicas after every step, " +
    "and its model file serves here",
  ignore: missing !== "",
  async fn() {
    await selectBackend("cpu");
    const dir = await Deno.makeTempDir();
    const lines = await syntheticLines(`${dir}/data.txt`, 200, 60);
    const log = await python([
      "-m",
      "torch.distributed.run",
      "--nproc_per_node",
      "2",
      "--master_port",
      String(29500 + Math.floor(Math.random() * 1000)),
      // Debian's torch 1.13 under Python 3.11 cannot parse the default "0" of these two (its
      // Std enum lost the zero member); 1 (stdout) works on every version, still printed.
      ...["--redirects", "1", "--tee", "1"],
      "-m",
      "sigmarec_torch.train",
      ...["--data", `${dir}/data.txt`, "--out", `${dir}/run`, "--epochs", "2"],
      ...["--max-steps", "4", "--batch-size", "32", "--check-replicas"],
      ...["--hidden", "16", "--heads", "2", "--inner", "32", "--layers", "1", "--max-length", "20"],
    ]);
    for (let step = 1; step <= 4; step++) {
      assert(log.includes(`step ${step}: replicas identical`), log);
    }
    assert(!log.includes("DIFFER"), log);
    assert(log.includes("2 process(es)"), log);
    const rec = await Recommender.load(await Deno.readFile(`${dir}/run/model.safetensors`));
    const history = lines[0].split(" ").slice(1, 4);
    const top = await rec.recommend(history, { k: 5 });
    assertEquals(top.items.length, 5);
    await Deno.remove(dir, { recursive: true });
  },
});

const SIGMA_TINY: Partial<SigmaConfig> & { numItems: number } = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  inner: 32,
  maxLength: 8,
  interests: 3,
  dropout: 0,
  seed: 5,
  initStd: 0.3,
};

Deno.test({
  name: "torch twin: SIGMA trained here scores the same in PyTorch, by SGM-VAE and by MIE-VAE",
  ignore: missing !== "",
  async fn() {
    await selectBackend("cpu");
    const model = new Sigma(SIGMA_TINY);
    trainAFewSteps(model, tinyTrainBatch(4, 6, 30));
    for (const ranking of ["sgm", "mie"] as const) {
      const config = { ...model.config, ranking };
      const file = await modelFile(model, config);
      const twin = new Sigma(config);
      const { records, values } = await model.params.toArrays();
      twin.params.assign(records, values);
      const ours = tf.tidy(() => twin.scores(EVAL).arraySync() as number[][]);
      const theirs = await parity("scores", file, { inputs: rows(EVAL.inputs, 3, 5) });
      const gap = relativeGap(ours, theirs.scores);
      assert(gap < 1e-5, `${ranking}: scores differ by ${gap} of the largest`);
      twin.params.dispose();
      await Deno.remove(file);
    }
    model.params.dispose();
  },
});

Deno.test({
  name:
    "torch twin: SIGMA's training loss and its parts agree, with this library's draws passed in " +
    "(log omega^2 unbounded and bounded)",
  ignore: missing !== "",
  async fn() {
    await selectBackend("cpu");
    for (const interestLogVarBound of [0, 0.5]) await lossParity({ interestLogVarBound });
  },
});

/** SIGMA's loss and parts here and in the twin, from one model file and the same draws. */
async function lossParity(options: Partial<SigmaConfig>) {
  const model = new Sigma({ ...SIGMA_TINY, mieKlWarmup: 10, mieBoostEpochs: 4, ...options });
  const file = await modelFile(model);
  const batch = tinyTrainBatch(4, 6, 30);
  const [step, epoch] = [5, 2];
  const { loss, parts } = tf.tidy(() => {
    const r = model.loss(batch, stepSeeds(9, 0), step, epoch);
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(r.parts)) out[k] = v.dataSync()[0];
    return { loss: r.loss.dataSync()[0], parts: out };
  });
  // The loss's seed stream, drawn in its order (1 block per Transformer, no attention
  // dropout): embedding dropout, Enc_mu's 2, Enc_sigma's 2, z's epsilon, the decoder's 2,
  // the SGM loss's negatives, the Gumbel noise, the interests' epsilon.
  const seeds = stepSeeds(9, 0);
  const skip = (n: number) => Array.from({ length: n }, () => seeds());
  skip(5);
  const zSeed = seeds();
  skip(3);
  const [gumbelSeed, xSeed] = [seeds(), seeds()];
  const positions = batch.targets.filter((t) => t !== 0).length;
  const noise = tf.tidy(() => ({
    z: tf.randomNormal([4, 6, 16], 0, 1, "float32", zSeed).arraySync(),
    gumbel: gumbelNoise([4, 6, 3], gumbelSeed).arraySync(),
    x: tf.randomNormal([positions, 3, 16], 0, 1, "float32", xSeed).arraySync(),
  }));
  const theirs = await parity("loss", file, {
    inputs: rows(batch.inputs, 4, 6),
    targets: rows(batch.targets, 4, 6),
    noise,
    step,
    epoch,
  });
  const close = (a: number, b: number) => Math.abs(a - b) <= 1e-4 * Math.max(1, Math.abs(a));
  const what = JSON.stringify(options);
  assert(close(loss, theirs.loss), `${what}: loss ${loss} here, ${theirs.loss} in PyTorch`);
  for (const [k, v] of Object.entries(parts)) {
    assert(close(v, theirs.parts[k]), `${what}: ${k}: ${v} here, ${theirs.parts[k]} in PyTorch`);
  }
  model.params.dispose();
  await Deno.remove(file);
}

Deno.test({
  name: "torch twin: SIGMA trains in PyTorch (the trainer, one process) and its file serves here",
  ignore: missing !== "",
  async fn() {
    await selectBackend("cpu");
    const dir = await Deno.makeTempDir();
    const lines = await syntheticLines(`${dir}/data.txt`, 120, 40);
    const log = await python([
      "-m",
      "sigmarec_torch.train",
      ...["--model", "sigma", "--data", `${dir}/data.txt`, "--out", `${dir}/run`],
      ...["--epochs", "1", "--max-steps", "2", "--batch-size", "32", "--interests", "2"],
      ...["--hidden", "16", "--heads", "2", "--inner", "32", "--max-length", "20"],
      ...["--interest-layer-norm", "true"],
    ]);
    assert(log.includes("wrote"), log);
    const rec = await Recommender.load(await Deno.readFile(`${dir}/run/model.safetensors`));
    assertEquals(rec.model.name, "sigma");
    const top = await rec.recommend(lines[0].split(" ").slice(1, 4), { k: 5 });
    assertEquals(top.items.length, 5);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name:
    "torch twin: sequence lines read the same on both sides (CRLF, Unicode spaces, empty users), " +
    "and a damaged model file is refused there too",
  ignore: missing !== "",
  async fn() {
    const dir = await Deno.makeTempDir();
    // \r\n and \n endings, a U+0085 inside a token (not a space in JavaScript), a U+FEFF
    // between items (a space there), a user without items, blank lines.
    await Deno.writeTextFile(
      `${dir}/d.txt`,
      "u1 a b c\r\nu2\u0085x y\nu3\n\nu4 a\ufeffb c\n",
    );
    const ours = await readDataset(`${dir}/d.txt`);
    const theirs = await parity("read", `${dir}/d.txt`, {});
    assertEquals(theirs.items, ours.vocab.items);
    assertEquals(theirs.sequences, ours.sequences.map((s) => Array.from(s)));
    // A model file with 4 bytes too many.
    await selectBackend("cpu");
    const model = new SasRec(TINY);
    const bytes = await modelBytes(model);
    await Deno.writeFile(`${dir}/m.safetensors`, new Uint8Array([...bytes, 1, 2, 3, 4]));
    const refused = await parity("scores", `${dir}/m.safetensors`, { inputs: [[1]] }).then(
      () => "",
      (e: Error) => e.message,
    );
    assert(refused.includes("4 bytes belong to no tensor"), refused);
    model.params.dispose();
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name:
    "torch twin: SIGMA's softmax in pieces (past its logit budget) equals it whole, value and gradients",
  ignore: missing !== "",
  async fn() {
    const check = [
      "import torch",
      "from sigmarec_torch import sigma as S",
      "torch.manual_seed(0)",
      "q = torch.randn(500, 3, 8, requires_grad=True)",
      "t = torch.randn(40, 8, requires_grad=True)",
      "r = torch.randint(0, 40, (500,))",
      "whole = S.max_interest_cross_entropy(q, t, r)",
      "g1 = torch.autograd.grad(whole.sum(), [q, t])",
      "S.LOGIT_BUDGET = 3 * 40 * 64  # pieces of 64 positions",
      "pieces = S.max_interest_cross_entropy(q, t, r)",
      "g2 = torch.autograd.grad(pieces.sum(), [q, t])",
      "print(torch.allclose(whole, pieces, atol=1e-6),",
      "      all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2)))",
    ].join("\n");
    assertEquals((await python(["-c", check])).trim(), "True True");
  },
});
