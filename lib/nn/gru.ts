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
import { matmul, withCustomGradient } from "./layers.ts";
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

/** One cell step's intermediates, as the backward pass needs them. */
interface CellStep {
  r: tf.Tensor2D;
  z: tf.Tensor2D;
  n: tf.Tensor2D;
  hn: tf.Tensor2D;
  /** The gated new state `h + m * (GRU(h) - h)`. */
  out: tf.Tensor2D;
  /** `GRU(h) - h`, the change the gate lets through. */
  change: tf.Tensor2D;
}

function cellStep(
  xi: tf.Tensor, // [B, 1, 3d] (broadcast over categories) or [B, k, 3d]
  h: tf.Tensor2D, // [B*k, d]
  wh: tf.Tensor2D,
  bh: tf.Tensor,
  gate: tf.Tensor2D, // [B*k, 1]
  batch: number,
  k: number,
): CellStep {
  const [m, d] = h.shape;
  const hh = tf.reshape(tf.add(matmul(h, wh), bh), [batch, k, 3 * d]); // [B, k, 3d]
  const [xr, xz, xn] = tf.split(xi, 3, 2);
  const [hr, hz, hn] = tf.split(hh, 3, 2);
  // Broadcasting the layer-0 input over categories instead of tiling it: tfjs-backend-wasm's
  // Tile is slow (~40 ms for [256, 4, 384]).
  const r3 = tf.sigmoid(tf.add(xr, hr)); // [B, k, d]
  const z3 = tf.sigmoid(tf.add(xz, hz));
  const n3 = tf.tanh(tf.add(xn, tf.mul(r3, hn)));
  const flat = (t: tf.Tensor) => tf.reshape(t, [m, d]) as tf.Tensor2D;
  const [r, z, n, hnFlat] = [flat(r3), flat(z3), flat(n3), flat(hn)];
  const moved = tf.add(tf.mul(tf.sub(1, z), n), tf.mul(z, h)); // GRU(h), [M, d]
  const change = tf.sub(moved, h) as tf.Tensor2D;
  const out = tf.add(h, tf.mul(gate, change)) as tf.Tensor2D;
  return { r, z, n, hn: hnFlat, out, change };
}

/**
 * Runs the gated GRU over `items` `[B, L, d]` for `k` categories at once, with a
 * hand-written backward pass (backpropagation through time) that keeps only each layer's
 * state after every step, `[L, B*k, d]` per layer, and recomputes the gates of a step when
 * it needs them: a taped loop would hold ~20 tensors of `[B*k, 3d]` per step and layer.
 * Equal to {@linkcode gatedCategoryGruReference}, values and gradients (tested).
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
  // Layer 0's input projection is the same for every category: one matmul for all steps,
  // outside the custom op so the tape differentiates it.
  const xi0 = tf.reshape(
    tf.add(
      matmul(
        tf.reshape(items, [batch * length, d]) as tf.Tensor2D,
        p.get(`${prefix}.l0.wi`) as tf.Tensor2D,
      ),
      p.get(`${prefix}.l0.bi`),
    ),
    [batch, length, 3 * d],
  ); // [B, L, 3d]
  // Weights, in order: wh0, bh0, then per layer l > 0: wh, bh, wi, bi.
  const weights: tf.Tensor[] = [];
  for (let l = 0; l < layers; l++) {
    weights.push(p.get(`${prefix}.l${l}.wh`), p.get(`${prefix}.l${l}.bh`));
    if (l > 0) weights.push(p.get(`${prefix}.l${l}.wi`), p.get(`${prefix}.l${l}.bi`));
  }
  const layerWeights = (w: tf.Tensor[], l: number) => {
    const at = l === 0 ? 0 : 2 + 4 * (l - 1);
    return {
      wh: w[at] as tf.Tensor2D,
      bh: w[at + 1],
      wi: l === 0 ? null : w[at + 2] as tf.Tensor2D,
      bi: l === 0 ? null : w[at + 3],
    };
  };
  // Time-major copies, so that taking step t is a contiguous slice.
  const xiT = tf.transpose(xi0, [1, 0, 2]); // [L, B, 3d]
  const gatesT = tf.reshape(tf.transpose(gates, [1, 0, 2]), [length, m, 1]); // [L, B*k, 1]
  // Step t's gate column [B*k, 1] and layer-0 input [B, 1, 3d] (broadcast over categories).
  const gateAt = (g: tf.Tensor, t: number) =>
    tf.reshape(tf.slice(g, [t, 0, 0], [1, -1, -1]), [m, 1]) as tf.Tensor2D;
  const inputAt = (x: tf.Tensor, t: number): tf.Tensor =>
    tf.reshape(tf.slice(x, [t, 0, 0], [1, -1, -1]), [batch, 1, 3 * d]);
  const upperInput = (below: tf.Tensor2D, wi: tf.Tensor2D, bi: tf.Tensor): tf.Tensor =>
    tf.reshape(tf.add(matmul(below, wi), bi), [batch, k, 3 * d]); // [B, k, 3d]

  const op = withCustomGradient(2 + weights.length, ([x, g, ...w], save) => {
    const zero = tf.zeros([m, d]) as tf.Tensor2D;
    const states: tf.Tensor2D[][] = Array.from({ length: layers }, () => []);
    for (let t = 0; t < length; t++) {
      const outs = tf.tidy(() => {
        const gate = gateAt(g, t);
        let xi = inputAt(x, t);
        const result: tf.Tensor2D[] = [];
        for (let l = 0; l < layers; l++) {
          const lw = layerWeights(w, l);
          if (l > 0) xi = upperInput(result[l - 1], lw.wi!, lw.bi!);
          const prev = t > 0 ? states[l][t - 1] : zero;
          result.push(cellStep(xi, prev, lw.wh, lw.bh, gate, batch, k).out);
        }
        return result;
      });
      outs.forEach((s, l) => states[l].push(s));
    }
    const stacked = states.map((list) => tf.stack(list) as tf.Tensor3D); // [L, B*k, d] each
    tf.dispose([...states.flat(), zero]);
    save([x, g, ...w, ...stacked]);
    const top = stacked[layers - 1];
    return {
      // [L, B*k, d] -> [L, B, k, d] -> [B, L, k, d]
      value: tf.transpose(tf.reshape(top, [length, batch, k, d]), [1, 0, 2, 3]),
      gradFunc: (dy, saved) => backward(dy, saved),
    };
  });

  function backward(dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] {
    const x = saved[0];
    const g = saved[1];
    const w = saved.slice(2, 2 + weights.length);
    const stacked = saved.slice(2 + weights.length) as tf.Tensor3D[]; // [L, B*k, d] each
    const stateAt = (l: number, t: number) =>
      tf.reshape(tf.slice(stacked[l], [t, 0, 0], [1, -1, -1]), [m, d]) as tf.Tensor2D;
    const dyT = tf.reshape(tf.transpose(dy, [1, 0, 2, 3]), [length, m, d]); // [L, B*k, d]
    // Running sums, replaced (and the old ones disposed) at every step.
    let carry: tf.Tensor2D[] = Array.from({ length: layers }, () => tf.zeros([m, d]));
    let dw: tf.Tensor[] = w.map((t) => tf.zerosLike(t));
    const dInputs: tf.Tensor[] = new Array(length); // [B, 3d] per step
    const dGates: tf.Tensor[] = new Array(length); // [B*k] per step
    for (let t = length - 1; t >= 0; t--) {
      const next = tf.tidy(() => {
        const gate = gateAt(g, t);
        const dwStep: tf.Tensor[] = w.map(() => null as unknown as tf.Tensor);
        const newCarry: tf.Tensor2D[] = new Array(layers);
        // Recompute this step's cells bottom-up from the saved states.
        const cells: CellStep[] = [];
        const prevs: tf.Tensor2D[] = [];
        for (let l = 0; l < layers; l++) {
          const lw = layerWeights(w, l);
          const xi = l === 0 ? inputAt(x, t) : upperInput(stateAt(l - 1, t), lw.wi!, lw.bi!);
          const prev = t > 0 ? stateAt(l, t - 1) : tf.zeros([m, d]) as tf.Tensor2D;
          prevs.push(prev);
          cells.push(cellStep(xi, prev, lw.wh, lw.bh, gate, batch, k));
        }
        let dGate = tf.zeros([m, 1]);
        let fromAbove: tf.Tensor2D | null = null; // gradient into layer l's output from l+1
        let dInput: tf.Tensor | null = null;
        for (let l = layers - 1; l >= 0; l--) {
          const lw = layerWeights(w, l);
          const { r, z, n, hn, change } = cells[l];
          let dOut = carry[l] as tf.Tensor;
          if (l === layers - 1) {
            dOut = tf.add(dOut, tf.reshape(tf.slice(dyT, [t, 0, 0], [1, -1, -1]), [m, d]));
          }
          if (fromAbove) dOut = tf.add(dOut, fromAbove);
          // out = h + gate * (GRU(h) - h)
          dGate = tf.add(dGate, tf.sum(tf.mul(dOut, change), 1, true));
          const dMoved = tf.mul(dOut, gate); // into GRU(h)
          // GRU(h) = (1 - z) n + z h
          const dn = tf.mul(dMoved, tf.sub(1, z));
          const dz = tf.mul(dMoved, tf.sub(prevs[l], n));
          const dnPre = tf.mul(dn, tf.sub(1, tf.square(n))); // through tanh
          const dr = tf.mul(dnPre, hn);
          const dhn = tf.mul(dnPre, r);
          const drPre = tf.mul(dr, tf.mul(r, tf.sub(1, r))); // through sigmoid
          const dzPre = tf.mul(dz, tf.mul(z, tf.sub(1, z)));
          const dhh = tf.concat([drPre, dzPre, dhn], 1) as tf.Tensor2D; // [M, 3d]
          const dxi = tf.concat([drPre, dzPre, dnPre], 1) as tf.Tensor2D; // [M, 3d]
          // Into the previous state: the direct path (1 - gate) + gate * z, and through hh.
          const direct = tf.mul(dOut, tf.add(tf.sub(1, gate), tf.mul(gate, z)));
          newCarry[l] = tf.add(direct, matmul(dhh, tf.transpose(lw.wh))) as tf.Tensor2D;
          const at = l === 0 ? 0 : 2 + 4 * (l - 1);
          dwStep[at] = matmul(tf.transpose(prevs[l]), dhh); // d wh
          dwStep[at + 1] = tf.sum(dhh, 0); // d bh
          if (l > 0) {
            const below = stateAt(l - 1, t);
            dwStep[at + 2] = matmul(tf.transpose(below), dxi); // d wi
            dwStep[at + 3] = tf.sum(dxi, 0); // d bi
            fromAbove = matmul(dxi, tf.transpose(lw.wi!));
          } else {
            dInput = tf.sum(tf.reshape(dxi, [batch, k, 3 * d]), 1); // [B, 3d]
          }
        }
        const summed = dw.map((acc, i) => tf.add(acc, dwStep[i]));
        return { carry: newCarry, dw: summed, dInput: dInput!, dGate: tf.reshape(dGate, [m]) };
      });
      tf.dispose([...carry, ...dw]);
      carry = next.carry;
      dw = next.dw;
      dInputs[t] = next.dInput;
      dGates[t] = next.dGate;
    }
    const dx = tf.stack(dInputs); // [L, B, 3d]
    const dg = tf.reshape(tf.stack(dGates), [length, m, 1]); // [L, B*k, 1]
    tf.dispose([...carry, ...dInputs, ...dGates, dyT]);
    return [dx, dg, ...dw];
  }

  return op(xiT, gatesT, ...weights) as tf.Tensor4D; // [B, L, k, d]
}

/**
 * Runs the gated GRU over `items` `[B, L, d]` for `k` categories at once, as plain taped
 * tfjs ops. Kept as the reference that tests compare {@linkcode gatedCategoryGru} with: its
 * tape holds ~20 tensors of `[B*k, 3d]` per step and layer, gigabytes at length 100.
 *
 * @param items Item embeddings `[B, L, d]` in time order (padding rows arbitrary).
 * @param gates Category membership `[B, L, k]`: 1 where the item at t belongs to category
 * j, else 0 (0 at padding, so padding never moves a state).
 * @param layers Number of stacked GRU layers; layer l+1 reads layer l's state of the
 * same category, gated by the same mask.
 * @returns The top layer's state after each step, `[B, L, k, d]` (zero before a
 * category's first item).
 */
export function gatedCategoryGruReference(
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
