/** DiffuRec: the spec's tests of the Approximator and the model (`DIFFUREC.md` §7, 10-12, 18-19). */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import type { EvalBatch, TrainBatch } from "../lib/data/types.ts";
import { DiffuRec, type DiffuRecConfig, prefixExamples } from "../lib/models/diffurec.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { evaluateModel, splitBatch, train } from "../lib/train/trainer.ts";
import { readCheckpoint } from "../lib/train/checkpoint.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { DiffuRecSys } from "../lib/models/diffurecsys.ts";
import { historiesBatch, tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import { assertFlatTensorCount, assertParity, maxAbsDiff, modelRun } from "./_model_checks.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const TINY: Partial<DiffuRecConfig> & { numItems: number } = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  layers: 2,
  inner: 32,
  maxLength: 8,
  steps: 8,
  seed: 3,
  evalSeed: 5,
};

/** Scores of real items (columns 1..N) of every row, as nested arrays. */
function itemScores(model: DiffuRec, batch: EvalBatch): number[][] {
  return tf.tidy(() => {
    const s = model.scores(batch);
    return (s.arraySync() as number[][]).map((row) => row.slice(1));
  });
}

const near = (a: number[][], b: number[][], tol: number) =>
  maxAbsDiff(a.flat(), b.flat()) <= tol * Math.max(1, ...a.flat().map(Math.abs));

await selectBackend("cpu");

Deno.test("DiffuRec has the authors' parameter count for Beauty, Toys and ML-1M (used parameters)", () => {
  for (const [numItems, count] of [[12101, 2_474_368], [11924, 2_451_712], [3706, 1_399_808]]) {
    const model = new DiffuRec({ numItems });
    assertEquals(model.params.size(), count, `N = ${numItems}`);
    model.params.dispose();
  }
});

Deno.test("prefixExamples: one example per target, its prefix right-aligned (300 cases)", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }).chain((length) =>
        fc.array(fc.integer({ min: 0, max: length - 1 }), { minLength: 1, maxLength: 5 }).chain(
          (pads) =>
            fc.tuple(
              fc.constant(length),
              fc.constant(pads),
              fc.array(fc.integer({ min: 1, max: 20 }), {
                minLength: pads.length * (length + 1),
                maxLength: pads.length * (length + 1),
              }),
            ),
        )
      ),
      ([length, pads, ids]) => {
        // Row b holds a sequence of length - pads[b] + 1 items: inputs s[:-1], targets s[1:].
        const batch: TrainBatch = {
          batch: pads.length,
          length,
          inputs: new Int32Array(pads.length * length),
          targets: new Int32Array(pads.length * length),
        };
        const sequences = pads.map((pad, b) =>
          ids.slice(b * (length + 1), b * (length + 1) + length - pad + 1)
        );
        sequences.forEach((s, b) => {
          batch.inputs.set(s.slice(0, -1), b * length + pads[b]);
          batch.targets.set(s.slice(1), b * length + pads[b]);
        });
        const ex = prefixExamples(batch);
        const expected = sequences.flatMap((s) =>
          s.slice(1).map((y, j) => ({ prefix: s.slice(0, j + 1), y }))
        );
        assertEquals(ex.targets.length, expected.length);
        expected.forEach(({ prefix, y }, e) => {
          assertEquals(ex.targets[e], y);
          const row = Array.from(ex.inputs.subarray(e * length, (e + 1) * length));
          assertEquals(row, [...new Array(length - prefix.length).fill(0), ...prefix]);
        });
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("attention masks: keys ignores padding, compat (the authors' code) does not; both ignore item order", () => {
  // lambda 0 and one call: the Approximator's read-out of the history alone, deterministic.
  const base = { ...TINY, lambda: 0, sampling: "one" as const, dropout: 0, embeddingDropout: 0 };
  for (const attentionMask of ["keys", "compat"] as const) {
    const model = new DiffuRec({ ...base, attentionMask });
    const history = [4, 9, 2, 7];
    const before = itemScores(model, historiesBatch([history], 8));
    // The padding row of the item table changes.
    const records = model.params.records();
    const values = tf.tidy(() => model.params.list().map((v) => v.dataSync().slice()));
    const item = records.findIndex((r) => r.name === "item");
    values[item].fill(3, 0, TINY.hidden!);
    model.params.assign(records, Float32Array.from(values.flatMap((v) => Array.from(v))));
    const after = itemScores(model, historiesBatch([history], 8));
    if (attentionMask === "keys") {
      assert(near(after, before, 1e-5), "keys: padding changed the output");
    } else assert(!near(after, before, 1e-3), "compat: padding did not change the output");
    // Order of the non-last items does not matter (no positions, no causal mask); the last does.
    const swapped = itemScores(model, historiesBatch([[2, 9, 4, 7]], 8));
    assert(near(swapped, after, 1e-5), `${attentionMask}: order of earlier items mattered`);
    const lastChanged = itemScores(model, historiesBatch([[4, 9, 7, 2]], 8));
    assert(!near(lastChanged, after, 1e-3), `${attentionMask}: the last item did not matter`);
    // keys: the batch's padding length does not change a row's scores.
    if (attentionMask === "keys") {
      assert(
        near(itemScores(model, historiesBatch([history], 5)), after, 1e-5),
        "padding length mattered",
      );
    }
    model.params.dispose();
  }
});

Deno.test("lambda = 0: the reverse chain ends where one call does (x_t and t never reach the output)", () => {
  const model = new DiffuRec({ ...TINY, lambda: 0 });
  const one = new DiffuRec({ ...TINY, lambda: 0, sampling: "one" });
  const batch = tinyEvalBatch(4, 6, TINY.numItems);
  assert(near(itemScores(model, batch), itemScores(one, batch), 1e-5));
  // With lambda > 0 the chain's draws do reach it.
  const noisy = new DiffuRec({ ...TINY, lambda: 0.5 });
  assert(!near(itemScores(noisy, batch), itemScores(one, batch), 1e-3));
  for (const m of [model, one, noisy]) m.params.dispose();
});

Deno.test("a history's scores are the same alone, batched and repeated, and follow evalSeed", () => {
  const model = new DiffuRec({ ...TINY, lambda: 0.5 }); // a large lambda: the draws matter
  const histories = [[3, 5, 8], [1, 2], [7, 7, 9, 4, 6]];
  const batched = itemScores(model, historiesBatch(histories, 6));
  histories.forEach((h, b) => {
    assert(near(itemScores(model, historiesBatch([h], h.length)), [batched[b]], 1e-5), `row ${b}`);
  });
  assert(near(itemScores(model, historiesBatch(histories, 6)), batched, 0));
  const other = new DiffuRec({ ...TINY, lambda: 0.5, evalSeed: 6 });
  assert(!near(itemScores(other, historiesBatch(histories, 6)), batched, 1e-3), "evalSeed ignored");
  other.params.dispose();
  model.params.dispose();
});

Deno.test("DiffuRec loss, gradients and scores agree on cpu, wasm and webgpu", async () => {
  const settings: Partial<DiffuRecConfig>[] = [{}, {
    attentionMask: "compat",
    positions: "learned",
  }];
  for (const config of settings) {
    const ref = await modelRun("cpu", () => new DiffuRec({ ...TINY, ...config }), TINY.numItems);
    for (const backend of ["wasm", "webgpu"] as const) {
      assertParity(
        ref,
        await modelRun(backend, () => new DiffuRec({ ...TINY, ...config }), TINY.numItems),
        `${backend} ${JSON.stringify(config)}`,
      );
    }
  }
  await selectBackend("cpu");
});

Deno.test("DiffuRec: tensor count stays flat over training steps and repeated scoring", () => {
  const model = new DiffuRec(TINY);
  assertFlatTensorCount(model, TINY.numItems, "cpu");
  const batch = tinyEvalBatch(3, 6, TINY.numItems);
  const score = () =>
    tf.tidy(() => {
      model.scores(batch);
    });
  score(); // caches the item table's transpose
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) score();
  assertEquals(tf.memory().numTensors, before);
  model.params.dispose();
});

Deno.test("DiffuRec's loss is the cross-entropy of x0-hat against every row, padding row included by default", () => {
  // Every example's gradient reaches its target's embedding through the logits and, with
  // lambda > 0, through x_t: the target rows' gradient changes with lambda.
  const batch = tinyTrainBatch(3, 5, TINY.numItems);
  const grads = (lambda: number, padLogit: boolean) =>
    tf.tidy(() => {
      const model = new DiffuRec({ ...TINY, lambda, padLogit, dropout: 0, embeddingDropout: 0 });
      const item = model.params.get("item");
      const { value, grads } = tf.variableGrads(() => model.loss(batch, stepSeeds(2, 0)).loss, [
        item,
      ]);
      const out = { loss: value.dataSync()[0], item: grads[item.name].arraySync() as number[][] };
      model.params.dispose();
      return out;
    });
  const plain = grads(0, true);
  const withXt = grads(0.5, true);
  const targets = new Set(prefixExamples(batch).targets);
  for (const y of targets) {
    assert(maxAbsDiff(plain.item[y], withXt.item[y]) > 1e-6, `row ${y}: no gradient through x_t`);
  }
  // The padding row is in the softmax by default (it gets gradient), not with padLogit false.
  assert(plain.item[0].some((g) => g !== 0), "padding row without gradient");
  assert(grads(0, false).item[0].every((g) => g === 0), "padding row in the softmax");
  // Loss at initialisation: E ~ N(0, 1) makes logits of size ~sqrt(d): above log(N + 1).
  assert(plain.loss > Math.log(TINY.numItems + 1), `loss ${plain.loss}`);
});

Deno.test("DiffuRec rejects bad config fields, naming the field and value", () => {
  const cases: [Partial<DiffuRecConfig>, string][] = [
    [{ steps: 0 }, "steps"],
    [{ reverseSteps: 40 }, "reverseSteps (40) must be at most steps (8)"],
    [{ reverseSteps: -1 }, "reverseSteps must be an integer >= 0"],
    [{ schedule: "quadratic" as "linear" }, "schedule must be one of"],
    [{ lambda: -1 }, "lambda"],
    [{ attentionMask: "rows" as "keys" }, "attentionMask"],
    [{ heads: 3 }, "divisible"],
    [{ embeddingDropout: 1 }, "embeddingDropout"],
    [{ evalSeed: 1.5 }, "evalSeed"],
  ];
  for (const [patch, word] of cases) {
    assertThrows(() => new DiffuRec({ ...TINY, ...patch }), RangeError, word);
  }
});

Deno.test("the trainer splits DiffuRec's batches by history tokens, not by targets alone", () => {
  const model = new DiffuRec(TINY);
  const batch = tinyTrainBatch(6, 8, TINY.numItems); // rows with up to 7 targets, length 8
  assertEquals(model.trainingCost(batch.length), 4); // half the length: one example re-reads its prefix
  const cost = (length: number) => model.trainingCost(length);
  for (const budget of [8, 16, 40]) {
    for (const piece of splitBatch(batch, budget, cost)) {
      // Each piece is charged for its own padded length.
      const targets = piece.targets.filter((t) => t !== 0).length;
      assert(
        targets * cost(piece.length) <= budget || piece.batch === 1,
        `${targets} targets of length ${piece.length} over ${budget}`,
      );
    }
  }
  model.params.dispose();
});

Deno.test("compat models are charged for the padded length they read, and train on short histories within it", async () => {
  // compat pads every history to maxLength: a batch of short rows reads maxLength tokens
  // per example, which the split must count (it once sent 25,600 tokens in one pass).
  const budget = 16;
  for (
    const model of [
      new DiffuRec({ ...TINY, attentionMask: "compat" }),
      new DiffuRecSys({ ...TINY, attentionMask: "compat", ca: "compat" }),
    ]
  ) {
    const max = model.config.maxLength;
    for (const length of [2, 4, 8]) assertEquals(model.trainingCost(length), max / 2);
    const short = tinyTrainBatch(12, 3, TINY.numItems); // length 3, padded to 8 by the model
    const pieces = splitBatch(short, budget, (length) => model.trainingCost(length));
    assert(pieces.length > 1, "a batch over the budget at the padded length was not split");
    for (const piece of pieces) {
      const targets = piece.targets.filter((t) => t !== 0).length;
      // Tokens the model reads in this piece: each target re-reads a prefix padded to max.
      assert(targets * max <= 2 * budget || piece.batch === 1, `${targets} x ${max} tokens`);
    }
    model.params.dispose();
  }
  // And training runs on short and long histories alike, with that bound.
  await selectBackend("wasm");
  const data = syntheticDataset({ seed: 2, users: 40, items: 30, maxLength: 8 });
  const model = new DiffuRec({ ...TINY, numItems: data.numItems, attentionMask: "compat" });
  const result = await train(model, leaveOneOut(data).split, data.numItems, {
    epochs: 1,
    batchSize: 32,
    maxPositions: budget,
  });
  assert(Number.isFinite(result.history[0].loss), `loss ${result.history[0].loss}`);
  model.params.dispose();
  await selectBackend("cpu");
});

/** Least-squares residual of `s` on the columns of `a` (`rows x cols`, row-major), in float64. */
function residualOnColumns(a: number[][], s: number[]): number {
  const cols = a[0].length;
  // Normal equations (AᵀA) x = Aᵀ s, by Gaussian elimination with partial pivoting.
  const m = Array.from(
    { length: cols },
    (_, i) =>
      Array.from(
        { length: cols + 1 },
        (_, j) => a.reduce((sum, row, r) => sum + row[i] * (j < cols ? row[j] : s[r]), 0),
      ),
  );
  for (let c = 0; c < cols; c++) {
    const p = m.slice(c).reduce(
      (best, row, k) => Math.abs(row[c]) > Math.abs(m[best][c]) ? k + c : best,
      c,
    );
    [m[c], m[p]] = [m[p], m[c]];
    for (let r = c + 1; r < cols; r++) {
      const f = m[r][c] / m[c][c];
      for (let j = c; j <= cols; j++) m[r][j] -= f * m[c][j];
    }
  }
  const x = new Array<number>(cols).fill(0);
  for (let c = cols - 1; c >= 0; c--) {
    let v = m[c][cols];
    for (let j = c + 1; j < cols; j++) v -= m[c][j] * x[j];
    x[c] = v / m[c][c];
  }
  const fitted = a.map((row) => row.reduce((sum, v, j) => sum + v * x[j], 0));
  const norm = Math.hypot(...s);
  return Math.hypot(...s.map((v, r) => v - fitted[r])) / norm;
}

Deno.test("scores are x · Eᵀ, every row in the span of the item table, and padding is never recommended (spec test 7)", async () => {
  const model = new DiffuRec(TINY);
  const table = model.params.get("item").arraySync() as number[][]; // [N + 1, d], N + 1 > d
  const batch = historiesBatch([[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12]], 8);
  const scores = tf.tidy(() => model.scores(batch).arraySync() as number[][]);
  for (const row of scores) {
    const r = residualOnColumns(table, row);
    assert(r < 1e-5, `a score row is off the item table's span by ${r}`);
  }
  // The check can fail: a vector of N + 1 numbers not made as E x is far off the span.
  const other = scores[0].map((_, i) => Math.sin(7 * i + 1));
  assert(residualOnColumns(table, other) > 0.1, "the span check cannot tell");
  const items = Array.from({ length: TINY.numItems + 1 }, (_, i) => i === 0 ? "<pad>" : `i${i}`);
  using r = new Recommender(model, items);
  const all = await r.recommendBatch([["i1", "i2"], [], ["i3"]], {
    k: TINY.numItems,
    excludeSeen: false,
  });
  for (const { items: ranked } of all) {
    assertEquals(ranked.length, TINY.numItems); // every real item, and only those
    assert(!ranked.some((x) => x.item === "<pad>"), "padding recommended");
  }
});

Deno.test("validSampling one: every validation ranks that epoch's weights with one call; training and the chain are untouched; resume may switch it", async () => {
  await selectBackend("cpu");
  const data = syntheticDataset({ seed: 5, users: 40, items: 30, maxLength: 8 });
  const { split } = leaveOneOut(data);
  // lambda 0.5: the chain's draws move the ranking, so the two ways rank differently.
  const config = { ...TINY, numItems: data.numItems, lambda: 0.5 };
  const fast = { batchSize: 64, evalBatchSize: 64, examples: "prefixes" as const };
  // Validation metrics of `values` (a run's weights) ranked each way.
  const validOf = async (values: Float32Array, sampling: "chain" | "one") => {
    const ranker = new DiffuRec({ ...config, sampling });
    ranker.params.assign(ranker.params.records(), values.subarray(0, ranker.params.size()));
    const valid = await evaluateModel(ranker, split.valid, data.numItems, 64, 8);
    ranker.params.dispose();
    return valid;
  };
  // Trains `out` up to `epochs` (resuming it after the first call) and checks the last
  // epoch's validation against its weights, which the run's state holds.
  const step = async (out: string, epochs: number, validSampling: "model" | "one") => {
    const model = new DiffuRec(config);
    const before = tf.memory().numTensors;
    const result = await train(
      model,
      split,
      data.numItems,
      { ...fast, epochs, validSampling },
      { out, resume: epochs > 1 },
    );
    // Ranking keeps the item table's transpose (ParamStore.transposed): the model's, when it
    // validated itself; a twin's goes with the twin.
    const cached = validSampling === "model" ? 1 : 0;
    assertEquals(tf.memory().numTensors, before + cached, `${validSampling}: tensors left behind`);
    model.params.dispose();
    const last = result.history[epochs - 1];
    const { values } = await readCheckpoint(`${out}/state`);
    assertEquals(last.valid, await validOf(values, validSampling === "one" ? "one" : "chain"));
    assertEquals(last.validSampling, validSampling === "one" ? "one" : undefined);
    return { result, values };
  };
  const [a, b] = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  const chain = await step(a, 1, "model");
  const one = await step(b, 1, "one");
  // The same training, ranked two ways.
  assertEquals(one.values, chain.values);
  assert(
    JSON.stringify(one.result.valid) !== JSON.stringify(chain.result.valid),
    "the two ways ranked alike: the test cannot tell them apart",
  );
  // Every later validation ranks its own epoch's weights, also after a switch on resume.
  await step(b, 2, "one");
  await step(b, 3, "one");
  await step(a, 2, "one");
  const back = await step(a, 3, "model");
  assertEquals(back.result.history.map((r) => r.validSampling), [undefined, "one", undefined]);
  for (const dir of [a, b]) await Deno.remove(dir, { recursive: true });
});

Deno.test("validSampling: a bad value, or one for a model that ranks one way, is refused naming the field", async () => {
  await selectBackend("cpu");
  const data = syntheticDataset({ seed: 5, users: 20, items: 30, maxLength: 8 });
  const { split } = leaveOneOut(data);
  const model = new DiffuRec({ ...TINY, numItems: data.numItems });
  await assertRejects(
    // deno-lint-ignore no-explicit-any
    () => train(model, split, data.numItems, { validSampling: "fast" as any }),
    RangeError,
    'validSampling must be one of model, one, got "fast"',
  );
  model.params.dispose();
  const sasrec = new SasRec({ numItems: data.numItems, hidden: 16, heads: 2, maxLength: 8 });
  await assertRejects(
    () => train(sasrec, split, data.numItems, { validSampling: "one" }),
    RangeError,
    'validSampling must be "model" for model sasrec',
  );
  sasrec.params.dispose();
});

releaseWebGpuAfterTests();
