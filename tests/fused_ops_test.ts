/**
 * The fused LayerNorm, GELU and tanh GELU (`lib/nn/fused.ts`, `backends/_webgpu_fused.ts`):
 * on cpu and wasm, bit for bit the composed ops they replaced; on webgpu, the same values
 * and gradients as those ops on cpu within float32 tolerance, in at most three dispatches
 * for a LayerNorm forward and backward and two for a GELU; and the WGSL erf against float64.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { probeWebGpu, selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import { webGpuErf } from "../backends/_webgpu_fused.ts";
import {
  addLeadingBroadcast,
  fusedLayerNormMaxRows,
  GELU_KERNEL,
  GELU_TANH_KERNEL,
  geluFused,
  geluReference,
  geluTanhFused,
  geluTanhReference,
  LAYER_NORM_GRAD_KERNEL,
  LAYER_NORM_KERNEL,
  layerNormResidual,
  layerNormResidualReference,
} from "../lib/nn/fused.ts";
import { seededUniform } from "./_fixtures.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const noGpu = (await probeWebGpu()) === null;
await selectBackend("wasm");
/** Whether this process's wasm backend runs bmm.wasm, and so its LayerNorm and GELU kernels. */
const wasmKernels = bmmActive();
await selectBackend("cpu");

// --------------------------------------------------------------- the code replaced

/** `layerNorm` of `lib/nn/layers.ts` before the fused op, verbatim, on `residual + x`. */
function todaysLayerNorm(
  x: tf.Tensor,
  residual: tf.Tensor | null,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  eps: number,
): tf.Tensor {
  const z = residual === null ? x : tf.add(residual, x); // the transformer's tf.add(h, attn)
  const axis = z.shape.length - 1;
  const mean = tf.mean(z, axis, true);
  const centred = tf.sub(z, mean);
  const variance = tf.mean(tf.square(centred), axis, true);
  const normed = tf.mul(centred, tf.rsqrt(tf.add(variance, eps)));
  return tf.add(tf.mul(normed, gamma), beta);
}

/** `gelu` of `lib/nn/layers.ts` before the fused op, verbatim. */
function todaysGelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
}

/** `geluTanh` of `lib/nn/pre_ln.ts` before the fused op, verbatim (its constant inlined). */
function todaysGeluTanh(x: tf.Tensor): tf.Tensor {
  const GELU_TANH_SLOPE = 2 * Math.sqrt(2 / Math.PI);
  // 2u = x · (2·sqrt(2/π) + 2·sqrt(2/π)·0.044715 · x²)
  const slope = tf.add(tf.mul(tf.square(x), GELU_TANH_SLOPE * 0.044715), GELU_TANH_SLOPE);
  return tf.mul(x, tf.sigmoid(tf.mul(x, slope)));
}

type LayerNormOp = typeof layerNormResidual;

// ---------------------------------------------------------------------- helpers

/** -2 to 2 by default here. */
const uniform = (n: number, seed: number, lo = -2, hi = 2) => seededUniform(n, seed, lo, hi);

/** One LayerNorm case: the input shape (last axis d), a residual or not, eps, a seed. */
interface LayerNormCase {
  shape: number[];
  withResidual: boolean;
  eps: number;
  seed: number;
}

/**
 * `op`'s value and its gradients (for an upstream gradient `dy`) w.r.t. x, residual (if
 * any), gamma and beta, on the active backend, read back.
 */
async function layerNormRun(op: LayerNormOp, c: LayerNormCase): Promise<Float32Array[]> {
  const v = layerNormInputs(c);
  const outs = tf.tidy(() => {
    const [x, residual, dy] = [v.x, v.residual, v.dy].map((a) => tf.tensor(a, c.shape));
    const [gamma, beta] = [tf.tensor1d(v.gamma), tf.tensor1d(v.beta)];
    const inputs = c.withResidual ? [x, residual, gamma, beta] : [x, gamma, beta];
    const f = (...t: tf.Tensor[]) =>
      c.withResidual ? op(t[0], t[1], t[2], t[3], c.eps) : op(t[0], null, t[1], t[2], c.eps);
    return [f(...inputs), ...tf.grads(f)(inputs, dy)];
  });
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return values;
}

/** The inputs of a LayerNorm case: x, residual, dy of its shape, gamma and beta `[d]`. */
function layerNormInputs(c: LayerNormCase) {
  const d = c.shape[c.shape.length - 1];
  const size = c.shape.reduce((a, b) => a * b, 1);
  return {
    d,
    rows: size / d,
    x: uniform(size, c.seed),
    residual: uniform(size, c.seed + 1),
    gamma: uniform(d, c.seed + 2, 0.5, 1.5),
    beta: uniform(d, c.seed + 3, -0.5, 0.5),
    dy: uniform(size, c.seed + 4, -1, 1),
  };
}

/** GELU's value and gradient at `xs` (upstream gradient `dy`) on the active backend. */
async function geluRun(op: (x: tf.Tensor) => tf.Tensor, xs: Float32Array, dy: Float32Array) {
  const outs = tf.tidy(() => {
    const x = tf.tensor1d(xs);
    return [op(x), tf.grad(op)(x, tf.tensor1d(dy))];
  });
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return values;
}

/** The bit patterns of float32 data, so that equality is bitwise (-0 and NaN included). */
const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** LayerNorm cases of up to 3 axes, d up to 40, with and without a residual. */
const smallLayerNormCase = fc.record({
  shape: fc.tuple(
    fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 0, maxLength: 2 }),
    fc.integer({ min: 1, max: 40 }),
  ).map(([lead, d]) => [...lead, d]),
  withResidual: fc.boolean(),
  eps: fc.constantFrom(1e-12, 1e-5),
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
});

// ------------------------------------------------------------- cpu and wasm: unchanged

Deno.test("layerNormResidual() and geluFused() on cpu are today's composed ops, bit for bit, values and gradients (40 cases)", async () => {
  for (const backend of ["cpu"] as const) {
    await selectBackend(backend);
    // No kernel there: the reference path. (wasm runs them on bmm.wasm: compared with cpu's
    // below, within tolerances.)
    assertEquals(tf.getKernel(LAYER_NORM_KERNEL, backend), undefined);
    assertEquals(tf.getKernel(GELU_KERNEL, backend), undefined);
    await fc.assert(
      fc.asyncProperty(smallLayerNormCase, async (c) => {
        const fused = await layerNormRun(layerNormResidual, c);
        const today = await layerNormRun(todaysLayerNorm, c);
        assertEquals(fused.length, today.length);
        fused.forEach((a, i) => assertEquals(bits(a), bits(today[i]), `${backend} output ${i}`));
        const size = c.shape.reduce((a, b) => a * b, 1);
        const xs = uniform(size, c.seed, -8, 8);
        const dy = uniform(size, c.seed + 5, -1, 1);
        const gelu = await geluRun(geluFused, xs, dy);
        const geluToday = await geluRun(todaysGelu, xs, dy);
        gelu.forEach((a, i) => assertEquals(bits(a), bits(geluToday[i]), `${backend} gelu ${i}`));
      }),
      { numRuns: 40 },
    );
  }
  await selectBackend("cpu");
});

Deno.test("layerNormResidual() on wasm: the kernels run exactly where bmm.wasm does, and equal the composed ops on cpu (100 random cases, 3 edge shapes)", async () => {
  await selectBackend("wasm");
  const registered = tf.getKernel(LAYER_NORM_KERNEL, "wasm") !== undefined &&
    tf.getKernel(LAYER_NORM_GRAD_KERNEL, "wasm") !== undefined;
  assertEquals(registered, bmmActive(), "LayerNorm kernels registered iff bmm.wasm is bound");
  if (!registered) return;
  await fc.assert(
    fc.asyncProperty(smallLayerNormCase, (c) => assertLayerNormMatchesCpu(c, "random", "wasm")),
    { numRuns: 100 },
  );
  // Many rows (the parameter gradients sum all of them), a wide row, one column.
  for (
    const [shape, label] of [
      [[2050, 5], "2,050 rows"],
      [[3, 515], "d = 515"],
      [[7, 1], "d = 1"],
    ] as const
  ) {
    await assertLayerNormMatchesCpu(
      { shape: [...shape], withResidual: true, eps: 1e-12, seed: shape[1] },
      label,
      "wasm",
    );
  }
  await selectBackend("cpu");
});

/**
 * Inputs for the tanh GELU: uniform on [-12, 12] (its sigmoid underflows below -11.3) and
 * the tails: ±0, tiny values, the underflow, large and huge values.
 */
function geluTanhInputs(n: number, seed: number): Float32Array {
  const tails = [
    0,
    -0,
    1e-30,
    -1e-30,
    1e-7,
    -1e-3,
    -9.5,
    -10,
    -10.5,
    -11.3,
    -11.4,
    -30,
    -1e4,
    -1e15,
    5,
    11.4,
    1e4,
    1e15,
  ];
  return Float32Array.from([...uniform(n, seed, -12, 12), ...tails]);
}

Deno.test("geluTanhFused() on cpu is today's composed geluTanh, bit for bit, value and gradient (40 cases)", async () => {
  for (const backend of ["cpu"] as const) {
    await selectBackend(backend);
    assertEquals(tf.getKernel(GELU_TANH_KERNEL, backend), undefined);
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (n, seed) => {
          const xs = geluTanhInputs(n, seed);
          const dy = uniform(xs.length, seed + 1, -1, 1);
          const fused = await geluRun(geluTanhFused, xs, dy);
          const today = await geluRun(todaysGeluTanh, xs, dy);
          fused.forEach((a, i) => assertEquals(bits(a), bits(today[i]), `${backend} output ${i}`));
        },
      ),
      { numRuns: 40 },
    );
  }
  await selectBackend("cpu");
});

/** `x + y` (y broadcast over x's first axis) and both gradients, on the active backend. */
async function broadcastAddRun(
  op: (x: tf.Tensor, y: tf.Tensor) => tf.Tensor,
  shape: number[],
  seed: number,
): Promise<Float32Array[]> {
  const size = shape.reduce((a, b) => a * b, 1);
  const outs = tf.tidy(() => {
    const x = tf.tensor(uniform(size, seed), shape);
    const y = tf.tensor(uniform(size / shape[0], seed + 1), shape.slice(1));
    const dy = tf.tensor(uniform(size, seed + 2, -1, 1), shape);
    return [op(x, y), ...tf.grads(op)([x, y], dy)];
  });
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return values;
}

const broadcastShape = fc.tuple(
  fc.integer({ min: 1, max: 70 }),
  fc.integer({ min: 1, max: 9 }),
  fc.integer({ min: 1, max: 40 }),
).map((s) => [...s]);

Deno.test("addLeadingBroadcast() on cpu and wasm is tf.add, bit for bit, value and gradients (2 x 30 cases)", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    await fc.assert(
      fc.asyncProperty(
        broadcastShape,
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (shape, seed) => {
          const fused = await broadcastAddRun(addLeadingBroadcast, shape, seed);
          const today = await broadcastAddRun(tf.add, shape, seed);
          fused.forEach((a, i) => assertEquals(bits(a), bits(today[i]), `${backend} output ${i}`));
        },
      ),
      { numRuns: 30 },
    );
  }
  await selectBackend("cpu");
  assertThrows(
    () => addLeadingBroadcast(tf.zeros([2, 3, 4]), tf.zeros([2, 4])),
    RangeError,
    "[2,4]",
  );
});

Deno.test("layerNormResidual() names the shape that does not fit", async () => {
  await selectBackend("cpu");
  tf.tidy(() => {
    const x = tf.zeros([2, 3]);
    const [ones, zeros] = [tf.ones([3]), tf.zeros([3])];
    assertThrows(() => layerNormResidual(x, null, tf.ones([4]), zeros, 1e-5), RangeError, "[4]");
    assertThrows(() => layerNormResidual(x, zeros, ones, zeros, 1e-5), RangeError, "residual [3]");
  });
});

// ------------------------------------------------------------------------- webgpu

/**
 * Per-element tolerances of the LayerNorm outputs `[y, dx, (dresidual,) dgamma, dbeta]` of
 * webgpu against the composed ops on cpu. Both are float32 (rounding u = 6e-8) but sum in
 * other orders (a tree per workgroup against tfjs's reductions) and take 1/sqrt by other
 * instructions, so each output differs by a few roundings of what went into it, amplified
 * as LayerNorm amplifies them: a row's rounding errors of size u |z| become errors of
 * u |z| / std in x̂, so a row whose values lie close together (std small against |z|;
 * d = 2 and a residual make such rows often) is ill-conditioned by κ = max |z| / std, in
 * both paths alike. Hence 1e-5 (about 170 u) times: κ |gamma| + |beta| for y; κ / std
 * times the size of dx's terms, max |dy gamma| (2 + max x̂²), for dx; and the sums over
 * rows of κ |dy| max(1, |x̂|) and of |dy| for dgamma and dbeta. The largest difference
 * seen on llvmpipe was under 3% of these (80 random cases).
 */
function layerNormTolerances(c: LayerNormCase): Float64Array[] {
  const { d, rows, x, residual, gamma, beta, dy } = layerNormInputs(c);
  const y = new Float64Array(rows * d);
  const dx = new Float64Array(rows * d);
  const dgamma = new Float64Array(d);
  const dbeta = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    const z = Array.from(
      { length: d },
      (_, j) => Math.fround(x[r * d + j] + (c.withResidual ? residual[r * d + j] : 0)),
    );
    const mean = z.reduce((a, b) => a + b, 0) / d;
    const rstd = 1 / Math.sqrt(z.reduce((a, b) => a + (b - mean) ** 2, 0) / d + c.eps);
    const kappa = Math.max(1, rstd * Math.max(...z.map(Math.abs)));
    const xhat = z.map((v) => (v - mean) * rstd);
    const xhat2 = Math.max(...xhat.map((v) => v * v));
    const g = Math.max(...gamma.map((gj, j) => Math.abs(dy[r * d + j] * gj)));
    for (let j = 0; j < d; j++) {
      const dyj = Math.abs(dy[r * d + j]);
      y[r * d + j] = 1e-5 * (kappa * Math.abs(gamma[j]) + Math.abs(beta[j]));
      dx[r * d + j] = 1e-5 * kappa * rstd * g * (2 + xhat2);
      dgamma[j] += 1e-5 * kappa * dyj * Math.max(1, Math.abs(xhat[j]));
      dbeta[j] += 1e-5 * dyj;
    }
  }
  return c.withResidual ? [y, dx, dx, dgamma, dbeta] : [y, dx, dgamma, dbeta];
}

async function assertLayerNormMatchesCpu(
  c: LayerNormCase,
  label: string,
  backend: "webgpu" | "wasm" = "webgpu",
) {
  await selectBackend("cpu");
  const reference = await layerNormRun(layerNormResidualReference, c);
  await selectBackend(backend, { webgpuCpuForward: false });
  const fused = await layerNormRun(layerNormResidual, c);
  const names = c.withResidual
    ? ["y", "dx", "dresidual", "dgamma", "dbeta"]
    : ["y", "dx", "dgamma", "dbeta"];
  assertEquals(fused.length, names.length);
  const tolerances = layerNormTolerances(c);
  names.forEach((name, i) => {
    for (let j = 0; j < fused[i].length; j++) {
      const [a, b, tolerance] = [fused[i][j], reference[i][j], tolerances[i][j]];
      assert(
        Math.abs(a - b) <= tolerance,
        `${label} [${c.shape}] ${name}[${j}]: ${a} vs ${b} (tolerance ${tolerance})`,
      );
    }
  });
}

Deno.test({
  name:
    "layerNormResidual() on webgpu: values and gradients equal the composed ops on cpu (30 random cases and 4 edge shapes)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    assert(tf.getKernel(LAYER_NORM_KERNEL, "webgpu") !== undefined, "no fused kernel on webgpu");
    // Small shapes (llvmpipe is slow); d up to 300 puts two values of a row on a thread.
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          shape: fc.tuple(
            fc.integer({ min: 1, max: 4 }),
            fc.integer({ min: 1, max: 9 }),
            fc.integer({ min: 1, max: 300 }),
          ).map((s) => [...s]),
          withResidual: fc.boolean(),
          eps: fc.constantFrom(1e-12, 1e-5),
          seed: fc.integer({ min: 1, max: 2 ** 30 }),
        }),
        (c) => assertLayerNormMatchesCpu(c, "random"),
      ),
      { numRuns: 30 },
    );
    // Many rows: the parameter gradients' threads each stride over hundreds of them.
    await assertLayerNormMatchesCpu(
      { shape: [2050, 5], withResidual: true, eps: 1e-12, seed: 11 },
      "2,050 rows",
    );
    // More rows than the 65,535 workgroups of one dispatch dimension (the fused kernel's
    // most at d = 2): tfjs folds both dispatches, and the workgroups past the last row
    // must write nothing.
    assertEquals(fusedLayerNormMaxRows(2), 65536);
    await assertLayerNormMatchesCpu(
      { shape: [65536, 2], withResidual: false, eps: 1e-5, seed: 12 },
      "65,536 rows",
    );
    // Past that, the reference path runs (llvmpipe truncated the kernel's long parameter
    // sums): still cpu's values.
    await assertLayerNormMatchesCpu(
      { shape: [65537, 2], withResidual: true, eps: 1e-5, seed: 14 },
      "65,537 rows",
    );
    // Wider than a workgroup by a remainder: 3 values per thread, some threads idle.
    await assertLayerNormMatchesCpu(
      { shape: [3, 515], withResidual: true, eps: 1e-12, seed: 13 },
      "d = 515",
    );
  },
});

/** `geluFused` on `backend` against the composed ops on cpu, `runs` random cases. */
async function assertGeluMatchesCpu(backend: "webgpu" | "wasm", runs: number) {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 3000 }),
      fc.integer({ min: 1, max: 2 ** 30 }),
      async (n, seed) => {
        const xs = uniform(n, seed, -10, 10);
        const dy = uniform(n, seed + 1, -1, 1);
        await selectBackend("cpu");
        const [y, dx] = await geluRun(geluReference, xs, dy);
        await selectBackend(backend, { webgpuCpuForward: false });
        const [yf, dxf] = await geluRun(geluFused, xs, dy);
        // tfjs's Erf (cpu) is Abramowitz-Stegun 7.1.26, 1.5e-7 absolute error; the
        // kernels' erf is float32-accurate. So they may differ by 1.5e-7 in erf, i.e.
        // 0.75e-7 |x| in GELU and 0.75e-7 (1 + |x|) |dy| in its gradient (|dy| <= 1),
        // plus a few roundings of values up to |x|.
        for (let i = 0; i < n; i++) {
          const bound = 4e-7 * (1 + Math.abs(xs[i]));
          assert(Math.abs(yf[i] - y[i]) <= bound, `gelu(${xs[i]}): ${yf[i]} vs ${y[i]}`);
          assert(Math.abs(dxf[i] - dx[i]) <= bound, `gelu'(${xs[i]}): ${dxf[i]} vs ${dx[i]}`);
        }
      },
    ),
    { numRuns: runs },
  );
  await selectBackend("cpu");
}

Deno.test({
  name: "geluFused() on webgpu: value and gradient equal the composed ops on cpu (15 random cases)",
  ignore: noGpu,
  fn: () => assertGeluMatchesCpu("webgpu", 15),
});

Deno.test({
  name:
    "geluFused() on wasm (bmm.wasm): value and gradient equal the composed ops on cpu (60 random cases)",
  ignore: !wasmKernels,
  fn: () => assertGeluMatchesCpu("wasm", 60),
});

/**
 * Tolerances of the tanh GELU's value and gradient on webgpu against the composed ops on
 * cpu, from float64 values of `a = x (c0 + c1 x²)`, `s = sigmoid(a)`, `a' = c0 + 3 c1 x²`.
 * Both paths round `a` (a few roundings u = 6e-8 of it), which moves `s` by `s (1 - s) |a|`
 * times that; the cpu gradient's `1 - s` cancels as `s` nears 1 (an absolute error u, times
 * `|x a'| s`). Hence 1e-6 (about 17 u) times: `|y| (1 + |a| (1 - s))` for the value and
 * `|dy|` times `s (1 + |a| (1 - s)) + |x a'| (s (1 - s) (1 + |a|) + s)` for the gradient,
 * plus 1e-30 for where llvmpipe flushes subnormal results to 0 (x below -10.4). The largest
 * difference seen on llvmpipe, over a grid of [-20, 20] by 0.001, was 23% of these.
 */
function geluTanhTolerances(x: number, dy: number): [number, number] {
  const c0 = 2 * Math.sqrt(2 / Math.PI);
  const c1 = c0 * 0.044715;
  const a = x * (c0 + c1 * x * x);
  const s = 1 / (1 + Math.exp(-a));
  const q = 1 - s;
  const da = c0 + 3 * c1 * x * x;
  const y = 1e-6 * Math.abs(x * s) * (1 + Math.abs(a) * q) + 1e-30;
  const xa = Math.abs(x * da);
  const grad =
    1e-6 * Math.abs(dy) * (s * (1 + Math.abs(a) * q) + xa * (s * q * (1 + Math.abs(a)) + s)) +
    1e-30;
  return [y, grad];
}

/** `geluTanhFused` on `backend` against the composed ops on cpu, `runs` random cases. */
async function assertGeluTanhMatchesCpu(backend: "webgpu" | "wasm", runs: number) {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 3000 }),
      fc.integer({ min: 1, max: 2 ** 30 }),
      async (n, seed) => {
        const xs = geluTanhInputs(n, seed);
        const dy = uniform(xs.length, seed + 1, -1, 1);
        await selectBackend("cpu");
        const [y, dx] = await geluRun(geluTanhReference, xs, dy);
        await selectBackend(backend, { webgpuCpuForward: false });
        const [yf, dxf] = await geluRun(geluTanhFused, xs, dy);
        for (let i = 0; i < xs.length; i++) {
          const [ty, tdx] = geluTanhTolerances(xs[i], dy[i]);
          assert(Math.abs(yf[i] - y[i]) <= ty, `geluTanh(${xs[i]}): ${yf[i]} vs ${y[i]}`);
          assert(
            Math.abs(dxf[i] - dx[i]) <= tdx,
            `geluTanh'(${xs[i]}) dy ${dy[i]}: ${dxf[i]} vs ${dx[i]} (tolerance ${tdx})`,
          );
        }
      },
    ),
    { numRuns: runs },
  );
  await selectBackend("cpu");
}

Deno.test({
  name:
    "geluTanhFused() on webgpu: value and gradient equal the composed ops on cpu, tails included (15 random cases)",
  ignore: noGpu,
  fn: () => assertGeluTanhMatchesCpu("webgpu", 15),
});

Deno.test({
  name:
    "geluTanhFused() on wasm (bmm.wasm): value and gradient equal the composed ops on cpu, tails included (60 random cases)",
  ignore: !wasmKernels,
  fn: () => assertGeluTanhMatchesCpu("wasm", 60),
});

Deno.test({
  name:
    "addLeadingBroadcast() on webgpu: value and gradients equal tf.add on cpu; y's gradient is one dispatch (15 random cases)",
  ignore: noGpu,
  fn: async () => {
    await fc.assert(
      fc.asyncProperty(
        broadcastShape,
        fc.integer({ min: 1, max: 2 ** 30 }),
        async (shape, seed) => {
          await selectBackend("cpu");
          const reference = await broadcastAddRun(tf.add, shape, seed);
          await selectBackend("webgpu", { webgpuCpuForward: false });
          const fused = await broadcastAddRun(addLeadingBroadcast, shape, seed);
          // The value and x's gradient are tf.add's and dy, exactly; y's gradient sums B
          // values of |dy| <= 1 in another order: B additions, each rounding a partial
          // sum of size <= B by u = 6e-8 at most, in each path.
          assertEquals(bits(fused[0]), bits(reference[0]), "value");
          assertEquals(bits(fused[1]), bits(reference[1]), "x's gradient");
          for (let j = 0; j < fused[2].length; j++) {
            const [a, b] = [fused[2][j], reference[2][j]];
            assert(Math.abs(a - b) <= 1.2e-7 * shape[0] ** 2, `[${shape}] dy[${j}]: ${a} vs ${b}`);
          }
        },
      ),
      { numRuns: 15 },
    );
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const x = tf.tensor(uniform(4 * 6 * 16, 31), [4, 6, 16]);
    const y = tf.tensor(uniform(6 * 16, 32), [6, 16]);
    const dy = tf.tensor(uniform(4 * 6 * 16, 33), [4, 6, 16]);
    const work = (op: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor) => () => [
      ...tf.grads(op)([x, y], dy),
    ];
    await webGpuDispatches(work(addLeadingBroadcast)); // compiles
    await webGpuDispatches(work(tf.add));
    const fused = await webGpuDispatches(work(addLeadingBroadcast));
    const composed = await webGpuDispatches(work(tf.add));
    // The add, then the column sum (x's gradient is a view of dy).
    assertEquals(fused, 2, `fused ${fused}, composed ${composed}`);
    assert(composed > fused, `fused ${fused}, composed ${composed}`);
    tf.dispose([x, y, dy]);
  },
});

/** erf in float64: Maclaurin series below 3, the continued fraction of erfc beyond. */
function erf64(x: number): number {
  const z = Math.abs(x);
  if (z >= 3) return Math.sign(x) * (1 - erfc64(z));
  let term = z;
  let sum = z;
  for (let n = 1; n < 200 && Math.abs(term) > 1e-18 * Math.abs(sum); n++) {
    term *= (-z * z) / n;
    sum += term / (2 * n + 1);
  }
  return (Math.sign(x) * 2 * sum) / Math.sqrt(Math.PI);
}

/** erfc(z) in float64 for z >= 3: Laplace's continued fraction, 200 terms. */
function erfc64(z: number): number {
  let f = z;
  for (let k = 200; k >= 1; k--) f = z + k / 2 / f;
  return Math.exp(-z * z) / (Math.sqrt(Math.PI) * f);
}

/** GELU in float64: x Φ(x), Φ(x) = erfc(-x / √2) / 2, the tail from erfc directly. */
function gelu64(x: number): number {
  const z = -x * Math.SQRT1_2;
  return (x * (z >= 3 ? erfc64(z) : 1 - erf64(z))) / 2;
}

/** GELU's derivative in float64: Φ(x) + x φ(x). */
function geluGrad64(x: number): number {
  const z = -x * Math.SQRT1_2;
  const phi = (z >= 3 ? erfc64(z) : 1 - erf64(z)) / 2;
  return phi + (x * Math.exp(-x * x / 2)) / Math.sqrt(2 * Math.PI);
}

Deno.test({
  name:
    "the WGSL erf is float32-accurate on [-10, 10] (tails and tiny values included) and agrees with tf.erf on cpu; GELU keeps its left tail",
  ignore: noGpu,
  fn: async () => {
    const grid = Float32Array.from({ length: 20001 }, (_, i) => -10 + i / 1000);
    const tiny = Float32Array.from(
      { length: 400 },
      (_, i) => (i % 2 ? -1 : 1) * 10 ** (-30 + i / 10),
    );
    const xs = Float32Array.from([...grid, ...tiny]);
    await selectBackend("cpu");
    const tfErf = tf.tidy(() => tf.erf(tf.tensor1d(xs)).dataSync());
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const [erf, gelu, geluGrad] = tf.tidy(() => {
      const x = tf.tensor1d(xs);
      return [webGpuErf(x), geluFused(x), tf.grad(geluFused)(x)];
    });
    const [ours, geluOurs, geluGradOurs] = await Promise.all(
      [erf, gelu, geluGrad].map((t) => t.data() as Promise<Float32Array>),
    );
    tf.dispose([erf, gelu, geluGrad]);
    for (let i = 0; i < xs.length; i++) {
      const exact = erf64(xs[i]);
      // float32 rounds erf to 6e-8 of its value; the series and the erfc fit (1.2e-7 of
      // erfc, itself < 0.16 of erf where it is used) add a few roundings more. Worst seen
      // on llvmpipe: 1.6e-7.
      const error = Math.abs(ours[i] - exact);
      assert(error <= 3e-7 * Math.abs(exact), `erf(${xs[i]}) = ${ours[i]}, exact ${exact}`);
      // tf.erf is within 1.5e-7 of erf (absolute), so within that plus roundings of ours.
      assert(Math.abs(ours[i] - tfErf[i]) <= 3e-7, `erf(${xs[i]}): ${ours[i]} vs tf ${tfErf[i]}`);
    }
    assertGeluKeepsItsTail(grid, geluOurs, geluGradOurs);
  },
});

/**
 * GELU and its derivative keep their relative accuracy where 1 + erf(x/√2) would cancel
 * (down to x = -10, GELU -7.6e-23), which the composed ops lose entirely: the erfc fit's
 * 1.2e-7 and a few roundings, within 2e-6 (worst seen on llvmpipe: 7.6e-7). The derivative
 * Φ(x) + x φ(x) is a difference, so its error is measured against the size of its terms
 * (worst seen: 3.4e-7).
 */
function assertGeluKeepsItsTail(grid: Float32Array, gelu: Float32Array, geluGrad: Float32Array) {
  for (const [i, x] of grid.entries()) {
    const exact = gelu64(x);
    if (exact !== 0) {
      const error = Math.abs(gelu[i] - exact);
      assert(error <= 2e-6 * Math.abs(exact), `gelu(${x}) = ${gelu[i]}, exact ${exact}`);
    }
    const exactGrad = geluGrad64(x);
    const scale = Math.abs(exactGrad) + Math.abs(x * Math.exp(-x * x / 2)) / Math.sqrt(2 * Math.PI);
    const error = Math.abs(geluGrad[i] - exactGrad);
    assert(error <= 2e-6 * scale, `gelu'(${x}) = ${geluGrad[i]}, exact ${exactGrad}`);
  }
}

Deno.test({
  name:
    "the wasm GELU (bmm.wasm) keeps its left tail on [-10, 10] and gives 0 from |x| = 16 on the left, x on the right",
  ignore: !wasmKernels,
  fn: async () => {
    const grid = Float32Array.from({ length: 20001 }, (_, i) => -10 + i / 1000);
    await selectBackend("wasm");
    const [gelu, geluGrad] = tf.tidy(() => {
      const x = tf.tensor1d(grid);
      return [geluFused(x).dataSync(), tf.grad(geluFused)(x).dataSync()] as Float32Array[];
    });
    assertGeluKeepsItsTail(grid, gelu, geluGrad);
    // Past |x| = 16 (z = 11.3) φ is 0 in float32 and Φ is 0 or 1: the kernel's selects.
    const far = Float32Array.from([-40, -16.5, -16, 16, 16.5, 40]);
    const [y, dy] = tf.tidy(() => {
      const x = tf.tensor1d(far);
      return [geluFused(x).dataSync(), tf.grad(geluFused)(x).dataSync()] as Float32Array[];
    });
    assertEquals([...y], [-0, -0, -0, 16, 16.5, 40]);
    assertEquals([...dy], [0, 0, 0, 1, 1, 1]);
    await selectBackend("cpu");
  },
});

Deno.test({
  name: "fused ops keep the tensor count flat over repeated calls inside tf.tidy on webgpu",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const x = tf.tensor(uniform(60, 5), [3, 4, 5]);
    const residual = tf.tensor(uniform(60, 6), [3, 4, 5]);
    const gamma = tf.tensor1d(uniform(5, 7));
    const beta = tf.tensor1d(uniform(5, 8));
    const step = () =>
      tf.tidy(() => {
        const f = (a: tf.Tensor, r: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
          tf.sum(geluTanhFused(geluFused(layerNormResidual(a, r, g, b, 1e-12))));
        const loss = f(x, residual, gamma, beta);
        const grads = tf.grads(f)([x, residual, gamma, beta]);
        return tf.addN([loss, ...grads.map((t) => tf.sum(t))]);
      });
    step().dispose(); // first call: compiles, nothing more
    const before = tf.memory().numTensors;
    for (let i = 0; i < 4; i++) {
      const out = step();
      await out.data();
      out.dispose();
      assertEquals(tf.memory().numTensors, before, `call ${i + 1}`);
    }
    tf.dispose([x, residual, gamma, beta]);
  },
});

/** GPU programs `work` records on the active webgpu backend (its `recordAndSubmit` calls). */
async function webGpuDispatches(work: () => tf.Tensor[]): Promise<number> {
  type Recorder = { recordAndSubmit: (...args: unknown[]) => unknown };
  const backend = tf.backend() as unknown as Recorder;
  const own = Object.hasOwn(backend, "recordAndSubmit");
  const original = backend.recordAndSubmit;
  let count = 0;
  backend.recordAndSubmit = function (this: unknown, ...args: unknown[]) {
    count++;
    return original.apply(this, args);
  };
  try {
    const outs = work();
    await Promise.all(outs.map((t) => t.data()));
    tf.dispose(outs);
  } finally {
    if (own) backend.recordAndSubmit = original;
    else delete (backend as Partial<Recorder>).recordAndSubmit;
  }
  return count;
}

Deno.test({
  name:
    "a LayerNorm forward and backward is 2 dispatches on webgpu, a GELU 2, a tanh GELU 2 (the composed ops take many more)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const shape = [4, 6, 16];
    const x = tf.tensor(uniform(384, 21), shape);
    const residual = tf.tensor(uniform(384, 22), shape);
    const gamma = tf.tensor1d(uniform(16, 23, 0.5, 1.5));
    const beta = tf.tensor1d(uniform(16, 24));
    const dy = tf.tensor(uniform(384, 25), shape);
    const layerNorm = (op: LayerNormOp, withResidual: boolean) => () =>
      withResidual
        ? [...tf.grads((a, r, g, b) => op(a, r, g, b, 1e-12))([x, residual, gamma, beta], dy)]
        : [...tf.grads((a, g, b) => op(a, null, g, b, 1e-12))([x, gamma, beta], dy)];
    const gelu = (op: (t: tf.Tensor) => tf.Tensor) => () => [tf.grad(op)(x, dy)];
    const counts: Record<string, number> = {};
    const cases = {
      "LayerNorm": layerNorm(layerNormResidual, false),
      "LayerNorm with residual": layerNorm(layerNormResidual, true),
      "GELU": gelu(geluFused),
      "tanh GELU": gelu(geluTanhFused),
      "composed LayerNorm": layerNorm(layerNormResidualReference, false),
      "composed LayerNorm with residual": layerNorm(layerNormResidualReference, true),
      "composed GELU": gelu(geluReference),
      "composed tanh GELU": gelu(geluTanhReference),
    };
    for (const [name, work] of Object.entries(cases)) {
      await webGpuDispatches(work); // compiles the programs and uploads the inputs
      counts[name] = await webGpuDispatches(work);
    }
    const summary = JSON.stringify(counts);
    assertEquals(counts["LayerNorm"], 2, summary);
    assertEquals(counts["LayerNorm with residual"], 2, summary);
    assertEquals(counts["GELU"], 2, summary);
    assertEquals(counts["tanh GELU"], 2, summary);
    assert(counts["composed LayerNorm"] > 2 && counts["composed GELU"] > 2, summary);
    assert(counts["composed tanh GELU"] > 2, summary);
    tf.dispose([x, residual, gamma, beta, dy]);
  },
});

releaseWebGpuAfterTests();
