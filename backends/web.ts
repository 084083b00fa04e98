/**
 * Run-time backend choice where only the web platform's APIs exist (browsers, edge
 * isolates, Deno without permissions): WebGPU, WebAssembly (SIMD, one thread) or the
 * pure-JS CPU kernels. Deno programs that train use `mod.ts` beside this file, which adds
 * wasm threads and the native BLAS.
 *
 * ```ts
 * import { selectBackend } from "./web.ts";
 * const chosen = await selectBackend("auto");
 * console.log(chosen.name, chosen.reason);
 * ```
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { getThreadsCount, setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { type BackendChoice, chooseBackend, type ChosenBackend } from "./_select.ts";

export { BACKEND_CHOICES, type BackendChoice, type ChosenBackend, probeWebGpu } from "./_select.ts";

/** Options of {@linkcode selectBackend} where only web APIs exist. */
export interface WebBackendOptions {
  /**
   * Keep WebGPU's small-tensor CPU shortcut (`WEBGPU_CPU_FORWARD`). Parity tests turn it
   * off so that every kernel really runs on the GPU. Default false.
   */
  webgpuCpuForward?: boolean;
  /**
   * Where the wasm backend's `.wasm` files are served from, a URL prefix ending in `/`
   * (tfjs-backend-wasm's `setWasmPaths`). A bundled page needs it; Deno finds them itself.
   */
  wasmPaths?: string;
}

/**
 * Makes one backend active for all following tfjs work and says which and why.
 *
 * `auto` takes WebGPU when an adapter exists that is not a fallback (software) adapter,
 * else WebAssembly, else the CPU reference. An explicit choice that cannot start throws a
 * `RangeError` (unknown name) or an `Error` naming what is missing.
 *
 * @example Usage
 * ```ts
 * import { selectBackend } from "./web.ts";
 * const { name, reason } = await selectBackend("cpu"); // "cpu", "asked for"
 * ```
 */
export async function selectBackend(
  choice: BackendChoice,
  options: WebBackendOptions = {},
): Promise<ChosenBackend> {
  return await chooseBackend(choice, options.webgpuCpuForward ?? false, {
    prepare: () => {
      if (options.wasmPaths !== undefined) setWasmPaths(options.wasmPaths);
      // On a cross-origin-isolated page tfjs would fetch its threaded binary, which a page
      // built by web/build.ts does not carry: wasm failed and `auto` fell to the CPU kernels.
      tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", false);
    },
    describe: async () => {
      const simd = (await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")) ? "SIMD" : "no SIMD";
      return `WebAssembly (${simd}, ${getThreadsCount()} thread(s))`;
    },
  });
}
