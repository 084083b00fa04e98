/**
 * The backend choice both entries share: `web.ts` (anywhere) and `mod.ts` (Deno, which adds
 * wasm threads and the native BLAS through the `WasmStart` hooks).
 *
 * @module
 */
import "./_quiet.ts";
import * as tf from "@tensorflow/tfjs-core";
import "@tensorflow/tfjs-backend-cpu";
import "@tensorflow/tfjs-backend-wasm";
import "@tensorflow/tfjs-backend-webgpu";
import { registerProjectKernels } from "./_kernels.ts";
import { registerLayoutKernels } from "./_layout_kernels.ts";
import { registerWebGpuAccumulate } from "./_webgpu_accumulate.ts";
import { registerWebGpuAdam } from "./_webgpu_adam.ts";
import { registerWebGpuAttention } from "./_webgpu_attention.ts";
import { installWebGpuDevice } from "./_webgpu_device.ts";
import { registerWebGpuDropout } from "./_webgpu_dropout.ts";
import { registerWebGpuFusedKernels } from "./_webgpu_fused.ts";
import { registerWebGpuGru } from "./_webgpu_gru.ts";
import { registerWebGpuLinears } from "./_webgpu_linear.ts";
import { registerWebGpuOps } from "./_webgpu_ops.ts";

registerProjectKernels();
registerLayoutKernels();
installWebGpuDevice();
registerWebGpuAccumulate();
registerWebGpuAdam();
registerWebGpuAttention();
registerWebGpuDropout();
registerWebGpuFusedKernels();
registerWebGpuGru();
registerWebGpuLinears();
registerWebGpuOps();

/** A backend the user may ask for; `auto` picks the fastest one available. */
export type BackendChoice = "auto" | "webgpu" | "wasm" | "cpu";

/** The backend names accepted by `selectBackend`. */
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "webgpu", "wasm", "cpu"];

/** The outcome of `selectBackend`. */
export interface ChosenBackend {
  /** The tfjs backend now active. */
  name: "webgpu" | "wasm" | "cpu";
  /** Why it was chosen, in words, for the progress log. */
  reason: string;
}

/**
 * What the backend is for. `auto` weighs it: WebGPU ranks as fast as 8 wasm threads on a
 * real GPU but trained slower than the same machine's CPU on every GPU measured (an H200:
 * SASRec 0.64x, SIGMA 0.48x, DiffuRec 0.33x wasm's positions per second; the table in
 * docs/performance.md, "WebGPU on a real GPU"), so for training `auto` leaves it out.
 */
export type BackendPurpose = "inference" | "training";

/**
 * Why `auto` passes over a hardware WebGPU adapter for training; the figures are the bench's
 * (docs/performance.md). Change it with them, when fused kernels make WebGPU the faster one.
 */
export const WEBGPU_TRAINING_RULE: string =
  "WebGPU trains slower than wasm on every GPU measured (H200: 0.33-0.64x wasm's positions/s, " +
  "docs/performance.md); --backend webgpu trains there anyway";

/** How the wasm backend is prepared before it starts and described once it runs. */
export interface WasmStart {
  /** Runs before any backend is activated (e.g. installs the threaded build). */
  prepare(): void;
  /** Describes the now active wasm backend (SIMD, threads, BLAS) for the log. */
  describe(): Promise<string>;
}

interface GpuAdapterLike {
  isFallbackAdapter?: boolean;
  info?: { description?: string; vendor?: string; device?: string; isFallbackAdapter?: boolean };
}

/**
 * Describes the WebGPU adapter present, or null when there is none.
 *
 * @example Usage
 * ```ts ignore
 * const gpu = await probeWebGpu(); // { fallback: false, description: "NVIDIA H200" } or null
 * ```
 */
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

/** Deno's permission API where it exists (feature-detected: this file runs anywhere). */
interface PermissionsLike {
  querySync?(descriptor: { name: string; kind?: string }): { state: string };
}

/**
 * The state of a Deno permission (`"granted"`, `"prompt"`, `"denied"`), or `"granted"`
 * where there is no Deno: browsers and edge isolates grant what their platform offers.
 */
export function permissionState(name: string, kind?: string): string {
  const deno = (globalThis as { Deno?: { permissions?: PermissionsLike } }).Deno;
  return deno?.permissions?.querySync?.({ name, ...(kind ? { kind } : {}) }).state ?? "granted";
}

/**
 * Why the wasm backend cannot start here, or null. Under Deno tfjs reads its `.wasm` file
 * from disk (node_modules or Deno's npm cache), so without read access its start-up
 * aborts with emscripten's noise; this says which flag is missing instead.
 */
export function wasmUnavailable(): string | null {
  return permissionState("read") === "granted"
    ? null
    : "WebAssembly needs --allow-read here (tfjs reads its .wasm file from disk under Deno)";
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

/**
 * Makes one backend active and says which and why (see `selectBackend` in `web.ts`); `wasm`
 * prepares and describes the wasm backend.
 */
export async function chooseBackend(
  choice: BackendChoice,
  webgpuCpuForward: boolean,
  wasm: WasmStart,
  purpose: BackendPurpose = "inference",
): Promise<ChosenBackend> {
  if (!BACKEND_CHOICES.includes(choice)) {
    throw new RangeError(
      `Unknown backend "${choice}": expected one of ${BACKEND_CHOICES.join(", ")}`,
    );
  }
  tf.env().set("WEBGPU_CPU_FORWARD", webgpuCpuForward);
  wasm.prepare();
  if (choice === "webgpu") {
    const gpu = await probeWebGpu();
    if (!gpu) {
      throw new Error("Backend webgpu was asked for, but navigator.gpu has no adapter here");
    }
    if (!(await activate("webgpu"))) {
      throw new Error(`Backend webgpu failed to start on adapter "${gpu.description}"`);
    }
    const kind = gpu.fallback ? "software fallback adapter" : "hardware adapter";
    return { name: "webgpu", reason: `asked for; ${kind} "${gpu.description}"` };
  }
  if (choice === "wasm" && wasmUnavailable()) {
    throw new Error(`Backend wasm was asked for, but ${wasmUnavailable()}`);
  }
  if (choice === "wasm" || choice === "cpu") {
    if (!(await activate(choice))) {
      throw new Error(`Backend ${choice} was asked for, but it failed to start`);
    }
    return {
      name: choice,
      reason: choice === "wasm" ? `asked for; ${await wasm.describe()}` : "asked for",
    };
  }
  const gpu = await probeWebGpu();
  const forTraining = purpose === "training" && gpu !== null && !gpu.fallback;
  if (gpu && !gpu.fallback && !forTraining && (await activate("webgpu"))) {
    return { name: "webgpu", reason: `auto: hardware WebGPU adapter "${gpu.description}"` };
  }
  const why = forTraining
    ? `for training, not the WebGPU adapter "${gpu!.description}": ${WEBGPU_TRAINING_RULE}`
    : gpu && !gpu.fallback
    ? `the WebGPU adapter "${gpu.description}" failed to start`
    : gpu
    ? `the only WebGPU adapter, "${gpu.description}", is a software fallback`
    : "no WebGPU adapter";
  const noWasm = wasmUnavailable();
  if (!noWasm && (await activate("wasm"))) {
    return { name: "wasm", reason: `auto: ${why}; ${await wasm.describe()}` };
  }
  if (await activate("cpu")) {
    const wasmWhy = noWasm ?? "WebAssembly failed to start";
    return { name: "cpu", reason: `auto: ${why}; ${wasmWhy}` };
  }
  throw new Error("No tfjs backend could start (tried webgpu, wasm, cpu)");
}
