/**
 * WGSL programs for the fused attention of `lib/nn/attention.ts`, registered for the webgpu
 * backend: `dropout(softmax(q kᵀ · scale + mask)) v` in one dispatch forward and two backward,
 * where tfjs's ops take 5 and 9 (and 6 and 10 with dropout, plus the per-head transposes).
 * See that module for the maths and why two backward kernels.
 *
 * The tensors may come in either layout of `AttentionLayout` (`[B, h, L, dh]` or
 * `[B, L, h, dh]`): the programs address a (batch, head, position) row through strides in
 * their uniforms, so one compiled program serves both. The dropout mask is drawn in the
 * programs, by the Philox2x32-10 of `_webgpu_dropout.ts` (the same rounds, copied: that
 * file's WGSL is private to its program) at the probability's index in `[B, h, Lq, L]`;
 * programs with and without dropout are compiled apart, so that attention without dropout
 * spends nothing on it.
 *
 * Each program is a tfjs-backend-webgpu `WebGPUProgram` run through the backend's
 * `runWebGPUProgram`, so tfjs compiles, caches, binds and records it like its own: tfjs
 * declares the inputs, the output `result` and `uniforms` (shapes and this file's scalars),
 * and the code here is the body. Every tensor is handed over as a flat view (the indexing
 * is written out here), so tfjs's generated accessors, which are never called, stay simple.
 *
 * One workgroup of {@linkcode WORKGROUP} threads per row: a (batch, head, query) row for the
 * forward and query-gradient programs, a (batch, head, key) row for the key/value one. The
 * row's scores live in workgroup memory (L and Lq are at most `ATTENTION_MAX_LENGTH`),
 * threads take every 64th key, and max and sum go through a tree in workgroup memory (fixed
 * order: results do not change from run to run). The row is found from the workgroup's flat
 * index, because tfjs folds a dispatch of more than 65,535 workgroups into two or three
 * dimensions (`reshapeDispatch`); workgroups past the last row compute the last row again,
 * so that every thread reaches every barrier, and write nothing.
 *
 * The backward programs return two tensors from one dispatch each (dq and the row
 * statistics; dk and dv). A tfjs program has one output binding, so the second output is
 * made here and handed to the program as an input, and the program's code declares that
 * input's binding a second time, writable (as `_webgpu_fused.ts` does). WGSL forbids two
 * variables on one binding only within what one entry point uses, and tfjs's read-only
 * declaration and its accessors are never called; the pipeline layout, derived from the
 * entry point, then has the binding writable. The alternatives cost more: a packed output
 * needs a `Slice` per part (tfjs 4.22's webgpu slice is always a copy, one dispatch each),
 * and a raw dispatch outside `runWebGPUProgram` would re-implement tfjs's bookkeeping.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { PHILOX_WGSL } from "./_webgpu_dropout.ts";
import {
  type Info,
  type ProgramUniform,
  viewAs,
  type WebGpuBackend,
  type WebGpuProgram,
} from "./_webgpu_program.ts";
import {
  ATTENTION_GRAD_KEY_VALUE_KERNEL,
  ATTENTION_GRAD_QUERY_KERNEL,
  ATTENTION_KERNEL,
  type AttentionKernelAttrs,
} from "../lib/nn/attention.ts";

/** Threads per workgroup (one row each); a power of two, for the reduction tree. */
export const WORKGROUP = 64;

/** `t` as a flat view. */
const flat = (t: Info): Info => viewAs(t, [tf.util.sizeFromShape(t.shape)]);

/**
 * The power of two at or above `n`, at least 32: the size of a workgroup array that holds
 * `n` values. Rounding up keeps the number of compiled variants small (batches come padded
 * to their own longest history, so L varies from batch to batch).
 */
function capacity(n: number): number {
  return Math.max(32, 2 ** Math.ceil(Math.log2(n)));
}

/** The attributes of the kernels, as `lib/nn/attention.ts` passes them. */
type Attrs = AttentionKernelAttrs;

/** The sizes and strides of one attention call. */
interface Dims {
  batch: number;
  heads: number;
  queries: number;
  keys: number;
  depth: number;
  /** Mask elements between batches (0 when the mask is shared) and between query rows. */
  maskBatchStride: number;
  maskRowStride: number;
  /**
   * Elements between consecutive positions of a head (dh, or h·dh in the sequence layout),
   * and between heads of a query tensor (Lq·dh, or dh) and of a key tensor (L·dh, or dh).
   * Between batches there are h·Lq·dh and h·L·dh in either layout.
   */
  rowStride: number;
  queryHeadStride: number;
  keyHeadStride: number;
}

function dimsOf(q: Info, k: Info, mask: Info, sequence: boolean): Dims {
  // [B, h, Lq, dh] and [B, h, L, dh] whatever the layout
  const [batch, heads, queries, depth] = sequence
    ? [q.shape[0], q.shape[2], q.shape[1], q.shape[3]]
    : q.shape;
  const keys = sequence ? k.shape[1] : k.shape[2];
  const [maskBatch, , maskRows] = mask.shape;
  return {
    batch,
    heads,
    queries,
    keys,
    depth,
    maskBatchStride: maskBatch === 1 ? 0 : maskRows * keys,
    maskRowStride: maskRows === 1 ? 0 : keys,
    rowStride: sequence ? heads * depth : depth,
    queryHeadStride: sequence ? depth : queries * depth,
    keyHeadStride: sequence ? depth : keys * depth,
  };
}

/** The uniforms every program here declares ({@linkcode UNIFORMS}), in order. */
function uniformsOf(d: Dims, rows: number, a: Attrs): ProgramUniform[] {
  return [
    ...[
      rows,
      d.queries,
      d.keys,
      d.depth,
      d.heads,
      d.maskBatchStride,
      d.maskRowStride,
      d.rowStride,
      d.queryHeadStride,
      d.keyHeadStride,
    ].map((x): ProgramUniform => ({ type: "int32", data: [x] })),
    { type: "float32", data: [a.scale] },
    { type: "uint32", data: [a.seed >>> 0] },
    { type: "uint32", data: [a.threshold >>> 0] },
    { type: "float32", data: [a.keepScale] },
  ];
}

const UNIFORMS = "rows : i32, queries : i32, keys : i32, depth : i32, heads : i32, " +
  "maskBatchStride : i32, maskRowStride : i32, rowStride : i32, queryHeadStride : i32, " +
  "keyHeadStride : i32, scale : f32, seed : u32, threshold : u32, keepScale : f32,";

// ------------------------------------------------------------------------ shared WGSL

/**
 * The WGSL every program here starts with:
 * - the flat index of this workgroup (tfjs declares `workgroupId` and `numWorkgroups`);
 * - a reduction over the workgroup: the max (`takeMax`) or the sum of every thread's `v`, by
 *   a tree in workgroup memory; every thread gets the result. Call it from uniform control
 *   flow only (it has barriers);
 * - the offsets of a (batch·head, position) row of a query-shaped tensor (q, dy, out, dq)
 *   and of a key-shaped one (k, v, dk, dv), in either layout, from the uniform strides;
 * - `sigmaKeep`, the dropout mask's factor of the probability at a flat index of
 *   `[B, h, Lq, L]`: 0 or `keepScale` by `lib/nn/dropout.ts`'s rule, or 1 without dropout
 *   (`x * 1` is `x`: results without dropout are what they were before dropout was fused).
 */
function sharedWgsl(dropout: boolean): string {
  const keep = dropout
    ? `${PHILOX_WGSL}
  fn sigmaKeep(index : u32) -> f32 {
    let words = sigmaPhilox(index >> 1u, uniforms.seed);
    let word = select(words.x, words.y, (index & 1u) == 1u);
    return select(0.0, uniforms.keepScale, word >= uniforms.threshold);
  }`
    : `
  fn sigmaKeep(index : u32) -> f32 {
    return 1.0;
  }`;
  return `
  const SIGMA_W = ${WORKGROUP};
  var<workgroup> sigmaRed : array<f32, ${WORKGROUP}>;
  fn sigmaWorkgroupIndex() -> i32 {
    return i32((workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x +
      workgroupId.x);
  }
  fn sigmaReduce(v : f32, takeMax : bool) -> f32 {
    let tid = localIndex;
    sigmaRed[tid] = v;
    workgroupBarrier();
    for (var s = ${WORKGROUP / 2}u; s > 0u; s = s / 2u) {
      if (tid < s) {
        let a = sigmaRed[tid];
        let b = sigmaRed[tid + s];
        sigmaRed[tid] = select(a + b, max(a, b), takeMax);
      }
      workgroupBarrier();
    }
    let total = sigmaRed[0];
    workgroupBarrier(); // every thread has read it before sigmaRed is written again
    return total;
  }
  fn sigmaQueryBase(bh : i32, i : i32) -> i32 {
    let b = bh / uniforms.heads;
    return b * uniforms.heads * uniforms.queries * uniforms.depth +
      (bh - b * uniforms.heads) * uniforms.queryHeadStride + i * uniforms.rowStride;
  }
  fn sigmaKeyBase(bh : i32, j : i32) -> i32 {
    let b = bh / uniforms.heads;
    return b * uniforms.heads * uniforms.keys * uniforms.depth +
      (bh - b * uniforms.heads) * uniforms.keyHeadStride + j * uniforms.rowStride;
  }${keep}`;
}

/**
 * The start of a per-query-row program: `row` (clamped) and whether it is real, the offsets
 * of its query row, its key block and mask row, its first probability's flat index, and
 * the query row copied into `sigmaQ`.
 */
const QUERY_ROW_WGSL = `
    let rows = uniforms.rows;
    let keys = uniforms.keys;
    let depth = uniforms.depth;
    let rowStride = uniforms.rowStride;
    let tid = i32(localIndex);
    let r = sigmaWorkgroupIndex();
    let row = min(r, rows - 1); // [B, h, Lq] flattened
    let bh = row / uniforms.queries;
    let i = row - bh * uniforms.queries;
    let maskBase = (bh / uniforms.heads) * uniforms.maskBatchStride + i * uniforms.maskRowStride;
    let queryRow = sigmaQueryBase(bh, i); // of q, dy, the output and dq
    let keyBase = sigmaKeyBase(bh, 0); // key j's row starts at keyBase + j * rowStride
    let probBase = u32(row) * u32(keys); // probability (row, j) is element probBase + j
    for (var d = tid; d < depth; d += SIGMA_W) {
      sigmaQ[d] = q[queryRow + d];
    }`;

// -------------------------------------------------------------------------- programs

/**
 * Shared fields of the three programs: one workgroup per row, a flat dispatch, compiled
 * apart with and without dropout.
 */
abstract class RowProgram implements WebGpuProgram {
  abstract variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms = UNIFORMS;
  /** Capacities of the workgroup arrays: a row of scores, and a head's width. */
  lengthCap: number;
  depthCap: number;
  /** Whether the program draws a dropout mask. */
  dropout: boolean;

  constructor(
    name: string,
    rows: number,
    outputSize: number,
    length: number,
    depth: number,
    dropout: boolean,
  ) {
    this.outputShape = [outputSize];
    this.dispatch = [rows, 1, 1];
    this.lengthCap = capacity(length);
    this.depthCap = capacity(depth);
    this.dropout = dropout;
    this.shaderKey = `${name}_${WORKGROUP}_${this.lengthCap}_${this.depthCap}_${+dropout}`;
  }

  abstract getUserCode(): string;
}

/** `out = dropout(softmax(q kᵀ · scale + mask)) v`, one workgroup per query row. */
class AttentionProgram extends RowProgram {
  variableNames = ["q", "k", "v", "mask"];

  constructor(d: Dims, dropout: boolean) {
    const rows = d.batch * d.heads * d.queries;
    super("sigmaAttention", rows, rows * d.depth, d.keys, d.depth, dropout);
  }

  getUserCode(): string {
    return `
  ${sharedWgsl(this.dropout)}
  var<workgroup> sigmaQ : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaS : array<f32, ${this.lengthCap}>;
  fn main(index : i32) {
    ${QUERY_ROW_WGSL}
    workgroupBarrier();
    // Scores, each in tfjs's order: the dot product, times scale, plus the mask.
    var localMax = -3.402823e+38;
    for (var j = tid; j < keys; j += SIGMA_W) {
      let kr = keyBase + j * rowStride;
      var acc = 0.0;
      for (var d = 0; d < depth; d++) {
        acc += sigmaQ[d] * k[kr + d];
      }
      let s = acc * uniforms.scale + mask[maskBase + j];
      sigmaS[j] = s;
      localMax = max(localMax, s);
    }
    let rowMax = sigmaReduce(localMax, true);
    var localSum = 0.0;
    for (var j = tid; j < keys; j += SIGMA_W) {
      let e = exp(sigmaS[j] - rowMax);
      sigmaS[j] = e;
      localSum += e;
    }
    let rowSum = sigmaReduce(localSum, false);
    for (var j = tid; j < keys; j += SIGMA_W) {
      // The probability, then dropped as tfjs's dropout would: p * m.
      sigmaS[j] = (sigmaS[j] / rowSum) * sigmaKeep(probBase + u32(j));
    }
    workgroupBarrier();
    if (r < rows) {
      for (var d = tid; d < depth; d += SIGMA_W) {
        var acc = 0.0;
        for (var j = 0; j < keys; j++) {
          acc += sigmaS[j] * v[keyBase + j * rowStride + d];
        }
        result[queryRow + d] = acc;
      }
    }
  }`;
  }
}

/**
 * `dq = scale · Σ_j p_j (dp_j - D) k_j` with `dp_j = m_j (dy · v_j)` (m the dropout mask's
 * factor), `D = Σ_j p_j dp_j`, one workgroup per query row; the row's max, sum of
 * exponentials and D go to the second output (the input `extraOut`, `[rows, 3]`).
 */
class AttentionGradQueryProgram extends RowProgram {
  variableNames = ["dy", "q", "k", "v", "mask", "extraOut"];

  constructor(d: Dims, dropout: boolean) {
    const rows = d.batch * d.heads * d.queries;
    super("sigmaAttentionGradQuery", rows, rows * d.depth, d.keys, d.depth, dropout);
  }

  getUserCode(): string {
    return `
  @group(0) @binding(${this.variableNames.length}) var<storage, read_write> sigmaStats :
    array<f32>;
  ${sharedWgsl(this.dropout)}
  var<workgroup> sigmaQ : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaDy : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaS : array<f32, ${this.lengthCap}>;
  var<workgroup> sigmaDp : array<f32, ${this.lengthCap}>;
  fn main(index : i32) {
    ${QUERY_ROW_WGSL}
    for (var d = tid; d < depth; d += SIGMA_W) {
      sigmaDy[d] = dy[queryRow + d];
    }
    workgroupBarrier();
    // The forward pass's scores, computed the same way, and dy · v_j.
    var localMax = -3.402823e+38;
    for (var j = tid; j < keys; j += SIGMA_W) {
      let kr = keyBase + j * rowStride;
      var acc = 0.0;
      var accDp = 0.0;
      for (var d = 0; d < depth; d++) {
        acc += sigmaQ[d] * k[kr + d];
        accDp += sigmaDy[d] * v[kr + d];
      }
      let s = acc * uniforms.scale + mask[maskBase + j];
      sigmaS[j] = s;
      sigmaDp[j] = accDp;
      localMax = max(localMax, s);
    }
    let rowMax = sigmaReduce(localMax, true);
    var localSum = 0.0;
    for (var j = tid; j < keys; j += SIGMA_W) {
      let e = exp(sigmaS[j] - rowMax);
      sigmaS[j] = e;
      localSum += e;
    }
    let rowSum = sigmaReduce(localSum, false);
    var localD = 0.0;
    for (var j = tid; j < keys; j += SIGMA_W) {
      let p = sigmaS[j] / rowSum;
      // The gradient of the dropped probability, through the mask: the softmax's dp_j.
      let dp = sigmaDp[j] * sigmaKeep(probBase + u32(j));
      sigmaS[j] = p;
      sigmaDp[j] = dp;
      localD += p * dp;
    }
    let rowD = sigmaReduce(localD, false);
    for (var j = tid; j < keys; j += SIGMA_W) {
      sigmaS[j] = sigmaS[j] * (sigmaDp[j] - rowD); // the softmax's input gradient
    }
    workgroupBarrier();
    if (r < rows) {
      for (var d = tid; d < depth; d += SIGMA_W) {
        var acc = 0.0;
        for (var j = 0; j < keys; j++) {
          acc += sigmaS[j] * k[keyBase + j * rowStride + d];
        }
        result[queryRow + d] = acc * uniforms.scale;
      }
      if (tid == 0) {
        sigmaStats[3 * row] = rowMax;
        sigmaStats[3 * row + 1] = rowSum;
        sigmaStats[3 * row + 2] = rowD;
      }
    }
  }`;
  }
}

/**
 * `dk_j = scale · Σ_i p_ij (dp_ij - D_i) q_i` (the output) and `dv_j = Σ_i m_ij p_ij dy_i`
 * (the input `extraOut`, written), with `dp_ij = m_ij (dy_i · v_j)`, one workgroup per key
 * row j, each `p_ij` recomputed from the score and the row statistics in `stats`. The
 * score is computed as in the other two programs (same operands, same order), so `p_ij` is
 * the one they used, and so is the mask's `m_ij` (the same index).
 */
class AttentionGradKeyValueProgram extends RowProgram {
  variableNames = ["dy", "q", "k", "v", "mask", "stats", "extraOut"];

  constructor(d: Dims, dropout: boolean) {
    const rows = d.batch * d.heads * d.keys;
    super("sigmaAttentionGradKeyValue", rows, rows * d.depth, d.queries, d.depth, dropout);
  }

  getUserCode(): string {
    return `
  @group(0) @binding(${this.variableNames.length}) var<storage, read_write> sigmaDv :
    array<f32>;
  ${sharedWgsl(this.dropout)}
  var<workgroup> sigmaK : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaV : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaP : array<f32, ${this.lengthCap}>;
  var<workgroup> sigmaDs : array<f32, ${this.lengthCap}>;
  fn main(index : i32) {
    let rows = uniforms.rows;
    let queries = uniforms.queries;
    let keys = uniforms.keys;
    let depth = uniforms.depth;
    let rowStride = uniforms.rowStride;
    let tid = i32(localIndex);
    let r = sigmaWorkgroupIndex();
    let row = min(r, rows - 1); // [B, h, L] flattened
    let bh = row / keys;
    let j = row - bh * keys;
    let maskBase = (bh / uniforms.heads) * uniforms.maskBatchStride + j;
    let keyRow = sigmaKeyBase(bh, j); // of k, v, dk and dv
    let queryBase = sigmaQueryBase(bh, 0); // query i's row starts at queryBase + i * rowStride
    for (var d = tid; d < depth; d += SIGMA_W) {
      sigmaK[d] = k[keyRow + d];
      sigmaV[d] = v[keyRow + d];
    }
    workgroupBarrier();
    for (var i = tid; i < queries; i += SIGMA_W) {
      let qr = queryBase + i * rowStride;
      var acc = 0.0;
      var accDp = 0.0;
      for (var d = 0; d < depth; d++) {
        acc += q[qr + d] * sigmaK[d];
        accDp += dy[qr + d] * sigmaV[d];
      }
      let s = acc * uniforms.scale + mask[maskBase + i * uniforms.maskRowStride];
      let st = 3 * (bh * queries + i);
      let p = exp(s - stats[st]) / stats[st + 1];
      let m = sigmaKeep(u32(bh * queries + i) * u32(keys) + u32(j));
      sigmaP[i] = p * m;
      sigmaDs[i] = p * (accDp * m - stats[st + 2]);
    }
    workgroupBarrier();
    if (r < rows) {
      for (var d = tid; d < depth; d += SIGMA_W) {
        var accK = 0.0;
        var accV = 0.0;
        for (var i = 0; i < queries; i++) {
          let qr = queryBase + i * rowStride;
          accK += sigmaDs[i] * q[qr + d];
          accV += sigmaP[i] * dy[qr + d];
        }
        result[keyRow + d] = accK * uniforms.scale;
        sigmaDv[keyRow + d] = accV;
      }
    }
  }`;
  }
}

// --------------------------------------------------------------------------- kernels

/** Whether the attributes ask for dropout (a threshold of 0 keeps every probability). */
const dropsOf = (a: Attrs) => a.threshold !== 0;

function attention(backend: WebGpuBackend, inputs: tf.NamedTensorInfoMap, a: Attrs) {
  const { q, k, v, mask } = inputs as Record<string, Info>;
  const d = dimsOf(q, k, mask, a.sequence);
  const program = new AttentionProgram(d, dropsOf(a));
  const out = backend.runWebGPUProgram(
    program,
    [q, k, v, mask].map(flat),
    "float32",
    uniformsOf(d, program.dispatch[0], a),
  );
  return viewAs(out, q.shape); // q's shape and layout
}

function attentionGradQuery(
  backend: WebGpuBackend,
  inputs: tf.NamedTensorInfoMap,
  a: Attrs,
): Info[] {
  const { dy, q, k, v, mask } = inputs as Record<string, Info>;
  const d = dimsOf(q, k, mask, a.sequence);
  const program = new AttentionGradQueryProgram(d, dropsOf(a));
  const rows = program.dispatch[0];
  const stats = backend.makeTensorInfo([rows * 3], "float32");
  const dq = backend.runWebGPUProgram(
    program,
    [dy, q, k, v, mask, stats].map(flat),
    "float32",
    uniformsOf(d, rows, a),
  );
  return [viewAs(dq, q.shape), viewAs(stats, [d.batch, d.heads, d.queries, 3])];
}

function attentionGradKeyValue(
  backend: WebGpuBackend,
  inputs: tf.NamedTensorInfoMap,
  a: Attrs,
): Info[] {
  const { dy, q, k, v, mask, stats } = inputs as Record<string, Info>;
  const d = dimsOf(q, k, mask, a.sequence);
  const program = new AttentionGradKeyValueProgram(d, dropsOf(a));
  const dv = backend.makeTensorInfo([tf.util.sizeFromShape(k.shape)], "float32");
  const dk = backend.runWebGPUProgram(
    program,
    [dy, q, k, v, mask, stats, dv].map(flat),
    "float32",
    uniformsOf(d, program.dispatch[0], a),
  );
  return [viewAs(dk, k.shape), viewAs(dv, k.shape)];
}

let registered = false;

/**
 * Registers {@linkcode ATTENTION_KERNEL} and its two gradient kernels for webgpu;
 * idempotent. Shapes are checked by `scaledDotAttention`, the kernels' only caller.
 */
export function registerWebGpuAttention(): void {
  if (registered) return;
  registered = true;
  const kernels: [string, (b: WebGpuBackend, i: tf.NamedTensorInfoMap, a: Attrs) => unknown][] = [
    [ATTENTION_KERNEL, attention],
    [ATTENTION_GRAD_QUERY_KERNEL, attentionGradQuery],
    [ATTENTION_GRAD_KEY_VALUE_KERNEL, attentionGradKeyValue],
  ];
  for (const [kernelName, run] of kernels) {
    tf.registerKernel({
      kernelName,
      backendName: "webgpu",
      kernelFunc: ({ inputs, backend, attrs }) =>
        run(backend as unknown as WebGpuBackend, inputs, attrs as unknown as Attrs) as
          | Info
          | Info[],
    });
  }
}
