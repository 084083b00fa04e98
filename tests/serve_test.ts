import { selectBackend } from "../backends/mod.ts";
import { syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { DiffuRec } from "../lib/models/diffurec.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { createHandler } from "../lib/serve/handler.ts";
import { MicroBatcher } from "../lib/serve/batcher.ts";
import { startServeChild } from "../cli/_serve_child.ts";
import { assert, assertEquals, assertRejects } from "./_assert.ts";

const data = syntheticDataset({ seed: 17, users: 40, items: 25, maxLength: 10 });
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 10 };

/** A model file of a fresh tiny SASRec over the synthetic vocabulary, in a temp folder. */
async function modelFile(): Promise<{ dir: string; path: string }> {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/model.safetensors`;
  await Deno.writeFile(path, await r.toBytes());
  return { dir, path };
}

/** Starts `serve` on an ephemeral loopback port on cpu; resolves once it listens. */
function startServer(model: string, ...extra: string[]) {
  return startServeChild(["--model", model, "--backend", "cpu", ...extra]);
}

async function post(base: string, path: string, body: string | Uint8Array<ArrayBuffer>) {
  const response = await fetch(new URL(path, base), { method: "POST", body });
  return { status: response.status, json: await response.json() };
}

Deno.test("serve answers every route and every bad request, and keeps serving", async () => {
  const { dir, path } = await modelFile();
  const server = await startServer(path);
  const { base } = server;
  try {
    const health = await (await fetch(new URL("health", base))).json();
    assertEquals([health.status, health.model, health.items, health.backend], [
      "ok",
      "sasrec",
      data.numItems,
      "cpu",
    ]);
    assertEquals(health.formatVersion, 1);
    assertEquals(typeof health.tensors, "number");
    assertEquals(health.inFlight, 0);
    const page = await fetch(base);
    assertEquals(page.headers.get("content-type"), "text/html; charset=utf-8");
    const html = await page.text();
    assert(html.includes("<form"));
    // The page's script parses (it has no top-level await or import, so a function body takes it).
    const script = html.split('<script type="module">')[1].split("</script>")[0];
    new Function(script);

    const history = data.vocab.items.slice(1, 4);
    const one = await post(
      base,
      "recommend",
      JSON.stringify({ history: [...history, "zz"], k: 5 }),
    );
    assertEquals(one.status, 200);
    assertEquals(one.json.items.length, 5);
    assertEquals(one.json.unknown, ["zz"]);
    assert(one.json.items.every((x: { item: string }) => !history.includes(x.item)));
    const excluded = await post(
      base,
      "recommend",
      JSON.stringify({ history, k: 5, exclude: [one.json.items[0].item] }),
    );
    assertEquals(excluded.json.items[0], one.json.items[1]);

    const batch = await post(
      base,
      "recommend/batch",
      JSON.stringify({ requests: [{ history, k: 5 }, { history: [], k: 2 }] }),
    );
    assertEquals(batch.status, 200);
    assertEquals(batch.json.results[0], { items: one.json.items, unknown: [] });
    assertEquals(batch.json.results[1].items.length, 2);

    const bad: [string, string | Uint8Array<ArrayBuffer>, number, string | undefined][] = [
      ["recommend", "{not json", 400, undefined],
      ["recommend", "[1, 2]", 400, undefined],
      ["recommend", JSON.stringify({ k: 3 }), 400, "history"],
      ["recommend", JSON.stringify({ history: "i1" }), 400, "history"],
      ["recommend", JSON.stringify({ history: ["i1", 7] }), 400, "history[1]"],
      ["recommend", JSON.stringify({ history: ["i1"], k: 0 }), 400, "k"],
      ["recommend", JSON.stringify({ history: ["i1"], k: 1001 }), 400, "k"],
      ["recommend", JSON.stringify({ history: ["i1"], k: "5" }), 400, "k"],
      ["recommend", JSON.stringify({ history: ["i1"], k: null }), 400, "k"],
      ["recommend", JSON.stringify({ history: ["i1"], exclude: "i2" }), 400, "exclude"],
      ["recommend", JSON.stringify({ history: ["i1"], excludeSeen: 1 }), 400, "excludeSeen"],
      ["recommend", JSON.stringify({ history: ["i1"], hisotry: [] }), 400, "hisotry"],
      ["recommend", JSON.stringify({ history: Array(1001).fill("i1") }), 400, "history"],
      ["recommend", JSON.stringify({ history: ["i1", "zz"], strict: true }), 422, "history"],
      ["recommend", new Uint8Array(1024 * 1024 + 1).fill(32), 413, undefined],
      ["recommend/batch", JSON.stringify({ requests: {} }), 400, "requests"],
      [
        "recommend/batch",
        JSON.stringify({ requests: [{ history: ["i1"], k: -1 }] }),
        400,
        "requests[0].k",
      ],
      [
        "recommend/batch",
        JSON.stringify({ requests: Array(257).fill({ history: [] }) }),
        400,
        "requests",
      ],
    ];
    for (const [route, body, status, field] of bad) {
      const r = await post(base, route, body);
      const what = `${route} ${
        typeof body === "string" ? body.slice(0, 60) : `${body.length} bytes`
      }`;
      assertEquals(r.status, status, `${what}: ${JSON.stringify(r.json)}`);
      assertEquals(typeof r.json.error, "string", what);
      assertEquals(r.json.field, field, what);
    }
    const missing = await fetch(new URL("nowhere", base));
    assertEquals(missing.status, 404);
    await missing.body?.cancel();
    const wrong = await fetch(new URL("recommend", base));
    assertEquals([wrong.status, wrong.headers.get("allow")], [405, "POST"]);
    await wrong.body?.cancel();
    const wrongToo = await fetch(new URL("health", base), { method: "DELETE" });
    assertEquals(wrongToo.status, 405);
    await wrongToo.body?.cancel();
    // Still serving after all of that.
    assertEquals((await post(base, "recommend", JSON.stringify({ history }))).status, 200);
  } finally {
    server.child.kill("SIGTERM");
    await server.child.status;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("createHandler refuses a bad limit by name; a streamed body over the cap is a 413; errors echo at most 100 characters of a value", async () => {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
  const bad: [Record<string, number>, string][] = [
    [{ maxBodyBytes: NaN }, "maxBodyBytes must be a positive integer or Infinity, got NaN"],
    [{ maxHistory: 0 }, "maxHistory must be a positive integer or Infinity, got 0"],
    [{ maxK: -1 }, "maxK must be a positive integer or Infinity, got -1"],
    [{ maxBatch: 2.5 }, "maxBatch must be a positive integer or Infinity, got 2.5"],
    [{ batchWaitMs: 60_000 }, "batchWaitMs must be from 0 to 10000, got 60000"],
    [{ batchWaitMs: NaN }, "batchWaitMs must be from 0 to 10000, got NaN"],
  ];
  for (const [options, message] of bad) {
    let error: unknown;
    try {
      createHandler(r, options);
    } catch (e) {
      error = e;
    }
    assert(error instanceof RangeError, `${JSON.stringify(options)}: ${error}`);
    assertEquals(error.message, message);
  }
  createHandler(r, { maxK: Infinity, maxHistory: Infinity }); // no cap: still allowed
  const handler = createHandler(r, { maxBodyBytes: 64, batchWaitMs: 0 });
  const url = "http://localhost/recommend";
  // No content-length: the cap is applied while reading.
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < 4; i++) c.enqueue(new Uint8Array(32).fill(32));
      c.close();
    },
  });
  const request = new Request(url, { method: "POST", body: stream });
  assertEquals(request.headers.get("content-length"), null);
  const streamed = await handler(request);
  assertEquals([streamed.status, (await streamed.json()).error], [
    413,
    "the body is over 64 bytes, the most accepted",
  ]);
  const wide = createHandler(r, { batchWaitMs: 0 });
  const huge = await wide(
    new Request(url, {
      method: "POST",
      body: JSON.stringify({ history: [], k: "9".repeat(5000) }),
    }),
  );
  const { error, field } = await huge.json();
  assertEquals([huge.status, field], [400, "k"]);
  assert(error.length < 250, `an error of ${error.length} characters`);
  assert(error.includes("(5002 characters)"), error);
  const key = await wide(
    new Request(url, {
      method: "POST",
      body: JSON.stringify({ history: [], ["x".repeat(5000)]: 1 }),
    }),
  );
  const unknown = await key.json();
  assertEquals([key.status, unknown.field], [400, "x".repeat(100)]);
  assert(unknown.error.length < 250, `an error of ${unknown.error.length} characters`);
});

Deno.test("a body that is not UTF-8 is a 400 naming the byte; a body of exactly maxBodyBytes is read, one byte more is a 413 (hardening items 10, 25)", async () => {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
  const url = "http://localhost/recommend";
  const handler = createHandler(r, { batchWaitMs: 0 });
  // {"history": ["<0xff>"]}: JSON around one byte that no UTF-8 text holds.
  const head = new TextEncoder().encode('{"history": ["');
  const bytes = new Uint8Array([...head, 0xff, ...new TextEncoder().encode('"]}')]);
  const bad = await handler(new Request(url, { method: "POST", body: bytes }));
  assertEquals([bad.status, (await bad.json()).error], [
    400,
    `the body is not UTF-8 text (at byte ${head.length})`,
  ]);
  // The cap is inclusive, with and without content-length.
  const body = JSON.stringify({ history: [data.vocab.items[1]], k: 2 });
  const exact = createHandler(r, { batchWaitMs: 0, maxBodyBytes: body.length });
  const asStream = (text: string) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new TextEncoder().encode(text));
        c.close();
      },
    });
  for (const make of [(t: string) => t, asStream]) {
    const ok = await exact(new Request(url, { method: "POST", body: make(body) }));
    assertEquals(ok.status, 200, await ok.clone().text());
    await ok.body?.cancel();
    const over = await exact(new Request(url, { method: "POST", body: make(body + " ") }));
    assertEquals(over.status, 413);
    await over.body?.cancel();
  }
});

Deno.test("serve answers the requests in flight when SIGTERM arrives, then stops", async () => {
  const { dir, path } = await modelFile();
  // A long micro-batching window keeps the requests in flight while the signal arrives.
  const server = await startServer(path, "--batch-wait-ms", "800");
  try {
    const pending = [1, 2, 3].map((k) =>
      fetch(new URL("recommend", server.base), {
        method: "POST",
        body: JSON.stringify({ history: ["i1", "i2"], k }),
      })
    );
    // Signal once the server holds all three (a fixed 300 ms could pass on a loaded machine
    // before they arrived, and a request sent after the signal is refused).
    const healthUrl = new URL("health", server.base);
    for (let tries = 0; (await (await fetch(healthUrl)).json()).inFlight < 3; tries++) {
      assert(tries < 400, "the three requests never reached the server");
      await new Promise((r) => setTimeout(r, 5));
    }
    server.child.kill("SIGTERM");
    for (const [i, p] of pending.entries()) {
      const response = await p;
      assertEquals(response.status, 200);
      assertEquals((await response.json()).items.length, i + 1);
    }
    const status = await server.child.status;
    assertEquals(status.code, 0);
    const log = await server.log();
    assert(log.includes("stopping") && log.includes("stopped"), log);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a request whose body is still arriving when SIGTERM comes is answered normally; a new one gets a 503 (hardening item 9)", async () => {
  const { dir, path } = await modelFile();
  const server = await startServer(path);
  try {
    const body = JSON.stringify({ history: ["i1", "i2"], k: 2 });
    let rest: (() => void) | null = null;
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(new TextEncoder().encode(body.slice(0, 10)));
        await new Promise<void>((resolve) => rest = resolve);
        controller.enqueue(new TextEncoder().encode(body.slice(10)));
        controller.close();
      },
    });
    const pending = fetch(new URL("recommend", server.base), { method: "POST", body: stream });
    const healthUrl = new URL("health", server.base);
    for (let tries = 0; (await (await fetch(healthUrl)).json()).inFlight < 1; tries++) {
      assert(tries < 400, "the request never reached the server");
      await new Promise((r) => setTimeout(r, 5));
    }
    server.child.kill("SIGTERM");
    // Until the stop completes, a new request is refused with a 503, not left hanging.
    let refused = 0;
    for (let tries = 0; refused === 0 && tries < 200; tries++) {
      const r = await fetch(healthUrl).catch(() => null);
      if (r?.status === 503) refused++;
      await r?.body?.cancel();
      if (r === null) break;
    }
    assertEquals(refused, 1, "a request after the signal was not refused with a 503");
    rest!();
    const response = await pending;
    assertEquals(response.status, 200, await response.clone().text());
    assertEquals((await response.json()).items.length, 2);
    assertEquals((await server.child.status).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("/health counts the recommendation requests being answered", async () => {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 4 }), data.vocab.items);
  const handler = createHandler(r, { batchWaitMs: 200 });
  const inFlight = async () =>
    (await (await handler(new Request("http://x/health"))).json()).inFlight;
  const history = data.vocab.items.slice(1, 3);
  const pending = [1, 2].map((k) =>
    handler(
      new Request("http://x/recommend", { method: "POST", body: JSON.stringify({ history, k }) }),
    )
  );
  const bad = handler(new Request("http://x/recommend", { method: "POST", body: "{" }));
  assertEquals((await bad).status, 400);
  assertEquals(await inFlight(), 2, "two wait in the batching window");
  for (const p of pending) assertEquals((await p).status, 200);
  assertEquals(await inFlight(), 0, "none once answered");
});

Deno.test("concurrent /recommend requests are micro-batched and each gets its own answer", async () => {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 4 }), data.vocab.items);
  let batches = 0;
  const calls = r.recommendBatch.bind(r);
  r.recommendBatch = (...args) => {
    batches++;
    return calls(...args);
  };
  const handler = createHandler(r, { batchWaitMs: 20 });
  const histories = data.sequences.slice(0, 12).map((s) =>
    Array.from(s, (i) => data.vocab.items[i])
  );
  const answers = await Promise.all(histories.map((history, i) =>
    handler(
      new Request("http://x/recommend", {
        method: "POST",
        body: JSON.stringify({ history, k: 1 + (i % 4) }),
      }),
    ).then((res) => res.json())
  ));
  assert(batches <= 2, `${batches} forward passes for 12 requests`);
  for (let i = 0; i < histories.length; i++) {
    const alone = await r.recommend(histories[i], { k: 1 + (i % 4) });
    assertEquals(
      answers[i].items.map((x: { item: string }) => x.item),
      alone.items.map((x) => x.item),
    );
  }
});

Deno.test("a failing request in a micro-batch fails alone", async () => {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 4 }), data.vocab.items);
  const batcher = new MicroBatcher(r, { waitMs: 10 });
  const good = batcher.recommend(["i1"], { k: 2 });
  const bad = batcher.recommend(["i1"], { k: -3 });
  assertEquals((await good).items.length, 2);
  await assertRejects(() => bad, RangeError, "-3");
});

Deno.test("GET /health says how a diffusion model ranks, as it was loaded; SASRec has no such fields", async () => {
  await selectBackend("cpu");
  const model = new DiffuRec({ ...TINY, steps: 4 });
  const evalSeed = model.config.evalSeed;
  using saved = new Recommender(model, data.vocab.items);
  const bytes = await saved.toBytes();
  const overrides: Record<string, number | string>[] = [{}, { sampling: "one" }, {
    reverseSteps: 2,
  }];
  for (const inference of overrides) {
    using r = await Recommender.load(bytes, { inference });
    const health = await (await createHandler(r)(new Request("http://x/health"))).json();
    assertEquals(health.inference, {
      reverseSteps: 0,
      sampling: "chain",
      evalSeed,
      lambda: 0.001,
      ...inference,
    });
  }
  using sasrec = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
  const health = await (await createHandler(sasrec)(new Request("http://x/health"))).json();
  assertEquals("inference" in health, false);
});

Deno.test("/recommend takes a diversity weight (0: today's answer exactly) and a method the model has; anything else is a 400 naming the field", async () => {
  await selectBackend("cpu");
  using sasrec = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
  using sigma = new Recommender(
    new Sigma({ ...TINY, seed: 2, interests: 3 }),
    data.vocab.items,
  );
  const ask = async (handler: (r: Request) => Promise<Response>, body: unknown) => {
    const response = await handler(
      new Request("http://x/recommend", { method: "POST", body: JSON.stringify(body) }),
    );
    return { status: response.status, json: await response.json() };
  };
  const history = ["i1", "i2", "i3"];
  for (const [r, methods] of [[sasrec, ["mmr"]], [sigma, ["mmr", "interests"]]] as const) {
    const handler = createHandler(r, { batchWaitMs: 0 });
    const health = await (await handler(new Request("http://x/health"))).json();
    assertEquals(health.diversityMethods, methods);
    const plain = await ask(handler, { history, k: 8 });
    assertEquals(await ask(handler, { history, k: 8, diversity: 0 }), plain);
    for (const method of ["auto", ...methods]) {
      const diverse = await ask(handler, { history, k: 8, diversity: 5, diversityMethod: method });
      assertEquals(diverse.status, 200, JSON.stringify(diverse.json));
      const items = diverse.json.items.map((x: { item: string }) => x.item);
      assertEquals(items.length, 8);
      for (const item of history) assert(!items.includes(item), `${method}: seen ${item}`);
    }
    const bad: [Record<string, unknown>, string][] = [
      [{ diversity: -0.5 }, "diversity"],
      [{ diversity: "1" }, "diversity"],
      [{ diversity: null }, "diversity"],
      [{ diversity: 1, diversityMethod: "random" }, "diversityMethod"],
      [{ diversity: 1, diversityMethod: 3 }, "diversityMethod"],
    ];
    if (methods.length === 1) {
      bad.push([{ diversity: 1, diversityMethod: "interests" }, "diversityMethod"]);
    }
    for (const [extra, field] of bad) {
      const answer = await ask(handler, { history, ...extra });
      assertEquals(answer.status, 400, JSON.stringify(extra));
      assertEquals(answer.json.field, field, JSON.stringify(answer.json));
    }
    // A model without item vectors cannot diversify: a 400, not a 500.
    if (methods.length === 1) {
      const bare = new SasRec({ ...TINY, seed: 3 });
      Object.defineProperty(bare, "itemVectors", { value: undefined });
      using plainModel = new Recommender(bare, data.vocab.items);
      const without = createHandler(plainModel, { batchWaitMs: 0 });
      assertEquals(
        (await (await without(new Request("http://x/health"))).json()).diversityMethods,
        [],
      );
      const refused = await ask(without, { history, diversity: 1 });
      assertEquals([refused.status, refused.json.field], [400, "diversity"]);
      assertEquals((await ask(without, { history, diversity: 0 })).status, 200);
    }
    // Inside a batch, the field names its request.
    const batch = await handler(
      new Request("http://x/recommend/batch", {
        method: "POST",
        body: JSON.stringify({ requests: [{ history }, { history, diversity: -1 }] }),
      }),
    );
    assertEquals(batch.status, 400);
    assertEquals((await batch.json()).field, "requests[1].diversity");
  }
});

Deno.test("serve --compact-items keeps an int8 file's table int8 and answers as the file decoded; --block-items is checked by name", async () => {
  await selectBackend("wasm");
  using r = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/model-i8.safetensors`;
  await Deno.writeFile(path, await r.toBytes({}, { itemDtype: "i8" }));
  const server = await startServeChild(["--model", path, "--backend", "wasm", "--compact-items"]);
  try {
    const history = data.vocab.items.slice(1, 6);
    const got = await post(server.base, "recommend", JSON.stringify({ history, k: 5 }));
    assertEquals(got.status, 200);
    using decoded = await Recommender.load(path);
    const want = await decoded.recommend(history, { k: 5 });
    const mine = got.json.items.map((x: { item: string }) => x.item);
    // The query's int16 rounding may swap two items of nearly equal score at the edge.
    const shared = want.items.filter((x) => mine.includes(x.item)).length;
    assert(shared >= 4, `compact ${mine} against decoded ${want.items.map((x) => x.item)}`);
    const diverse = await post(
      server.base,
      "recommend",
      JSON.stringify({ history, k: 5, diversity: 1 }),
    );
    assertEquals(diverse.status, 400);
    assert(JSON.stringify(diverse.json).includes("kept int8"), JSON.stringify(diverse.json));
    const health = await (await fetch(new URL("health", server.base))).json();
    assertEquals(health.diversityMethods, []);
  } finally {
    server.child.kill("SIGTERM");
    const log = await server.log();
    await server.child.status;
    assert(log.includes("(item table kept int8)"), log);
  }
  const bad = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../cli/main.ts", import.meta.url).pathname,
      "serve",
      "--model",
      path,
      "--block-items",
      "0",
    ],
    stdout: "null",
    stderr: "piped",
  });
  const out = await bad.output();
  assertEquals(out.code, 1);
  assert(new TextDecoder().decode(out.stderr).includes("--block-items"), "names the flag");
  await Deno.remove(dir, { recursive: true });
});
