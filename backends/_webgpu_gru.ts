/**
 * SIGMA's gated category GRU (`lib/nn/gru.ts`) as WGSL programs for the webgpu backend:
 * one dispatch runs a layer's whole recurrence forward, one its whole backpropagation
 * through time.
 *
 * Why: composed of tfjs ops, the GRU runs position by position, each step a dozen small
 * ops per layer (a matmul, splits, sigmoids, adds), and backward twice that; every op is
 * one GPU dispatch with a fixed cost, so a SIGMA training step spent thousands of
 * dispatches on the GRU alone. Here one workgroup owns one state row (a sequence and a
 * category), its threads the hidden units, and it loops over the positions with the state
 * (forward) or the gradient carried into the previous state (backward) in registers and
 * workgroup memory, barriers between steps. Rows are independent, so nothing crosses
 * workgroups. The input projections of all positions stay matmuls outside (layer 0's in
 * the model, a higher layer's one matmul over the states of the layer below), and so do
 * the weight gradients, one matmul each over all positions.
 *
 * Each program is a tfjs-backend-webgpu `WebGPUProgram` run through `runWebGPUProgram`, so
 * tfjs compiles, caches, binds and records it like its own. A tfjs program has one output
 * binding; the further outputs are tensors made here and handed to the program as inputs,
 * whose bindings the code declares a second time, writable (the trick of
 * `_webgpu_fused.ts`, which explains why it is valid). The backward program uses 8 storage
 * bindings, WebGPU's default limit per shader stage: it reads the saved activations
 * (`r`, `z`, `n`, `W_hn h + b_hn`) and previous states instead of recomputing them from
 * the inputs and `b_h`, which would take two more.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  type Info,
  type ProgramUniform,
  viewAs,
  type WebGpuBackend,
  type WebGpuProgram,
} from "./_webgpu_program.ts";
import { GRU_BACKWARD_KERNEL, GRU_FORWARD_KERNEL, gruKernelSizes } from "../lib/nn/gru.ts";

/** `t` as a flat view: tfjs then declares rank-1 shape uniforms for it. */
const flat = (t: Info): Info => viewAs(t, [tf.util.sizeFromShape(t.shape)]);

/** The power of two in [32, 256] nearest above `d`: threads per state row. */
function rowWorkgroup(d: number): number {
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(d))));
}

/**
 * WGSL shared by both programs: the constants of the width, the row's workgroup index
 * (tfjs may fold a dispatch of over 65,535 workgroups into two or three dimensions) and
 * tfjs's own sigmoid and tanh (`exp` of a non-positive argument only, so no overflow).
 */
function commonWgsl(d: number, workgroup: number): string {
  return `
  const GRU_D = ${d};
  const GRU_WG = ${workgroup};
  const GRU_PER = ${Math.ceil(d / workgroup)};
  fn sigmaWorkgroupIndex() -> i32 {
    return i32((workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x +
      workgroupId.x);
  }
  fn sigmaSigmoid(a : f32) -> f32 {
    return 1.0 / (1.0 + exp(-a));
  }
  fn sigmaTanh(a : f32) -> f32 {
    let e = exp(-2.0 * abs(a));
    return sign(a) * (1.0 - e) / (1.0 + e);
  }`;
}

/** The uniforms both programs declare, in the order of `GRU_UNIFORMS`' values. */
const GRU_UNIFORMS = "rows : i32, steps : i32, k : i32, xiK : i32,";

/**
 * One layer's recurrence over all positions: `xi [B, L, xiK, 3d]` (layer 0: xiK = 1,
 * broadcast over categories), `gates [B, L, k]`, `wh [d, 3d]`, `bh [3d]` -> the states
 * `[B, L, k, d]` (the output), the state before each step `[B, L, k, d]` (`prevOut`) and
 * the step's `r, z, n, W_hn h + b_hn` `[B, L, k, 4d]` (`actsOut`), both written.
 */
class GruForwardProgram implements WebGpuProgram {
  variableNames = ["xi", "gates", "wh", "bh", "prevOut", "actsOut"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = GRU_UNIFORMS;
  d: number;
  /** Hidden units per thread. */
  per: number;

  constructor(rows: number, size: number, d: number) {
    this.d = d;
    this.outputShape = [size];
    this.workgroupSize = [rowWorkgroup(d), 1, 1];
    this.per = Math.ceil(d / this.workgroupSize[0]);
    this.dispatch = [rows, 1, 1]; // one workgroup per (sequence, category)
    this.shaderKey = `sigmaGruForward_${d}_${this.workgroupSize[0]}`;
  }

  getUserCode(): string {
    return `
  @group(0) @binding(5) var<storage, read_write> sigmaPrevOut : array<f32>;
  @group(0) @binding(6) var<storage, read_write> sigmaActsOut : array<f32>;
  ${commonWgsl(this.d, this.workgroupSize[0])}
  var<workgroup> sigmaH : array<f32, ${this.d}>;
  fn main(index : i32) {
    let m = sigmaWorkgroupIndex(); // the state row: sequence b, category j
    let k = uniforms.k;
    let steps = uniforms.steps;
    let valid = m < uniforms.rows; // a folded dispatch may have workgroups past the end
    let b = m / k;
    let j = m - b * k;
    let tid = i32(localIndex);
    for (var c = 0; c < GRU_PER; c++) {
      let u = tid + c * GRU_WG;
      if (u < GRU_D) {
        sigmaH[u] = 0.0;
      }
    }
    workgroupBarrier();
    var next : array<f32, ${this.per}>;
    for (var t = 0; t < steps; t++) {
      let row = (b * steps + t) * k + j;
      let xb = ((b * steps + t) * uniforms.xiK + min(j, uniforms.xiK - 1)) * 3 * GRU_D;
      for (var c = 0; c < GRU_PER; c++) {
        let u = tid + c * GRU_WG;
        if (valid && u < GRU_D) {
          // W_h h + b_h for unit u of each gate; h from workgroup memory.
          var ar = bh[u];
          var az = bh[GRU_D + u];
          var an = bh[2 * GRU_D + u];
          for (var i = 0; i < GRU_D; i++) {
            let h = sigmaH[i];
            let w = i * 3 * GRU_D + u;
            ar += h * wh[w];
            az += h * wh[w + GRU_D];
            an += h * wh[w + 2 * GRU_D];
          }
          let r = sigmaSigmoid(xi[xb + u] + ar);
          let z = sigmaSigmoid(xi[xb + GRU_D + u] + az);
          let n = sigmaTanh(xi[xb + 2 * GRU_D + u] + r * an);
          let h = sigmaH[u];
          // h + gate * (GRU(h) - h), as the reference path computes it.
          let out = h + gates[row] * (((1.0 - z) * n + z * h) - h);
          next[c] = out;
          result[row * GRU_D + u] = out;
          sigmaPrevOut[row * GRU_D + u] = h;
          let a = row * 4 * GRU_D;
          sigmaActsOut[a + u] = r;
          sigmaActsOut[a + GRU_D + u] = z;
          sigmaActsOut[a + 2 * GRU_D + u] = n;
          sigmaActsOut[a + 3 * GRU_D + u] = an;
        }
      }
      workgroupBarrier(); // every thread has read the old state
      for (var c = 0; c < GRU_PER; c++) {
        let u = tid + c * GRU_WG;
        if (u < GRU_D) {
          sigmaH[u] = next[c];
        }
      }
      workgroupBarrier();
    }
  }`;
  }
}

/**
 * One layer's backpropagation through time, positions last to first: `dy [B, L, k, d]`
 * (the gradient into the layer's states from outside the recurrence: the op's output or
 * the layer above), `prev` and `acts` of {@linkcode GruForwardProgram}, `gates`, `wh` ->
 * `dhh [B, L, k, 3d]` (into `W_h h + b_h`, the output), `dxi [B, L, k, 3d]` (into the
 * input projection, `dxiOut`) and `dgate [B, L, k]` (`dgateOut`), both written.
 */
class GruBackwardProgram implements WebGpuProgram {
  variableNames = ["dy", "prev", "acts", "gates", "wh", "dxiOut", "dgateOut"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = GRU_UNIFORMS;
  d: number;
  /** Hidden units per thread. */
  per: number;

  constructor(rows: number, size: number, d: number) {
    this.d = d;
    this.outputShape = [size];
    this.workgroupSize = [rowWorkgroup(d), 1, 1];
    this.per = Math.ceil(d / this.workgroupSize[0]);
    this.dispatch = [rows, 1, 1];
    this.shaderKey = `sigmaGruBackward_${d}_${this.workgroupSize[0]}`;
  }

  getUserCode(): string {
    return `
  @group(0) @binding(6) var<storage, read_write> sigmaDxiOut : array<f32>;
  @group(0) @binding(7) var<storage, read_write> sigmaDgateOut : array<f32>;
  ${commonWgsl(this.d, this.workgroupSize[0])}
  var<workgroup> sigmaDhh : array<f32, ${3 * this.d}>;
  var<workgroup> sigmaRed : array<f32, ${this.workgroupSize[0]}>;
  fn main(index : i32) {
    let m = sigmaWorkgroupIndex();
    let k = uniforms.k;
    let steps = uniforms.steps;
    let valid = m < uniforms.rows;
    let b = m / k;
    let j = m - b * k;
    let tid = i32(localIndex);
    var carry : array<f32, ${this.per}>; // the gradient into the previous state
    var direct : array<f32, ${this.per}>;
    for (var c = 0; c < GRU_PER; c++) {
      carry[c] = 0.0;
    }
    for (var s = 0; s < steps; s++) {
      let t = steps - 1 - s;
      let row = (b * steps + t) * k + j;
      var g = 0.0;
      if (valid) {
        g = gates[row];
      }
      var part = 0.0; // this thread's share of d gate
      for (var c = 0; c < GRU_PER; c++) {
        let u = tid + c * GRU_WG;
        if (valid && u < GRU_D) {
          let dOut = dy[row * GRU_D + u] + carry[c];
          let a = row * 4 * GRU_D;
          let r = acts[a + u];
          let z = acts[a + GRU_D + u];
          let n = acts[a + 2 * GRU_D + u];
          let hn = acts[a + 3 * GRU_D + u];
          let h = prev[row * GRU_D + u];
          // out = h + gate * (GRU(h) - h), GRU(h) = (1 - z) n + z h
          part += dOut * (((1.0 - z) * n + z * h) - h);
          let dMoved = dOut * g;
          let dn = dMoved * (1.0 - z);
          let dz = dMoved * (h - n);
          let dnPre = dn * (1.0 - n * n); // through tanh
          let dr = dnPre * hn;
          let dhn = dnPre * r;
          let drPre = dr * (r * (1.0 - r)); // through sigmoid
          let dzPre = dz * (z * (1.0 - z));
          let o = row * 3 * GRU_D;
          result[o + u] = drPre;
          result[o + GRU_D + u] = dzPre;
          result[o + 2 * GRU_D + u] = dhn;
          sigmaDxiOut[o + u] = drPre;
          sigmaDxiOut[o + GRU_D + u] = dzPre;
          sigmaDxiOut[o + 2 * GRU_D + u] = dnPre;
          sigmaDhh[u] = drPre;
          sigmaDhh[GRU_D + u] = dzPre;
          sigmaDhh[2 * GRU_D + u] = dhn;
          // Into the previous state directly: (1 - gate) + gate z.
          direct[c] = dOut * ((1.0 - g) + g * z);
        }
      }
      sigmaRed[tid] = part;
      workgroupBarrier(); // sigmaDhh and sigmaRed complete
      for (var w = GRU_WG / 2; w > 0; w = w / 2) {
        if (tid < w) {
          sigmaRed[tid] = sigmaRed[tid] + sigmaRed[tid + w];
        }
        workgroupBarrier();
      }
      if (valid && tid == 0) {
        sigmaDgateOut[row] = sigmaRed[0];
      }
      // ... and through W_h h: dhh W_hᵀ, row u of W_h.
      for (var c = 0; c < GRU_PER; c++) {
        let u = tid + c * GRU_WG;
        if (valid && u < GRU_D) {
          var acc = direct[c];
          let w = u * 3 * GRU_D;
          for (var i = 0; i < 3 * GRU_D; i++) {
            acc += sigmaDhh[i] * wh[w + i];
          }
          carry[c] = acc;
        }
      }
      workgroupBarrier(); // every thread has read sigmaDhh and sigmaRed before the next step
    }
  }`;
  }
}

function uniformsOf(rows: number, steps: number, k: number, xiK: number): ProgramUniform[] {
  return [rows, steps, k, xiK].map((v) => ({ type: "int32", data: [v] }));
}

function gruForwardKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { xi, gates, wh, bh } = args.inputs as Record<string, Info>;
  const backend = args.backend as unknown as WebGpuBackend;
  const { batch, steps, k, d, xiK, rows } = gruKernelSizes(xi.shape, gates.shape, wh.shape, 3);
  const shape = [batch, steps, k, d];
  const size = tf.util.sizeFromShape(shape);
  const prev = backend.makeTensorInfo(shape, "float32"); // written, not read
  const acts = backend.makeTensorInfo([batch, steps, k, 4 * d], "float32"); // written
  const states = backend.runWebGPUProgram(
    new GruForwardProgram(rows, size, d),
    [flat(xi), flat(gates), flat(wh), flat(bh), flat(prev), flat(acts)],
    "float32",
    uniformsOf(rows, steps, k, xiK),
  );
  return [viewAs(states, shape), prev, acts];
}

function gruBackwardKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { dy, prev, acts, gates, wh } = args.inputs as Record<string, Info>;
  const backend = args.backend as unknown as WebGpuBackend;
  const { batch, steps, k, d, xiK, rows } = gruKernelSizes(dy.shape, gates.shape, wh.shape, 1);
  if (xiK !== k) throw new RangeError(`gated GRU: dy must be [B, L, k, d], got [${dy.shape}]`);
  const shape = [batch, steps, k, 3 * d];
  const dxi = backend.makeTensorInfo(shape, "float32"); // written, not read
  const dgate = backend.makeTensorInfo([batch, steps, k], "float32"); // written
  const dhh = backend.runWebGPUProgram(
    new GruBackwardProgram(rows, tf.util.sizeFromShape(shape), d),
    [flat(dy), flat(prev), flat(acts), flat(gates), flat(wh), flat(dxi), flat(dgate)],
    "float32",
    uniformsOf(rows, steps, k, k),
  );
  return [viewAs(dhh, shape), dxi, dgate];
}

let registered = false;

/**
 * Registers the gated GRU kernels of `lib/nn/gru.ts` ({@linkcode GRU_FORWARD_KERNEL},
 * {@linkcode GRU_BACKWARD_KERNEL}) for the webgpu backend; idempotent. Called by
 * `backends/_select.ts` on load. Needs no GPU: the programs compile when first run.
 */
export function registerWebGpuGru(): void {
  if (registered) return;
  registered = true;
  const kernels: [string, tf.KernelFunc][] = [
    [GRU_FORWARD_KERNEL, gruForwardKernel as tf.KernelFunc],
    [GRU_BACKWARD_KERNEL, gruBackwardKernel as tf.KernelFunc],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc });
  }
}
