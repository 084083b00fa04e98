/**
 * Run-time backend choice under Deno: WebGPU, WebAssembly (SIMD, threaded, optionally with
 * a native BLAS for the large matrix products) or the pure-JS CPU reference, with the
 * gradients training needs registered. Where only web APIs exist, use `web.ts` instead.
 *
 * ```ts
 * import { selectBackend } from "./mod.ts";
 * const chosen = await selectBackend("auto");
 * console.log(chosen.name, chosen.reason);
 * ```
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import * as wasm from "@tensorflow/tfjs-backend-wasm";
import {
  type BackendChoice,
  type BackendPurpose,
  chooseBackend,
  type ChosenBackend,
} from "./_select.ts";
import "./_gradients.ts";
import { installThreadedWasm, type ThreadedWasmStatus } from "./_wasm_threads.ts";
import { useNativeBlas } from "./_blas.ts";
import { registerWasmGru } from "./_wasm_gru.ts";
import { registerWasmFused } from "./_wasm_fused.ts";

export {
  BACKEND_CHOICES,
  type BackendChoice,
  type BackendPurpose,
  type ChosenBackend,
  probeWebGpu,
  WEBGPU_TRAINING_RULE,
} from "./_select.ts";

/** Options for {@linkcode selectBackend}. */
export interface SelectBackendOptions {
  /**
   * Keep WebGPU's small-tensor CPU shortcut (`WEBGPU_CPU_FORWARD`). Parity tests turn it
   * off so that every kernel really runs on the GPU. Default false.
   */
  webgpuCpuForward?: boolean;
  /**
   * Threads for the wasm backend; default: the logical CPUs. Fixed by the first call that
   * activates wasm (tfjs-backend-wasm starts once per process).
   */
  wasmThreads?: number;
  /**
   * Native BLAS for the wasm backend's large matrix products (`backends/_blas.ts`):
   * `"off"` (default), `"auto"` (OpenBLAS or Accelerate when one loads and `--allow-ffi`
   * is granted, else plain wasm) or a library path (which must load). Ignored by the
   * other backends.
   */
  blas?: string;
  /**
   * What the backend is for: `"training"` makes `auto` pass over WebGPU, which trains
   * slower than wasm on the GPUs measured (see `WEBGPU_TRAINING_RULE`). Default
   * `"inference"`.
   */
  purpose?: BackendPurpose;
}

/** Switches the native BLAS on or off for the now active wasm backend and describes both. */
async function startWasmExtras(threads: ThreadedWasmStatus, blas: string): Promise<string> {
  const native = useNativeBlas(blas, wasm.getThreadsCount());
  registerWasmGru();
  registerWasmFused();
  const simd = (await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")) ? "SIMD" : "no SIMD";
  const why = threads.fallbackReason ? `; ${threads.fallbackReason}` : "";
  return `WebAssembly (${simd}, ${wasm.getThreadsCount()} thread(s)${why}); ${native.detail}`;
}

/**
 * Makes one backend active for all following tfjs work and says which and why.
 *
 * `auto` takes WebGPU when an adapter exists that is not a fallback (software) adapter
 * (except with `purpose: "training"`), else WebAssembly, else the CPU reference. An explicit choice that cannot start throws a
 * `RangeError` (unknown name) or an `Error` naming what is missing.
 *
 * @example Usage
 * ```ts
 * import { selectBackend } from "./mod.ts";
 * const { name } = await selectBackend("wasm", { wasmThreads: 1 }); // "wasm"
 * ```
 */
export async function selectBackend(
  choice: BackendChoice,
  options: SelectBackendOptions = {},
): Promise<ChosenBackend> {
  const blas = options.blas ?? "off";
  let threads: ThreadedWasmStatus | undefined;
  return await chooseBackend(choice, options.webgpuCpuForward ?? false, {
    prepare: () => {
      useNativeBlas("off"); // until wasm is active: the choice may not be wasm
      threads = installThreadedWasm(options.wasmThreads);
    },
    describe: () => startWasmExtras(threads!, blas),
  }, options.purpose);
}
