/**
 * The recommendation API as a module for `deno serve` (and the shape edge runtimes take:
 * a default export with a `fetch` handler). The model comes from the environment:
 *
 * ```sh
 * SIGMA_MODEL=runs/sasrec/model.safetensors deno serve --port 8000 \
 *   --allow-read --allow-env --allow-net cli/deno_serve.ts
 * ```
 *
 * - `SIGMA_MODEL`: the model file's path or URL (required);
 * - `SIGMA_BACKEND`: `auto` (default), `webgpu`, `wasm` or `cpu`;
 * - `SIGMA_BATCH_WAIT_MS`: the micro-batching window (default 2; 0 = off).
 *
 * @module
 */
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { createHandler } from "../lib/serve/handler.ts";

const source = Deno.env.get("SIGMA_MODEL");
if (!source) {
  throw new TypeError("set SIGMA_MODEL to the path or URL of a model file (model.safetensors)");
}
const chosen = await selectBackend((Deno.env.get("SIGMA_BACKEND") ?? "auto") as BackendChoice);
const recommender = await Recommender.load(source);
console.error(
  `sigma-rec: ${recommender.model.name} over ${recommender.numItems} items from ${source}, ` +
    `backend ${chosen.name}`,
);

/** The `fetch` handler `deno serve` calls for every request. */
export default {
  fetch: createHandler(recommender, {
    batchWaitMs: Number(Deno.env.get("SIGMA_BATCH_WAIT_MS") ?? 2),
    onError: (e) => console.error(`error: ${(e as Error)?.stack ?? e}`),
  }),
} satisfies Deno.ServeDefaultExport;
