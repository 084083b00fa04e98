/**
 * The recommendation HTTP API as one plain fetch handler (`Request -> Response`), so the
 * same code runs under `Deno.serve`, `deno serve`, an edge runtime or a service worker.
 *
 * | route | body in | body out |
 * | --- | --- | --- |
 * | `POST /recommend` | `{ "history": [item, ...], "k"?, "exclude"?, "excludeSeen"?, "strict"?, "diversity"?, "diversityMethod"? }` | `{ "items": [{ "item", "score" }], "unknown": [...] }` |
 * | `POST /recommend/batch` | `{ "requests": [<a /recommend body>, ...] }` | `{ "results": [<a /recommend answer>, ...] }` |
 * | `GET /health` | | `{ "status": "ok", "model", "items", "maxLength", "backend", "formatVersion", "tensors", "inFlight", "limits", "diversityMethods", "inference"? }` |
 * | `GET /` | | a page where a person types a history and sees the recommendations |
 *
 * A bad request gets a 4xx answer `{ "error": "...", "field"?: "..." }` naming what is
 * wrong, and the handler keeps serving: malformed JSON or a wrong type (400), an unknown
 * route (404), a wrong method (405, with `Allow`), a body over the size cap (413), and an
 * unknown item under `"strict": true` (422).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Recommender, RecommendOptions } from "../inference/recommender.ts";
import { MODEL_FILE_VERSION } from "../inference/model_file.ts";
import { MAX_WAIT_MS, MicroBatcher } from "./batcher.ts";
import { MODELS } from "../models/mod.ts";
import { PAGE_HTML } from "./_page.ts";
import type { DiversityMethod } from "../eval/diversify.ts";

/** Limits and behaviour of {@linkcode createHandler}. */
export interface HandlerOptions {
  /** Largest request body, in bytes. Default 1 MiB. */
  maxBodyBytes?: number;
  /** Most items in one history or one `exclude` list. Default 1000. */
  maxHistory?: number;
  /** Largest `k`. Default 1000. */
  maxK?: number;
  /** Most requests in one `/recommend/batch` body. Default 256. */
  maxBatch?: number;
  /**
   * Micro-batching window of `/recommend`, in milliseconds: requests arriving within it are
   * scored in one forward pass. 0 scores each request on its own. Default 2.
   */
  batchWaitMs?: number;
  /** Called with every error that is not the client's fault (a 500). Default: none. */
  onError?: (error: unknown, request: Request) => void;
}

/** The limits in force, as `/health` reports them. */
export interface HandlerLimits {
  /** Largest request body, in bytes. */
  maxBodyBytes: number;
  /** Most items in one history or `exclude` list. */
  maxHistory: number;
  /** Largest `k`. */
  maxK: number;
  /** Most requests in one batch body. */
  maxBatch: number;
}

/** An error answered to the client with `status`, naming the offending `field`. */
class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly field?: string) {
    super(message);
  }
}

/** `value` as JSON for an error message, cut to 100 characters: never echo a huge body back. */
function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 100 ? `${text.slice(0, 100)}... (${text.length} characters)` : text;
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

/** The body as text, refused with a 413 once it passes `max` bytes. */
async function readBody(request: Request, max: number): Promise<string> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > max) {
    throw new HttpError(413, `the body is ${declared} bytes; at most ${max} are accepted`);
  }
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await reader.read();
    } catch (e) {
      throw new HttpError(400, `the body could not be read (${(e as Error).message})`);
    }
    const { done, value } = chunk;
    if (done) break;
    total += value.length;
    if (total > max) {
      await reader.cancel().catch(() => {});
      throw new HttpError(413, `the body is over ${max} bytes, the most accepted`);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.length;
  }
  try {
    // Fatal: a lenient decoder turned bytes that are not UTF-8 into U+FFFD, and such a
    // history asked for items named "\ufffd" without a word.
    return new TextDecoder("utf-8", { fatal: true }).decode(all);
  } catch {
    throw new HttpError(400, `the body is not UTF-8 text (at byte ${firstBadUtf8(all)})`);
  }
}

/** The offset of the first byte where `bytes` stops being valid UTF-8. */
function firstBadUtf8(bytes: Uint8Array): number {
  // Prefixes decode (a cut multi-byte character waits in stream mode) until the first bad
  // byte is in them: bytes[0, lo) decode, bytes[0, hi) do not.
  let lo = 0, hi = bytes.length;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, mid), { stream: true });
      lo = mid;
    } catch {
      hi = mid;
    }
  }
  return lo;
}

async function readJson(request: Request, max: number): Promise<unknown> {
  const text = await readBody(request, max);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `the body is not valid JSON (${(e as Error).message})`);
  }
}

const ONE_FIELDS = new Set([
  "history",
  "k",
  "exclude",
  "excludeSeen",
  "strict",
  "diversity",
  "diversityMethod",
]);

function stringList(value: unknown, field: string, max: number): string[] {
  if (!Array.isArray(value)) {
    throw new HttpError(400, `${field} must be an array of item strings`, field);
  }
  if (value.length > max) {
    throw new HttpError(
      400,
      `${field} has ${value.length} items; at most ${max} are accepted`,
      field,
    );
  }
  value.forEach((v, i) => {
    if (typeof v !== "string") {
      throw new HttpError(
        400,
        `${field}[${i}] must be a string, got ${shown(v)}`,
        `${field}[${i}]`,
      );
    }
  });
  return value as string[];
}

/** One checked `/recommend` body. */
interface ParsedRequest {
  history: string[];
  options: RecommendOptions & { strict: boolean };
}

/**
 * Checks one `/recommend` body; `at` prefixes field names inside a batch. `methods`: the
 * diversity methods the model can give.
 */
function parseOne(
  body: unknown,
  limits: HandlerLimits,
  methods: readonly DiversityMethod[],
  at = "",
): ParsedRequest {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, `${at || "the body"} must be a JSON object`, at || undefined);
  }
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (!ONE_FIELDS.has(key)) {
      throw new HttpError(
        400,
        `unknown field ${shown(key)}; expected ${[...ONE_FIELDS].join(", ")}`,
        `${at}${key.slice(0, 100)}`,
      );
    }
  }
  if (!("history" in b)) throw new HttpError(400, `${at}history is missing`, `${at}history`);
  const history = stringList(b.history, `${at}history`, limits.maxHistory);
  // Absent means the default; null is refused, as it is for every other field.
  const k = b.k === undefined ? 10 : b.k;
  if (typeof k !== "number" || !Number.isInteger(k) || k < 1 || k > limits.maxK) {
    throw new HttpError(
      400,
      `${at}k must be an integer from 1 to ${limits.maxK}, got ${shown(b.k)}`,
      `${at}k`,
    );
  }
  const exclude = b.exclude === undefined
    ? []
    : stringList(b.exclude, `${at}exclude`, limits.maxHistory);
  for (const flag of ["excludeSeen", "strict"] as const) {
    if (b[flag] !== undefined && typeof b[flag] !== "boolean") {
      throw new HttpError(400, `${at}${flag} must be true or false`, `${at}${flag}`);
    }
  }
  return {
    history,
    options: {
      k,
      exclude,
      excludeSeen: (b.excludeSeen as boolean | undefined) ?? true,
      strict: (b.strict as boolean | undefined) ?? false,
      ...parseDiversity(b, methods, at),
    },
  };
}

/** The body's `diversity` (a number >= 0, default 0) and `diversityMethod`, checked. */
function parseDiversity(
  b: Record<string, unknown>,
  methods: readonly DiversityMethod[],
  at: string,
): Pick<RecommendOptions, "diversity" | "diversityMethod"> {
  // Absent means the default; null is refused, as for every other field.
  const diversity = b.diversity === undefined ? 0 : b.diversity;
  if (typeof diversity !== "number" || !Number.isFinite(diversity) || diversity < 0) {
    throw new HttpError(
      400,
      `${at}diversity must be a number >= 0 (0: the model's ranking), got ${shown(b.diversity)}`,
      `${at}diversity`,
    );
  }
  if (diversity > 0 && methods.length === 0) {
    throw new HttpError(
      400,
      `${at}diversity: this model has no float32 item vectors to diversify with (none, or ` +
        `an item table kept int8); send 0 or leave it out`,
      `${at}diversity`,
    );
  }
  const method = b.diversityMethod === undefined ? "auto" : b.diversityMethod;
  const known = ["auto", ...methods];
  if (typeof method !== "string" || !known.includes(method)) {
    throw new HttpError(
      400,
      `${at}diversityMethod must be one of ${known.join(", ")} for this model, got ${
        shown(b.diversityMethod)
      }`,
      `${at}diversityMethod`,
    );
  }
  return { diversity, diversityMethod: method as DiversityMethod | "auto" };
}

/** A 422 when `strict` was asked for and the history holds unknown items. */
function checkStrict(strict: boolean, unknown: string[], at = ""): void {
  if (strict && unknown.length > 0) {
    throw new HttpError(
      422,
      `${at}history holds items the model does not know: ${shown(unknown)}`,
      `${at}history`,
    );
  }
}

type Route = (request: Request) => Promise<Response> | Response;

/** The requests of a `/recommend/batch` body `{ "requests": [...] }`, each checked. */
function parseMany(
  body: unknown,
  limits: HandlerLimits,
  methods: readonly DiversityMethod[],
): ParsedRequest[] {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, 'the body must be a JSON object { "requests": [...] }');
  }
  for (const key of Object.keys(body)) {
    if (key !== "requests") {
      throw new HttpError(
        400,
        `unknown field ${shown(key)}; expected requests`,
        key.slice(0, 100),
      );
    }
  }
  const list = (body as Record<string, unknown>).requests;
  if (!Array.isArray(list)) throw new HttpError(400, "requests must be an array", "requests");
  if (list.length > limits.maxBatch) {
    throw new HttpError(
      400,
      `requests has ${list.length} entries; at most ${limits.maxBatch} are accepted`,
      "requests",
    );
  }
  return list.map((r, i) => parseOne(r, limits, methods, `requests[${i}].`));
}

/**
 * `GET /health`'s body, built once when the handler is made: what is loaded, on which
 * backend, under which limits, and (a diffusion model's `reverseSteps`, `sampling`, ...) how
 * it ranks, as it was loaded. The tensor count, backend and the number of recommendation
 * requests being answered (`inFlight`) are read at each request.
 */
function healthReport(
  recommender: Recommender,
  limits: HandlerLimits,
  diversityMethods: readonly DiversityMethod[],
  inFlight: () => number,
): () => Record<string, unknown> {
  const fields = MODELS[recommender.model.name]?.inferenceFields ?? [];
  const config = recommender.model.config as Record<string, unknown>;
  const inference = fields.length > 0
    ? Object.fromEntries(fields.map((f) => [f, config[f]]))
    : undefined;
  return () => ({
    status: "ok",
    model: recommender.model.name,
    items: recommender.numItems,
    maxLength: recommender.model.config.maxLength,
    backend: tf.getBackend(),
    // The loaded file's; what this library writes for a model built in code.
    formatVersion: recommender.formatVersion ?? MODEL_FILE_VERSION,
    tensors: tf.memory().numTensors,
    inFlight: inFlight(),
    limits,
    diversityMethods,
    ...(inference ? { inference } : {}),
  });
}

/**
 * The one router: a 404 for an unknown path, a 405 with `allow` for an unknown method, the
 * route's answer otherwise, an {@linkcode HttpError} as its status with `{ error, field }`,
 * and any other failure as a 500 (after `onError`).
 */
function router(
  routes: Record<string, Record<string, Route>>,
  onError: (error: unknown, request: Request) => void,
): (request: Request) => Promise<Response> {
  return async (request) => {
    const path = new URL(request.url).pathname;
    const route = routes[path];
    if (!route) return json(404, { error: `no route ${path}; see GET / and GET /health` });
    const handle = route[request.method];
    if (!handle) {
      const allow = Object.keys(route).join(", ");
      return json(405, { error: `${request.method} ${path} is not allowed; use ${allow}` }, {
        allow,
      });
    }
    try {
      return await handle(request);
    } catch (e) {
      if (e instanceof HttpError) {
        return json(
          e.status,
          e.field === undefined ? { error: e.message } : { error: e.message, field: e.field },
        );
      }
      onError(e, request);
      return json(500, { error: `internal error: ${(e as Error)?.message ?? String(e)}` });
    }
  };
}

/**
 * The API's fetch handler for `recommender` (see the module doc for the routes).
 *
 * @example Serve it with Deno, or export it for `deno serve` or an edge runtime
 * ```ts ignore
 * const recommender = await Recommender.load("runs/sasrec/model.safetensors");
 * Deno.serve({ port: 8000 }, createHandler(recommender));
 * // or: export default { fetch: createHandler(recommender) };
 * ```
 *
 * @param recommender The model that answers.
 * @param options See {@linkcode HandlerOptions}.
 * @returns A function from `Request` to `Response` that never throws.
 * @throws {RangeError} A limit that is not a positive integer or `Infinity`, or a `batchWaitMs` outside
 * 0 to {@linkcode MAX_WAIT_MS}, named with its value.
 */
export function createHandler(
  recommender: Recommender,
  options: HandlerOptions = {},
): (request: Request) => Promise<Response> {
  const limits: HandlerLimits = {
    maxBodyBytes: options.maxBodyBytes ?? 1024 * 1024,
    maxHistory: options.maxHistory ?? 1000,
    maxK: options.maxK ?? 1000,
    maxBatch: options.maxBatch ?? 256,
  };
  // A NaN limit would let every comparison pass: refuse it here, naming the option.
  // Infinity stays the way to say "no cap".
  for (const [name, value] of Object.entries(limits)) {
    if (!(Number.isInteger(value) && value >= 1) && value !== Infinity) {
      throw new RangeError(`${name} must be a positive integer or Infinity, got ${value}`);
    }
  }
  const batchWaitMs = options.batchWaitMs ?? 2;
  if (!(batchWaitMs >= 0 && batchWaitMs <= MAX_WAIT_MS)) {
    throw new RangeError(`batchWaitMs must be from 0 to ${MAX_WAIT_MS}, got ${batchWaitMs}`);
  }
  const batcher = new MicroBatcher(recommender, { waitMs: batchWaitMs });
  const methods = recommender.diversityMethods;

  // Recommendation requests being answered now: in /health, so a load balancer (or a test
  // that signals the server) can see work waiting in the micro-batching window.
  let inFlight = 0;
  const counted = (route: Route): Route => async (request) => {
    inFlight++;
    try {
      return await route(request);
    } finally {
      inFlight--;
    }
  };

  const recommendOne: Route = async (request) => {
    const body = await readJson(request, limits.maxBodyBytes);
    const { history, options: o } = parseOne(body, limits, methods);
    const { items, unknown } = await batcher.recommend(history, { ...o, strict: false });
    checkStrict(o.strict, unknown);
    return json(200, { items, unknown });
  };

  const recommendMany: Route = async (request) => {
    const parsed = parseMany(await readJson(request, limits.maxBodyBytes), limits, methods);
    const results = await recommender.recommendBatch(
      parsed.map((p) => p.history),
      parsed.map((p) => ({ ...p.options, strict: false })),
    );
    results.forEach((r, i) => checkStrict(parsed[i].options.strict, r.unknown, `requests[${i}].`));
    return json(200, { results });
  };

  const health = healthReport(recommender, limits, methods, () => inFlight);
  return router({
    "/": {
      GET: () =>
        new Response(PAGE_HTML, { headers: { "content-type": "text/html; charset=utf-8" } }),
    },
    "/health": { GET: () => json(200, health()) },
    "/recommend": { POST: counted(recommendOne) },
    "/recommend/batch": { POST: counted(recommendMany) },
  }, (e, request) => options.onError?.(e, request));
}
