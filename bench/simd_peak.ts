/**
 * The arithmetic ceiling of WebAssembly SIMD on this machine: GFLOP/s of a loop that does
 * nothing but 128-bit float multiply-adds in registers (no memory traffic), on one thread
 * and on every core at once, as `f32x4.relaxed_madd` (a fused multiply-add where the CPU
 * has one) and as `f32x4.mul` + `f32x4.add`. No GEMM written in WebAssembly can beat it,
 * so it bounds what any wasm kernel of this project could do for the item GEMMs
 * (`bench/gemm.ts` measures those).
 *
 * ```sh
 * deno run -A bench/simd_peak.ts                 # 1 thread and all logical CPUs
 * deno run -A bench/simd_peak.ts --seconds 2
 * ```
 *
 * The module is assembled here, byte by byte, rather than compiled: 12 independent
 * accumulators (enough to cover the latency of a multiply-add at two per cycle, and few
 * enough to stay in x86's 16 vector registers), each updated as `acc = acc * x + y` with
 * x = 0.9999, y = 0.0001, which converge to 1 (no overflow, no denormals). 12 lanes x 4
 * floats x 2 FLOP = 96 FLOP per loop iteration.
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import "./_flags.ts"; // an uncaught error is a message, not a stack trace

const ACCUMULATORS = 12;
const FLOP_PER_ITERATION = ACCUMULATORS * 4 * 2;

type Variant = "relaxed_madd" | "mul_add";

/** Unsigned LEB128, as WebAssembly encodes indices, sizes and opcode suffixes. */
function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

const section = (id: number, body: number[]) => [id, ...leb(body.length), ...body];
const simd = (op: number) => [0xfd, ...leb(op)];
const f32x4Const = (v: number) => {
  const bytes = new Uint8Array(new Float32Array([v, v, v, v]).buffer);
  return [...simd(0x0c), ...bytes];
};

/** A module exporting `run(iterations: i32) -> f32`: the multiply-add loop above. */
function peakModule(variant: Variant): Uint8Array<ArrayBuffer> {
  const x = ACCUMULATORS + 1; // local indices: 0 the count, 1..12 accumulators, then x, y
  const y = ACCUMULATORS + 2;
  const body: number[] = [1, ...leb(ACCUMULATORS + 2), 0x7b]; // locals: 14 x v128
  for (let j = 1; j <= ACCUMULATORS; j++) body.push(...f32x4Const(0), 0x21, j);
  body.push(...f32x4Const(0.9999), 0x21, x, ...f32x4Const(0.0001), 0x21, y);
  body.push(0x03, 0x40); // loop
  for (let j = 1; j <= ACCUMULATORS; j++) {
    body.push(0x20, j, 0x20, x);
    if (variant === "relaxed_madd") body.push(0x20, y, ...simd(0x105)); // acc * x + y
    else body.push(...simd(0xe6), 0x20, y, ...simd(0xe4)); // (acc * x) + y
    body.push(0x21, j);
  }
  // count -= 1; continue while count != 0
  body.push(0x20, 0, 0x41, 1, 0x6b, 0x22, 0, 0x0d, 0, 0x0b);
  // The result depends on every accumulator, so none of the work can be dropped.
  body.push(0x20, 1, ...simd(0x1f), 0);
  for (let j = 2; j <= ACCUMULATORS; j++) body.push(0x20, j, ...simd(0x1f), 0, 0x92);
  body.push(0x0b);
  const code = [...leb(body.length), ...body];
  return new Uint8Array([
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00, // "\0asm", version 1
    ...section(1, [1, 0x60, 1, 0x7f, 1, 0x7d]), // type 0: (i32) -> f32
    ...section(3, [1, 0]), // one function of type 0
    ...section(7, [1, 3, ...new TextEncoder().encode("run"), 0x00, 0]), // export "run"
    ...section(10, [1, ...code]),
  ]);
}

/** Runs the loop for about `seconds` and returns GFLOP/s (after a short warm-up). */
function measure(variant: Variant, seconds: number): number {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(peakModule(variant)));
  const run = instance.exports.run as (iterations: number) => number;
  run(1e6); // compile the optimised tier
  let iterations = 1e6;
  let elapsed = 0;
  let checksum = 0;
  while (elapsed < seconds) {
    iterations *= 2;
    const t0 = performance.now();
    checksum += run(iterations);
    elapsed = (performance.now() - t0) / 1000;
  }
  if (!Number.isFinite(checksum)) throw new Error(`simd_peak: the loop diverged (${checksum})`);
  return (iterations * FLOP_PER_ITERATION) / elapsed / 1e9;
}

/** `threads` workers run `variant` at once; returns their summed GFLOP/s. */
async function measureParallel(variant: Variant, seconds: number, threads: number) {
  const workers = Array.from(
    { length: threads },
    () => new Worker(import.meta.url, { type: "module" }),
  );
  const rates = await Promise.all(workers.map((w) =>
    new Promise<number>((resolve, reject) => {
      w.onmessage = (e) => resolve(e.data as number);
      w.onerror = (e) => reject(new Error(e.message));
      w.postMessage({ variant, seconds });
    })
  ));
  workers.forEach((w) => w.terminate());
  return rates.reduce((a, b) => a + b, 0);
}

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;
if (typeof scope.WorkerGlobalScope !== "undefined" && scope instanceof scope.WorkerGlobalScope) {
  scope.onmessage = (e: MessageEvent<{ variant: Variant; seconds: number }>) => {
    scope.postMessage(measure(e.data.variant, e.data.seconds));
  };
} else {
  const { values } = parseArgs({
    args: Deno.args,
    options: { seconds: { type: "string", default: "1" } },
    strict: true,
  });
  const seconds = Number(values.seconds);
  if (!(seconds > 0)) throw new RangeError(`--seconds must be > 0, got "${values.seconds}"`);
  const cpus = navigator.hardwareConcurrency;
  console.log(
    `WebAssembly SIMD-128 peak, ${ACCUMULATORS} accumulators in registers, ${seconds} s per figure`,
  );
  console.log(`variant                1 thread GFLOP/s  ${cpus} threads GFLOP/s`);
  for (const variant of ["relaxed_madd", "mul_add"] as const) {
    const one = measure(variant, seconds);
    const all = await measureParallel(variant, seconds, cpus);
    console.log(
      `${variant.padEnd(23)}${one.toFixed(1).padStart(17)}${all.toFixed(1).padStart(19)}`,
    );
  }
}
