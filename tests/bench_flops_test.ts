/**
 * `bench/_flops.ts`: the operations the benches report per step are 2·M·N·K for every
 * matrix product whatever its transposes and batches, and the gated GRU kernels' state
 * products where they run.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { kernelFlops, totalFlops } from "../bench/_flops.ts";
import { createGru, gatedCategoryGru, GRU_FORWARD_KERNEL } from "../lib/nn/gru.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { assert, assertEquals } from "./_assert.ts";

Deno.test("kernelFlops() of a profiled matMul is 2·batch·M·N·K for every transpose and broadcast", async () => {
  await selectBackend("cpu");
  const cases = fc.sample(
    fc.record({
      batch: fc.integer({ min: 1, max: 3 }),
      m: fc.integer({ min: 1, max: 9 }),
      n: fc.integer({ min: 1, max: 9 }),
      k: fc.integer({ min: 1, max: 9 }),
      ta: fc.boolean(),
      tb: fc.boolean(),
      broadcastA: fc.boolean(), // a of batch 1, broadcast over b's
    }),
    200,
  );
  for (const { batch, m, n, k, ta, tb, broadcastA } of cases) {
    const a = tf.zeros([broadcastA ? 1 : batch, ...(ta ? [k, m] : [m, k])]);
    const b = tf.zeros([batch, ...(tb ? [n, k] : [k, n])]);
    const { kernels } = await tf.profile(() => tf.matMul(a, b, ta, tb));
    assertEquals(
      totalFlops(kernels),
      2 * batch * m * n * k,
      `${batch} ${m} ${n} ${k} ${ta} ${tb} ${broadcastA}`,
    );
    tf.dispose([a, b]);
  }
});

Deno.test("kernelFlops() counts the GRU kernels' state products, nothing for other kernels", async () => {
  assertEquals(
    kernelFlops({ name: "Add", inputShapes: [[4, 4], [4, 4]], outputShapes: [[4, 4]] }),
    0,
  );
  const [batch, length, k, d] = [2, 5, 3, 8];
  const forward = {
    name: GRU_FORWARD_KERNEL,
    inputShapes: [[batch, length, 1, 3 * d], [batch, length, k], [d, 3 * d], [3 * d]],
    outputShapes: [],
  };
  assertEquals(kernelFlops(forward), 2 * batch * length * k * d * 3 * d);
  await selectBackend("wasm");
  if (tf.getKernel(GRU_FORWARD_KERNEL, "wasm") !== undefined) {
    // The profiled call carries the shapes this reads.
    const p = new ParamStore(1);
    createGru(p, "gru", d, 1);
    const items = tf.ones([batch, length, d]) as tf.Tensor3D;
    const gates = tf.ones([batch, length, k]) as tf.Tensor3D;
    const { kernels } = await tf.profile(() => gatedCategoryGru(p, "gru", items, gates, 1));
    const gru = kernels.filter((x) => x.name === GRU_FORWARD_KERNEL);
    assertEquals(gru.length, 1);
    assertEquals(kernelFlops(gru[0]), 2 * batch * length * k * d * 3 * d);
    assert(totalFlops(kernels) > kernelFlops(gru[0]), "the input projection counts too");
    tf.dispose([items, gates]);
    p.dispose();
  }
  await selectBackend("cpu");
});
