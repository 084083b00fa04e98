/**
 * Whole-model parity of training: a few trainer steps (the project's Adam, dropout on) of
 * SASRec, SIGMA and DiffuRec on webgpu, with its fused kernels (dropout, Adam, and
 * whatever else is registered), equal the same steps on wasm within float tolerance.
 *
 * @module
 */
import { selectBackend } from "../backends/mod.ts";
import type { SequentialModel } from "../lib/models/_model.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { DiffuRec } from "../lib/models/diffurec.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { Adam } from "../lib/train/adam.ts";
import { trainStep } from "../lib/train/trainer.ts";
import { assert } from "./_assert.ts";
import { tinyTrainBatch } from "./_fixtures.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const NUM_ITEMS = 30;
const SHARED = { numItems: NUM_ITEMS, hidden: 16, heads: 2, inner: 32, maxLength: 8, seed: 3 };
const STEPS = 3;
const LR = 1e-3;

const MODELS: [string, () => SequentialModel][] = [
  ["sasrec", () => new SasRec({ ...SHARED, layers: 2, dropout: 0.2 })],
  ["sigma", () => new Sigma({ ...SHARED, layers: 1, interests: 3, dropout: 0.2 })],
  ["diffurec", () => new DiffuRec({ ...SHARED, layers: 2, steps: 8, dropout: 0.2 })],
];

/** The losses of `STEPS` trainer steps on `backend` and the parameters after them. */
async function train(backend: "wasm" | "webgpu", create: () => SequentialModel) {
  await selectBackend(backend, { webgpuCpuForward: false, wasmThreads: 1 });
  const model = create();
  const optimizer = new Adam(LR);
  const vars = model.params.list();
  const batch = tinyTrainBatch(6, 8, NUM_ITEMS);
  const losses: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    const { values } = trainStep(model, batch, stepSeeds(7, step), optimizer, vars, 1 << 20, {
      step,
      epoch: 1,
    });
    losses.push((await values.data())[0]);
    values.dispose();
  }
  const params = await Promise.all(vars.map(async (v) => await v.data() as Float32Array));
  optimizer.dispose();
  model.params.dispose();
  return { losses, params };
}

for (const [name, create] of MODELS) {
  Deno.test(`${name}: ${STEPS} training steps on webgpu equal wasm's within float tolerance`, async () => {
    const ref = await train("wasm", create);
    const gpu = await train("webgpu", create);
    // Losses: the same batches, masks and noise on both, so only float32 summation order
    // differs (~1e-6 per op): 1e-4 relative still catches a wrong kernel.
    ref.losses.forEach((l, i) =>
      assert(
        Math.abs(gpu.losses[i] - l) <= 1e-4 * Math.abs(l),
        `step ${i}: ${gpu.losses[i]} vs ${l}`,
      )
    );
    // Parameters: Adam divides by sqrt(v), so an entry whose gradient is ~0 can move by up
    // to ~lr on one backend and not the other; each entry is bounded by 2 lr a step, and
    // all but 1% must agree to 1e-5 (a wrong kernel moves most of a tensor).
    let total = 0, off = 0;
    ref.params.forEach((p, t) => {
      for (let i = 0; i < p.length; i++) {
        const d = Math.abs(gpu.params[t][i] - p[i]);
        assert(d <= 2 * LR * STEPS + 1e-6, `parameter ${t}[${i}] differs by ${d}`);
        total++;
        if (d > 1e-5 + 1e-4 * Math.abs(p[i])) off++;
      }
    });
    assert(off <= 0.01 * total, `${off} of ${total} parameter entries differ beyond 1e-5`);
  });
}

releaseWebGpuAfterTests();
