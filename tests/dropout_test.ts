import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import { dropout, dropoutMask, keepScale, keepThreshold, philox2x32 } from "../lib/nn/dropout.ts";
import { assert, assertEquals } from "./_assert.ts";
import { countGpuDispatches, releaseWebGpuAfterTests } from "./_webgpu.ts";

Deno.test("philox2x32 gives Random123's known answers (10 rounds)", () => {
  const hex = (w: [number, number]) => w.map((x) => x.toString(16).padStart(8, "0"));
  assertEquals(hex(philox2x32(0, 0, 0)), ["ff1dae59", "6cd10df2"]);
  assertEquals(hex(philox2x32(0xffffffff, 0xffffffff, 0xffffffff)), ["2c3f628b", "ab4fd7ad"]);
  assertEquals(hex(philox2x32(0x243f6a88, 0x85a308d3, 0x13198a2e)), ["dd7ce038", "f62a4c12"]);
});

Deno.test("dropoutMask: element i's fate is a function of (seed, i) alone, from philox2x32 (300 cases)", () => {
  fc.assert(
    fc.property(
      fc.double({ min: 0, max: 0.99, noNaN: true }),
      fc.integer({ min: 1, max: 600 }),
      fc.integer({ min: 1, max: 600 }),
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      (rate, n, m, seed) => {
        const a = dropoutMask(n, rate, seed);
        const b = dropoutMask(m, rate, seed);
        const scale = keepScale(rate);
        for (let i = 0; i < Math.min(n, m); i++) assertEquals(a[i], b[i], `element ${i}`);
        // Spot-check the definition at a few indices.
        for (const i of [0, n - 1, Math.floor(n / 2)]) {
          const word = philox2x32(Math.floor(i / 2), 0, seed)[i % 2];
          assertEquals(a[i], word >= keepThreshold(rate) ? scale : 0, `element ${i}`);
        }
        assert(a.every((v) => v === 0 || v === scale), "a mask entry other than 0 or the scale");
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("dropout on webgpu draws the host's mask bit for bit, forward and backward, in one dispatch each (25 cases)", async () => {
  const cases = fc.sample(
    fc.record({
      shape: fc.array(fc.integer({ min: 1, max: 17 }), { minLength: 1, maxLength: 3 }),
      rate: fc.double({ min: 0.01, max: 0.9, noNaN: true }),
      seed: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
    }),
    { numRuns: 25, seed: 11 },
  );
  for (const { shape, rate, seed } of cases) {
    const size = shape.reduce((a, b) => a * b, 1);
    const values = Float32Array.from({ length: size }, (_, i) => Math.sin(i + 1) * 3);
    await selectBackend("cpu");
    const [hostOut, hostGrad] = tf.tidy(() => {
      const x = tf.tensor(values, shape);
      const g = tf.grad((t: tf.Tensor) => tf.sum(dropout(t, rate, seed)))(x);
      return [dropout(x, rate, seed).dataSync(), tf.mul(g, x).dataSync()];
    });
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const x = tf.tensor(values, shape);
    const before = tf.memory().numTensors;
    let out: tf.Tensor | undefined;
    const forward = countGpuDispatches(() => {
      out = tf.tidy(() => dropout(x, rate, seed));
    });
    assertEquals(forward, 1, "forward dispatches");
    let grad: tf.Tensor | undefined;
    const both = countGpuDispatches(() => {
      grad = tf.tidy(() => tf.grad((t: tf.Tensor) => tf.sum(dropout(t, rate, seed)))(x));
    });
    // Forward, the sum, the sum's gradient (a fill) and the dropout's gradient: the
    // dropout's own part is one dispatch each way.
    assert(both <= 4, `forward + backward took ${both} dispatches`);
    assertEquals([...await out!.data()], [...hostOut], `forward ${shape} rate ${rate}`);
    // The gradient of sum(dropout(t)) is the mask; times x, so that a wrong scale shows.
    const gradTimesX = tf.tidy(() => tf.mul(grad!, x));
    assertEquals([...await gradTimesX.data()], [...hostGrad], `backward ${shape} rate ${rate}`);
    tf.dispose([out!, grad!, gradTimesX]);
    assertEquals(tf.memory().numTensors, before, "tensors left behind");
    x.dispose();
  }
});

Deno.test("dropout on wasm (bmm.wasm's Philox loop) equals the cpu reference bit for bit, forward and backward (75 cases)", async () => {
  const cases = fc.sample(
    fc.record({
      size: fc.integer({ min: 1, max: 3000 }),
      rate: fc.double({ min: 0, max: 0.95, noNaN: true }),
      seed: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
    }),
    { numRuns: 60, seed: 5 },
  );
  // bmm.wasm draws sixteen elements at a time, then eight (four counters in SIMD lanes),
  // then one pair: every size around those boundaries.
  for (const size of [1, 2, 3, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33]) {
    cases.push({ size, rate: 0.3, seed: 0xfffffff0 + size });
  }
  const run = (size: number, rate: number, seed: number) =>
    tf.tidy(() => {
      const x = tf.tensor1d(Float32Array.from({ length: size }, (_, i) => Math.cos(i) * 2));
      const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(dropout(t, rate, seed), 3)))(x);
      return [dropout(x, rate, seed).dataSync().slice(), g.dataSync().slice()];
    });
  await selectBackend("cpu");
  const reference = cases.map(({ size, rate, seed }) => run(size, rate, seed));
  await selectBackend("wasm");
  assert(bmmActive(), "bmm.wasm is not running: this test would check the host path only");
  cases.forEach(({ size, rate, seed }, i) => {
    const [out, grad] = run(size, rate, seed);
    assertEquals([...out], [...reference[i][0]], `forward, ${size} at rate ${rate}`);
    assertEquals([...grad], [...reference[i][1]], `backward, ${size} at rate ${rate}`);
  });
});

Deno.test("dropout refuses a rate outside [0, 1), naming it", async () => {
  await selectBackend("cpu");
  const x = tf.ones([3]);
  for (const rate of [1, -0.1, NaN]) {
    let message = "";
    try {
      dropout(x, rate, 1);
    } catch (e) {
      assert(e instanceof RangeError, String(e));
      message = e.message;
    }
    assert(message.includes(String(rate)), `rate ${rate}: ${message}`);
  }
  x.dispose();
});

releaseWebGpuAfterTests();
