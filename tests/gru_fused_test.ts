/**
 * The gated category GRU on its webgpu and wasm kernels (`lib/nn/gru.ts`,
 * `backends/_webgpu_gru.ts`, `backends/_wasm_gru.ts`): values and every gradient against the
 * composed path on cpu, over random shapes, layers
 * and gate patterns (all-zero rows like padding, one-hots, fractional gates); a tensor count
 * that stays flat; and the dispatches of a forward and backward pass.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { probeWebGpu, selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import {
  createGru,
  gatedCategoryGru,
  GRU_BACKWARD_KERNEL,
  GRU_FORWARD_KERNEL,
} from "../lib/nn/gru.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { seededUniform } from "./_fixtures.ts";
import { assert, assertEquals } from "./_assert.ts";
import { countGpuDispatches, releaseWebGpuAfterTests } from "./_webgpu.ts";

const noGpu = (await probeWebGpu()) === null;
await selectBackend("wasm");
/** Whether this process's wasm backend runs bmm.wasm, and so the GRU kernels. */
const wasmKernels = bmmActive();
await selectBackend("cpu");

const uniform = seededUniform;

/**
 * How the gates are drawn: `onehot`, a category or none (an all-zero row) per position;
 * `padded`, the same after a run of all-zero leading positions, as SIGMA's left padding;
 * `zero`, every gate 0 (no state ever moves); `soft`, fractions in [0, 1].
 */
type GatePattern = "onehot" | "padded" | "zero" | "soft";

/** One GRU case. */
interface GruCase {
  batch: number;
  length: number;
  k: number;
  d: number;
  layers: number;
  gates: GatePattern;
  seed: number;
  /** The items' range, +-scale (default 2). */
  scale?: number;
}

/** The case's gates `[B, L, k]`, host-side. */
function gateValues(c: GruCase): Float32Array {
  const { batch, length, k } = c;
  const out = new Float32Array(batch * length * k);
  if (c.gates === "soft") return uniform(out.length, c.seed + 1, 0, 1);
  if (c.gates === "zero") return out;
  const choice = uniform(batch * length, c.seed + 1, 0, k + 1);
  const pad = c.gates === "padded" ? Math.floor(length / 2) : 0;
  for (let b = 0; b < batch; b++) {
    for (let t = pad; t < length; t++) {
      const j = Math.floor(choice[b * length + t]); // k: no category
      if (j < k) out[(b * length + t) * k + j] = 1;
    }
  }
  return out;
}

/** A variable of these values (the initial tensor freed). */
function variableOf(
  values: Float32Array,
  shape: [number, number, number],
): tf.Variable<tf.Rank.R3> {
  const init = tf.tensor3d(values, shape);
  const v = tf.variable(init);
  init.dispose();
  return v;
}

/**
 * The case's GRU value and its gradients (for a random upstream gradient) w.r.t. the
 * items, the gates and every parameter in creation order, on the active backend, read
 * back: `[value, dItems, dGates, ...dParams]`.
 */
async function gruRun(c: GruCase): Promise<Float32Array[]> {
  const { batch, length, k, d, layers, seed } = c;
  const p = new ParamStore(seed);
  createGru(p, "gru", d, layers);
  // Host values for every parameter (biases too: the stored init would make them zero).
  p.list().forEach((v, i) =>
    tf.tidy(() => v.assign(tf.tensor(uniform(v.size, seed + 10 + i, -0.6, 0.6), v.shape)))
  );
  const outs: tf.Tensor[] = [];
  const items = variableOf(uniform(batch * length * d, seed + 2, -(c.scale ?? 2), c.scale ?? 2), [
    batch,
    length,
    d,
  ]);
  const gates = variableOf(gateValues(c), [batch, length, k]);
  const dy = tf.tensor4d(uniform(batch * length * k * d, seed + 3), [batch, length, k, d]);
  const vars = [items, gates, ...p.list()];
  const { value, grads } = tf.variableGrads(() => {
    const y = gatedCategoryGru(p, "gru", items, gates, layers); // [B, L, k, d]
    outs.push(tf.keep(y));
    return tf.sum(tf.mul(y, dy)) as tf.Scalar;
  }, vars);
  outs.push(...vars.map((v) => grads[v.name]));
  tf.dispose([value, items, gates, dy]);
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  p.dispose();
  return values;
}

/**
 * A GRU of `layers` layers over padded gates, and `step`, one forward and backward pass of
 * the sum of its output into every variable (results disposed): for counting kernels.
 */
function trainingPass(batch: number, length: number, k: number, d: number, layers: number) {
  const p = new ParamStore(5, 0.3);
  createGru(p, "gru", d, layers);
  const items = variableOf(uniform(batch * length * d, 1), [batch, length, d]);
  const gates = variableOf(
    gateValues({ batch, length, k, d, layers, gates: "padded", seed: 2 }),
    [batch, length, k],
  );
  const vars = [items, gates, ...p.list()];
  const step = () => {
    const { value, grads } = tf.variableGrads(
      () => tf.sum(gatedCategoryGru(p, "gru", items, gates, layers)) as tf.Scalar,
      vars,
    );
    tf.dispose([value, ...Object.values(grads)]);
  };
  return { p, items, gates, step };
}

/** Largest absolute value. */
const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/**
 * Relative tolerance of every output of the webgpu path against cpu's composed one, per
 * element, against the output's scale max(1, max |ref|). Both are float32 (rounding 6e-8)
 * but the kernels sum the recurrent products in their own order, evaluate sigmoid and tanh
 * by tfjs's webgpu formulas, and the weight gradients sum all steps in one matmul instead of
 * step by step; errors then travel through the recurrence (up to 8 steps here). 5e-5 is
 * about 800 roundings; the largest difference seen on llvmpipe is in the test's log.
 */
const TOLERANCE = 5e-5;

/** Small cases: the software adapter is slow, and the cpu reference runs every one. */
const smallCase: fc.Arbitrary<GruCase> = fc.record({
  batch: fc.integer({ min: 1, max: 3 }),
  length: fc.integer({ min: 1, max: 8 }),
  k: fc.integer({ min: 1, max: 4 }),
  d: fc.integer({ min: 1, max: 40 }),
  layers: fc.integer({ min: 1, max: 3 }),
  gates: fc.constantFrom<GatePattern>("onehot", "padded", "zero", "soft"),
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
});

/** The largest relative difference of `gpu` from `cpu` over the outputs, with its index. */
function worst(gpu: Float32Array[], cpu: Float32Array[]): { rel: number; output: number } {
  let out = { rel: 0, output: -1 };
  gpu.forEach((a, i) => {
    assertEquals(a.length, cpu[i].length, `output ${i} size`);
    const scale = Math.max(1, maxAbs(cpu[i]));
    for (let e = 0; e < a.length; e++) {
      const rel = Math.abs(a[e] - cpu[i][e]) / scale;
      if (!(rel <= out.rel)) out = { rel, output: i }; // NaN counts as worst
    }
  });
  return out;
}

Deno.test("gatedCategoryGru() on cpu: no GRU kernel, the composed path (the reference)", async () => {
  await selectBackend("cpu");
  assertEquals(tf.getKernel(GRU_FORWARD_KERNEL, "cpu"), undefined);
  assertEquals(tf.getKernel(GRU_BACKWARD_KERNEL, "cpu"), undefined);
});

Deno.test("gatedCategoryGru() on wasm: the kernels are there exactly when bmm.wasm runs", async () => {
  await selectBackend("wasm");
  const registered = tf.getKernel(GRU_FORWARD_KERNEL, "wasm") !== undefined &&
    tf.getKernel(GRU_BACKWARD_KERNEL, "wasm") !== undefined;
  assertEquals(registered, bmmActive(), "GRU kernels registered iff bmm.wasm is bound");
  await selectBackend("cpu");
});

/**
 * The wasm kernels (bmm.c) against cpu's composed path: the same tolerance as webgpu's (its
 * own exp, the recurrent products summed in the SIMD product's order, weight gradients in
 * one matmul over all steps).
 */
Deno.test({
  name: "gatedCategoryGru() on wasm kernels equals cpu's composed path, values and gradients",
  ignore: !wasmKernels,
  fn: async () => {
    let seen = 0;
    const check = async (c: GruCase) => {
      await selectBackend("cpu");
      const cpu = await gruRun(c);
      await selectBackend("wasm");
      const wasm = await gruRun(c);
      const { rel, output } = worst(wasm, cpu);
      seen = Math.max(seen, rel);
      assert(rel <= TOLERANCE, `${JSON.stringify(c)}: output ${output} off by ${rel}`);
    };
    await fc.assert(fc.asyncProperty(smallCase, check), { numRuns: 100 });
    // Wide, and saturated: items of +-60 put sigmoid and tanh far out on their flat ends.
    await check({ batch: 2, length: 3, k: 2, d: 300, layers: 2, gates: "padded", seed: 7 });
    await check({ batch: 3, length: 6, k: 3, d: 12, layers: 2, gates: "soft", seed: 9, scale: 60 });
    console.log(`largest relative difference: ${seen.toExponential(2)} (tolerance ${TOLERANCE})`);
    await selectBackend("cpu");
  },
});

Deno.test({
  name: "gatedCategoryGru() on wasm: a layer is one kernel call each way, tensors flat",
  ignore: !wasmKernels,
  fn: async () => {
    await selectBackend("wasm");
    const layers = 2;
    const { p, items, gates, step } = trainingPass(4, 30, 3, 16, layers);
    step();
    const before = tf.memory().numTensors;
    const kernelNames = (await tf.profile(step)).kernels.map((kernel) => kernel.name);
    step();
    assertEquals(tf.memory().numTensors, before, "tensors left behind");
    const count = (name: string) => kernelNames.filter((n) => n === name).length;
    assertEquals(count(GRU_FORWARD_KERNEL), layers);
    assertEquals(count(GRU_BACKWARD_KERNEL), layers);
    // The composed path runs a dozen kernels per position and layer forward, two dozen
    // backward (~2,000 here); the kernels' path a few dozen per layer whatever the length
    // (70 when written: projections, weight gradients, reshapes, the loss).
    console.log(`kernel calls of a forward and backward pass: ${kernelNames.length}`);
    assert(kernelNames.length <= 50 * layers, `${kernelNames.length} kernel calls`);
    tf.dispose([items, gates]);
    p.dispose();
    await selectBackend("cpu");
  },
});

Deno.test({
  name: "gatedCategoryGru() on webgpu kernels equals cpu's composed path, values and gradients",
  ignore: noGpu,
  fn: async () => {
    let seen = 0;
    const check = async (c: GruCase) => {
      await selectBackend("cpu");
      const cpu = await gruRun(c);
      await selectBackend("webgpu", { webgpuCpuForward: false });
      assert(tf.getKernel(GRU_FORWARD_KERNEL, "webgpu") !== undefined);
      const gpu = await gruRun(c);
      const { rel, output } = worst(gpu, cpu);
      seen = Math.max(seen, rel);
      assert(rel <= TOLERANCE, `${JSON.stringify(c)}: output ${output} off by ${rel}`);
    };
    await fc.assert(fc.asyncProperty(smallCase, check), { numRuns: 30 });
    // Wider than one workgroup (256 threads): two units per thread.
    await check({ batch: 2, length: 3, k: 2, d: 300, layers: 2, gates: "padded", seed: 7 });
    console.log(`largest relative difference: ${seen.toExponential(2)} (tolerance ${TOLERANCE})`);
    await selectBackend("cpu");
  },
});

Deno.test({
  name: "gatedCategoryGru() on webgpu: forward and backward in a few dispatches, tensors flat",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const layers = 2;
    const { p, items, gates, step } = trainingPass(4, 12, 3, 16, layers);
    step(); // compiles the programs
    await tf.backend().read(items.dataId); // the queue has run
    const before = tf.memory().numTensors;
    const dispatches = countGpuDispatches(step);
    step();
    assertEquals(tf.memory().numTensors, before, "tensors left behind");
    // Per layer: its recurrence forward and backward (2), the weight gradients (two matmuls
    // and two bias sums of a few dispatches each), a higher layer's input projection and the
    // gradient into the layer below; layer 0's input projection; the loss. The composed path
    // took ~20 dispatches per position and layer forward, ~40 backward (~1,400 here).
    console.log(`dispatches of a forward and backward pass: ${dispatches}`);
    assert(dispatches <= 20 * layers + 10, `${dispatches} dispatches`);
    tf.dispose([items, gates]);
    p.dispose();
    await selectBackend("cpu");
  },
});

releaseWebGpuAfterTests();
