import fc from "fast-check";
import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import type { EvalBatch } from "../lib/data/types.ts";
import {
  evaluate,
  listDiversity,
  listIntraListDistance,
  MetricAccumulator,
  type Metrics,
  metricsFromRanks,
  rankBatch,
  rankOfTarget,
} from "../lib/eval/mod.ts";
import { assert, assertEquals } from "./_assert.ts";

await selectBackend("cpu");

const RUNS = { numRuns: 200 };

interface Row {
  scores: number[];
  target: number;
  exclude: number[];
}

interface Case {
  numItems: number;
  rows: Row[];
}

/** Small integer scores, so ties are frequent. */
const caseArb: fc.Arbitrary<Case> = fc.integer({ min: 1, max: 24 }).chain((n) =>
  fc.record({
    numItems: fc.constant(n),
    rows: fc.array(
      fc.record({
        scores: fc.array(fc.integer({ min: -2, max: 2 }), { minLength: n + 1, maxLength: n + 1 }),
        target: fc.integer({ min: 1, max: n }),
        exclude: fc.array(fc.integer({ min: 0, max: n }), { maxLength: 8 }),
      }),
      { minLength: 1, maxLength: 12 },
    ),
  })
);

/** Rows `from..to` of a case as an EvalBatch; user ids are row indices into the case. */
function batchOf(c: Case, from = 0, to = c.rows.length): EvalBatch {
  const rows = c.rows.slice(from, to);
  return {
    batch: rows.length,
    length: 1,
    inputs: new Int32Array(rows.length),
    targets: Int32Array.from(rows, (r) => r.target),
    users: Int32Array.from(rows, (_, i) => from + i),
    exclude: rows.map((r) => Int32Array.from(r.exclude)),
  };
}

/** The case cut into consecutive batches of `size` rows. */
function batchesOf(c: Case, size: number): EvalBatch[] {
  const out = [];
  for (let i = 0; i < c.rows.length; i += size) out.push(batchOf(c, i, i + size));
  return out;
}

/** A scorer reading each row's scores by user, so batching cannot change them. */
function scorer(c: Case): (b: EvalBatch) => tf.Tensor2D {
  return (b) => tf.tensor2d(Array.from(b.users, (u) => c.rows[u].scores));
}

/** Items other than the target, not padding, not excluded: those that can outrank it. */
function competitors(row: Row, numItems: number): number {
  const excluded = new Set(row.exclude.filter((e) => e !== 0 && e !== row.target));
  return numItems - 1 - excluded.size;
}

function assertInUnitInterval(m: Metrics): void {
  for (const [key, v] of Object.entries(m)) {
    assert(v >= 0 && v <= 1, `${key} = ${v} is outside [0, 1]`);
  }
}

const ranksArb = fc.array(fc.nat({ max: 120 }), { minLength: 1, maxLength: 60 });
const ksArb = fc.uniqueArray(fc.integer({ min: 1, max: 60 }), { minLength: 1, maxLength: 5 })
  .map((ks) => ks.sort((a, b) => a - b));

Deno.test("metrics lie in [0, 1], grow with K, and NDCG@K <= Recall@K", () => {
  fc.assert(
    fc.property(ranksArb, ksArb, (ranks, ks) => {
      const m = metricsFromRanks(ranks, ks);
      assertInUnitInterval(m);
      for (let i = 1; i < ks.length; i++) {
        assert(m[`recall@${ks[i]}`] >= m[`recall@${ks[i - 1]}`], "recall decreased with K");
        assert(m[`ndcg@${ks[i]}`] >= m[`ndcg@${ks[i - 1]}`], "ndcg decreased with K");
      }
      for (const k of ks) assert(m[`ndcg@${k}`] <= m[`recall@${k}`], `ndcg@${k} > recall@${k}`);
    }),
    RUNS,
  );
});

Deno.test("rankOfTarget() on the host equals rankBatch() on the device, ties included", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async (c) => {
      const scores = tf.tensor2d(c.rows.map((r) => r.scores));
      const ranks = await rankBatch(scores, batchOf(c));
      scores.dispose();
      const host = c.rows.map((r) => rankOfTarget(r.scores, r.target, r.exclude));
      assertEquals(Array.from(ranks), host);
    }),
    RUNS,
  );
});

Deno.test("a scorer that puts each target strictly first gets recall, NDCG and MRR of 1", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async (c) => {
      const top: Case = {
        numItems: c.numItems,
        rows: c.rows.map((r) => {
          const scores = [...r.scores];
          scores[r.target] = Math.max(...scores) + 1;
          return { ...r, scores };
        }),
      };
      const { metrics, count } = await evaluate(scorer(top), [batchOf(top)], {
        numItems: c.numItems,
      });
      assertEquals(count, c.rows.length);
      for (const v of Object.values(metrics)) assertEquals(v, 1);
    }),
    RUNS,
  );
});

Deno.test("a constant scorer ranks every target below all its competitors (pessimistic ties)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, fc.integer({ min: -3, max: 3 }), async (c, value) => {
      const flat: Case = {
        numItems: c.numItems,
        rows: c.rows.map((r) => ({ ...r, scores: r.scores.map(() => value) })),
      };
      const scores = tf.tensor2d(flat.rows.map((r) => r.scores));
      const ranks = await rankBatch(scores, batchOf(flat));
      scores.dispose();
      const expected = flat.rows.map((r) => competitors(r, c.numItems));
      assertEquals(Array.from(ranks), expected);
      // Every cutoff no larger than the fewest competitors scores exactly 0.
      const fewest = Math.min(...expected);
      if (fewest >= 1) {
        const m = metricsFromRanks(ranks, [fewest]);
        assertEquals(m[`recall@${fewest}`], 0);
        assertEquals(m[`ndcg@${fewest}`], 0);
      }
    }),
    RUNS,
  );
});

Deno.test("relabelling item ids leaves the metrics unchanged", async () => {
  const arb = caseArb.chain((c) =>
    fc.tuple(
      fc.constant(c),
      fc.array(fc.nat(), { minLength: c.numItems, maxLength: c.numItems }),
    )
  );
  await fc.assert(
    fc.asyncProperty(arb, async ([c, keys]) => {
      // perm[old] = new: a permutation of 1..N derived from random sort keys; 0 stays 0.
      const order = keys.map((k, i) => [k, i + 1]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      const perm = new Int32Array(c.numItems + 1);
      order.forEach(([, old], i) => (perm[old] = i + 1));
      const relabelled: Case = {
        numItems: c.numItems,
        rows: c.rows.map((r) => {
          const scores = new Array<number>(c.numItems + 1);
          r.scores.forEach((s, j) => (scores[perm[j]] = s));
          return {
            scores,
            target: perm[r.target],
            exclude: r.exclude.map((e) => perm[e]),
          };
        }),
      };
      const options = { numItems: c.numItems, ks: [1, 3, 10] };
      const a = await evaluate(scorer(c), [batchOf(c)], options);
      const b = await evaluate(scorer(relabelled), [batchOf(relabelled)], options);
      assertEquals(b, a);
    }),
    RUNS,
  );
});

Deno.test("the batch size does not change the metrics (exact equality)", async () => {
  const arb = caseArb.chain((c) =>
    fc.record({
      c: fc.constant(c),
      sizeA: fc.integer({ min: 1, max: c.rows.length }),
      sizeB: fc.integer({ min: 1, max: c.rows.length }),
      categories: fc.array(
        fc.uniqueArray(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
        { minLength: c.numItems, maxLength: c.numItems },
      ),
    })
  );
  await fc.assert(
    fc.asyncProperty(arb, async ({ c, sizeA, sizeB, categories }) => {
      const options = {
        numItems: c.numItems,
        ks: [1, 3, 10],
        categories: [Int32Array.of(), ...categories.map((l) => Int32Array.from(l))],
        numCategories: 5,
      };
      const a = await evaluate(scorer(c), batchesOf(c, sizeA), options);
      const b = await evaluate(scorer(c), batchesOf(c, sizeB), options);
      assertEquals(b, a);
      assertInUnitInterval(a.metrics);
    }),
    RUNS,
  );
});

Deno.test("diversity and coverage lie in [0, 1] for any top lists", () => {
  const arb = fc.integer({ min: 1, max: 30 }).chain((n) =>
    fc.record({
      categories: fc.array(
        fc.uniqueArray(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }),
        { minLength: n, maxLength: n },
      ),
      lists: fc.array(
        fc.uniqueArray(fc.integer({ min: 1, max: n }), { maxLength: 45 }),
        { minLength: 1, maxLength: 10 },
      ),
    })
  );
  fc.assert(
    fc.property(arb, ksArb, ({ categories, lists }, ks) => {
      const acc = new MetricAccumulator({
        ks,
        categories: [Int32Array.of(), ...categories.map((l) => Int32Array.from(l))],
        numCategories: 6,
      });
      acc.add(lists.map(() => 0));
      acc.addTopK(lists);
      assertInUnitInterval(acc.result());
    }),
    RUNS,
  );
});

Deno.test("diversity is 0 with one shared category and 1 with a category per item", async () => {
  const ks = [1, 2, 5, 10];
  await fc.assert(
    fc.asyncProperty(caseArb, async (c) => {
      const n = c.numItems;
      const shared = [Int32Array.of(), ...Array.from({ length: n }, () => Int32Array.of(0))];
      const own = [Int32Array.of(), ...Array.from({ length: n }, (_, i) => Int32Array.of(i))];
      const one = await evaluate(scorer(c), [batchOf(c)], { numItems: n, ks, categories: shared });
      const each = await evaluate(scorer(c), [batchOf(c)], { numItems: n, ks, categories: own });
      for (const k of ks) {
        assertEquals(one.metrics[`diversity@${k}`], 0);
        // A top list holds the target and its competitors, at most K of them; a list of
        // fewer than 2 items has no pairs and counts as 0.
        const lengths = c.rows.map((r) => Math.min(k, competitors(r, n) + 1));
        const withPairs = lengths.filter((l) => l >= 2).length;
        assertEquals(each.metrics[`diversity@${k}`], withPairs / c.rows.length);
        const covered = lengths.reduce((s, l) => s + l, 0);
        assertEquals(each.metrics[`coverage@${k}`], covered / n / c.rows.length);
      }
    }),
    RUNS,
  );
});

/** Category lists of `n` items (each a set of up to 4 ids of 0..5) and top lists over them. */
const listsArb = fc.integer({ min: 2, max: 30 }).chain((n) =>
  fc.record({
    categories: fc.array(
      fc.uniqueArray(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }),
      { minLength: n, maxLength: n },
    ),
    lists: fc.array(
      fc.uniqueArray(fc.integer({ min: 1, max: n }), { minLength: 1, maxLength: 45 }),
      { minLength: 1, maxLength: 10 },
    ),
  }).map(({ categories, lists }) => ({
    categories: [Int32Array.of(), ...categories.map((l) => Int32Array.from(l))],
    lists,
  }))
);

Deno.test("ILD and Eq. 15's Diversity lie in [0, 1] and do not depend on the order of a list's items (300 cases)", () => {
  fc.assert(
    fc.property(listsArb, fc.nat(), ({ categories, lists }, seed) => {
      for (const list of lists) {
        const ild = listIntraListDistance(list, categories);
        assert(ild >= 0 && ild <= 1, `ILD ${ild}`);
        const shuffled = [...list];
        let s = seed;
        for (let i = shuffled.length - 1; i > 0; i--) {
          s = (Math.imul(s, 1103515245) + 12345) >>> 0;
          const j = s % (i + 1);
          [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
        }
        const again = listIntraListDistance(shuffled, categories);
        assert(Math.abs(again - ild) <= 1e-12, `${ild} vs ${again} after a shuffle`);
        // Eq. 15 counts pairs: exactly the same after a shuffle.
        const diversity = listDiversity(list, categories);
        assert(diversity >= 0 && diversity <= 1, `Diversity ${diversity}`);
        assertEquals(listDiversity(shuffled, categories), diversity);
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("ILD is 0 for items with one and the same category set, 1 for disjoint singletons (300 cases)", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 40 }),
      fc.uniqueArray(fc.integer({ min: 0, max: 50 }), { minLength: 1, maxLength: 5 }),
      (n, set) => {
        const ids = Array.from({ length: n }, (_, i) => i + 1);
        const same = [Int32Array.of(), ...ids.map(() => Int32Array.from(set))];
        const own = [Int32Array.of(), ...ids.map((i) => Int32Array.of(i))];
        assertEquals(listIntraListDistance(ids, same), 0);
        assertEquals(listIntraListDistance(ids, own), 1);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("ild@K is the mean of each list's ILD, the same bits however the lists are split or ordered (300 cases)", () => {
  fc.assert(
    fc.property(listsArb, ksArb, ({ categories, lists }, ks) => {
      const whole = new MetricAccumulator({ ks, categories, numCategories: 6 });
      whole.add(lists.map(() => 0));
      whole.addTopK(lists);
      const pieces = new MetricAccumulator({ ks, categories, numCategories: 6 });
      for (const list of [...lists].reverse()) {
        pieces.add([0]);
        pieces.addTopK([list]);
      }
      const a = whole.result();
      assertEquals(pieces.result(), a);
      for (const k of ks) {
        const mean = lists.reduce((s, l) => s + listIntraListDistance(l, categories, k), 0) /
          lists.length;
        assert(Math.abs(a[`ild@${k}`] - mean) <= 1e-12, `ild@${k} ${a[`ild@${k}`]} vs ${mean}`);
      }
    }),
    { numRuns: 300 },
  );
});
