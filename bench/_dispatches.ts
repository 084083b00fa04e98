/**
 * Counts the dispatches of a piece of tfjs work: on webgpu the GPU compute dispatches and
 * queue submits, on cpu and wasm the kernel calls that do work. tfjs-backend-webgpu runs
 * one compute dispatch per kernel (some kernels more), and on a real GPU the fixed cost of
 * each dispatch, not the arithmetic, is most of a training step's time, so the benches
 * print this count beside their timings.
 *
 * ```ts ignore
 * import { countDispatches } from "./_dispatches.ts";
 * const { count } = await countDispatches(async () => await step());
 * console.log(count.dispatches, count.submits);
 * ```
 *
 * How it counts, on the active backend:
 * - webgpu: calls of `GPUComputePassEncoder.prototype.dispatchWorkgroups` (`dispatches`)
 *   and of `GPUQueue.prototype.submit` (`submits`), wrapped for the duration of the call.
 *   The prototypes are wrapped rather than tfjs's `recordAndSubmit` so that code which
 *   dispatches or submits on tfjs's encoder and queue itself (a fused kernel that calls
 *   `backend.computePassEncoder.dispatchWorkgroups` and bumps `dispatchCountInPass`) is
 *   counted too. This counts every device of the process: a bench has one. tfjs's own
 *   programs are also counted (`programs`: calls of the backend's `recordAndSubmit`, one
 *   dispatch each), as are its host readbacks (`readbacks`: `getBufferData`, the copy to
 *   a mapped buffer behind `data()`, and `readSync`). Where the prototypes cannot be
 *   reached (no `GPUComputePassEncoder` global), `dispatches` falls back to `programs`
 *   and `submits` to calls of tfjs's `submitQueue`, and direct dispatches go uncounted;
 *   `dispatchSource` says which.
 * - every backend: `kernels`, calls of the tfjs engine's `runKernel` that do work. Not
 *   counted: kernels that hand back their input's data under a new shape or a new
 *   reference and run no code over it: `Reshape`, `Identity` (a custom gradient's saved
 *   tensors are clones) and `ExpandDims` ({@linkcode NO_WORK_KERNELS}); and a kernel that
 *   runs other kernels through the engine (its inner kernels are counted instead). A
 *   custom gradient's forward function is no kernel (it does not go through `runKernel`);
 *   the ops inside it are counted. On cpu and wasm `dispatches` is this count.
 *
 * These are tfjs-backend-webgpu 4.22 internals (`recordAndSubmit`, `submitQueue`,
 * `getBufferData` on the backend object): a backend without them is counted through the
 * prototypes and the engine only.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/**
 * Kernels not counted on any backend: on tfjs's cpu, wasm and webgpu backends and with
 * this project's kernels they share their input's data (a new shape, or one more
 * reference) instead of running over it.
 */
export const NO_WORK_KERNELS: ReadonlySet<string> = new Set(["Reshape", "Identity", "ExpandDims"]);

/** What {@linkcode countDispatches} counted while its function ran. */
export interface DispatchCount {
  /** The tfjs backend that was active. */
  backend: string;
  /**
   * GPU compute dispatches on webgpu (see `dispatchSource`); on cpu and wasm the kernel
   * calls that do work (`kernels`).
   */
  dispatches: number;
  /** Engine kernel calls that do work (not {@linkcode NO_WORK_KERNELS}, not containers). */
  kernels: number;
  /** webgpu: programs tfjs recorded (`recordAndSubmit` calls, one dispatch each). */
  programs?: number;
  /** webgpu: command buffers submitted to the queue. */
  submits?: number;
  /** webgpu: reads of a GPU buffer back to the host (`getBufferData`, `readSync`). */
  readbacks?: number;
  /**
   * webgpu: what `dispatches` and `submits` count: `"prototype"` (every
   * `dispatchWorkgroups` and `queue.submit` call) or `"tfjs"` (tfjs's `recordAndSubmit` and
   * `submitQueue` only, where the WebGPU prototypes are not reachable).
   */
  dispatchSource?: "prototype" | "tfjs";
}

/** Replaces `obj[key]` by `wrap(original)` and returns the function that undoes it. */
function patch<T extends object>(
  obj: T,
  key: string,
  wrap: (original: (...args: unknown[]) => unknown) => (...args: unknown[]) => unknown,
): () => void {
  const target = obj as Record<string, unknown>;
  const own = Object.hasOwn(target, key);
  const original = target[key] as (...args: unknown[]) => unknown;
  if (typeof original !== "function") throw new TypeError(`no method "${key}" to wrap`);
  target[key] = wrap(original);
  return () => {
    // An instance method that came from the prototype goes back to the prototype's.
    if (own) target[key] = original;
    else delete target[key];
  };
}

/** A WebGPU interface's prototype (a global class in Deno and browsers), if reachable. */
function gpuPrototype(name: string, method: string): object | undefined {
  const cls = (globalThis as Record<string, unknown>)[name] as { prototype?: object } | undefined;
  const proto = cls?.prototype as Record<string, unknown> | undefined;
  return typeof proto?.[method] === "function" ? proto : undefined;
}

/**
 * Runs `run` and counts what it dispatched on the active tfjs backend (see the module
 * doc for what counts); every wrapped method is restored afterwards, also when `run`
 * throws. Only what `run` itself does is counted: work another task runs meanwhile is
 * counted too on webgpu (the prototypes are shared), so do not overlap two counted
 * calls. On webgpu, dispatches tfjs holds back in its command encoder are submitted at
 * its next batch boundary or readback: a `run` that ends with `await t.data()` has
 * submitted all of its work.
 *
 * @example Usage
 * ```ts ignore
 * const { result, count } = await countDispatches(() => tf.add(a, b));
 * ```
 */
export async function countDispatches<T>(
  run: () => T | Promise<T>,
): Promise<{ result: T; count: DispatchCount }> {
  const backendName = tf.getBackend();
  const count: DispatchCount = { backend: backendName, dispatches: 0, kernels: 0 };
  const restores: (() => void)[] = [];
  // Per kernel call in progress: whether a kernel that does work ran inside it.
  const open: boolean[] = [];
  restores.push(
    patch(tf.engine(), "runKernel", (original) =>
      function (this: unknown, ...args: unknown[]) {
        open.push(false);
        let counted = false;
        try {
          return original.apply(this, args);
        } finally {
          const inner = open.pop();
          counted = !inner && !NO_WORK_KERNELS.has(args[0] as string);
          if (counted) count.kernels++;
          if ((counted || inner) && open.length > 0) open[open.length - 1] = true;
        }
      }),
  );
  if (backendName === "webgpu") {
    const backend = tf.backend() as unknown as object;
    count.programs = 0;
    count.submits = 0;
    count.readbacks = 0;
    const bump = (key: "programs" | "submits" | "readbacks" | "dispatches") =>
    (
      original: (
        ...args: unknown[]
      ) => unknown,
    ) =>
      function (this: unknown, ...args: unknown[]) {
        count[key] = (count[key] ?? 0) + 1;
        return original.apply(this, args);
      };
    const pass = gpuPrototype("GPUComputePassEncoder", "dispatchWorkgroups");
    const queue = gpuPrototype("GPUQueue", "submit");
    count.dispatchSource = pass && queue ? "prototype" : "tfjs";
    restores.push(patch(backend, "recordAndSubmit", bump("programs")));
    restores.push(patch(backend, "getBufferData", bump("readbacks")));
    restores.push(patch(backend, "readSync", bump("readbacks")));
    if (pass && queue) {
      restores.push(patch(pass, "dispatchWorkgroups", bump("dispatches")));
      restores.push(patch(queue, "submit", bump("submits")));
    } else {
      restores.push(patch(backend, "recordAndSubmit", bump("dispatches")));
      restores.push(patch(backend, "submitQueue", bump("submits")));
    }
  }
  try {
    const result = await run();
    if (backendName !== "webgpu") count.dispatches = count.kernels;
    return { result, count };
  } finally {
    // Last wrapped, first restored: a method wrapped twice gets its original back.
    for (const restore of restores.reverse()) restore();
  }
}

/**
 * The count as a few words for a bench's summary line: `1486 dispatches, 100 submits,
 * 1 readbacks` on webgpu, `1201 dispatches (kernel calls doing work)` on cpu and wasm.
 */
export function describeCount(count: DispatchCount): string {
  if (count.backend !== "webgpu") return `${count.dispatches} dispatches (kernel calls doing work)`;
  const source = count.dispatchSource === "tfjs" ? ", tfjs's programs only" : "";
  return `${count.dispatches} dispatches, ${count.submits} submits, ` +
    `${count.readbacks} readbacks${source}`;
}
