/**
 * A gated, multi-layer GRU that runs k category-specific subsequences of one sequence in
 * a single batched pass (SIGMA's hard interests, SIGMA.md "Hard interests"). At step t
 * the state of category j moves only when the item at t belongs to j:
 * `h_t^j = m_t^j * GRU(h_{t-1}^j, v_t) + (1 - m_t^j) * h_{t-1}^j`, with `m` a (straight-
 * through) one-hot, so gradients reach the category assignment through `m`.
 *
 * The cell is PyTorch's: `r = sig(W_ir x + b_ir + W_hr h + b_hr)`,
 * `z = sig(W_iz x + b_iz + W_hz h + b_hz)`, `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`,
 * `h' = (1 - z) * n + z * h`. One set of weights serves every category.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { matmul } from "./layers.ts";
import type { ParamStore } from "./params.ts";

/** Creates the parameters of {@linkcode gatedCategoryGru}: `layers` GRU layers of width d. */
export function createGru(p: ParamStore, prefix: string, hidden: number, layers: number): void {
  for (let l = 0; l < layers; l++) {
    p.create(`${prefix}.l${l}.wi`, [hidden, 3 * hidden]); // [d, 3d]: r, z, n
    p.create(`${prefix}.l${l}.wh`, [hidden, 3 * hidden]);
    p.create(`${prefix}.l${l}.bi`, [3 * hidden], "zeros");
    p.create(`${prefix}.l${l}.bh`, [3 * hidden], "zeros");
  }
}

/** One GRU cell step: input projection `xi` `[M, 3d]` (bias included) and state `[M, d]`. */
function cell(p: ParamStore, name: string, xi: tf.Tensor2D, h: tf.Tensor2D): tf.Tensor2D {
  const hh = tf.add(matmul(h, p.get(`${name}.wh`) as tf.Tensor2D), p.get(`${name}.bh`)); // [M, 3d]
  const [xr, xz, xn] = tf.split(xi, 3, 1);
  const [hr, hz, hn] = tf.split(hh, 3, 1);
  const r = tf.sigmoid(tf.add(xr, hr));
  const z = tf.sigmoid(tf.add(xz, hz));
  const n = tf.tanh(tf.add(xn, tf.mul(r, hn)));
  return tf.add(tf.mul(tf.sub(1, z), n), tf.mul(z, h)) as tf.Tensor2D; // [M, d]
}

/**
 * Runs the gated GRU over `items` `[B, L, d]` for `k` categories at once.
 *
 * @param items Item embeddings `[B, L, d]` in time order (padding rows arbitrary).
 * @param gates Category membership `[B, L, k]`: 1 where the item at t belongs to category
 * j, else 0 (0 at padding, so padding never moves a state).
 * @param layers Number of stacked GRU layers; layer l+1 reads layer l's state of the
 * same category, gated by the same mask.
 * @returns The top layer's state after each step, `[B, L, k, d]` (zero before a
 * category's first item).
 */
export function gatedCategoryGru(
  p: ParamStore,
  prefix: string,
  items: tf.Tensor3D,
  gates: tf.Tensor3D,
  layers: number,
): tf.Tensor4D {
  const [batch, length, d] = items.shape;
  const k = gates.shape[2];
  const m = batch * k;
  // Layer 0's input projection is the same for every category: compute it once for all
  // steps, then broadcast over categories.
  const xi0 = tf.reshape(
    tf.add(
      matmul(
        tf.reshape(items, [batch * length, d]) as tf.Tensor2D,
        p.get(`${prefix}.l0.wi`) as tf.Tensor2D,
      ),
      p.get(`${prefix}.l0.bi`),
    ),
    [batch, length, 1, 3 * d],
  ); // [B, L, 1, 3d]
  let states: tf.Tensor2D[] = Array.from({ length: layers }, () => tf.zeros([m, d]) as tf.Tensor2D);
  const outputs: tf.Tensor[] = [];
  for (let t = 0; t < length; t++) {
    const gate = tf.reshape(tf.slice(gates, [0, t, 0], [-1, 1, -1]), [m, 1]); // [B*k, 1]
    const stepInput = tf.reshape(tf.slice(xi0, [0, t, 0, 0], [-1, 1, 1, -1]), [batch, 1, 3 * d]);
    let xi = tf.reshape(tf.tile(stepInput, [1, k, 1]), [m, 3 * d]) as tf.Tensor2D; // [B*k, 3d]
    const next: tf.Tensor2D[] = [];
    for (let l = 0; l < layers; l++) {
      const name = `${prefix}.l${l}`;
      if (l > 0) {
        xi = tf.add(
          matmul(next[l - 1], p.get(`${name}.wi`) as tf.Tensor2D),
          p.get(`${name}.bi`),
        ) as tf.Tensor2D; // [B*k, 3d]
      }
      const moved = cell(p, name, xi, states[l]);
      // h = h_prev + m * (GRU(h_prev) - h_prev): the state moves only where m = 1.
      next.push(tf.add(states[l], tf.mul(gate, tf.sub(moved, states[l]))) as tf.Tensor2D);
    }
    states = next;
    outputs.push(tf.reshape(states[layers - 1], [batch, k, d]));
  }
  return tf.stack(outputs, 1) as tf.Tensor4D; // [B, L, k, d]
}
