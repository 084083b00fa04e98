/**
 * The model file's checksum hash (`lib/inference/_sha256.ts`, SHA-256 in pieces, in
 * JavaScript) against WebCrypto's native one, on the same bytes, alternated:
 *
 * ```sh
 * deno run bench/sha256.ts            # 145 MB, a 1M-item int8 model file's size; --mb N
 * ```
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import { positiveInt } from "./_flags.ts";
import { Sha256 } from "../lib/inference/_sha256.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { mb: { type: "string", default: "145" } },
});
const bytes = new Uint8Array(positiveInt("mb", values.mb) * 1_000_000).map((_, i) => i * 31);
const piece = 4 << 20;
const times: Record<string, number[]> = { "js, 4 MiB pieces": [], "crypto.subtle, whole": [] };
for (let round = 0; round < 3; round++) {
  let t = performance.now();
  const hash = new Sha256();
  for (let at = 0; at < bytes.length; at += piece) hash.update(bytes.subarray(at, at + piece));
  const js = hash.hex();
  times["js, 4 MiB pieces"].push(performance.now() - t);
  t = performance.now();
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  times["crypto.subtle, whole"].push(performance.now() - t);
  const native = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  if (js !== native) throw new Error(`the digests differ: ${js} against ${native}`);
}
console.log(`${bytes.length.toLocaleString("en")} bytes, 3 rounds each, alternated:`);
for (const [name, ms] of Object.entries(times)) {
  console.log(`  ${name}: ${ms.map((m) => m.toFixed(0)).join(", ")} ms`);
}
