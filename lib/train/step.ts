/**
 * One training step: a batch split into pieces of bounded size (rows of similar length
 * together), each piece's gradients summed in proportion to its targets, and one Adam
 * update of every parameter the loss reached.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { accumulate } from "./accumulate.ts";
import type { Adam } from "./adam.ts";
import type { TrainBatch } from "../data/types.ts";
import type { SequentialModel } from "../models/_model.ts";

/** Number of positions of `batch` that have a target. */
function targetCount(batch: TrainBatch, row?: number): number {
  const { length, targets } = batch;
  let count = 0;
  const from = row === undefined ? 0 : row * length;
  const to = row === undefined ? targets.length : from + length;
  for (let i = from; i < to; i++) if (targets[i] !== 0) count++;
  return count;
}

/** Number of non-padding columns of row `row` of `batch` (histories are left-padded). */
function rowLength(batch: TrainBatch, row: number): number {
  const { length, inputs } = batch;
  let first = 0;
  while (first < length && inputs[row * length + first] === 0) first++;
  return length - first;
}

/**
 * A piece does not mix rows whose lengths differ by more than this factor once it holds a
 * quarter of the budget, so that short rows do not pay for the longest (see
 * {@linkcode splitBatch}).
 */
const LENGTH_SPREAD = 2;

/**
 * Splits `batch` into pieces of rows when its padded cost, targets times
 * `cost(batch.length)`, exceeds `maxPositions`. Rows are taken shortest first, and each
 * piece is padded only to its own longest row, holds at most `maxPositions` of cost
 * (targets times `cost` of its length; a single longer row is a piece of its own), and
 * does not mix lengths more than {@linkcode LENGTH_SPREAD} times apart once it holds a
 * quarter of the budget. A loss that is a mean over positions then gets the whole batch's
 * gradient from its pieces weighted by their share of the targets (see
 * {@linkcode trainStep}); which rows share a piece changes nothing but the order of the
 * random draws.
 *
 * @param batch The batch to split; returned as it is when it fits.
 * @param maxPositions The budget of a piece, in SASRec positions.
 * @param cost Memory of one target position in a piece padded to a length, relative to
 * one SASRec position (see `SequentialModel.trainingCost`). Default 1.
 */
export function splitBatch(
  batch: TrainBatch,
  maxPositions: number,
  cost: (length: number) => number = () => 1,
): TrainBatch[] {
  if (targetCount(batch) * cost(batch.length) <= maxPositions) return [batch];
  const lengths = Array.from({ length: batch.batch }, (_, r) => Math.max(1, rowLength(batch, r)));
  const targets = lengths.map((_, r) => targetCount(batch, r));
  const order = lengths.map((_, r) => r).sort((a, b) => lengths[a] - lengths[b] || a - b);
  const pieces: TrainBatch[] = [];
  let start = 0;
  while (start < order.length) {
    const shortest = lengths[order[start]];
    let end = start;
    let positions = 0;
    while (end < order.length) {
      const row = order[end];
      const next = positions + targets[row];
      if (end > start) { // a piece holds at least one row
        const overBudget = next * cost(lengths[row]) > maxPositions;
        const spread = lengths[row] > LENGTH_SPREAD * shortest &&
          positions * cost(lengths[order[end - 1]]) >= maxPositions / 4;
        if (overBudget || spread) break;
      }
      positions = next;
      end++;
    }
    pieces.push(copyRows(batch, order.slice(start, end), lengths[order[end - 1]]));
    start = end;
  }
  return pieces;
}

/** Rows `rows` of `batch`, each cut to its last `length` columns. */
function copyRows(batch: TrainBatch, rows: number[], length: number): TrainBatch {
  const inputs = new Int32Array(rows.length * length);
  const targets = new Int32Array(rows.length * length);
  rows.forEach((row, r) => {
    const from = row * batch.length + (batch.length - length);
    inputs.set(batch.inputs.subarray(from, from + length), r * length);
    targets.set(batch.targets.subarray(from, from + length), r * length);
  });
  return { batch: rows.length, length, inputs, targets };
}

/** Options of {@linkcode trainStep} beyond the batch and the optimizer. */
export interface StepOptions {
  /** The 0-based Adam step, for loss schedules; absent: after every schedule has ended. */
  step?: number;
  /** The 1-based epoch, for loss schedules by epoch; absent: after every one has ended. */
  epoch?: number;
  /**
   * Minimise this named part of the loss alone instead of the whole loss (a diagnostic:
   * `bench/loss_trace.ts --objective`). Every part is still returned.
   */
  objective?: string;
  /** L2 penalty added to every reached parameter's gradient (see `TrainOptions.weightDecay`). */
  weightDecay?: number;
}

/**
 * One Adam step on `batch`, split by {@linkcode splitBatch} when it holds more than
 * `maxPositions` targets. Each piece's loss is a mean over its own positions, so weighting
 * it by its share of the batch's positions makes the summed gradient that of the whole
 * batch's mean. Returns the loss and its parts, packed in one tensor `[1 + parts]`.
 */
export function trainStep(
  model: SequentialModel,
  batch: TrainBatch,
  seeds: () => number,
  optimizer: Adam,
  vars: tf.Variable[],
  maxPositions: number,
  options: StepOptions = {},
): { values: tf.Tensor1D; partNames: string[] } {
  const { step, epoch, objective } = options;
  const pieces = splitBatch(batch, maxPositions, (length) => model.trainingCost?.(length) ?? 1);
  let partNames: string[] = [];
  // What the step minimises: the loss, or one part of it.
  const target = (loss: tf.Scalar, parts: Record<string, tf.Scalar>): tf.Scalar => {
    if (objective === undefined) return loss;
    if (!(objective in parts)) {
      throw new RangeError(
        `objective "${objective}" is not a part of the loss: ${Object.keys(parts).join(", ")}`,
      );
    }
    return parts[objective];
  };
  const total = targetCount(batch);
  let summed: Record<string, tf.Tensor> | null = null;
  let packedSum: tf.Tensor1D | null = null;
  for (const piece of pieces) {
    const share = pieces.length === 1 ? 1 : targetCount(piece) / total;
    const scaled = <T extends tf.Tensor>(t: T): T => (share === 1 ? t : tf.mul(t, share) as T);
    const next = tf.tidy(() => {
      let packed: tf.Tensor | null = null;
      const { grads } = tf.variableGrads(() => {
        const { loss, parts } = model.loss(piece, seeds, step, epoch);
        partNames = Object.keys(parts);
        packed = tf.keep(scaled(tf.stack([loss, ...partNames.map((n) => parts[n])])));
        return scaled(target(loss, parts));
      }, vars);
      // Only variables the loss reached get a gradient: Adam leaves the others as they are,
      // as PyTorch does (a variable reached by one piece only gets that piece's gradient).
      const acc: Record<string, tf.Tensor> = {};
      const added: string[] = [];
      for (const v of vars) {
        const g = grads[v.name];
        const before = summed?.[v.name];
        if (g && before) added.push(v.name);
        else if (g || before) acc[v.name] = (g ?? before)!;
      }
      // The sums, with the loss values': on webgpu written into the running sums in place,
      // a few dispatches for all of them (accumulate.ts); elsewhere tf.add each.
      const sums = accumulate(
        [...added.map((name) => summed![name]), ...(packedSum ? [packedSum] : [])],
        [...added.map((name) => grads[name]!), ...(packedSum ? [packed!] : [])],
      );
      added.forEach((name, i) => acc[name] = sums[i]);
      const p = packedSum ? sums[added.length] : packed!;
      if (packedSum) packed!.dispose(); // kept by tf.keep: not tidied
      return { acc, p };
    });
    // A running sum written in place, or not added to by this piece, is carried over as it
    // is: not freed.
    const carried = new Set<tf.Tensor>([...Object.values(next.acc), next.p]);
    if (summed) tf.dispose(Object.values(summed).filter((g) => !carried.has(g)));
    if (packedSum && !carried.has(packedSum)) (packedSum as tf.Tensor).dispose();
    summed = next.acc;
    packedSum = next.p as tf.Tensor1D;
  }
  const decay = options.weightDecay ?? 0;
  const byName = new Map(vars.map((v) => [v.name, v]));
  tf.tidy(() =>
    optimizer.applyGradients(
      decay === 0 ? summed! : Object.fromEntries(
        Object.entries(summed!).map((
          [name, g],
        ) => [name, tf.add(g, tf.mul(byName.get(name)!, decay))]),
      ),
    )
  );
  tf.dispose(Object.values(summed!));
  return { values: packedSum!, partNames };
}
