/**
 * The webgpu backend's device, asked for with more storage buffers per shader stage than
 * WebGPU's default of 8.
 *
 * Why: tfjs-backend-webgpu 4.22 registers a factory that requests its device with the
 * adapter's limits for workgroups and buffer sizes but leaves `maxStorageBuffersPerShaderStage`
 * at the default, 8. The fused Adam (`_webgpu_adam.ts`) binds two storage buffers per
 * variable plus two for the moments, so 8 fit 3 variables per dispatch; most adapters offer
 * more (llvmpipe 16; desktop GPUs more still). This factory does what tfjs's does (adapter
 * with the high-performance or low-power preference, its timestamp-query and
 * bgra8unorm-storage features, the same limits) and adds that one limit, capped at
 * {@linkcode STORAGE_BUFFERS_WANTED}.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";

/**
 * Storage buffers per shader stage asked for, at most: 32 bind 15 Adam variables a
 * dispatch, past which the gain is a few dispatches a step.
 */
export const STORAGE_BUFFERS_WANTED = 32;

/** The limits tfjs asks the adapter for, plus the storage buffers. */
const LIMITS_FROM_ADAPTER = [
  "maxComputeWorkgroupStorageSize",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupSizeX",
  "maxComputeInvocationsPerWorkgroup",
] as const;

interface AdapterLike {
  features: { has(name: string): boolean };
  limits: Record<string, number>;
  info?: unknown;
  requestDevice(descriptor: unknown): Promise<unknown>;
}

async function createBackend(): Promise<tf.KernelBackend> {
  const gpu = (globalThis.navigator as unknown as {
    gpu: { requestAdapter(o: unknown): Promise<AdapterLike | null> };
  }).gpu;
  const adapter = await gpu.requestAdapter({
    powerPreference: tf.env().get("WEBGPU_USE_LOW_POWER_GPU") ? "low-power" : "high-performance",
  });
  if (!adapter) throw new Error("navigator.gpu gave no adapter");
  const requiredFeatures = ["timestamp-query", "bgra8unorm-storage"].filter((f) =>
    adapter.features.has(f)
  );
  const requiredLimits: Record<string, number> = {};
  for (const name of LIMITS_FROM_ADAPTER) requiredLimits[name] = adapter.limits[name];
  requiredLimits.maxStorageBuffersPerShaderStage = Math.min(
    STORAGE_BUFFERS_WANTED,
    Math.max(8, adapter.limits.maxStorageBuffersPerShaderStage ?? 8),
  );
  const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  watchErrors(device);
  return new (WebGPUBackend as unknown as new (d: unknown, i: unknown) => tf.KernelBackend)(
    device,
    adapter.info,
  );
}

/** Every uncaptured error of the device, in order (see {@linkcode webGpuErrors}). */
const errors: string[] = [];

/** Errors printed at most; the rest are only counted. */
const ERRORS_PRINTED = 3;

/**
 * Listens for the device's uncaptured errors. WebGPU reports a shader that does not
 * compile or a bind group that does not match its pipeline only this way, and the command
 * buffer holding it then does nothing at all: without this, such a kernel's output would be
 * whatever its buffer held, silently.
 */
function watchErrors(device: unknown): void {
  const target = device as {
    addEventListener?(
      type: string,
      listener: (event: { error?: { message?: string } }) => void,
    ): void;
  };
  target.addEventListener?.("uncapturederror", (event) => {
    const message = event.error?.message ?? String(event.error);
    errors.push(message);
    if (errors.length <= ERRORS_PRINTED) {
      console.error(`WebGPU error (results computed on the GPU are wrong): ${message}`);
    }
  });
}

/**
 * The uncaptured errors of the webgpu backend's device so far (shader compilation,
 * validation), in order; empty when all is well. Printed as they happen, the first three.
 */
export function webGpuErrors(): readonly string[] {
  return errors;
}

let installed = false;

/**
 * Replaces tfjs's webgpu factory by {@linkcode createBackend}'s, before the backend first
 * starts; idempotent, and a no-op where tfjs registered none (no `navigator.gpu`) or the
 * backend already runs (its device stays).
 */
export function installWebGpuDevice(): void {
  if (installed) return;
  installed = true;
  const registry = (tf.engine() as unknown as { registry: Record<string, unknown> }).registry;
  const factory = tf.findBackendFactory("webgpu");
  if (!factory || "webgpu" in registry) return;
  tf.removeBackend("webgpu");
  tf.registerBackend("webgpu", createBackend, 3); // tfjs's priority
}
