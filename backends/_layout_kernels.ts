/**
 * Data-movement kernels for tfjs-backend-wasm that work on views of its heap: `Slice`,
 * `SplitV`, 2-D `Transpose` (the shapes where tfjs's is slow), `Sum` over leading axes, and
 * an `Identity` that shares its input's buffer instead of copying it. Each falls back to
 * tfjs's own kernel for every case it does not take.
 *
 * Why: tfjs-backend-wasm 4.22's `Slice` (and `SplitV`, built on it) first copies the whole
 * input out of the heap (`readSync`) and then copies the slice out of that copy, so taking
 * 173 rows of a [1536, 4, 128] tensor costs ~1.5 ms instead of ~0.03; its `Transpose` is
 * slow for some 2-D shapes (~6 ms for [6144, 128]); and its `Sum` over a leading axis
 * (the gradient of every bias) transposes first. Profiled in a SIGMA Beauty step, these
 * four took ~0.5 s of 3.1 s (`bench/profile_step.ts --calls Slice,SplitV,Sum,Transpose`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { overrideWasmKernel } from "./_kernels.ts";

type Info = tf.TensorInfo;
type Values = Float32Array | Int32Array;

/** What these kernels need of a tfjs-backend-wasm instance. */
interface WasmHeap {
  makeOutput(shape: number[], dtype: string): Info;
  typedArrayFromHeap(info: Info): Values | Uint8Array;
}

const sizeOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const movable = (dtype: string) => dtype === "float32" || dtype === "int32";

/** Runs shorter than this are copied element by element: `set` on a fresh `subarray`
 * costs more than the copy itself for them (and leaves garbage behind). */
const SHORT_RUN = 64;

function copyRun(src: Values, from: number, dst: Values, to: number, n: number): void {
  if (n < SHORT_RUN) {
    for (let i = 0; i < n; i++) dst[to + i] = src[from + i];
  } else {
    dst.set(src.subarray(from, from + n), to);
  }
}

/**
 * Copies the box `begin`/`size` of `src` (shape `shape`, rank >= 1) into `dst` in
 * row-major order, one {@linkcode copyRun} per contiguous run: the innermost axes the box
 * spans whole are merged into the run.
 */
function copyBox(
  src: Values,
  shape: number[],
  begin: number[],
  size: number[],
  dst: Values,
): void {
  const rank = shape.length;
  const strides = new Array<number>(rank);
  for (let i = rank - 1, s = 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  // Axes outer..rank-1 form one contiguous run of `run` elements per outer index.
  let outer = rank - 1;
  while (outer > 0 && size[outer] === shape[outer]) outer--;
  const run = size[outer] * strides[outer];
  let base = 0;
  for (let i = 0; i < rank; i++) base += begin[i] * strides[i];
  const index = new Array<number>(outer).fill(0); // position among the outer axes
  const total = sizeOf(size.slice(0, outer));
  let out = 0;
  for (let n = 0; n < total; n++) {
    let at = base;
    for (let i = 0; i < outer; i++) at += index[i] * strides[i];
    copyRun(src, at, dst, out, run);
    out += run;
    for (let i = outer - 1; i >= 0; i--) {
      if (++index[i] < size[i]) break;
      index[i] = 0;
    }
  }
}

function slice(heap: WasmHeap, x: Info, begin: number[] | number, size: number[] | number) {
  if (!movable(x.dtype) || x.shape.length === 0) return null;
  const [b, s] = tf.slice_util.parseSliceParams(x as tf.TensorInfo as tf.Tensor, begin, size);
  const out = heap.makeOutput(s, x.dtype); // allocate before taking views: the heap may grow
  if (sizeOf(s) > 0) {
    copyBox(
      heap.typedArrayFromHeap(x) as Values,
      x.shape,
      b,
      s,
      heap.typedArrayFromHeap(out) as Values,
    );
  }
  return out;
}

function splitV(heap: WasmHeap, x: Info, numOrSizeSplits: number[] | number, axis: number) {
  if (!movable(x.dtype)) return null;
  const ax = tf.util.parseAxisParam(axis, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(
    x as tf.TensorInfo as tf.Tensor,
    numOrSizeSplits,
    ax,
  );
  const shapes = sizes.map((n) => x.shape.map((d, i) => (i === ax ? n : d)));
  const outs = shapes.map((shape) => heap.makeOutput(shape, x.dtype));
  const src = heap.typedArrayFromHeap(x) as Values;
  const begin = new Array<number>(x.shape.length).fill(0);
  outs.forEach((out, i) => {
    if (sizeOf(shapes[i]) > 0) {
      copyBox(src, x.shape, begin, shapes[i], heap.typedArrayFromHeap(out) as Values);
    }
    begin[ax] += sizes[i];
  });
  return outs;
}

/** Source columns per tile of the 2-D transpose: 4 rows of 256 floats stay in L1. */
const TILE = 256;

function transpose(heap: WasmHeap, x: Info, perm: number[]) {
  if (!movable(x.dtype) || sizeOf(x.shape) === 0) return null;
  // Size-1 axes move freely: what is left must be a 2-D transpose [m, n] -> [n, m].
  const kept = x.shape.filter((d) => d !== 1);
  const order = perm.filter((i) => x.shape[i] !== 1);
  if (kept.length !== 2 || order[0] < order[1]) return null;
  const [m, n] = kept;
  // tfjs's own kernel is the faster one unless the output rows (m floats) are a multiple
  // of 64: then its column writes keep landing in the same cache sets (measured here:
  // [6144, 128] 6.4 ms with tfjs's, 0.75 ms with this; [12000, 128] 0.87 and 1.6).
  if (m % 64 !== 0) return null;
  const out = heap.makeOutput(perm.map((i) => x.shape[i]), x.dtype);
  const src = heap.typedArrayFromHeap(x) as Values;
  const dst = heap.typedArrayFromHeap(out) as Values;
  // Four source rows at a time (m is a multiple of 64, so of 4), so that every write is a
  // run of four, over column tiles.
  for (let j0 = 0; j0 < n; j0 += TILE) {
    const j1 = Math.min(n, j0 + TILE);
    for (let i = 0; i < m; i += 4) {
      const r0 = i * n, r1 = r0 + n, r2 = r1 + n, r3 = r2 + n;
      for (let j = j0; j < j1; j++) {
        const o = j * m + i;
        dst[o] = src[r0 + j];
        dst[o + 1] = src[r1 + j];
        dst[o + 2] = src[r2 + j];
        dst[o + 3] = src[r3 + j];
      }
    }
  }
  return out;
}

function sumLeading(heap: WasmHeap, x: Info, axis: number | number[], keepDims: boolean) {
  if (x.dtype !== "float32") return null;
  const axes = tf.util.parseAxisParam(axis, x.shape).sort((a, b) => a - b);
  const lead = axes.length;
  // Only a reduction over the leading axes that keeps at least one axis.
  if (lead === 0 || lead >= x.shape.length || axes.some((a, i) => a !== i)) return null;
  const rows = sizeOf(x.shape.slice(0, lead));
  const cols = sizeOf(x.shape.slice(lead));
  const outShape = keepDims ? x.shape.map((d, i) => (i < lead ? 1 : d)) : x.shape.slice(lead);
  const out = heap.makeOutput(outShape, "float32");
  const src = heap.typedArrayFromHeap(x) as Float32Array;
  const dst = heap.typedArrayFromHeap(out) as Float32Array;
  // Row by row into float64 accumulators: sequential reads, and no drift over many rows.
  const acc = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    for (let c = 0; c < cols; c++) acc[c] += src[row + c];
  }
  dst.set(acc);
  return out;
}

/** What the wasm Identity kernel needs: the backend's reference count of a buffer. */
interface SharedBuffers {
  incRef(dataId: unknown): void;
}

/**
 * `Identity` as a second reference to the same buffer, as tfjs-backend-cpu does it. tfjs
 * clones every tensor a custom gradient saves for its backward pass, and tfjs-backend-wasm
 * copies on clone: the fused cross-entropy's saved [699, 12000] probabilities cost 2.3 ms
 * each. Buffers are never written after their kernel made them, so sharing is safe.
 */
function identity(backend: SharedBuffers, x: Info): Info | null {
  if (!movable(x.dtype) && x.dtype !== "bool") return null;
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

let registered = false;

/** Registers the five kernels on wasm (once tfjs-backend-wasm is loaded); idempotent. */
export function registerLayoutKernels(): void {
  if (registered) return;
  registered = true;
  const heapOf = (args: Parameters<tf.KernelFunc>[0]) => args.backend as unknown as WasmHeap;
  const xOf = (args: Parameters<tf.KernelFunc>[0]) => args.inputs.x as Info;
  overrideWasmKernel("Slice", (args) => {
    const { begin, size } = args.attrs as { begin: number[]; size: number[] };
    return slice(heapOf(args), xOf(args), begin, size);
  });
  overrideWasmKernel("SplitV", (args) => {
    const { numOrSizeSplits, axis } = args.attrs as { numOrSizeSplits: number[]; axis: number };
    return splitV(heapOf(args), xOf(args), numOrSizeSplits, axis);
  });
  overrideWasmKernel("Transpose", (args) => {
    return transpose(heapOf(args), xOf(args), (args.attrs as { perm: number[] }).perm);
  });
  overrideWasmKernel("Identity", (args) => {
    return identity(args.backend as unknown as SharedBuffers, xOf(args));
  });
  overrideWasmKernel("Sum", (args) => {
    const { axis, keepDims } = args.attrs as { axis: number[]; keepDims: boolean };
    return sumLeading(heapOf(args), xOf(args), axis, keepDims);
  });
}
