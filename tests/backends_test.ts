import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { tinyTrainBatch } from "./_fixtures.ts";
import { assertFlatTensorCount, assertParity, modelRun } from "./_model_checks.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const BACKENDS = ["cpu", "wasm", "webgpu"] as const;
const TINY = { numItems: 30, hidden: 16, heads: 2, layers: 2, inner: 32, maxLength: 8, seed: 3 };

Deno.test("selectBackend() rejects an unknown name with the name in the message", async () => {
  // deno-lint-ignore no-explicit-any
  await assertRejects(() => selectBackend("tpu" as any), RangeError, '"tpu"');
});

Deno.test("auto passes over a hardware WebGPU adapter for training, saying why, and takes it for inference", async () => {
  // In a child process: navigator.gpu is replaced there by a stub hardware adapter.
  const select = new URL("../backends/mod.ts", import.meta.url).href;
  const script = (purpose: string) => `
    Object.defineProperty(navigator, "gpu", { configurable: true, value: {
      requestAdapter: async () => ({ isFallbackAdapter: false, info: { description: "Stub GPU" },
        requestDevice: async () => { throw new Error("stub adapter: no device"); } }),
    } });
    const { selectBackend } = await import("${select}");
    const chosen = await selectBackend("auto", { purpose: "${purpose}", wasmThreads: 1 });
    console.log(JSON.stringify(chosen));`;
  for (const purpose of ["training", "inference"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", script(purpose)],
      env: { NO_COLOR: "1" },
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!;
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    const chosen = JSON.parse(text);
    if (purpose === "training") {
      assertEquals(chosen.name, "wasm");
      assert(chosen.reason.includes('for training, not the WebGPU adapter "Stub GPU"'), text);
      assert(chosen.reason.includes("--backend webgpu"), text);
    } else {
      // Inference tries the adapter (the stub gives no device, so it falls through to wasm).
      assert(chosen.reason.includes('adapter "Stub GPU" failed to start'), text);
    }
  }
});

Deno.test("selectBackend() auto picks a backend and says why", async () => {
  const chosen = await selectBackend("auto");
  assert(["webgpu", "wasm", "cpu"].includes(chosen.name));
  assert(chosen.reason.startsWith("auto:"), chosen.reason);
  assertEquals(tf.getBackend(), chosen.name);
});

Deno.test("SASRec loss, gradients and scores agree on cpu, wasm and webgpu", async () => {
  const ref = await modelRun("cpu", () => new SasRec(TINY), TINY.numItems);
  for (const backend of ["wasm", "webgpu"] as const) {
    assertParity(ref, await modelRun(backend, () => new SasRec(TINY), TINY.numItems), backend);
  }
});

Deno.test("tensor count stays flat over 5 SASRec training steps on every backend", async () => {
  for (const backend of BACKENDS) {
    await selectBackend(backend);
    const model = new SasRec(TINY);
    assertFlatTensorCount(model, TINY.numItems, backend);
    model.params.dispose();
  }
});

Deno.test("SASRec training moves the loss down on every backend", async () => {
  for (const backend of BACKENDS) {
    await selectBackend(backend);
    const model = new SasRec({ ...TINY, dropout: 0 });
    const optimizer = tf.train.adam(1e-2);
    const batch = tinyTrainBatch(4, 6, TINY.numItems);
    const losses: number[] = [];
    for (let step = 0; step < 15; step++) {
      const l = tf.tidy(() =>
        optimizer.minimize(
          () => model.loss(batch, stepSeeds(1, step)).loss,
          true,
          model.params.list(),
        )!
      );
      losses.push((await l.data())[0]);
      l.dispose();
    }
    assert(losses[14] < 0.5 * losses[0], `${backend}: loss ${losses[0]} -> ${losses[14]}`);
    optimizer.dispose();
    model.params.dispose();
  }
});

/** The `reason` of `selectBackend("wasm", options)` in a new process (wasm starts once). */
async function wasmReasonInNewProcess(options: string): Promise<string> {
  const mod = new URL("../backends/mod.ts", import.meta.url).href;
  const code = `import { selectBackend } from "${mod}";\n` +
    `console.log((await selectBackend("wasm", ${options})).reason);`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  assert(out.success, text.decode(out.stderr));
  return text.decode(out.stdout).trim();
}

Deno.test("selectBackend() starts wasm on every logical CPU, or on the threads asked for", async () => {
  // tfjs-backend-wasm caps its pool at 8 threads.
  const all = Math.min(navigator.hardwareConcurrency, 8);
  const byDefault = await wasmReasonInNewProcess("{}");
  assert(byDefault.includes(`SIMD, ${all} thread(s)`), byDefault);
  const one = await wasmReasonInNewProcess("{ wasmThreads: 1 }");
  assert(one.includes("SIMD, 1 thread(s); 1 thread asked for"), one);
  await assertRejects(
    () => selectBackend("wasm", { wasmThreads: 0 }),
    RangeError,
    "thread count 0",
  );
});

releaseWebGpuAfterTests();
