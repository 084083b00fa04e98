/**
 * WGSL programs for the fused attention of `lib/nn/attention.ts`, registered for the webgpu
 * backend: `softmax(q kᵀ · scale + mask) v` in one dispatch forward and two backward, where
 * tfjs's ops take 5 and 9. See that module for the maths and why two backward kernels.
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
import {
  ATTENTION_GRAD_KEY_VALUE_KERNEL,
  ATTENTION_GRAD_QUERY_KERNEL,
  ATTENTION_KERNEL,
} from "../lib/nn/attention.ts";

type Info = tf.TensorInfo;

/** A uniform value a program declares in its `uniforms` string, in the same order. */
interface ProgramUniform {
  type: "int32" | "float32";
  data: number[];
}

/** What tfjs-backend-webgpu 4.22 reads of a program (`webgpu_program.ts`). */
interface WebGpuProgram {
  /** Names of the input bindings, in order: binding `1 + i` (the output is binding 0). */
  variableNames: string[];
  outputShape: number[];
  /** Identifies the generated code; tfjs appends the inputs' ranks and dtypes. */
  shaderKey: string;
  /** Output axes per dispatch dimension; only `x` here, so tfjs may fold the dispatch. */
  dispatchLayout: { x: number[] };
  /** Workgroups per dimension; tfjs reshapes an `x` over 65,535 into `x * y (* z)`. */
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  /** Extra members of the `Uniforms` struct. */
  uniforms?: string;
  getUserCode(): string;
}

/** What this file uses of tfjs-backend-webgpu's backend object. */
interface WebGpuBackend {
  runWebGPUProgram(
    program: WebGpuProgram,
    inputs: Info[],
    outputDtype: tf.DataType,
    uniforms?: ProgramUniform[],
  ): Info;
  makeTensorInfo(shape: number[], dtype: tf.DataType): Info;
}

/** Threads per workgroup (one row each); a power of two, for the reduction tree. */
export const WORKGROUP = 64;

/** `t`'s data under another shape of the same size (a view, as tfjs's Reshape returns). */
const viewAs = (t: Info, shape: number[]): Info => ({ dataId: t.dataId, shape, dtype: t.dtype });

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

/** The sizes of one attention call, from `q` `[B, h, Lq, dh]`, `k` and `mask`. */
interface Dims {
  batch: number;
  heads: number;
  queries: number;
  keys: number;
  depth: number;
  /** Mask elements between batches (0 when the mask is shared) and between query rows. */
  maskBatchStride: number;
  maskRowStride: number;
}

function dimsOf(q: Info, k: Info, mask: Info): Dims {
  const [batch, heads, queries, depth] = q.shape;
  const keys = k.shape[2];
  const [maskBatch, , maskRows] = mask.shape;
  return {
    batch,
    heads,
    queries,
    keys,
    depth,
    maskBatchStride: maskBatch === 1 ? 0 : maskRows * keys,
    maskRowStride: maskRows === 1 ? 0 : keys,
  };
}

/** The uniforms every program here declares ({@linkcode UNIFORMS}), in order. */
function uniformsOf(d: Dims, rows: number, scale: number): ProgramUniform[] {
  return [
    ...[
      rows,
      d.queries,
      d.keys,
      d.depth,
      d.heads,
      d.maskBatchStride,
      d.maskRowStride,
    ].map((x): ProgramUniform => ({ type: "int32", data: [x] })),
    { type: "float32", data: [scale] },
  ];
}

const UNIFORMS = "rows : i32, queries : i32, keys : i32, depth : i32, heads : i32, " +
  "maskBatchStride : i32, maskRowStride : i32, scale : f32,";

// ------------------------------------------------------------------------ shared WGSL

/**
 * The flat index of this workgroup (tfjs declares `workgroupId` and `numWorkgroups`), and
 * a reduction over the workgroup: the max (`takeMax`) or the sum of every thread's `v`, by
 * a tree in workgroup memory; every thread gets the result. Call it from uniform control
 * flow only (it has barriers).
 */
const SHARED_WGSL = `
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
  }`;

/**
 * The start of a per-query-row program: `row` (clamped) and whether it is real, the offsets
 * of its key block and mask row, and the query row copied into `sigmaQ`.
 */
const QUERY_ROW_WGSL = `
    let rows = uniforms.rows;
    let keys = uniforms.keys;
    let depth = uniforms.depth;
    let tid = i32(localIndex);
    let r = sigmaWorkgroupIndex();
    let row = min(r, rows - 1); // [B, h, Lq] flattened
    let bh = row / uniforms.queries;
    let i = row - bh * uniforms.queries;
    let maskBase = (bh / uniforms.heads) * uniforms.maskBatchStride + i * uniforms.maskRowStride;
    let keyBase = bh * keys * depth;
    for (var d = tid; d < depth; d += SIGMA_W) {
      sigmaQ[d] = q[row * depth + d];
    }`;

// -------------------------------------------------------------------------- programs

/** Shared fields of the three programs: one workgroup per row, a flat dispatch. */
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

  constructor(name: string, rows: number, outputSize: number, length: number, depth: number) {
    this.outputShape = [outputSize];
    this.dispatch = [rows, 1, 1];
    this.lengthCap = capacity(length);
    this.depthCap = capacity(depth);
    this.shaderKey = `${name}_${WORKGROUP}_${this.lengthCap}_${this.depthCap}`;
  }

  abstract getUserCode(): string;
}

/** `out = softmax(q kᵀ · scale + mask) v`, one workgroup per query row. */
class AttentionProgram extends RowProgram {
  variableNames = ["q", "k", "v", "mask"];

  constructor(d: Dims) {
    const rows = d.batch * d.heads * d.queries;
    super("sigmaAttention", rows, rows * d.depth, d.keys, d.depth);
  }

  getUserCode(): string {
    return `
  ${SHARED_WGSL}
  var<workgroup> sigmaQ : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaS : array<f32, ${this.lengthCap}>;
  fn main(index : i32) {
    ${QUERY_ROW_WGSL}
    workgroupBarrier();
    // Scores, each in tfjs's order: the dot product, times scale, plus the mask.
    var localMax = -3.402823e+38;
    for (var j = tid; j < keys; j += SIGMA_W) {
      var acc = 0.0;
      for (var d = 0; d < depth; d++) {
        acc += sigmaQ[d] * k[keyBase + j * depth + d];
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
      sigmaS[j] = sigmaS[j] / rowSum;
    }
    workgroupBarrier();
    if (r < rows) {
      for (var d = tid; d < depth; d += SIGMA_W) {
        var acc = 0.0;
        for (var j = 0; j < keys; j++) {
          acc += sigmaS[j] * v[keyBase + j * depth + d];
        }
        result[row * depth + d] = acc;
      }
    }
  }`;
  }
}

/**
 * `dq = scale · Σ_j p_j (dp_j - D) k_j` with `dp_j = dy · v_j`, `D = Σ_j p_j dp_j`, one
 * workgroup per query row; the row's max, sum of exponentials and D go to the second
 * output (the input `extraOut`, `[rows, 3]`).
 */
class AttentionGradQueryProgram extends RowProgram {
  variableNames = ["dy", "q", "k", "v", "mask", "extraOut"];

  constructor(d: Dims) {
    const rows = d.batch * d.heads * d.queries;
    super("sigmaAttentionGradQuery", rows, rows * d.depth, d.keys, d.depth);
  }

  getUserCode(): string {
    return `
  @group(0) @binding(${this.variableNames.length}) var<storage, read_write> sigmaStats :
    array<f32>;
  ${SHARED_WGSL}
  var<workgroup> sigmaQ : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaDy : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaS : array<f32, ${this.lengthCap}>;
  var<workgroup> sigmaDp : array<f32, ${this.lengthCap}>;
  fn main(index : i32) {
    ${QUERY_ROW_WGSL}
    for (var d = tid; d < depth; d += SIGMA_W) {
      sigmaDy[d] = dy[row * depth + d];
    }
    workgroupBarrier();
    // The forward pass's scores, computed the same way, and dp_j = dy · v_j.
    var localMax = -3.402823e+38;
    for (var j = tid; j < keys; j += SIGMA_W) {
      var acc = 0.0;
      var accDp = 0.0;
      for (var d = 0; d < depth; d++) {
        acc += sigmaQ[d] * k[keyBase + j * depth + d];
        accDp += sigmaDy[d] * v[keyBase + j * depth + d];
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
      sigmaS[j] = p;
      localD += p * sigmaDp[j];
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
          acc += sigmaS[j] * k[keyBase + j * depth + d];
        }
        result[row * depth + d] = acc * uniforms.scale;
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
 * `dk_j = scale · Σ_i p_ij (dp_ij - D_i) q_i` (the output) and `dv_j = Σ_i p_ij dy_i` (the
 * input `extraOut`, written), one workgroup per key row j, each `p_ij` recomputed from
 * the score and the row statistics in `stats`. The score is computed as in the other two
 * programs (same operands, same order), so `p_ij` is the one they used.
 */
class AttentionGradKeyValueProgram extends RowProgram {
  variableNames = ["dy", "q", "k", "v", "mask", "stats", "extraOut"];

  constructor(d: Dims) {
    const rows = d.batch * d.heads * d.keys;
    super("sigmaAttentionGradKeyValue", rows, rows * d.depth, d.queries, d.depth);
  }

  getUserCode(): string {
    return `
  @group(0) @binding(${this.variableNames.length}) var<storage, read_write> sigmaDv :
    array<f32>;
  ${SHARED_WGSL}
  var<workgroup> sigmaK : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaV : array<f32, ${this.depthCap}>;
  var<workgroup> sigmaP : array<f32, ${this.lengthCap}>;
  var<workgroup> sigmaDs : array<f32, ${this.lengthCap}>;
  fn main(index : i32) {
    let rows = uniforms.rows;
    let queries = uniforms.queries;
    let depth = uniforms.depth;
    let tid = i32(localIndex);
    let r = sigmaWorkgroupIndex();
    let row = min(r, rows - 1); // [B, h, L] flattened
    let bh = row / uniforms.keys;
    let j = row - bh * uniforms.keys;
    let maskBase = (bh / uniforms.heads) * uniforms.maskBatchStride + j;
    let queryBase = bh * queries * depth;
    for (var d = tid; d < depth; d += SIGMA_W) {
      sigmaK[d] = k[row * depth + d];
      sigmaV[d] = v[row * depth + d];
    }
    workgroupBarrier();
    for (var i = tid; i < queries; i += SIGMA_W) {
      var acc = 0.0;
      var accDp = 0.0;
      for (var d = 0; d < depth; d++) {
        acc += q[queryBase + i * depth + d] * sigmaK[d];
        accDp += dy[queryBase + i * depth + d] * sigmaV[d];
      }
      let s = acc * uniforms.scale + mask[maskBase + i * uniforms.maskRowStride];
      let st = 3 * (bh * queries + i);
      let p = exp(s - stats[st]) / stats[st + 1];
      sigmaP[i] = p;
      sigmaDs[i] = p * (accDp - stats[st + 2]);
    }
    workgroupBarrier();
    if (r < rows) {
      for (var d = tid; d < depth; d += SIGMA_W) {
        var accK = 0.0;
        var accV = 0.0;
        for (var i = 0; i < queries; i++) {
          accK += sigmaDs[i] * q[queryBase + i * depth + d];
          accV += sigmaP[i] * dy[queryBase + i * depth + d];
        }
        result[row * depth + d] = accK * uniforms.scale;
        sigmaDv[row * depth + d] = accV;
      }
    }
  }`;
  }
}

// --------------------------------------------------------------------------- kernels

function scaleOf(attrs: unknown): number {
  return (attrs as { scale: number }).scale;
}

function attention(backend: WebGpuBackend, inputs: tf.NamedTensorInfoMap, scale: number) {
  const { q, k, v, mask } = inputs as Record<string, Info>;
  const d = dimsOf(q, k, mask);
  const program = new AttentionProgram(d);
  const out = backend.runWebGPUProgram(
    program,
    [q, k, v, mask].map(flat),
    "float32",
    uniformsOf(d, program.dispatch[0], scale),
  );
  return viewAs(out, q.shape); // [B, h, Lq, dh]
}

function attentionGradQuery(
  backend: WebGpuBackend,
  inputs: tf.NamedTensorInfoMap,
  scale: number,
): Info[] {
  const { dy, q, k, v, mask } = inputs as Record<string, Info>;
  const d = dimsOf(q, k, mask);
  const program = new AttentionGradQueryProgram(d);
  const rows = program.dispatch[0];
  const stats = backend.makeTensorInfo([rows * 3], "float32");
  const dq = backend.runWebGPUProgram(
    program,
    [dy, q, k, v, mask, stats].map(flat),
    "float32",
    uniformsOf(d, rows, scale),
  );
  return [viewAs(dq, q.shape), viewAs(stats, [...q.shape.slice(0, 3), 3])];
}

function attentionGradKeyValue(
  backend: WebGpuBackend,
  inputs: tf.NamedTensorInfoMap,
  scale: number,
): Info[] {
  const { dy, q, k, v, mask, stats } = inputs as Record<string, Info>;
  const d = dimsOf(q, k, mask);
  const program = new AttentionGradKeyValueProgram(d);
  const dv = backend.makeTensorInfo([k.shape.reduce((a, b) => a * b, 1)], "float32");
  const dk = backend.runWebGPUProgram(
    program,
    [dy, q, k, v, mask, stats, dv].map(flat),
    "float32",
    uniformsOf(d, program.dispatch[0], scale),
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
  const kernels: [string, (b: WebGpuBackend, i: tf.NamedTensorInfoMap, s: number) => unknown][] = [
    [ATTENTION_KERNEL, attention],
    [ATTENTION_GRAD_QUERY_KERNEL, attentionGradQuery],
    [ATTENTION_GRAD_KEY_VALUE_KERNEL, attentionGradKeyValue],
  ];
  for (const [kernelName, run] of kernels) {
    tf.registerKernel({
      kernelName,
      backendName: "webgpu",
      kernelFunc: ({ inputs, backend, attrs }) =>
        run(backend as unknown as WebGpuBackend, inputs, scaleOf(attrs)) as Info | Info[],
    });
  }
}
