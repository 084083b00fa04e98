import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import type { SequentialModel } from "../lib/models/_model.ts";
import fc from "fast-check";
import { maxAbsDiff } from "./_model_checks.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  MAX_OVER_INTERESTS,
  maxOverInterests,
  ROUTE_TO_INTERESTS,
  routeToInterests,
} from "../lib/nn/interest_kernels.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";

/** Names of the kernels one training step (forward, backward, Adam) and scoring dispatch. */
async function kernelsOf(model: SequentialModel): Promise<Set<string>> {
  const optimizer = tf.train.adam(1e-3);
  const batch = tinyTrainBatch(4, 6, 30);
  const info = await tf.profile(() => {
    optimizer.minimize(() => model.loss(batch, stepSeeds(1, 0)).loss, false, model.params.list());
    tf.tidy(() => model.scores(tinyEvalBatch(4, 6, 30)));
  });
  optimizer.dispose();
  // Custom-gradient scopes show up as "forward" and "unnamed scope": not kernels.
  return new Set(
    info.kernels.map((k) => k.name).filter((n) => tf.getKernel(n, "cpu") !== undefined),
  );
}

// tfjs has no silent fallback: a kernel missing on the active backend throws at run time.
// This lists what training needs and checks that wasm and webgpu register every one, so a
// change that starts using a kernel they lack (like UnsortedSegmentSum, the gradient of
// tf.gather) fails here with its name rather than deep inside a training run.
Deno.test("every kernel a SASRec or SIGMA training step dispatches exists on wasm and webgpu", async () => {
  await selectBackend("cpu");
  const models: SequentialModel[] = [
    new SasRec({ numItems: 30, hidden: 8, heads: 2, layers: 1, inner: 8, maxLength: 8 }),
    new Sigma({ numItems: 30, hidden: 8, heads: 2, inner: 8, maxLength: 8, categories: 3 }),
  ];
  for (const model of models) {
    const names = await kernelsOf(model);
    assert(names.has("ScatterNd"), `${model.name}: the embedding gradient should be a scatter`);
    for (const backend of ["wasm", "webgpu"]) {
      // The project's kernels have composite fallbacks where they are not registered.
      const optional = backend === "webgpu" ? [MAX_OVER_INTERESTS, ROUTE_TO_INTERESTS] : [];
      const missing = [...names].filter((n) =>
        tf.getKernel(n, backend) === undefined && !optional.includes(n)
      );
      assertEquals(missing, [], `${model.name} needs kernels ${backend} lacks`);
    }
    assert(!names.has("UnsortedSegmentSum"), `${model.name} dispatches UnsortedSegmentSum`);
    model.params.dispose();
  }
});

// The project's own kernels (backends/_kernels.ts) against plain tfjs ops, on the two
// backends that have them, with small integer values so that ties are frequent.
Deno.test("maxOverInterests(), routeToInterests() and row gathers equal tfjs ops on cpu and wasm", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    assert(tf.getKernel(MAX_OVER_INTERESTS, backend) !== undefined, `no kernel on ${backend}`);
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 1 << 30 }),
        (k, m, seed) => {
          tf.tidy(() => {
            const x = tf.floor(tf.randomUniform([k, m], 0, 3, "float32", seed)); // ties
            const { best, winner } = maxOverInterests(x);
            const byColumn = tf.transpose(x);
            assertEquals(Array.from(best.dataSync()), Array.from(tf.max(byColumn, 1).dataSync()));
            assertEquals(
              Array.from(winner.dataSync()),
              Array.from(tf.argMax(byColumn, 1).dataSync()),
            );
            const g = tf.randomNormal([m], 0, 1, "float32", seed + 1);
            const routed = routeToInterests(g, winner, k);
            const expected = k === 1 ? tf.reshape(g, [1, m]) : tf.transpose(
              tf.mul(tf.cast(tf.oneHot(winner, k), "float32"), tf.expandDims(g, 1)),
            );
            // Compared as numbers: the reference's 0 * negative is -0.
            assertEquals(maxAbsDiff(routed.dataSync(), expected.dataSync()), 0);
            const table = tf.randomNormal([m, 3], 0, 1, "float32", seed + 2);
            const ids = tf.tensor1d(Array.from({ length: 7 }, (_, i) => (i * seed) % m), "int32");
            const rows = tf.gather(table, ids);
            const reference = tf.matMul(
              tf.cast(tf.oneHot(ids, Math.max(m, 2)), "float32"),
              tf.pad(table, [[0, Math.max(m, 2) - m], [0, 0]]),
            );
            assertEquals(Array.from(rows.dataSync()), Array.from(reference.dataSync()));
          });
        },
      ),
      { numRuns: 200 },
    );
  }
});

Deno.test("the wasm row gather names an out-of-range index instead of reading past the table", async () => {
  await selectBackend("wasm");
  const table = tf.zeros([4, 2]);
  assertThrows(() => tf.gather(table, tf.tensor1d([1, 9], "int32")), RangeError, "index 9");
  table.dispose();
});
