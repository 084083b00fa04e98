/**
 * What dropout costs per element on the wasm backend, each way it can be drawn: the
 * `SigmaDropout` kernel (bmm.wasm's Philox loop on tfjs's heap), the host Philox mask
 * (`dropoutMask`, what cpu and wasm's single-threaded build use) alone and with its upload
 * and multiply, and the path before Philox (tfjs's seeded uniform, compared, cast and
 * multiplied). One process, each path timed in turn, `--repeats` times.
 *
 * ```sh
 * deno run -A bench/dropout.ts                  # 2^20 elements, rate 0.3, 5 repeats
 * deno run -A bench/dropout.ts --elements 4194304 --threads 1
 * ```
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { parseArgs } from "../cli/_args.ts";
import { optionalPositiveInt, positiveInt } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { bmmActive } from "../backends/_kernels.ts";
import { dropout, dropoutMask } from "../lib/nn/dropout.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    elements: { type: "string", default: String(1 << 20) },
    repeats: { type: "string", default: "5" },
    threads: { type: "string" },
  },
  strict: true,
});
const n = positiveInt("elements", values.elements);
const repeats = positiveInt("repeats", values.repeats);
const chosen = await selectBackend("wasm", {
  wasmThreads: optionalPositiveInt("threads", values.threads),
});
console.log(`backend: ${chosen.reason}; kernel on bmm.wasm: ${bmmActive()}`);
const x = tf.randomNormal([n]);
const rate = 0.3;
/** Nanoseconds an element of `f` (wasm ops are synchronous: no readback needed). */
const time = (f: () => unknown) => {
  const t0 = performance.now();
  tf.tidy(() => {
    f();
  });
  return ((performance.now() - t0) * 1e6) / n;
};
console.log("repeat  kernel  host mask  host mask+mul  tfjs uniform path  (ns/element)");
for (let r = 0; r < repeats; r++) {
  const kernel = time(() => dropout(x, rate, 77 + r));
  const mask = time(() => dropoutMask(n, rate, 77 + r));
  const masked = time(() => tf.mul(x, tf.tensor(dropoutMask(n, rate, 77 + r))));
  const old = time(() => {
    const keep = tf.greaterEqual(tf.randomUniform([n], 0, 1, "float32", 5 + r), rate);
    return tf.mul(x, tf.mul(tf.cast(keep, "float32"), 1 / (1 - rate)));
  });
  console.log(
    [r + 1, kernel, mask, masked, old].map((v, i) =>
      (i === 0 ? String(v) : v.toFixed(1)).padStart([6, 8, 11, 15, 19][i])
    ).join(""),
  );
}
x.dispose();
