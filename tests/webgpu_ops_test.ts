/**
 * The fused ops of `lib/nn/fused_ops.ts` (`backends/_webgpu_ops.ts`): on webgpu, the
 * values and gradients of a linear layer (its bias gradient a column sum), an embedding
 * lookup (its gradient one kernel) and the full-softmax cross-entropy (one kernel each way
 * per chunk) equal the composed ops on cpu within float32 tolerance, over random small
 * shapes; the tensor count stays flat; the dispatches are counted. On cpu and wasm the
 * helpers are the composed ops, bit for bit.
 *
 * Tolerance: `|webgpu - cpu| <= 1e-4 * max(1, max |cpu|)` over each output tensor. Both
 * sides sum the same float32 terms in different orders (tree sums and tiled GEMMs on the
 * GPU, sequential loops on cpu), and the softmax's exp differs by a few units in the last
 * place between WGSL and JavaScript; with at most a few hundred terms of magnitude about 1
 * per sum, that stays well under 1e-4 of the tensor's scale.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { probeWebGpu, selectBackend } from "../backends/mod.ts";
import {
  COLUMN_SUM_KERNEL,
  columnSum,
  EMBEDDING_GRAD_KERNEL,
  embeddingGradient,
  FUSED_LINEARS_MAX_ROWS,
  fusedLinear,
  fusedLinears,
  linearsKernelName,
  SOFTMAX_XENT_GRAD_KERNEL,
  SOFTMAX_XENT_KERNEL,
} from "../lib/nn/fused_ops.ts";
import { embeddingLookup } from "../lib/nn/layers.ts";
import { geluFused, geluTanhFused } from "../lib/nn/fused.ts";
import { itemLoss, softmaxCrossEntropy } from "../lib/nn/item_losses.ts";
import { seededUniform } from "./_fixtures.ts";
import { assert, assertEquals } from "./_assert.ts";
import { countGpuDispatches, releaseWebGpuAfterTests } from "./_webgpu.ts";
import { capLinearGroups } from "../backends/_webgpu_linear.ts";
import { accumulate } from "../lib/train/accumulate.ts";

const noGpu = (await probeWebGpu()) === null;

const uniform = seededUniform;

/** Integers in [0, n) from a seed. */
function ints(count: number, n: number, seed: number): Int32Array {
  return Int32Array.from(uniform(count, seed, 0, 1), (u) => Math.min(n - 1, Math.floor(u * n)));
}

/** Reads back every tensor `work` returns (inside a tidy) and disposes them. */
async function run(work: () => tf.Tensor[]): Promise<Float32Array[]> {
  const outs = tf.tidy(work);
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return values;
}

/** `work`'s results on cpu (the composed ops) and on webgpu (the fused kernels). */
async function onBoth(work: () => tf.Tensor[]): Promise<[Float32Array[], Float32Array[]]> {
  await selectBackend("cpu");
  const reference = await run(work);
  await selectBackend("webgpu", { webgpuCpuForward: false });
  return [reference, await run(work)];
}

/** Asserts the module's tolerance between webgpu's and cpu's outputs, tensor by tensor. */
function assertClose(gpu: Float32Array[], cpu: Float32Array[], label: string): void {
  assertEquals(gpu.length, cpu.length, label);
  cpu.forEach((ref, t) => {
    assertEquals(gpu[t].length, ref.length, `${label} output ${t}`);
    const scale = Math.max(1, ...ref.map(Math.abs));
    for (let i = 0; i < ref.length; i++) {
      assert(
        Math.abs(gpu[t][i] - ref[i]) <= 1e-4 * scale,
        `${label} output ${t} [${i}]: webgpu ${gpu[t][i]} vs cpu ${ref[i]} (scale ${scale})`,
      );
    }
  });
}

// ------------------------------------------------------------------- linear layers

/** A linear layer's output and gradients (x, w, b) for an upstream gradient. */
function linearWork(m: number, inDim: number, out: number, seed: number) {
  return () => {
    const x = tf.tensor2d(uniform(m * inDim, seed), [m, inDim]);
    const w = tf.tensor2d(uniform(inDim * out, seed + 1), [inDim, out]);
    const b = tf.tensor1d(uniform(out, seed + 2));
    const dy = tf.tensor2d(uniform(m * out, seed + 3), [m, out]);
    // cpu has no column-sum kernel: fusedLinear is tfjs's fused matmul and its gradient.
    const f = (a: tf.Tensor, v: tf.Tensor, c: tf.Tensor) =>
      fusedLinear(a as tf.Tensor2D, v as tf.Tensor2D, c);
    return [f(x, w, b), ...tf.grads(f)([x, w, b], dy)];
  };
}

Deno.test({
  name:
    "fusedLinear() on webgpu: value and gradients (the bias's a column sum) equal cpu's (12 random shapes and 2 tall ones)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    assert(tf.getKernel(COLUMN_SUM_KERNEL, "webgpu") !== undefined, "no column sum on webgpu");
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 1, max: 40 }), // past 16: more than one workgroup of columns
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (m, inDim, out, seed) => {
          const [cpu, gpu] = await onBoth(linearWork(m, inDim, out, seed));
          assertClose(gpu, cpu, `linear ${m} x ${inDim} -> ${out}`);
        },
      ),
      { numRuns: 12 },
    );
    // Many rows per column: each of the 16 lanes sums a long strided run.
    for (const [m, out] of [[1037, 3], [300, 33]]) {
      const [cpu, gpu] = await onBoth(linearWork(m, 4, out, 77));
      assertClose(gpu, cpu, `linear ${m} x 4 -> ${out}`);
    }
  },
});

/**
 * `n` linear layers of one input: their outputs, and the gradients of x, each w and each b
 * for upstream gradients of every output.
 */
function linearsWork(m: number, inDim: number, outs: number[], seed: number, rate = 0) {
  // Dropout on every other layer's output when `rate` > 0: the same Philox mask as dropout().
  const dropoutOf = (i: number) => rate > 0 && i % 2 === 0 ? { rate, seed: seed + i } : undefined;
  // An activation on every third layer, from the second (a kernel of its own).
  const activations = [
    { name: "gelu" as const, apply: geluFused },
    { name: "geluTanh" as const, apply: geluTanhFused },
    { name: "silu" as const, apply: (t: tf.Tensor) => tf.mul(t, tf.sigmoid(t)) },
  ];
  const activationOf = (i: number) => i % 3 === 1 ? activations[seed % 3] : undefined;
  // A residual added to the first layer's output when the seed is even.
  const residualOf = (i: number) =>
    i === 0 && seed % 2 === 0
      ? tf.tensor2d(uniform(m * outs[0], seed + 99), [m, outs[0]])
      : undefined;
  return () => {
    const x = tf.tensor2d(uniform(m * inDim, seed), [m, inDim]);
    const params = outs.flatMap((out, i) => [
      tf.tensor2d(uniform(inDim * out, seed + 10 * i + 1), [inDim, out]),
      tf.tensor1d(uniform(out, seed + 10 * i + 2)),
    ]);
    const dys = outs.map((out, i) => tf.tensor2d(uniform(m * out, seed + 10 * i + 3), [m, out]));
    const r = residualOf(0);
    // On cpu each layer is fusedLinear (tfjs's fused matmul): the reference.
    const f = (a: tf.Tensor, ...wb: tf.Tensor[]) => {
      const layers = outs.map((_, i) => ({
        w: wb[2 * i] as tf.Tensor2D,
        b: wb[2 * i + 1],
        dropout: dropoutOf(i),
        activation: activationOf(i),
        residual: i === 0 ? r : undefined,
      }));
      const ys = fusedLinears(a as tf.Tensor2D, layers);
      // One scalar whose gradient by y_i is dy_i.
      return ys.map((y, i) => tf.sum(tf.mul(y, dys[i]))).reduce((a, b) => tf.add(a, b));
    };
    const ys = fusedLinears(
      x,
      outs.map((_, i) => ({
        w: params[2 * i] as tf.Tensor2D,
        b: params[2 * i + 1],
        dropout: dropoutOf(i),
        activation: activationOf(i),
        residual: i === 0 ? r : undefined,
      })),
    );
    // The residual's gradient too, where there is one.
    const g = r
      ? tf.grads((rr: tf.Tensor) =>
        tf.sum(tf.mul(
          fusedLinears(x, [{
            w: params[0] as tf.Tensor2D,
            b: params[1],
            residual: rr as tf.Tensor2D,
          }])[0],
          dys[0],
        ))
      )([r])
      : [];
    return [...ys, ...tf.grads(f)([x, ...params]), ...g];
  };
}

Deno.test({
  name:
    "fusedLinears() on webgpu: 1-3 layers of one input, with and without output dropout, activations (GELUs, SiLU) and a residual, values and every gradient equal cpu's layer by layer (16 random shapes, grouped and not)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    assert(tf.getKernel(linearsKernelName(3), "webgpu") !== undefined, "no kernel on webgpu");
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 1, max: 40 }), // rows: past 16, more than one row of tiles
          fc.integer({ min: 1, max: 36 }),
          fc.array(fc.integer({ min: 1, max: 36 }), { minLength: 1, maxLength: 4 }),
          fc.constantFrom(1, 3), // layers per program: 1 as on a small device
          fc.integer({ min: 1, max: 2 ** 30 }),
          fc.constantFrom(0, 0.3),
          async (m, inDim, outs, cap, seed, rate) => {
            capLinearGroups(cap);
            const [cpu, gpu] = await onBoth(linearsWork(m, inDim, outs, seed, rate));
            assertClose(
              gpu,
              cpu,
              `linears ${m} x ${inDim} -> [${outs}] (${cap} per program, dropout ${rate})`,
            );
          },
        ),
        { numRuns: 16 },
      );
      capLinearGroups(3);
      // At FUSED_LINEARS_MAX_ROWS the kernel's weight-gradient sums, dropout masks drawn in
      // them, are whole (llvmpipe cut such sums at about 39,000 rows).
      const [cpuAt, gpuAt] = await onBoth(
        linearsWork(FUSED_LINEARS_MAX_ROWS, 3, [2, 5], 8, 0.3),
      );
      assertClose(gpuAt, cpuAt, `linears ${FUSED_LINEARS_MAX_ROWS} x 3 -> [2, 5]`);
      // Past FUSED_LINEARS_MAX_ROWS the reference path runs (llvmpipe truncated the kernel's
      // long weight-gradient sums): still cpu's values.
      const [cpuLong, gpuLong] = await onBoth(
        linearsWork(FUSED_LINEARS_MAX_ROWS + 3, 3, [2, 5], 8, 0.3),
      );
      assertClose(gpuLong, cpuLong, `linears ${FUSED_LINEARS_MAX_ROWS + 3} x 3 -> [2, 5]`);
      // A long summed axis: the weight and bias gradients add 1,037 rows.
      const [cpu, gpu] = await onBoth(linearsWork(1037, 20, [3, 17], 5));
      assertClose(gpu, cpu, "linears 1037 x 20 -> [3, 17]");
    } finally {
      capLinearGroups(3);
    }
  },
});

// --------------------------------------------------------------- embedding lookups

/** An embedding lookup's output and table gradient, ids with repeats. */
function embeddingWork(rows: number, d: number, ids: Int32Array, idShape: number[], seed: number) {
  return () => {
    const table = tf.tensor2d(uniform(rows * d, seed), [rows, d]);
    const idt = tf.tensor(ids, idShape, "int32");
    const dy = tf.tensor(uniform(ids.length * d, seed + 1), [...idShape, d]);
    const f = (t: tf.Tensor) => embeddingLookup(t as tf.Tensor2D, idt);
    return [f(table), tf.grad(f)(table, dy)];
  };
}

Deno.test({
  name:
    "embeddingLookup() on webgpu: its gradient (one kernel) sums repeated ids as ScatterNd on cpu (12 random cases)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    assert(tf.getKernel(EMBEDDING_GRAD_KERNEL, "webgpu") !== undefined, "no kernel on webgpu");
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 70 }), // past 16: several workgroups of rows
        fc.integer({ min: 1, max: 300 }), // past 256: two columns on a thread
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 30 }),
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (rows, d, b, l, seed) => {
          const ids = ints(b * l, rows, seed + 7);
          const [cpu, gpu] = await onBoth(embeddingWork(rows, d, ids, [b, l], seed));
          assertClose(gpu, cpu, `lookup of ${b} x ${l} ids in ${rows} x ${d}`);
        },
      ),
      { numRuns: 12 },
    );
  },
});

// ------------------------------------------------------------- softmax cross-entropy

/**
 * `softmaxCrossEntropy` (the whole table) or `itemLoss`'s softmax (rows 1.. of it; the
 * targets are ids 1..N) with their gradients by the queries and the table.
 */
function lossWork(
  p: number,
  n: number,
  d: number,
  budget: number,
  viaItemLoss: boolean,
  seed: number,
) {
  return () => {
    const q = tf.tensor2d(uniform(p * d, seed, -2, 2), [p, d]);
    const table = tf.tensor2d(uniform(n * d, seed + 1, -2, 2), [n, d]);
    const dy = tf.tensor1d(uniform(p, seed + 2, 0, 1));
    const f = viaItemLoss
      ? (a: tf.Tensor, t: tf.Tensor) =>
        itemLoss(tf.expandDims(a, 1) as tf.Tensor3D, t as tf.Tensor2D, targets(p, n - 1, seed, 1), {
          kind: "softmax",
          negatives: 1,
          temperature: 1,
          seed: 1,
          logitBudget: budget,
        })
      : (a: tf.Tensor, t: tf.Tensor) =>
        softmaxCrossEntropy(a as tf.Tensor2D, t as tf.Tensor2D, targets(p, n, seed, 0), budget);
    return [f(q, table), ...tf.grads(f)([q, table], dy)];
  };
}

/** `p` targets in `offset..offset + n - 1`. */
function targets(p: number, n: number, seed: number, offset: number): Int32Array {
  return ints(p, n, seed + 3).map((t) => t + offset);
}

Deno.test({
  name:
    "the full-softmax cross-entropy on webgpu (fused kernels): loss and gradients equal cpu's, one chunk or several (16 random cases)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    for (const kernel of [SOFTMAX_XENT_KERNEL, SOFTMAX_XENT_GRAD_KERNEL]) {
      assert(tf.getKernel(kernel, "webgpu") !== undefined, `no ${kernel} on webgpu`);
    }
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 30 }),
        fc.integer({ min: 2, max: 300 }), // past 256: a row wider than its workgroup
        fc.integer({ min: 1, max: 16 }),
        fc.constantFrom(1 << 23, 97, 1), // one chunk, a few, one position each
        fc.boolean(),
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (p, n, d, budget, viaItemLoss, seed) => {
          const [cpu, gpu] = await onBoth(lossWork(p, n, d, budget, viaItemLoss, seed));
          const how = viaItemLoss ? "itemLoss" : "softmaxCrossEntropy";
          assertClose(gpu, cpu, `${how} P ${p}, N ${n}, d ${d}, budget ${budget}`);
        },
      ),
      { numRuns: 16 },
    );
  },
});

// ------------------------------------------------------------ tensors and dispatches

Deno.test({
  name:
    "the fused ops keep the tensor count flat over repeated steps on webgpu (linear layers with their epilogues included)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const works = [
      linearWork(9, 5, 7, 3),
      // Three layers of one input: dropout, an activation and a residual among them.
      linearsWork(9, 5, [4, 6, 3], 2, 0.3),
      embeddingWork(20, 6, ints(12, 20, 4), [3, 4], 5),
      lossWork(7, 30, 4, 1 << 23, true, 6),
      lossWork(7, 30, 4, 60, false, 7),
    ];
    for (const work of works) await run(work); // first calls: compile and cache
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      for (const work of works) await run(work);
      assertEquals(tf.memory().numTensors, before, `step ${i + 1}`);
    }
  },
});

/** GPU dispatches of `work` on webgpu, its inputs made (and uploaded) beforehand. */
async function dispatchesOf(
  inputs: () => tf.Tensor[],
  work: (ts: tf.Tensor[]) => tf.Tensor[],
): Promise<number> {
  const ts = inputs();
  await Promise.all(ts.map((t) => t.data())); // uploads: no dispatch inside the count
  let outs: tf.Tensor[] = [];
  const count = countGpuDispatches(() => {
    outs = work(ts);
  });
  await Promise.all(outs.map((t) => t.data()));
  tf.dispose([...outs, ...ts]);
  return count;
}

Deno.test({
  name:
    "dispatches on webgpu: a linear layer forward and backward 4, an embedding gradient 1, the softmax loss 5 per chunk",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    // tf.valueAndGrads: one forward pass and one backward pass.
    const linear = () =>
      dispatchesOf(
        () => [[12, 8], [8, 24], [24], [12, 24]].map((shape) => tf.randomNormal(shape)),
        ([x, w, b, dy]) => {
          const f = (a: tf.Tensor, v: tf.Tensor, c: tf.Tensor) =>
            fusedLinear(a as tf.Tensor2D, v as tf.Tensor2D, c);
          const { value, grads } = tf.valueAndGrads(f)([x, w, b], dy as tf.Tensor2D);
          return [value, ...grads];
        },
      );
    await linear(); // compiles the programs
    assertEquals(await linear(), 4, "linear: fused matmul; 2 matmuls and a column sum");
    // Three layers of one input, one with dropout: one kernel each way. (The gradient flows
    // from the last output; the others' zero gradients are uploads, not dispatches.)
    const linears = () =>
      dispatchesOf(
        () =>
          [[12, 8], [8, 4], [4], [8, 4], [4], [8, 6], [6], [12, 6]].map((shape) =>
            tf.randomNormal(shape)
          ),
        ([x, ...rest]) => {
          const wb = rest.slice(0, 6);
          const f = (a: tf.Tensor, ...p: tf.Tensor[]) =>
            fusedLinears(
              a as tf.Tensor2D,
              [0, 1, 2].map((i) => ({
                w: p[2 * i] as tf.Tensor2D,
                b: p[2 * i + 1],
                dropout: i === 2 ? { rate: 0.5, seed: 7 } : undefined,
              })),
            )[2];
          return tf.grads(f)([x, ...wb], rest[6]);
        },
      );
    await linears();
    assertEquals(await linears(), 2, "three linears of one input: one kernel each way");
    // A layer with a GELU and dropout (an FFN's first layer): one kernel each way.
    const activated = () =>
      dispatchesOf(
        () => [[12, 8], [8, 16], [16], [12, 16]].map((shape) => tf.randomNormal(shape)),
        ([x, w, b, dy]) => {
          const f = (a: tf.Tensor, v: tf.Tensor, c: tf.Tensor) =>
            fusedLinears(a as tf.Tensor2D, [{
              w: v as tf.Tensor2D,
              b: c,
              dropout: { rate: 0.2, seed: 3 },
              activation: { name: "geluTanh", apply: geluTanhFused },
            }])[0];
          return tf.grads(f)([x, w, b], dy);
        },
      );
    await activated();
    assertEquals(await activated(), 2, "a linear layer with GELU and dropout");
    const embedding = () =>
      dispatchesOf(
        () => [tf.tensor1d(ints(12, 10, 9), "int32"), tf.randomNormal([12, 6])],
        ([ids, dy]) => [embeddingGradient(ids, dy, 10, 6)],
      );
    await embedding();
    assertEquals(await embedding(), 1, "embedding gradient");
    const loss = (budget: number) =>
      dispatchesOf(
        () => [tf.randomNormal([8, 4]), tf.randomNormal([30, 4]), tf.randomUniform([8])],
        ([q, table, dy]) => {
          const rows = targets(8, 30, 11, 0);
          const f = (a: tf.Tensor, t: tf.Tensor) =>
            softmaxCrossEntropy(a as tf.Tensor2D, t as tf.Tensor2D, rows, budget);
          const { value, grads } = tf.valueAndGrads(f)([q, table], dy as tf.Tensor1D);
          return [value, ...grads];
        },
      );
    await loss(1 << 23);
    // GEMM and kernel forward; kernel and 2 GEMMs backward.
    assertEquals(await loss(1 << 23), 5, "softmax loss, one chunk");
    await loss(4 * 30);
    // 2 chunks of 4 positions: per chunk a slice of the queries each way, the 5 above;
    // once, a concat of the losses, a concat of dq and an add of the table's gradient.
    assertEquals(await loss(4 * 30), 2 * (2 + 5) + 3, "softmax loss, two chunks");
  },
});

// ------------------------------------------------------------------- cpu and wasm

Deno.test("columnSum() and embeddingGradient() on cpu and wasm are tf.sum and tf.scatterND, bit for bit", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    const [a, b, c, e] = await run(() => {
      const x = tf.tensor2d(uniform(60, 1), [12, 5]);
      const ids = tf.tensor1d(ints(12, 7, 2), "int32");
      return [
        columnSum(x),
        tf.sum(x, 0),
        embeddingGradient(ids, x, 7, 5),
        tf.scatterND(tf.reshape(ids, [-1, 1]), x, [7, 5]),
      ];
    });
    assertEquals([...a], [...b], `${backend} column sum`);
    assertEquals([...c], [...e], `${backend} embedding gradient`);
  }
});

// ------------------------------------------------------------ gradient accumulation

Deno.test({
  name:
    "accumulate() on webgpu: sums in place where a sum's data is its own, as tf.add on cpu (bit for bit), in one dispatch for many pairs",
  ignore: noGpu,
  fn: async () => {
    const shapes = [[3, 5], [7], [2, 2, 2], [1], [40, 3], [6], [5, 5], [9], [2, 9], [11]];
    const values = shapes.map((shape, i) => {
      const size = shape.reduce((a, b) => a * b, 1);
      return [uniform(size, 100 + i), uniform(size, 200 + i)];
    });
    const sums = async () => {
      const acc = shapes.map((shape, i) => tf.tensor(values[i][0], shape));
      const g = shapes.map((shape, i) => tf.tensor(values[i][1], shape));
      const shared = tf.reshape(acc[1], [7, 1]); // acc[1]'s data has two owners: not in place
      const before = tf.memory().numTensors;
      const out = accumulate(acc, g);
      const reused = out.filter((t, i) => t === acc[i]).length;
      const read = await Promise.all(out.map((t) => t.data() as Promise<Float32Array>));
      tf.dispose([...new Set([...acc, ...g, ...out, shared])]);
      return { read, reused, made: tf.memory().numTensors, before };
    };
    await selectBackend("cpu");
    const cpu = await sums();
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const gpu = await sums();
    assertEquals(cpu.reused, 0, "cpu: new tensors");
    assertEquals(gpu.reused, shapes.length - 1, "webgpu: in place but for the shared one");
    gpu.read.forEach((v, t) => assertEquals(Array.from(v), Array.from(cpu.read[t]), `pair ${t}`));
    // Dispatches: the in-place pairs go 7 to a program on llvmpipe's 16 storage buffers
    // (more elsewhere), the shared one is an Add.
    const acc = shapes.map((shape) => tf.randomNormal(shape));
    const g = shapes.map((shape) => tf.randomNormal(shape));
    await Promise.all([...acc, ...g].map((t) => t.data()));
    let out: tf.Tensor[] = [];
    const limit = (tf.backend() as unknown as {
      device: { limits: { maxStorageBuffersPerShaderStage: number } };
    }).device.limits.maxStorageBuffersPerShaderStage;
    const count = countGpuDispatches(() => {
      out = accumulate(acc, g);
    });
    assertEquals(count, Math.ceil(shapes.length / Math.floor((limit - 1) / 2)), "dispatches");
    await Promise.all(out.map((t) => t.data()));
    tf.dispose([...acc, ...g]);
  },
});

releaseWebGpuAfterTests();
