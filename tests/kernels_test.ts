import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import { BMM_SINGLE_WASM_BASE64, BMM_WASM_BASE64 } from "../backends/wasm/_bmm_wasm.ts";
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
import {
  type MatMulCase,
  matMulCase,
  matMulOf,
  tinyEvalBatch,
  tinyTrainBatch,
} from "./_fixtures.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

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
    new Sigma({ numItems: 30, hidden: 8, heads: 2, inner: 8, maxLength: 8, interests: 3 }),
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

Deno.test("a gather along a batch axis (batchDims = axis) on wasm equals the cpu backend, int32 and float32 (200 random cases)", async () => {
  const cases = fc.sample(
    fc.record({
      batch: fc.integer({ min: 1, max: 5 }),
      rows: fc.integer({ min: 1, max: 9 }),
      inner: fc.integer({ min: 1, max: 4 }),
      picks: fc.integer({ min: 1, max: 7 }),
      seed: fc.nat(),
    }),
    { numRuns: 200, seed: 34 },
  );
  const gathered = async (backend: "cpu" | "wasm") => {
    await selectBackend(backend);
    return cases.map(({ batch, rows, inner, picks, seed }) =>
      tf.tidy(() => {
        const n = batch * rows * inner;
        const ints = tf.tensor3d(
          Int32Array.from({ length: n }, (_, i) => (i * 7919 + seed) % 100_003 - 50_000),
          [batch, rows, inner],
          "int32",
        );
        const floats = tf.div(tf.cast(ints, "float32"), 7);
        const ids = tf.tensor2d(
          Int32Array.from({ length: batch * picks }, (_, i) => (i * 31 + seed) % rows),
          [batch, picks],
          "int32",
        );
        return [tf.gather(ints, ids, 1, 1), tf.gather(floats, ids, 1, 1)].map((t) => ({
          shape: t.shape,
          values: Array.from(t.dataSync()),
        }));
      })
    );
  };
  const wasm = await gathered("wasm");
  assertEquals(wasm, await gathered("cpu"));
  await selectBackend("cpu");
});

Deno.test("batched matMul on wasm (bmm.wasm) equals the cpu backend for every transpose and broadcast", async () => {
  await selectBackend("wasm");
  assert(bmmActive(), "bmm.wasm should serve batched matmuls on the threaded wasm backend");
  const cases: MatMulCase[] = [];
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
        cases.push(matMulCase(leadA, leadB, [m, n, k], ta, tb, seed));
      },
    ),
    { numRuns: 200 },
  );
  const results = cases.map(matMulOf);
  await selectBackend("cpu");
  cases.forEach((c, i) => {
    const expected = matMulOf(c);
    const diff = maxAbsDiff(results[i], expected);
    // Fused multiply-adds round once where tfjs rounds twice: float32 noise, not 0.
    assert(
      diff < 1e-4,
      `a [${c.a}] b [${c.b}] ta ${c.ta} tb ${c.tb} seed ${c.seed}: differs by ${diff}`,
    );
  });
});

Deno.test("a single flagged matMul on wasm equals the product of the transposed operands, freeing its copies", async () => {
  // backends/_kernels.ts transposes first (tfjs-wasm's flagged 2-D product is a slow path):
  // the result must be tfjs's own unflagged product of the transposed operands, bit for bit.
  await selectBackend("wasm");
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 40 }),
      fc.boolean(),
      fc.boolean(),
      fc.boolean(), // a leading batch dimension of 1
      fc.integer({ min: 1, max: 1 << 30 }),
      (m, n, k, ta, tb, batched, seed) => {
        const lead = batched ? [1] : [];
        tf.tidy(() => {
          const a = tf.randomNormal([...lead, ...(ta ? [k, m] : [m, k])], 0, 1, "float32", seed);
          const b = tf.randomNormal(
            [...lead, ...(tb ? [n, k] : [k, n])],
            0,
            1,
            "float32",
            seed + 1,
          );
          const swap = (x: tf.Tensor) => tf.transpose(x, batched ? [0, 2, 1] : [1, 0]);
          const buffers = tf.backend().numDataIds();
          const flagged = tf.matMul(a, b, ta, tb);
          // Only the output is left: the transposed copies were freed.
          assertEquals(tf.backend().numDataIds(), buffers + 1, "buffers left behind");
          const plain = tf.matMul(ta ? swap(a) : a, tb ? swap(b) : b);
          assertEquals(flagged.shape, plain.shape);
          assertEquals(Array.from(flagged.dataSync()), Array.from(plain.dataSync()));
        });
      },
    ),
    { numRuns: 200 },
  );
  await selectBackend("cpu");
});

Deno.test("broadcasting add, sub and mul on wasm (bmm.wasm's row and column loops) equal cpu bit for bit", async () => {
  // Shapes: a full [..., d] operand and a row [d] or column [..., 1] on either side, leading
  // 1s, plus shapes the SIMD path does not take (same shape, middle-axis broadcasts).
  const cases = fc.sample(
    fc.record({
      lead: fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 2 }),
      d: fc.integer({ min: 1, max: 37 }),
      kind: fc.constantFrom("row", "column", "same", "middle", "scalar"),
      swap: fc.boolean(),
      leadingOnes: fc.boolean(),
      seed: fc.integer({ min: 1, max: 1 << 30 }),
    }),
    { numRuns: 200, seed: 3 },
  );
  const shapesOf = (c: (typeof cases)[number]): [number[], number[]] => {
    const full = [...c.lead, c.d];
    const ones = c.leadingOnes ? [1] : [];
    const small = c.kind === "row"
      ? [...ones, c.d]
      : c.kind === "column"
      ? [...c.lead, 1]
      : c.kind === "same"
      ? full
      : c.kind === "middle"
      ? [c.lead[0], ...c.lead.slice(1).map(() => 1), c.d]
      : [];
    return c.swap ? [small, full] : [full, small];
  };
  const run = () =>
    cases.map((c) =>
      tf.tidy(() => {
        const [sa, sb] = shapesOf(c);
        const a = tf.randomNormal(sa, 0, 2, "float32", c.seed);
        const b = tf.randomNormal(sb, 0, 2, "float32", c.seed + 1);
        return [tf.add(a, b), tf.sub(a, b), tf.mul(a, b)].map((t) => t.dataSync().slice());
      })
    );
  await selectBackend("cpu");
  const expected = run();
  await selectBackend("wasm");
  const buffers = tf.backend().numDataIds();
  const got = run();
  assertEquals(tf.backend().numDataIds(), buffers, "buffers left behind");
  cases.forEach((c, i) =>
    ["add", "sub", "mul"].forEach((op, j) =>
      assertEquals(
        Array.from(new Uint32Array(got[i][j].buffer)),
        Array.from(new Uint32Array(expected[i][j].buffer)),
        `${op} ${JSON.stringify(shapesOf(c))}`,
      )
    )
  );
  await selectBackend("cpu");
});

/** One call of a data-movement op on a seeded random input, for the layout-kernel test. */
interface LayoutCase {
  op: "slice" | "split" | "transpose" | "sum";
  shape: number[];
  dtype: "float32" | "int32";
  begin: number[];
  size: number[];
  axis: number;
  splits: number[];
  perm: number[];
  axes: number[];
  keepDims: boolean;
  seed: number;
}

function runLayoutCase(c: LayoutCase): tf.Tensor[] {
  return tf.tidy(() => {
    const normal = tf.randomNormal(c.shape, 0, 3, "float32", c.seed);
    const x = c.dtype === "int32" ? tf.cast(tf.round(normal), "int32") : normal;
    if (c.op === "slice") return [tf.slice(x, c.begin, c.size)];
    if (c.op === "split") return tf.split(x, c.splits, c.axis);
    if (c.op === "transpose") return [tf.transpose(x, c.perm)];
    return [tf.sum(normal, c.axes, c.keepDims)];
  });
}

/**
 * The most a float32 sum of the case's input can differ from cpu's, whatever the order of the
 * additions: n terms summed in float32 are within (n - 1) u sum|x| of the exact sum (u = 2^-24,
 * Higham's bound), and cpu (float64 adds) rounds its result to float32 once more, u |sum|. wasm
 * takes full reductions into tfjs's float32 kernel, where an absolute 1e-4 failed about once in
 * 200 runs (seen at 1.1e-4 over 720 values); a wrong axis or a lost element is off by about 3.
 */
function sumRoundingBound(c: LayoutCase): number {
  const terms = c.axes.reduce((n, a) => n * c.shape[a], 1);
  const absSum = tf.tidy(() =>
    tf.sum(tf.abs(tf.randomNormal(c.shape, 0, 3, "float32", c.seed))).dataSync()[0]
  );
  return 1.01 * terms * 2 ** -24 * absSum;
}

// backends/_layout_kernels.ts replaces these four wasm kernels for the cases it takes
// (all slices and splits, 2-D and last-axis-kept transposes, sums over leading axes) and
// falls back to tfjs's for the rest; every case here, taken or not, must equal cpu's.
Deno.test("wasm Slice, SplitV, Transpose and Sum equal the cpu backend on random shapes", async () => {
  const cases: LayoutCase[] = [];
  fc.assert(
    fc.property(
      fc.constantFrom("slice", "split", "transpose", "sum"),
      fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 4 }),
      fc.constantFrom("float32", "int32"),
      // Uniforms in [0, 1) from integers: fast-check's doubles crowd at 0 and 1.
      fc.array(fc.integer({ min: 0, max: 999 }).map((i) => i / 1000), {
        minLength: 8,
        maxLength: 8,
      }),
      fc.boolean(),
      fc.record({ rows: fc.integer({ min: 1, max: 3 }), cols: fc.integer({ min: 2, max: 9 }) }),
      fc.integer({ min: 1, max: 1 << 30 }), // tfjs treats seed 0 as "no seed"
      (op, drawnShape, dtype, u, keepDims, wide, seed) => {
        let shape = drawnShape;
        const rank = shape.length;
        const pick = (i: number, n: number) => Math.min(n - 1, Math.floor(u[i % 8] * n));
        const begin = shape.map((d, i) => pick(i, d));
        const size = shape.map((d, i) => 1 + pick(i + 4, d - begin[i]));
        const axis = pick(0, rank);
        const first = 1 + pick(1, shape[axis]);
        const splits = first === shape[axis] ? [first] : [first, shape[axis] - first];
        // A permutation from the uniforms (sort positions by key), and a set of axes that
        // is often a leading block (the case the wasm Sum kernel takes).
        let perm = [...Array(rank).keys()].sort((a, b) => u[a] - u[b] || a - b);
        if (op === "transpose" && u[6] < 0.4) {
          // The 2-D case the wasm kernel takes: rows a multiple of 64, maybe with a size-1 axis.
          const m = 64 * wide.rows;
          const n = wide.cols;
          const withOne = u[5] < 0.3;
          shape = withOne ? [1, m, n] : [m, n];
          perm = withOne ? [2, 0, 1] : [1, 0];
        }
        const axes = u[7] < 0.5
          ? [...Array(1 + pick(2, rank)).keys()]
          : [...Array(rank).keys()].filter((i) => u[i] < 0.5);
        // Sums run on float32 only (the wasm kernel's case); the label should say so.
        const type = op === "sum" ? "float32" : dtype;
        cases.push({
          op,
          shape,
          dtype: type,
          begin,
          size,
          axis,
          splits,
          perm,
          axes,
          keepDims,
          seed,
        });
      },
    ),
    { numRuns: 400 },
  );
  await selectBackend("wasm");
  const results: { shape: number[]; values: number[] }[][] = [];
  for (const c of cases) {
    const outs = runLayoutCase(c);
    results.push(
      await Promise.all(
        outs.map(async (t) => ({ shape: t.shape, values: Array.from(await t.data()) })),
      ),
    );
    tf.dispose(outs);
  }
  await selectBackend("cpu");
  cases.forEach((c, i) => {
    const outs = runLayoutCase(c);
    const expected = outs.map((t) => ({ shape: t.shape, values: Array.from(t.dataSync()) }));
    tf.dispose(outs);
    const label = `${c.op} ${c.dtype} [${c.shape}] seed ${c.seed}`;
    assertEquals(results[i].length, expected.length, label);
    const tolerance = c.op === "sum" ? sumRoundingBound(c) : 0; // copies are exact
    expected.forEach((e, j) => {
      assertEquals(results[i][j].shape, e.shape, label);
      const diff = maxAbsDiff(results[i][j].values, e.values);
      assert(diff <= tolerance, `${label}: output ${j} differs by ${diff}`);
    });
  });
});

Deno.test("the embedded bmm.wasm and bmm_single.wasm are the committed binaries that build.sh made from bmm.c", async () => {
  const exports = [
    "bmm",
    "broadcast_binary",
    "gelu",
    "gru_backward",
    "gru_backward_step",
    "gru_forward",
    "gru_forward_step",
    "gru_scratch_floats",
    "int8_top_k",
    "layer_norm",
    "layer_norm_grad",
    "max_over_rows",
    "philox_dropout",
    "route_to_rows",
    "softmax_xent",
    "softmax_xent_grad",
  ];
  for (
    const [name, base64] of [
      ["bmm.wasm", BMM_WASM_BASE64],
      ["bmm_single.wasm", BMM_SINGLE_WASM_BASE64],
    ] as const
  ) {
    const file = await Deno.readFile(new URL(`../backends/wasm/${name}`, import.meta.url));
    const embedded = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    assertEquals(embedded, file, name);
    // The module may only import the heap it works on: no memory, stack or data of its own.
    const module = new WebAssembly.Module(file);
    assertEquals(WebAssembly.Module.imports(module), [
      { module: "env", name: "memory", kind: "memory" },
    ], name);
    assertEquals(WebAssembly.Module.exports(module).map((e) => e.name).sort(), exports, name);
  }
});

// The wasm Identity shares its input's buffer (backends/_layout_kernels.ts): a clone must
// keep its values after the original is disposed, and both must free the buffer together.
Deno.test("a wasm clone outlives its original and frees the shared buffer with the last one", async () => {
  await selectBackend("wasm");
  const before = tf.memory().numBytes;
  const buffers = tf.backend().numDataIds();
  const x = tf.tensor2d([[1, 2, 3], [4, 5, 6]]);
  const copy = tf.clone(x);
  assertEquals(tf.backend().numDataIds(), buffers + 1); // shared, not copied
  x.dispose();
  assertEquals(Array.from(await copy.data()), [1, 2, 3, 4, 5, 6]);
  const doubled = tf.mul(copy, 2); // a kernel still reads the shared buffer
  assertEquals(Array.from(await doubled.data()), [2, 4, 6, 8, 10, 12]);
  assertEquals(tf.backend().numDataIds(), buffers + 2); // copy's and doubled's
  tf.dispose([copy, doubled]);
  assertEquals(tf.memory().numBytes, before);
  assertEquals(tf.backend().numDataIds(), buffers);
});

releaseWebGpuAfterTests();
