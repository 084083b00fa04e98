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
import { dropout, keepScale, keepThreshold } from "./dropout.ts";
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
/** The most linear layers of one input that {@linkcode fusedLinears} runs as one kernel. */
export const MAX_SHARED_LINEARS = 3;

/**
 * Name of the kernel `(x [M, in], w0 [in, o0], b0 [o0], ..., w{n-1}, b{n-1}) ->
 * (y_0 [M, o0], ..., y_{n-1})`, `y_i = x w_i + b_i`, for `n` layers (1 to
 * {@linkcode MAX_SHARED_LINEARS}); its gradient is {@linkcode linearsGradKernelName}'s.
 */
export const linearsKernelName = (n: number): string => `SigmaLinears${n}`;
/**
 * Name of the kernel `(x [M, in], w0, dy0 [M, o0], ..., w{n-1}, dy{n-1}) ->
 * (dx [M, in], dw_0..dw_{n-1}, db_0..db_{n-1})`: `dx = Σ dy_i w_iᵀ`, `dw_i = xᵀ dy_i`,
 * `db_i` the column sums of `dy_i`.
 */
export const linearsGradKernelName = (n: number): string => `SigmaLinearsGrad${n}`;

/**
 * An activation the linears kernels apply in their epilogue: `fused.ts`'s GELUs, or the
 * SiLU `x sigmoid(x)` (DiffuRec's step embedding).
 */
export type LinearActivationName = "gelu" | "geluTanh" | "silu";

/**
 * Kernel `(x [M, in], w0 [in, o], b0 [o]) -> (y [M, o], slope [M, o])`: one linear layer
 * with an activation (attrs as {@linkcode LinearsAttrs}, one layer): with `z = x w0 + b0`
 * and `m` the dropout mask (1 without), `y = act(z) m` and `slope = act'(z) m`, what the
 * gradient multiplies `dy` by. Its gradient runs {@linkcode linearsGradKernelName}`(1)`
 * with `slope0`.
 */
export const LINEAR_ACT_KERNEL = "SigmaLinearAct";

/** The attributes of the linears kernels. */
export interface LinearsAttrs {
  /**
   * Per layer, the inverted dropout applied to its output (`y_i = (x w_i + b_i) * mask`,
   * the mask of `dropout.ts` for the layer's seed; its gradient masks `dy_i` alike) as
   * `[seed, threshold, scale]` (u32, u32, float32: `DROPOUT_KERNEL`'s attributes), or
   * null for none.
   */
  dropouts: ([number, number, number] | null)[];
  /**
   * Per layer, the activation applied before the dropout, or null: `y_i = act(x w_i + b_i)`
   * (`LINEAR_ACT_KERNEL` only; the grad kernel then takes the layer's `slope${i}`).
   */
  activations: (LinearActivationName | null)[];
  /**
   * Per layer, whether the input `r${i}` (`[M, o_i]`) is added to its output last, after
   * the dropout: a residual connection, whose gradient is `dy_i`.
   */
  residuals: boolean[];
}

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
 * The most rows (`M`) {@linkcode fusedLinears} gives its kernels; more run the reference
 * path. Why: a weight-gradient tile of the backward program is one workgroup summing over
 * every row, and llvmpipe (the software adapter) stops a shader after 65,535 loop
 * iterations, which truncated that sum silently at about 39,000 rows with dropout; on a GPU
 * such a long serial sum also leaves most of it idle. Training pieces stay far below
 * (`--max-positions`, 2,048 by default).
 */
export const FUSED_LINEARS_MAX_ROWS = 16384;

/** Whether the active backend has the kernels of {@linkcode fusedLinears}. */
export function hasLinearsKernels(): boolean {
  const names: string[] = [LINEAR_ACT_KERNEL];
  for (let n = 1; n <= MAX_SHARED_LINEARS; n++) {
    names.push(linearsKernelName(n), linearsGradKernelName(n));
  }
  return hasKernels(...names);
}

let linearGradientsRegistered = false;

/**
 * tfjs gradients of the `SigmaLinears{n}` kernels: the backward kernel runs once, when
 * tfjs asks for the node's gradients, and each input's gradient function hands back its
 * part. (Run inside an input's function instead, the other parts would be made in that
 * function's tidy and freed before their turn.)
 */
function registerLinearGradients(): void {
  if (linearGradientsRegistered) return;
  linearGradientsRegistered = true;
  tf.registerGradient({
    kernelName: LINEAR_ACT_KERNEL,
    inputsToSave: ["x", "w0"],
    outputsToSave: [false, true], // slope
    gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[], attrs: tf.NamedAttrMap) => {
      // Only y is used downstream: slope's gradient (zeros tfjs makes) is ignored.
      const dyY = Array.isArray(dy) ? dy[0] : dy;
      const [x, w0, slope0] = saved;
      const out = tf.engine().runKernel(
        linearsGradKernelName(1),
        { x, w0, dy0: dyY, slope0 },
        attrs,
      ) as tf.Tensor[];
      const grads: Record<string, () => tf.Tensor> = {
        x: () => out[0],
        w0: () => out[1],
        b0: () => out[2],
      };
      // A residual's gradient is dy: a clone (no dispatch, shared data), owned apart.
      if ((attrs as unknown as LinearsAttrs).residuals[0]) grads.r0 = () => tf.clone(dyY);
      return grads;
    },
  });
  for (let n = 1; n <= MAX_SHARED_LINEARS; n++) {
    const ws = Array.from({ length: n }, (_, i) => `w${i}`);
    tf.registerGradient({
      kernelName: linearsKernelName(n),
      inputsToSave: ["x", ...ws],
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[], attrs: tf.NamedAttrMap) => {
        const dys = Array.isArray(dy) ? dy : [dy];
        const inputs: tf.NamedTensorMap = { x: saved[0] };
        for (let i = 0; i < n; i++) {
          inputs[`w${i}`] = saved[1 + i];
          inputs[`dy${i}`] = dys[i];
        }
        const out = tf.engine().runKernel(linearsGradKernelName(n), inputs, attrs) as tf.Tensor[];
        const grads: Record<string, () => tf.Tensor> = { x: () => out[0] };
        const { residuals } = attrs as unknown as LinearsAttrs;
        for (let i = 0; i < n; i++) {
          grads[`w${i}`] = () => out[1 + i];
          grads[`b${i}`] = () => out[1 + n + i];
          if (residuals[i]) grads[`r${i}`] = () => tf.clone(dys[i]);
        }
        return grads;
      },
    });
  }
}

/** One layer of {@linkcode fusedLinears}. */
export interface LinearLayer {
  /** The weight, `[in, out]`. */
  w: Tensor2D;
  /** The bias, `[out]`. */
  b: Tensor;
  /**
   * Inverted dropout of the layer's output (`dropout.ts`: the same mask on every backend);
   * none where absent, at rate 0 or with a null seed (inference).
   */
  dropout?: { rate: number; seed: number | null };
  /**
   * An activation before the dropout: its kernel's name, and the function the reference
   * path applies (`fused.ts`'s GELU of the same name).
   */
  activation?: { name: LinearActivationName; apply: (t: Tensor) => Tensor };
  /** Added to the output last, after the dropout (a residual connection), `[M, out]`. */
  residual?: Tensor2D;
}

/**
 * Linear layers of one input, `[x @ w_i + b_i]` for `x` `[M, in]`, each `w_i` `[in, o_i]`
 * and `b_i` `[o_i]`: an attention's query, key and value projections, or one layer. Where
 * the active backend has {@linkcode hasLinearsKernels} (webgpu), up to
 * {@linkcode MAX_SHARED_LINEARS} layers are one dispatch forward and one backward (the
 * input's gradient summed over the layers in the same dispatch), a layer's activation,
 * dropout and residual add included (in the product's epilogue forward; backward, `dy` is
 * multiplied by the saved slope or the recomputed mask as it is read).
 * Elsewhere each layer is {@linkcode fusedLinear} and `dropout`: the reference these
 * kernels are tested against, with the same mask.
 */
export function fusedLinears(x: Tensor2D, layers: LinearLayer[]): Tensor2D[] {
  if (x.rank !== 2) throw new RangeError(`fusedLinears needs x [M, in], got [${x.shape}]`);
  for (const { w, b, dropout: drop, residual } of layers) {
    if (residual && !tf.util.arraysEqual(residual.shape, [x.shape[0], w.shape[1]])) {
      throw new RangeError(
        `fusedLinears: a residual must be [${x.shape[0]}, ${w.shape[1]}], got [${residual.shape}]`,
      );
    }
    if (drop && !(drop.rate >= 0 && drop.rate < 1)) {
      throw new RangeError(`dropout rate must be in [0, 1), got ${drop.rate}`);
    }
    if (w.rank !== 2 || w.shape[0] !== x.shape[1] || b.size !== w.shape[1]) {
      throw new RangeError(
        `fusedLinears: x [${x.shape}] needs w [${
          x.shape[1]
        }, o] and b [o], got w [${w.shape}], b [${b.shape}]`,
      );
    }
  }
  const dropped = (layer: LinearLayer) =>
    layer.dropout && layer.dropout.rate > 0 && layer.dropout.seed !== null;
  const fused = x.dtype === "float32" && x.size > 0 && x.shape[0] <= FUSED_LINEARS_MAX_ROWS &&
    hasLinearsKernels();
  if (!fused) {
    return layers.map((layer) => {
      const linear = fusedLinear(x, layer.w, layer.b);
      const y = layer.activation ? layer.activation.apply(linear) as Tensor2D : linear;
      const kept = dropped(layer)
        ? dropout(y, layer.dropout!.rate, layer.dropout!.seed) as Tensor2D
        : y;
      return layer.residual ? tf.add(layer.residual, kept) as Tensor2D : kept;
    });
  }
  registerLinearGradients();
  const out: Tensor2D[] = [];
  // Layers without an activation go up to three to a kernel; one with, alone.
  const groups: LinearLayer[][] = [];
  for (const layer of layers) {
    const last = groups[groups.length - 1];
    const joins = last && !layer.activation && !last[0].activation &&
      last.length < MAX_SHARED_LINEARS;
    if (joins) last.push(layer);
    else groups.push([layer]);
  }
  for (const group of groups) {
    const inputs: tf.NamedTensorMap = { x };
    group.forEach(({ w, b, residual }, i) => {
      inputs[`w${i}`] = w;
      inputs[`b${i}`] = tf.reshape(b, [w.shape[1]]);
      if (residual) inputs[`r${i}`] = residual;
    });
    const attrs: LinearsAttrs = {
      dropouts: group.map((layer) => {
        if (!dropped(layer)) return null;
        const { rate, seed } = layer.dropout!;
        return [seed! >>> 0, keepThreshold(rate), keepScale(rate)];
      }),
      activations: group.map((layer) => layer.activation?.name ?? null),
      residuals: group.map((layer) => layer.residual !== undefined),
    };
    const activated = group[0].activation !== undefined;
    const ys = tf.engine().runKernel(
      activated ? LINEAR_ACT_KERNEL : linearsKernelName(group.length),
      inputs,
      attrs as unknown as tf.NamedAttrMap,
    );
    if (activated) {
      const [y, slope] = ys as Tensor2D[];
      slope.dispose(); // the gradient keeps its own reference
      out.push(y);
    } else out.push(...(Array.isArray(ys) ? ys : [ys]) as Tensor2D[]);
  }
  return out;
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
