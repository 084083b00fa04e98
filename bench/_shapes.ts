/**
 * The fixed SASRec training step that `bench/torch_reference.py` also times, so that the
 * tfjs and PyTorch figures are of the same work: batch 256, length 50, 12,000 items,
 * every position a random target (no padding).
 *
 * @module
 */
import { Rng } from "../lib/data/random.ts";
import type { TrainBatch } from "../lib/data/types.ts";

/** Catalogue size of the reference step (torch_reference.py's `--items`). */
export const SASREC_STEP_ITEMS = 12000;
/** History length of the reference step. */
export const SASREC_STEP_LENGTH = 50;
/** Histories per batch of the reference step. */
export const SASREC_STEP_ROWS = 256;

/** The reference step's batch: random items 1..12,000 as inputs and targets (seed 7). */
export function sasrecStepBatch(): TrainBatch {
  const rng = new Rng(7);
  const size = SASREC_STEP_ROWS * SASREC_STEP_LENGTH;
  const inputs = new Int32Array(size).map(() => 1 + rng.int(SASREC_STEP_ITEMS));
  const targets = new Int32Array(size).map(() => 1 + rng.int(SASREC_STEP_ITEMS));
  return { batch: SASREC_STEP_ROWS, length: SASREC_STEP_LENGTH, inputs, targets };
}
