/**
 * Attention's batched products on wasm, with the native BLAS off and on: `q kᵀ`
 * (`[B·h, Lq, dh] x [B·h, L, dh]ᵀ`) and `p v` (`[B·h, Lq, L] x [B·h, L, dh]`) at a few
 * shapes, in milliseconds per call, and whether `backends/_blas.ts`'s rule sends the batch
 * to the BLAS (when it does not, both columns time wasm).
 *
 * ```sh
 * OPENBLAS_NUM_THREADS=1 deno run -A bench/attention_matmul.ts --threads 1
 * ```
 *
 * Flags: `--threads` (wasm threads; default all cores: with more than one, tfjs's threaded
 * build runs `bmm.wasm`, with one its own scalar loop), `--reps` (5).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { BLAS_MIN_MULTIPLY_ADDS, BLAS_MIN_PRODUCT, useNativeBlas } from "../backends/_blas.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { threads: { type: "string" }, reps: { type: "string", default: "5" } },
  strict: true,
});
const reps = positiveInt("reps", values.reps);
const chosen = await selectBackend("wasm", {
  wasmThreads: optionalPositiveInt("threads", values.threads),
  blas: "auto",
});
const blas = useNativeBlas("auto");
if (!blas.active) throw new Error(`no native BLAS loads here: ${blas.detail}`);
console.log(`wasm: ${chosen.reason}; BLAS: ${blas.detail}`);

/** Mean milliseconds of `f` (result read back) over `reps` calls, after one warm-up. */
function time(f: () => tf.Tensor): number {
  tf.tidy(() => void f().dataSync());
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) tf.tidy(() => void f().dataSync());
  return (performance.now() - t0) / reps;
}

console.log("| B·h | Lq | L | dh | product | --blas off ms | --blas auto ms | to the BLAS |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
const shapes = [[1024, 1, 10, 32], [1024, 10, 10, 32], [1024, 30, 30, 32], [512, 50, 50, 64]];
for (const [bh, lq, l, dh] of shapes) {
  const q = tf.randomNormal([bh, lq, dh], 0, 1, "float32", 1);
  const k = tf.randomNormal([bh, l, dh], 0, 1, "float32", 2);
  const p = tf.randomNormal([bh, lq, l], 0, 1, "float32", 3);
  const products: [string, () => tf.Tensor, number][] = [
    ["q kᵀ", () => tf.matMul(q, k, false, true), lq * l * dh],
    ["p v", () => tf.matMul(p, k), lq * dh * l],
  ];
  for (const [name, f, perProduct] of products) {
    useNativeBlas("off");
    const wasm = time(f);
    useNativeBlas("auto");
    const native = time(f);
    const takes = bh * perProduct >= BLAS_MIN_MULTIPLY_ADDS && perProduct >= BLAS_MIN_PRODUCT;
    const cells = [bh, lq, l, dh, name, wasm.toFixed(2), native.toFixed(2), takes ? "yes" : "no"];
    console.log(`| ${cells.join(" | ")} |`);
  }
  tf.dispose([q, k, p]);
}
