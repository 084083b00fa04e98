/**
 * Training and evaluation batches: left padded, truncated to the most recent items.
 *
 * @module
 */
import type { EvalBatch, EvalExample, TrainBatch } from "./types.ts";
import type { Rng } from "./random.ts";
import { checkPositiveInt } from "./_dense.ts";

/** Maximum sequence length of the paper (SIGMA.md, "Data and protocol"). */
export const DEFAULT_MAX_LENGTH = 100;

/** Options of {@linkcode trainBatches}. */
export interface TrainBatchOptions {
  /** Rows per batch (the last batch may have fewer). */
  batchSize: number;
  /** Longest input kept per row; longer sequences keep their most recent part. Default 100. */
  maxLength?: number;
  /** Source of the epoch's shuffle; the same generator state gives the same batches. */
  rng: Rng;
  /**
   * Group rows of similar length so batches carry little padding. Default true: shuffle,
   * cut into chunks of `32 * batchSize` rows, sort each chunk by length, cut into batches,
   * shuffle the batch order. False: plain shuffled batches.
   */
  bucket?: boolean;
  /**
   * What a row is. `"sequences"` (default): a user's training sequence, with a target at
   * each of its most recent `maxLength` positions (SASRec's and SIGMA's batches).
   * `"prefixes"`: one target position, with the `maxLength` items before it as its input
   * and its target in the last column only; every target of every sequence is a row, and
   * rows of all users are shuffled together (DiffuRec's training examples, DIFFUREC.md
   * §1.2: 131,413 on Beauty). `batchSize` counts rows either way.
   */
  examples?: TrainExamples;
}

/** What a training row is: see {@linkcode TrainBatchOptions.examples}. */
export type TrainExamples = "sequences" | "prefixes";

/** Every {@linkcode TrainExamples} value. */
export const TRAIN_EXAMPLES: readonly TrainExamples[] = ["sequences", "prefixes"];

/** How many rows of `batchSize` a bucketing chunk holds. */
const BUCKET_BATCHES = 32;

/**
 * One epoch of next-item training batches. Each training sequence `s` of length >= 2 gives
 * inputs `s[:-1]` and targets `s[1:]`, truncated to the most recent `maxLength` positions
 * and left padded with 0 to the longest row of its batch. Shorter sequences have no target
 * and are skipped. Every kept target position appears in exactly one batch. With
 * `examples: "prefixes"`, each target position `k` of each sequence is a row of its own
 * instead (inputs: the up to `maxLength` items before it; target: `s[k]`, last column), so
 * no position is dropped.
 *
 * @example Usage
 * ```ts
 * import { trainBatches } from "./batches.ts";
 * import { Rng } from "./random.ts";
 * const train = [Int32Array.of(1, 2, 3), Int32Array.of(4, 5)];
 * const batches = trainBatches(train, { batchSize: 2, rng: new Rng(1) });
 * // one batch of length 2; the row of [4, 5] is inputs [0, 4], targets [0, 5]
 * ```
 *
 * @param train Training sequences, e.g. `leaveOneOut(dataset).split.train`.
 * @param options See {@linkcode TrainBatchOptions}.
 * @throws {RangeError} `batchSize` or `maxLength` is not a positive integer.
 */
export function trainBatches(train: Int32Array[], options: TrainBatchOptions): TrainBatch[] {
  const { batchSize, rng } = options;
  const maxLength = options.maxLength ?? DEFAULT_MAX_LENGTH;
  checkPositiveInt("batchSize", batchSize);
  checkPositiveInt("maxLength", maxLength);
  const examples = options.examples ?? "sequences";
  if (!TRAIN_EXAMPLES.includes(examples)) {
    throw new RangeError(`examples must be one of ${TRAIN_EXAMPLES.join(", ")}, got "${examples}"`);
  }
  const prefixes = examples === "prefixes";
  // A prefix row is the target with the items before it: s[max(0, k - maxLength) .. k].
  const rows = rng.shuffle(
    prefixes ? prefixRows(train, maxLength) : train.filter((s) => s.length >= 2),
  );
  const groups: Int32Array[][] = [];
  if (options.bucket ?? true) {
    const chunk = BUCKET_BATCHES * batchSize;
    const size = (s: Int32Array) => Math.min(s.length - 1, maxLength);
    for (let c = 0; c < rows.length; c += chunk) {
      // Stable sort: rows of equal length keep their shuffled order.
      const part = rows.slice(c, c + chunk).sort((a, b) => size(a) - size(b));
      for (let b = 0; b < part.length; b += batchSize) groups.push(part.slice(b, b + batchSize));
    }
    // Sorting made batch lengths increase within a chunk; reshuffle so the epoch does not
    // sweep from short to long sequences.
    rng.shuffle(groups);
  } else {
    for (let b = 0; b < rows.length; b += batchSize) groups.push(rows.slice(b, b + batchSize));
  }
  return groups.map((g) => prefixes ? lastTargetBatch(g) : paddedTrainBatch(g, maxLength));
}

/** Every target of every sequence with the up to `maxLength` items before it, as views. */
function prefixRows(train: Int32Array[], maxLength: number): Int32Array[] {
  const rows: Int32Array[] = [];
  for (const s of train) {
    for (let k = 1; k < s.length; k++) rows.push(s.subarray(Math.max(0, k - maxLength), k + 1));
  }
  return rows;
}

/** Rows `[...inputs, target]` left padded to the longest, with the target in the last column. */
function lastTargetBatch(rows: Int32Array[]): TrainBatch {
  const length = Math.max(...rows.map((r) => r.length - 1));
  const batch = rows.length;
  const inputs = new Int32Array(batch * length);
  const targets = new Int32Array(batch * length);
  rows.forEach((r, b) => {
    inputs.set(r.subarray(0, r.length - 1), (b + 1) * length - (r.length - 1));
    targets[(b + 1) * length - 1] = r[r.length - 1];
  });
  return { batch, length, inputs, targets };
}

/**
 * Builds one training batch from whole training sequences (as in {@linkcode trainBatches},
 * in the given row order): inputs `s[:-1]`, targets `s[1:]`, the most recent `maxLength`
 * positions, left padded with 0 to `padTo` or else to the longest row.
 *
 * @example Usage
 * ```ts
 * import { paddedTrainBatch } from "./batches.ts";
 * const b = paddedTrainBatch([Int32Array.of(7, 8, 9)], 100, 4);
 * // b.inputs = [0, 0, 7, 8], b.targets = [0, 0, 8, 9]
 * ```
 *
 * @param rows Sequences of at least 2 items.
 * @param maxLength Longest input kept per row.
 * @param padTo Force this padded length (between the longest row and `maxLength`), e.g.
 * `maxLength` for comparisons against full padding.
 * @throws {RangeError} No rows, a row shorter than 2, or `padTo` out of range.
 */
export function paddedTrainBatch(
  rows: Int32Array[],
  maxLength: number,
  padTo?: number,
): TrainBatch {
  checkPositiveInt("maxLength", maxLength);
  if (rows.length === 0) throw new RangeError("paddedTrainBatch needs at least one row");
  let longest = 0;
  for (let r = 0; r < rows.length; r++) {
    if (rows[r].length < 2) {
      throw new RangeError(
        `training row ${r} has ${rows[r].length} item(s); a row needs at least 2 to have a target`,
      );
    }
    longest = Math.max(longest, Math.min(rows[r].length - 1, maxLength));
  }
  const length = padTo ?? longest;
  if (!Number.isInteger(length) || length < longest || length > maxLength) {
    throw new RangeError(
      `padTo must be an integer from ${longest} (longest row) to ${maxLength} (maxLength), got ${padTo}`,
    );
  }
  const batch = rows.length;
  const inputs = new Int32Array(batch * length);
  const targets = new Int32Array(batch * length);
  for (let r = 0; r < batch; r++) {
    const s = rows[r];
    const n = s.length;
    const kept = Math.min(n - 1, maxLength);
    const offset = r * length + length - kept;
    inputs.set(s.subarray(n - 1 - kept, n - 1), offset);
    targets.set(s.subarray(n - kept, n), offset);
  }
  return { batch, length, inputs, targets };
}

/**
 * The padded length of an evaluation row, a function of its own history length only:
 * `min(maxLength, ceil(min(historyLength, maxLength) / step) * step)`, and at least
 * `min(step, maxLength)` so an empty history still gets a row.
 *
 * @example Usage
 * ```ts
 * import { evalPaddedLength } from "./batches.ts";
 * evalPaddedLength(23, 100); // 30
 * evalPaddedLength(250, 100); // 100
 * evalPaddedLength(95, 100, 20); // 100
 * ```
 *
 * @param historyLength Items in the (untruncated) history, >= 0.
 * @param maxLength Longest input the model takes.
 * @param step Rounding step; larger steps mean fewer, fuller groups. Default 10.
 * @throws {RangeError} A negative or non-integer argument.
 */
export function evalPaddedLength(historyLength: number, maxLength: number, step = 10): number {
  if (!Number.isInteger(historyLength) || historyLength < 0) {
    throw new RangeError(`historyLength must be a non-negative integer, got ${historyLength}`);
  }
  checkPositiveInt("maxLength", maxLength);
  checkPositiveInt("step", step);
  const rounded = Math.ceil(Math.min(historyLength, maxLength) / step) * step;
  return Math.min(maxLength, Math.max(rounded, step));
}

/** Options of {@linkcode evalBatches}. */
export interface EvalBatchOptions {
  /** Rows per batch (the last batch of each length group may have fewer). */
  batchSize: number;
  /** Longest history kept per row; longer ones keep their most recent items. Default 100. */
  maxLength?: number;
  /** Rounding step of {@linkcode evalPaddedLength}. Default 10. */
  step?: number;
}

/**
 * Evaluation batches. Examples are grouped by {@linkcode evalPaddedLength} of their history,
 * so a row's padded length (and hence what a model computes for it) depends only on its own
 * history, never on the batch size or on which rows share its batch. Groups come in
 * ascending length; inside a group the input order is kept. Histories are truncated to the
 * most recent `maxLength` items and left padded with 0. `exclude[r]` holds the row's whole
 * untruncated history, deduplicated and sorted ascending (padding 0 is not included).
 *
 * @example Usage
 * ```ts
 * import { evalBatches } from "./batches.ts";
 * const examples = [{ user: 0, history: Int32Array.of(3, 1, 3), target: 2 }];
 * const [b] = evalBatches(examples, { batchSize: 8 });
 * // b.length = 10, b.inputs ends with 3, 1, 3; b.exclude[0] = [1, 3]
 * ```
 *
 * @param examples Validation or test examples, e.g. `leaveOneOut(dataset).split.test`.
 * @param options See {@linkcode EvalBatchOptions}.
 * @throws {RangeError} `batchSize`, `maxLength` or `step` is not a positive integer, or a
 * target is not a positive integer item id.
 */
export function evalBatches(examples: EvalExample[], options: EvalBatchOptions): EvalBatch[] {
  examples.forEach((ex, k) => {
    if (!Number.isInteger(ex.target) || ex.target < 1) {
      throw new RangeError(`example ${k} (user ${ex.user}) has target ${ex.target}, not an item`);
    }
  });
  return groupedBatches(examples, options).map(({ batch }) => batch);
}

/** One batch of {@linkcode historyBatches}, with the input positions of its rows. */
export interface HistoryBatch {
  /** The padded histories; `targets` are 0 and `users[r]` is the row's input position. */
  batch: EvalBatch;
  /** `rows[r]` is the index, in the input, of the batch's row `r`. */
  rows: number[];
}

/**
 * Inference batches of bare histories (no target), padded exactly as
 * {@linkcode evalBatches} pads them, so a model scores a history here as it scores it in
 * evaluation. Each batch says which input each of its rows came from.
 *
 * @example Usage
 * ```ts
 * import { historyBatches } from "./batches.ts";
 * const out = historyBatches([Int32Array.of(4, 2), new Int32Array(0)], { batchSize: 8 });
 * // one batch of length 10: out[0].rows = [0, 1]; the empty history is all padding
 * ```
 *
 * @param histories Item ids in time order; an empty history is a row of padding.
 * @param options See {@linkcode EvalBatchOptions}.
 * @throws {RangeError} `batchSize`, `maxLength` or `step` is not a positive integer.
 */
export function historyBatches(
  histories: readonly Int32Array[],
  options: EvalBatchOptions,
): HistoryBatch[] {
  const examples = histories.map((history, user) => ({ user, history, target: 0 }));
  return groupedBatches(examples, options).map(({ batch }) => ({
    batch,
    rows: Array.from(batch.users),
  }));
}

/** Examples grouped by padded length, ascending, in input order inside a group. */
function groupedBatches(
  examples: EvalExample[],
  options: EvalBatchOptions,
): { batch: EvalBatch }[] {
  const { batchSize } = options;
  const maxLength = options.maxLength ?? DEFAULT_MAX_LENGTH;
  const step = options.step ?? 10;
  checkPositiveInt("batchSize", batchSize);
  checkPositiveInt("maxLength", maxLength);
  checkPositiveInt("step", step);
  const groups = new Map<number, EvalExample[]>();
  for (const ex of examples) {
    const length = evalPaddedLength(ex.history.length, maxLength, step);
    let g = groups.get(length);
    if (g === undefined) groups.set(length, g = []);
    g.push(ex);
  }
  const out: { batch: EvalBatch }[] = [];
  for (const length of [...groups.keys()].sort((a, b) => a - b)) {
    const g = groups.get(length)!;
    for (let b = 0; b < g.length; b += batchSize) {
      out.push({ batch: evalBatch(g.slice(b, b + batchSize), length) });
    }
  }
  return out;
}

function evalBatch(rows: EvalExample[], length: number): EvalBatch {
  const batch = rows.length;
  const inputs = new Int32Array(batch * length);
  const targets = new Int32Array(batch);
  const users = new Int32Array(batch);
  const exclude: Int32Array[] = [];
  rows.forEach((ex, r) => {
    const h = ex.history;
    const kept = Math.min(h.length, length);
    inputs.set(h.subarray(h.length - kept), r * length + length - kept);
    targets[r] = ex.target;
    users[r] = ex.user;
    exclude.push(Int32Array.from(new Set(h)).sort());
  });
  return { batch, length, inputs, targets, users, exclude };
}
