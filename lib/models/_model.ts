/**
 * The small interface every model implements (in the spirit of RecBole's models):
 * a loss for training, and scores of the full catalogue for ranking.
 *
 * @module
 */
import type { Scalar, Tensor2D } from "../nn/tensor_types.ts";
import type { EvalBatch, TrainBatch } from "../data/types.ts";
import type { ParamStore } from "../nn/params.ts";

/** What every model offers to the trainer and the evaluator. */
export interface SequentialModel<C = unknown> {
  /** Short model name, as in `--model`. */
  readonly name: string;
  /** The full configuration, stored in checkpoints. */
  readonly config: C;
  /** The trainable parameters. */
  readonly params: ParamStore;
  /**
   * The scalar training loss of a batch, averaged over positions with a target.
   * `seeds` draws the seeds of every random choice of this step (dropout, sampling).
   * Also returns named parts of the loss for logging, as scalars.
   */
  loss(
    batch: TrainBatch,
    seeds: () => number,
  ): { loss: Scalar; parts: Record<string, Scalar> };
  /** Scores `[B, numItems + 1]` of every item (column 0 = padding) after each history. */
  scores(batch: EvalBatch): Tensor2D;
}

/** A 32-bit seed stream for one training step, derived from a run seed and a step number. */
export function stepSeeds(runSeed: number, step: number): () => number {
  let state = (Math.imul(runSeed >>> 0, 0x9e3779b1) ^ Math.imul(step + 1, 0x85ebca77)) >>> 0;
  return () => {
    // splitmix32-style mixing: cheap, and different steps give unrelated streams.
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}
