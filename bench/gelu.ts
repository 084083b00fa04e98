/**
 * What the fused GELU kernels cost per element on the wasm backend (bmm.wasm's `gelu`,
 * `lib/nn/fused.ts`), forward and backward, exact and tanh forms, beside two one-pass tfjs
 * kernels timed in the same process as the yardstick (`tf.add`, `tf.exp`). One process,
 * each op in turn, `--repeats` times; the median of each column ends the table.
 *
 * ```sh
 * deno run -A bench/gelu.ts                       # 786,432 elements (SIGMA's [6144, 128])
 * deno run -A bench/gelu.ts --elements 4194304 --repeats 9
 * ```
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import {
  GELU_GRAD_KERNEL,
  GELU_KERNEL,
  GELU_TANH_GRAD_KERNEL,
  GELU_TANH_KERNEL,
} from "../lib/nn/fused.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    elements: { type: "string", default: String(6144 * 128) },
    repeats: { type: "string", default: "7" },
    threads: { type: "string" },
  },
  strict: true,
});
const n = positiveInt("elements", values.elements);
const repeats = positiveInt("repeats", values.repeats);
const chosen = await selectBackend("wasm", {
  wasmThreads: optionalPositiveInt("threads", values.threads),
});
console.log(`backend: ${chosen.reason}; GELU kernels on bmm.wasm: ${bmmActive()}`);
if (!bmmActive()) {
  console.error("bmm.wasm is not active (tfjs's single-threaded wasm build): no GELU kernels");
  Deno.exit(1);
}
const x = tf.mul(tf.randomNormal([n], 0, 1, "float32", 1), 3); // most of [-10, 10]
const dy = tf.randomNormal([n], 0, 1, "float32", 2);
/** Nanoseconds an element of `f` (wasm ops are synchronous: no readback needed). */
const time = (f: () => unknown) => {
  const t0 = performance.now();
  tf.tidy(() => {
    f();
  });
  return ((performance.now() - t0) * 1e6) / n;
};
const run = (kernel: string, inputs: tf.NamedTensorMap) => () =>
  tf.engine().runKernel(kernel, inputs);
const columns: [string, () => unknown][] = [
  ["gelu", run(GELU_KERNEL, { x })],
  ["gelu grad", run(GELU_GRAD_KERNEL, { x, dy })],
  ["tanh gelu", run(GELU_TANH_KERNEL, { x })],
  ["tanh grad", run(GELU_TANH_GRAD_KERNEL, { x, dy })],
  ["tf.add", () => tf.add(x, dy)],
  ["tf.exp", () => tf.exp(x)],
];
const rows: number[][] = [];
const line = (label: string, cells: string[]) =>
  console.log(label.padEnd(8) + cells.map((c, i) => c.padStart(columns[i][0].length + 3)).join(""));
line("ns/el", columns.map(([name]) => name));
for (let r = 0; r < repeats; r++) {
  const row = columns.map(([, f]) => time(f));
  rows.push(row);
  line(String(r + 1), row.map((v) => v.toFixed(2)));
}
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
line("median", columns.map((_, i) => median(rows.map((row) => row[i])).toFixed(2)));
tf.dispose([x, dy]);
