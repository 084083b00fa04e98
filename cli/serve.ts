/**
 * `deno task serve`: the recommendation HTTP API (`lib/serve/handler.ts`) on `Deno.serve`.
 * SIGINT and SIGTERM stop it after the requests in flight are answered.
 *
 * @module
 */
import { parseArgs } from "./_args.ts";
import { createHandler } from "../lib/serve/handler.ts";
import { MAX_WAIT_MS } from "../lib/serve/batcher.ts";
import {
  BACKEND_OPTIONS,
  flagsGiven,
  INFERENCE_OPTIONS,
  inferenceFlags,
  intFlag,
  numberFlag,
  startBackend,
  withFlagNames,
} from "./_flags.ts";
import { loadRecommender } from "./_model.ts";
import { BLOCK_ITEMS } from "../lib/inference/recommender.ts";

/** The `serve` lines of the CLI's usage. */
export const SERVE_USAGE = [
  "  deno task serve --model FILE|RUN_DIR|URL [--host H] [--port P] [--backend B]",
];

/** The `serve` options of the CLI's usage. */
export const SERVE_OPTIONS = [
  "Serve:",
  "  --host H          address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
  "  --port P          port (default 8000; 0 picks a free one)",
  "  --batch-wait-ms W micro-batching window of POST /recommend (default 2; 0 = off)",
  "  --max-history N   longest history or exclude list accepted (default 1000)",
  "  --block-items N   rank catalogues of more items N at a time, with a running top-k",
  "                    (default 65536; no [batch, items] scores, no transposed item table)",
  "  --compact-items   keep a model file's int8 item table int8 in memory and rank from it",
  "                    (wasm; a quarter of the float32 table; no diversity re-ranking)",
  "  --backend B       auto | webgpu | wasm | cpu (default auto); --blas L as for train",
  "  --threads N       wasm threads (default 1: lowest latency; more need --allow-write,",
  "                    which deno task serve does not grant: use deno run -A cli/main.ts serve)",
  "  --reverse-steps, --sampling, --eval-seed, --lambda: as for eval (DiffuRec, DiffuRecSys)",
];

/** The longest a stop waits for the requests in flight (their bodies included). */
const STOP_WAIT_MS = 30_000;

/** Runs `serve` with its arguments; returns when the server has stopped. */
export async function serveCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      host: { type: "string" },
      port: { type: "string" },
      "batch-wait-ms": { type: "string" },
      "max-history": { type: "string" },
      "block-items": { type: "string" },
      "compact-items": { type: "boolean" },
      ...BACKEND_OPTIONS,
      ...INFERENCE_OPTIONS,
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(["Usage:", ...SERVE_USAGE, "", ...SERVE_OPTIONS].join("\n"));
    return;
  }
  if (!values.model) throw new TypeError("serve needs --model FILE|RUN_DIR|URL");
  const port = intFlag("port", values.port, 8000, 0);
  if (port > 65535) throw new RangeError(`--port must be at most 65535, got "${values.port}"`);
  const waitText = values["batch-wait-ms"];
  const batchWaitMs = waitText === undefined ? 2 : numberFlag("batch-wait-ms", waitText);
  if (batchWaitMs < 0 || batchWaitMs > MAX_WAIT_MS) {
    throw new RangeError(`--batch-wait-ms must be from 0 to ${MAX_WAIT_MS}, got "${waitText}"`);
  }
  const maxHistory = intFlag("max-history", values["max-history"], 1000, 1);
  const blockItems = intFlag("block-items", values["block-items"], BLOCK_ITEMS, 1);
  const inference = inferenceFlags(values);
  // One wasm thread by default: a single history is too small a product to share, and on 2
  // cores a second thread raised p99 latency from 5 ms to 18-28 ms (docs/performance.md).
  await startBackend(values, 1);
  const model = values.model;
  const { recommender, from } = await withFlagNames(
    () => loadRecommender(model, { inference, blockItems, compactItems: values["compact-items"] }),
    flagsGiven(inference),
  );
  // The file's bytes and the decoded copies are garbage now; collect them before serving
  // where the runtime allows it (`deno task serve` passes --expose-gc): otherwise they stay
  // resident until a major collection happens to run (hundreds of MB for a large catalogue).
  (globalThis as { gc?: () => void }).gc?.();
  console.error(
    `model: ${recommender.model.name} over ${recommender.numItems} items, from ${from}` +
      (recommender.compactItems ? " (item table kept int8)" : ""),
  );
  const handler = createHandler(recommender, {
    batchWaitMs,
    maxHistory,
    onError: (e, request) => {
      console.error(
        `error: ${request.method} ${new URL(request.url).pathname}: ${(e as Error)?.stack ?? e}`,
      );
    },
  });
  // Requests accepted and not yet answered, bodies still arriving included: Deno's
  // shutdown() stops reading bodies, so a request whose body was on its way when the signal
  // came got a 400. The server now waits for them, refusing new ones, before it shuts down.
  let active = 0;
  let stopping = false;
  let idle: (() => void) | null = null;
  const serving = async (request: Request): Promise<Response> => {
    if (stopping) {
      return Response.json({ error: "the server is stopping" }, {
        status: 503,
        headers: { connection: "close" },
      });
    }
    active++;
    try {
      return await handler(request);
    } finally {
      if (--active === 0) idle?.();
    }
  };
  const server = Deno.serve({
    hostname: values.host ?? "127.0.0.1",
    port,
    onListen: ({ hostname, port }) => {
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.error(`listening on http://${host}:${port}/ (Ctrl-C stops)`);
    },
  }, serving);
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    console.error("stopping: answering the requests in flight first");
    if (active > 0) {
      // At most STOP_WAIT_MS: a client that never finishes its body must not hold the stop.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((resolve) => idle = resolve),
        new Promise((resolve) => timer = setTimeout(resolve, STOP_WAIT_MS)),
      ]);
      clearTimeout(timer); // a pending timer would keep the process alive after the stop
    }
    await server.shutdown();
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    await server.finished;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
    recommender.dispose();
  }
  console.error("stopped");
}
