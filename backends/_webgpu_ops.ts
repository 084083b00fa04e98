/**
 * WGSL programs for the fused ops of `lib/nn/fused_ops.ts`, registered for the webgpu
 * backend: the column sum of a bias gradient (one dispatch instead of a Transpose and a
 * Reduce) and the full softmax's cross-entropy over a chunk of logits (one dispatch forward,
 * one backward, instead of about a dozen each).
 *
 * As in `backends/_webgpu_fused.ts`, each program is a tfjs-backend-webgpu `WebGPUProgram`
 * run through the backend's `runWebGPUProgram`: tfjs declares the inputs, the output
 * `result` and the uniforms, and the code here is the body. Row programs find their row
 * from the workgroup's flat index, because tfjs folds a dispatch of more than 65,535
 * workgroups into two or three dimensions. Sums and maxima over a workgroup go through a
 * tree in workgroup memory in a fixed order, so results do not change from run to run.
 *
 * The softmax cross-entropy returns its losses as a second output from the same dispatch,
 * by the trick `_webgpu_fused.ts` documents: the second output is made here, handed to the
 * program as its last input, and declared a second time in the program's code, writable.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  type Info,
  int,
  viewAs,
  type WebGpuBackend,
  type WebGpuProgram,
} from "./_webgpu_program.ts";
import {
  COLUMN_SUM_KERNEL,
  EMBEDDING_GRAD_KERNEL,
  SOFTMAX_XENT_GRAD_KERNEL,
  SOFTMAX_XENT_KERNEL,
} from "../lib/nn/fused_ops.ts";

/** The flat index of this workgroup, whichever way tfjs folded the dispatch. */
const WORKGROUP_INDEX_WGSL = `
  fn opsWorkgroupIndex() -> i32 {
    return i32((workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x +
      workgroupId.x);
  }`;

// ------------------------------------------------------------------------ column sum

/** Columns per workgroup of {@linkcode ColumnSumProgram}: adjacent threads, adjacent columns. */
const SUM_COLUMNS = 16;
/** Threads per column of {@linkcode ColumnSumProgram}, each summing every 16th row. */
const SUM_LANES = 16;

/**
 * `x [R, C] -> [C]`: each workgroup sums 16 columns, 16 threads a column (thread `l` adds
 * rows `l, l + 16, ...`), then a tree over the 16 partial sums.
 */
class ColumnSumProgram implements WebGpuProgram {
  variableNames = ["x"];
  outputShape: number[];
  shaderKey = `sigmaColumnSum_${SUM_COLUMNS}_${SUM_LANES}`;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [SUM_COLUMNS * SUM_LANES, 1, 1];
  uniforms = "rows : i32, cols : i32,";

  constructor(cols: number) {
    this.outputShape = [cols];
    this.dispatch = [Math.ceil(cols / SUM_COLUMNS), 1, 1];
  }

  getUserCode(): string {
    return `
  ${WORKGROUP_INDEX_WGSL}
  var<workgroup> opsPartial : array<f32, ${SUM_COLUMNS * SUM_LANES}>;
  fn main(index : i32) {
    let cols = uniforms.cols;
    let tid = i32(localIndex);
    let lane = tid / ${SUM_COLUMNS};
    let col = opsWorkgroupIndex() * ${SUM_COLUMNS} + tid % ${SUM_COLUMNS};
    var acc = 0.0;
    if (col < cols) {
      for (var r = lane; r < uniforms.rows; r += ${SUM_LANES}) {
        acc += x[r * cols + col];
      }
    }
    opsPartial[tid] = acc;
    workgroupBarrier();
    for (var s = ${SUM_LANES / 2}; s > 0; s = s / 2) {
      if (lane < s) {
        opsPartial[tid] = opsPartial[tid] + opsPartial[tid + s * ${SUM_COLUMNS}];
      }
      workgroupBarrier();
    }
    if (lane == 0 && col < cols) {
      result[col] = opsPartial[tid];
    }
  }`;
  }
}

function columnSumKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { x } = args.inputs as { x: Info };
  const backend = args.backend as unknown as WebGpuBackend;
  if (x.shape.length !== 2) throw new RangeError(`column sum needs [R, C], got [${x.shape}]`);
  const [rows, cols] = x.shape;
  return backend.runWebGPUProgram(new ColumnSumProgram(cols), [x], "float32", [
    int(rows),
    int(cols),
  ]);
}

// ------------------------------------------------------------- softmax cross-entropy

/** Threads per row of {@linkcode SoftmaxXentProgram}: a power of two in [32, 256]. */
function rowWorkgroup(cols: number): number {
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(cols))));
}

/**
 * Per row of `logits [c, M]`: its max `m` and `s = Σ exp(x - m)` over columns `first..`,
 * then `prob = exp(x - m) / s` (0 before `first`) into the output and
 * `loss = m + log(s) - x[target]` into the second output (the input `outExtra`). One
 * workgroup per row; the row is read three times (max, sum, write) rather than kept, so
 * that any catalogue size fits.
 */
class SoftmaxXentProgram implements WebGpuProgram {
  variableNames = ["logits", "targets", "outExtra"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = "rows : i32, cols : i32, start : i32, first : i32,";

  constructor(rows: number, cols: number) {
    const workgroup = rowWorkgroup(cols);
    this.outputShape = [rows, cols];
    this.workgroupSize = [workgroup, 1, 1];
    this.dispatch = [rows, 1, 1];
    this.shaderKey = `sigmaSoftmaxXent_${workgroup}`;
  }

  getUserCode(): string {
    const workgroup = this.workgroupSize[0];
    return `
  @group(0) @binding(3) var<storage, read_write> opsLossOut : array<f32>;
  ${WORKGROUP_INDEX_WGSL}
  var<workgroup> opsRed : array<f32, ${workgroup}>;
  // op 0: sum, op 1: max; every thread gets the result. Uniform control flow only.
  fn opsReduce(v : f32, op : i32) -> f32 {
    let tid = localIndex;
    opsRed[tid] = v;
    workgroupBarrier();
    for (var s = ${workgroup / 2}u; s > 0u; s = s / 2u) {
      if (tid < s) {
        let a = opsRed[tid];
        let b = opsRed[tid + s];
        opsRed[tid] = select(a + b, max(a, b), op == 1);
      }
      workgroupBarrier();
    }
    let total = opsRed[0];
    workgroupBarrier(); // every thread has read it before opsRed is written again
    return total;
  }
  fn main(index : i32) {
    let rows = uniforms.rows;
    let cols = uniforms.cols;
    let first = uniforms.first;
    let row = opsWorkgroupIndex();
    // Workgroups of a folded dispatch past the last row redo the last row (barriers) and
    // write nothing.
    let base = min(row, rows - 1) * cols;
    let tid = i32(localIndex);
    var m = -3.402823e38;
    for (var c = first + tid; c < cols; c += ${workgroup}) {
      m = max(m, logits[base + c]);
    }
    m = opsReduce(m, 1);
    var s = 0.0;
    for (var c = first + tid; c < cols; c += ${workgroup}) {
      s += exp(logits[base + c] - m);
    }
    s = opsReduce(s, 0);
    if (row < rows) {
      let inverse = 1.0 / s;
      for (var c = tid; c < cols; c += ${workgroup}) {
        result[base + c] = select(exp(logits[base + c] - m) * inverse, 0.0, c < first);
      }
      if (tid == 0) {
        // Not \`target\`: a reserved word in WGSL (the shader would not compile, silently).
        let targetCol = targets[uniforms.start + row];
        // A target outside first..cols-1 gives NaN, not another row's logit.
        let inside = targetCol >= first && targetCol < cols;
        let picked = logits[base + select(first, targetCol, inside)];
        opsLossOut[row] = select(bitcast<f32>(0x7fc00000u), (m - picked) + log(s), inside);
      }
    }
  }`;
  }
}

/** `g = (prob - onehot(target)) dy` per element of `prob [c, M]`. */
class SoftmaxXentGradProgram implements WebGpuProgram {
  variableNames = ["prob", "targets", "dy"];
  outputShape: number[];
  shaderKey = "sigmaSoftmaxXentGrad";
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  uniforms = "cols : i32, start : i32,";
  size = true;

  constructor(size: number) {
    this.outputShape = [size];
    this.dispatch = [Math.ceil(size / 128), 1, 1];
  }

  getUserCode(): string {
    // tfjs's getGlobalIndex() (the index) accounts for a folded dispatch.
    return `
  fn main(index : i32) {
    if (index < uniforms.size) {
      let row = index / uniforms.cols;
      let col = index - row * uniforms.cols;
      let targetCol = targets[uniforms.start + row];
      let onehot = select(0.0, 1.0, col == targetCol);
      result[index] = (prob[index] - onehot) * dy[uniforms.start + row];
    }
  }`;
  }
}

function softmaxXentKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { logits, targets } = args.inputs as { logits: Info; targets: Info };
  const { start, first } = args.attrs as unknown as { start: number; first: number };
  const backend = args.backend as unknown as WebGpuBackend;
  const [rows, cols] = logits.shape;
  const loss = backend.makeTensorInfo([rows], "float32"); // written, not read
  const prob = backend.runWebGPUProgram(
    new SoftmaxXentProgram(rows, cols),
    [logits, targets, loss],
    "float32",
    [int(rows), int(cols), int(start), int(first)],
  );
  return [prob, loss];
}

function softmaxXentGradKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { prob, targets, dy } = args.inputs as { prob: Info; targets: Info; dy: Info };
  const { start } = args.attrs as unknown as { start: number };
  const backend = args.backend as unknown as WebGpuBackend;
  const [rows, cols] = prob.shape;
  const g = backend.runWebGPUProgram(
    new SoftmaxXentGradProgram(rows * cols),
    [viewAs(prob, [rows * cols]), targets, dy],
    "float32",
    [int(cols), int(start)],
  );
  return viewAs(g, [rows, cols]);
}

// ------------------------------------------------------------------ embedding gradient

/** Output rows per workgroup of {@linkcode EmbeddingGradProgram}. */
const EMBEDDING_ROWS = 16;

/**
 * `(dy [M, d], ids [M]) -> [rows, d]`: each workgroup owns 16 output rows, each thread
 * some of their columns. A thread zeroes its entries, then walks all M ids in order and
 * adds `dy[m]`'s entries where `ids[m]` is one of the workgroup's rows. Every output
 * element has one writer, so there is no race and no separate zero fill; each id is read
 * by every workgroup (`rows / 16 * M` reads, the same address across a workgroup).
 */
class EmbeddingGradProgram implements WebGpuProgram {
  variableNames = ["dy", "ids"];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = "rows : i32, cols : i32, count : i32,";

  constructor(rows: number, cols: number) {
    const workgroup = rowWorkgroup(cols);
    this.outputShape = [rows, cols];
    this.workgroupSize = [workgroup, 1, 1];
    this.dispatch = [Math.ceil(rows / EMBEDDING_ROWS), 1, 1];
    this.shaderKey = `sigmaEmbeddingGrad_${workgroup}_${EMBEDDING_ROWS}`;
  }

  getUserCode(): string {
    const workgroup = this.workgroupSize[0];
    return `
  ${WORKGROUP_INDEX_WGSL}
  fn main(index : i32) {
    let rows = uniforms.rows;
    let cols = uniforms.cols;
    let first = opsWorkgroupIndex() * ${EMBEDDING_ROWS};
    let last = min(first + ${EMBEDDING_ROWS}, rows); // exclusive
    let tid = i32(localIndex);
    for (var r = first; r < last; r++) {
      for (var c = tid; c < cols; c += ${workgroup}) {
        result[r * cols + c] = 0.0;
      }
    }
    for (var m = 0; m < uniforms.count; m++) {
      let id = ids[m];
      if (id >= first && id < last) {
        for (var c = tid; c < cols; c += ${workgroup}) {
          result[id * cols + c] = result[id * cols + c] + dy[m * cols + c];
        }
      }
    }
  }`;
  }
}

function embeddingGradKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { dy, ids } = args.inputs as { dy: Info; ids: Info };
  const { rows } = args.attrs as unknown as { rows: number };
  const backend = args.backend as unknown as WebGpuBackend;
  const [count, cols] = dy.shape;
  return backend.runWebGPUProgram(new EmbeddingGradProgram(rows, cols), [dy, ids], "float32", [
    int(rows),
    int(cols),
    int(count),
  ]);
}

let registered = false;

/**
 * Registers the fused ops of `lib/nn/fused_ops.ts` for the webgpu backend; idempotent.
 * Called by `backends/_select.ts` on load. Needs no GPU: the programs compile when first
 * run.
 */
export function registerWebGpuOps(): void {
  if (registered) return;
  registered = true;
  const kernels: [string, tf.KernelFunc][] = [
    [COLUMN_SUM_KERNEL, columnSumKernel as tf.KernelFunc],
    [SOFTMAX_XENT_KERNEL, softmaxXentKernel as tf.KernelFunc],
    [SOFTMAX_XENT_GRAD_KERNEL, softmaxXentGradKernel as tf.KernelFunc],
    [EMBEDDING_GRAD_KERNEL, embeddingGradKernel as tf.KernelFunc],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc });
  }
}
