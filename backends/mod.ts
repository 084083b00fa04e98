/**
 * Run-time backend choice: WebGPU, WebAssembly (SIMD) or the pure-JS CPU reference.
 *
 * ```ts
 * import { selectBackend } from "./mod.ts";
 * const chosen = await selectBackend("auto");
 * console.log(chosen.name, chosen.reason);
 * ```
 *
 * @module
 */
import "./_quiet.ts";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import * as wasm from "@tensorflow/tfjs-backend-wasm";
import "@tensorflow/tfjs-backend-webgpu";
import "./_gradients.ts";
import { installThreadedWasm } from "./_wasm_threads.ts";
import { registerProjectKernels } from "./_kernels.ts";
import { registerLayoutKernels } from "./_layout_kernels.ts";
import { useNativeBlas } from "./_blas.ts";

registerProjectKernels();
registerLayoutKernels();

/** A backend the user may ask for; `auto` picks the fastest one available. */
export type BackendChoice = "auto" | "webgpu" | "wasm" | "cpu";

/** The backend names accepted by {@linkcode selectBackend}. */
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "webgpu", "wasm", "cpu"];

/** The outcome of {@linkcode selectBackend}. */
export interface ChosenBackend {
  /** The tfjs backend now active. */
  name: "webgpu" | "wasm" | "cpu";
  /** Why it was chosen, in words, for the progress log. */
  reason: string;
}

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
}

interface GpuAdapterLike {
  isFallbackAdapter?: boolean;
  info?: { description?: string; vendor?: string; device?: string; isFallbackAdapter?: boolean };
}

/** Describes the WebGPU adapter present, or null when there is none. */
export async function probeWebGpu(): Promise<{ fallback: boolean; description: string } | null> {
  // deno-lint-ignore no-explicit-any
  const gpu = (globalThis.navigator as any)?.gpu;
  if (!gpu) return null;
  let adapter: GpuAdapterLike | null = null;
  try {
    adapter = await gpu.requestAdapter();
  } catch {
    return null;
  }
  if (!adapter) return null;
  const fallback = Boolean(adapter.isFallbackAdapter ?? adapter.info?.isFallbackAdapter);
  const info = adapter.info ?? {};
  const description = info.description || [info.vendor, info.device].filter(Boolean).join(" ") ||
    "unnamed adapter";
  return { fallback, description };
}

async function activate(name: ChosenBackend["name"]): Promise<boolean> {
  try {
    const ok = await tf.setBackend(name);
    await tf.ready();
    return ok && tf.getBackend() === name;
  } catch {
    return false;
  }
}

/** Switches the native BLAS on or off for the now active wasm backend and describes both. */
async function startWasmExtras(
  threads: ReturnType<typeof installThreadedWasm>,
  blas: string,
): Promise<string> {
  const native = useNativeBlas(blas, wasm.getThreadsCount());
  const simd = (await tf.env().getAsync("WASM_HAS_SIMD_SUPPORT")) ? "SIMD" : "no SIMD";
  const why = threads.fallbackReason ? `; ${threads.fallbackReason}` : "";
  return `WebAssembly (${simd}, ${wasm.getThreadsCount()} thread(s)${why}); ${native.detail}`;
}

/**
 * Makes one backend active for all following tfjs work and says which and why.
 *
 * `auto` takes WebGPU when an adapter exists that is not a fallback (software) adapter,
 * else WebAssembly, else the CPU reference. An explicit choice that cannot start throws a
 * `RangeError` (unknown name) or an `Error` naming what is missing.
 */
export async function selectBackend(
  choice: BackendChoice,
  options: SelectBackendOptions = {},
): Promise<ChosenBackend> {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new RangeError(
      `Unknown backend "${choice}": expected one of ${BACKEND_CHOICES.join(", ")}`,
    );
  }
  tf.env().set("WEBGPU_CPU_FORWARD", options.webgpuCpuForward ?? false);
  const blas = options.blas ?? "off";
  useNativeBlas("off"); // until wasm is active: the choice below may not be wasm
  const threads = installThreadedWasm(options.wasmThreads);
  if (choice === "webgpu") {
    const gpu = await probeWebGpu();
    if (!gpu) {
      throw new Error(
        "Backend webgpu was asked for, but navigator.gpu has no adapter on this machine",
      );
    }
    if (!(await activate("webgpu"))) {
      throw new Error(`Backend webgpu failed to start on adapter "${gpu.description}"`);
    }
    const kind = gpu.fallback ? "software fallback adapter" : "hardware adapter";
    return { name: "webgpu", reason: `asked for; ${kind} "${gpu.description}"` };
  }
  if (choice === "wasm" || choice === "cpu") {
    if (!(await activate(choice))) {
      throw new Error(`Backend ${choice} was asked for, but it failed to start`);
    }
    return {
      name: choice,
      reason: choice === "wasm"
        ? `asked for; ${await startWasmExtras(threads, blas)}`
        : "asked for",
    };
  }
  const gpu = await probeWebGpu();
  if (gpu && !gpu.fallback && (await activate("webgpu"))) {
    return { name: "webgpu", reason: `auto: hardware WebGPU adapter "${gpu.description}"` };
  }
  const why = gpu
    ? `the only WebGPU adapter, "${gpu.description}", is a software fallback`
    : "no WebGPU adapter";
  if (await activate("wasm")) {
    return { name: "wasm", reason: `auto: ${why}; ${await startWasmExtras(threads, blas)}` };
  }
  if (await activate("cpu")) {
    return { name: "cpu", reason: `auto: ${why} and WebAssembly failed to start` };
  }
  throw new Error("No tfjs backend could start (tried webgpu, wasm, cpu)");
}
