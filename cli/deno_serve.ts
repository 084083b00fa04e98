/**
 * The recommendation API as a module for `deno serve` (and the shape edge runtimes take:
 * a default export with a `fetch` handler). The model comes from the environment:
 *
 * ```sh
 * SIGMA_MODEL=runs/sasrec/model.safetensors deno serve --host 127.0.0.1 --port 8000 \
 *   --allow-read --allow-env --allow-net cli/deno_serve.ts
 * ```
 *
 * - `SIGMA_MODEL`: the model file's path or URL (required);
 * - `SIGMA_BACKEND`: `auto` (default), `webgpu`, `wasm` or `cpu`;
 * - `SIGMA_BATCH_WAIT_MS`: the micro-batching window in milliseconds, from 0 (off) to
 *   10000 (default 2);
 * - `SIGMA_COMPACT_ITEMS`: `1` keeps an int8 item table int8 in memory (`serve
 *   --compact-items`; default `0`).
 *
 * A missing or bad variable, or a model file that fails its checks, stops the server before
 * it listens, with one line naming the variable or file (no stack trace) and exit code 1.
 *
 * @module
 */
import { BACKEND_CHOICES, type BackendChoice, selectBackend } from "../backends/mod.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { createHandler } from "../lib/serve/handler.ts";
import { MAX_WAIT_MS } from "../lib/serve/batcher.ts";

/** `SIGMA_BATCH_WAIT_MS` as a number of milliseconds, or a `RangeError` naming it. */
function batchWaitFromEnv(): number {
  const text = Deno.env.get("SIGMA_BATCH_WAIT_MS");
  if (text === undefined) return 2;
  const value = Number(text);
  if (text.trim() === "" || !(value >= 0 && value <= MAX_WAIT_MS)) {
    throw new RangeError(
      `SIGMA_BATCH_WAIT_MS must be a number from 0 to ${MAX_WAIT_MS}, got "${text}"`,
    );
  }
  return value;
}

/** The recommender and handler options the environment asks for. */
async function fromEnv(): Promise<{ recommender: Recommender; batchWaitMs: number }> {
  const source = Deno.env.get("SIGMA_MODEL");
  if (!source) {
    throw new TypeError("set SIGMA_MODEL to the path or URL of a model file (model.safetensors)");
  }
  const backend = Deno.env.get("SIGMA_BACKEND") ?? "auto";
  if (!(BACKEND_CHOICES as readonly string[]).includes(backend)) {
    throw new RangeError(
      `SIGMA_BACKEND must be one of ${BACKEND_CHOICES.join(", ")}, got "${backend}"`,
    );
  }
  const batchWaitMs = batchWaitFromEnv();
  const compact = Deno.env.get("SIGMA_COMPACT_ITEMS") ?? "0";
  if (compact !== "0" && compact !== "1") {
    throw new RangeError(`SIGMA_COMPACT_ITEMS must be 0 or 1, got "${compact}"`);
  }
  const chosen = await selectBackend(backend as BackendChoice);
  const recommender = await Recommender.load(source, { compactItems: compact === "1" });
  // As `serve` does: what loading left is collected now where the runtime allows it
  // (`--v8-flags=--expose-gc`), not left resident until a major collection happens.
  (globalThis as { gc?: () => void }).gc?.();
  console.error(
    `sigma-rec: ${recommender.model.name} over ${recommender.numItems} items from ${source}, ` +
      `backend ${chosen.name}` + (recommender.compactItems ? ", item table kept int8" : ""),
  );
  return { recommender, batchWaitMs };
}

let loaded: Awaited<ReturnType<typeof fromEnv>>;
try {
  loaded = await fromEnv();
} catch (e) {
  // As the CLI does: one line for the person starting the server, not a stack trace.
  console.error(`error: ${(e as Error)?.message ?? e}`);
  Deno.exit(1);
}

/** The `fetch` handler `deno serve` calls for every request. */
export default {
  fetch: createHandler(loaded.recommender, {
    batchWaitMs: loaded.batchWaitMs,
    onError: (e) => console.error(`error: ${(e as Error)?.stack ?? e}`),
  }),
} satisfies Deno.ServeDefaultExport;
