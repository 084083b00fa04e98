/**
 * Starts tfjs-backend-wasm's threaded SIMD build under Deno.
 *
 * Why this file exists: tfjs-backend-wasm picks its threaded binary only where
 * `WASM_HAS_MULTITHREAD_SUPPORT` holds, and under Deno that probe fails, so training ran on
 * one core. Its threaded build does work under Deno once four things are arranged, all
 * done here and nowhere else:
 *
 * 1. Emscripten's pthread workers are `node:worker_threads` workers (Deno looks like Node
 *    to it). Deno's `Worker` accepts only a file path, while tfjs hands it a `blob:` URL,
 *    so the worker script is written to a temporary `.cjs` file (deleted once the
 *    workers have loaded it).
 * 2. That script assigns `self`, `location`, `postMessage`, ... onto the global object,
 *    some of which are getter-only in a Deno worker; a one-line prelude turns them into
 *    plain writable properties first.
 * 3. The C++ side caps its thread pool at `os.cpus().length / 2` (it assumes two
 *    hyper-threads per core) when the module is instantiated; on a 2-core machine that
 *    is one thread. `os.cpus()` reports each CPU twice for the duration of the start-up
 *    only, so the cap becomes the real number of logical CPUs, and
 *    `setThreadsCount` picks the number actually used.
 * 4. The workers are `unref`'d so that they do not keep a finished program alive.
 *
 * Anything that fails falls back to tfjs's own single-threaded start-up, and the reason
 * is kept for the progress log.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import * as wasm from "@tensorflow/tfjs-backend-wasm";
import threadedSimdFactory from "@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.js";
import threadedWorker from "@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.worker.js";
import os from "node:os";

// The globals that Emscripten's worker script assigns; Deno defines some as getters.
const WORKER_GLOBALS = [
  "self",
  "location",
  "Worker",
  "importScripts",
  "postMessage",
  "performance",
];

interface NodeWorkerLike {
  unref(): void;
  terminate(): void;
}

interface EmscriptenModule {
  cwrap(name: string, ret: string | null, args: string[]): (...args: number[]) => number;
  PThread: { unusedWorkers: NodeWorkerLike[]; runningWorkers: NodeWorkerLike[] };
  tfjs?: Record<string, unknown>;
}

type Factory = (config: Record<string, unknown>) => Promise<EmscriptenModule>;

/** What {@linkcode installThreadedWasm} did. */
export interface ThreadedWasmStatus {
  /** Threads tfjs-backend-wasm will use (1 when the threaded build could not start). */
  requested: number;
  /** Why the count is what it is, for the progress log; empty when threads started. */
  fallbackReason: string;
}

let status: ThreadedWasmStatus | null = null;

function workerScript(): string {
  const contents = (threadedWorker as { wasmWorkerContents: string }).wasmWorkerContents;
  const prelude = `for (const k of ${JSON.stringify(WORKER_GLOBALS)}) ` +
    `Object.defineProperty(globalThis, k, { value: globalThis[k], writable: true, ` +
    `configurable: true, enumerable: true });\n`;
  // tfjs stores the script in a template literal, which turned its "\n" escapes into real
  // newlines inside string literals; they are escaped back, as tfjs does before use.
  return prelude + contents.replace(/\n/g, "\\n");
}

async function startThreaded(threads: number): Promise<EmscriptenModule> {
  const dir = Deno.makeTempDirSync({ prefix: "sigma-wasm-threads-" });
  const workerPath = `${dir}/pthread-worker.cjs`;
  Deno.writeTextFileSync(workerPath, workerScript());
  const realCpus = os.cpus;
  os.cpus = () => {
    const cpus = realCpus.call(os);
    return [...cpus, ...cpus];
  };
  let module: EmscriptenModule;
  try {
    module = await (threadedSimdFactory as unknown as Factory)({
      locateFile: (path: string, prefix: string) =>
        path.endsWith(".worker.js") ? workerPath : prefix + path,
    });
  } finally {
    os.cpus = realCpus;
    Deno.removeSync(dir, { recursive: true });
  }
  // The same C entry points tfjs's own start-up binds (see BackendWasm's constructor).
  module.tfjs = {
    init: module.cwrap("init", null, []),
    initWithThreadsCount: module.cwrap("init_with_threads_count", null, ["number"]),
    getThreadsCount: module.cwrap("get_threads_count", "number", []),
    registerTensor: module.cwrap("register_tensor", null, ["number", "number", "number"]),
    disposeData: module.cwrap("dispose_data", null, ["number"]),
    dispose: module.cwrap("dispose", null, []),
  };
  wasm.setThreadsCount(threads);
  return module;
}

/**
 * Replaces tfjs-backend-wasm's start-up by one that uses `threads` threads (default: the
 * logical CPUs). Call before the wasm backend is first activated; later calls return the
 * first call's status. With `threads` 1, or without `SharedArrayBuffer`, tfjs's own
 * single-threaded start-up stays.
 */
export function installThreadedWasm(
  threads = navigator.hardwareConcurrency ?? 1,
): ThreadedWasmStatus {
  if (!Number.isInteger(threads) || threads < 1) {
    throw new RangeError(`Invalid wasm thread count ${threads}: expected an integer >= 1`);
  }
  if (status) return status;
  if (threads === 1) return status = { requested: 1, fallbackReason: "1 thread asked for" };
  // The start-up writes a temporary worker script and reads the CPU count.
  const missing = [
    Deno.permissions.querySync({ name: "write" }).state === "granted" ? "" : "--allow-write",
    Deno.permissions.querySync({ name: "sys", kind: "cpus" }).state === "granted"
      ? ""
      : "--allow-sys",
  ].filter((f) => f);
  if (missing.length > 0) {
    return status = {
      requested: 1,
      fallbackReason: `one thread: wasm threads need ${missing.join(" and ")}`,
    };
  }
  if (typeof SharedArrayBuffer === "undefined") {
    return status = { requested: 1, fallbackReason: "no SharedArrayBuffer" };
  }
  const singleThreaded = tf.findBackendFactory("wasm");
  if (!singleThreaded) throw new Error("tfjs-backend-wasm registered no backend factory");
  status = { requested: threads, fallbackReason: "" };
  const current = status;
  tf.removeBackend("wasm");
  tf.registerBackend("wasm", async () => {
    try {
      const module = await startThreaded(threads);
      const backend = new wasm.BackendWasm(
        module as unknown as ConstructorParameters<
          typeof wasm.BackendWasm
        >[0],
      );
      for (const worker of [...module.PThread.unusedWorkers, ...module.PThread.runningWorkers]) {
        worker.unref();
      }
      return backend;
    } catch (error) {
      current.requested = 1;
      current.fallbackReason = `threaded start-up failed (${(error as Error).message ?? error})`;
      return await singleThreaded();
    }
  }, 2);
  return status;
}
