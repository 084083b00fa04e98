import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "../lib/train/adam.ts";
import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec, type SasRecConfig } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import type { EvalBatch, TrainBatch } from "../lib/data/types.ts";
import { decodeModelFile } from "../lib/inference/model_file.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import { maxAbsDiff } from "./_model_checks.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";
import type { SequentialModel } from "../lib/models/_model.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { fnv1a, readCheckpoint, writeCheckpoint } from "../lib/train/checkpoint.ts";
import {
  evaluateModel,
  learningRateAt,
  LOSS_READS_ON_GPU,
  splitBatch,
  train,
  TRAIN_DEFAULTS,
  trainStep,
} from "../lib/train/trainer.ts";
import { assert, assertEquals, assertNotEquals, assertRejects, assertThrows } from "./_assert.ts";

const data = syntheticDataset({ seed: 5, users: 80, items: 40, maxLength: 12 });
const { split } = leaveOneOut(data);
const SMALL: Partial<SasRecConfig> & { numItems: number } = {
  numItems: data.numItems,
  hidden: 16,
  heads: 2,
  layers: 1,
  inner: 32,
  maxLength: 12,
  seed: 4,
};
const FAST = { batchSize: 32, evalBatchSize: 64 };

Deno.test("train() with the same seed gives the same losses and metrics; another seed does not", async () => {
  await selectBackend("cpu");
  const run = async (seed: number) => {
    const model = new SasRec({ ...SMALL, seed });
    const result = await train(model, split, data.numItems, { ...FAST, epochs: 2, seed });
    model.params.dispose();
    return result;
  };
  const a = await run(1);
  const b = await run(1);
  const c = await run(2);
  assertEquals(a.history.map((h) => h.loss), b.history.map((h) => h.loss));
  assertEquals(a.valid, b.valid);
  assertNotEquals(a.history[0].loss, c.history[0].loss);
});

Deno.test("train() stops after `patience` epochs without a better validation Recall@20", async () => {
  await selectBackend("cpu");
  const model = new SasRec(SMALL);
  // A learning rate this small cannot change any ranking: epoch 1 stays the best, so with
  // patience 2 training must stop at epoch 3 of 10.
  const result = await train(model, split, data.numItems, {
    ...FAST,
    epochs: 10,
    patience: 2,
    learningRate: 1e-12,
  });
  assertEquals(result.stopped, "patience");
  assertEquals(result.bestEpoch, 1);
  assertEquals(result.history.length, 3);
  model.params.dispose();
  // Patience counts epochs, also when validation runs every few (hardening item 26): with
  // evalEvery 2 and patience 4, validations at epochs 2, 4 and 6 leave epoch 2 the best and
  // stop at 6 (counting validations would run to 10).
  const sparse = new SasRec(SMALL);
  const every = await train(sparse, split, data.numItems, {
    ...FAST,
    epochs: 20,
    patience: 4,
    evalEvery: 2,
    learningRate: 1e-12,
  });
  assertEquals([every.stopped, every.bestEpoch, every.history.length], ["patience", 2, 6]);
  sparse.params.dispose();
});

Deno.test("train() refuses to resume on other sequences over the same vocabulary, naming the field", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  const first = new SasRec(SMALL);
  await train(first, split, data.numItems, { ...FAST, epochs: 1 }, { out: dir });
  first.params.dispose();
  // One user's training items in another order: the same items, users and file name.
  const changed = { ...split, train: split.train.map((s, i) => i === 0 ? s.slice().reverse() : s) };
  assertNotEquals(Array.from(changed.train[0]), Array.from(split.train[0]));
  for (const [other, ok] of [[changed, false], [split, true]] as const) {
    const model = new SasRec(SMALL);
    const resumed = train(model, other, data.numItems, { ...FAST, epochs: 2 }, {
      out: dir,
      resume: true,
      progress: () => {},
    });
    if (ok) assertEquals((await resumed).history.length, 2);
    else await assertRejects(() => resumed, RangeError, 'field "resume.split"');
    model.params.dispose();
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train() refuses resume with overwrite, before touching the folder", async () => {
  await selectBackend("cpu");
  const model = new SasRec(SMALL);
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/log.jsonl`, "kept\n");
  await assertRejects(
    () => train(model, split, data.numItems, FAST, { out: dir, resume: true, overwrite: true }),
    TypeError,
    "resume and overwrite contradict each other",
  );
  assertEquals(await Deno.readTextFile(`${dir}/log.jsonl`), "kept\n");
  model.params.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("train() writes a log line per epoch and a checkpoint that reproduces the test metrics", async () => {
  await selectBackend("cpu");
  const out = await Deno.makeTempDir();
  const model = new SasRec(SMALL);
  const result = await train(model, split, data.numItems, { ...FAST, epochs: 3 }, { out });
  const lines = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n");
  assertEquals(lines.length, 3);
  assertEquals(lines.map((l) => JSON.parse(l).epoch), [1, 2, 3]);
  const test = await evaluateModel(model, split.test, data.numItems, 64, SMALL.maxLength!);
  const { meta, values } = await readCheckpoint(`${out}/checkpoint`);
  assertEquals(meta.epoch, result.bestEpoch);
  const fresh = new SasRec(meta.config as unknown as SasRecConfig);
  fresh.params.assign(meta.params, values);
  const again = await evaluateModel(fresh, split.test, data.numItems, 64, SMALL.maxLength!);
  assertEquals(again, test);
  model.params.dispose();
  fresh.params.dispose();
  await Deno.remove(out, { recursive: true });
});

Deno.test("readCheckpoint() rejects truncated or altered weights, naming the file", async () => {
  const dir = `${await Deno.makeTempDir()}/ckpt`;
  const meta = {
    model: "sasrec",
    config: {},
    data: {},
    train: {},
    itemTokens: ["<pad>"],
    epoch: 1,
    valid: {},
    params: [{ name: "w", shape: [2, 2] }],
  };
  await writeCheckpoint(dir, meta, Float32Array.of(1, 2, 3, 4));
  assertEquals(Array.from((await readCheckpoint(dir)).values), [1, 2, 3, 4]);
  const bytes = await Deno.readFile(`${dir}/weights.bin`);
  await Deno.writeFile(`${dir}/weights.bin`, bytes.subarray(0, 8));
  await assertRejects(() => readCheckpoint(dir), RangeError, "weights.bin");
  bytes[0] ^= 0xff;
  await Deno.writeFile(`${dir}/weights.bin`, bytes);
  await assertRejects(() => readCheckpoint(dir), RangeError, "checksum");
  bytes[0] ^= 0xff;
  await Deno.writeFile(`${dir}/weights.bin`, bytes);
  // The checksum covers model.json too: a changed config or vocabulary, or a field added.
  const json = JSON.parse(await Deno.readTextFile(`${dir}/model.json`));
  // A data path pointed elsewhere is caught before that file is read, let alone printed.
  const elsewhere = { data: { kind: "file", path: "/etc/passwd" } };
  for (const edit of [{ config: { ranking: "mie" } }, { itemTokens: ["<pad>", "x"] }, elsewhere]) {
    await Deno.writeTextFile(`${dir}/model.json`, JSON.stringify({ ...json, ...edit }));
    await assertRejects(() => readCheckpoint(dir), RangeError, "checksum");
  }
  await Deno.writeTextFile(`${dir}/model.json`, JSON.stringify({ ...json, extra: 1 }));
  await assertRejects(() => readCheckpoint(dir), SyntaxError, 'unknown field "extra"');
  // A format-1 checkpoint of an earlier version (weights-only FNV-1a) still loads.
  const { checksum: _, ...rest } = json;
  await Deno.writeTextFile(
    `${dir}/model.json`,
    JSON.stringify({ ...rest, format: 1, checksum: fnv1a(bytes) }),
  );
  assertEquals(Array.from((await readCheckpoint(dir)).values), [1, 2, 3, 4]);
  await Deno.writeTextFile(`${dir}/model.json`, "{ not json");
  await assertRejects(() => readCheckpoint(dir), SyntaxError, "model.json");
  await assertRejects(() => readCheckpoint(`${dir}-missing`), Deno.errors.NotFound, "missing");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("readCheckpoint() falls back to the previous checkpoint when a swap was cut short", async () => {
  const dir = `${await Deno.makeTempDir()}/ckpt`;
  const meta = {
    model: "sasrec",
    config: {},
    data: {},
    train: {},
    itemTokens: ["<pad>"],
    epoch: 1,
    valid: {},
    params: [{ name: "w", shape: [2] }],
  };
  await writeCheckpoint(dir, meta, Float32Array.of(5, 6));
  // A crash between the two renames leaves only `dir.prev`.
  await Deno.rename(dir, `${dir}.prev`);
  const { values, path } = await readCheckpoint(dir);
  assertEquals(Array.from(values), [5, 6]);
  assert(path.endsWith(".prev"), path);
});

Deno.test("ParamStore.shareFrom() takes another store's values, which its later changes do not reach", async () => {
  await selectBackend("cpu");
  const a = new SasRec(SMALL), b = new SasRec({ ...SMALL, seed: 9 });
  b.params.shareFrom(a.params);
  const before = await a.params.toArrays();
  assertEquals((await b.params.toArrays()).values, before.values);
  tf.tidy(() => a.params.get("item").assign(tf.zerosLike(a.params.get("item"))));
  assertEquals((await b.params.toArrays()).values, before.values);
  const other = new SasRec({ ...SMALL, hidden: 8 });
  assertThrows(
    () => other.params.shareFrom(a.params, "twin"),
    RangeError,
    'twin: parameter 0 is "item"',
  );
  for (const m of [a, b, other]) m.params.dispose();
});

Deno.test("ParamStore.assign() rejects weights of another shape, naming the parameter", async () => {
  await selectBackend("cpu");
  const small = new SasRec(SMALL);
  const wide = new SasRec({ ...SMALL, hidden: 32 });
  const { records, values } = await small.params.toArrays();
  assertThrows(() => wide.params.assign(records, values, "ckpt/model.json"), RangeError, '"item"');
  const nan = values.slice();
  nan[3] = NaN;
  assertThrows(() => small.params.assign(records, nan, "ckpt"), RangeError, "non-finite");
  small.params.dispose();
  wide.params.dispose();
});

Deno.test("train() stops with an error naming the epoch and step when the loss is NaN", async () => {
  await selectBackend("cpu");
  const inner = new SasRec(SMALL);
  const broken: SequentialModel & { config: { maxLength: number } } = {
    name: "broken",
    config: inner.config,
    params: inner.params,
    loss: (batch, seeds) => {
      const { loss } = inner.loss(batch, seeds);
      const nan = tf.mul(loss, NaN) as tf.Scalar;
      return { loss: nan, parts: { recon: nan } };
    },
    scores: (batch) => inner.scores(batch),
  };
  await assertRejects(
    () => train(broken, split, data.numItems, { ...FAST, epochs: 1 }),
    Error,
    "epoch 1, step 1/",
  );
  inner.params.dispose();
});

Deno.test("on webgpu, where losses are read back in groups, a NaN still names its own step", async () => {
  await selectBackend("webgpu", { webgpuCpuForward: false });
  const inner = new SasRec(SMALL);
  let calls = 0;
  const broken: SequentialModel & { config: { maxLength: number } } = {
    name: "broken",
    config: inner.config,
    params: inner.params,
    loss: (batch, seeds) => {
      const { loss } = inner.loss(batch, seeds);
      // One piece per step here (32 rows): the third step's loss is NaN.
      const bad = ++calls === 3 ? tf.mul(loss, NaN) as tf.Scalar : loss;
      return { loss: bad, parts: { recon: bad } };
    },
    scores: (batch) => inner.scores(batch),
  };
  const before = tf.memory().numTensors;
  await assertRejects(
    () => train(broken, split, data.numItems, { ...FAST, epochs: 1 }),
    Error,
    "epoch 1, step 3/",
  );
  assert(LOSS_READS_ON_GPU > 3, "the NaN fell outside the first group of reads");
  assertEquals(tf.memory().numTensors, before, "tensors left behind by the stopped epoch");
  inner.params.dispose();
});

/** `batch` with `extra` more padding columns on the left. */
function padLeft<T extends { batch: number; length: number; inputs: Int32Array }>(
  batch: T,
  extra: number,
): T {
  const length = batch.length + extra;
  const widen = (a: Int32Array) => {
    const out = new Int32Array(batch.batch * length);
    for (let r = 0; r < batch.batch; r++) {
      out.set(a.subarray(r * batch.length, (r + 1) * batch.length), r * length + extra);
    }
    return out;
  };
  const padded = { ...batch, length, inputs: widen(batch.inputs) };
  if ("targets" in batch && (batch.targets as Int32Array).length === batch.inputs.length) {
    (padded as unknown as TrainBatch).targets = widen(batch.targets as Int32Array);
  }
  return padded;
}

// Length bucketing pads each batch only to its own longest history. That is only sound if
// more left padding changes nothing: positions are counted from the right and padding is
// masked everywhere. SASRec without dropout is deterministic, so its loss and gradients
// must match; SIGMA draws training noise per padded position, so its scores are compared.
Deno.test("a batch padded to its own length gives the loss, gradients and scores of full padding", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    const sasrec = new SasRec({ ...SMALL, numItems: 30, dropout: 0 });
    const tight = tinyTrainBatch(5, 6, 30);
    const wide = padLeft(tight, 6);
    const lossOf = (b: TrainBatch) =>
      tf.variableGrads(() => sasrec.loss(b, stepSeeds(3, 0)).loss, sasrec.params.list());
    const a = lossOf(tight);
    const b = lossOf(wide);
    assert(Math.abs(a.value.dataSync()[0] - b.value.dataSync()[0]) < 1e-5, `${backend} loss`);
    for (const name of Object.keys(a.grads)) {
      const diff = maxAbsDiff(a.grads[name].dataSync(), b.grads[name].dataSync());
      assert(diff < 1e-5, `${backend} gradient of ${name} differs by ${diff}`);
    }
    tf.dispose([a.value, b.value, ...Object.values(a.grads), ...Object.values(b.grads)]);
    const sigma = new Sigma({ numItems: 30, hidden: 8, heads: 2, inner: 8, maxLength: 12 });
    for (const model of [sasrec, sigma] as SequentialModel[]) {
      const evalTight = tinyEvalBatch(5, 6, 30);
      const s1 = tf.tidy(() => model.scores(evalTight));
      const s2 = tf.tidy(() => model.scores(padLeft(evalTight, 6)));
      const diff = maxAbsDiff(await s1.data(), await s2.data());
      assert(diff < 1e-4, `${backend} ${model.name} scores differ by ${diff}`);
      tf.dispose([s1, s2]);
      model.params.dispose();
    }
  }
});

Deno.test("train() with resume continues a stopped run as if it had never stopped", async () => {
  await selectBackend("cpu");
  const full = await Deno.makeTempDir();
  const cut = await Deno.makeTempDir();
  const hooksOf = (out: string, resume = false) => ({
    out,
    checkpointInfo: { data: { kind: "synthetic", seed: 5 }, itemTokens: data.vocab.items },
    resume,
  });
  const whole = new SasRec(SMALL);
  const uninterrupted = await train(
    whole,
    split,
    data.numItems,
    { ...FAST, epochs: 4 },
    hooksOf(full),
  );
  // The same run stopped after epoch 2 (as a crash would leave it), then resumed by a
  // fresh model in a new "process".
  const first = new SasRec(SMALL);
  await train(first, split, data.numItems, { ...FAST, epochs: 2 }, hooksOf(cut));
  first.params.dispose();
  // The same state as a version before per-parameter Adam steps wrote it (no adamSteps).
  const older = await Deno.makeTempDir();
  // The whole run folder as it stood (the best epoch may lie in the first two).
  for (const folder of ["state", "checkpoint"]) await Deno.mkdir(`${older}/${folder}`);
  for (const f of ["log.jsonl", "model.safetensors", "state/model.json", "state/weights.bin"]) {
    await Deno.copyFile(`${cut}/${f}`, `${older}/${f}`);
  }
  for (const f of ["model.json", "weights.bin"]) {
    await Deno.copyFile(`${cut}/checkpoint/${f}`, `${older}/checkpoint/${f}`);
  }
  {
    const { meta, values } = await readCheckpoint(`${older}/state`);
    const { format: _f, values: _v, checksum: _c, ...rest } = meta;
    const { adamSteps, ...resume } = rest.resume!;
    const own = rest.params.filter((r) => !r.name.startsWith("adam."));
    assertEquals(adamSteps, own.map(() => rest.resume!.step)); // every step reached all
    await writeCheckpoint(`${older}/state`, { ...rest, resume }, values);
  }
  const second = new SasRec({ ...SMALL, seed: 99 }); // its own initial values are overwritten
  await assertRejects(
    () => train(second, split, data.numItems, { ...FAST, epochs: 4 }, hooksOf(cut, true)),
    RangeError,
    'config field "seed"',
  );
  second.params.dispose();
  const third = new SasRec(SMALL);
  const resumed = await train(
    third,
    split,
    data.numItems,
    { ...FAST, epochs: 4 },
    hooksOf(cut, true),
  );
  assertEquals(resumed.history.map((h) => h.epoch), [1, 2, 3, 4]);
  // Adam's moments, step counts and bias corrections come back exactly (the powers are
  // rebuilt product by product, as the uninterrupted run built them): bit for bit.
  assertEquals(
    resumed.history.map((h) => h.loss),
    uninterrupted.history.map((h) => h.loss),
  );
  assertEquals(resumed.bestEpoch, uninterrupted.bestEpoch);
  const pa = await whole.params.toArrays();
  assertEquals((await third.params.toArrays()).values, pa.values);
  // So does a state written before adamSteps existed.
  const fromOlder = new SasRec(SMALL);
  await train(fromOlder, split, data.numItems, { ...FAST, epochs: 4 }, hooksOf(older, true));
  assertEquals((await fromOlder.params.toArrays()).values, pa.values);
  fromOlder.params.dispose();
  await Deno.remove(older, { recursive: true });
  const log = (await Deno.readTextFile(`${cut}/log.jsonl`)).trim().split("\n");
  assertEquals(log.map((l) => JSON.parse(l).epoch), [1, 2, 3, 4]);
  // A different training setting is refused, naming it.
  const fourth = new SasRec(SMALL);
  await assertRejects(
    () =>
      train(
        fourth,
        split,
        data.numItems,
        { ...FAST, epochs: 6, learningRate: 0.01 },
        hooksOf(cut, true),
      ),
    RangeError,
    '"learningRate"',
  );
  for (const m of [whole, third, fourth]) m.params.dispose();
  await Deno.remove(full, { recursive: true });
  await Deno.remove(cut, { recursive: true });
});

Deno.test("SIGMA on wasm's kernels (the GRU recurrence, dropout) resumes bit for bit", async () => {
  // wasm runs SIGMA's gated GRU and its dropout masks in bmm.wasm (when tfjs's threaded
  // build runs): a resumed run must still equal the uninterrupted one exactly.
  await selectBackend("wasm");
  const config = { numItems: data.numItems, hidden: 16, heads: 2, inner: 32, maxLength: 12 };
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  const hooksOf = (out: string, resume = false) => ({
    out,
    checkpointInfo: { data: { kind: "synthetic", seed: 5 }, itemTokens: data.vocab.items },
    resume,
  });
  const whole = new Sigma({ ...config, seed: 3 });
  const uninterrupted = await train(
    whole,
    split,
    data.numItems,
    { ...FAST, epochs: 3 },
    hooksOf(dirs[0]),
  );
  const first = new Sigma({ ...config, seed: 3 });
  await train(first, split, data.numItems, { ...FAST, epochs: 1 }, hooksOf(dirs[1]));
  const resumedModel = new Sigma({ ...config, seed: 3 });
  const resumed = await train(
    resumedModel,
    split,
    data.numItems,
    { ...FAST, epochs: 3 },
    hooksOf(dirs[1], true),
  );
  assertEquals(resumed.history.map((h) => h.loss), uninterrupted.history.map((h) => h.loss));
  assertEquals(
    (await resumedModel.params.toArrays()).values,
    (await whole.params.toArrays()).values,
  );
  for (const m of [whole, first, resumedModel]) m.params.dispose();
  for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  await selectBackend("cpu");
});

Deno.test("train() resumes a run saved before a config field existed, as that field's default", async () => {
  await selectBackend("cpu");
  const out = await Deno.makeTempDir();
  const small = { ...SMALL, interests: 2 };
  const first = new Sigma(small);
  await train(first, split, data.numItems, { ...FAST, epochs: 1 }, { out, overwrite: true });
  // The state as an earlier version wrote it: no attentionDropout in the config.
  const { meta, values } = await readCheckpoint(`${out}/state`);
  const { attentionDropout: _, ...older } = meta.config as Record<string, unknown>;
  const { format: _f, values: _v, checksum: _c, ...rest } = meta;
  await writeCheckpoint(`${out}/state`, { ...rest, config: older }, values);
  const resumed = new Sigma(small);
  const r = await train(resumed, split, data.numItems, { ...FAST, epochs: 2 }, {
    out,
    resume: true,
  });
  assertEquals(r.history.map((h) => h.epoch), [1, 2]);
  // A value other than the default is a different run, and refused by name.
  const other = new Sigma({ ...small, attentionDropout: 0.3 });
  await assertRejects(
    () => train(other, split, data.numItems, { ...FAST, epochs: 3 }, { out, resume: true }),
    RangeError,
    'config field "attentionDropout" is 0, this run has 0.3',
  );
  for (const m of [first, resumed, other]) m.params.dispose();
  await Deno.remove(out, { recursive: true });
});

Deno.test("train() with resume and no saved state names the missing folder", async () => {
  await selectBackend("cpu");
  const out = await Deno.makeTempDir();
  const model = new SasRec(SMALL);
  await assertRejects(
    () => train(model, split, data.numItems, { ...FAST, epochs: 1 }, { out, resume: true }),
    Deno.errors.NotFound,
    `${out}/state`,
  );
  model.params.dispose();
  await Deno.remove(out, { recursive: true });
});

Deno.test("trainStep() with an objective minimises that loss part alone", async () => {
  await selectBackend("cpu");
  const model = new Sigma({ ...SMALL, interests: 3 });
  const vars = model.params.list();
  const before = await model.params.toArrays();
  const optimizer = new Adam(1e-2);
  const batch = tinyTrainBatch(4, 6, data.numItems);
  // L_orth depends on the category embeddings only: no other parameter may move.
  const { values } = trainStep(model, batch, stepSeeds(1, 0), optimizer, vars, 2048, {
    objective: "orth",
  });
  values.dispose();
  const after = await model.params.toArrays();
  let offset = 0;
  for (const r of model.params.records()) {
    const n = r.shape.reduce((a, b) => a * b, 1);
    const moved = maxAbsDiff(
      before.values.subarray(offset, offset + n),
      after.values.subarray(offset, offset + n),
    );
    if (r.name === "category") assert(moved > 0, "the category embeddings did not move");
    else assertEquals(moved, 0, `${r.name} moved by ${moved}`);
    offset += n;
  }
  assertThrows(
    () => trainStep(model, batch, stepSeeds(1, 1), optimizer, vars, 2048, { objective: "nope" }),
    RangeError,
    '"nope"',
  );
  optimizer.dispose();
  model.params.dispose();
});

Deno.test("SasRec() loss option: each kind starts at its uniform-guess value and trains", async () => {
  await selectBackend("cpu");
  const batch = tinyTrainBatch(8, 10, data.numItems);
  // At initialisation every score is near 0 (item embeddings ~N(0, 0.02)), so each loss
  // sits at the value of a uniform guess: log N for the full softmax, log(n + 1) for n
  // sampled negatives, 2 log 2 for one negative under binary cross-entropy.
  const kinds: [Partial<SasRecConfig>, number][] = [
    [{}, Math.log(data.numItems)],
    [{ loss: "softmax" }, Math.log(data.numItems)],
    [{ loss: "sampled", negatives: 7 }, Math.log(8)],
    [{ loss: "bce" }, 2 * Math.log(2)],
  ];
  for (const [config, uniform] of kinds) {
    const model = new SasRec({ ...SMALL, ...config, dropout: 0 });
    const vars = model.params.list();
    const optimizer = new Adam(1e-2);
    const losses: number[] = [];
    for (let step = 0; step < 15; step++) {
      const { values } = trainStep(model, batch, stepSeeds(3, step), optimizer, vars, 2048);
      losses.push((await values.data())[0]);
      values.dispose();
    }
    const label = JSON.stringify(config);
    assert(
      Math.abs(losses[0] - uniform) < 0.05,
      `${label}: first loss ${losses[0]}, not ${uniform}`,
    );
    assert(losses[14] < 0.8 * losses[0], `${label}: loss ${losses[0]} -> ${losses[14]}`);
    optimizer.dispose();
    model.params.dispose();
  }
});

Deno.test("SasRec() rejects bad config fields, naming the field and value", () => {
  const bad: [Partial<SasRecConfig>, string][] = [
    [{ loss: "hinge" as "bce" }, "hinge"],
    [{ negatives: 0 }, "negatives"],
    [{ hidden: 10, heads: 4 }, "divisible"],
    [{ layers: 1.5 }, "layers"],
    [{ dropout: -0.1 }, "dropout"],
    [{ numItems: 0 }, "numItems"],
  ];
  for (const [config, word] of bad) {
    assertThrows(() => new SasRec({ ...SMALL, ...config }), RangeError, word);
  }
});

Deno.test("train() and the models take only integer seeds from 0 to 2^32 - 1, naming the field", async () => {
  await selectBackend("cpu");
  for (const seed of [1.5, -1, 2 ** 32, NaN]) {
    const model = new SasRec(SMALL);
    await assertRejects(
      () => train(model, split, data.numItems, { seed, epochs: 1 }),
      RangeError,
      "seed",
    );
    model.params.dispose();
    assertThrows(() => new SasRec({ ...SMALL, seed }), RangeError, `seed must be an integer`);
  }
});

Deno.test("train() with no training position stops before writing anything, saying why", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  const model = new SasRec(SMALL);
  const short = { ...split, train: split.train.map((s) => s.subarray(0, 1)) };
  await assertRejects(
    () => train(model, short, data.numItems, { epochs: 1 }, { out: `${dir}/run` }),
    RangeError,
    "no training positions",
  );
  assertEquals([...Deno.readDirSync(dir)], []);
  model.params.dispose();
  await Deno.remove(dir, { recursive: true });
});

/** A model of three parameters whose middle one only the even steps' loss uses. */
class SometimesUnused implements SequentialModel {
  readonly name = "sometimes-unused";
  readonly config = {};
  readonly params = new ParamStore(5);
  readonly first = this.params.create("first", [3], "normal");
  readonly middle = this.params.create("middle", [4, 4], "normal");
  readonly last = this.params.create("last", [2], "normal");
  loss(_batch: TrainBatch, _seeds: () => number, step?: number) {
    let loss = tf.add(tf.sum(tf.square(this.first)), tf.sum(tf.square(this.last)));
    if ((step ?? 0) % 2 === 0) loss = tf.add(loss, tf.sum(tf.square(this.middle)));
    return { loss: loss as tf.Scalar, parts: {} };
  }
  scores(): tf.Tensor2D {
    throw new Error("not used");
  }
}

/**
 * SASRec without dropout, plus whatever a subclass adds: the base of the test models below that
 * add a parameter and a loss term to a real model (scores are SASRec's unless overridden).
 */
abstract class SasRecPlus implements SequentialModel {
  abstract readonly name: string;
  readonly inner = new SasRec({ ...SMALL, dropout: 0 });
  readonly config = this.inner.config;
  readonly params = this.inner.params;
  abstract loss(
    batch: TrainBatch,
    seeds: () => number,
    step?: number,
    epoch?: number,
  ): { loss: tf.Scalar; parts: Record<string, tf.Scalar> };
  scores(batch: EvalBatch): tf.Tensor2D {
    return this.inner.scores(batch);
  }
}

/**
 * SASRec plus one parameter, `flip`, whose loss term is `-c(step) * flip`: Adam raises it by
 * a known amount each step. While `flip < 0` the scores are SASRec's; once it is above 0
 * every score is 0, so every ranking ties and (ties pessimistic) validation recall is 0.
 */
class FlipsAfterEpochOne extends SasRecPlus {
  readonly name = "flips-after-epoch-one";
  readonly flip: tf.Variable;
  constructor(init: number) {
    super();
    this.flip = this.params.create("flip", [1], init);
  }
  loss(batch: TrainBatch, seeds: () => number, step = 0) {
    const { loss, parts } = this.inner.loss(batch, seeds);
    const pull = tf.mul(tf.sum(this.flip), -FLIP_GRADIENTS[step % FLIP_GRADIENTS.length]);
    return { loss: tf.add(loss, pull) as tf.Scalar, parts };
  }
  override scores(batch: EvalBatch): tf.Tensor2D {
    const keep = tf.relu(tf.sign(tf.neg(this.flip))); // 1 while flip < 0, then 0
    return tf.mul(this.inner.scores(batch), keep) as tf.Tensor2D;
  }
}

/** The size of flip's gradient at each step: varied, so betas and bias correction matter. */
const FLIP_GRADIENTS = [1, 4, 0.25, 2];

/** flip after each of `steps` Adam steps from 0 with FLIP_GRADIENTS, in float64. */
function adamReference(steps: number, lr: number): number[] {
  const [beta1, beta2, eps] = [0.9, 0.999, 1e-8];
  let [m, v, x] = [0, 0, 0];
  const out: number[] = [];
  for (let t = 1; t <= steps; t++) {
    const g = -FLIP_GRADIENTS[(t - 1) % FLIP_GRADIENTS.length];
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    x -= lr * (m / (1 - beta1 ** t)) / (Math.sqrt(v / (1 - beta2 ** t)) + eps);
    out.push(x);
  }
  return out;
}

Deno.test("train() keeps the best epoch, not the last, and steps with bias-corrected Adam", async () => {
  await selectBackend("cpu");
  const lr = 1e-3;
  const path = adamReference(6, lr);
  // Start so that flip is below 0 after epoch 1 and above 0 from epoch 2 (one step each).
  const init = -(path[0] + path[1]) / 2;
  const model = new FlipsAfterEpochOne(Math.fround(init));
  const out = await Deno.makeTempDir();
  const seen: number[] = [];
  const oneStep = { batchSize: 128, evalBatchSize: 64, learningRate: lr }; // 80 users: 1 batch
  const result = await train(model, split, data.numItems, { ...oneStep, epochs: 8, patience: 2 }, {
    out,
    checkpointInfo: { data: { kind: "synthetic", seed: 5 }, itemTokens: data.vocab.items },
    onWrite: (what) => {
      if (what === "log") seen.push(model.flip.dataSync()[0]);
    },
  });
  // Adam: each epoch's flip is the float64 reference's, to float32 rounding of 1 - 0.999^t
  // (3e-5 of a step of lr = 1e-3). No bias correction would make the first step 3.16 lr;
  // beta2 0.99 instead of 0.999 moves the second by 2e-6.
  assertEquals(seen.length, 3);
  seen.forEach((f, e) => {
    const want = init + path[e];
    assert(Math.abs(f - want) <= 2e-7, `epoch ${e + 1}: flip ${f}, Adam gives ${want}`);
  });
  // Selection: epoch 1 ranks, epochs 2 and 3 tie everything; patience 2 stops after 3.
  const recalls = result.history.map((h) => h.valid!["recall@20"]);
  assert(recalls[0] > 0, `epoch 1 recall ${recalls[0]}`);
  assertEquals(recalls.slice(1), [0, 0]);
  assertEquals([result.bestEpoch, result.stopped], [1, "patience"]);
  // The model, the checkpoint and the model file hold epoch 1's weights, not epoch 3's.
  assertEquals(model.flip.dataSync()[0], seen[0]);
  const again = await evaluateModel(model, split.valid, data.numItems, 64, SMALL.maxLength!);
  assertEquals(again, result.valid);
  const { meta, values } = await readCheckpoint(`${out}/checkpoint`);
  assertEquals([meta.epoch, values[values.length - 1]], [1, seen[0]]);
  const file = await decodeModelFile(await Deno.readFile(`${out}/model.safetensors`));
  assertEquals([file.info.epoch, file.values[file.values.length - 1]], [1, seen[0]]);
  model.params.dispose();
  await Deno.remove(out, { recursive: true });
});

/** SASRec plus `drift`, whose loss term `-drift` has gradient -1 at every step. */
class Drifts extends SasRecPlus {
  readonly name = "drifts";
  readonly drift = this.params.create("drift", [1], "zeros");
  loss(batch: TrainBatch, seeds: () => number) {
    const { loss, parts } = this.inner.loss(batch, seeds);
    return { loss: tf.sub(loss, tf.sum(this.drift)) as tf.Scalar, parts };
  }
}

/** SASRec plus `spike`, whose loss term `SPIKE * spike` at step 0 alone is a gradient spike. */
class SpikesOnce extends SasRecPlus {
  readonly name = "spikes-once";
  readonly spike = this.params.create("spike", [2], "zeros");
  constructor(readonly hint?: string) {
    super();
  }
  loss(batch: TrainBatch, seeds: () => number, step = 0) {
    const { loss, parts } = this.inner.loss(batch, seeds);
    const weight = tf.tensor1d(step === 0 ? [SPIKE, 0] : [0, 0]);
    return { loss: tf.add(loss, tf.sum(tf.mul(this.spike, weight))) as tf.Scalar, parts };
  }
  frozenOptimizerHint(): string | undefined {
    return this.hint;
  }
}
const SPIKE = 1e4;

Deno.test("Adam.largestSecondMoment() is the largest (1 - beta2) g^2 after a step, and its variable", async () => {
  await selectBackend("cpu");
  const a = tf.variable(tf.zeros([3]), true, "second-moment-a");
  const b = tf.variable(tf.zeros([2, 2]), true, "second-moment-b");
  const optimizer = new Adam(1e-3);
  assertEquals(await optimizer.largestSecondMoment(), null);
  const step = (grads: Record<string, tf.Tensor>) => {
    optimizer.applyGradients(grads);
    tf.dispose(Object.values(grads));
  };
  step({
    "second-moment-a": tf.tensor1d([0.5, -3, 1]),
    "second-moment-b": tf.tensor2d([[2, -2.5], [0, 1]]),
  });
  const first = await optimizer.largestSecondMoment();
  assertEquals(first?.param, "second-moment-a");
  assert(Math.abs(first!.v - 0.001 * 9) < 1e-9, `v ${first?.v}`);
  // Decays by beta2 a step; a larger gradient elsewhere takes over.
  step({ "second-moment-b": tf.tensor2d([[0, 0], [0, 4]]) });
  const second = await optimizer.largestSecondMoment();
  assertEquals(second?.param, "second-moment-b");
  assert(Math.abs(second!.v - (0.999 * 0.001 + 0.001 * 16)) < 1e-8, `v ${second?.v}`);
  optimizer.dispose();
  tf.dispose([a, b]);
});

Deno.test("train() logs Adam's largest second moment each epoch and warns once when a spike froze it", async () => {
  await selectBackend("cpu");
  const run = async (model: SequentialModel & { config: { maxLength: number } }) => {
    const out = await Deno.makeTempDir();
    const said: string[] = [];
    const result = await train(model, split, data.numItems, {
      batchSize: 128, // 80 users: one step per epoch
      evalBatchSize: 64,
      epochs: 3,
    }, {
      out,
      progress: (text) => said.push(text),
      checkpointInfo: { data: { kind: "synthetic", seed: 5 }, itemTokens: data.vocab.items },
    });
    const logged = Deno.readTextFileSync(`${out}/log.jsonl`).trim().split("\n").map((l) =>
      JSON.parse(l).adamMaxV
    );
    model.params.dispose();
    await Deno.remove(out, { recursive: true });
    return { result, logged, warnings: said.filter((t) => t.startsWith("warning:")) };
  };
  const plain = await run(new SasRec({ ...SMALL, dropout: 0 }));
  assertEquals(plain.warnings, []);
  assertEquals(plain.logged.length, 3);
  for (const m of plain.logged) assert(m.v > 0 && m.v < 1, JSON.stringify(m));
  assertEquals(plain.result.history.map((h) => h.adamMaxV), plain.logged);
  // v = (1 - 0.999) 1e8 = 1e5 after the spike, 0.999 of it a step later: one warning, with
  // the model's hint.
  const spiked = await run(new SpikesOnce("bound it"));
  assertEquals(spiked.logged.map((m) => m.param), ["spike", "spike", "spike"]);
  assert(Math.abs(spiked.logged[0].v - 1e5) < 10, JSON.stringify(spiked.logged[0]));
  assertEquals(spiked.warnings.length, 1);
  assert(
    /^warning: after epoch 1 Adam's second moment on "spike" is 1\.00e\+5: .*; bound it\n$/.test(
      spiked.warnings[0],
    ),
    spiked.warnings[0],
  );
  const unhinted = await run(new SpikesOnce());
  assert(unhinted.warnings[0].endsWith("to thaw\n"), unhinted.warnings[0]);
  // SIGMA names its cause unless its log-variance is bounded.
  const unbounded = new Sigma(SMALL);
  assert(unbounded.frozenOptimizerHint()!.includes("--interest-log-var-bound"));
  unbounded.params.dispose();
  const bounded = new Sigma({ ...SMALL, interestLogVarBound: 10 });
  assertEquals(bounded.frozenOptimizerHint(), undefined);
  bounded.params.dispose();
});

Deno.test("StepLR: the learning rate of epoch e is lr * lrDecay^floor((e - 1) / lrDecayEvery)", async () => {
  await selectBackend("cpu");
  const o = { ...TRAIN_DEFAULTS, learningRate: 0.1, lrDecayEvery: 3, lrDecay: 0.5 };
  assertEquals([1, 3, 4, 6, 7, 10].map((e) => learningRateAt(o, e)), [
    0.1,
    0.1,
    0.05,
    0.05,
    0.025,
    0.0125,
  ]);
  assertEquals(learningRateAt({ ...o, lrDecayEvery: 0 }, 500), 0.1);
  // Through train(): with a constant gradient every Adam step moves by the learning rate,
  // so one step per epoch moves `drift` by exactly that epoch's rate.
  const model = new Drifts();
  const out = await Deno.makeTempDir();
  const seen: number[] = [];
  await train(model, split, data.numItems, {
    batchSize: 128, // 80 users: one step per epoch
    evalBatchSize: 64,
    epochs: 4,
    learningRate: 1e-3,
    lrDecayEvery: 1,
    lrDecay: 0.5,
  }, {
    out,
    checkpointInfo: { data: { kind: "synthetic", seed: 5 }, itemTokens: data.vocab.items },
    onWrite: (what) => {
      if (what === "log") seen.push(model.drift.dataSync()[0]);
    },
  });
  const steps = seen.map((v, i) => v - (i === 0 ? 0 : seen[i - 1]));
  [1e-3, 5e-4, 2.5e-4, 1.25e-4].forEach((rate, i) => {
    assert(
      Math.abs(steps[i] - rate) <= 1e-4 * rate + 1e-9,
      `epoch ${i + 1}: moved ${steps[i]}, rate ${rate}`,
    );
  });
  model.params.dispose();
  await Deno.remove(out, { recursive: true });
});

Deno.test("weightDecay adds decay * parameter to the gradient of every parameter the loss reaches", async () => {
  await selectBackend("cpu");
  for (const weightDecay of [0, 0.1]) {
    for (const step of [0, 1]) {
      const model = new SometimesUnused();
      const vars = model.params.list();
      const before = vars.map((v) => v.dataSync().slice());
      const optimizer = new Adam(1e-2, 0.9, 0.999, 1e-7);
      const batch = tinyTrainBatch(2, 3, data.numItems);
      trainStep(model, batch, stepSeeds(1, step), optimizer, vars, 4096, { step, weightDecay })
        .values.dispose();
      const middle = vars.findIndex((v) => v === model.middle);
      const moved = Array.from(model.middle.dataSync(), (x, i) => x - before[middle][i]);
      if (step === 1) {
        // Odd steps do not reach "middle": no gradient, so no decay and no step either, as
        // PyTorch skips a parameter whose gradient is None.
        assert(moved.every((m) => m === 0), `step 1, decay ${weightDecay}: moved`);
      } else {
        // Adam's first step is -lr g / (|g| + eps), g = 2 p + decay p.
        moved.forEach((m, i) => {
          const g = (2 + weightDecay) * before[middle][i];
          const want = -1e-2 * g / (Math.abs(g) + 1e-7);
          assert(Math.abs(m - want) <= 1e-6, `entry ${i}: moved ${m}, Adam ${want}`);
        });
      }
      optimizer.dispose();
      model.params.dispose();
    }
  }
});

Deno.test("Adam: a parameter without a gradient stays put and keeps its own step count (PyTorch's Adam), split or not", async () => {
  await selectBackend("cpu");
  for (const maxPositions of [4096, 12]) { // one pass per step, and steps split into pieces
    const model = new SometimesUnused();
    const vars = model.params.list();
    const middle = vars.indexOf(model.middle);
    const first = vars.indexOf(model.first);
    const start = vars.map((v) => Array.from(v.dataSync()));
    const optimizer = new Adam(1e-2);
    const batch = tinyTrainBatch(6, 8, data.numItems);
    const seen: number[][] = [];
    for (let step = 1; step <= 6; step++) { // "middle" is reached at steps 2, 4 and 6 only
      trainStep(model, batch, stepSeeds(3, step), optimizer, vars, maxPositions, { step })
        .values.dispose();
      seen.push(Array.from(model.middle.dataSync()));
    }
    // float64 Adam of the loss sum(x^2), taking a step only when reached: its first step at
    // step 2 is bias-corrected as a first step (tfjs's shared count made it step 2's).
    const reference = (x0: number, reached: (t: number) => boolean) => {
      let [m, v, x, t] = [0, 0, x0, 0];
      const out: number[] = [];
      for (let step = 1; step <= 6; step++) {
        if (reached(step)) {
          t += 1;
          const g = 2 * x;
          m = 0.9 * m + 0.1 * g;
          v = 0.999 * v + 0.001 * g * g;
          x -= 1e-2 * (m / (1 - 0.9 ** t)) / (Math.sqrt(v / (1 - 0.999 ** t)) + 1e-8);
        }
        out.push(x);
      }
      return out;
    };
    start[middle].forEach((x0, i) => {
      const want = reference(x0, (t) => t % 2 === 0);
      seen.forEach((row, s) => {
        assert(
          Math.abs(row[i] - want[s]) <= 1e-6,
          `middle[${i}] step ${s + 1}: ${row[i]} vs ${want[s]}`,
        );
      });
    });
    const firstWant = start[first].map((x0) => reference(x0, () => true)[5]);
    Array.from(model.first.dataSync()).forEach((x, i) => {
      assert(Math.abs(x - firstWant[i]) <= 1e-6, `first[${i}]: ${x} vs ${firstWant[i]}`);
    });
    const states = await optimizer.state(vars);
    assertEquals(states.map((x) => x.steps), vars.map((v) => v === model.middle ? 3 : 6));
    optimizer.dispose();
    model.params.dispose();
  }
});

/** SASRec plus a parameter `late` that the loss reaches from epoch 2 on (a GRU that joins late). */
class JoinsLate extends SasRecPlus {
  readonly name = "sasrec"; // resume checks the saved config against a known model's defaults
  readonly late = this.params.create("late", [3], "normal");
  loss(batch: TrainBatch, seeds: () => number, _step?: number, epoch = 1) {
    const { loss, parts } = this.inner.loss(batch, seeds);
    if (epoch < 2) return { loss, parts };
    return { loss: tf.add(loss, tf.sum(tf.square(this.late))) as tf.Scalar, parts };
  }
}

Deno.test("a state written before per-parameter Adam steps resumes a parameter that had no gradient yet as joining now", async () => {
  await selectBackend("cpu");
  const [full, cut] = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  const whole = new JoinsLate();
  await train(whole, split, data.numItems, { ...FAST, epochs: 3 }, { out: full });
  const first = new JoinsLate();
  await train(first, split, data.numItems, { ...FAST, epochs: 1 }, { out: cut });
  first.params.dispose();
  // The state as the earlier trainer wrote it: no adamSteps, and (tfjs's Adam having given
  // `late` zero gradients) its moments are zeros.
  const { meta, values } = await readCheckpoint(`${cut}/state`);
  const { format: _f, values: _v, checksum: _c, ...rest } = meta;
  const { adamSteps, ...resume } = rest.resume!;
  const late = rest.params.findIndex((r) => r.name === "late");
  assertEquals(adamSteps![late], 0);
  await writeCheckpoint(`${cut}/state`, { ...rest, resume }, values);
  const resumed = new JoinsLate();
  await train(resumed, split, data.numItems, { ...FAST, epochs: 3 }, { out: cut, resume: true });
  // `late` took its first step at epoch 2 as a first step, as without the interruption.
  assertEquals(
    (await resumed.params.toArrays()).values,
    (await whole.params.toArrays()).values,
  );
  for (const m of [whole, resumed]) m.params.dispose();
  for (const dir of [full, cut]) await Deno.remove(dir, { recursive: true });
});

/** Two parameters: `always` every piece reaches, `second` only the second piece of a step. */
class SecondPieceOnly implements SequentialModel {
  readonly name = "second-piece-only";
  readonly config = {};
  readonly params = new ParamStore(7);
  readonly always = this.params.create("always", [3], "normal");
  readonly second = this.params.create("second", [2], "normal");
  calls = 0;
  loss(_batch: TrainBatch) {
    let loss = tf.sum(tf.square(this.always));
    if (this.calls++ % 3 === 1) loss = tf.add(loss, tf.sum(tf.square(this.second)));
    return { loss: loss as tf.Scalar, parts: {} };
  }
  scores(): tf.Tensor2D {
    throw new Error("not used");
  }
}

Deno.test("trainStep: a parameter only a middle piece of a split batch reaches gets that piece's gradient, with no tensor left behind", async () => {
  await selectBackend("cpu");
  const model = new SecondPieceOnly();
  const vars = model.params.list();
  const optimizer = new Adam(1e-2);
  // 3 rows of 2 targets each, pieces of at most 2 positions: three pieces a step.
  const batch = {
    batch: 3,
    length: 3,
    inputs: Int32Array.of(1, 2, 3, 1, 2, 3, 1, 2, 3),
    targets: Int32Array.of(0, 3, 4, 0, 3, 4, 0, 3, 4),
  };
  assertEquals(splitBatch(batch, 2).length, 3);
  const counts: number[] = [];
  let previous = Array.from(model.second.dataSync());
  for (let step = 0; step < 4; step++) {
    trainStep(model, batch, stepSeeds(1, step), optimizer, vars, 2, { step }).values.dispose();
    counts.push(tf.memory().numTensors);
    const now = Array.from(model.second.dataSync());
    if (step === 0) {
      // A first Adam step moves each entry by the learning rate, against the sign of its
      // gradient: 2 x (a third of the batch's positions) x the parameter.
      now.forEach((x, i) => {
        const want = previous[i] - 1e-2 * Math.sign(previous[i]);
        assert(Math.abs(x - want) <= 1e-6, `second[${i}]: ${x} vs ${want}`);
      });
    }
    previous = now;
  }
  assertEquals(new Set(counts).size, 1, `tensor counts ${counts}`);
  assertEquals((await optimizer.state(vars)).map((x) => x.steps), [4, 4]);
  optimizer.dispose();
  model.params.dispose();
});

Deno.test("splitBatch groups rows of similar length, so short rows are not padded to the longest", () => {
  // 8 rows of length 8, alternately 2 items (1 target) and 8 items (7 targets), left-padded.
  const rows = 8;
  const inputs = new Int32Array(rows * 8);
  const targets = new Int32Array(rows * 8);
  for (let r = 0; r < rows; r++) {
    const n = r % 2 === 0 ? 2 : 8;
    for (let i = 8 - n; i < 8; i++) inputs[r * 8 + i] = 1 + ((r + i) % 5);
    for (let i = 8 - n + 1; i < 8; i++) targets[r * 8 + i - 1] = 1 + ((r + i) % 5);
  }
  const batch = { batch: rows, length: 8, inputs, targets };
  const pieces = splitBatch(batch, 10);
  assert(pieces.length > 1, "no split");
  // Every row is in exactly one piece; the short rows' pieces are 2 columns wide.
  assertEquals(pieces.reduce((n, p) => n + p.batch, 0), rows);
  const short = pieces.filter((p) => p.length === 2);
  assertEquals(short.reduce((n, p) => n + p.batch, 0), rows / 2);
  assert(pieces.every((p) => p.length === 2 || p.length === 8), `${pieces.map((p) => p.length)}`);
});

Deno.test("Adam follows tfjs's Adam bit for bit when every parameter gets a gradient at every step", async () => {
  await selectBackend("cpu");
  const make = () => new SasRec({ ...SMALL, dropout: 0, seed: 8 });
  const [ours, theirs] = [make(), make()];
  const adam = new Adam(1e-2, 0.9, 0.999, 1e-8);
  const tfAdam = tf.train.adam(1e-2, 0.9, 0.999, 1e-8);
  const batch = tinyTrainBatch(4, 8, SMALL.numItems);
  for (let step = 0; step < 5; step++) {
    const pairs: [SasRec, (g: Record<string, tf.Tensor>) => void][] = [
      [ours, (g) => adam.applyGradients(g)],
      [theirs, (g) => tfAdam.applyGradients(g as Parameters<typeof tfAdam.applyGradients>[0])],
    ];
    for (const [model, apply] of pairs) {
      const vars = model.params.list();
      const { grads, value } = tf.variableGrads(
        () => model.loss(batch, stepSeeds(2, step)).loss,
        vars,
      );
      apply(grads);
      tf.dispose([value, ...Object.values(grads)]);
    }
  }
  const a = (await ours.params.toArrays()).values;
  const b = (await theirs.params.toArrays()).values;
  assertEquals(a, b);
  adam.dispose();
  tfAdam.dispose();
  ours.params.dispose();
  theirs.params.dispose();
});

const TRAIN_URL = new URL("../train.ts", import.meta.url).href;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** The run {@linkcode trainUntil} kills and {@linkcode resumeKilled} finishes. */
const KILLED_RUN = {
  batchSize: 32,
  evalBatchSize: 64,
  epochs: 4,
  evalEvery: 2,
  learningRate: 1e-3,
};

/** Resumes the run in `out` in this process, to its end. */
async function resumeKilled(out: string) {
  const model = new SasRec(SMALL);
  try {
    return await train(model, split, data.numItems, KILLED_RUN, {
      out,
      resume: true,
      progress: () => {},
    });
  } finally {
    model.params.dispose();
  }
}

/**
 * Trains SMALL for 4 epochs, validating every second one (so a best epoch follows epochs that
 * are not), into `out` in a subprocess that exits when `stop` is written.
 */
async function trainUntil(out: string, stop: { what: string; epoch: number } | null) {
  const script = `
    import { leaveOneOut, SasRec, selectBackend, syntheticDataset, train } from "${TRAIN_URL}";
    await selectBackend("cpu");
    const data = syntheticDataset({ seed: 5, users: 80, items: 40, maxLength: 12 });
    const model = new SasRec(${JSON.stringify(SMALL)});
    const stop = ${JSON.stringify(stop)};
    await train(model, leaveOneOut(data).split, data.numItems, ${JSON.stringify(KILLED_RUN)},
      { out: ${JSON.stringify(out)}, onWrite: (what, epoch) => {
        if (stop && what === stop.what && epoch === stop.epoch) Deno.exit(77);
      } });
  `;
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--config", CONFIG, script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: result.code, stderr: new TextDecoder().decode(result.stderr) };
}

Deno.test("a run killed between any two of an epoch's writes, or inside one, resumes to the uninterrupted result", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  const whole = await trainUntil(`${dir}/whole`, null);
  assertEquals(whole.code, 0, whole.stderr);
  const wholeLog = (await Deno.readTextFile(`${dir}/whole/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assert(wholeLog[3].best, "epoch 4 must be a best epoch after the unvalidated epoch 3");
  const wholeModel = await Deno.readFile(`${dir}/whole/model.safetensors`);
  // Every write of every epoch: the log line, the state, and the best files where written.
  const stops = wholeLog.flatMap((h, i) =>
    ["log", "state", ...(h.best ? ["best"] : [])].map((what) => ({ what, epoch: i + 1 }))
  );
  for (const stop of stops) {
    const what = `${stop.what}@${stop.epoch}`;
    const out = `${dir}/${what}`;
    const killed = await trainUntil(out, stop);
    assertEquals(killed.code, 77, `not stopped after ${what}: ${killed.stderr}`);
    const resumed = await resumeKilled(out);
    assertEquals(resumed.history.map((h) => h.loss), wholeLog.map((h) => h.loss), what);
    assertEquals(resumed.bestEpoch, wholeLog.findLastIndex((h) => h.best) + 1, what);
    const { meta } = await readCheckpoint(`${out}/checkpoint`);
    assertEquals(meta.epoch, resumed.bestEpoch, what);
    assertEquals(await Deno.readFile(`${out}/model.safetensors`), wholeModel, what);
  }
  // What a kill inside a write leaves: an append cut short (a full disk does the same), and
  // epoch 1's state folder half written. Neither may block the resume or change its result.
  const cuts: [{ what: string; epoch: number }, (out: string) => Promise<void>][] = [
    [{ what: "state", epoch: 2 }, async (out) => {
      await Deno.writeTextFile(`${out}/log.jsonl`, '{"epoch":3,"lo', { append: true });
    }],
    [{ what: "log", epoch: 1 }, async (out) => {
      await Deno.mkdir(`${out}/state.next`);
      await Deno.writeTextFile(`${out}/state.next/weights.bin`, "part");
    }],
  ];
  for (const [stop, cut] of cuts) {
    const out = `${dir}/cut-${stop.what}@${stop.epoch}`;
    assertEquals((await trainUntil(out, stop)).code, 77);
    await cut(out);
    const resumed = await resumeKilled(out);
    assertEquals(resumed.history.map((h) => h.loss), wholeLog.map((h) => h.loss), out);
    assertEquals(await Deno.readFile(`${out}/model.safetensors`), wholeModel, out);
    assertEquals((await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").length, 4);
  }
  await Deno.remove(dir, { recursive: true });
});

releaseWebGpuAfterTests();
