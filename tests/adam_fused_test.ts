/**
 * Adam through the fused webgpu kernel (`backends/_webgpu_adam.ts`) against the composed
 * path on cpu, which `train_test.ts` holds bit for bit to tfjs's own Adam.
 *
 * Tolerance: WGSL lets the compiler fuse `a * b + c` and round a division or square root a
 * few ulps off, so values are compared to 1e-6 of their size (about 8 float32 ulps) plus
 * 1e-9. On llvmpipe the two paths have agreed bit for bit (6 steps, 4,491 values).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { probeWebGpu, selectBackend } from "../backends/mod.ts";
import { variablesPerDispatch } from "../backends/_webgpu_adam.ts";
import { Adam, type AdamSlotState, FUSED_ADAM_KERNEL } from "../lib/train/adam.ts";
import { assert, assertEquals } from "./_assert.ts";
import { countGpuDispatches, releaseWebGpuAfterTests } from "./_webgpu.ts";

const noGpu = (await probeWebGpu()) === null;

/** Shapes of the first test: 130 and 1,320 values span several 64-thread workgroups. */
const SHAPES = [[3, 5], [7], [130], [1], [2, 3, 4], [40, 33]];
const STEPS = 6;
/** Gets its first gradient at step 2 (0-based): its own step count, its own corrections. */
const LATE = 3;
/** Gets no gradient at steps 2 and 3: left as it is, its step count paused. */
const GAP = 1;
/** Its gradient at step 5 is the variable itself (one tensor, read and written). */
const SELF = 4;
/** A clone of it is taken before step 4: the clone shares its buffer and must keep it. */
const SHARED = 0;

/** Deterministic values in [-1, 1), with a zero now and then. */
function values(seed: number, n: number): Float32Array {
  const out = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = i % 17 === 5 ? 0 : x / 2 ** 31 - 1;
  }
  return out;
}

/** Whether `step` gives variable `i` a gradient in the first test's schedule. */
function hasGradient(i: number, step: number): boolean {
  if (i === LATE) return step >= 2;
  if (i === GAP) return step !== 2 && step !== 3;
  return true;
}

interface Run {
  params: Float32Array[];
  states: AdamSlotState[];
}

/** The GPU device of the active webgpu backend. */
function device() {
  return (tf.backend() as unknown as {
    device: {
      pushErrorScope(filter: string): void;
      popErrorScope(): Promise<{ message: string } | null>;
      limits: { maxStorageBuffersPerShaderStage: number };
    };
  }).device;
}

/**
 * The first test's schedule on the active backend; `interruptAt`: before that step, Adam's
 * state is saved, a new Adam restores it and goes on.
 */
async function schedule(tag: string, interruptAt?: number): Promise<Run> {
  const onGpu = tf.getBackend() === "webgpu";
  const vars = SHAPES.map((shape, i) =>
    tf.variable(tf.tensor(values(i, tf.util.sizeFromShape(shape)), shape), true, `${tag}/${i}`)
  );
  let adam = new Adam(0.01);
  const read = async (i: number) => (await vars[i].data() as Float32Array).slice();
  const initialLate = await read(LATE);
  let gapBefore: Float32Array | null = null;
  for (let step = 0; step < STEPS; step++) {
    if (step === interruptAt) {
      const saved = await adam.state(vars);
      adam.dispose();
      adam = new Adam(0.01);
      adam.restore(vars, saved);
    }
    if (step === 2) {
      assertEquals(await read(LATE), initialLate, "a variable moved before its first gradient");
      gapBefore = await read(GAP);
    }
    if (step === 4) assertEquals(await read(GAP), gapBefore, "a variable moved without gradient");
    const clone = step === 4 ? tf.clone(vars[SHARED]) : null;
    const cloneBefore = clone ? (await clone.data() as Float32Array).slice() : null;
    const grads: Record<string, tf.Tensor> = {};
    vars.forEach((v, i) => {
      if (!hasGradient(i, step)) return;
      grads[v.name] = step === 5 && i === SELF
        ? v
        : tf.tensor(values(100 * (step + 1) + i, v.size), v.shape);
    });
    if (onGpu) device().pushErrorScope("validation");
    adam.applyGradients(grads);
    if (onGpu) {
      const error = await device().popErrorScope();
      assertEquals(error?.message ?? null, null, `step ${step}: WebGPU validation error`);
    }
    tf.dispose(Object.values(grads).filter((g) => !vars.includes(g as tf.Variable)));
    if (clone) {
      assertEquals(await clone.data(), cloneBefore, "the clone changed with the variable");
      assert((await read(SHARED)).some((x, i) => x !== cloneBefore![i]), "the variable stayed");
      clone.dispose();
    }
  }
  const params = await Promise.all(vars.map((_, i) => read(i)));
  const states = await adam.state(vars);
  adam.dispose();
  vars.forEach((v) => v.dispose());
  return { params, states };
}

/** Asserts `actual` within 1e-6 relative plus 1e-9 of `expected`, element by element. */
function assertClose(actual: Float32Array, expected: Float32Array, what: string): void {
  assertEquals(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const bound = 1e-6 * Math.max(Math.abs(a), Math.abs(e)) + 1e-9;
    assert(Math.abs(a - e) <= bound, `${what}[${i}]: ${a}, expected ${e}`);
  }
}

function assertRunsClose(actual: Run, expected: Run): void {
  expected.params.forEach((p, i) => assertClose(actual.params[i], p, `variable ${i}`));
  expected.states.forEach((s, i) => {
    assertEquals(actual.states[i].steps, s.steps, `variable ${i}: steps`);
    assertClose(actual.states[i].m, s.m, `variable ${i}: m`);
    assertClose(actual.states[i].v, s.v, `variable ${i}: v`);
  });
}

Deno.test({
  name: "fused Adam on webgpu equals the composed path on cpu: late joiner, gaps, shared buffer",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("cpu");
    const cpu = await schedule("cpu");
    assertEquals(cpu.states.map((s) => s.steps), [6, 4, 6, 4, 6, 6]);
    await selectBackend("webgpu", { webgpuCpuForward: false });
    assert(tf.getKernel(FUSED_ADAM_KERNEL, "webgpu") !== undefined, "kernel not registered");
    assertRunsClose(await schedule("gpu"), cpu);
  },
});

Deno.test({
  name: "fused Adam: state() and restore() mid-run give the uninterrupted next steps",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const straight = await schedule("straight");
    // Before step 3: the late variable has 1 step, the paused one 2.
    const resumed = await schedule("resumed", 3);
    // Same device, same operations, the moments copied exactly: bit for bit.
    assertEquals(resumed, straight);
  },
});

Deno.test({
  name: "fused Adam: one step over 20 variables takes ceil(20 / per dispatch) dispatches, " +
    "no new tensors; the composed path in between switches layouts and back",
  ignore: noGpu,
  fn: async () => {
    const shapes = Array.from({ length: 20 }, (_, i) => [i + 1, 3]);
    const run = async (tag: string, between?: (step: number) => void) => {
      const vars = shapes.map((shape, i) =>
        tf.variable(tf.tensor(values(i, 3 * (i + 1)), shape), true, `${tag}/${i}`)
      );
      const adam = new Adam(0.005);
      const counts: { dispatches: number; tensors: number }[] = [];
      for (let step = 0; step < 6; step++) {
        between?.(step);
        const grads = Object.fromEntries(
          vars.map((v, i) => [v.name, tf.tensor(values(1000 * step + i, v.size), v.shape)]),
        );
        const before = tf.memory().numTensors;
        const dispatches = countGpuDispatches(() => adam.applyGradients(grads));
        counts.push({ dispatches, tensors: tf.memory().numTensors - before });
        tf.dispose(Object.values(grads));
      }
      const params = await Promise.all(vars.map(async (v) => (await v.data() as Float32Array)));
      const run: Run = { params: params.map((p) => p.slice()), states: await adam.state(vars) };
      adam.dispose();
      vars.forEach((v) => v.dispose());
      return { run, counts };
    };
    await selectBackend("cpu");
    const cpu = await run("cpu20");
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const perDispatch = variablesPerDispatch(device().limits.maxStorageBuffersPerShaderStage);
    const kernel = tf.getKernel(FUSED_ADAM_KERNEL, "webgpu")!;
    // Steps 2 and 3 without the kernel (composed, per-variable moments), then fused again.
    const gpu = await run("gpu20", (step) => {
      if (step === 2) tf.unregisterKernel(FUSED_ADAM_KERNEL, "webgpu");
      if (step === 4) tf.registerKernel(kernel);
    });
    assert(tf.getKernel(FUSED_ADAM_KERNEL, "webgpu") !== undefined, "kernel not back");
    assertRunsClose(gpu.run, cpu.run);
    const fused = Math.ceil(20 / perDispatch);
    // Step 0 makes the flat moments; step 1 is a plain fused step; step 3 a plain composed
    // one (step 2 cuts the flat moments up, step 4 joins them again); step 5 fused again.
    assertEquals(gpu.counts[1], { dispatches: fused, tensors: 0 }, "a fused step");
    assertEquals(gpu.counts[5], { dispatches: fused, tensors: 0 }, "a fused step after");
    // 14 element-wise ops per variable, one dispatch each: m (mul, mul, add), v (square,
    // mul, mul, add), the two bias corrections (div, div), the step (sqrt, add, div, mul)
    // and the parameter (add).
    assertEquals(gpu.counts[3], { dispatches: 14 * 20, tensors: 0 }, "a composed step");
  },
});

releaseWebGpuAfterTests();
