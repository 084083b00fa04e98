/**
 * What ranking an int8 item table costs (bmm.wasm's `int8_top_k`, `lib/inference/
 * _int8_items.ts`) for one history on one wasm thread, beside how fast the same thread
 * streams memory through a one-pass tfjs kernel (`tf.add` of two float32 tensors of the
 * table's bytes): a kernel at that rate is bound by memory, not arithmetic. Synthetic codes.
 *
 * ```sh
 * deno run -A bench/int8_top_k.ts                      # 1M rows of d 128, k = 21
 * deno run -A bench/int8_top_k.ts --rows 100000 --k 101 --repeats 50
 * ```
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { positiveInt } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { hasInt8TopK, Int8ItemTable } from "../lib/inference/_int8_items.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rows: { type: "string", default: "1000000" },
    width: { type: "string", default: "128" },
    k: { type: "string", default: "21" },
    repeats: { type: "string", default: "30" },
  },
  strict: true,
});
const rows = positiveInt("rows", values.rows) + 1; // and the padding row
const d = positiveInt("width", values.width);
const k = positiveInt("k", values.k);
const repeats = positiveInt("repeats", values.repeats);

const chosen = await selectBackend("wasm", { wasmThreads: 1 });
if (!hasInt8TopK()) throw new Error(`no int8 ranking kernel on this backend: ${chosen.reason}`);

/** The median of `repeats` timings of `run`, in ms. */
function median(run: () => void): number {
  const ms: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const t = performance.now();
    run();
    ms.push(performance.now() - t);
  }
  return ms.sort((a, b) => a - b)[Math.floor(repeats / 2)];
}

const codes = new Uint8Array(rows * d);
for (let i = 0; i < codes.length; i++) codes[i] = Math.imul(i, 2654435761) >>> 24;
const table = new Int8ItemTable(codes, new Float32Array(rows).fill(0.01), d);
const query = tf.randomNormal([1, 1, d], 0, 1, "float32", 7) as tf.Tensor3D;
const rank = median(() => {
  const top = table.topK(query, k, 1);
  top.values.dataSync();
  tf.dispose([top.values, top.indices]);
});
// tf.add reads two tensors and writes one: three times the table's bytes over the memory bus.
const a = tf.randomUniform([rows * d / 4]), b = tf.randomUniform([rows * d / 4]);
const add = median(() => tf.add(a, b).dispose());
const mb = rows * d / 1e6;
console.log(`wasm, one thread: ${chosen.reason}`);
console.log(
  `int8_top_k, ${rows - 1} rows of ${d}, k ${k}: ${rank.toFixed(2)} ms ` +
    `(${(rows * d / rank / 1e6).toFixed(2)} GB/s of codes, ${
      (rank * 1e6 / rows).toFixed(1)
    } ns a row)`,
);
console.log(
  `tf.add of two ${mb.toFixed(0)} MB float32 tensors: ${add.toFixed(2)} ms ` +
    `(${(3 * rows * d / add / 1e6).toFixed(2)} GB/s read and written)`,
);
tf.dispose([a, b, query]);
table.dispose();
