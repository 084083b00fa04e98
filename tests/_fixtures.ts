/**
 * Small deterministic batches for model tests, built without the data module so model
 * tests do not depend on it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
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

/** An evaluation batch of the given histories, one per row, left-padded to `length`. */
export function historiesBatch(histories: number[][], length: number): EvalBatch {
  const inputs = new Int32Array(histories.length * length);
  histories.forEach((h, b) => inputs.set(h, b * length + length - h.length));
  return {
    batch: histories.length,
    length,
    inputs,
    targets: new Int32Array(histories.length).fill(1),
    users: Int32Array.from(histories.keys()),
    exclude: histories.map((h) => Int32Array.from(h)),
  };
}

/** One random `tf.matMul` call: input shapes as stored, transposes and the data's seed. */
export interface MatMulCase {
  a: number[];
  b: number[];
  ta: boolean;
  tb: boolean;
  seed: number;
}

/** The case `[...leadA, m, k] @ [...leadB, k, n]`, each input stored transposed if asked. */
export function matMulCase(
  leadA: number[],
  leadB: number[],
  [m, n, k]: [number, number, number],
  ta: boolean,
  tb: boolean,
  seed: number,
): MatMulCase {
  return {
    a: [...leadA, ...(ta ? [k, m] : [m, k])],
    b: [...leadB, ...(tb ? [n, k] : [k, n])],
    ta,
    tb,
    seed,
  };
}

/** The product of a case's N(0, 1) inputs on the active backend, read back. */
export function matMulOf(c: MatMulCase): Float32Array {
  return tf.tidy(() =>
    tf.matMul(
      tf.randomNormal(c.a, 0, 1, "float32", c.seed),
      tf.randomNormal(c.b, 0, 1, "float32", c.seed + 1),
      c.ta,
      c.tb,
    ).dataSync() as Float32Array
  );
}

/** CLI flags of the smallest training run the CLI tests need: one epoch of a width-8 model. */
export const TINY_TRAIN_FLAGS: readonly string[] = [
  "--epochs",
  "1",
  "--hidden",
  "8",
  "--heads",
  "1",
  "--inner",
  "8",
];

/**
 * `n` uniform floats in [lo, hi) from `seed` (mulberry32): inputs that every backend sees
 * alike, drawn without tfjs.
 */
export function seededUniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let a = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return lo + (hi - lo) * (((t ^ (t >>> 14)) >>> 0) / 2 ** 32);
  });
}
