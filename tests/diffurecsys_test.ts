/** DiffuRecSys: the spec's tests of its cross-attention and offset noise (`DIFFUREC.md` §7, 13-15). */
import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { DiffuRecSys, type DiffuRecSysConfig } from "../lib/models/diffurecsys.ts";
import { compatCrossAttention, crossAttention } from "../lib/nn/cross_attention.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { createLayerNorm } from "../lib/nn/layers.ts";
import { createTorchLinear } from "../lib/nn/pre_ln.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { historiesBatch, tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import {
  assertFlatTensorCount,
  assertParity,
  maxAbs,
  maxAbsDiff,
  modelRun,
} from "./_model_checks.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const TINY: Partial<DiffuRecSysConfig> & { numItems: number } = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  layers: 3,
  inner: 32,
  maxLength: 8,
  steps: 8,
  seed: 3,
  evalSeed: 5,
};

await selectBackend("cpu");

const scoresOf = (model: DiffuRecSys) =>
  tf.tidy(() => model.scores(tinyEvalBatch(4, 6, TINY.numItems)).dataSync().slice());

/** The model's parameters with those whose name starts with `prefix` shifted by 0.5. */
function perturbed(model: DiffuRecSys, prefix: string): void {
  const records = model.params.records();
  const values = model.params.list().map((v, i) =>
    records[i].name.startsWith(prefix) ? v.dataSync().map((x) => x + 0.5) : v.dataSync()
  );
  model.params.assign(records, Float32Array.from(values.flatMap((v) => Array.from(v))));
}

Deno.test("DiffuRecSys compat: the parameters that reach the output are the spec's 4,677,632 for Beauty", () => {
  const model = new DiffuRecSys({ numItems: 12101, ca: "compat" });
  const reaching = model.params.records()
    .filter((r) => !/^block[0-2]\./.test(r.name)) // blocks 0-2 are computed and discarded
    .reduce((n, r) => n + r.shape.reduce((a, b) => a * b, 1), 0);
  assertEquals(reaching, 4_677_632);
  model.params.dispose();
});

Deno.test("ca compat uses the last block only; ca fixed chains every block", () => {
  for (const ca of ["compat", "fixed"] as const) {
    const model = new DiffuRecSys({ ...TINY, ca, lambda: 0.5 });
    const before = scoresOf(model);
    perturbed(model, "block0.");
    const after = scoresOf(model);
    const moved = maxAbsDiff(before, after);
    if (ca === "compat") assertEquals(moved, 0, "compat: block 0 changed the output");
    else assert(moved > 1e-3, "fixed: block 0 did not change the output");
    model.params.dispose();
  }
});

/** One block's cross-attention parameters (and ln0, ln1) in a fresh store. */
function crossParams(d: number): ParamStore {
  const p = new ParamStore(9);
  for (const m of ["q", "k", "v"]) createTorchLinear(p, `b.ca.${m}`, d, d);
  createTorchLinear(p, "b.ca.o", d, d, true);
  createLayerNorm(p, "b.ln0", d);
  createLayerNorm(p, "b.ln1", d);
  return p;
}

const SETTINGS = { hidden: 8, heads: 2, inner: 16, dropout: 0, layerNormEps: 1e-12 };

Deno.test("compat cross-attention: the same vector at every real position under fixed lambda, -1e9 fill at padding", () => {
  const p = crossParams(8);
  tf.tidy(() => {
    const h = tf.randomNormal([2, 5, 8], 0, 1, "float32", 1) as tf.Tensor3D;
    const real = tf.tensor3d([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [2, 5, 1]);
    // Fixed lambda: every position's query is the same vector.
    const target = tf.randomNormal([2, 1, 8], 0, 1, "float32", 2);
    const queries = tf.mul(tf.onesLike(h), tf.mul(target, 0.001)) as tf.Tensor3D;
    const out = compatCrossAttention(p, "b", h, queries, real, SETTINGS, null).arraySync();
    const [row0, row1] = out;
    for (const [rows, first] of [[row0, 2], [row1, 0]] as const) {
      for (let l = first; l < 5; l++) {
        assert(maxAbsDiff(rows[l], rows[first]) <= 1e-5, `position ${l}`);
      }
    }
    // Padded positions: filled with -1e9 before W_o, so |values| ~ 1e9.
    assert(maxAbs(row0[0]) > 1e8 && maxAbs(row0[1]) > 1e8, "padding not filled");
  });
  p.dispose();
});

Deno.test("fixed cross-attention: padded keys get no weight, values stay small", () => {
  const p = crossParams(8);
  for (const kind of ["efficient", "softmax"] as const) {
    tf.tidy(() => {
      const real = tf.tensor3d([0, 0, 1, 1, 1], [1, 5, 1]);
      const h = tf.randomNormal([1, 5, 8], 0, 1, "float32", 3) as tf.Tensor3D;
      const query = tf.randomNormal([1, 1, 8], 0, 1, "float32", 4) as tf.Tensor3D;
      const a = crossAttention(p, "b", h, query, real, SETTINGS, kind).dataSync();
      // Changing the padded positions' content changes nothing.
      const other = tf.concat([
        tf.mul(tf.slice(h, [0, 0, 0], [1, 2, 8]), -7),
        tf.slice(h, [0, 2, 0], [1, 3, 8]),
      ], 1);
      const b = crossAttention(p, "b", other as tf.Tensor3D, query, real, SETTINGS, kind)
        .dataSync();
      assert(maxAbsDiff(a, b) <= 1e-5, `${kind}: padding reached the output`);
      assert(maxAbs(a) < 1e3, `${kind}: |value| ${maxAbs(a)}`);
      // And the real positions do matter.
      const moved = tf.concat([
        tf.slice(h, [0, 0, 0], [1, 4, 8]),
        tf.mul(tf.slice(h, [0, 4, 0], [1, 1, 8]), -3),
      ], 1);
      const c = crossAttention(p, "b", moved as tf.Tensor3D, query, real, SETTINGS, kind)
        .dataSync();
      assert(maxAbsDiff(a, c) > 1e-4, `${kind}: a real position did not matter`);
    });
  }
  p.dispose();
});

Deno.test("offset noise changes training only: scores are the same in every mode, the loss is not", () => {
  const batch = tinyTrainBatch(3, 5, TINY.numItems);
  const results = (["none", "compat", "shared"] as const).map((offsetNoise) => {
    const model = new DiffuRecSys({ ...TINY, offsetNoise, offsetScale: 0.5 });
    const scores = scoresOf(model);
    const loss = tf.tidy(() => model.loss(batch, stepSeeds(4, 0)).loss.dataSync()[0]);
    model.params.dispose();
    return { scores, loss };
  });
  assertEquals(results[1].scores, results[0].scores);
  assertEquals(results[2].scores, results[0].scores);
  assert(results[1].loss !== results[0].loss && results[2].loss !== results[0].loss);
});

Deno.test("DiffuRecSys loss, gradients and scores agree on cpu, wasm and webgpu", async () => {
  const settings: Partial<DiffuRecSysConfig>[] = [
    {},
    { ca: "compat", attentionMask: "compat" },
    { caAttention: "softmax" },
  ];
  for (const config of settings) {
    const ref = await modelRun("cpu", () => new DiffuRecSys({ ...TINY, ...config }), TINY.numItems);
    for (const backend of ["wasm", "webgpu"] as const) {
      assertParity(
        ref,
        await modelRun(backend, () => new DiffuRecSys({ ...TINY, ...config }), TINY.numItems),
        `${backend} ${JSON.stringify(config)}`,
      );
    }
  }
  await selectBackend("cpu");
});

Deno.test("a history scores the same alone as padded in a batch, under ca fixed and ca compat", () => {
  // compat sums keys and values over padding too: its histories are padded to maxLength.
  for (const ca of ["fixed", "compat"] as const) {
    const model = new DiffuRecSys({ ...TINY, ca, lambda: 0.5 });
    const rows = (histories: number[][], length: number) =>
      tf.tidy(() =>
        (model.scores(historiesBatch(histories, length)).arraySync() as number[][]).map((r) =>
          r.slice(1)
        )
      );
    const alone = rows([[3, 5]], 2)[0];
    const batched = rows([[3, 5], [7, 1, 9, 4, 6, 2]], 6)[0];
    const gap = Math.max(...alone.map((x, i) => Math.abs(x - batched[i])));
    assert(gap <= 1e-4 * Math.max(1, ...alone.map(Math.abs)), `ca ${ca}: scores moved by ${gap}`);
    model.params.dispose();
  }
});

Deno.test("DiffuRecSys: tensor count stays flat over training steps", () => {
  for (const ca of ["fixed", "compat"] as const) {
    const model = new DiffuRecSys({ ...TINY, ca });
    assertFlatTensorCount(model, TINY.numItems, ca);
    model.params.dispose();
  }
});

Deno.test("DiffuRecSys rejects bad config fields, naming the field and value", () => {
  const cases: [Partial<DiffuRecSysConfig>, string][] = [
    [{ ca: "both" as "fixed" }, "ca must be one of"],
    [{ caAttention: "linear" as "softmax" }, "caAttention"],
    [{ offsetNoise: "pink" as "none" }, "offsetNoise"],
    [{ offsetScale: -1 }, "offsetScale"],
    [{ steps: 0 }, "steps"],
  ];
  for (const [patch, word] of cases) {
    assertThrows(() => new DiffuRecSys({ ...TINY, ...patch }), RangeError, word);
  }
});

releaseWebGpuAfterTests();
