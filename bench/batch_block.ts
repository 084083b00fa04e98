/**
 * How long one large `/recommend/batch` request holds a server: 256 histories of 30 items at
 * k = 1,000 over a Beauty-sized catalogue (12,101 items, SASRec at its defaults, wasm on one
 * thread), while `/health` is asked again and again; prints the batch's time, the slowest
 * `/health` answer during it, and the growth of the process's RSS.
 *
 * ```sh
 * deno run -A bench/batch_block.ts
 * ```
 *
 * @module
 */
import "./_flags.ts"; // an uncaught error is a message, not a stack trace
import { selectBackend } from "../backends/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { createHandler } from "../lib/serve/handler.ts";
await selectBackend("wasm", { wasmThreads: 1 });
const n = 12101;
const items = ["<pad>", ...Array.from({ length: n }, (_, i) => `i${i + 1}`)];
using r = new Recommender(new SasRec({ numItems: n, maxLength: 50 }), items);
const handler = createHandler(r, { batchWaitMs: 0 });
const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
const base = `http://127.0.0.1:${server.addr.port}`;
const requests = Array.from(
  { length: 256 },
  (_, u) => ({
    history: Array.from({ length: 30 }, (_, j) => `i${(u * 31 + j) % n + 1}`),
    k: 1000,
  }),
);
const rss0 = Deno.memoryUsage().rss;
const t0 = performance.now();
const big = fetch(`${base}/recommend/batch`, { method: "POST", body: JSON.stringify({ requests }) })
  .then((x) => x.text());
let worst = 0, done = false;
big.then(() => done = true);
while (!done) {
  const t = performance.now();
  await (await fetch(`${base}/health`)).text();
  worst = Math.max(worst, performance.now() - t);
}
console.log(
  `batch ${(performance.now() - t0).toFixed(0)} ms; slowest /health ${worst.toFixed(0)} ms; rss +${
    ((Deno.memoryUsage().rss - rss0) / 2 ** 20).toFixed(0)
  } MiB`,
);
await server.shutdown();
