/**
 * LayerNorm with its residual add and the two GELUs (`lib/nn/fused.ts`:
 * {@linkcode LAYER_NORM_KERNEL}, {@linkcode GELU_KERNEL}, {@linkcode GELU_TANH_KERNEL} and
 * their gradients) on the wasm backend: one bmm.wasm call forward and one backward
 * (`layer_norm`, `layer_norm_grad`, `gelu` in `wasm/bmm.c`), the contract and formulas of
 * the webgpu programs in `_webgpu_fused.ts`. Likewise the full softmax's loss over a chunk
 * of logits and its gradient (`lib/nn/fused_ops.ts`: {@linkcode SOFTMAX_XENT_KERNEL},
 * {@linkcode SOFTMAX_XENT_GRAD_KERNEL}; `softmax_xent`, `softmax_xent_grad`), the contract of
 * `_webgpu_ops.ts`'s programs; `lib/nn/item_losses.ts`'s composed ops are their reference. The composed tfjs ops (`layerNormResidual-
 * Reference`, `geluReference`, `geluTanhReference`) stay the reference (cpu runs them);
 * `tests/fused_ops_test.ts` compares the two.
 *
 * Why: composed, a LayerNorm is 9 tfjs kernels forward and about 20 backward, a GELU 4-6
 * and about 15, each a pass over the tensor with tfjs-backend-wasm's per-op cost; every
 * block of every model has two or three LayerNorms and a GELU.
 *
 * Registered only once a wasm backend with bmm.wasm bound to its heap runs (`bmmFor`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  GELU_GRAD_KERNEL,
  GELU_KERNEL,
  GELU_TANH_GRAD_KERNEL,
  GELU_TANH_KERNEL,
  LAYER_NORM_GRAD_KERNEL,
  LAYER_NORM_KERNEL,
} from "../lib/nn/fused.ts";
import { SOFTMAX_XENT_GRAD_KERNEL, SOFTMAX_XENT_KERNEL } from "../lib/nn/fused_ops.ts";
import { INT8_TOP_K_KERNEL, registerTensorBytesWriter } from "../lib/inference/_int8_items.ts";
import {
  type Bmm,
  bmmFor,
  memoryOf,
  offsetOf,
  registerWithBmm,
  type WasmBackendInternals,
} from "./_kernels.ts";

type Info = tf.TensorInfo;

/** Rows and width of a LayerNorm input: the last axis, and everything before it. */
function rowsAndWidth(x: Info): [number, number] {
  const d = x.shape[x.shape.length - 1];
  return [tf.util.sizeFromShape(x.shape) / d, d];
}

function bmmOf(backend: WasmBackendInternals): Bmm {
  const bmm = bmmFor(backend);
  if (!bmm) throw new Error("fused kernels on wasm: bmm.wasm is not bound to this heap");
  return bmm;
}

function layerNorm(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { x, residual, gamma, beta } = args.inputs as Record<string, Info | undefined>;
  const { eps } = args.attrs as unknown as { eps: number };
  const backend = args.backend as unknown as WasmBackendInternals;
  const bmm = bmmOf(backend);
  const [rows, d] = rowsAndWidth(x!);
  const y = backend.makeOutput(x!.shape, "float32");
  const stats = backend.makeOutput([rows, 2], "float32");
  const at = (t: Info) => offsetOf(backend, t);
  bmm.layerNorm(
    at(x!),
    residual ? at(residual) : at(x!), // not read without a residual
    at(gamma!),
    at(beta!),
    at(y),
    at(stats),
    rows,
    d,
    eps,
    residual ? 1 : 0,
  );
  return [y, stats];
}

function layerNormGrad(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { dy, x, residual, gamma, stats } = args.inputs as Record<string, Info | undefined>;
  const backend = args.backend as unknown as WasmBackendInternals;
  const bmm = bmmOf(backend);
  const [rows, d] = rowsAndWidth(x!);
  const dx = backend.makeOutput(x!.shape, "float32");
  const dgamma = backend.makeOutput([d], "float32");
  const dbeta = backend.makeOutput([d], "float32");
  const at = (t: Info) => offsetOf(backend, t);
  bmm.layerNormGrad(
    at(dy!),
    at(x!),
    residual ? at(residual) : at(x!),
    at(gamma!),
    at(stats!),
    at(dx),
    at(dgamma),
    at(dbeta),
    rows,
    d,
    residual ? 1 : 0,
  );
  return [dx, dgamma, dbeta];
}

/** The GELU kernels: `tanh` picks the form, `dy` present makes it the gradient. */
function geluKernel(tanh: boolean) {
  return (args: Parameters<tf.KernelFunc>[0]): Info => {
    const { x, dy } = args.inputs as Record<string, Info | undefined>;
    const backend = args.backend as unknown as WasmBackendInternals;
    const bmm = bmmOf(backend);
    const y = backend.makeOutput(x!.shape, "float32");
    const at = (t: Info) => offsetOf(backend, t);
    const n = tf.util.sizeFromShape(x!.shape);
    bmm.gelu(at(x!), dy ? at(dy) : at(x!), at(y), n, tanh ? 1 : 0, dy ? 1 : 0);
    return y;
  };
}

function softmaxXent(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { logits, targets } = args.inputs as { logits: Info; targets: Info };
  const { start, first } = args.attrs as unknown as { start: number; first: number };
  const backend = args.backend as unknown as WasmBackendInternals;
  const [rows, cols] = logits.shape;
  const prob = backend.makeOutput([rows, cols], "float32");
  const loss = backend.makeOutput([rows], "float32");
  const at = (t: Info) => offsetOf(backend, t);
  bmmOf(backend).softmaxXent(at(logits), at(targets), at(prob), at(loss), rows, cols, start, first);
  return [prob, loss];
}

function softmaxXentGrad(args: Parameters<tf.KernelFunc>[0]): Info {
  const { prob, targets, dy } = args.inputs as { prob: Info; targets: Info; dy: Info };
  const { start } = args.attrs as unknown as { start: number };
  const backend = args.backend as unknown as WasmBackendInternals;
  const [rows, cols] = prob.shape;
  const g = backend.makeOutput([rows, cols], "float32");
  const at = (t: Info) => offsetOf(backend, t);
  bmmOf(backend).softmaxXentGrad(at(prob), at(targets), at(dy), at(g), rows, cols, start);
  return g;
}

/** {@linkcode INT8_TOP_K_KERNEL}: bmm.wasm's `int8_top_k` over the heap's codes. */
function int8TopK(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { q16, qscale, codes, scales } = args.inputs as Record<string, Info>;
  const { Q, k, first } = args.attrs as unknown as { Q: number; k: number; first: number };
  const backend = args.backend as unknown as WasmBackendInternals;
  const rows = qscale.shape[0], d = q16.shape[1] * 2, n = scales.shape[0];
  const values = backend.makeOutput([rows / Q, k], "float32");
  const ids = backend.makeOutput([rows / Q, k], "int32");
  const at = (t: Info) => offsetOf(backend, t);
  bmmOf(backend).int8TopK(
    at(q16),
    at(qscale),
    rows / Q,
    Q,
    d,
    at(codes),
    at(scales),
    first,
    n,
    k,
    at(values),
    at(ids),
  );
  return [values, ids];
}

/**
 * Writes `bytes` into `t`'s memory on the wasm heap from `byteOffset` on, for an int8 item
 * table filled in pieces as its file is read. The view is taken at each write: the heap is
 * replaced when it grows.
 */
function writeInPlace(t: tf.Tensor, byteOffset: number, bytes: Uint8Array): void {
  const view = memoryOf("wasm", tf.backend()).view(t);
  new Uint8Array(view.buffer, view.byteOffset, view.byteLength).set(bytes, byteOffset);
}

/**
 * Registers the wasm LayerNorm, GELU and softmax cross-entropy kernels where bmm.wasm runs (`registerWithBmm`). Called by
 * `backends/mod.ts` once wasm runs.
 *
 * @returns Whether the kernels are registered for wasm.
 */
export function registerWasmFused(): boolean {
  const registered = registerWithBmm([
    [LAYER_NORM_KERNEL, layerNorm as tf.KernelFunc],
    [LAYER_NORM_GRAD_KERNEL, layerNormGrad as tf.KernelFunc],
    [GELU_KERNEL, geluKernel(false) as tf.KernelFunc],
    [GELU_GRAD_KERNEL, geluKernel(false) as tf.KernelFunc],
    [GELU_TANH_KERNEL, geluKernel(true) as tf.KernelFunc],
    [GELU_TANH_GRAD_KERNEL, geluKernel(true) as tf.KernelFunc],
    [SOFTMAX_XENT_KERNEL, softmaxXent as tf.KernelFunc],
    [SOFTMAX_XENT_GRAD_KERNEL, softmaxXentGrad as tf.KernelFunc],
    [INT8_TOP_K_KERNEL, int8TopK as tf.KernelFunc],
  ]);
  if (registered) registerTensorBytesWriter("wasm", writeInPlace);
  return registered;
}
