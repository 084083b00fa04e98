import { selectBackend } from "../backends/mod.ts";
import { syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { VOCABULARY_TENSOR_ITEMS } from "../lib/inference/model_file.ts";
import { startServeChild } from "../cli/_serve_child.ts";
import { assert, assertEquals } from "./_assert.ts";

const BUILD = new URL("../web/build.ts", import.meta.url).pathname;
const CHROMIUM = Deno.env.get("CHROMIUM") ?? "chromium";
const probe = await new Deno.Command(CHROMIUM, {
  args: ["--version"],
  stdout: "null",
  stderr: "null",
})
  .output().catch(() => null);
if (!probe?.success) {
  console.warn(
    `web_test: skipped: no ${CHROMIUM} to run the page in (Debian: apt-get install chromium)`,
  );
}

/** Runs `deno task build:web` into `site`, asserting it succeeds. */
async function buildSite(site: string): Promise<void> {
  const built = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-run",
      "--allow-env",
      BUILD,
      "--out",
      site,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(built.code, 0, new TextDecoder().decode(built.stderr));
}

/** A small untrained SASRec on a synthetic catalogue (data seed, model seed), as a recommender. */
function tinyRecommender(dataSeed: number, seed: number): Recommender {
  const data = syntheticDataset({ seed: dataSeed, users: 40, items: 60, maxLength: 10 });
  const model = new SasRec({
    numItems: data.numItems,
    hidden: 16,
    heads: 2,
    layers: 1,
    inner: 16,
    seed,
  });
  return new Recommender(model, data.vocab.items);
}

/** An untrained SASRec over 65,537 items, one more than a version 1 file's vocabulary holds. */
function bigVocabularyRecommender(): Recommender {
  const n = VOCABULARY_TENSOR_ITEMS + 1;
  const items = ["<pad>", ...Array.from({ length: n }, (_, i) => `i${i + 1}`)];
  const model = new SasRec({ numItems: n, hidden: 16, heads: 2, layers: 1, inner: 16, seed: 4 });
  return new Recommender(model, items);
}

/** A minimal Chrome DevTools Protocol client over the page target's WebSocket. */
class DevTools {
  #socket: WebSocket;
  #next = 1;
  #pending = new Map<number, (message: { result?: unknown; error?: unknown }) => void>();

  private constructor(socket: WebSocket) {
    this.#socket = socket;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.#pending.get(message.id)?.(message);
      this.#pending.delete(message.id);
    };
  }

  static async connect(url: string): Promise<DevTools> {
    const socket = new WebSocket(url);
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = reject;
    });
    return new DevTools(socket);
  }

  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = this.#next++;
    this.#socket.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) => {
      this.#pending.set(
        id,
        (m) =>
          m.error
            ? reject(new Error(JSON.stringify(m.error)))
            : resolve(m.result as Record<string, unknown>),
      );
    });
  }

  /**
   * Evaluates `expression` in the page. Until the page's first document has a JavaScript
   * context (Chromium opens the tab before it navigates), and while a navigation swaps it,
   * Chromium answers "Cannot find default execution context", "Execution context was
   * destroyed" or "Inspected target navigated or closed": those are retried for up to 30 s,
   * anything else is thrown at once.
   */
  async evaluate(expression: string): Promise<unknown> {
    for (let attempt = 0;; attempt++) {
      try {
        const r = await this.send("Runtime.evaluate", { expression, returnByValue: true });
        return (r.result as { value?: unknown }).value;
      } catch (e) {
        const transient = /execution context|target navigated/i.test(String((e as Error).message));
        if (!transient || attempt >= 300) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  close(): void {
    this.#socket.close();
  }
}

/** Serves `dir` on an ephemeral loopback port. */
function serveFolder(dir: string) {
  const types: Record<string, string> = {
    html: "text/html; charset=utf-8",
    js: "text/javascript",
    wasm: "application/wasm",
  };
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const name = new URL(request.url).pathname.slice(1) || "index.html";
    if (name.includes("..") || name.includes("/")) return new Response("no", { status: 404 });
    try {
      const body = await Deno.readFile(`${dir}/${name}`);
      return new Response(body, {
        headers: {
          "content-type": types[name.split(".").pop()!] ?? "application/octet-stream",
          // Cross-origin isolated, as a host that wants SharedArrayBuffer serves it: tfjs then
          // reaches for its threaded binary, which the page must not need.
          "cross-origin-opener-policy": "same-origin",
          "cross-origin-embedder-policy": "require-corp",
        },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
}

Deno.test({
  name: "the browser page, in headless Chromium, recommends the same top-10 as the Deno API",
  ignore: !probe?.success,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const site = `${dir}/site`;
    await buildSite(site);

    // A model file, and what the Deno API recommends from it.
    await selectBackend("wasm");
    using made = tinyRecommender(23, 5);
    const bytes = await made.toBytes();
    await Deno.writeFile(`${site}/model.safetensors`, bytes);
    using loaded = await Recommender.load(bytes);
    const history = ["i3", "i9", "not-an-item", "i27"];
    const expected = await loaded.recommend(history, { k: 10 });

    const server = serveFolder(site);
    const query = history.map((h) => `item=${encodeURIComponent(h)}`).join("&");
    const page = `http://127.0.0.1:${server.addr.port}/?${query}&k=10`;
    const { devtools, close } = await openInChromium(page, dir);
    try {
      const state = await waitForPage(devtools);
      const error = await devtools.evaluate("document.getElementById('error').textContent");
      assertEquals(state, "done", `page state ${state}: ${error}`);
      const rows = await devtools.evaluate(
        "JSON.stringify([...document.querySelectorAll('#results tbody tr')].map((tr) => [tr.dataset.item, Number(tr.dataset.score)]))",
      ) as string;
      const shown = JSON.parse(rows) as [string, number][];
      assertEquals(shown.map(([item]) => item), expected.items.map((x) => x.item));
      shown.forEach(([, score], i) => {
        const want = expected.items[i].score;
        assert(
          Math.abs(score - want) <= 1e-4 * Math.max(Math.abs(want), 1),
          `row ${i}: ${score} vs ${want}`,
        );
      });
      const backend = await devtools.evaluate(
        "document.getElementById('backend').textContent",
      ) as string;
      // Not the CPU kernels: on this cross-origin-isolated page wasm must still start.
      assert(/^backend: (webgpu|wasm) \(/.test(backend), backend);
      assertEquals(
        await devtools.evaluate("document.getElementById('unknown').textContent"),
        "Not in the model, skipped: not-an-item",
      );
      // The list is on screen: visible, and in the screenshot's pixels.
      assertEquals(await devtools.evaluate("document.getElementById('results').hidden"), false);
      const shot = await devtools.send("Page.captureScreenshot", { format: "png" });
      const png = Uint8Array.from(atob(shot.data as string), (c) => c.charCodeAt(0));
      assertEquals([...png.subarray(1, 4)].map((c) => String.fromCharCode(c)).join(""), "PNG");
      // Kept (outside the folder removed below) for a person to look at.
      const shotPath = `${await Deno.makeTempDir({ prefix: "web_test_" })}/page.png`;
      await Deno.writeFile(shotPath, png);
      console.log(`screenshot: ${shotPath} (${png.length} bytes), ${backend}`);
      assert(png.length > 10_000, `a ${png.length}-byte screenshot is too small to show the list`);
      // A blank k is the default; a bad one is an error with the old list hidden.
      const submitWithK = (k: string) =>
        devtools.evaluate(
          `document.getElementById('k').value = '${k}'; document.getElementById('form').requestSubmit()`,
        );
      await submitWithK("3");
      assertEquals(await waitForPage(devtools), "done");
      assertEquals(await devtools.evaluate(ROW_COUNT), 3);
      await submitWithK("");
      assertEquals(await waitForPage(devtools), "done");
      assertEquals(await devtools.evaluate(ROW_COUNT), 10);
      await submitWithK("0");
      assertEquals(await waitForPage(devtools), "error");
      assertEquals(
        await devtools.evaluate("document.getElementById('error').textContent"),
        "k must be a positive integer, got 0",
      );
      assertEquals(await devtools.evaluate("document.getElementById('results').hidden"), true);
      // The variety box: the same re-ranked list as the Deno API's at that weight.
      const diverse = await loaded.recommend(history, { k: 10, diversity: 3 });
      assert(
        diverse.items.map((x) => x.item).join() !== expected.items.map((x) => x.item).join(),
        "weight 3 re-ranked nothing: the check below would prove nothing",
      );
      await devtools.evaluate(
        "document.getElementById('k').value = '10'; document.getElementById('diversity').value = '3'; document.getElementById('form').requestSubmit()",
      );
      assertEquals(await waitForPage(devtools), "done");
      const diverseRows = JSON.parse(
        await devtools.evaluate(
          "JSON.stringify([...document.querySelectorAll('#results tbody tr')].map((tr) => tr.dataset.item))",
        ) as string,
      );
      assertEquals(diverseRows, diverse.items.map((x) => x.item));
      // A vocabulary past 65,536 items is a gzip tensor (format version 3): the page's
      // runtime inflates it (DecompressionStream) and ranks as the Deno API does.
      const big = bigVocabularyRecommender();
      await Deno.writeFile(`${site}/big.safetensors`, await big.toBytes());
      const bigHistory = ["i3", "i65537"];
      const bigExpected = (await big.recommend(bigHistory, { k: 5 })).items.map((x) => x.item);
      big.dispose();
      await devtools.evaluate(
        `window.bigResult = null; import("./inference.js").then(async (m) => {
           await m.selectBackend("cpu");
           const r = await m.Recommender.load(new URL("big.safetensors", location.href));
           window.bigResult = JSON.stringify((await r.recommend(${
          JSON.stringify(bigHistory)
        }, { k: 5 })).items.map((x) => x.item));
         }).catch((e) => { window.bigResult = "error: " + e.message; })`,
      );
      let bigShown: unknown = null;
      for (let i = 0; i < 600 && bigShown === null; i++) {
        await new Promise((r) => setTimeout(r, 100));
        bigShown = await devtools.evaluate("window.bigResult");
      }
      assertEquals(bigShown, JSON.stringify(bigExpected), "the version 3 file in the page");
    } finally {
      await close();
      await server.shutdown();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "the page served at GET /, in headless Chromium, shows the answer, and says so when the server is gone",
  ignore: !probe?.success,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    await selectBackend("cpu");
    const data = syntheticDataset({ seed: 29, users: 30, items: 40, maxLength: 10 });
    using made = new Recommender(
      new SasRec({ numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, seed: 3 }),
      data.vocab.items,
    );
    await Deno.writeFile(`${dir}/model.safetensors`, await made.toBytes());
    const expected = await made.recommend(["i2", "i7"], { k: 5 });
    const server = await startServeChild([
      "--model",
      `${dir}/model.safetensors`,
      "--backend",
      "cpu",
    ]);
    const { devtools, close } = await openInChromium(`${server.base}?item=i2&item=i7&k=5`, dir);
    try {
      const rows = async () =>
        JSON.parse(
          await devtools.evaluate(
            "JSON.stringify([...document.querySelectorAll('#results tbody tr')].map((tr) => tr.children[1].textContent))",
          ) as string,
        );
      for (let i = 0; i < 300 && (await rows()).length === 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assertEquals(await rows(), expected.items.map((x) => x.item));
      // The variety box goes to the server as `diversity`: its re-ranked list is shown.
      const diverse = (await made.recommend(["i2", "i7"], { k: 5, diversity: 4 })).items
        .map((x) => x.item);
      assert(diverse.join() !== expected.items.map((x) => x.item).join(), "nothing re-ranked");
      await devtools.evaluate(
        "document.getElementById('diversity').value = '4'; document.getElementById('form').requestSubmit()",
      );
      for (let i = 0; i < 300 && (await rows()).join() !== diverse.join(); i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assertEquals(await rows(), diverse);
      server.child.kill("SIGTERM");
      await server.child.status;
      await devtools.evaluate("document.getElementById('form').requestSubmit()");
      let error = "";
      for (let i = 0; i < 300 && !error; i++) {
        await new Promise((r) => setTimeout(r, 100));
        error = String(await devtools.evaluate("document.getElementById('error').textContent"));
      }
      assert(error.startsWith("the server did not answer"), error);
      assertEquals(await devtools.evaluate("document.getElementById('results').hidden"), true);
    } finally {
      await close();
      try {
        server.child.kill("SIGTERM");
      } catch {
        // Already stopped by the test.
      }
      await server.child.status;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

const ROW_COUNT = "document.querySelectorAll('#results tbody tr').length";

/** Polls the page's `data-state` until it is "done" or "error" (60 s at most). */
async function waitForPage(devtools: DevTools): Promise<string> {
  let state = "";
  for (let i = 0; i < 600 && state !== "done" && state !== "error"; i++) {
    await new Promise((r) => setTimeout(r, 100));
    state = String(await devtools.evaluate("document.body.dataset.state"));
  }
  return state;
}

/** Opens `page` in headless Chromium (profile under `dir`); a DevTools client on its tab. */
async function openInChromium(page: string, dir: string) {
  const chromium = new Deno.Command(CHROMIUM, {
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--remote-debugging-port=0",
      `--user-data-dir=${dir}/profile`,
      "--window-size=900,800",
      page,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let devtools: DevTools | undefined;
  try {
    const reader = chromium.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let log = "";
    let port = "";
    while (!port) {
      const { done, value } = await reader.read();
      if (done) throw new Error(`chromium exited:\n${log}`);
      log += value;
      port = log.match(/DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//)?.[1] ?? "";
    }
    (async () => {
      for (;;) if ((await reader.read()).done) return;
    })();
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const target = targets.find((t: { type: string; url: string }) =>
      t.type === "page" && t.url.startsWith(page.split("?")[0])
    );
    assert(target, JSON.stringify(targets));
    devtools = await DevTools.connect(target.webSocketDebuggerUrl);
  } catch (e) {
    chromium.kill("SIGTERM");
    await chromium.status;
    throw e;
  }
  const close = async () => {
    devtools?.close();
    chromium.kill("SIGTERM");
    await chromium.status;
  };
  return { devtools: devtools!, close };
}

const NODE = Deno.env.get("NODE") ?? "node";
const nodeProbe = await new Deno.Command(NODE, {
  args: ["--version"],
  stdout: "null",
  stderr: "null",
}).output().catch(() => null);
if (!nodeProbe?.success) {
  console.warn(`web_test: the Node.js check skipped: no ${NODE} (it comes with npx)`);
}

Deno.test({
  name:
    "the bundles take tfjs's web platform where a process global exists: under Node.js, inference.js recommends what the Deno API does, and app.js gets past tfjs to the page",
  ignore: !nodeProbe?.success,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const site = `${dir}/site`;
    await buildSite(site);

    await selectBackend("cpu");
    using made = tinyRecommender(29, 7);
    await Deno.writeFile(`${site}/model.safetensors`, await made.toBytes());
    const history = ["i3", "i9", "not-an-item", "i27"];
    const expected = await made.recommend(history, { k: 10 });

    // Node.js defines process.versions.node: tfjs used to pick its Node platform there.
    const script = `${dir}/check.mjs`;
    await Deno.writeTextFile(
      script,
      `import { readFileSync } from "node:fs";\n` +
        `const { Recommender, selectBackend } = await import(${
          JSON.stringify(`${site}/inference.js`)
        });\n` +
        `await selectBackend("cpu");\n` +
        `const bytes = new Uint8Array(readFileSync(${
          JSON.stringify(`${site}/model.safetensors`)
        }));\n` +
        `const recommender = await Recommender.load(bytes);\n` +
        `console.log(JSON.stringify(await recommender.recommend(${
          JSON.stringify(history)
        }, { k: 10 })));\n`,
    );
    const ran = await new Deno.Command(NODE, { args: [script], stdout: "piped", stderr: "piped" })
      .output();
    const stderr = new TextDecoder().decode(ran.stderr);
    assertEquals(ran.code, 0, stderr);
    const got = JSON.parse(new TextDecoder().decode(ran.stdout).trim().split("\n").pop()!);
    assertEquals(got.items.map((r: { item: string }) => r.item), expected.items.map((r) => r.item));
    assertEquals(got.unknown, expected.unknown);
    for (let i = 0; i < expected.items.length; i++) {
      assert(Math.abs(got.items[i].score - expected.items[i].score) <= 1e-5, `score ${i}`);
    }

    // The page's script needs a page: under Node it stops at the first page global, after
    // tfjs loaded (before the fix it stopped inside tfjs, at TextEncoder).
    await Deno.writeTextFile(
      script,
      `try { await import(${JSON.stringify(`${site}/app.js`)}); console.log("loaded"); }\n` +
        `catch (e) { console.log(e.message); }\n`,
    );
    const page = await new Deno.Command(NODE, { args: [script], stdout: "piped", stderr: "piped" })
      .output();
    const said = new TextDecoder().decode(page.stdout).trim();
    assert(!said.includes("TextEncoder"), said);
    assert(/location|document/.test(said), `app.js under Node: ${said}`);
    await Deno.remove(dir, { recursive: true });
  },
});
