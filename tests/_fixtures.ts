/**
 * Small deterministic batches for model tests, built without the data module so model
 * tests do not depend on it.
 *
 * @module
 */
import type { EvalBatch, TrainBatch } from "../lib/data/types.ts";

/**
 * A left-padded training batch: row b has `b + 2` real items (capped at `length`), item ids
 * drawn deterministically from 1..numItems, a target after every real input.
 */
export function tinyTrainBatch(batch: number, length: number, numItems: number): TrainBatch {
  const inputs = new Int32Array(batch * length);
  const targets = new Int32Array(batch * length);
  for (let b = 0; b < batch; b++) {
    const real = Math.min(length, b + 2);
    const seq = Array.from({ length: real + 1 }, (_, j) => 1 + ((b * 7 + j * 3) % numItems));
    for (let j = 0; j < real; j++) {
      inputs[b * length + length - real + j] = seq[j];
      targets[b * length + length - real + j] = seq[j + 1];
    }
  }
  return { batch, length, inputs, targets };
}

/** An evaluation batch over the same kind of rows as {@linkcode tinyTrainBatch}. */
export function tinyEvalBatch(batch: number, length: number, numItems: number): EvalBatch {
  const t = tinyTrainBatch(batch, length, numItems);
  const targets = new Int32Array(batch);
  const exclude: Int32Array[] = [];
  for (let b = 0; b < batch; b++) {
    targets[b] = t.targets[b * length + length - 1];
    exclude.push(t.inputs.slice(b * length, (b + 1) * length).filter((x) => x !== 0));
  }
  return {
    batch,
    length,
    inputs: t.inputs,
    targets,
    users: Int32Array.from({ length: batch }, (_, i) => i),
    exclude,
  };
}
