import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { evalBatches, leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import {
  diversifiedRank,
  evaluateDiversified,
  interestOrder,
  mmrOrder,
  resolveDiversityMethod,
} from "../lib/eval/diversify.ts";
import { evaluate } from "../lib/eval/evaluate.ts";
import { rankOfTarget } from "../lib/eval/rank.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";

await selectBackend("cpu");

const data = syntheticDataset({ seed: 5, users: 50, items: 40, maxLength: 10 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 10 };

/** Scores best first, as a pool arrives: a descending copy of random values. */
const poolScores = fc.array(fc.float({ min: -50, max: 50, noNaN: true }), {
  minLength: 1,
  maxLength: 40,
}).map((xs) => Float32Array.from(xs).sort().reverse());

/** `n` random unit vectors of width `d`. */
function unitVectors(n: number, d: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  const v = Float32Array.from({ length: n * d }, next);
  for (let i = 0; i < n; i++) {
    const row = v.subarray(i * d, (i + 1) * d);
    const norm = Math.hypot(...row);
    row.forEach((x, u) => (row[u] = x / norm));
  }
  return v;
}

Deno.test("weight 0 keeps the pool's order exactly, for both methods (300 pools)", () => {
  fc.assert(
    fc.property(poolScores, fc.integer({ min: 1, max: 50 }), fc.nat(), (scores, length, seed) => {
      const n = scores.length;
      const expected = Array.from({ length: Math.min(length, n) }, (_, i) => i);
      assertEquals([...mmrOrder(scores, unitVectors(n, 4, seed), 4, length, 0)], expected);
      const memberships = unitVectors(n, 3, seed + 1).map(Math.abs);
      const profile = [0.5, 0.3, 0.2];
      assertEquals([...interestOrder(scores, profile, memberships, 3, length, 0)], expected);
    }),
    { numRuns: 300 },
  );
});

Deno.test("every weight picks distinct pool items, as many as asked or the pool holds (300 pools)", () => {
  fc.assert(
    fc.property(
      poolScores,
      fc.integer({ min: 1, max: 50 }),
      fc.float({ min: 0, max: 100, noNaN: true }),
      fc.nat(),
      (scores, length, weight, seed) => {
        const n = scores.length;
        const memberships = unitVectors(n, 3, seed).map(Math.abs);
        for (
          const order of [
            mmrOrder(scores, unitVectors(n, 5, seed), 5, length, weight),
            interestOrder(scores, [0.2, 0.2, 0.6], memberships, 3, length, weight),
          ]
        ) {
          assertEquals(order.length, Math.min(length, n));
          assertEquals(new Set(order).size, order.length);
          for (const i of order) assert(i >= 0 && i < n);
        }
        // MMR always opens with the best item: nothing is in the list to be unlike yet.
        assertEquals(mmrOrder(scores, unitVectors(n, 5, seed), 5, length, weight)[0], 0);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("above its threshold, MMR takes one item of each group of identical vectors before a second (200 cases)", () => {
  fc.assert(
    fc.property(
      poolScores.filter((s) => s.length >= 4),
      fc.integer({ min: 2, max: 4 }),
      fc.float({ min: Math.fround(1.01), max: 50, noNaN: true }),
      (scores, groups, weight) => {
        // Item i is in group i % groups; groups are orthogonal unit vectors. A second item of
        // a group costs `weight` (cosine 1) and relevance gains at most 1: below the weight.
        const n = scores.length;
        const d = groups;
        const vectors = new Float32Array(n * d);
        for (let i = 0; i < n; i++) vectors[i * d + (i % groups)] = 1;
        const present = new Set(Array.from({ length: n }, (_, i) => i % groups)).size;
        const order = mmrOrder(scores, vectors, d, n, weight);
        const firstGroups = Array.from(order.subarray(0, present), (i) => i % groups);
        assertEquals(new Set(firstGroups).size, present);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("above its threshold, interest coverage opens with one item of each interest the user has (200 cases)", () => {
  fc.assert(
    fc.property(
      poolScores.filter((s) => s.length >= 4),
      fc.array(fc.float({ min: Math.fround(0.05), max: 1, noNaN: true }), {
        minLength: 2,
        maxLength: 4,
      }),
      (scores, raw) => {
        // One-hot memberships: item i belongs to interest i % k. Once an interest holds an
        // item its coverage term is 0, so a weight above 1 / min(alpha) puts each uncovered
        // interest ahead of any relevance.
        const k = raw.length;
        const total = raw.reduce((a, b) => a + b, 0);
        const profile = raw.map((x) => x / total);
        const weight = 1.01 / Math.min(...profile);
        const n = scores.length;
        const memberships = new Float32Array(n * k);
        for (let i = 0; i < n; i++) memberships[i * k + (i % k)] = 1;
        const present = new Set(Array.from({ length: n }, (_, i) => i % k)).size;
        const order = interestOrder(scores, profile, memberships, k, n, weight);
        const opening = Array.from(order.subarray(0, present), (i) => i % k);
        assertEquals(new Set(opening).size, present);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("diversifiedRank() is the target's place in the re-ranked list followed by the rest in score order (400 cases)", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: -5, max: 5 }), { minLength: 3, maxLength: 30 }),
      fc.nat(),
      fc.nat(),
      (raw, targetSeed, listSeed) => {
        // Scores with ties on items 1..n (0 is padding), the target among them.
        const scores = Float32Array.from([0, ...raw]);
        const n = raw.length;
        const target = 1 + (targetSeed % n);
        const rank = rankOfTarget(scores, target);
        // A list: some items, in an arbitrary order, maybe holding the target.
        const items = Array.from({ length: n }, (_, i) => i + 1);
        let s = listSeed;
        for (let i = items.length - 1; i > 0; i--) {
          s = (Math.imul(s, 1103515245) + 12345) >>> 0;
          const j = s % (i + 1);
          [items[i], items[j]] = [items[j], items[i]];
        }
        const list = items.slice(0, 1 + (listSeed % n));
        // The full ranking: the list, then the others best first, the target after its ties.
        const rest = items.filter((i) => !list.includes(i)).sort((a, b) =>
          scores[b] - scores[a] || (a === target ? 1 : b === target ? -1 : 0)
        );
        const expected = [...list, ...rest].indexOf(target);
        const got = diversifiedRank(rank, scores[target], target, list, list.map((i) => scores[i]));
        assertEquals(got, expected);
      },
    ),
    { numRuns: 400 },
  );
});

Deno.test("evaluateDiversified() at weight 0 equals evaluate() exactly; other weights give valid metrics", async () => {
  const model = new Sigma({ ...TINY, seed: 4, interests: 3 });
  try {
    const batches = evalBatches(split.test, { batchSize: 16, maxLength: 10 });
    const plain = await evaluate((b) => model.scores(b), batches, {
      numItems: data.numItems,
      categories: data.categories,
    });
    const before = tf.memory().numTensors;
    for (const method of ["mmr", "interests"] as const) {
      const results = await evaluateDiversified(model, batches, {
        numItems: data.numItems,
        weights: [0, 0.5, 4],
        method,
        pool: 25,
        categories: data.categories,
      });
      assertEquals(results[0].metrics, plain.metrics);
      for (const { metrics } of results) {
        for (const [key, value] of Object.entries(metrics)) {
          assert(value >= 0 && value <= 1, `${method}: ${key} = ${value}`);
        }
      }
      // Recall can only move within the pool: the lists are drawn from the best 25.
      assert(results[2].metrics["recall@40"] <= plain.metrics["recall@40"] + 1e-12);
    }
    assertEquals(tf.memory().numTensors, before, "tensors left behind");
  } finally {
    model.params.dispose();
  }
});

Deno.test("evaluateDiversified() at weight 0 keeps evaluate()'s pessimistic ties: a constant scorer ranks every target last", async () => {
  const model = new SasRec({ ...TINY, seed: 4 });
  try {
    const constant = {
      name: "constant",
      scores: (b: { batch: number }) => tf.zeros([b.batch, data.numItems + 1]) as tf.Tensor2D,
      itemVectors: () => model.itemVectors(),
    };
    const batches = evalBatches(split.test, { batchSize: 16, maxLength: 10 });
    const plain = await evaluate((b) => constant.scores(b), batches, { numItems: data.numItems });
    const [zero] = await evaluateDiversified(constant, batches, {
      numItems: data.numItems,
      weights: [0],
    });
    assertEquals(zero.metrics, plain.metrics);
    assertEquals(plain.metrics["recall@10"], 0);
  } finally {
    model.params.dispose();
  }
});

Deno.test("SASRec diversifies by MMR; asking it for interests is a RangeError naming mmr", () => {
  const sasrec = new SasRec({ ...TINY, seed: 2 });
  const sigma = new Sigma({ ...TINY, seed: 2, interests: 3 });
  try {
    assertEquals(resolveDiversityMethod(sasrec), "mmr");
    // auto is mmr for every model (chosen on Beauty's validation split, docs/results.md).
    assertEquals(resolveDiversityMethod(sigma), "mmr");
    assertEquals(resolveDiversityMethod(sigma, "interests"), "interests");
    assertEquals(resolveDiversityMethod(sigma, "mmr"), "mmr");
    assertThrows(() => resolveDiversityMethod(sasrec, "interests"), RangeError, "mmr");
    assertThrows(() => resolveDiversityMethod(sasrec, "random"), RangeError, "auto, mmr");
  } finally {
    sasrec.params.dispose();
    sigma.params.dispose();
  }
});

Deno.test("Recommender: diversity 0 is today's ranking exactly; any weight never returns seen or excluded items", async () => {
  for (const kind of ["sasrec", "sigma"] as const) {
    const model = kind === "sasrec"
      ? new SasRec({ ...TINY, seed: 6 })
      : new Sigma({ ...TINY, seed: 6, interests: 3 });
    using recommender = new Recommender(model, data.vocab.items);
    const histories = data.sequences.slice(0, 12).map((s) =>
      Array.from(s.subarray(0, 6), (i) => data.vocab.items[i])
    );
    const plain = await recommender.recommendBatch(histories, { k: 10 });
    assertEquals(await recommender.recommendBatch(histories, { k: 10, diversity: 0 }), plain);
    // A large weight does re-rank (the lists are not silently the model's own).
    const strong = await recommender.recommendBatch(histories, { k: 10, diversity: 10 });
    const names = (r: { items: { item: string }[] }) => r.items.map((x) => x.item).join(" ");
    assert(strong.some((r, h) => names(r) !== names(plain[h])), `${kind}: nothing re-ranked`);
    const before = tf.memory().numTensors;
    for (const diversity of [0.3, 1, 10]) {
      const diverse = await recommender.recommendBatch(histories, {
        k: 10,
        diversity,
        exclude: ["i1", "i2"],
      });
      diverse.forEach(({ items }, h) => {
        assertEquals(items.length, 10);
        assertEquals(new Set(items.map((r) => r.item)).size, 10);
        for (const { item } of items) {
          assert(!histories[h].includes(item), `${kind}: seen item ${item} returned`);
          assert(item !== "i1" && item !== "i2", `${kind}: excluded item ${item} returned`);
        }
      });
    }
    assertEquals(tf.memory().numTensors, before, `${kind}: tensors left behind`);
  }
});

Deno.test("SIGMA diversifies an empty history over its interests, weighed alike", async () => {
  using recommender = new Recommender(
    new Sigma({ ...TINY, seed: 8, interests: 3 }),
    data.vocab.items,
  );
  const names = (r: { items: { item: string }[] }) => r.items.map((x) => x.item).join(" ");
  const plain = await recommender.recommend([], { k: 10 });
  const diverse = await recommender.recommend([], {
    k: 10,
    diversity: 50,
    diversityMethod: "interests",
  });
  assert(names(plain) !== names(diverse), "an empty history was not re-ranked");
});

Deno.test("Recommender: bad diversity options are errors naming the option", async () => {
  using recommender = new Recommender(new SasRec({ ...TINY, seed: 1 }), data.vocab.items);
  const history = ["i1", "i2"];
  await assertRejects(
    () => recommender.recommend(history, { diversityMethod: "random" as "mmr" }),
    RangeError,
    "diversityMethod must be one of",
  );
  await assertRejects(
    () => recommender.recommend(history, { diversity: -1 }),
    RangeError,
    "diversity",
  );
  await assertRejects(
    // deno-lint-ignore no-explicit-any
    () => recommender.recommend(history, { diversity: "1" as any }),
    TypeError,
    "diversity",
  );
  await assertRejects(
    () => recommender.recommend(history, { diversity: 1, diversityMethod: "interests" }),
    RangeError,
    "mmr",
  );
  await assertRejects(
    () => recommender.recommend(history, { diversity: 1, diversityPool: 0 }),
    RangeError,
    "diversityPool",
  );
});
