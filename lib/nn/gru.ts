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
 * On a backend with the kernels {@linkcode GRU_FORWARD_KERNEL} and
 * {@linkcode GRU_BACKWARD_KERNEL} each layer's recurrence over all positions is one kernel
 * call forward and one backward, instead of a dozen ops per position and layer forward and
 * two dozen backward, each with tfjs's fixed cost per op: webgpu (`backends/_webgpu_gru.ts`,
 * one dispatch) and wasm where bmm.wasm runs on tfjs's threaded build
 * (`backends/_wasm_gru.ts`). Elsewhere (cpu, wasm's single-threaded build) the op sequence
 * below runs: the reference the kernels are tested against.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { matmul, withCustomGradient } from "./layers.ts";
import type { ParamStore } from "./params.ts";

/**
 * Kernel `(xi [B, L, kx, 3d], gates [B, L, k], wh [d, 3d], bh [3d]) -> (states
 * [B, L, k, d], prev [B, L, k, d], acts [B, L, k, 4d])`: one layer's gated recurrence over
 * all L positions, from the zero state. `xi` is the layer's input projection with its bias
 * (kx = 1: the same for every category, layer 0; kx = k: per category, higher layers);
 * `prev` is the state before each step and `acts` the step's `r, z, n` and `W_hn h + b_hn`,
 * what {@linkcode GRU_BACKWARD_KERNEL} needs.
 */
export const GRU_FORWARD_KERNEL = "SigmaGatedGru";
/**
 * Kernel `(dy [B, L, k, d], prev, acts, gates, wh) -> (dhh [B, L, k, 3d], dxi [B, L, k, 3d],
 * dgate [B, L, k])`: backpropagation through time of one layer of
 * {@linkcode GRU_FORWARD_KERNEL}, from `dy`, the gradient into its states from outside
 * the recurrence. `dhh` is the gradient into `W_h h + b_h`, `dxi` into `xi`, `dgate` into
 * the gates (this layer's share).
 */
export const GRU_BACKWARD_KERNEL = "SigmaGatedGruGrad";
/**
 * The widest state the kernels take; wider ones run the composed ops. The backward
 * program keeps `3d` floats of a row in workgroup memory (16 KiB by WebGPU's default).
 */
export const FUSED_GRU_MAX_WIDTH = 1024;

/** The sizes of one call of the GRU kernels, from its inputs' shapes. */
export interface GruKernelSizes {
  batch: number; // B
  steps: number; // L
  k: number; // categories
  d: number; // state width
  xiK: number; // the input's categories: 1 (broadcast) or k
  rows: number; // B*k state rows
}

/**
 * Checks the shapes of a {@linkcode GRU_FORWARD_KERNEL} call (`xiOrDy` is `xi`, `xiWidth`
 * 3) or a {@linkcode GRU_BACKWARD_KERNEL} call (`dy`, 1) against `gates` and `wh`: what
 * every backend's kernel does first.
 *
 * @throws {RangeError} naming the shape that does not fit.
 */
export function gruKernelSizes(
  xiOrDy: readonly number[],
  gates: readonly number[],
  wh: readonly number[],
  xiWidth: number,
): GruKernelSizes {
  if (gates.length !== 3) {
    throw new RangeError(`gated GRU: gates must be [B, L, k], got [${gates}]`);
  }
  const [batch, steps, k] = gates;
  const d = wh[0];
  if (wh.length !== 2 || wh[1] !== 3 * d) {
    throw new RangeError(`gated GRU: wh must be [d, 3d], got [${wh}]`);
  }
  if (!(d <= FUSED_GRU_MAX_WIDTH)) {
    throw new RangeError(`gated GRU: width up to ${FUSED_GRU_MAX_WIDTH}, got ${d}`);
  }
  const size = xiOrDy.reduce((a, b) => a * b, 1);
  const xiK = size / (batch * steps * xiWidth * d);
  if (xiK !== 1 && xiK !== k) {
    throw new RangeError(`gated GRU: input [${xiOrDy}] does not fit gates [${gates}] and d ${d}`);
  }
  return { batch, steps, k, d, xiK, rows: batch * k };
}

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

/** The sizes of one gated-GRU pass. */
interface GruShape {
  batch: number; // B
  length: number; // L
  k: number; // categories
  d: number; // state width
  m: number; // B*k: one state row per (sequence, category)
}

/** One layer's weights; `wi` and `bi` are null for layer 0, whose input projection is outside. */
interface LayerWeights {
  wh: tf.Tensor2D; // [d, 3d]
  bh: tf.Tensor; // [3d]
  wi: tf.Tensor2D | null; // [d, 3d]
  bi: tf.Tensor | null; // [3d]
}

/** Where layer l's weights start in the op's flat list: wh0, bh0, then wh, bh, wi, bi per l > 0. */
function weightIndex(l: number): number {
  return l === 0 ? 0 : 2 + 4 * (l - 1);
}

/** The op's flat weight list, in {@linkcode weightIndex}'s order. */
function flatWeights(p: ParamStore, prefix: string, layers: number): tf.Tensor[] {
  const weights: tf.Tensor[] = [];
  for (let l = 0; l < layers; l++) {
    weights.push(p.get(`${prefix}.l${l}.wh`), p.get(`${prefix}.l${l}.bh`));
    if (l > 0) weights.push(p.get(`${prefix}.l${l}.wi`), p.get(`${prefix}.l${l}.bi`));
  }
  return weights;
}

function layerWeights(w: tf.Tensor[], l: number): LayerWeights {
  const at = weightIndex(l);
  return {
    wh: w[at] as tf.Tensor2D,
    bh: w[at + 1],
    wi: l === 0 ? null : w[at + 2] as tf.Tensor2D,
    bi: l === 0 ? null : w[at + 3],
  };
}

/** Step t's gate column `[B*k, 1]` of the time-major gates `[L, B*k, 1]`. */
function gateAt(g: tf.Tensor, t: number, s: GruShape): tf.Tensor2D {
  return tf.reshape(tf.slice(g, [t, 0, 0], [1, -1, -1]), [s.m, 1]) as tf.Tensor2D;
}

/**
 * Layer l's input projection at step t, bias included: layer 0's from the time-major
 * `[L, B, 3d]` items as `[B, 1, 3d]` (broadcast over categories), a higher layer's from the
 * state of the layer below `[B*k, d]` as `[B, k, 3d]`.
 */
function layerInput(
  x: tf.Tensor,
  t: number,
  lw: LayerWeights,
  below: tf.Tensor2D | null,
  s: GruShape,
): tf.Tensor {
  if (below === null) {
    return tf.reshape(tf.slice(x, [t, 0, 0], [1, -1, -1]), [s.batch, 1, 3 * s.d]);
  }
  return tf.reshape(tf.add(matmul(below, lw.wi!), lw.bi!), [s.batch, s.k, 3 * s.d]);
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
  lw: LayerWeights,
  gate: tf.Tensor2D, // [B*k, 1]
  s: GruShape,
): CellStep {
  const { m, d } = s;
  const hh = tf.reshape(tf.add(matmul(h, lw.wh), lw.bh), [s.batch, s.k, 3 * d]); // [B, k, 3d]
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

/** The gradients of one gated cell step, from the gradient `dOut` `[B*k, d]` of its output. */
interface CellGradients {
  dGate: tf.Tensor; // [B*k, 1]
  dPrev: tf.Tensor2D; // [B*k, d]: into the previous state
  dhh: tf.Tensor2D; // [B*k, 3d]: into the state projection W_h h + b_h
  dxi: tf.Tensor2D; // [B*k, 3d]: into the input projection W_i x + b_i
}

function cellBackward(
  dOut: tf.Tensor,
  cell: CellStep,
  prev: tf.Tensor2D,
  gate: tf.Tensor2D,
  wh: tf.Tensor2D,
): CellGradients {
  const { r, z, n, hn, change } = cell;
  // out = h + gate * (GRU(h) - h)
  const dGate = tf.sum(tf.mul(dOut, change), 1, true);
  const dMoved = tf.mul(dOut, gate); // into GRU(h)
  // GRU(h) = (1 - z) n + z h
  const dn = tf.mul(dMoved, tf.sub(1, z));
  const dz = tf.mul(dMoved, tf.sub(prev, n));
  const dnPre = tf.mul(dn, tf.sub(1, tf.square(n))); // through tanh
  const dr = tf.mul(dnPre, hn);
  const dhn = tf.mul(dnPre, r);
  const drPre = tf.mul(dr, tf.mul(r, tf.sub(1, r))); // through sigmoid
  const dzPre = tf.mul(dz, tf.mul(z, tf.sub(1, z)));
  const dhh = tf.concat([drPre, dzPre, dhn], 1) as tf.Tensor2D;
  const dxi = tf.concat([drPre, dzPre, dnPre], 1) as tf.Tensor2D;
  // Into the previous state: the direct path (1 - gate) + gate * z, and through hh.
  const direct = tf.mul(dOut, tf.add(tf.sub(1, gate), tf.mul(gate, z)));
  const dPrev = tf.add(direct, matmul(dhh, tf.transpose(wh))) as tf.Tensor2D;
  return { dGate, dPrev, dhh, dxi };
}

/** Every layer's state after every step, `[L, B*k, d]` per layer (the forward pass). */
function forwardStates(
  x: tf.Tensor, // [L, B, 3d]
  g: tf.Tensor, // [L, B*k, 1]
  w: tf.Tensor[],
  layers: number,
  s: GruShape,
): tf.Tensor3D[] {
  const zero = tf.zeros([s.m, s.d]) as tf.Tensor2D;
  const states: tf.Tensor2D[][] = Array.from({ length: layers }, () => []);
  for (let t = 0; t < s.length; t++) {
    const outs = tf.tidy(() => {
      const gate = gateAt(g, t, s);
      const result: tf.Tensor2D[] = [];
      for (let l = 0; l < layers; l++) {
        const lw = layerWeights(w, l);
        const xi = layerInput(x, t, lw, l === 0 ? null : result[l - 1], s);
        const prev = t > 0 ? states[l][t - 1] : zero;
        result.push(cellStep(xi, prev, lw, gate, s).out);
      }
      return result;
    });
    outs.forEach((state, l) => states[l].push(state));
  }
  const stacked = states.map((list) => tf.stack(list) as tf.Tensor3D);
  tf.dispose([...states.flat(), zero]);
  return stacked;
}

/** What one step of the backward pass hands to the step before it. */
interface BackwardStep {
  carry: tf.Tensor2D[]; // per layer [B*k, d]: the gradient into that layer's state at t - 1
  dw: tf.Tensor[]; // this step's weight gradients, in the op's weight order
  dInput: tf.Tensor; // [B, 3d]: into layer 0's input projection at t
  dGate: tf.Tensor; // [B*k]: into the gates at t
}

/**
 * Step t of backpropagation through time: recomputes the step's cells bottom-up from the
 * saved states, then takes the gradients top-down.
 */
function backwardStep(
  t: number,
  saved: { x: tf.Tensor; g: tf.Tensor; w: tf.Tensor[]; stacked: tf.Tensor3D[] },
  dyT: tf.Tensor, // [L, B*k, d]
  carry: tf.Tensor2D[],
  s: GruShape,
): BackwardStep {
  const { x, g, w, stacked } = saved;
  const layers = stacked.length;
  const stateAt = (l: number, step: number) =>
    tf.reshape(tf.slice(stacked[l], [step, 0, 0], [1, -1, -1]), [s.m, s.d]) as tf.Tensor2D;
  const gate = gateAt(g, t, s);
  const cells: CellStep[] = [];
  const prevs: tf.Tensor2D[] = []; // each layer's state at t - 1
  const belows: (tf.Tensor2D | null)[] = []; // the state at t of the layer below (its input)
  for (let l = 0; l < layers; l++) {
    const lw = layerWeights(w, l);
    belows.push(l === 0 ? null : stateAt(l - 1, t));
    prevs.push(t > 0 ? stateAt(l, t - 1) : tf.zeros([s.m, s.d]) as tf.Tensor2D);
    cells.push(cellStep(layerInput(x, t, lw, belows[l], s), prevs[l], lw, gate, s));
  }
  const dw: tf.Tensor[] = new Array(w.length);
  const newCarry: tf.Tensor2D[] = new Array(layers);
  let dGate = tf.zeros([s.m, 1]);
  let fromAbove: tf.Tensor2D | null = null; // gradient into layer l's output from layer l+1
  let dInput: tf.Tensor | null = null;
  for (let l = layers - 1; l >= 0; l--) {
    const lw = layerWeights(w, l);
    let dOut: tf.Tensor = carry[l];
    if (l === layers - 1) {
      dOut = tf.add(dOut, tf.reshape(tf.slice(dyT, [t, 0, 0], [1, -1, -1]), [s.m, s.d]));
    }
    if (fromAbove) dOut = tf.add(dOut, fromAbove);
    const grads = cellBackward(dOut, cells[l], prevs[l], gate, lw.wh);
    dGate = tf.add(dGate, grads.dGate);
    newCarry[l] = grads.dPrev;
    const at = weightIndex(l);
    dw[at] = matmul(tf.transpose(prevs[l]), grads.dhh); // d wh
    dw[at + 1] = tf.sum(grads.dhh, 0); // d bh
    if (l > 0) {
      dw[at + 2] = matmul(tf.transpose(belows[l]!), grads.dxi); // d wi
      dw[at + 3] = tf.sum(grads.dxi, 0); // d bi
      fromAbove = matmul(grads.dxi, tf.transpose(lw.wi!));
    } else {
      dInput = tf.sum(tf.reshape(grads.dxi, [s.batch, s.k, 3 * s.d]), 1); // [B, 3d]
    }
  }
  return { carry: newCarry, dw, dInput: dInput!, dGate: tf.reshape(dGate, [s.m]) };
}

/**
 * The op's gradients `[dx, dg, ...dw]` from the output's `dy` `[B, L, k, d]` and the saved
 * `[x, g, ...w, ...stacked]`: running sums over the steps, replaced (and the old ones
 * disposed) at every step, so memory stays at one step's tensors.
 */
function backward(dy: tf.Tensor, saved: tf.Tensor[], layers: number, s: GruShape): tf.Tensor[] {
  const weightCount = saved.length - 2 - layers;
  const inputs = {
    x: saved[0],
    g: saved[1],
    w: saved.slice(2, 2 + weightCount),
    stacked: saved.slice(2 + weightCount) as tf.Tensor3D[],
  };
  const dyT = tf.reshape(tf.transpose(dy, [1, 0, 2, 3]), [s.length, s.m, s.d]); // [L, B*k, d]
  let carry: tf.Tensor2D[] = Array.from({ length: layers }, () => tf.zeros([s.m, s.d]));
  let dw: tf.Tensor[] = inputs.w.map((t) => tf.zerosLike(t));
  const dInputs: tf.Tensor[] = new Array(s.length); // [B, 3d] per step
  const dGates: tf.Tensor[] = new Array(s.length); // [B*k] per step
  for (let t = s.length - 1; t >= 0; t--) {
    const next = tf.tidy(() => {
      const step = backwardStep(t, inputs, dyT, carry, s);
      return { ...step, dw: dw.map((acc, i) => tf.add(acc, step.dw[i])) };
    });
    tf.dispose([...carry, ...dw]);
    carry = next.carry;
    dw = next.dw;
    dInputs[t] = next.dInput;
    dGates[t] = next.dGate;
  }
  const dx = tf.stack(dInputs); // [L, B, 3d]
  const dg = tf.reshape(tf.stack(dGates), [s.length, s.m, 1]); // [L, B*k, 1]
  tf.dispose([...carry, ...dInputs, ...dGates, dyT]);
  return [dx, dg, ...dw];
}

/**
 * Runs the gated GRU over `items` `[B, L, d]` for `k` categories at once, with a
 * hand-written backward pass (backpropagation through time) that keeps only each layer's
 * state after every step, `[L, B*k, d]` per layer, and recomputes the gates of a step when
 * it needs them: a taped loop would hold ~20 tensors of `[B*k, 3d]` per step and layer.
 * Equal to {@linkcode gatedCategoryGruReference}, values and gradients (tested). Where the
 * active backend has the GRU kernels (webgpu, threaded wasm) and the state is at most
 * {@linkcode FUSED_GRU_MAX_WIDTH} wide, each layer runs as one kernel call forward and one
 * backward instead (`tests/gru_fused_test.ts` compares the two paths).
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
  if (fusedGruApplies(items, gates)) return fusedGatedCategoryGru(p, prefix, items, gates, layers);
  const [batch, length, d] = items.shape;
  const k = gates.shape[2];
  const s: GruShape = { batch, length, k, d, m: batch * k };
  // Layer 0's input projection is the same for every category: one matmul for all steps,
  // outside the custom op so the tape differentiates it.
  const items2d = tf.reshape(items, [batch * length, d]) as tf.Tensor2D;
  const xi0 = tf.reshape(
    tf.add(matmul(items2d, p.get(`${prefix}.l0.wi`) as tf.Tensor2D), p.get(`${prefix}.l0.bi`)),
    [batch, length, 3 * d],
  ); // [B, L, 3d]
  const weights = flatWeights(p, prefix, layers);
  // Time-major copies, so that taking step t is a contiguous slice.
  const xiT = tf.transpose(xi0, [1, 0, 2]); // [L, B, 3d]
  const gatesT = tf.reshape(tf.transpose(gates, [1, 0, 2]), [length, s.m, 1]); // [L, B*k, 1]
  const op = withCustomGradient(2 + weights.length, ([x, g, ...w], save) => {
    const stacked = forwardStates(x, g, w, layers, s); // [L, B*k, d] each
    save([x, g, ...w, ...stacked]);
    return {
      // [L, B*k, d] -> [L, B, k, d] -> [B, L, k, d]
      value: tf.transpose(tf.reshape(stacked[layers - 1], [length, batch, k, d]), [1, 0, 2, 3]),
      gradFunc: (dy, saved) => backward(dy, saved, layers, s),
    };
  });
  return op(xiT, gatesT, ...weights) as tf.Tensor4D; // [B, L, k, d]
}

// ------------------------------------------------------------------- the fused path

/** Whether the active backend runs the GRU kernels, and they take these inputs. */
function fusedGruApplies(items: tf.Tensor3D, gates: tf.Tensor3D): boolean {
  const backend = tf.getBackend();
  return items.dtype === "float32" && gates.dtype === "float32" && items.size > 0 &&
    gates.size > 0 && items.shape[2] <= FUSED_GRU_MAX_WIDTH &&
    tf.getKernel(GRU_FORWARD_KERNEL, backend) !== undefined &&
    tf.getKernel(GRU_BACKWARD_KERNEL, backend) !== undefined;
}

/**
 * {@linkcode gatedCategoryGru} on the kernels: layer by layer (layer l at step t reads
 * layer l-1 at t and itself at t-1, so a layer can run all steps before the next starts),
 * each layer's recurrence one kernel call, a higher layer's input projection one matmul
 * over all steps. Backward runs the layers top down, each one kernel call for its
 * recurrence and a matmul over all steps per weight gradient.
 */
function fusedGatedCategoryGru(
  p: ParamStore,
  prefix: string,
  items: tf.Tensor3D,
  gates: tf.Tensor3D,
  layers: number,
): tf.Tensor4D {
  const [batch, length, d] = items.shape;
  const k = gates.shape[2];
  const s: GruShape = { batch, length, k, d, m: batch * k };
  // Layer 0's input projection, for all steps and (broadcast) categories, on the tape;
  // tfjs's fused product adds the bias in the matmul's dispatch.
  const xi0 = tf.reshape(
    tf.fused.matMul({
      a: tf.reshape(items, [batch * length, d]) as tf.Tensor2D,
      b: p.get(`${prefix}.l0.wi`) as tf.Tensor2D,
      bias: p.get(`${prefix}.l0.bi`),
    }),
    [batch, length, 1, 3 * d],
  ); // [B, L, 1, 3d]
  const weights = flatWeights(p, prefix, layers);
  const op = withCustomGradient(2 + weights.length, ([x, g, ...w], save) => {
    const states: tf.Tensor[] = []; // [B, L, k, d] per layer
    const prevs: tf.Tensor[] = []; // [B, L, k, d]: the state before each step
    const acts: tf.Tensor[] = []; // [B, L, k, 4d]: r, z, n, W_hn h + b_hn
    for (let l = 0; l < layers; l++) {
      const lw = layerWeights(w, l);
      const xi = l === 0 ? x : tf.reshape(
        tf.fused.matMul({
          a: tf.reshape(states[l - 1], [s.m * length, d]) as tf.Tensor2D,
          b: lw.wi!,
          bias: lw.bi!,
        }),
        [batch, length, k, 3 * d],
      ); // [B, L, 1 or k, 3d]
      const [state, prev, act] = tf.engine().runKernel(
        GRU_FORWARD_KERNEL,
        { xi, gates: g, wh: lw.wh, bh: lw.bh },
      ) as tf.Tensor[];
      if (l > 0) xi.dispose();
      states.push(state);
      prevs.push(prev);
      acts.push(act);
    }
    // The top layer's states are the output, not needed backward.
    save([g, ...w, ...states.slice(0, -1), ...prevs, ...acts]);
    return {
      value: states[layers - 1],
      gradFunc: (dy, saved) => fusedBackward(dy, saved, layers, s),
    };
  });
  return op(xi0, gates, ...weights) as tf.Tensor4D; // [B, L, k, d]
}

/**
 * The fused op's gradients `[dx [B, L, 1, 3d], dgates [B, L, k], ...dw]` from the output's
 * `dy` `[B, L, k, d]` and the saved `[gates, ...w, ...states below the top, ...prevs,
 * ...acts]`.
 */
function fusedBackward(dy: tf.Tensor, saved: tf.Tensor[], layers: number, s: GruShape) {
  const { batch, length, k, d } = s;
  const rows = s.m * length; // B*L*k
  const weightCount = saved.length - 1 - (3 * layers - 1);
  const g = saved[0];
  const w = saved.slice(1, 1 + weightCount);
  const states = saved.slice(1 + weightCount, weightCount + layers);
  const prevs = saved.slice(weightCount + layers, weightCount + 2 * layers);
  const acts = saved.slice(weightCount + 2 * layers);
  const dw: tf.Tensor[] = new Array(weightCount);
  let ext = dy; // [B, L, k, d]: into this layer's states from outside its recurrence
  let dGate: tf.Tensor | null = null; // [B, L, k]
  let dx: tf.Tensor | null = null;
  for (let l = layers - 1; l >= 0; l--) {
    const lw = layerWeights(w, l);
    const [dhh, dxi, dg] = tf.engine().runKernel(
      GRU_BACKWARD_KERNEL,
      { dy: ext, prev: prevs[l], acts: acts[l], gates: g, wh: lw.wh },
    ) as tf.Tensor[];
    const dhh2 = tf.reshape(dhh, [rows, 3 * d]) as tf.Tensor2D;
    const dxi2 = tf.reshape(dxi, [rows, 3 * d]) as tf.Tensor2D;
    const at = weightIndex(l);
    // Sums over all steps and rows: one matmul each (a transpose flag is free on webgpu, and
    // wasm transposes first: backends/_kernels.ts).
    dw[at] = tf.matMul(tf.reshape(prevs[l], [rows, d]) as tf.Tensor2D, dhh2, true, false);
    dw[at + 1] = tf.sum(dhh2, 0);
    const next: tf.Tensor[] = [];
    if (l > 0) {
      const below = tf.reshape(states[l - 1], [rows, d]) as tf.Tensor2D;
      dw[at + 2] = tf.matMul(below, dxi2, true, false);
      dw[at + 3] = tf.sum(dxi2, 0);
      next.push(tf.reshape(tf.matMul(dxi2, lw.wi!, false, true), [batch, length, k, d]));
    } else {
      dx = tf.sum(tf.reshape(dxi, [batch, length, k, 3 * d]), 2, true); // [B, L, 1, 3d]
    }
    const sum: tf.Tensor = dGate === null ? dg : tf.add(dGate, dg);
    tf.dispose([dhh, dxi, dhh2, dxi2, ...(dGate === null ? [] : [dGate, dg])]);
    if (ext !== dy) ext.dispose();
    dGate = sum;
    if (next.length > 0) ext = next[0];
  }
  return [dx!, dGate!, ...dw];
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
