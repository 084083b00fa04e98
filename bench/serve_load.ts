/**
 * Recommendation latency and server load, for an Office-sized SASRec and SIGMA.
 *
 * ```sh
 * deno task bench:serve                                   # both models, wasm, 50 clients, 10 s
 * deno task bench:serve --models sasrec --clients 8 --seconds 5 --waits 0,2
 * deno task bench:serve --models sasrec --items 1000000 --item-dtype i8   # a large catalogue
 * deno task bench:serve --models sasrec --items 1000000 --block-items 2000000 --waits 0  # whole-catalogue ranking
 * ```
 *
 * For each model:
 * 1. **In process, no HTTP**: `Recommender.recommend(history, { k: 20 })` on one history
 *    at a time (20 warm-up calls, then `--calls` timed ones): p50/p95/p99 in ms.
 * 2. **Over HTTP**: `deno task serve` in a child process on an ephemeral loopback port,
 *    once per micro-batching window in `--waits` (0 = off), and `--clients` concurrent
 *    clients in this process, each posting `/recommend` (k = 20) in a loop for `--rounds`
 *    rounds of `--seconds` (each at most `--max-requests` requests): requests/s, p50/p95/p99 latency,
 *    errors (any answer but 200, or a failed fetch), the server's RSS (`ps -o rss`; and its
 *    peak, `VmHWM`) once the model is loaded, and after the warm-up and each round, and
 *    live tensors (`/health`) before the load and after each round, after a warm-up of
 *    up to 3 s under the same load (heaps grow to their working size first).
 *
 * Histories are the data set's own users' sequences (their newest 1-50 items), so
 * lengths vary as they would in use. The models are freshly initialised with their
 * default configs: latency does not depend on the weights' values. The clients share the
 * machine's cores with the server, as a load generator on the same host does.
 *
 * `--threads` (default 1, as `deno task serve`) sets the wasm threads of both the server
 * and the in-process measurement.
 *
 * Data: `../shared/data/Office_Products.txt` beside the repository where it exists, else a
 * synthetic data set with Office's item count (said so in the output). `--items N` instead
 * measures a catalogue of N items (`i1`..`iN`) with 2,000 histories of 1-50 items spread over
 * it; `--item-dtype f16|i8` serves the model file with that item table (`export
 * --item-dtype`), and the model file's size is printed. `--block-items N` is the
 * recommenders' `blockItems`, in process and in the server (`serve --block-items`): a
 * catalogue of more items is ranked N at a time with a running top-k (default 65,536; a
 * larger N than the catalogue ranks it whole, with its full scores and transposed table).
 * `--compact-items` (with `--item-dtype i8`) keeps the table int8 in memory, in process and
 * in the server (`serve --compact-items`). The in-process recommender is loaded from the
 * same model file the server serves.
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import { CHILD_PERMISSIONS, positiveInt } from "./_flags.ts";
import { startServeChild } from "../cli/_serve_child.ts";
import { type BackendChoice, selectBackend } from "../backends/mod.ts";
import { type SequenceDataset, syntheticDataset } from "../lib/data/mod.ts";
import { readDataset } from "../lib/data/files.ts";
import { modelEntry } from "../lib/models/mod.ts";
import { BLOCK_ITEMS, Recommender } from "../lib/inference/recommender.ts";
import { ITEM_DTYPES, type ItemDtype } from "../lib/inference/model_file.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: { type: "string", default: "sasrec,sigma" },
    backend: { type: "string", default: "wasm" },
    clients: { type: "string", default: "50" },
    seconds: { type: "string", default: "10" },
    rounds: { type: "string", default: "2" },
    calls: { type: "string", default: "300" },
    "max-requests": { type: "string", default: "200000" },
    waits: { type: "string", default: "0,2" },
    threads: { type: "string", default: "1" },
    items: { type: "string" },
    "item-dtype": { type: "string", default: "f32" },
    "block-items": { type: "string", default: String(BLOCK_ITEMS) },
    "compact-items": { type: "boolean", default: false },
  },
  strict: true,
});
const clients = positiveInt("clients", values.clients);
const seconds = positiveInt("seconds", values.seconds);
const rounds = positiveInt("rounds", values.rounds);
const warmupSeconds = Math.min(3, seconds);
const calls = positiveInt("calls", values.calls);
const maxRequests = positiveInt("max-requests", values["max-requests"]);
const waits = values.waits.split(",").map((w) => {
  const n = Number(w);
  if (w.trim() === "" || !(n >= 0)) {
    throw new RangeError(`--waits must list numbers >= 0, got "${w}"`);
  }
  return n;
});
const OFFICE = new URL("../../shared/data/Office_Products.txt", import.meta.url).pathname;
const OFFICE_ITEMS = 2420;

async function officeData(): Promise<SequenceDataset> {
  try {
    return await readDataset(OFFICE);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    console.log(`data: ${OFFICE} not found; a synthetic set with ${OFFICE_ITEMS} items instead`);
    return syntheticDataset({ seed: 1, users: 4000, items: OFFICE_ITEMS });
  }
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function summary(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  return `p50 ${quantile(s, 0.5).toFixed(2)} ms, p95 ${quantile(s, 0.95).toFixed(2)} ms, ` +
    `p99 ${quantile(s, 0.99).toFixed(2)} ms`;
}

/** The server's live tfjs tensors, as `/health` reports them. */
async function tensorCount(recommend: URL): Promise<number> {
  return (await (await fetch(new URL("health", recommend))).json()).tensors;
}

/** Resident memory of a process, from `ps` (Deno reads `/proc` only under --allow-all). */
async function rssMiB(pid: number): Promise<number> {
  const out = await new Deno.Command("ps", { args: ["-o", "rss=", "-p", String(pid)] }).output()
    .catch(() => null);
  return out?.success ? Number(new TextDecoder().decode(out.stdout).trim()) / 1024 : NaN;
}

/** The process's peak RSS so far (Linux's `VmHWM`), in MiB; NaN where it cannot be read. */
async function peakRssMiB(pid: number): Promise<number> {
  // Through grep: Deno lets a script read /proc only with --allow-all.
  const out = await new Deno.Command("grep", { args: ["VmHWM", `/proc/${pid}/status`] }).output()
    .catch(() => null);
  const kb = out?.success ? new TextDecoder().decode(out.stdout).match(/(\d+) kB/)?.[1] : undefined;
  return kb === undefined ? NaN : Number(kb) / 1024;
}

async function startServer(model: string, waitMs: number) {
  const server = await startServeChild([
    "--model",
    model,
    "--backend",
    values.backend,
    "--batch-wait-ms",
    String(waitMs),
    "--threads",
    values.threads,
    "--block-items",
    String(blockItems),
    ...(values["compact-items"] ? ["--compact-items"] : []),
  ], [...CHILD_PERMISSIONS, "--allow-net", "--v8-flags=--expose-gc"]);
  return { ...server, url: new URL("recommend", server.base) };
}

/** `clients` loops posting histories until the deadline; latencies in ms and errors. */
async function load(url: URL, histories: string[][], seconds: number) {
  const latencies: number[] = [];
  let errors = 0;
  let sent = 0;
  const deadline = performance.now() + seconds * 1000;
  const started = performance.now();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let i = c; performance.now() < deadline && sent < maxRequests; i += clients) {
      sent++;
      const body = JSON.stringify({ history: histories[i % histories.length], k: 20 });
      const t = performance.now();
      try {
        const r = await fetch(url, { method: "POST", body });
        await r.arrayBuffer();
        if (r.status !== 200) errors++;
      } catch {
        errors++;
      }
      latencies.push(performance.now() - t);
    }
  }));
  return { latencies, errors, seconds: (performance.now() - started) / 1000 };
}

const itemDtype = values["item-dtype"] as ItemDtype;
const blockItems = positiveInt("block-items", values["block-items"]);
if (!ITEM_DTYPES.includes(itemDtype)) {
  throw new RangeError(`--item-dtype must be one of ${ITEM_DTYPES.join(", ")}, got "${itemDtype}"`);
}
const { data, histories } = values.items === undefined
  ? officeHistories(await officeData())
  : catalogueHistories(positiveInt("items", values.items));

/** Office's users' own histories (their newest 1-50 items). */
function officeHistories(data: SequenceDataset) {
  const histories = data.sequences.map((s, u) =>
    Array.from(s.subarray(Math.max(0, s.length - 1 - (u % 50))), (i) => data.vocab.items[i])
  );
  return { data, histories };
}

/** A catalogue of `n` items and 2,000 histories of 1-50 of them, spread by two primes. */
function catalogueHistories(n: number) {
  const items = ["<pad>", ...Array.from({ length: n }, (_, i) => `i${i + 1}`)];
  const histories = Array.from(
    { length: 2000 },
    (_, u) =>
      Array.from({ length: 1 + (u % 50) }, (_, j) => items[1 + (u * 7919 + j * 104729) % n]),
  );
  return {
    data: { source: `a synthetic catalogue of ${n} items`, numItems: n, vocab: { items } },
    histories,
  };
}
const chosen = await selectBackend(values.backend as BackendChoice, {
  wasmThreads: positiveInt("threads", values.threads),
});
console.log(`data: ${data.source}, ${data.numItems} items, ${histories.length} histories`);
console.log(`in-process backend: ${chosen.name} (${chosen.reason})`);
console.log(`load: ${clients} clients, ${rounds} rounds of ${seconds} s per run, k = 20\n`);
const dir = await Deno.makeTempDir();
try {
  for (const kind of values.models.split(",")) {
    const model = modelEntry(kind).create({ numItems: data.numItems });
    const file = `${dir}/${kind}.safetensors`;
    let bytes: Uint8Array;
    {
      using built = new Recommender(model, data.vocab.items);
      bytes = await built.toBytes({ bench: "untrained" }, { itemDtype });
    }
    await Deno.writeFile(file, bytes);
    // In process, the model as the server has it: loaded from the file.
    using recommender = await Recommender.load(bytes, {
      blockItems,
      compactItems: values["compact-items"],
    });
    console.log(
      `${kind}: model file ${bytes.length.toLocaleString("en")} bytes, item table ${itemDtype}` +
        (recommender.compactItems ? ", kept int8 in memory" : ""),
    );
    for (let i = 0; i < 20; i++) await recommender.recommend(histories[i], { k: 20 });
    const ms: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t = performance.now();
      await recommender.recommend(histories[(i * 7) % histories.length], { k: 20 });
      ms.push(performance.now() - t);
    }
    console.log(`${kind}: single history, top 20, no HTTP: ${summary(ms)} (${calls} calls)`);
    for (const waitMs of waits) {
      const server = await startServer(file, waitMs);
      if (waitMs === waits[0]) console.log(`  server ${server.backendLine}`);
      // Once it listens: the model is loaded, nothing served yet.
      const loaded = [await rssMiB(server.child.pid), await peakRssMiB(server.child.pid)];
      // Warm-up under the same load, so that heaps reach their working size first.
      await load(server.url, histories, warmupSeconds);
      const rss = [await rssMiB(server.child.pid)];
      const tensors = [await tensorCount(server.url)];
      const result = { latencies: [] as number[], errors: 0, seconds: 0 };
      for (let round = 0; round < rounds; round++) {
        const r = await load(server.url, histories, seconds);
        result.latencies.push(...r.latencies);
        result.errors += r.errors;
        result.seconds += r.seconds;
        rss.push(await rssMiB(server.child.pid));
        tensors.push(await tensorCount(server.url));
      }
      const peak = await peakRssMiB(server.child.pid);
      server.child.kill("SIGTERM");
      await server.child.status;
      const rate = result.latencies.length / result.seconds;
      console.log(
        `${kind}: HTTP, ${clients} clients, batch wait ${waitMs} ms: ${rate.toFixed(0)} req/s, ` +
          `${summary(result.latencies)}, ${result.errors} errors of ${result.latencies.length}, ` +
          `server RSS loaded ${loaded[0].toFixed(0)} (peak ${loaded[1].toFixed(0)}), serving ` +
          `${rss.map((m) => m.toFixed(0)).join(" -> ")} MiB (peak ${peak.toFixed(0)}), ` +
          `tensors ${tensors.join(" -> ")}`,
      );
    }
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
