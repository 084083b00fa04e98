/**
 * The last test of a module that ran tfjs on WebGPU: it releases the device.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { assert, assertEquals } from "./_assert.ts";
import { webGpuErrors } from "../backends/_webgpu_device.ts";

/**
 * Registers, as the module's last test, the release of tfjs's WebGPU backend and device.
 * On the software adapter (llvmpipe) a test process that exits with the device alive
 * sometimes aborts after its last test, with status 134 and "double free or corruption":
 * a driver thread's exit races the process's exit handlers (a core dump showed the main
 * thread in `exit` -> `_dl_fini` and another thread freeing its thread-local data). Seen in
 * 2 of 41 runs of `recommender_test.ts` alone, and in none of 40 with the device released.
 * Call it at the end of the module, after every test that may select webgpu.
 */
export function releaseWebGpuAfterTests(): void {
  Deno.test("the WebGPU device reported no errors and is released before the process exits", () => {
    // The registry, not tf.findBackend: that would start a backend that never ran here.
    const registry = (tf.engine() as unknown as { registry: Record<string, unknown> }).registry;
    const backend = registry.webgpu as { device?: { destroy(): void } } | undefined;
    if (backend === undefined) return;
    // A kernel that did not compile, or a binding that did not match, ran as nothing.
    assertEquals([...webGpuErrors()], [], "the device reported errors during this module");
    const device = backend.device;
    tf.removeBackend("webgpu");
    device?.destroy();
    assert(!("webgpu" in registry), "the webgpu backend is still registered");
  });
}

/**
 * Counts GPU compute dispatches while `fn` runs, by wrapping
 * `GPUComputePassEncoder.prototype.dispatchWorkgroups`: tfjs's programs and the project's
 * raw dispatches (the fused Adam's) alike.
 */
export function countGpuDispatches(fn: () => void): number {
  const proto = (globalThis as unknown as {
    GPUComputePassEncoder: { prototype: { dispatchWorkgroups(...a: unknown[]): void } };
  }).GPUComputePassEncoder.prototype;
  const original = proto.dispatchWorkgroups;
  let count = 0;
  proto.dispatchWorkgroups = function (this: unknown, ...args: unknown[]) {
    count++;
    return original.apply(this, args);
  };
  try {
    fn();
  } finally {
    proto.dispatchWorkgroups = original;
  }
  return count;
}
