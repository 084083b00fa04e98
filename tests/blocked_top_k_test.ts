/**
 * Ranking a catalogue in blocks (`lib/inference/_blocked_top_k.ts`, `Recommender`'s
 * `blockItems`): the running top-k equals the full scores' top-k, and a recommender that
 * ranks in blocks answers as one that ranks the whole catalogue at once.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { probeWebGpu, selectBackend } from "../backends/mod.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";
import { evalBatches, leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { DiffuRec } from "../lib/models/diffurec.ts";
import type { SequentialModel } from "../lib/models/_model.ts";
import { BLOCK_SCORES, blockedTopK, blockRows } from "../lib/inference/_blocked_top_k.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { seededUniform } from "./_fixtures.ts";
import { maxAbsDiff } from "./_model_checks.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";

/** Scores rounded to multiples of 1/8 when `ties`, so that equal scores are common. */
function inputs(b: number, q: number, m: number, d: number, ties: boolean, seed: number) {
  const round = (x: Float32Array) => ties ? x.map((v) => Math.round(v * 2) / 2) : x;
  return {
    queries: tf.tensor3d(round(seededUniform(b * q * d, seed)), [b, q, d]),
    table: tf.tensor2d(round(seededUniform(m * d, seed + 1)), [m, d]),
  };
}

const noGpu = (await probeWebGpu()) === null;

Deno.test("blockedTopK() equals the full scores' topk: the same ids (lower id first on ties) and scores (200 random cases on cpu and on wasm, 30 on webgpu)", async () => {
  for (const backend of ["cpu", "wasm", "webgpu"] as const) {
    if (backend === "webgpu" && noGpu) continue;
    await selectBackend(backend, { webgpuCpuForward: false });
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 5 }), // histories
        fc.integer({ min: 1, max: 3 }), // queries a history (3: SIGMA's interests)
        fc.integer({ min: 1, max: 60 }), // items
        fc.integer({ min: 1, max: 6 }), // width
        fc.boolean(),
        fc.integer({ min: 1, max: 2 ** 30 }),
        fc.integer({ min: 1, max: 70 }),
        fc.integer({ min: 1, max: 70 }),
        async (b, q, m, d, ties, seed, kDraw, blockDraw) => {
          const k = 1 + (kDraw - 1) % m;
          const block = 1 + (blockDraw - 1) % (m + 2); // past m: one block
          const [full, blocked] = tf.tidy(() => {
            const { queries, table } = inputs(b, q, m, d, ties, seed);
            const all = tf.matMul(tf.reshape(queries, [b * q, d]), table, false, true);
            const scores = q === 1 ? all : tf.max(tf.reshape(all, [b, q, m]), 1);
            const top = tf.topk(scores, k, true);
            const mine = blockedTopK(queries, table, k, block);
            return [[top.values, top.indices], [mine.values, mine.indices]];
          });
          const label =
            `${backend}: B ${b}, q ${q}, M ${m}, d ${d}, k ${k}, block ${block}, ties ${ties}`;
          const [fv, fi, bv, bi] = await Promise.all([...full, ...blocked].map((t) => t.data()));
          tf.dispose([...full, ...blocked]);
          assert(maxAbsDiff(bv, fv) <= 1e-5, `${label}: values ${bv} vs ${fv}`);
          // Ids: equal where scores are exactly equal too (the lower id first).
          if (ties) {
            for (let i = 0; i < fv.length; i++) {
              if (fv[i] === bv[i]) assertEquals(bi[i], fi[i], `${label}: id ${i}`);
            }
          } else {
            assertEquals(Array.from(bi), Array.from(fi), label);
          }
        },
      ),
      { numRuns: backend === "webgpu" ? 30 : 200 },
    );
  }
  await selectBackend("cpu");
});

Deno.test("blockedTopK() refuses a bad k or block by name, and keeps the tensor count flat", async () => {
  await selectBackend("cpu");
  const { queries, table } = inputs(2, 1, 9, 3, false, 4);
  assertThrows(() => blockedTopK(queries, table, 0, 4), RangeError, "k must be");
  assertThrows(() => blockedTopK(queries, table, 10, 4), RangeError, "got 10");
  assertThrows(() => blockedTopK(queries, table, 3, 0), RangeError, "block must be");
  // A block holds at most BLOCK_SCORES scores, and at least the floor given.
  assertEquals(blockRows(1, 65_536), BLOCK_SCORES);
  assertEquals(blockRows(64, 65_536), 65_536);
  assertEquals(blockRows(64 * 4, 1000), BLOCK_SCORES / 256);
  const before = tf.memory().numTensors;
  for (let i = 0; i < 5; i++) {
    const top = blockedTopK(queries, table, 3, 2);
    tf.dispose([top.values, top.indices]);
  }
  assertEquals(tf.memory().numTensors, before);
  tf.dispose([queries, table]);
});

const data = syntheticDataset({ seed: 11, users: 60, items: 30, maxLength: 12 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 12 };
const tokens = (ids: Int32Array) => Array.from(ids, (i) => data.vocab.items[i]);

/** Each model kind, SIGMA in both rankings (one query, and its interests: q = 3). */
const MODELS: [
  string,
  () => SequentialModel & { config: { maxLength: number; numItems: number } },
][] = [
  ["sasrec", () => new SasRec({ ...TINY, seed: 5 })],
  ["sigma", () => new Sigma({ ...TINY, seed: 5, interests: 3 })],
  ["sigma, mie ranking", () => new Sigma({ ...TINY, seed: 5, interests: 3, ranking: "mie" })],
  ["diffurec", () => new DiffuRec({ ...TINY, seed: 5, steps: 4 })],
];

Deno.test("a Recommender that ranks in blocks answers as one that ranks the whole catalogue (every model, cpu and wasm)", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    for (const [kind, make] of MODELS) {
      const model = make();
      using whole = new Recommender(model, data.vocab.items);
      // The same seed, the same weights.
      using blocks = new Recommender(make(), data.vocab.items, { blockItems: 7, blockScores: 1 });
      const histories = split.test.slice(0, 20).map((e) => tokens(e.history));
      histories.push([], ["unknown-token"]);
      const options = [{ k: 5 }, { k: 12, exclude: ["i3", "i4"] }, { k: 30, excludeSeen: false }];
      for (const o of options) {
        const a = await whole.recommendBatch(histories, o);
        const b = await blocks.recommendBatch(histories, o);
        for (let i = 0; i < histories.length; i++) {
          const label = `${backend} ${kind} ${JSON.stringify(o)} history ${i}`;
          assertEquals(b[i].items.map((x) => x.item), a[i].items.map((x) => x.item), label);
          const diff = maxAbsDiff(b[i].items.map((x) => x.score), a[i].items.map((x) => x.score));
          assert(diff <= 1e-5, `${label}: scores differ by ${diff}`);
        }
      }
    }
  }
  await selectBackend("cpu");
});

Deno.test("ranking in blocks never builds the transposed item table and keeps the tensor count flat", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    using r = new Recommender(new Sigma({ ...TINY, seed: 2, interests: 3 }), data.vocab.items, {
      blockItems: 8,
      blockScores: 1,
    });
    const fresh = tf.memory().numTensors;
    await r.recommend(["i1"]);
    // Ranking the whole catalogue keeps one tensor more, the cached transposed table.
    assertEquals(tf.memory().numTensors, fresh, `${backend}: a tensor kept by the first call`);
    using whole = new Recommender(new Sigma({ ...TINY, seed: 2, interests: 3 }), data.vocab.items);
    const wholeFresh = tf.memory().numTensors;
    await whole.recommend(["i1"]);
    assertEquals(tf.memory().numTensors, wholeFresh + 1, `${backend}: the whole path's transpose`);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 50; i++) {
      await r.recommendBatch([tokens(split.test[i % split.test.length].history), []], { k: 4 });
    }
    assertEquals(tf.memory().numTensors, before, backend);
  }
  assertThrows(
    () => new Recommender(new SasRec({ ...TINY }), data.vocab.items, { blockItems: 0 }),
    RangeError,
    "blockItems must be a positive integer, got 0",
  );
  assertThrows(
    () => new Recommender(new SasRec({ ...TINY }), data.vocab.items, { blockScores: 2.5 }),
    RangeError,
    "blockScores must be a positive integer, got 2.5",
  );
});

Deno.test("evaluation's scores are unchanged by the ranking queries: scores() is their product with the table", async () => {
  await selectBackend("cpu");
  for (const [kind, make] of MODELS) {
    const model = make();
    for (const batch of evalBatches(split.test.slice(0, 9), { batchSize: 4, maxLength: 12 })) {
      const [scores, manual] = tf.tidy(() => {
        const q = model.rankingQueries!(batch); // [B, q, d]
        const [b, n, d] = q.shape;
        const all = tf.matMul(tf.reshape(q, [b * n, d]), model.itemVectors!(), false, true);
        return [model.scores(batch), n === 1 ? all : tf.max(tf.reshape(all, [b, n, -1]), 1)];
      });
      const diff = maxAbsDiff(scores.dataSync(), manual.dataSync());
      tf.dispose([scores, manual]);
      assert(diff <= 1e-5, `${kind}: scores and the queries' products differ by ${diff}`);
    }
  }
});

releaseWebGpuAfterTests();
