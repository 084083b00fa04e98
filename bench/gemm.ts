/**
 * The GEMM ceiling of a full-softmax training step: GFLOP/s of the three item GEMMs of the
 * fused cross-entropy (`lib/nn/item_losses.ts`) at the shapes of a Beauty step, on
 * tfjs-backend-wasm's 2-D path (XNNPACK, threaded) and on the project's `bmm.wasm`
 * (relaxed-SIMD FMA, one thread, reached here through a batch of 2) and, where one loads,
 * on a native BLAS through FFI (`backends/_blas.ts`, what `--blas auto` uses), and the floor
 * those rates put under one epoch of SIGMA and of SASRec: the epoch's GEMM work over the
 * rate, with every other kernel taking no time at all.
 *
 * ```sh
 * deno run -A bench/gemm.ts                    # Beauty's shapes: 12,101 items, 131,413 positions
 * deno run -A bench/gemm.ts --threads 1
 * ```
 *
 * Flags: `--items` (12101), `--positions` (training positions per epoch, 131413: Beauty's
 * leave-one-out split), `--rows` (2048 query rows per GEMM: a trainer chunk), `--hidden`
 * (128), `--interests` (4, SIGMA's k), `--threads` (all cores), `--reps` (3).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import { useNativeBlas } from "../backends/_blas.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    items: { type: "string", default: "12101" },
    positions: { type: "string", default: "131413" },
    rows: { type: "string", default: "2048" },
    hidden: { type: "string", default: "128" },
    interests: { type: "string", default: "4" },
    threads: { type: "string" },
    reps: { type: "string", default: "3" },
  },
  strict: true,
});
const items = positiveInt("items", values.items);
const positions = positiveInt("positions", values.positions);
const rows = positiveInt("rows", values.rows);
const d = positiveInt("hidden", values.hidden);
const k = positiveInt("interests", values.interests);
const reps = positiveInt("reps", values.reps);
const threads = optionalPositiveInt("threads", values.threads);
if (rows % 2 !== 0) {
  throw new RangeError(`--rows must be even (split in a batch of 2), got ${rows}`);
}

const backend = await selectBackend("wasm", { wasmThreads: threads });
console.log(`${backend.name} (${backend.reason}); bmm.wasm ${bmmActive() ? "active" : "inactive"}`);

/**
 * Mean seconds of `reps` calls after two warm-up calls. wasm kernels run synchronously, so
 * a call's result is complete when it returns; one element is read back anyway, to be sure,
 * but not the whole product: reading a [2048, 12101] result back to JS (99 MB) took as long
 * as computing it on the BLAS, and a training step never reads its logits back.
 */
function seconds(f: () => tf.Tensor): number {
  for (let i = 0; i < 2; i++) f().dispose();
  const started = performance.now();
  for (let i = 0; i < reps; i++) {
    const out = f();
    const corner = tf.slice(out, new Array(out.rank).fill(0), new Array(out.rank).fill(1));
    corner.dataSync();
    tf.dispose([corner, out]);
  }
  return (performance.now() - started) / 1000 / reps;
}

const rng = (shape: number[]) => tf.randomNormal(shape, 0, 1, "float32", 7);
const flops = 2 * rows * d * items; // each of the three GEMMs
const queries = rng([rows, d]); // [R, d]
const queriesT = rng([d, rows]); // [d, R]
const itemsT = rng([d, items]); // [d, N]
const itemTable = rng([items, d]); // [N, d]
const grads = rng([rows, items]); // [R, N]
// Batch-of-2 views: tfjs sends batched matmuls to bmm.wasm where it is active.
const half = rows / 2;
const queries2 = tf.reshape(queries, [2, half, d]); // [2, R/2, d]
const itemsT2 = tf.stack([itemsT, itemsT]); // [2, d, N]
const grads2 = tf.reshape(grads, [2, half, items]); // [2, R/2, N]
const itemTable2 = tf.stack([itemTable, itemTable]); // [2, N, d]

const shapes: { name: string; xnnpack: () => tf.Tensor; bmm: () => tf.Tensor }[] = [
  {
    name: `logits  [${rows},${d}]@[${d},${items}]`,
    xnnpack: () => tf.matMul(queries, itemsT),
    bmm: () => tf.matMul(queries2, itemsT2),
  },
  {
    name: `dq      [${rows},${items}]@[${items},${d}]`,
    xnnpack: () => tf.matMul(grads, itemTable),
    bmm: () => tf.matMul(grads2, itemTable2),
  },
  {
    name: `dItems  [${d},${rows}]@[${rows},${items}]`,
    xnnpack: () => tf.matMul(queriesT, grads),
    bmm: () => tf.matMul(tf.reshape(queriesT, [2, d, half]), grads2),
  },
];

const blasThreads = threads ?? navigator.hardwareConcurrency;
console.log(`BLAS: ${useNativeBlas("auto", blasThreads).detail}`);
useNativeBlas("off");
const gflops = (s: number | null) => s === null ? "n/a" : (flops / s / 1e9).toFixed(1);
console.log(
  "gemm                                 xnnpack GFLOP/s  bmm.wasm GFLOP/s  BLAS GFLOP/s",
);
let xnnpackSeconds = 0;
let blasSeconds = 0;
for (const s of shapes) {
  const x = seconds(s.xnnpack);
  // bmm.wasm needs the threaded build's shared heap; with one thread it is not loaded.
  const b = bmmActive() ? seconds(s.bmm) : null;
  // The same 2-D call as xnnpack's, now routed to the native library (when one loads).
  const native = useNativeBlas("auto", blasThreads).active ? seconds(s.xnnpack) : null;
  useNativeBlas("off");
  xnnpackSeconds += x;
  blasSeconds += native ?? NaN;
  console.log(
    `${s.name.padEnd(37)}${gflops(x).padStart(15)}${gflops(b).padStart(18)}` +
      `${gflops(native).padStart(14)}`,
  );
}
// One position's item GEMMs: 3 GEMMs of 2·d·N per logit row; SASRec has 1 row, SIGMA
// 1 + k (SGM-VAE's decoder and MIE-VAE's k interests).
for (const [path, total] of [["xnnpack", xnnpackSeconds], ["BLAS", blasSeconds]] as const) {
  if (!Number.isFinite(total)) continue;
  const rate = (3 * flops) / total; // FLOP/s over the three shapes together
  for (const [model, logitRows] of [["sasrec", 1], ["sigma", 1 + k]] as const) {
    const epochFlops = positions * logitRows * 3 * 2 * d * items;
    console.log(
      `${model} epoch item-GEMM work ${(epochFlops / 1e12).toFixed(2)} TFLOP: ` +
        `>= ${(epochFlops / rate).toFixed(0)} s at ${path}'s ${(rate / 1e9).toFixed(1)} GFLOP/s`,
    );
  }
}
tf.dispose([queries, queriesT, itemsT, itemTable, grads, queries2, itemsT2, grads2, itemTable2]);
