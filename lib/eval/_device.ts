/**
 * Ranking on the active tfjs backend: the host-side checks and exclusion mask, the tensor
 * work, and the read-back. Shared by `rank.ts` and `evaluate.ts`.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { EvalBatch } from "../data/types.ts";

/** A batch checked against a score width, with its exclusion mask built on the host. */
export interface PreparedBatch {
  /** Rows. */
  rows: number;
  /** Score columns: numItems + 1. */
  width: number;
  /**
   * `[rows, width]`, 1 where an item competes in the row's ranking: real items that are
   * not excluded, and always the target. 0 for padding (column 0) and excluded items.
   */
  allowed: Uint8Array;
  /** Per row, how many items compete, the target included. */
  allowedCount: Int32Array;
  /** Flat indices `row * width + target` of each row's target score. */
  targetIndex: Int32Array;
}

/**
 * Checks `batch` against a `[rows, width]` score matrix and builds its exclusion mask.
 *
 * @throws {RangeError} A row count that does not match, a target outside 1..width-1, or an
 * excluded id outside 0..width-1; the row and user are named.
 */
export function prepareBatch(batch: EvalBatch, shape: readonly number[]): PreparedBatch {
  if (shape.length !== 2) {
    throw new RangeError(`Scores must be a 2-D [batch, numItems + 1] tensor, got shape [${shape}]`);
  }
  const [rows, width] = shape;
  if (rows !== batch.batch || batch.targets.length !== rows || batch.exclude.length !== rows) {
    throw new RangeError(
      `Scores have ${rows} rows but the batch has batch=${batch.batch}, ` +
        `${batch.targets.length} targets and ${batch.exclude.length} exclude lists`,
    );
  }
  if (width < 2) {
    throw new RangeError(`Scores need numItems + 1 >= 2 columns, got ${width}`);
  }
  const allowed = new Uint8Array(rows * width).fill(1);
  const allowedCount = new Int32Array(rows);
  const targetIndex = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const target = batch.targets[r];
    const user = batch.users[r];
    if (!Number.isInteger(target) || target < 1 || target >= width) {
      throw new RangeError(
        `Row ${r} (user ${user}) has target ${target}, outside the item ids 1..${width - 1}`,
      );
    }
    const base = r * width;
    allowed[base] = 0;
    let count = width - 1;
    for (const e of batch.exclude[r]) {
      if (!Number.isInteger(e) || e < 0 || e >= width) {
        throw new RangeError(
          `Row ${r} (user ${user}) excludes item ${e}, outside the item ids 0..${width - 1}`,
        );
      }
      // The target is never masked: see rankOfTarget() for why.
      if (e !== 0 && e !== target && allowed[base + e] === 1) {
        allowed[base + e] = 0;
        count--;
      }
    }
    allowedCount[r] = count;
    targetIndex[r] = base + target;
  }
  return { rows, width, allowed, allowedCount, targetIndex };
}

/**
 * The tensors {@linkcode rankTensors} returns; the caller disposes them. (A type alias,
 * not an interface, so that `tf.tidy` accepts it as a tensor container.)
 */
export type RankTensors = {
  /** `[rows]` int32: 0-based pessimistic rank of each target. */
  ranks: tf.Tensor1D;
  /** `[rows]` int32: number of NaN scores in each row. */
  nans: tf.Tensor1D;
  /** `[rows, k]` int32 item ids, best first, when a top-k was asked for. */
  top?: tf.Tensor2D;
  /** `[rows, k]` their scores (-Infinity past the competing items), when asked for too. */
  topScores?: tf.Tensor2D;
};

/**
 * Ranks every row's target on the active backend. Call inside `tf.tidy`.
 *
 * Counting is exact on every backend: the comparisons are booleans summed as int32, never a
 * float sum (tfjs-backend-wasm's float `Sum` drifts on long rows). Intermediates are
 * disposed as soon as used, so besides the scores and the mask at most two `[rows, width]`
 * tensors live at once.
 */
export function rankTensors(
  scores: tf.Tensor2D,
  prep: PreparedBatch,
  k = 0,
  withScores = false,
): RankTensors {
  const { rows, width } = prep;
  const x = scores.dtype === "float32" ? scores : tf.cast(scores, "float32");
  const allowed = allowedTensor(prep, SPARSE_MASK_BACKENDS.has(tf.getBackend()));
  const targetIndex = tf.tensor1d(prep.targetIndex, "int32");
  let ranks: tf.Tensor1D;
  let nans: tf.Tensor1D;
  if (tf.getKernel(RANK_OF_TARGET_KERNEL, tf.getBackend()) !== undefined) {
    [ranks, nans] = tf.engine().runKernel(
      RANK_OF_TARGET_KERNEL,
      { scores: x, allowed, targetIndex },
    ) as tf.Tensor1D[];
  } else {
    [ranks, nans] = countAbove(x, allowed, targetIndex, rows, width);
  }

  let top: tf.Tensor2D | undefined;
  let topScores: tf.Tensor2D | undefined;
  if (k > 0) {
    const floor = tf.fill([rows, width], -Infinity);
    const masked = tf.where(allowed, x, floor);
    floor.dispose();
    const best = tf.topk(masked, Math.min(k, width));
    top = best.indices as tf.Tensor2D;
    if (withScores) topScores = best.values as tf.Tensor2D;
    else best.values.dispose();
    masked.dispose();
  }
  allowed.dispose();
  targetIndex.dispose();
  return { ranks, nans, top, ...(topScores ? { topScores } : {}) };
}

/**
 * Backends that get the mask's blocked entries and scatter them on the device. Measured on an NVIDIA H200 through Deno's WebGPU (`docs/performance.md`):
 * uploading Beauty's dense `[256, 12,102]` mask took ~0.4-0.5 s, about 10 times the batch's
 * scoring, while scattering its ~1,500 blocked entries took 14 ms. On wasm and cpu the
 * dense upload is a host copy (2 ms), cheaper than the scatter. Not webgl: its scatter loops
 * over every update for each output element and holds indices as floats.
 */
const SPARSE_MASK_BACKENDS = new Set(["webgpu"]);

/**
 * `[rows, width]` bool, true where an item competes: {@linkcode PreparedBatch.allowed}
 * uploaded as it is (`sparse` false), or built on the device from its blocked entries
 * (`sparse` true: only their indices are uploaded). The two are equal; which is faster
 * depends on the backend.
 */
export function allowedTensor(prep: PreparedBatch, sparse: boolean): tf.Tensor2D {
  const { rows, width, allowed } = prep;
  if (!sparse) return tf.tensor2d(allowed, [rows, width], "bool");
  // The blocked entries, from the dense mask (a host scan, far cheaper than its upload).
  let n = 0;
  for (let i = 0; i < allowed.length; i++) if (allowed[i] === 0) n++;
  const blocked = new Int32Array(n); // >= rows: column 0 of every row is blocked
  for (let i = 0, j = 0; i < allowed.length; i++) if (allowed[i] === 0) blocked[j++] = i;
  return tf.tidy(() => {
    const hits = tf.scatterND(
      tf.tensor2d(blocked, [n, 1], "int32"),
      tf.ones([n], "int32"),
      [rows * width],
    ); // [rows * width], 1 where blocked
    return tf.reshape(tf.equal(hits, 0), [rows, width]) as tf.Tensor2D;
  });
}

/**
 * Name of the optional kernel `(scores [R, W] float32, allowed [R, W] bool, targetIndex [R]
 * int32) -> (ranks [R] int32, nans [R] int32)` that {@linkcode rankTensors} uses where the
 * active backend has one (`backends/` registers it for cpu and wasm: on wasm, tfjs's
 * broadcasting `GreaterEqual` took ~0.3 s per batch of 256 x 12,102 scores).
 */
export const RANK_OF_TARGET_KERNEL = "SigmaRankOfTarget";

/** {@linkcode RANK_OF_TARGET_KERNEL}'s result from tfjs ops. */
function countAbove(
  x: tf.Tensor2D,
  allowed: tf.Tensor2D,
  targetIndex: tf.Tensor1D,
  rows: number,
  width: number,
): [tf.Tensor1D, tf.Tensor1D] {
  const targetScore = tf.reshape(
    tf.gather(tf.reshape(x, [rows * width]), targetIndex),
    [rows, 1],
  );

  const atLeast = tf.greaterEqual(x, targetScore);
  const competing = tf.logicalAnd(atLeast, allowed);
  atLeast.dispose();
  const competingInt = tf.cast(competing, "int32");
  competing.dispose();
  // The target is allowed and ties with itself, so it counts once: subtract it.
  const ranks = tf.sub(tf.sum(competingInt, 1), tf.scalar(1, "int32")) as tf.Tensor1D;
  competingInt.dispose();

  targetScore.dispose();
  const isNan = tf.cast(tf.isNaN(x), "int32");
  const nans = tf.sum(isNan, 1) as tf.Tensor1D;
  isNan.dispose();
  return [ranks, nans];
}

/** Results of {@linkcode readRanks}, on the host. */
export interface RankResult {
  /** 0-based rank per row. */
  ranks: Int32Array;
  /** Top item ids per row, best first, only items that compete; when asked for. */
  top?: Int32Array[];
}

/**
 * Reads back (and disposes) the tensors of {@linkcode rankTensors}.
 *
 * @throws {RangeError} A row holds NaN scores; the row and user are named.
 */
export async function readRanks(
  t: RankTensors,
  prep: PreparedBatch,
  batch: EvalBatch,
): Promise<RankResult> {
  try {
    const [ranks, nans, top] = await Promise.all([
      t.ranks.data() as Promise<Int32Array>,
      t.nans.data() as Promise<Int32Array>,
      t.top ? (t.top.data() as Promise<Int32Array>) : undefined,
    ]);
    for (let r = 0; r < prep.rows; r++) {
      if (nans[r] > 0) {
        throw new RangeError(
          `Scores of row ${r} (user ${batch.users[r]}, target ${batch.targets[r]}) ` +
            `hold ${nans[r]} NaN value(s)`,
        );
      }
    }
    const result: RankResult = { ranks: Int32Array.from(ranks) };
    if (top && t.top) {
      const k = t.top.shape[1];
      result.top = [];
      for (let r = 0; r < prep.rows; r++) {
        // topk fills a row with masked (-Infinity) items once the competing ones run out.
        const keep = Math.min(k, prep.allowedCount[r]);
        result.top.push(Int32Array.from(top.subarray(r * k, r * k + keep)));
      }
    }
    return result;
  } finally {
    tf.dispose([t.ranks, t.nans, ...(t.top ? [t.top] : [])]);
  }
}
