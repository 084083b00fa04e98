import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import type { SequentialModel } from "../lib/models/_model.ts";
import { assert, assertEquals } from "./_assert.ts";
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
      const missing = [...names].filter((n) => tf.getKernel(n, backend) === undefined);
      assertEquals(missing, [], `${model.name} needs kernels ${backend} lacks`);
    }
    assert(!names.has("UnsortedSegmentSum"), `${model.name} dispatches UnsortedSegmentSum`);
    model.params.dispose();
  }
});
