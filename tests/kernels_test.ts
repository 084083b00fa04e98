import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import { BMM_WASM_BASE64 } from "../backends/wasm/_bmm_wasm.ts";
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
Deno.test("maxOverInterests(), routeToInterests() and row gathers equal tfjs ops on cpu, wasm and webgpu", async () => {
  for (const backend of ["cpu", "wasm", "webgpu"] as const) {
    await selectBackend(backend);
    // webgpu has no such kernel: there the composite tfjs-op path is what is tested.
    assertEquals(tf.getKernel(MAX_OVER_INTERESTS, backend) !== undefined, backend !== "webgpu");
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 1 << 30 }),
        async (k, m, seed) => {
          // Read back with data(): webgpu has no synchronous read under Deno.
          const values = async (t: tf.Tensor) => Array.from(await t.data());
          const [x, g, table, ids] = [
            tf.floor(tf.randomUniform([k, m], 0, 3, "float32", seed)), // small ints: ties
            tf.randomNormal([m], 0, 1, "float32", seed + 1),
            tf.randomNormal([m, 3], 0, 1, "float32", seed + 2),
            tf.tensor1d(Array.from({ length: 7 }, (_, i) => (i * seed) % m), "int32"),
          ];
          const { best, winner } = maxOverInterests(x);
          const byColumn = tf.transpose(x);
          const [maxRef, argRef] = [tf.max(byColumn, 1), tf.argMax(byColumn, 1)];
          assertEquals(await values(best), await values(maxRef));
          assertEquals(await values(winner), await values(argRef));
          const routed = routeToInterests(g, winner, k);
          const expected = k === 1 ? tf.reshape(g, [1, m]) : tf.transpose(
            tf.mul(tf.cast(tf.oneHot(winner, k), "float32"), tf.expandDims(g, 1)),
          );
          // Compared as numbers: the reference's 0 * negative is -0.
          assertEquals(maxAbsDiff(await values(routed), await values(expected)), 0);
          const rows = tf.gather(table, ids);
          const width = Math.max(m, 2); // tf.oneHot needs depth >= 2
          const reference = tf.matMul(
            tf.cast(tf.oneHot(ids, width), "float32"),
            tf.pad(table, [[0, width - m], [0, 0]]),
          );
          assertEquals(await values(rows), await values(reference));
          tf.dispose([x, g, table, ids, best, winner, byColumn, maxRef, argRef, routed]);
          tf.dispose([expected, rows, reference]);
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

Deno.test("batched matMul on wasm (bmm.wasm) equals the cpu backend for every transpose and broadcast", async () => {
  await selectBackend("wasm");
  assert(bmmActive(), "bmm.wasm should serve batched matmuls on the threaded wasm backend");
  const cases: { a: number[]; b: number[]; ta: boolean; tb: boolean; seed: number }[] = [];
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 3 }),
      fc.integer({ min: 1, max: 20 }), // M: multiples of 6 and remainders
      fc.integer({ min: 1, max: 19 }), // N: multiples of 8 and remainders
      fc.integer({ min: 1, max: 12 }), // K
      fc.boolean(),
      fc.boolean(),
      fc.constantFrom("same", "a1", "b1"),
      fc.integer({ min: 1, max: 1 << 30 }), // tfjs treats seed 0 as "no seed"
      (b0, b1, m, n, k, ta, tb, broadcast, seed) => {
        const lead = [b0 + 1, b1]; // at least 2 batches: bmm.wasm's case
        const leadA = broadcast === "a1" ? [1, 1] : lead;
        const leadB = broadcast === "b1" ? [1, 1] : lead;
        cases.push({
          a: [...leadA, ...(ta ? [k, m] : [m, k])],
          b: [...leadB, ...(tb ? [n, k] : [k, n])],
          ta,
          tb,
          seed,
        });
      },
    ),
    { numRuns: 200 },
  );
  const results: Float32Array[] = [];
  for (const c of cases) {
    const out = tf.tidy(() =>
      tf.matMul(
        tf.randomNormal(c.a, 0, 1, "float32", c.seed),
        tf.randomNormal(c.b, 0, 1, "float32", c.seed + 1),
        c.ta,
        c.tb,
      )
    );
    results.push(await out.data() as Float32Array);
    out.dispose();
  }
  await selectBackend("cpu");
  cases.forEach((c, i) => {
    const expected = tf.tidy(() =>
      tf.matMul(
        tf.randomNormal(c.a, 0, 1, "float32", c.seed),
        tf.randomNormal(c.b, 0, 1, "float32", c.seed + 1),
        c.ta,
        c.tb,
      ).dataSync()
    );
    const diff = maxAbsDiff(results[i], expected);
    // Fused multiply-adds round once where tfjs rounds twice: float32 noise, not 0.
    assert(
      diff < 1e-4,
      `a [${c.a}] b [${c.b}] ta ${c.ta} tb ${c.tb} seed ${c.seed}: differs by ${diff}`,
    );
  });
});

Deno.test("the embedded bmm.wasm is the committed binary that build.sh made from bmm.c", async () => {
  const file = await Deno.readFile(new URL("../backends/wasm/bmm.wasm", import.meta.url));
  const embedded = Uint8Array.from(atob(BMM_WASM_BASE64), (c) => c.charCodeAt(0));
  assertEquals(embedded, file);
  // The module may only import the heap it works on: no memory, stack or data of its own.
  const module = new WebAssembly.Module(file);
  assertEquals(WebAssembly.Module.imports(module), [
    { module: "env", name: "memory", kind: "memory" },
  ]);
  assertEquals(
    WebAssembly.Module.exports(module).map((e) => e.name).sort(),
    ["bmm", "max_over_rows", "route_to_rows"],
  );
});
