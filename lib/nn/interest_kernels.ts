/**
 * Two element-wise steps of the max-over-interests softmax (paper Eq. 9) as tfjs kernels
 * with composite fallbacks.
 *
 * Why kernels: written with tfjs ops, the max over k interests of `[k, M]` logits and its
 * gradient routing take a transpose and two reductions (or k slices and 3k binary ops),
 * each a full pass over millions of values, single-threaded on tfjs-backend-wasm. As one
 * pass each they cost a fraction of that. `backends/` registers JavaScript
 * implementations under these names for the cpu and wasm backends (reading and writing
 * the backends' memory directly); where none is registered (webgpu), the same results
 * come from tfjs ops. Tests check that both paths agree.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor } from "./tensor_types.ts";

/** Kernel `x [k, M] -> (best [M], winner [M] int32)`: max over rows, first row on ties. */
export const MAX_OVER_INTERESTS = "SigmaMaxOverInterests";
/** Kernel `(g [M], winner [M] int32; k) -> [k, M]`: g in row winner[i], zero elsewhere. */
export const ROUTE_TO_INTERESTS = "SigmaRouteToInterests";

function hasKernel(name: string): boolean {
  return tf.getKernel(name, tf.getBackend()) !== undefined;
}

/**
 * The max over the rows of `x` `[k, M]` and the index of the first row reaching it:
 * `best [M]` float32 and `winner [M]` int32.
 */
export function maxOverInterests(x: Tensor): { best: Tensor; winner: Tensor } {
  if (x.rank !== 2) throw new RangeError(`maxOverInterests expects [k, M], got [${x.shape}]`);
  if (hasKernel(MAX_OVER_INTERESTS)) {
    const [best, winner] = tf.engine().runKernel(MAX_OVER_INTERESTS, { x }) as Tensor[];
    return { best, winner };
  }
  // Element-wise over rows: a reduction over a [M, k] transpose would need a dispatch
  // of M workgroups on webgpu, beyond its 65,535 limit for M in the millions.
  return tf.tidy(() => {
    const [k, m] = x.shape;
    let best: Tensor = tf.reshape(tf.slice(x, [0, 0], [1, m]), [m]);
    let winner: Tensor = tf.zeros([m], "int32");
    for (let j = 1; j < k; j++) {
      const row = tf.reshape(tf.slice(x, [j, 0], [1, m]), [m]);
      const better = tf.greater(row, best); // strict: the first row keeps ties
      winner = tf.where(better, tf.fill([m], j, "int32"), winner);
      best = tf.maximum(best, row);
    }
    return { best, winner };
  });
}

/**
 * `[k, M]` holding `g[i]` in row `winner[i]` of column i and zero elsewhere: the gradient
 * of {@linkcode maxOverInterests}'s `best` routed back to the rows of `x`.
 */
export function routeToInterests(g: Tensor, winner: Tensor, k: number): Tensor {
  if (g.rank !== 1 || winner.rank !== 1 || g.size !== winner.size) {
    throw new RangeError(
      `routeToInterests expects g [M] and winner [M], got [${g.shape}] and [${winner.shape}]`,
    );
  }
  if (hasKernel(ROUTE_TO_INTERESTS)) {
    return tf.engine().runKernel(ROUTE_TO_INTERESTS, { g, winner }, { k }) as Tensor;
  }
  return tf.tidy(() => {
    const rows: Tensor[] = [];
    for (let j = 0; j < k; j++) {
      rows.push(tf.where(tf.equal(winner, j), g, tf.zerosLike(g)));
    }
    return tf.stack(rows); // [k, M]
  });
}
