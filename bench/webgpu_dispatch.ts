/**
 * Where one WebGPU dispatch's time goes: micro-benchmarks of one small op on the webgpu
 * backend (tfjs-backend-webgpu 4.22, Deno's WebGPU), in a loop of `--ops` chained ops with
 * no readback until the end, as the ~1,500 small ops of a training step run.
 *
 * ```sh
 * deno run -A bench/webgpu_dispatch.ts
 * deno run -A bench/webgpu_dispatch.ts --ops 500 --reps 5 --shape 256,128 --readback-mib 12
 * ```
 *
 * It prints four tables:
 * - submit batching: wall time per op for each `WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE` of
 *   `--batch-sizes` (tfjs submits a command buffer every that many dispatches; default 15),
 *   the ops enqueued alone and with the final readback, and the time inside `queue.submit`;
 * - the breakdown of one op at the default batch size: every tfjs method on the way from
 *   `tf.add` to the dispatch (the engine's `runKernel`, `runWebGPUProgram`,
 *   `recordAndSubmit`, `makeUniforms`, the buffer pool, `submitQueue`) and every Deno
 *   WebGPU call and getter they make, wrapped with timers; a method's own time excludes
 *   the wrapped calls inside it. What is not wrapped is in its caller's own time: the shader
 *   key (`makeShaderKey`, a module function of the bundle) in `runWebGPUProgram`'s, the
 *   uniform list in `recordAndSubmit`'s. The timers add to every wrapped call, so the
 *   instrumented op is slower than the uninstrumented one (both are printed);
 * - host readbacks (`await t.data()`) of a scalar, of the op's output and of a
 *   `--readback-mib` tensor, each computed on the GPU and finished before it is read; and
 *   the same without tfjs (`raw`): a 4-byte copy, `queue.submit` and `mapAsync` straight on
 *   tfjs's device, and `queue.onSubmittedWorkDone` on an idle queue;
 * - GPU execution against the rest: the loop's wall time without its final readback and
 *   with it, and the time inside `queue.submit`, for a tiny shape, `--shape` and a
 *   1024 x 1024 one. What the readback adds beyond a scalar's readback is GPU work still
 *   queued at the end (on llvmpipe none: it runs the work inside `queue.submit`).
 *
 * Flags: `--ops` (2000: ops per loop), `--reps` (3: timed loops per row, median; each
 * after one untimed warm-up loop), `--shape R,C` (256,128: the two `tf.add` operands),
 * `--batch-sizes` (1,15,100,1000), `--readback-mib` (12).
 *
 * On a software adapter (llvmpipe, Mesa's CPU rasteriser) the GPU runs on the same CPU
 * cores as JavaScript, so GPU execution times say nothing about a real GPU; the JS-side
 * and API-call times do.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { positiveInt, positiveNumber } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { countDispatches } from "./_dispatches.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ops: { type: "string", default: "2000" },
    reps: { type: "string", default: "3" },
    shape: { type: "string", default: "256,128" },
    "batch-sizes": { type: "string", default: "1,15,100,1000" },
    "readback-mib": { type: "string", default: "12" },
  },
  strict: true,
});
const ops = positiveInt("ops", values.ops);
const reps = positiveInt("reps", values.reps);
const shape = intList("shape", values.shape);
if (shape.length !== 2) throw new RangeError(`--shape must be R,C, got "${values.shape}"`);
const batchSizes = intList("batch-sizes", values["batch-sizes"]);
const readbackMiB = positiveNumber("readback-mib", values["readback-mib"]);

/** A comma-separated list of positive integers, or a RangeError naming `--flag`. */
function intList(flag: string, text: string): number[] {
  const list = text.split(",").map((part) => Number(part));
  if (!list.every((n) => Number.isInteger(n) && n >= 1)) {
    throw new RangeError(`--${flag} must be positive integers separated by commas, got "${text}"`);
  }
  return list;
}

const chosen = await selectBackend("webgpu", { webgpuCpuForward: false });
const BATCH_FLAG = "WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE";
const defaultBatch = tf.env().get(BATCH_FLAG) as number;

type Fn = (...args: unknown[]) => unknown;

/** Time spent in one wrapped method or getter over a loop. */
interface Slot {
  calls: number;
  /** Inclusive of the wrapped calls inside it. */
  totalMs: number;
  /** Less the wrapped calls inside it. */
  selfMs: number;
}

/**
 * Timers around methods and getters, each slot's own time excluding the timed calls
 * inside it (a stack of the time children took), so that the slots add up to the loop.
 */
class Timers {
  readonly slots = new Map<string, Slot>();
  #children: number[] = [];
  #restores: (() => void)[] = [];

  #slot(name: string): Slot {
    let slot = this.slots.get(name);
    if (!slot) this.slots.set(name, slot = { calls: 0, totalMs: 0, selfMs: 0 });
    return slot;
  }

  #timed(name: string, original: Fn): Fn {
    const slot = this.#slot(name);
    const children = this.#children;
    return function (this: unknown, ...args: unknown[]) {
      children.push(0);
      const t0 = performance.now();
      try {
        return original.apply(this, args);
      } finally {
        const dt = performance.now() - t0;
        const inner = children.pop()!;
        if (children.length > 0) children[children.length - 1] += dt;
        slot.calls++;
        slot.totalMs += dt;
        slot.selfMs += dt - inner;
      }
    };
  }

  /** Times `obj[key]` as `name` (a method, or a getter found on `obj`) until `restore`. */
  wrap(name: string, obj: object | undefined, key: string): void {
    if (!obj) return; // an interface this Deno does not expose: its calls stay unattributed
    const descriptor = Object.getOwnPropertyDescriptor(obj, key);
    if (descriptor?.get) {
      Object.defineProperty(obj, key, {
        ...descriptor,
        get: this.#timed(name, descriptor.get) as () => unknown,
      });
      this.#restores.push(() => Object.defineProperty(obj, key, descriptor));
      return;
    }
    const target = obj as Record<string, unknown>;
    const original = target[key];
    if (typeof original !== "function") throw new TypeError(`no method "${key}" to time`);
    target[key] = this.#timed(name, original as Fn);
    this.#restores.push(() => {
      // An instance's wrapper over a prototype method goes; a prototype gets its own back.
      if (descriptor) target[key] = original;
      else delete target[key];
    });
  }

  /** Puts every wrapped method and getter back, last wrapped first. */
  restore(): void {
    for (const restore of this.#restores.reverse()) restore();
    this.#restores = [];
  }
}

/** The prototype of a WebGPU interface (a global class in Deno), if this Deno has one. */
function proto(name: string): object | undefined {
  return ((globalThis as Record<string, unknown>)[name] as { prototype?: object } | undefined)
    ?.prototype;
}

/** The tfjs methods on the way from `tf.add` to a dispatch, and Deno's WebGPU calls. */
const TFJS_METHODS = [
  "runWebGPUProgram",
  "recordAndSubmit",
  "makeUniforms",
  "uploadToGPU",
  "tensorToBinding",
  "submitQueue",
  "disposeData",
] as const;
const POOL_METHODS = ["acquireBuffer", "releaseBuffer"] as const;
const GPU_CALLS: [string, string[]][] = [
  ["GPUDevice", ["createBindGroup", "createBuffer", "createCommandEncoder", "limits"]],
  ["GPUSupportedLimits", ["maxComputeWorkgroupsPerDimension"]],
  ["GPUComputePipeline", ["getBindGroupLayout"]],
  ["GPUQueue", ["writeBuffer", "submit"]],
  ["GPUCommandEncoder", ["beginComputePass", "finish"]],
  ["GPUComputePassEncoder", ["setPipeline", "setBindGroup", "dispatchWorkgroups", "end"]],
  ["GPUBuffer", ["size", "usage", "mapState", "destroy"]],
];

/** The two operands of the loop's op, on the GPU. */
function operands(dims: number[]): [tf.Tensor, tf.Tensor] {
  // tf.fill runs on the GPU: a tensor made from host values would be uploaded by the
  // first op that reads it, inside the timed loop.
  return [tf.fill(dims, 1), tf.fill(dims, 0.5)];
}

/**
 * `ops` chained `tf.add`s, each input freed as its successor is made (as a step frees its
 * intermediates), then the last output read back. Milliseconds: enqueueing all ops, and
 * up to the end of the readback. Call {@linkcode settle} first, so that the loop pays for
 * its own ops only.
 */
async function chain(a: tf.Tensor, b: tf.Tensor): Promise<{ enqueue: number; total: number }> {
  const t0 = performance.now();
  let x = tf.add(a, b);
  for (let i = 1; i < ops; i++) {
    const y = tf.add(x, b);
    x.dispose();
    x = y;
  }
  const t1 = performance.now();
  await x.data();
  const t2 = performance.now();
  x.dispose();
  return { enqueue: t1 - t0, total: t2 - t0 };
}

/** Waits until the GPU has finished all submitted and pending work (a scalar readback). */
async function settle(): Promise<void> {
  const s = tf.fill([1], 0);
  await s.data();
  s.dispose();
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((p, q) => p - q);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * One warm-up loop (counted with `countDispatches`), then `reps` timed loops; medians in
 * milliseconds per loop: ops enqueued, with the final readback, and inside `queue.submit`
 * (wrapped, a timer per submit).
 */
async function timeLoops(dims: number[]) {
  const [a, b] = operands(dims);
  await settle();
  const { count } = await countDispatches(() => chain(a, b));
  const enqueue: number[] = [];
  const total: number[] = [];
  const submit: number[] = [];
  for (let r = 0; r < reps; r++) {
    const timers = new Timers();
    timers.wrap("submit", proto("GPUQueue"), "submit");
    try {
      await settle();
      const t = await chain(a, b);
      enqueue.push(t.enqueue);
      total.push(t.total);
      // Submits of the loop's ops only: the readback's own submit comes after `enqueue`.
      submit.push(timers.slots.get("submit")?.totalMs ?? 0);
    } finally {
      timers.restore();
    }
  }
  tf.dispose([a, b]);
  return { count, enqueue: median(enqueue), total: median(total), submit: median(submit) };
}

/** Milliseconds for a loop as microseconds per op, one decimal. */
const perOp = (ms: number) => (ms * 1000 / ops).toFixed(1);
const pad = (text: string | number, width: number) => String(text).padStart(width);

console.log(`backend: ${chosen.name} (${chosen.reason})`);
console.log(
  `op: tf.add of two [${shape}] float32 tensors, ${ops} chained per loop, ` +
    `median of ${reps} loops; ${BATCH_FLAG} defaults to ${defaultBatch}`,
);

// (c) Submit batching.
console.log(`\nsubmit batching (${BATCH_FLAG}; µs per op)`);
console.log("batch size  dispatches  submits  enqueued  with readback  in submit");
for (const size of batchSizes) {
  tf.env().set(BATCH_FLAG, size);
  const r = await timeLoops(shape);
  console.log(
    `${pad(size, 10)}${pad(r.count.dispatches, 12)}${pad(r.count.submits!, 9)}` +
      `${pad(perOp(r.enqueue), 10)}${pad(perOp(r.total), 15)}${pad(perOp(r.submit), 11)}`,
  );
}
tf.env().set(BATCH_FLAG, defaultBatch);

// (a), (b) The breakdown of one op at the default batch size.
{
  const [a, b] = operands(shape);
  await settle();
  await chain(a, b); // warm-up: pipelines compiled, the buffer pool filled
  const plain: number[] = [];
  for (let r = 0; r < reps; r++) {
    await settle();
    plain.push((await chain(a, b)).enqueue);
  }
  const timers = new Timers();
  const backend = tf.backend() as unknown as Record<string, unknown>;
  timers.wrap("engine.runKernel", tf.engine(), "runKernel");
  for (const m of TFJS_METHODS) timers.wrap(m, backend, m);
  for (const m of POOL_METHODS) timers.wrap(m, backend.bufferManager as object, m);
  for (const [cls, members] of GPU_CALLS) {
    for (const m of members) timers.wrap(`${cls}.${m}`, proto(cls), m);
  }
  let enqueue: number;
  await settle();
  try {
    enqueue = (await chain(a, b)).enqueue;
  } finally {
    timers.restore();
  }
  tf.dispose([a, b]);
  const slot = (name: string) => timers.slots.get(name) ?? { calls: 0, totalMs: 0, selfMs: 0 };
  const line = (label: string, calls: string, ms: number) =>
    `${label.padEnd(64)}${pad(calls, 9)}${pad(perOp(ms), 8)}`;
  const tfjsParts: [string, string][] = [
    ["engine.runKernel", "engine.runKernel (bookkeeping, the kernel function)"],
    ["runWebGPUProgram", "runWebGPUProgram (dispatch shape, shader key, pipeline lookup)"],
    ["uploadToGPU", "uploadToGPU (the output's buffer)"],
    ["recordAndSubmit", "recordAndSubmit (uniform list, bindings)"],
    ["makeUniforms", "makeUniforms (packing the uniforms)"],
    ["tensorToBinding", "tensorToBinding"],
    ["acquireBuffer", "bufferManager.acquireBuffer (pool)"],
    ["releaseBuffer", "bufferManager.releaseBuffer (pool)"],
    ["submitQueue", "submitQueue (frees the buffers of disposed tensors)"],
    ["disposeData", "disposeData"],
  ];
  // Outside the engine: tf.add's own checks, the input's dispose, the loop.
  const outside = enqueue - slot("engine.runKernel").totalMs;
  const tfjsLines = [line("  tf.add and dispose, outside engine.runKernel", "", outside)];
  let tfjsMs = outside;
  for (const [name, label] of tfjsParts) {
    const s = slot(name);
    tfjsMs += s.selfMs;
    tfjsLines.push(line(`  ${label}`, (s.calls / ops).toFixed(2), s.selfMs));
  }
  const apiLines: string[] = [];
  let apiMs = 0;
  for (const [cls, members] of GPU_CALLS) {
    for (const m of members) {
      const s = slot(`${cls}.${m}`);
      if (s.calls === 0) continue;
      apiMs += s.selfMs;
      apiLines.push(line(`  ${cls}.${m}`, (s.calls / ops).toFixed(2), s.selfMs));
    }
  }
  console.log(
    `\none op at batch size ${defaultBatch}: own time of each part (less the timed calls ` +
      "inside it), µs per op; the loop's final readback not included",
  );
  console.log(`${"part".padEnd(64)}${pad("calls/op", 9)}${pad("µs/op", 8)}`);
  console.log(line("wall, uninstrumented (median)", "", median(plain)));
  console.log(line("wall, instrumented", "", enqueue));
  console.log(line("tfjs JavaScript", "", tfjsMs));
  for (const l of tfjsLines) console.log(l);
  console.log(line("Deno WebGPU calls and getters", "", apiMs));
  for (const l of apiLines) console.log(l);
}

// (d) Host readbacks.
console.log(
  "\nhost readback: await t.data() of a tensor already computed on the GPU (median ms)",
);
console.log("tensor                    bytes      ms");
const readbackRows = Math.max(1, Math.round(readbackMiB * 2 ** 20 / 4 / 1024));
let scalarMs = NaN;
for (const dims of [[], shape, [readbackRows, 1024]]) {
  const times: number[] = [];
  for (let r = 0; r <= reps; r++) {
    const t = tf.fill(dims, r); // a fresh tensor each time: tfjs keeps what it has read
    await settle();
    const t0 = performance.now();
    await t.data();
    if (r > 0) times.push(performance.now() - t0); // the first read warms up
    t.dispose();
  }
  const bytes = dims.reduce((p, q) => p * q, 4);
  if (dims.length === 0) scalarMs = median(times);
  const label = dims.length === 0 ? "scalar" : `[${dims}]`;
  console.log(`${label.padEnd(20)}${pad(bytes, 11)}${pad(median(times).toFixed(2), 8)}`);
}
{
  // The same wait without tfjs, on tfjs's device: is it tfjs's or Deno's WebGPU's?
  const device = (tf.backend() as unknown as { device: GPUDevice }).device;
  const src = device.createBuffer({ size: 4, usage: GPUBufferUsage.COPY_SRC });
  const mapped: number[] = [];
  const done: number[] = [];
  for (let r = 0; r <= reps; r++) {
    const dst = device.createBuffer({
      size: 4,
      usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
    });
    const t0 = performance.now();
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(src, 0, dst, 0, 4);
    device.queue.submit([encoder.finish()]);
    await dst.mapAsync(GPUMapMode.READ);
    const t1 = performance.now();
    await device.queue.onSubmittedWorkDone(); // nothing left to wait for
    if (r > 0) mapped.push(t1 - t0);
    if (r > 0) done.push(performance.now() - t1);
    dst.unmap();
    dst.destroy();
  }
  src.destroy();
  console.log(
    `${"raw: copy, submit, mapAsync".padEnd(20)}${pad(4, 11)}${pad(median(mapped).toFixed(2), 8)}`,
  );
  console.log(
    `${"raw: onSubmittedWorkDone, idle".padEnd(31)}${pad(median(done).toFixed(2), 8)}`,
  );
}

// (e) GPU execution against the rest.
console.log(
  `\nGPU execution against the rest (batch size ${defaultBatch}; ms per loop of ${ops} ops; ` +
    "the readback's wait less a scalar's readback is GPU work still queued at the end)",
);
console.log(
  "shape        enqueued  in submit  with readback  wait  wait less scalar read  µs/op",
);
for (const dims of [[1, 4], shape, [1024, 1024]]) {
  const t = await timeLoops(dims);
  const wait = t.total - t.enqueue;
  console.log(
    `${`[${dims}]`.padEnd(11)}${pad(t.enqueue.toFixed(0), 10)}${pad(t.submit.toFixed(0), 11)}` +
      `${pad(t.total.toFixed(0), 15)}${pad(wait.toFixed(1), 6)}` +
      `${pad((wait - scalarMs).toFixed(1), 23)}${pad(perOp(t.total), 7)}`,
  );
}
