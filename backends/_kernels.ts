/**
 * Kernels this project provides for the cpu and wasm backends, in JavaScript over the
 * backends' own memory (for wasm: views of its heap, as tfjs-backend-wasm's own Cast
 * kernel does), so no data is copied in or out.
 *
 * - {@linkcode MAX_OVER_INTERESTS} and {@linkcode ROUTE_TO_INTERESTS}: see
 *   `lib/nn/interest_kernels.ts`; one pass each instead of several tfjs ops.
 * - {@linkcode RANK_OF_TARGET_KERNEL}: see `lib/eval/rank.ts`; one pass per row of scores
 *   instead of a broadcasting `GreaterEqual`, which tfjs-backend-wasm runs element by
 *   element with index arithmetic (~0.3 s for 256 x 12,102 scores).
 * - `BatchMatMul` on wasm, when there is a batch dimension > 1 (attention): tfjs-backend-wasm
 *   4.22 sends those to a scalar loop (~3 GFLOP/s); `wasm/bmm.c`, compiled to WebAssembly
 *   SIMD with fused multiply-adds and working directly on tfjs's (shared) heap, does them
 *   several times faster. 2-D products stay on tfjs's XNNPACK path. With a native BLAS
 *   switched on (`_blas.ts`), large products of either kind go to it first.
 * - `GatherV2` on wasm, for whole rows (axis 0, the embedding lookups): tfjs-backend-wasm
 *   4.22 copies element by element, ~9 ms for 2,000 rows of 128; a row copy is ~0.1 ms. Also
 *   along a batch axis (`batchDims` = `axis`), where its kernel returns wrong int32 values.
 *   Other gathers go to tfjs's kernel. Indices are checked: out of range is a RangeError
 *   naming the index, not a read of arbitrary memory.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { MAX_OVER_INTERESTS, ROUTE_TO_INTERESTS } from "../lib/nn/interest_kernels.ts";
import { RANK_OF_TARGET_KERNEL } from "../lib/eval/rank.ts";
import { DROPOUT_KERNEL, maskWithThreshold as dropoutMaskOf } from "../lib/nn/dropout.ts";
import { BMM_SINGLE_WASM_BASE64, BMM_WASM_BASE64 } from "./wasm/_bmm_wasm.ts";
import { matMulDims } from "./_matmul_dims.ts";

type TypedArray = Float32Array | Int32Array | Uint8Array;
type Info = tf.TensorInfo;

/** Reads and allocates tensor memory on one backend. */
export interface Memory {
  /** New outputs; allocate every output before taking views (wasm's heap may grow). */
  alloc(shape: number[], dtype: "float32" | "int32"): Info;
  view(info: Info): TypedArray;
}

/** How to allocate and view tensor memory on the cpu or wasm backend `backend`. */
export function memoryOf(backendName: "cpu" | "wasm", backend: unknown): Memory {
  if (backendName === "wasm") {
    const b = backend as {
      makeOutput(shape: number[], dtype: string): Info;
      typedArrayFromHeap(info: Info): TypedArray;
    };
    return {
      alloc: (shape, dtype) => b.makeOutput(shape, dtype),
      view: (i) => b.typedArrayFromHeap(i),
    };
  }
  const b = backend as {
    makeTensorInfo(shape: number[], dtype: string, values?: TypedArray): Info;
    data: { get(id: unknown): { values: TypedArray } };
  };
  return {
    alloc: (shape, dtype) =>
      b.makeTensorInfo(
        shape,
        dtype,
        dtype === "int32"
          ? new Int32Array(shape.reduce((a, x) => a * x, 1))
          : new Float32Array(shape.reduce((a, x) => a * x, 1)),
      ),
    view: (i) => b.data.get(i.dataId).values,
  };
}

function maxOverInterests(memory: Memory, x: Info): Info[] {
  const [k, m] = x.shape;
  const best = memory.alloc([m], "float32");
  const winner = memory.alloc([m], "int32");
  const xs = memory.view(x);
  const bs = memory.view(best);
  const ws = memory.view(winner);
  bs.set(xs.subarray(0, m));
  ws.fill(0);
  for (let j = 1; j < k; j++) {
    const offset = j * m;
    for (let i = 0; i < m; i++) {
      const v = xs[offset + i];
      if (v > bs[i]) { // strict: the first row keeps ties, as tf.argMax does
        bs[i] = v;
        ws[i] = j;
      }
    }
  }
  return [best, winner];
}

function routeToInterests(memory: Memory, g: Info, winner: Info, k: number): Info {
  const m = g.shape[0];
  const out = memory.alloc([k, m], "float32");
  const gs = memory.view(g);
  const ws = memory.view(winner);
  const os = memory.view(out);
  os.fill(0);
  for (let i = 0; i < m; i++) {
    const j = ws[i];
    if (j >= 0 && j < k) os[j * m + i] = gs[i];
  }
  return out;
}

function rankOfTarget(memory: Memory, scores: Info, allowed: Info, targetIndex: Info): Info[] {
  const [rows, width] = scores.shape;
  const ranks = memory.alloc([rows], "int32");
  const nans = memory.alloc([rows], "int32");
  const xs = memory.view(scores);
  const as = memory.view(allowed);
  const ts = memory.view(targetIndex);
  const rs = memory.view(ranks);
  const ns = memory.view(nans);
  for (let r = 0; r < rows; r++) {
    const base = r * width;
    const target = xs[ts[r]];
    let above = 0;
    let nan = 0;
    for (let j = base; j < base + width; j++) {
      const v = xs[j];
      if (v !== v) nan++;
      else if (v >= target && as[j] !== 0) above++;
    }
    rs[r] = above - 1; // the target competes with itself
    ns[r] = nan;
  }
  return [ranks, nans];
}

/**
 * Whole-row gather: along `axis` = `batchDims` (0: the embedding lookups; 1 with a batch
 * axis: picking each row's own columns, where tfjs-backend-wasm 4.22 returns wrong int32
 * values); returns null for any other kind of call.
 */
function gatherRows(memory: Memory, x: Info, indices: Info, axis: number, batchDims: number) {
  if (axis !== batchDims || indices.dtype !== "int32") return null;
  if (x.dtype !== "float32" && x.dtype !== "int32") return null;
  const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  if (
    batchDims > 0 && x.shape.slice(0, batchDims).join() !== indices.shape.slice(0, batchDims).join()
  ) {
    return null;
  }
  const rows = x.shape[axis];
  const width = size(x.shape.slice(axis + 1));
  const picks = size(indices.shape.slice(batchDims)); // indices per batch entry
  const out = memory.alloc(
    [...x.shape.slice(0, axis), ...indices.shape.slice(batchDims), ...x.shape.slice(axis + 1)],
    x.dtype,
  );
  const xs = memory.view(x);
  const is = memory.view(indices);
  const os = memory.view(out);
  for (let r = 0; r < is.length; r++) {
    const row = is[r];
    if (row < 0 || row >= rows) {
      throw new RangeError(`gather: index ${row} at position ${r} is outside [0, ${rows})`);
    }
    const from = (Math.floor(r / picks) * rows + row) * width; // this batch entry's row
    if (width === 1) os[r] = xs[from];
    else os.set(xs.subarray(from, from + width), r * width);
  }
  return out;
}

/** What the bmm kernel needs of a tfjs-backend-wasm instance. */
export interface WasmBackendInternals {
  wasm: {
    /** The heap of tfjs's threaded build. */
    wasmMemory?: WebAssembly.Memory;
    /** The single-threaded build's exports, its heap among them. */
    asm?: { memory?: WebAssembly.Memory };
    _malloc(bytes: number): number;
    _free(ptr: number): void;
  };
  dataIdMap: { get(id: unknown): { memoryOffset: number } };
  makeOutput(shape: number[], dtype: string): Info;
}

/** bmm.wasm's exports bound to one heap (see bmm.c for each), and its scratch buffer. */
export interface Bmm {
  run: (...args: number[]) => void;
  gruForward: (...args: number[]) => void;
  gruBackward: (...args: number[]) => void;
  gruForwardStep: (...args: number[]) => void;
  gruBackwardStep: (...args: number[]) => void;
  gruScratchFloats: (rows: number, d: number, backward: number) => number;
  layerNorm: (...args: number[]) => void;
  broadcastBinary: (...args: number[]) => void;
  gelu: (...args: number[]) => void;
  layerNormGrad: (...args: number[]) => void;
  philoxDropout: (...args: number[]) => void;
  maxOverRows: (...args: number[]) => void;
  routeToRows: (...args: number[]) => void;
  softmaxXent: (...args: number[]) => void;
  softmaxXentGrad: (...args: number[]) => void;
  int8TopK: (...args: number[]) => void;
  scratch: number;
  scratchFloats: number;
}

let bmmModule: WebAssembly.Module | null = null;
let bmmSingleModule: WebAssembly.Module | null = null;

function moduleOf(base64: string): WebAssembly.Module {
  return new WebAssembly.Module(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)));
}
const bmmInstances = new WeakMap<object, Bmm | null>();

/**
 * The bmm kernel bound to `backend`'s heap; null when the heap cannot be reached. tfjs's
 * threaded build exposes its heap as a shared WebAssembly.Memory (`wasmMemory`), which
 * bmm.wasm imports; the single-threaded one (`--threads 1`, and `serve`) keeps an ordinary
 * memory among its exports, which bmm_single.wasm (the same code) imports. Until
 * 2026-12-07 only the first was bound, so one-thread runs had none of these kernels.
 */
export function bmmFor(backend: WasmBackendInternals): Bmm | null {
  if (bmmInstances.has(backend)) return bmmInstances.get(backend)!;
  let bmm: Bmm | null = null;
  const shared = backend.wasm.wasmMemory;
  const memory = shared ?? backend.wasm.asm?.memory;
  if (memory instanceof WebAssembly.Memory) {
    const module = memory.buffer instanceof SharedArrayBuffer
      ? bmmModule ??= moduleOf(BMM_WASM_BASE64)
      : bmmSingleModule ??= moduleOf(BMM_SINGLE_WASM_BASE64);
    const instance = new WebAssembly.Instance(module, { env: { memory } });
    const e = instance.exports;
    bmm = {
      run: e.bmm as Bmm["run"],
      gruForward: e.gru_forward as Bmm["gruForward"],
      gruBackward: e.gru_backward as Bmm["gruBackward"],
      gruForwardStep: e.gru_forward_step as Bmm["gruForwardStep"],
      gruBackwardStep: e.gru_backward_step as Bmm["gruBackwardStep"],
      gruScratchFloats: e.gru_scratch_floats as Bmm["gruScratchFloats"],
      layerNorm: e.layer_norm as Bmm["layerNorm"],
      broadcastBinary: e.broadcast_binary as Bmm["broadcastBinary"],
      gelu: e.gelu as Bmm["gelu"],
      layerNormGrad: e.layer_norm_grad as Bmm["layerNormGrad"],
      philoxDropout: e.philox_dropout as Bmm["philoxDropout"],
      maxOverRows: e.max_over_rows as Bmm["maxOverRows"],
      routeToRows: e.route_to_rows as Bmm["routeToRows"],
      softmaxXent: e.softmax_xent as Bmm["softmaxXent"],
      softmaxXentGrad: e.softmax_xent_grad as Bmm["softmaxXentGrad"],
      int8TopK: e.int8_top_k as Bmm["int8TopK"],
      scratch: 0,
      scratchFloats: 0,
    };
  }
  bmmInstances.set(backend, bmm);
  return bmm;
}

/** Whether `BatchMatMul` on the active wasm backend runs bmm.wasm (for tests and logs). */
export function bmmActive(): boolean {
  const backend = tf.backend() as unknown as WasmBackendInternals;
  return tf.getBackend() === "wasm" && bmmFor(backend) !== null;
}

/** `BatchMatMul` through bmm.wasm; null when the call is not one it takes. */
function batchMatMul(
  backend: WasmBackendInternals,
  a: Info,
  b: Info,
  transA: boolean,
  transB: boolean,
) {
  const dims = matMulDims(a, b, transA, transB);
  if (!dims || a.shape.length < 3 || dims.batch < 2) return null; // 2-D: XNNPACK's
  const { batchA, batchB, batch, m, n, k } = dims;
  const bmm = bmmFor(backend);
  if (!bmm) return null;
  if (transB && bmm.scratchFloats < k * n) {
    if (bmm.scratch) backend.wasm._free(bmm.scratch);
    bmm.scratchFloats = k * n;
    bmm.scratch = backend.wasm._malloc(4 * k * n);
  }
  const out = backend.makeOutput(dims.outShape, "float32");
  const offset = (t: Info) => backend.dataIdMap.get(t.dataId).memoryOffset;
  bmm.run(
    offset(a),
    offset(b),
    offset(out),
    batchA,
    batchB,
    0,
    batch,
    m,
    n,
    k,
    transA ? 1 : 0,
    transB ? 1 : 0,
    bmm.scratch,
  );
  return out;
}

/** Where `t`'s data starts on `backend`'s heap, in bytes. */
export const offsetOf = (backend: WasmBackendInternals, t: Info): number =>
  backend.dataIdMap.get(t.dataId).memoryOffset;

/** {@linkcode maxOverInterests} through bmm.wasm's SIMD loop; null without bmm.wasm. */
function simdMaxOverInterests(backend: WasmBackendInternals, x: Info): Info[] | null {
  const bmm = bmmFor(backend);
  if (!bmm || x.dtype !== "float32") return null;
  const [k, m] = x.shape;
  const best = backend.makeOutput([m], "float32");
  const winner = backend.makeOutput([m], "int32");
  bmm.maxOverRows(offsetOf(backend, x), offsetOf(backend, best), offsetOf(backend, winner), k, m);
  return [best, winner];
}

/** {@linkcode routeToInterests} through bmm.wasm's SIMD loop; null without bmm.wasm. */
function simdRouteToInterests(
  backend: WasmBackendInternals,
  g: Info,
  winner: Info,
  k: number,
): Info | null {
  const bmm = bmmFor(backend);
  if (!bmm || g.dtype !== "float32" || winner.dtype !== "int32") return null;
  const m = g.shape[0];
  const out = backend.makeOutput([k, m], "float32");
  bmm.routeToRows(offsetOf(backend, g), offsetOf(backend, winner), offsetOf(backend, out), k, m);
  return out;
}

/**
 * {@linkcode DROPOUT_KERNEL} on wasm: bmm.wasm's Philox loop on the heap, or the host mask
 * (`dropoutMask`, the same bits) where bmm.wasm is not bound to the heap.
 */
function wasmDropout(
  backend: WasmBackendInternals,
  x: Info,
  attrs: { seed: number; threshold: number; scale: number },
): Info {
  const out = backend.makeOutput(x.shape, "float32");
  const n = x.shape.reduce((a, d) => a * d, 1);
  const bmm = bmmFor(backend);
  if (bmm) {
    bmm.philoxDropout(
      offsetOf(backend, x),
      offsetOf(backend, out),
      n,
      attrs.seed,
      // u32 arguments pass as i32: the same bits.
      attrs.threshold | 0,
      attrs.scale,
    );
    return out;
  }
  const memory = memoryOf("wasm", backend);
  const xs = memory.view(x) as Float32Array;
  const ys = memory.view(out) as Float32Array;
  const mask = dropoutMaskOf(n, attrs.threshold, attrs.scale, attrs.seed);
  for (let i = 0; i < n; i++) ys[i] = xs[i] * mask[i];
  return out;
}

/**
 * A product with a transpose flag that neither the BLAS nor bmm.wasm took (any 2-D one
 * without the BLAS, batched ones where bmm.wasm does not run), as tfjs's own `BatchMatMul`
 * of the operands transposed first; null when there is no flag or an operand has rank
 * under 2. Why: tfjs-backend-wasm 4.22 takes a slow path for flagged products, 440 ms
 * against 24 for `[8000, 128]ᵀ [8000, 384]` on these hosts, and tfjs's own gradients of
 * every dense layer (`dy wᵀ`, `xᵀ dy`) are such products. The transposes are tfjs's
 * `Transpose` kernel; the temporary copies are freed before returning, also on a throw.
 */
function transposedFirst(
  args: Parameters<tf.KernelFunc>[0],
  product: tf.KernelFunc,
): Info | null {
  const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
  if (!transposeA && !transposeB) return null;
  const transpose = tf.getKernel("Transpose", "wasm");
  const a = args.inputs.a as Info;
  const b = args.inputs.b as Info;
  if (!transpose || a.shape.length < 2 || b.shape.length < 2) return null;
  const backend = args.backend as unknown as tf.KernelBackend;
  const flipped = (x: Info): Info => {
    const perm = x.shape.map((_, i) => i);
    const last = perm.length - 1;
    [perm[last - 1], perm[last]] = [perm[last], perm[last - 1]];
    return transpose.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as Info;
  };
  let at = a;
  let bt = b;
  try {
    if (transposeA) at = flipped(a);
    if (transposeB) bt = flipped(b);
    return product({
      inputs: { a: at, b: bt },
      backend,
      attrs: { ...args.attrs, transposeA: false, transposeB: false },
    }) as Info;
  } finally {
    if (at !== a) backend.disposeData(at.dataId);
    if (bt !== b) backend.disposeData(bt.dataId);
  }
}

/** bmm.c's `broadcast_binary` operations. */
const BROADCAST_OPS = { Add: 0, Sub: 1, Multiply: 2 } as const;

/**
 * How `a op b` maps onto `broadcast_binary`: one operand full, `[R, d]` as rows of its last
 * axis, the other a `[d]` row repeated over the rows (`perRow` false) or a `[R, 1]` column
 * repeated over the columns (`perRow` true), leading 1s allowed. `swap` when the full one is
 * `b` (Add and Multiply only: they commute bit for bit). Null for every other call.
 */
export function broadcastPlan(
  op: keyof typeof BROADCAST_OPS,
  a: Info,
  b: Info,
): { full: Info; small: Info; rows: number; d: number; perRow: boolean } | null {
  if (a.dtype !== "float32" || b.dtype !== "float32") return null;
  const na = tf.util.sizeFromShape(a.shape);
  const nb = tf.util.sizeFromShape(b.shape);
  if (na === nb || Math.min(na, nb) === 0) return null;
  const swap = nb > na;
  if (swap && op === "Sub") return null;
  const [full, small] = swap ? [b, a] : [a, b];
  const rank = full.shape.length;
  if (small.shape.length > rank || rank === 0) return null;
  const t = [...new Array(rank - small.shape.length).fill(1), ...small.shape];
  const d = full.shape[rank - 1];
  const rows = tf.util.sizeFromShape(full.shape) / d;
  const lead = t.slice(0, rank - 1);
  if (t[rank - 1] === d && lead.every((x) => x === 1)) {
    return { full, small, rows, d, perRow: false };
  }
  if (t[rank - 1] === 1 && lead.every((x, i) => x === full.shape[i])) {
    return { full, small, rows, d, perRow: true };
  }
  return null;
}

/** `op` through bmm.wasm's `broadcast_binary`; null when the call is not one it takes. */
function simdBroadcast(args: Parameters<tf.KernelFunc>[0], op: keyof typeof BROADCAST_OPS) {
  const backend = args.backend as unknown as WasmBackendInternals;
  const bmm = bmmFor(backend);
  const plan = bmm && broadcastPlan(op, args.inputs.a as Info, args.inputs.b as Info);
  if (!bmm || !plan) return null;
  const out = backend.makeOutput(plan.full.shape, "float32");
  bmm.broadcastBinary(
    offsetOf(backend, plan.full),
    offsetOf(backend, plan.small),
    offsetOf(backend, out),
    plan.rows,
    plan.d,
    BROADCAST_OPS[op],
    plan.perRow ? 1 : 0,
  );
  return out;
}

let registered = false;

/** Registers the kernels above; idempotent. Called by `backends/mod.ts` on load. */
export function registerProjectKernels(): void {
  if (registered) return;
  registered = true;
  for (const backendName of ["cpu", "wasm"] as const) {
    tf.registerKernel({
      kernelName: MAX_OVER_INTERESTS,
      backendName,
      kernelFunc: ({ inputs, backend }) =>
        (backendName === "wasm"
          ? simdMaxOverInterests(backend as WasmBackendInternals, inputs.x as Info)
          : null) ?? maxOverInterests(memoryOf(backendName, backend), inputs.x as Info),
    });
    tf.registerKernel({
      kernelName: RANK_OF_TARGET_KERNEL,
      backendName,
      kernelFunc: ({ inputs, backend }) =>
        rankOfTarget(
          memoryOf(backendName, backend),
          inputs.scores as Info,
          inputs.allowed as Info,
          inputs.targetIndex as Info,
        ),
    });
    tf.registerKernel({
      kernelName: ROUTE_TO_INTERESTS,
      backendName,
      kernelFunc: ({ inputs, backend, attrs }) =>
        (backendName === "wasm"
          ? simdRouteToInterests(
            backend as WasmBackendInternals,
            inputs.g as Info,
            inputs.winner as Info,
            (attrs as { k: number }).k,
          )
          : null) ?? routeToInterests(
            memoryOf(backendName, backend),
            inputs.g as Info,
            inputs.winner as Info,
            (attrs as { k: number }).k,
          ),
    });
  }
  // cpu keeps dropout's composed reference (a host mask and a multiply): the ground truth.
  tf.registerKernel({
    kernelName: DROPOUT_KERNEL,
    backendName: "wasm",
    kernelFunc: ({ inputs, backend, attrs }) =>
      wasmDropout(
        backend as unknown as WasmBackendInternals,
        inputs.x as Info,
        attrs as unknown as { seed: number; threshold: number; scale: number },
      ),
  });
  const tfjsBatchMatMul = tf.getKernel("BatchMatMul", "wasm");
  overrideWasmKernel("BatchMatMul", (args) => {
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const a = args.inputs.a as Info;
    const b = args.inputs.b as Info;
    const backend = args.backend as WasmBackendInternals;
    return matMulAccelerator?.(backend, a, b, transposeA, transposeB) ??
      batchMatMul(backend, a, b, transposeA, transposeB) ??
      (tfjsBatchMatMul ? transposedFirst(args, tfjsBatchMatMul.kernelFunc) : null);
  });
  for (const op of Object.keys(BROADCAST_OPS) as (keyof typeof BROADCAST_OPS)[]) {
    overrideWasmKernel(op, (args) => simdBroadcast(args, op));
  }
  overrideWasmKernel("GatherV2", (args) => {
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    const x = args.inputs.x as Info;
    const normalised = axis < 0 ? axis + x.shape.length : axis;
    return gatherRows(
      memoryOf("wasm", args.backend),
      x,
      args.inputs.indices as Info,
      normalised,
      batchDims ?? 0,
    );
  });
}

/**
 * A faster matrix product for the wasm backend's `BatchMatMul` (rank >= 2), tried before
 * this file's own kernel: it returns null for the products it leaves alone. The native
 * BLAS (`_blas.ts`, Deno only) installs one; nothing here depends on it.
 */
export type MatMulAccelerator = (
  backend: unknown,
  a: Info,
  b: Info,
  transposeA: boolean,
  transposeB: boolean,
) => Info | null;

let matMulAccelerator: MatMulAccelerator | null = null;

/** Installs (or, with null, removes) the wasm backend's {@linkcode MatMulAccelerator}. */
export function setMatMulAccelerator(accelerator: MatMulAccelerator | null): void {
  matMulAccelerator = accelerator;
}

/**
 * Registers `kernels` for wasm when the active backend is wasm with bmm.wasm bound to its
 * heap (either of tfjs's builds, `bmmFor`); idempotent (the first kernel's presence says it is done),
 * and a no-op elsewhere, so that the composed ops run where bmm.wasm cannot.
 *
 * @returns Whether the kernels are registered for wasm.
 */
export function registerWithBmm(kernels: [string, tf.KernelFunc][]): boolean {
  if (tf.getKernel(kernels[0][0], "wasm") !== undefined) return true;
  if (tf.getBackend() !== "wasm") return false;
  if (!bmmFor(tf.backend() as unknown as WasmBackendInternals)) return false;
  for (const [kernelName, kernelFunc] of kernels) {
    tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc });
  }
  return true;
}

/**
 * A native GEMM on the wasm heap, for kernels that need one product per step of a loop (the
 * GRU's state product): `c = a op(b) + beta c`, row-major, `a` `[m, k]`, `op(b)` `[k, n]`
 * (`b` stored `[n, k]` when `transB`), all given as byte offsets on `backend`'s heap.
 * `accepts` says whether the product is large enough to pay for the call. The native BLAS
 * (`_blas.ts`, Deno only) installs one while it is active.
 */
export interface HeapGemm {
  accepts(m: number, n: number, k: number): boolean;
  run(
    backend: unknown,
    a: number,
    b: number,
    c: number,
    m: number,
    n: number,
    k: number,
    transB: boolean,
    beta: number,
  ): void;
}

let heapGemm: HeapGemm | null = null;

/** Installs (or, with null, removes) the {@linkcode HeapGemm}. */
export function setHeapGemm(gemm: HeapGemm | null): void {
  heapGemm = gemm;
}

/** The installed {@linkcode HeapGemm} when it takes an `m x k x n` product, else null. */
export function heapGemmFor(m: number, n: number, k: number): HeapGemm | null {
  return heapGemm?.accepts(m, n, k) ? heapGemm : null;
}

/**
 * Replaces tfjs-backend-wasm's kernel `name` by `fast`, which returns null for the calls
 * it leaves to tfjs's own kernel. Does nothing when wasm has no such kernel.
 */
export function overrideWasmKernel(
  name: string,
  fast: (args: Parameters<tf.KernelFunc>[0]) => Info | Info[] | null,
): void {
  const original = tf.getKernel(name, "wasm");
  if (!original) return;
  tf.unregisterKernel(name, "wasm");
  tf.registerKernel({ ...original, kernelFunc: (args) => fast(args) ?? original.kernelFunc(args) });
}
