/**
 * Fused ops of the training step's linear layers and full-softmax loss (issue 33): tfjs
 * kernels under the names below, registered for the webgpu backend by
 * `backends/_webgpu_ops.ts`, each with the composed tfjs ops as its reference.
 *
 * Why: tfjs-backend-webgpu runs one GPU dispatch per op, and a dispatch's fixed cost is
 * most of a small op's time. tfjs's bias gradient of a fused matmul is a Transpose and a
 * Reduce (its Sum transposes the reduced axis last first), two dispatches per linear layer;
 * {@linkcode COLUMN_SUM_KERNEL} is one. A full softmax's loss over one chunk of logits was
 * softmax, two maxima, a log, a slice, a gather and subtractions forward, and a dozen ops
 * backward; {@linkcode SOFTMAX_XENT_KERNEL} and {@linkcode SOFTMAX_XENT_GRAD_KERNEL} are one
 * dispatch each (`lib/nn/item_losses.ts` uses them). Where the active backend has no such
 * kernel (cpu, wasm), callers run the ops they always ran, so results there do not change.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor, Tensor1D, Tensor2D } from "./tensor_types.ts";

/** Kernel `x [R, C] -> [C]`: the sum of each column (a bias gradient), in a fixed order. */
export const COLUMN_SUM_KERNEL = "SigmaColumnSum";
/**
 * Kernel `(logits [c, M], targets [T] int32; start, first) -> (prob [c, M], loss [c])`:
 * per row `i`, the softmax over columns `first..M-1` (columns before `first` are left out
 * and get probability 0) and the cross-entropy `logsumexp - logits[i, targets[start + i]]`.
 */
export const SOFTMAX_XENT_KERNEL = "SigmaSoftmaxCrossEntropy";
/**
 * Kernel `(prob [c, M], targets [T] int32, dy [T]; start) -> g [c, M]`: the gradient of
 * {@linkcode SOFTMAX_XENT_KERNEL}'s loss by the logits, `(prob - onehot(target)) dy` per
 * row (`targets[start + i]`, `dy[start + i]` for row `i`).
 */
export const SOFTMAX_XENT_GRAD_KERNEL = "SigmaSoftmaxCrossEntropyGrad";
/**
 * Kernel `(dy [M, d], ids [M] int32; rows) -> [rows, d]`: row `r` of the result is the
 * sum of the rows `m` of `dy` with `ids[m] = r`, in increasing `m`, and 0 where no id is
 * `r` (ids outside `0..rows-1` are ignored): the gradient of an embedding lookup, in one
 * dispatch instead of tfjs's zero fill and ScatterNd.
 */
export const EMBEDDING_GRAD_KERNEL = "SigmaEmbeddingGrad";

function hasKernels(...names: string[]): boolean {
  const backend = tf.getBackend();
  return names.every((name) => tf.getKernel(name, backend) !== undefined);
}

/** Whether the active backend has {@linkcode COLUMN_SUM_KERNEL}. */
export function hasColumnSumKernel(): boolean {
  return hasKernels(COLUMN_SUM_KERNEL);
}

/** Whether the active backend has both softmax cross-entropy kernels. */
export function hasSoftmaxCrossEntropyKernels(): boolean {
  return hasKernels(SOFTMAX_XENT_KERNEL, SOFTMAX_XENT_GRAD_KERNEL);
}

/**
 * Column sums `[C]` of `x` `[R, C]`: one dispatch where the active backend has
 * {@linkcode COLUMN_SUM_KERNEL}, `tf.sum(x, 0)` elsewhere (and for an empty `x`).
 */
export function columnSum(x: Tensor2D): Tensor1D {
  if (x.rank !== 2) throw new RangeError(`columnSum needs [R, C], got [${x.shape}]`);
  if (x.size === 0 || x.dtype !== "float32" || !hasColumnSumKernel()) {
    return tf.sum(x, 0) as Tensor1D;
  }
  return tf.engine().runKernel(COLUMN_SUM_KERNEL, { x }) as Tensor1D;
}

/**
 * `x @ w + b` for `x` `[M, in]`, `w` `[in, out]`, `b` `[out]`, by tfjs's fused matmul
 * (the bias added in the product's own dispatch). Where the active backend has
 * {@linkcode COLUMN_SUM_KERNEL} its gradient is written here: `dx = dy wᵀ`, `dw = xᵀ dy`
 * (matmuls with transpose flags, as tfjs's own gradient) and `db` one column sum, 3
 * dispatches instead of tfjs's 4 (its bias gradient is a Transpose and a Reduce). Elsewhere
 * it is `tf.fused.matMul` with tfjs's gradient.
 */
export function fusedLinear(x: Tensor2D, w: Tensor2D, b: Tensor): Tensor2D {
  if (!hasColumnSumKernel() || x.dtype !== "float32") {
    return tf.fused.matMul({ a: x, b: w, bias: b }) as Tensor2D;
  }
  const f = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const [xt, wt, bt, save] = args as [Tensor2D, Tensor2D, Tensor, tf.GradSaveFunc];
    save([xt, wt]);
    return {
      value: tf.fused.matMul({ a: xt, b: wt, bias: bt }), // [M, out]
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [xs, ws] = saved as Tensor2D[];
        const g = dy as Tensor2D; // [M, out]
        return [
          tf.matMul(g, ws, false, true), // [M, in]
          tf.matMul(xs, g, true, false), // [in, out]
          tf.reshape(columnSum(g), bt.shape), // [out]
        ];
      },
    };
  });
  return f(x, w, b) as Tensor2D;
}

/**
 * The softmax over columns `first..M-1` of each row of `logits` `[c, M]` (0 in the columns
 * before) and each row's cross-entropy against column `targets[start + i]`: one dispatch,
 * {@linkcode SOFTMAX_XENT_KERNEL}. Only where {@linkcode hasSoftmaxCrossEntropyKernels}.
 *
 * @returns `[prob [c, M], loss [c]]`.
 */
export function softmaxCrossEntropyRows(
  logits: Tensor2D,
  targets: Tensor1D,
  start: number,
  first: number,
): [Tensor2D, Tensor1D] {
  const [rows, cols] = logits.shape;
  if (!(first >= 0 && first < cols) || start < 0 || start + rows > targets.size) {
    throw new RangeError(
      `softmaxCrossEntropyRows: rows ${start}..${start + rows} of ${targets.size} targets, ` +
        `first column ${first} of ${cols}`,
    );
  }
  return tf.engine().runKernel(
    SOFTMAX_XENT_KERNEL,
    { logits, targets },
    { start, first },
  ) as unknown as [Tensor2D, Tensor1D];
}

/**
 * The gradient `(prob - onehot(targets[start + i])) dy[start + i]` `[c, M]` of
 * {@linkcode softmaxCrossEntropyRows}'s loss by the logits, from its probabilities: one
 * dispatch, {@linkcode SOFTMAX_XENT_GRAD_KERNEL}.
 */
export function softmaxCrossEntropyRowsGrad(
  prob: Tensor2D,
  targets: Tensor1D,
  dy: Tensor1D,
  start: number,
): Tensor2D {
  return tf.engine().runKernel(
    SOFTMAX_XENT_GRAD_KERNEL,
    { prob, targets, dy },
    { start },
  ) as Tensor2D;
}

/**
 * The gradient `[rows, d]` of an embedding lookup of `ids` (int32, any shape, `M`
 * elements) from the gradient `dy` `[M, d]` of the looked-up rows: row `r` sums the rows of
 * `dy` whose id is `r`. One dispatch where the active backend has
 * {@linkcode EMBEDDING_GRAD_KERNEL}; elsewhere `tf.scatterND`, as `embeddingLookup` always
 * did.
 */
export function embeddingGradient(ids: Tensor, dy: Tensor, rows: number, d: number): Tensor2D {
  if (dy.dtype !== "float32" || dy.size === 0 || !hasKernels(EMBEDDING_GRAD_KERNEL)) {
    return tf.scatterND(tf.reshape(ids, [-1, 1]), dy, [rows, d]) as Tensor2D; // [rows, d]
  }
  return tf.engine().runKernel(
    EMBEDDING_GRAD_KERNEL,
    { dy: tf.reshape(dy, [-1, d]), ids: tf.reshape(ids, [-1]) },
    { rows },
  ) as Tensor2D;
}
