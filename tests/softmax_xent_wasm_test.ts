/**
 * The full softmax's loss kernels on wasm (`softmax_xent`, `softmax_xent_grad` in
 * `backends/wasm/bmm.c`, registered by `backends/_wasm_fused.ts`): the kernels against a
 * float64 reference, and the losses of `lib/nn/item_losses.ts` that use them (one interest
 * and several, one chunk and several) against the composed ops on cpu, values and gradients.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import {
  SOFTMAX_XENT_GRAD_KERNEL,
  SOFTMAX_XENT_KERNEL,
  softmaxCrossEntropyRows,
  softmaxCrossEntropyRowsGrad,
} from "../lib/nn/fused_ops.ts";
import { itemLoss, softmaxCrossEntropy } from "../lib/nn/item_losses.ts";
import { seededUniform } from "./_fixtures.ts";
import { assert, assertEquals } from "./_assert.ts";

await selectBackend("wasm");
/** Whether this process's wasm backend runs bmm.wasm, and so the kernels. */
const wasmKernels = bmmActive();
await selectBackend("cpu");

/** Integers in [0, n) from a seed. */
function ints(count: number, n: number, seed: number): Int32Array {
  return Int32Array.from(
    seededUniform(count, seed, 0, 1),
    (u) => Math.min(n - 1, Math.floor(u * n)),
  );
}

/** Reads back every tensor `work` returns (inside a tidy) and disposes them. */
async function run(work: () => tf.Tensor[]): Promise<Float32Array[]> {
  const outs = tf.tidy(work);
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return values;
}

Deno.test("the softmax cross-entropy kernels are registered on wasm exactly where bmm.wasm runs", async () => {
  await selectBackend("wasm");
  for (const kernel of [SOFTMAX_XENT_KERNEL, SOFTMAX_XENT_GRAD_KERNEL]) {
    assertEquals(tf.getKernel(kernel, "wasm") !== undefined, wasmKernels, kernel);
  }
  await selectBackend("cpu");
});

/** One case of the kernels: logits `[rows, cols]` spread over `±spread`, targets, dy. */
interface KernelCase {
  rows: number;
  cols: number;
  first: number;
  start: number;
  spread: number;
  seed: number;
}

const kernelCase: fc.Arbitrary<KernelCase> = fc.record({
  rows: fc.integer({ min: 1, max: 9 }),
  cols: fc.integer({ min: 1, max: 70 }), // below 4 (no SIMD block) and every remainder mod 4
  first: fc.integer({ min: 0, max: 5 }),
  start: fc.integer({ min: 0, max: 3 }),
  spread: fc.constantFrom(0, 1, 30, 200), // equal logits; exp underflowing far from the max
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
}).filter((c) => c.first < c.cols);

/** The kernels' outputs for a case, with targets in first..cols-1. */
function kernelOutputs(c: KernelCase) {
  const logits = seededUniform(c.rows * c.cols, c.seed, -c.spread, c.spread);
  const targets = ints(c.start + c.rows, c.cols - c.first, c.seed + 1).map((t) => t + c.first);
  const dy = seededUniform(c.start + c.rows, c.seed + 2, -1, 1);
  const [prob, loss, g] = tf.tidy(() => {
    const t = tf.tensor1d(targets, "int32");
    const [p, l] = softmaxCrossEntropyRows(
      tf.tensor2d(logits, [c.rows, c.cols]),
      t,
      c.start,
      c.first,
    );
    return [p, l, softmaxCrossEntropyRowsGrad(p, t, tf.tensor1d(dy), c.start)];
  });
  const out = [prob.dataSync(), loss.dataSync(), g.dataSync()] as Float32Array[];
  tf.dispose([prob, loss, g]);
  return { logits, targets, dy, prob: out[0], loss: out[1], g: out[2] };
}

Deno.test({
  name:
    "softmax_xent on wasm: probabilities, loss and gradient equal a float64 softmax cross-entropy (300 random cases)",
  ignore: !wasmKernels,
  fn: async () => {
    await selectBackend("wasm");
    fc.assert(
      fc.property(kernelCase, (c) => {
        const o = kernelOutputs(c);
        for (let i = 0; i < c.rows; i++) {
          const row = Array.from(o.logits.subarray(i * c.cols, (i + 1) * c.cols));
          const m = Math.max(...row.slice(c.first));
          const s = row.slice(c.first).reduce((a, x) => a + Math.exp(x - m), 0);
          const target = o.targets[c.start + i];
          const loss = m + Math.log(s) - row[target];
          const label = `row ${i} of ${JSON.stringify(c)}`;
          assert(
            Math.abs(o.loss[i] - loss) <= 1e-5 * Math.max(1, Math.abs(loss)),
            `${label}: loss ${o.loss[i]} vs ${loss}`,
          );
          let sum = 0;
          for (let j = 0; j < c.cols; j++) {
            const p = j < c.first ? 0 : Math.exp(row[j] - m) / s;
            const got = o.prob[i * c.cols + j];
            sum += got;
            assert(
              Math.abs(got - p) <= 2e-6 * Math.max(p, 1e-3),
              `${label}: prob [${j}] ${got} vs ${p}`,
            );
            // float32 arithmetic: one rounding a product, two at the target.
            const g = j === target
              ? Math.fround(Math.fround(got - 1) * o.dy[c.start + i])
              : Math.fround(got * o.dy[c.start + i]);
            assertEquals(o.g[i * c.cols + j], g, `${label}: gradient [${j}]`);
          }
          assert(Math.abs(sum - 1) <= 1e-5, `${label}: probabilities sum to ${sum}`);
        }
      }),
      { numRuns: 300 },
    );
    await selectBackend("cpu");
  },
});

Deno.test({
  name: "softmax_xent on wasm: a NaN logit makes its row's loss NaN, not a silent number",
  ignore: !wasmKernels,
  fn: async () => {
    await selectBackend("wasm");
    for (const at of [0, 5, 9]) { // in the SIMD blocks and in the tail
      const logits = new Float32Array(10).fill(0.5);
      logits[at] = NaN;
      const [prob, loss] = tf.tidy(() =>
        softmaxCrossEntropyRows(tf.tensor2d(logits, [1, 10]), tf.tensor1d([3], "int32"), 0, 0)
      );
      assert(Number.isNaN(loss.dataSync()[0]), `NaN at ${at}: loss ${loss.dataSync()[0]}`);
      tf.dispose([prob, loss]);
    }
    await selectBackend("cpu");
  },
});

/**
 * SIGMA's interest loss (`itemLoss`, k interests, ids 1..N) or the whole-table loss
 * (`softmaxCrossEntropy`) with their gradients by the queries and the table.
 */
function lossWork(p: number, k: number, n: number, d: number, budget: number, seed: number) {
  return () => {
    const q = tf.tensor3d(seededUniform(p * k * d, seed, -2, 2), [p, k, d]);
    const table = tf.tensor2d(seededUniform(n * d, seed + 1, -2, 2), [n, d]);
    const dy = tf.tensor1d(seededUniform(p, seed + 2, 0, 1));
    const targets = ints(p, n - 1, seed + 3);
    const f = k > 1 || seed % 2 === 0
      ? (a: tf.Tensor, t: tf.Tensor) =>
        itemLoss(a as tf.Tensor3D, t as tf.Tensor2D, targets.map((x) => x + 1), {
          kind: "softmax",
          negatives: 1,
          temperature: 1,
          seed: 1,
          logitBudget: budget,
        })
      : (a: tf.Tensor, t: tf.Tensor) =>
        softmaxCrossEntropy(tf.squeeze(a, [1]) as tf.Tensor2D, t as tf.Tensor2D, targets, budget);
    return [f(q, table), ...tf.grads(f)([q, table], dy)];
  };
}

Deno.test({
  name:
    "the full-softmax losses on wasm (the kernels) equal the composed ops on cpu, one interest or several, one chunk or several (60 random cases)",
  ignore: !wasmKernels,
  fn: async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 20 }),
        fc.constantFrom(1, 2, 4),
        fc.integer({ min: 2, max: 90 }),
        fc.integer({ min: 1, max: 12 }),
        fc.constantFrom(1 << 23, 97, 1), // one chunk, a few, one position each
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (p, k, n, d, budget, seed) => {
          await selectBackend("cpu");
          const cpu = await run(lossWork(p, k, n, d, budget, seed));
          await selectBackend("wasm");
          const wasm = await run(lossWork(p, k, n, d, budget, seed));
          const label = `P ${p}, k ${k}, N ${n}, d ${d}, budget ${budget}, seed ${seed}`;
          cpu.forEach((ref, t) => {
            const scale = Math.max(1, ...ref.map(Math.abs));
            for (let i = 0; i < ref.length; i++) {
              assert(
                Math.abs(wasm[t][i] - ref[i]) <= 1e-4 * scale,
                `${label} output ${t} [${i}]: wasm ${wasm[t][i]} vs cpu ${ref[i]}`,
              );
            }
          });
        },
      ),
      { numRuns: 60 },
    );
    await selectBackend("cpu");
  },
});

Deno.test({
  name: "the wasm softmax cross-entropy keeps the tensor count flat over repeated steps",
  ignore: !wasmKernels,
  fn: async () => {
    await selectBackend("wasm");
    const step = lossWork(9, 4, 40, 6, 97, 5);
    await run(step); // warm-up: whatever a first call allocates once
    const before = tf.memory().numTensors;
    for (let i = 0; i < 5; i++) await run(step);
    assertEquals(tf.memory().numTensors, before, "tensors after 5 more steps");
    await selectBackend("cpu");
  },
});

Deno.test({
  name:
    "softmax_xent on wasm: a target outside the row gives a NaN loss and no write past the row; extreme rows keep their loss",
  ignore: !wasmKernels,
  fn: async () => {
    await selectBackend("wasm");
    for (const t of [-1, 5, 7, 1 << 20]) {
      const [prob, loss, g] = tf.tidy(() => {
        const targets = tf.tensor1d([t, 2], "int32");
        const [p, l] = softmaxCrossEntropyRows(
          tf.tensor2d([1, 2, 3, 4, 5, 5, 4, 3, 2, 1], [2, 5]),
          targets,
          0,
          1,
        );
        return [p, l, softmaxCrossEntropyRowsGrad(p, targets, tf.tensor1d([1, 1]), 0)];
      });
      const l = loss.dataSync(), p = prob.dataSync(), gr = g.dataSync();
      assert(Number.isNaN(l[0]) && Number.isFinite(l[1]), `target ${t}: losses ${l}`);
      // Row 0 has no one-hot (its target is outside), row 1 has it at column 2.
      for (let c = 0; c < 5; c++) assertEquals(gr[c], p[c], `target ${t}: gradient [0, ${c}]`);
      assertEquals(gr[5 + 2], Math.fround(p[5 + 2] - 1), `target ${t}: gradient [1, 2]`);
      tf.dispose([prob, loss, g]);
    }
    // Logits at float32's lowest: log 4 (the old start of the max, above them, gave 4e31).
    const lowest = -3.4028234663852886e38;
    const [p1, l1] = tf.tidy(() =>
      softmaxCrossEntropyRows(
        tf.tensor2d([lowest, lowest, lowest, lowest], [1, 4]),
        tf.tensor1d([2], "int32"),
        0,
        0,
      )
    );
    assert(Math.abs(l1.dataSync()[0] - Math.log(4)) < 1e-6, `loss ${l1.dataSync()[0]}`);
    const [p2, l2] = tf.tidy(() =>
      softmaxCrossEntropyRows(
        tf.tensor2d([-Infinity, -Infinity, -Infinity], [1, 3]),
        tf.tensor1d([0], "int32"),
        0,
        0,
      )
    );
    assert(Number.isNaN(l2.dataSync()[0]), `an all -inf row: loss ${l2.dataSync()[0]}`);
    tf.dispose([p1, l1, p2, l2]);
    await selectBackend("cpu");
  },
});
