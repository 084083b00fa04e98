/**
 * Checks shared by the model test files: backend parity of a loss, its gradients and
 * scores, and the tensor count over training steps.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { SequentialModel } from "../lib/models/_model.ts";
import { selectBackend } from "../backends/mod.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { assert, assertEquals } from "./_assert.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";

/** Largest absolute value. */
export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** Largest absolute element-wise difference. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** A model's loss, gradients of every parameter and inference scores on one backend. */
export interface ModelRun {
  loss: number;
  grads: Float32Array[];
  scores: Float32Array;
}

/**
 * Asserts that `run` (on `backend`) equals the cpu reference `ref`. Tolerances: float32
 * kernels sum in different orders on each backend (XNNPACK blocks, WGSL workgroups), so
 * results agree to ~1e-6 relative per op; through a Transformer and its backward pass
 * 1e-4 relative on the loss and 1e-3 of each gradient's scale still catch a wrong kernel.
 */
export function assertParity(ref: ModelRun, run: ModelRun, backend: string): void {
  assert(
    Math.abs(run.loss - ref.loss) <= 1e-4 * Math.abs(ref.loss),
    `${backend} loss ${run.loss} vs cpu ${ref.loss}`,
  );
  assertEquals(run.grads.length, ref.grads.length);
  for (let i = 0; i < ref.grads.length; i++) {
    const scale = Math.max(maxAbs(ref.grads[i]), 1e-3);
    const diff = maxAbsDiff(run.grads[i], ref.grads[i]);
    assert(diff <= 1e-3 * scale, `${backend} gradient ${i}: max diff ${diff}, scale ${scale}`);
  }
  const diff = maxAbsDiff(run.scores, ref.scores);
  assert(diff <= 1e-4 * Math.max(maxAbs(ref.scores), 1), `${backend} scores differ by ${diff}`);
}

/**
 * Runs 5 Adam steps of `model` on a tiny batch and asserts that the number of live tensors
 * stays the same after the first (which creates Adam's moment variables).
 */
export function assertFlatTensorCount(model: SequentialModel, numItems: number, label: string) {
  const optimizer = tf.train.adam(1e-3);
  const batch = tinyTrainBatch(4, 6, numItems);
  const counts: number[] = [];
  for (let step = 0; step < 5; step++) {
    tf.tidy(() => {
      optimizer.minimize(
        () => model.loss(batch, stepSeeds(1, step)).loss,
        false,
        model.params.list(),
      );
    });
    counts.push(tf.memory().numTensors);
  }
  assertEquals(
    counts.slice(1),
    [counts[1], counts[1], counts[1], counts[1]],
    `${label}: ${counts}`,
  );
  optimizer.dispose();
}

/**
 * A fresh model's loss, gradients (zeros for parameters the loss does not reach) and
 * scores on `backend`, on tiny batches of 4 rows of length 6; the model is disposed.
 */
export async function modelRun(
  backend: "cpu" | "wasm" | "webgpu",
  create: () => SequentialModel,
  numItems: number,
): Promise<ModelRun> {
  await selectBackend(backend);
  const model = create();
  const batch = tinyTrainBatch(4, 6, numItems);
  const vars = model.params.list();
  const { value, grads } = tf.variableGrads(() => model.loss(batch, stepSeeds(7, 0)).loss, vars);
  const loss = (await value.data())[0];
  const out: Float32Array[] = [];
  for (const v of vars) {
    out.push(grads[v.name] ? await grads[v.name].data() as Float32Array : new Float32Array(v.size));
  }
  const scores = tf.tidy(() => model.scores(tinyEvalBatch(4, 6, numItems)));
  const s = await scores.data() as Float32Array;
  tf.dispose([value, scores, ...Object.values(grads)]);
  model.params.dispose();
  return { loss, grads: out, scores: s };
}
