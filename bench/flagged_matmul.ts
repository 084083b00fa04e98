/**
 * What a 2-D matMul with a transpose flag costs on wasm against the same product of an
 * operand transposed first: the products of every dense layer's gradient (`xᵀ dy`,
 * `dy wᵀ`) at a SIGMA GRU layer's shapes. tfjs-backend-wasm 4.22 took a slow path for the
 * flagged ones; `backends/_kernels.ts` now transposes first itself, so on this commit the
 * two columns should agree (run it on an older commit for the slow path).
 *
 * ```sh
 * deno run -A bench/flagged_matmul.ts                  # rows 8000, d 128, out 384
 * deno run -A bench/flagged_matmul.ts --rows 2000 --reps 10
 * ```
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: "8000" },
    hidden: { type: "string", default: "128" },
    out: { type: "string", default: "384" },
    threads: { type: "string" },
    reps: { type: "string", default: "5" },
  },
  strict: true,
});
const rows = positiveInt("rows", values.rows);
const d = positiveInt("hidden", values.hidden);
const out = positiveInt("out", values.out);
const reps = positiveInt("reps", values.reps);
const chosen = await selectBackend("wasm", {
  wasmThreads: optionalPositiveInt("threads", values.threads),
});
console.log(`${chosen.name} (${chosen.reason})`);

/** Mean milliseconds of `reps` calls after one warm-up (wasm kernels are synchronous). */
function ms(f: () => tf.Tensor): number {
  tf.tidy(f);
  const started = performance.now();
  for (let i = 0; i < reps; i++) tf.tidy(f);
  return (performance.now() - started) / reps;
}

const x = tf.randomNormal([rows, d], 0, 1, "float32", 1) as tf.Tensor2D; // [R, d]
const dy = tf.randomNormal([rows, out], 0, 1, "float32", 2) as tf.Tensor2D; // [R, out]
const w = tf.randomNormal([d, out], 0, 1, "float32", 3) as tf.Tensor2D; // [d, out]
const cases: [string, () => tf.Tensor, () => tf.Tensor][] = [
  [
    `dw = xᵀ dy  [${rows},${d}]ᵀ [${rows},${out}]`,
    () => tf.matMul(x, dy, true, false),
    () => tf.matMul(tf.transpose(x), dy),
  ],
  [
    `dx = dy wᵀ  [${rows},${out}] [${d},${out}]ᵀ`,
    () => tf.matMul(dy, w, false, true),
    () => tf.matMul(dy, tf.transpose(w)),
  ],
];
console.log("product                                   flagged ms  transposed first ms");
for (const [name, flagged, first] of cases) {
  console.log(
    `${name.padEnd(42)}${ms(flagged).toFixed(1).padStart(10)}${ms(first).toFixed(1).padStart(21)}`,
  );
}
tf.dispose([x, dy, w]);
