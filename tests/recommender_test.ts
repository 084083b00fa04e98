import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import {
  datasetFromSequences,
  evalBatches,
  leaveOneOut,
  syntheticDataset,
} from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { DiffuRec } from "../lib/models/diffurec.ts";
import { PASS_BUDGET, Recommender } from "../lib/inference/recommender.ts";
import { train } from "../lib/train/trainer.ts";
import { maxAbs, maxAbsDiff } from "./_model_checks.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const data = syntheticDataset({ seed: 11, users: 60, items: 30, maxLength: 12 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 12 };

/** A recommender over the synthetic data's vocabulary with a freshly initialised model. */
function tinyRecommender(kind: "sasrec" | "sigma" = "sasrec", seed = 3): Recommender {
  const model = kind === "sasrec"
    ? new SasRec({ ...TINY, seed })
    : new Sigma({ ...TINY, seed, interests: 3 });
  return new Recommender(model, data.vocab.items);
}

const tokens = (ids: Int32Array) => Array.from(ids, (i) => data.vocab.items[i]);

Deno.test("datasetFromSequences() keeps any token, in order of first appearance", () => {
  const histories = [["alice", ["Blue Mug", "Tea", "Blue Mug"]], ["bob", [
    "Tea",
    "Kettle",
  ]]] as const;
  const fromMap = datasetFromSequences(new Map(histories.map(([u, h]) => [u, [...h]])));
  const fromObject = datasetFromSequences({ alice: histories[0][1], bob: histories[1][1] });
  const fromPairs = datasetFromSequences(histories);
  for (const d of [fromMap, fromObject, fromPairs]) {
    assertEquals(d.vocab.items, ["<pad>", "Blue Mug", "Tea", "Kettle"]);
    assertEquals(d.vocab.users, ["alice", "bob"]);
    assertEquals(d.sequences, [Int32Array.of(1, 2, 1), Int32Array.of(2, 3)]);
    assertEquals(d.numItems, 3);
  }
});

Deno.test("datasetFromSequences() reports empty histories and rejects bad input by name", () => {
  const d = datasetFromSequences({ a: ["x", "y"], b: [] });
  assertEquals(d.report.skippedUsers, 1);
  assertEquals(d.vocab.users, ["a"]);
  assertThrows(() => datasetFromSequences([["a", ["x"]], ["a", ["y"]]]), RangeError, '"a"');
  // deno-lint-ignore no-explicit-any
  assertThrows(() => datasetFromSequences({ u7: ["x", 3 as any] }), TypeError, '"u7"');
  // deno-lint-ignore no-explicit-any
  assertThrows(() => datasetFromSequences({ u8: 5 as any }), TypeError, '"u8"');
  assertThrows(() => datasetFromSequences({ a: [] }), RangeError, "no user");
});

Deno.test("recommend() never returns a seen or excluded item, and ranks by score", async () => {
  await selectBackend("cpu");
  using r = tinyRecommender();
  const known = data.vocab.items.slice(1);
  const token = fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...known) },
    { weight: 1, arbitrary: fc.constantFrom("nope", "Blue Mug", "") },
  );
  await fc.assert(
    fc.asyncProperty(
      fc.array(token, { maxLength: 20 }),
      fc.array(fc.constantFrom(...known), { maxLength: 5 }),
      fc.integer({ min: 1, max: data.numItems + 3 }),
      async (history, exclude, k) => {
        const { items, unknown } = await r.recommend(history, { k, exclude });
        const banned = new Set([...history, ...exclude]);
        for (const { item } of items) assert(!banned.has(item), `${item} was seen or excluded`);
        const allowed = known.filter((t) => !banned.has(t)).length;
        assertEquals(items.length, Math.min(k, allowed));
        assertEquals(new Set(items.map((i) => i.item)).size, items.length);
        for (let j = 1; j < items.length; j++) assert(items[j - 1].score >= items[j].score);
        assertEquals(unknown, [...new Set(history.filter((t) => !known.includes(t)))]);
        // Nothing left out scores above the last item returned.
        if (items.length > 0 && items.length < allowed) {
          const scores = await r.scores(history);
          const last = items[items.length - 1].score;
          const picked = new Set(items.map((i) => i.item));
          known.forEach((t, j) => {
            if (!banned.has(t) && !picked.has(t)) {
              assert(scores[j + 1] <= last, `${t} beats ${last}`);
            }
          });
        }
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("recommend() with excludeSeen false may return history items; strict names the unknown item", async () => {
  await selectBackend("cpu");
  using r = tinyRecommender();
  const history = data.vocab.items.slice(1, 6);
  const all = await r.recommend(history, { k: data.numItems, excludeSeen: false });
  assertEquals(all.items.length, data.numItems);
  assert(history.every((t) => all.items.some((i) => i.item === t)));
  await assertRejects(
    () => r.recommend([history[0], "ghost"], { strict: true }),
    RangeError,
    '"ghost"',
  );
  await assertRejects(() => r.recommend(history, { k: 0 }), RangeError, "k must be");
  await assertRejects(() => r.recommend(history, { k: 2.5 }), RangeError, "2.5");
});

Deno.test("recommend() refuses options of the wrong type by name instead of reading them loosely", async () => {
  await selectBackend("cpu");
  using r = tinyRecommender();
  const history = data.vocab.items.slice(1, 4);
  await r.recommend(history); // builds the model's cached item transpose
  const before = tf.memory().numTensors;
  // deno-lint-ignore no-explicit-any
  const loose = (o: unknown) => r.recommend(history, o as any);
  // A string exclude would otherwise be read as its characters, "false" as true.
  await assertRejects(
    () => loose({ exclude: "i5" }),
    TypeError,
    'exclude must be a list of item tokens, got "i5"',
  );
  await assertRejects(() => loose({ exclude: null }), TypeError, "exclude");
  await assertRejects(
    () => loose({ excludeSeen: "false" }),
    TypeError,
    'excludeSeen must be true or false, got "false"',
  );
  await assertRejects(() => loose({ strict: 1 }), TypeError, "strict must be true or false, got 1");
  await assertRejects(() => loose(null), TypeError, "options of history 0: must be an object");
  await assertRejects(
    // deno-lint-ignore no-explicit-any
    () => r.recommendBatch([history, history], [{}, undefined as any]),
    TypeError,
    "options of history 1",
  );
  // A Set of tokens is a list of tokens.
  const excluded = await r.recommend(history, { exclude: new Set(["i7"]), k: data.numItems });
  assert(excluded.items.every((i) => i.item !== "i7"));
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("recommend() refuses an infinite score, which JSON would turn into null", async () => {
  await selectBackend("cpu");
  const bad = data.vocab.items.indexOf("i4");
  /** SASRec with item i4 scored +Infinity after every history. */
  class InfiniteAtOne extends SasRec {
    override scores(batch: Parameters<SasRec["scores"]>[0]): tf.Tensor2D {
      return tf.tidy(() => {
        const shift = tf.buffer([data.numItems + 1], "float32");
        shift.set(Infinity, bad);
        return tf.add(super.scores(batch), shift.toTensor()) as tf.Tensor2D;
      });
    }
  }
  using r = new Recommender(new InfiniteAtOne({ ...TINY, seed: 3 }), data.vocab.items);
  await r.recommend(["i1"], { exclude: ["i4"] }); // builds the model's cached item transpose
  const before = tf.memory().numTensors;
  await assertRejects(
    () => r.recommend(["i1"], { k: 3 }),
    RangeError,
    "history 0: the model scored Infinity",
  );
  // Excluded, it is never returned, so it is not an error.
  const { items } = await r.recommend(["i1"], { k: 3, exclude: ["i4"] });
  assertEquals(items.length, 3);
  assert(items.every((i) => Number.isFinite(i.score)));
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("recommend() of an empty history ranks the whole catalogue as for a padding-only history", async () => {
  await selectBackend("cpu");
  using r = tinyRecommender();
  for (const history of [[], ["unknown-1", "unknown-2"]]) {
    const { items, unknown } = await r.recommend(history, { k: 5 });
    assertEquals(items.length, 5);
    assertEquals(unknown, history);
    assert(items.every((i) => Number.isFinite(i.score)));
  }
  assertEquals((await r.recommend([])).items, (await r.recommend(["unknown"])).items);
});

Deno.test("recommendBatch() answers in the caller's order, as one recommend() per history", async () => {
  await selectBackend("cpu");
  using r = tinyRecommender("sigma");
  // Lengths 1..40 in a shuffled order: the batches regroup them by padded length.
  const histories = Array.from(
    { length: 40 },
    (_, i) =>
      Array.from({ length: (i * 17) % 40 + 1 }, (_, j) => data.vocab.items[1 + (i + j * 7) % 30]),
  );
  const together = await r.recommendBatch(histories, { k: 7 });
  for (let i = 0; i < histories.length; i++) {
    const alone = await r.recommend(histories[i], { k: 7 });
    assertEquals(together[i].items.map((x) => x.item), alone.items.map((x) => x.item), `row ${i}`);
    assert(
      maxAbsDiff(together[i].items.map((x) => x.score), alone.items.map((x) => x.score)) < 1e-5,
    );
  }
  const perRow = await r.recommendBatch([["i1"], ["i2", "i3"], []], [{ k: 1 }, { k: 2 }, { k: 3 }]);
  assertEquals(perRow.map((x) => x.items.length), [1, 2, 3]);
  await assertRejects(
    () => r.recommendBatch(histories.slice(0, 2), [{ k: 1 }]),
    RangeError,
    "2 histories",
  );
});

Deno.test("Recommender scores equal what evaluation ranks by, on cpu, wasm and webgpu", async () => {
  for (const backend of ["cpu", "wasm", "webgpu"] as const) {
    await selectBackend(backend);
    for (const kind of ["sasrec", "sigma"] as const) {
      using r = tinyRecommender(kind, 5);
      const examples = split.test.slice(0, 12);
      for (const batch of evalBatches(examples, { batchSize: 5, maxLength: TINY.maxLength })) {
        const evalScores = tf.tidy(() => r.model.scores(batch));
        const rows = await evalScores.data() as Float32Array;
        evalScores.dispose();
        const width = data.numItems + 1;
        for (let row = 0; row < batch.batch; row++) {
          const ex = examples.find((e) => e.user === batch.users[row])!;
          const mine = await r.scores(tokens(ex.history));
          const ref = rows.subarray(row * width, (row + 1) * width);
          const diff = maxAbsDiff(mine, ref);
          assert(diff <= 1e-5 * Math.max(maxAbs(ref), 1), `${backend} ${kind}: differ by ${diff}`);
        }
      }
    }
  }
});

Deno.test("recommend() and recommendBatch() leave the tensor count flat over 200 calls", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    using r = tinyRecommender("sigma");
    await r.recommend(["i1"]); // the first call caches the transposed item table
    const before = tf.memory().numTensors;
    for (let i = 0; i < 200; i++) {
      if (i % 2) await r.recommend(tokens(split.test[i % split.test.length].history), { k: 5 });
      else await r.recommendBatch([["i1", "i2"], [], ["x"]], { k: 3 });
    }
    assertEquals(tf.memory().numTensors, before, backend);
  }
});

Deno.test("Recommender.dispose() frees the model, and later calls say so", async () => {
  await selectBackend("cpu");
  const before = tf.memory().numTensors;
  const r = tinyRecommender();
  await r.recommend(["i1"]);
  r[Symbol.dispose]();
  assertEquals(tf.memory().numTensors, before);
  await assertRejects(() => r.recommend(["i1"]), TypeError, "disposed");
  r.dispose(); // a second dispose is harmless
  assertThrows(() => new Recommender(new SasRec(TINY), ["<pad>", "a"]), RangeError, "numItems");
});

Deno.test("a model trained from histories in code recommends in the caller's tokens", async () => {
  await selectBackend("cpu");
  const shop = datasetFromSequences(
    Array.from({ length: 30 }, (_, u) => [
      `user ${u}`,
      ["Blue Mug", "Green Tea", "Kettle", "Tea Cosy", "Spoon"].slice(u % 2, u % 2 + 4),
    ]),
  );
  const model = new SasRec({ numItems: shop.numItems, hidden: 8, heads: 1, layers: 1, inner: 8 });
  await train(model, leaveOneOut(shop).split, shop.numItems, { epochs: 1, batchSize: 8 });
  using r = new Recommender(model, shop.vocab.items);
  const { items } = await r.recommend(["Blue Mug"], { k: 10 });
  assertEquals(
    items.map((i) => i.item).sort(),
    ["Green Tea", "Kettle", "Spoon", "Tea Cosy"],
  );
});

Deno.test("scores follow the weights after training steps and assign (the cached transpose is renewed)", async () => {
  await selectBackend("wasm");
  const model = new SasRec({ ...TINY, seed: 9 });
  using r = new Recommender(model, data.vocab.items);
  const history = tokens(split.test[0].history);
  const before = await r.scores(history);
  await train(model, split, data.numItems, { epochs: 1, batchSize: 16, learningRate: 1e-2 });
  const after = await r.scores(history);
  assert(maxAbsDiff(before, after) > 1e-3, "training did not change the scores");
  const { records, values } = await model.params.toArrays();
  using fresh = new Recommender(new SasRec({ ...TINY, seed: 1 }), data.vocab.items);
  await fresh.scores(history); // caches the transpose of the seed-1 weights
  fresh.model.params.assign(records, values);
  assertEquals(await fresh.scores(history), after);
});

Deno.test("Recommender.load with inference overrides ranks a DiffuRec file as a model built with them; fields it lacks are refused by name", async () => {
  await selectBackend("cpu");
  const config = { ...TINY, steps: 8, layers: 1, seed: 4, evalSeed: 9 };
  const saved = new Recommender(new DiffuRec(config), data.vocab.items);
  const bytes = await saved.toBytes();
  const histories = split.test.slice(0, 6).map((ex) => tokens(ex.history));
  const ids = (rs: { items: { item: string }[] }[]) => rs.map((r) => r.items.map((x) => x.item));
  try {
    const overrides: Record<string, number | string>[] = [
      { sampling: "one" },
      { reverseSteps: 2 },
      { evalSeed: 1 },
    ];
    for (const inference of overrides) {
      using loaded = await Recommender.load(bytes, { inference });
      using built = new Recommender(
        new DiffuRec({ ...config, ...inference } as typeof config),
        data.vocab.items,
      );
      // The same weights: copy the saved model's values into the one built with the option.
      const { records, values } = await saved.model.params.toArrays();
      built.model.params.assign(records, values, "test");
      assertEquals(loaded.model.config, built.model.config);
      const k = { k: 10 };
      assertEquals(
        ids(await loaded.recommendBatch(histories, k)),
        ids(await built.recommendBatch(histories, k)),
      );
    }
    // Without overrides the file's own config; with one, only that field differs.
    using plain = await Recommender.load(bytes);
    assertEquals(plain.model.config, saved.model.config);
    await assertRejects(
      () => Recommender.load(bytes, { inference: { reverseSteps: 20 } }),
      RangeError,
      "reverseSteps (20) must be at most steps (8)",
    );
    await assertRejects(
      () => Recommender.load(bytes, { inference: { hidden: 8 } }),
      RangeError,
      "hidden (8) is not an inference option of model diffurec (it has reverseSteps, sampling",
    );
  } finally {
    saved.dispose();
  }
  using sasrec = tinyRecommender();
  await assertRejects(
    async () => Recommender.load(await sasrec.toBytes(), { inference: { sampling: "one" } }),
    RangeError,
    'sampling ("one") is not an inference option of model sasrec (it has none)',
  );
});

Deno.test("Recommender.load before any backend is started says to call selectBackend (hardening item 16)", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  const tiny = new SasRec({ numItems: 3, hidden: 8, heads: 1, inner: 8, maxLength: 4 });
  using r = new Recommender(tiny, ["<pad>", "a", "b", "c"]);
  await Deno.writeFile(`${dir}/model.safetensors`, await r.toBytes());
  // A fresh process: tfjs has no backend there until one is selected.
  const mod = new URL("../mod.ts", import.meta.url).href;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { Recommender } = await import("${mod}");
       try { await Recommender.load(${JSON.stringify(`${dir}/model.safetensors`)}); }
       catch (e) { console.log(e.message); }`,
    ],
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  assertEquals(
    text,
    'no tfjs backend is running: call `await selectBackend("auto")` (exported beside ' +
      "Recommender) before loading a model",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("recommendBatch ranks in passes of at most PASS_BUDGET pairs, the event loop free between them (hardening item 8)", async () => {
  await selectBackend("cpu");
  const items = ["<pad>", ...Array.from({ length: 2000 }, (_, i) => `i${i + 1}`)];
  const tiny = new SasRec({ numItems: 2000, hidden: 8, heads: 1, inner: 8, maxLength: 6 });
  using r = new Recommender(tiny, items);
  const passes: number[] = [];
  const scores = tiny.scores.bind(tiny);
  tiny.scores = (batch) => {
    passes.push(batch.batch);
    return scores(batch);
  };
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  const histories = Array.from({ length: 256 }, (_, u) => [`i${u + 1}`, `i${u + 2}`]);
  const results = await r.recommendBatch(histories, { k: 1000 });
  clearInterval(timer);
  assertEquals(results.length, 256);
  assert(results.every((x) => x.items.length === 1000));
  // Each pass: rows x (k + history + 1) fetched pairs within the budget; and all rows ranked.
  assert(passes.every((rows) => rows * 1003 <= PASS_BUDGET), `passes of ${passes}`);
  assertEquals(passes.reduce((a, b) => a + b, 0), 256);
  assert(
    ticks >= passes.length - 1,
    `the event loop ran ${ticks} times over ${passes.length} passes`,
  );
  // The same answers as one history at a time.
  const one = await r.recommend(histories[7], { k: 1000 });
  assertEquals(results[7].items.map((x) => x.item), one.items.map((x) => x.item));
});

releaseWebGpuAfterTests();
