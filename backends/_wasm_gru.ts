/**
 * SIGMA's gated category GRU (`lib/nn/gru.ts`) on the wasm backend: one call of bmm.wasm
 * runs a layer's whole recurrence forward ({@linkcode GRU_FORWARD_KERNEL}), one its whole
 * backpropagation through time ({@linkcode GRU_BACKWARD_KERNEL}), the same contract as the
 * webgpu programs (`_webgpu_gru.ts`). The composed tfjs ops of `gatedCategoryGru` stay
 * the reference (cpu runs them); `tests/gru_fused_test.ts` compares the two.
 *
 * Why: composed, the recurrence is a dozen tfjs ops per position and layer forward and two
 * dozen backward, each paying tfjs-backend-wasm's per-op cost: at length 100 a SIGMA step
 * made 114k kernel calls and took 6.9x SASRec's time (docs/performance.md, "SIGMA on long
 * histories"). In bmm.c each position is one SIMD product of all state rows with `W_h` and
 * one pass over the rows; the input projections and weight gradients stay matmuls over
 * all positions outside (on the native BLAS when it is on). Where the native BLAS is on and
 * the state product is large enough, the loop over positions runs here instead, each
 * position's product on the BLAS (several threads, AVX-512 where there is some) and its
 * element-wise part in bmm.wasm (`gru_forward_step`, `gru_backward_step`).
 *
 * Registered only once a wasm backend with bmm.wasm bound to its heap runs (either of
 * tfjs's builds, `bmmFor`): elsewhere the kernels are absent and the composed ops run.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { GRU_BACKWARD_KERNEL, GRU_FORWARD_KERNEL, gruKernelSizes } from "../lib/nn/gru.ts";
import {
  type Bmm,
  bmmFor,
  heapGemmFor,
  offsetOf,
  registerWithBmm,
  type WasmBackendInternals,
} from "./_kernels.ts";

type Info = tf.TensorInfo;

/** Runs `body` with `floats` of scratch on the heap, freed afterwards. */
function withScratch(backend: WasmBackendInternals, floats: number, body: (at: number) => void) {
  const at = backend.wasm._malloc(4 * floats);
  try {
    body(at);
  } finally {
    backend.wasm._free(at);
  }
}

/** The heap as float32, taken after every allocation of the call (the heap may grow). */
function heapFloats(backend: WasmBackendInternals): Float32Array {
  const bytes = (backend.wasm as unknown as { HEAPU8: Uint8Array }).HEAPU8;
  return new Float32Array(bytes.buffer, 0, bytes.byteLength / 4);
}

function bmmOf(backend: WasmBackendInternals): Bmm {
  const bmm = bmmFor(backend);
  if (!bmm) throw new Error("gated GRU on wasm: bmm.wasm is not bound to this heap");
  return bmm;
}

function gruForward(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { xi, gates, wh, bh } = args.inputs as Record<string, Info>;
  const backend = args.backend as unknown as WasmBackendInternals;
  const { batch, steps, k, d, xiK, rows } = gruKernelSizes(xi.shape, gates.shape, wh.shape, 3);
  const bmm = bmmOf(backend);
  const states = backend.makeOutput([batch, steps, k, d], "float32");
  const prev = backend.makeOutput([batch, steps, k, d], "float32");
  const acts = backend.makeOutput([batch, steps, k, 4 * d], "float32");
  const at = (t: Info) => offsetOf(backend, t);
  const outputs = [at(states), at(prev), at(acts)];
  const sizes = [batch, steps, k, xiK, d];
  const blas = heapGemmFor(rows, 3 * d, d);
  withScratch(backend, bmm.gruScratchFloats(rows, d, 0), (scratch) => {
    if (!blas) {
      return bmm.gruForward(at(xi), at(gates), at(wh), at(bh), ...outputs, ...sizes, scratch);
    }
    // The scratch is h [rows, d] then hh [rows, 3d]: h = 0, then per position hh = h W_h
    // on the BLAS and the rest of the step in bmm.wasm.
    heapFloats(backend).fill(0, scratch / 4, scratch / 4 + rows * d);
    const hh = scratch + 4 * rows * d;
    for (let t = 0; t < steps; t++) {
      blas.run(backend, scratch, at(wh), hh, rows, 3 * d, d, false, 0);
      bmm.gruForwardStep(at(xi), at(gates), at(bh), ...outputs, ...sizes, scratch, t);
    }
  });
  return [states, prev, acts];
}

function gruBackward(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { dy, prev, acts, gates, wh } = args.inputs as Record<string, Info>;
  const backend = args.backend as unknown as WasmBackendInternals;
  const { batch, steps, k, d, xiK, rows } = gruKernelSizes(dy.shape, gates.shape, wh.shape, 1);
  if (xiK !== k) throw new RangeError(`gated GRU: dy must be [B, L, k, d], got [${dy.shape}]`);
  const bmm = bmmOf(backend);
  const dhh = backend.makeOutput([batch, steps, k, 3 * d], "float32");
  const dxi = backend.makeOutput([batch, steps, k, 3 * d], "float32");
  const dgate = backend.makeOutput([batch, steps, k], "float32");
  const at = (t: Info) => offsetOf(backend, t);
  const inputs = [at(dy), at(prev), at(acts), at(gates)];
  const outputs = [at(dhh), at(dxi), at(dgate)];
  const sizes = [batch, steps, k, d];
  const blas = heapGemmFor(rows, d, 3 * d);
  withScratch(backend, bmm.gruScratchFloats(rows, d, 1), (scratch) => {
    if (!blas) return bmm.gruBackward(...inputs, at(wh), ...outputs, ...sizes, scratch);
    // The scratch as gru_backward lays it out, W_h^T [3d, d] (unused here: the BLAS
    // transposes), carry [rows, d], dhh packed [rows, 3d], direct [rows, d], in bytes:
    const carry = scratch + 4 * 3 * d * d;
    const packed = carry + 4 * rows * d;
    const direct = packed + 4 * rows * 3 * d;
    const heap = heapFloats(backend);
    heap.fill(0, carry / 4, carry / 4 + rows * d);
    for (let t = steps - 1; t >= 0; t--) {
      bmm.gruBackwardStep(...inputs, ...outputs, ...sizes, scratch, t);
      // The carry into position t - 1: direct + dhh W_h^T.
      heap.copyWithin(carry / 4, direct / 4, direct / 4 + rows * d);
      blas.run(backend, packed, at(wh), carry, rows, d, 3 * d, true, 1);
    }
  });
  return [dhh, dxi, dgate];
}

/**
 * Registers the wasm GRU kernels where bmm.wasm runs (`registerWithBmm`). Called by
 * `backends/mod.ts` once wasm runs.
 *
 * @returns Whether the kernels are registered for wasm.
 */
export function registerWasmGru(): boolean {
  return registerWithBmm([
    [GRU_FORWARD_KERNEL, gruForward as tf.KernelFunc],
    [GRU_BACKWARD_KERNEL, gruBackward as tf.KernelFunc],
  ]);
}
