import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import type { EvalBatch } from "../lib/data/types.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import {
  evaluate,
  evaluateModel,
  listDiversity,
  listIntraListDistance,
  METRIC_KEYS,
  MetricAccumulator,
  metricKeys,
  metricsFromRanks,
  rankBatch,
  rankOfTarget,
  topKBatch,
} from "../lib/eval/mod.ts";
import { allowedTensor, prepareBatch } from "../lib/eval/_device.ts";
import fc from "fast-check";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

await selectBackend("cpu");

interface Row {
  target: number;
  exclude: number[];
  user?: number;
}

/** An EvalBatch for `rows`; the inputs are irrelevant to ranking, so one padded column. */
function makeBatch(rows: Row[]): EvalBatch {
  return {
    batch: rows.length,
    length: 1,
    inputs: new Int32Array(rows.length),
    targets: Int32Array.from(rows.map((r) => r.target)),
    users: Int32Array.from(rows.map((r, i) => r.user ?? i)),
    exclude: rows.map((r) => Int32Array.from(r.exclude)),
  };
}

/** A scorer that looks each row's scores up by user, so any batching gives the same scores. */
function byUser(scores: number[][]): (b: EvalBatch) => tf.Tensor2D {
  return (b) => tf.tensor2d(Array.from(b.users, (u) => scores[u]));
}

Deno.test("rankOfTarget() ranks ties pessimistically", () => {
  // Items 1..4 all score 1: three competitors tie with the target and rank above it.
  assertEquals(rankOfTarget([0, 1, 1, 1, 1], 2), 3);
  assertEquals(rankOfTarget([0, 1, 2, 1, 0], 1), 2);
  assertEquals(rankOfTarget([0, 5, 2, 1, 0], 1), 0);
});

Deno.test("rankOfTarget() ignores padding and excluded items", () => {
  // Padding scores highest but never competes; item 2 is excluded.
  assertEquals(rankOfTarget([9, 0.5, 0.9, 0.7, 0.1], 1, [0, 2, 2]), 1);
  assertEquals(rankOfTarget(Float32Array.of(9, 0.5, 0.9, 0.7, 0.1), 1, [2, 3]), 0);
});

Deno.test("rankOfTarget() never excludes the target itself", () => {
  // The target 3 was already in the history: it is ranked by its own score, not buried.
  assertEquals(rankOfTarget([0, 0.1, 0.2, 0.9, 0.3], 3, [1, 3]), 0);
  assertEquals(rankOfTarget([0, 0.1, 0.2, 0.3, 0.9], 3, [3]), 1);
});

Deno.test("rankOfTarget() compares scores as float32, like the device", () => {
  // 1 + 2^-30 rounds to 1 in float32, so this is a tie.
  assertEquals(rankOfTarget([0, 1, 1 + 2 ** -30], 2), 1);
});

Deno.test("rankOfTarget() rejects bad targets, exclusions and NaN scores", () => {
  assertThrows(() => rankOfTarget([0, 1, 2], 3), RangeError, "Target 3");
  assertThrows(() => rankOfTarget([0, 1, 2], 0), RangeError, "Target 0");
  assertThrows(() => rankOfTarget([0, 1, 2], 1, [5]), RangeError, "Excluded item 5");
  assertThrows(() => rankOfTarget([0, 1, NaN], 1), RangeError, "scores[2] is NaN");
});

Deno.test("metricsFromRanks() computes Recall, NDCG and MRR", () => {
  const m = metricsFromRanks([0, 1, 12, 100], [1, 2, 20]);
  assertEquals(Object.keys(m), [
    "recall@1",
    "recall@2",
    "recall@20",
    "ndcg@1",
    "ndcg@2",
    "ndcg@20",
    "mrr",
  ]);
  assertEquals(m["recall@1"], 1 / 4);
  assertEquals(m["recall@2"], 2 / 4);
  assertEquals(m["recall@20"], 3 / 4);
  assertAlmostEquals(m["ndcg@1"], 1 / 4, 1e-15);
  assertAlmostEquals(m["ndcg@2"], (1 + 1 / Math.log2(3)) / 4, 1e-15);
  assertAlmostEquals(m["ndcg@20"], (1 + 1 / Math.log2(3) + 1 / Math.log2(14)) / 4, 1e-15);
  assertAlmostEquals(m.mrr, (1 + 1 / 2 + 1 / 13 + 1 / 101) / 4, 1e-15);
});

Deno.test("metricsFromRanks() defaults to the paper's keys", () => {
  const m = metricsFromRanks([3]);
  assertEquals(Object.keys(m), [...METRIC_KEYS]);
  assertEquals(metricKeys(), [...METRIC_KEYS]);
  assertEquals(metricKeys([5], true), [
    "recall@5",
    "ndcg@5",
    "mrr",
    "diversity@5",
    "coverage@5",
    "ild@5",
  ]);
});

Deno.test("metricsFromRanks() rejects bad cutoffs, ranks and empty input", () => {
  assertThrows(() => metricsFromRanks([0], [0]), RangeError, "got 0");
  assertThrows(() => metricsFromRanks([0], [-3]), RangeError, "got -3");
  assertThrows(() => metricsFromRanks([0], [2.5]), RangeError, "got 2.5");
  assertThrows(() => metricsFromRanks([0], []), RangeError, "at least one");
  assertThrows(() => metricsFromRanks([0, -1]), RangeError, "ranks[1] is -1");
  assertThrows(() => metricsFromRanks([0.5]), RangeError, "ranks[0] is 0.5");
  assertThrows(() => metricsFromRanks([]), RangeError, "No examples");
});

Deno.test("MetricAccumulator gives identical results however ranks are split", () => {
  const ranks = [0, 7, 3, 3, 41, 19, 1, 0, 250, 9, 10, 39];
  const whole = metricsFromRanks(ranks);
  const acc = new MetricAccumulator();
  acc.add(ranks.slice(0, 5));
  acc.add([]);
  acc.add(ranks.slice(5));
  assertEquals(acc.count, ranks.length);
  assertEquals(acc.result(), whole);
  // Order does not matter either: the sums run over a rank histogram.
  assertEquals(metricsFromRanks([...ranks].reverse()), whole);
});

Deno.test("MetricAccumulator computes diversity (Eq. 15) and coverage by hand", () => {
  // Items 1..4: 1 and 2 share category 0; 3 has category 1; 4 has none.
  const categories = [[], [0], [0, 2], [1], []].map((c) => Int32Array.from(c));
  const acc = new MetricAccumulator({ ks: [2, 3], categories });
  acc.add([0, 1]);
  acc.addTopK([[1, 2, 3], [3, 4, 1]]);
  const m = acc.result();
  // List A: K=2 pairs {1,2} shares -> 0; K=3 pairs {1,2} no, {1,3} yes, {2,3} yes -> 2/3.
  // List B: K=2 {3,4} dissimilar -> 1; K=3 all three pairs dissimilar -> 1.
  assertEquals(m["diversity@2"], (0 + 1) / 2);
  assertAlmostEquals(m["diversity@3"], (2 / 3 + 1) / 2, 1e-15);
  // numCategories defaults to 3. Distinct categories: A@2 {0,2}, A@3 {0,1,2}; B@2 {1}, B@3 {0,1}.
  assertEquals(m["coverage@2"], (2 + 1) / 3 / 2);
  assertEquals(m["coverage@3"], (3 + 2) / 3 / 2);
  assertEquals(listDiversity([1, 2, 3], categories), 2 / 3);
  assertEquals(listDiversity([1], categories), 0);
  // ILD, 1 - Jaccard: {0} vs {0,2} 1 - 1/2; {0} vs {1} 1; {0,2} vs {1} 1; {1} vs {} 1;
  // {} vs {} would be 1 too (nothing shared). A@2 1/2, A@3 (1/2 + 1 + 1) / 3; B@2 1,
  // B@3 ({3,4} 1, {3,1} 1, {4,1} 1) 1.
  assertEquals(m["ild@2"], (0.5 + 1) / 2);
  assertAlmostEquals(m["ild@3"], (2.5 / 3 + 1) / 2, 1e-15);
  assertEquals(listIntraListDistance([1, 2], categories), 0.5);
  assertEquals(listIntraListDistance([2, 4, 4], categories, 2), 1);
  const overlap = [[], [0, 1], [1, 2], [0, 1, 2, 3]].map((c) => Int32Array.from(c));
  // {0,1} vs {1,2}: 1 - 1/3; {0,1} vs {0,1,2,3}: 1 - 2/4; {1,2} vs {0,1,2,3}: 1 - 2/4.
  assertAlmostEquals(listIntraListDistance([1, 2, 3], overlap), (2 / 3 + 0.5 + 0.5) / 3, 1e-15);
});

Deno.test("MetricAccumulator rejects inconsistent top lists and categories", () => {
  const categories = [[], [0], [1]].map((c) => Int32Array.from(c));
  assertThrows(() => new MetricAccumulator().addTopK([[1]]), TypeError, "categories");
  const acc = new MetricAccumulator({ ks: [2], categories });
  assertThrows(() => acc.addTopK([[1, 3]]), RangeError, "item 3");
  assertThrows(() => acc.addTopK([[2, 2]]), RangeError, "twice");
  acc.add([0]);
  assertThrows(() => acc.result(), RangeError, "1 ranks but 0 top lists");
  assertThrows(
    () => new MetricAccumulator({ categories, numCategories: 1 }),
    RangeError,
    "got 1",
  );
  assertThrows(
    () => new MetricAccumulator({ categories: [Int32Array.of(-2)] }),
    RangeError,
    "category id -2",
  );
});

Deno.test("rankBatch() equals rankOfTarget() row by row", async () => {
  const scores = [
    [9, 1, 1, 2, 0, 1],
    [9, 3, 3, 3, 3, 3],
    [-1, 0.5, 0.25, 0.75, 1, 0],
  ];
  const rows: Row[] = [
    { target: 2, exclude: [3] },
    { target: 5, exclude: [0, 1, 5] },
    { target: 4, exclude: [4, 1, 1] },
  ];
  const t = tf.tensor2d(scores);
  const ranks = await rankBatch(t, makeBatch(rows));
  t.dispose();
  assertEquals(Array.from(ranks), rows.map((r, i) => rankOfTarget(scores[i], r.target, r.exclude)));
  assertEquals(Array.from(ranks), [2, 3, 0]);
});

Deno.test("topKBatch() excludes history and padding but keeps the target", async () => {
  const t = tf.tensor2d([
    [9, 0.1, 0.9, 0.8, 0.7, 0.2],
    [9, 0.5, 0.4, 0.3, 0.2, 0.1],
  ]);
  const lists = await topKBatch(
    t,
    makeBatch([
      { target: 3, exclude: [2, 3] },
      { target: 1, exclude: [2, 3, 4] },
    ]),
    3,
  );
  t.dispose();
  assertEquals(lists.map((l) => Array.from(l)), [[3, 4, 5], [1, 5]]);
  await assertRejects(() => topKBatch(t, makeBatch([]), 0), RangeError, "got 0");
});

Deno.test("evaluate() computes the metrics of a fixed scorer", async () => {
  const scores = [
    [0, 5, 4, 3, 2, 1], // target 1 first
    [0, 5, 4, 3, 2, 1], // target 4: items 1, 3 excluded, 2 above -> rank 1
    [0, 1, 1, 1, 1, 1], // constant: target 2 ties with 4 competitors -> rank 3 (item 5 excl.)
  ];
  const rows: Row[] = [
    { target: 1, exclude: [2] },
    { target: 4, exclude: [1, 3] },
    { target: 2, exclude: [5] },
  ];
  const progress: [number, number][] = [];
  const result = await evaluate(
    byUser(scores),
    [makeBatch(rows.slice(0, 2)), makeBatch([{ ...rows[2], user: 2 }])],
    { numItems: 5, ks: [1, 2], onProgress: (d, t) => progress.push([d, t]) },
  );
  assertEquals(result.count, 3);
  assertEquals(result.metrics, metricsFromRanks([0, 1, 3], [1, 2]));
  assertEquals(progress, [[2, 3], [3, 3]]);
});

Deno.test("evaluate() adds diversity and coverage when categories are given", async () => {
  const categories = [[], [0], [0], [1], [2]].map((c) => Int32Array.from(c));
  const result = await evaluate(
    byUser([[0, 4, 3, 2, 1]]),
    [makeBatch([{ target: 1, exclude: [] }])],
    { numItems: 4, ks: [2, 3], categories },
  );
  // Top list 1, 2, 3, 4: @2 {1,2} share -> 0; @3 two of three pairs dissimilar.
  assertEquals(result.metrics["diversity@2"], 0);
  assertEquals(result.metrics["diversity@3"], 2 / 3);
  assertEquals(result.metrics["coverage@2"], 1 / 3);
  assertEquals(result.metrics["coverage@3"], 2 / 3);
});

Deno.test("evaluate() rejects scores with the wrong number of columns", async () => {
  const before = tf.memory().numTensors;
  await assertRejects(
    () =>
      evaluate(
        () => tf.zeros([1, 4]) as tf.Tensor2D,
        [makeBatch([{ target: 1, exclude: [] }])],
        { numItems: 5 },
      ),
    RangeError,
    "shape [1,4]; expected [1,6]",
  );
  await assertRejects(
    () =>
      evaluate(
        () => tf.zeros([2, 6]) as tf.Tensor2D,
        [makeBatch([{ target: 1, exclude: [] }])],
        { numItems: 5 },
      ),
    RangeError,
    "expected [1,6]",
  );
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("evaluate() rejects targets and exclusions out of range", async () => {
  const before = tf.memory().numTensors;
  const scorer = () => tf.zeros([2, 4]) as tf.Tensor2D;
  await assertRejects(
    () =>
      evaluate(scorer, [makeBatch([{ target: 1, exclude: [] }, { target: 4, exclude: [] }])], {
        numItems: 3,
      }),
    RangeError,
    "Row 1 (user 1) has target 4",
  );
  await assertRejects(
    () =>
      evaluate(scorer, [makeBatch([{ target: 1, exclude: [7] }, { target: 2, exclude: [] }])], {
        numItems: 3,
      }),
    RangeError,
    "excludes item 7",
  );
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("evaluate() rejects NaN scores, naming the row and user", async () => {
  const before = tf.memory().numTensors;
  await assertRejects(
    () =>
      evaluate(
        byUser([[0, 1, 2, 3], [0, 1, NaN, 3]]),
        [makeBatch([{ target: 1, exclude: [], user: 0 }, { target: 3, exclude: [], user: 1 }])],
        { numItems: 3 },
      ),
    RangeError,
    "row 1 (user 1, target 3) hold 1 NaN",
  );
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("evaluate() rejects bad options and empty input", async () => {
  const scorer = () => tf.zeros([1, 3]) as tf.Tensor2D;
  const batches = [makeBatch([{ target: 1, exclude: [] }])];
  await assertRejects(() => evaluate(scorer, batches, { numItems: 0 }), RangeError, "got 0");
  await assertRejects(
    () => evaluate(scorer, batches, { numItems: 2, ks: [0] }),
    RangeError,
    "got 0",
  );
  await assertRejects(
    () => evaluate(scorer, batches, { numItems: 2, categories: [Int32Array.of()] }),
    RangeError,
    "3 entries, got 1",
  );
  await assertRejects(() => evaluate(scorer, [], { numItems: 2 }), RangeError, "No examples");
});

Deno.test("evaluate() leaves no tensors behind", async () => {
  const numItems = 50;
  const scores = Array.from(
    { length: 7 },
    (_, u) => Array.from({ length: numItems + 1 }, (_, j) => ((u * 31 + j * 17) % 13) / 13),
  );
  const rows = scores.map((_, u) => ({
    target: 1 + (u * 7) % numItems,
    exclude: [u + 1, 2 * u + 3],
    user: u,
  }));
  const categories = Array.from(
    { length: numItems + 1 },
    (_, i) => i === 0 ? Int32Array.of() : Int32Array.of(i % 4),
  );
  const before = tf.memory().numTensors;
  const result = await evaluate(byUser(scores), [
    makeBatch(rows.slice(0, 3)),
    makeBatch(rows.slice(3)),
  ], {
    numItems,
    categories,
  });
  assertEquals(tf.memory().numTensors, before);
  assertEquals(result.count, 7);
});

Deno.test("rankBatch() and topKBatch() on wasm and webgpu equal the cpu results", async () => {
  // Rows long enough that a float Sum would be at risk on wasm; kept tiny for webgpu.
  const cases: Record<string, number> = { wasm: 200_001, webgpu: 257 };
  for (const [name, width] of Object.entries(cases)) {
    const rows = 3;
    const values = new Float32Array(rows * width);
    // Small integers: many ties.
    for (let i = 0; i < values.length; i++) values[i] = (i * 7919) % 5;
    const batch = makeBatch([
      { target: 1, exclude: [2, 3, 4, 1] },
      { target: width - 1, exclude: [] },
      { target: 7, exclude: [0, 8, 9, 10, 11] },
    ]);
    await selectBackend("cpu");
    const cpuScores = tf.tensor2d(values, [rows, width]);
    const cpuRanks = await rankBatch(cpuScores, batch);
    cpuScores.dispose();
    for (let r = 0; r < rows; r++) {
      const reference = rankOfTarget(
        values.subarray(r * width, (r + 1) * width),
        batch.targets[r],
        batch.exclude[r],
      );
      assertEquals(cpuRanks[r], reference);
    }
    // Both backends exist wherever the suite runs (webgpu on a software adapter at worst):
    // one that fails to start is a failure, not a skip.
    await selectBackend(name as "wasm" | "webgpu");
    try {
      const before = tf.memory().numTensors;
      const scores = tf.tensor2d(values, [rows, width]);
      const ranks = await rankBatch(scores, batch);
      const lists = await topKBatch(scores, batch, 5);
      scores.dispose();
      assertEquals(tf.memory().numTensors, before);
      assertEquals(Array.from(ranks), Array.from(cpuRanks), name);
      // Tie order inside tf.topk may differ between backends; the score multiset may not.
      for (let r = 0; r < rows; r++) {
        assertEquals(lists[r].length, 5);
        for (const item of lists[r]) {
          assert(!batch.exclude[r].includes(item) || item === batch.targets[r], name);
          assert(item !== 0, name);
        }
        const got = Array.from(lists[r], (i) => values[r * width + i]).sort();
        const want = [...values.subarray(r * width + 1, (r + 1) * width)]
          .filter((_, j) => !batch.exclude[r].includes(j + 1) || j + 1 === batch.targets[r])
          .sort((a, b) => b - a)
          .slice(0, 5)
          .sort();
        assertEquals(got, want, name);
      }
    } finally {
      await selectBackend("cpu");
    }
  }
});

Deno.test("evaluateModel() protocol diffurec: K = 5, 10, 20 and the history kept, which only adds competitors", async () => {
  const data = syntheticDataset({ seed: 4, users: 120, items: 40, maxLength: 12 });
  const { split } = leaveOneOut(data);
  const model = new SasRec({
    numItems: data.numItems,
    hidden: 16,
    heads: 2,
    inner: 16,
    maxLength: 12,
  });
  const library = await evaluateModel(model, split.test, data.numItems, 64, 12);
  const diffurec = await evaluateModel(
    model,
    split.test,
    data.numItems,
    64,
    12,
    undefined,
    "diffurec",
  );
  assertEquals(Object.keys(diffurec).filter((k) => k.startsWith("recall@")), [
    "recall@5",
    "recall@10",
    "recall@20",
  ]);
  // Excluding the history removes competitors of the target: its rank can only improve.
  for (const k of [10, 20]) {
    assert(library[`recall@${k}`] >= diffurec[`recall@${k}`], `recall@${k}`);
    assert(library[`ndcg@${k}`] >= diffurec[`ndcg@${k}`], `ndcg@${k}`);
  }
  assert(library.mrr > diffurec.mrr, "keeping the history changed no rank");
  model.params.dispose();
});

Deno.test("the device-built mask equals the uploaded one, duplicates and target in the history included (300 cases)", async () => {
  for (const name of ["cpu", "wasm"] as const) {
    await selectBackend(name);
    try {
      const before = tf.memory().numTensors;
      fc.assert(
        fc.property(
          fc.integer({ min: 2, max: 40 }).chain((width) =>
            fc.array(
              fc.record({
                target: fc.integer({ min: 1, max: width - 1 }),
                exclude: fc.array(fc.integer({ min: 0, max: width - 1 }), { maxLength: 12 }),
              }),
              { minLength: 1, maxLength: 6 },
            ).map((rows) => ({ width, rows }))
          ),
          ({ width, rows }) => {
            const batch = makeBatch(rows);
            const prep = prepareBatch(batch, [rows.length, width]);
            const dense = allowedTensor(prep, false);
            const sparse = allowedTensor(prep, true);
            const equal = tf.tidy(() => tf.all(tf.equal(dense, sparse)).dataSync()[0]);
            assertEquals(Array.from(sparse.dataSync()), Array.from(prep.allowed), name);
            tf.dispose([dense, sparse]);
            return equal === 1;
          },
        ),
        { numRuns: 150 },
      );
      assertEquals(tf.memory().numTensors, before);
    } finally {
      await selectBackend("cpu");
    }
  }
});

releaseWebGpuAfterTests();
