import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import {
  BLAS_MIN_MULTIPLY_ADDS,
  BLAS_MIN_PRODUCT,
  cpuHasAvx512,
  nativeBlasActive,
  nativeBlasCalls,
  useNativeBlas,
} from "../backends/_blas.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { createGru, gatedCategoryGru } from "../lib/nn/gru.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { assert, assertThrows } from "./_assert.ts";
import {
  type MatMulCase,
  matMulCase,
  matMulOf,
  tinyEvalBatch,
  tinyTrainBatch,
} from "./_fixtures.ts";
import {
  assertFlatTensorCount,
  assertParity,
  maxAbs,
  maxAbsDiff,
  type ModelRun,
} from "./_model_checks.ts";

// The native path needs a BLAS on the host (Debian: libopenblas0-pthread); where none
// loads, the tests that use it are skipped, and the message below says why.
const probe = useNativeBlas("auto");
useNativeBlas("off");
if (!probe.active) console.warn(`blas_test: native tests skipped: ${probe.detail}`);
const ignore = !probe.active;

Deno.test({
  name: "matMul through the native BLAS equals wasm's for every transpose, batch and broadcast",
  ignore,
  fn: async () => {
    await selectBackend("wasm");
    const cases: MatMulCase[] = [];
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }), // batch
        fc.constantFrom("rank2", "same", "a1", "b1"),
        fc.integer({ min: 64, max: 300 }), // M
        fc.integer({ min: 64, max: 300 }), // N
        fc.integer({ min: 32, max: 160 }), // K
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: 1, max: 1 << 30 }), // tfjs treats seed 0 as "no seed"
        (batch, kind, m, n, k, ta, tb, seed) => {
          // Smaller products stay on wasm by design; this tests the native path.
          fc.pre(m * n * k >= BLAS_MIN_MULTIPLY_ADDS);
          const lead = kind === "rank2" ? [] : [batch];
          const leadA = kind === "a1" ? [1] : lead;
          const leadB = kind === "b1" ? [1] : lead;
          cases.push(matMulCase(leadA, leadB, [m, n, k], ta, tb, seed));
        },
      ),
      { numRuns: 150 },
    );
    for (const c of cases) {
      useNativeBlas("off");
      const expected = matMulOf(c);
      useNativeBlas("auto");
      const before = nativeBlasCalls();
      const actual = matMulOf(c);
      assert(nativeBlasCalls() > before, `native BLAS was not called for ${JSON.stringify(c)}`);
      // Sums of K products of N(0, 1) values, in different orders: ~1e-6 of sqrt(K) each.
      const diff = maxAbsDiff(actual, expected);
      assert(
        actual.length === expected.length && diff <= 1e-4 * Math.max(maxAbs(expected), 1),
        `${JSON.stringify(c)}: max diff ${diff}`,
      );
    }
    useNativeBlas("off");
  },
});

Deno.test({
  name: "attention-shaped batches of small products go through the native BLAS, equal to wasm's; " +
    "products below its size stay on wasm",
  ignore,
  fn: async () => {
    await selectBackend("wasm");
    const cases: { c: MatMulCase; native: boolean }[] = [];
    fc.assert(
      fc.property(
        fc.integer({ min: 16, max: 400 }), // batch x heads
        fc.integer({ min: 1, max: 30 }), // queries
        fc.integer({ min: 2, max: 30 }), // keys
        fc.constantFrom(8, 16, 32, 64), // head size
        fc.boolean(), // q kᵀ (transposed b) or probabilities x v
        fc.integer({ min: 1, max: 1 << 30 }),
        (batch, lq, l, dh, logits, seed) => {
          const [m, n, k] = logits ? [lq, l, dh] : [lq, dh, l];
          const native = batch * m * n * k >= BLAS_MIN_MULTIPLY_ADDS &&
            m * n * k >= BLAS_MIN_PRODUCT;
          cases.push({ c: matMulCase([batch], [batch], [m, n, k], false, logits, seed), native });
        },
      ),
      { numRuns: 80 },
    );
    assert(cases.some((x) => x.native) && cases.some((x) => !x.native), "both kinds drawn");
    for (const { c, native } of cases) {
      useNativeBlas("off");
      const expected = matMulOf(c);
      useNativeBlas("auto");
      const before = nativeBlasCalls();
      const actual = matMulOf(c);
      assert((nativeBlasCalls() > before) === native, `${JSON.stringify(c)}: native ${!native}`);
      const diff = maxAbsDiff(actual, expected);
      assert(
        actual.length === expected.length && diff <= 1e-4 * Math.max(maxAbs(expected), 1),
        `${JSON.stringify(c)}: max diff ${diff}`,
      );
    }
    useNativeBlas("off");
  },
});

/** Loss, gradients and scores of a SIGMA whose item GEMMs are large enough for the BLAS. */
async function sigmaRun(blas: string): Promise<ModelRun> {
  await selectBackend("wasm", { blas });
  const numItems = 3000;
  const model = new Sigma({ numItems, hidden: 32, heads: 2, inner: 64, maxLength: 12, seed: 5 });
  const batch = tinyTrainBatch(24, 12, numItems);
  const vars = model.params.list();
  const { value, grads } = tf.variableGrads(() => model.loss(batch, stepSeeds(7, 0)).loss, vars);
  const loss = (await value.data())[0];
  const out: Float32Array[] = [];
  for (const v of vars) out.push(await grads[v.name].data() as Float32Array);
  const scores = tf.tidy(() => model.scores(tinyEvalBatch(24, 12, numItems)));
  const s = await scores.data() as Float32Array;
  tf.dispose([value, scores, ...Object.values(grads)]);
  model.params.dispose();
  return { loss, grads: out, scores: s };
}

Deno.test({
  name: "SIGMA's loss, gradients and scores with the native BLAS equal plain wasm's",
  ignore,
  fn: async () => {
    const plain = await sigmaRun("off");
    const before = nativeBlasCalls();
    const native = await sigmaRun("auto");
    assert(nativeBlasCalls() > before, "the SIGMA step never reached the native BLAS");
    assertParity(plain, native, "wasm + native BLAS");
    useNativeBlas("off");
  },
});

Deno.test({
  name: "tensor count stays flat over 5 SIGMA training steps with the native BLAS",
  ignore,
  fn: async () => {
    await selectBackend("wasm", { blas: "auto" });
    const numItems = 3000;
    const model = new Sigma({ numItems, hidden: 32, heads: 2, inner: 64, maxLength: 6, seed: 5 });
    const before = nativeBlasCalls();
    assertFlatTensorCount(model, numItems, "wasm + native BLAS");
    assert(nativeBlasCalls() > before, "the training steps never reached the native BLAS");
    model.params.dispose();
    useNativeBlas("off");
  },
});

Deno.test({
  name:
    "the wasm GRU kernels with each position's state product on the native BLAS equal plain wasm's",
  ignore,
  fn: async () => {
    // 8 sequences x 4 categories of width 128: each position's [32, 128] x [128, 384] product
    // passes the BLAS threshold, so the kernels loop in JavaScript, the products on the BLAS.
    const [batch, length, k, d] = [8, 6, 4, 128];
    const run = async (blas: "off" | "auto") => {
      await selectBackend("wasm", { blas });
      const p = new ParamStore(3, 0.2);
      createGru(p, "gru", d, 2);
      const items = tf.variable(tf.randomNormal([batch, length, d], 0, 1, "float32", 4));
      // One category (or none, k) per position, as SIGMA's hard interests gate.
      const gateValues = new Float32Array(batch * length * k);
      for (let i = 0; i < batch * length; i++) {
        const j = (i * 7 + 3) % (k + 1);
        if (j < k) gateValues[i * k + j] = 1;
      }
      const gates = tf.variable(tf.tensor3d(gateValues, [batch, length, k]));
      const { value, grads } = tf.variableGrads(
        () =>
          tf.sum(
            tf.square(
              gatedCategoryGru(
                p,
                "gru",
                items as tf.Variable<tf.Rank.R3>,
                gates as tf.Variable<tf.Rank.R3>,
                2,
              ),
            ),
          ) as tf.Scalar,
        [items, gates, ...p.list()],
      );
      const out = [
        await value.data(),
        ...(await Promise.all(Object.values(grads).map((g) => g.data()))),
      ];
      tf.dispose([value, ...Object.values(grads), items, gates]);
      p.dispose();
      return out as Float32Array[];
    };
    const plain = await run("off");
    const before = nativeBlasCalls();
    const native = await run("auto");
    // Two layers, each a product per position forward and backward, at least.
    assert(nativeBlasCalls() - before >= 4 * length, "the GRU's products did not reach the BLAS");
    plain.forEach((a, i) => {
      const scale = Math.max(1, maxAbs(a));
      const diff = maxAbsDiff(a, native[i]);
      assert(diff <= 5e-5 * scale, `output ${i}: off by ${diff} (scale ${scale})`);
    });
    useNativeBlas("off");
  },
});

Deno.test("useNativeBlas() names a library that does not load, and rejects an empty name", () => {
  assertThrows(
    () => useNativeBlas("/nonexistent/libnoblas.so"),
    Error,
    "/nonexistent/libnoblas.so",
  );
  assertThrows(() => useNativeBlas(""), RangeError, "auto");
  assert(!nativeBlasActive());
});

/** Runs `code` (TypeScript) in a new Deno process with the project's import map and the
 * given permissions, and returns its standard output's lines. */
async function runInNewProcess(
  code: string,
  permissions: string[],
  env: Record<string, string | undefined> = {},
): Promise<string[]> {
  const script = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(script, code);
  // This process's environment with `env`'s changes (undefined: removed).
  const childEnv: Record<string, string> = { ...Deno.env.toObject(), NO_COLOR: "1" };
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) delete childEnv[key];
    else childEnv[key] = value;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      new URL("../deno.json", import.meta.url).pathname, // the script is outside the project
      ...permissions,
      script,
    ],
    env: childEnv,
    clearEnv: true,
    stdin: "null",
  }).output();
  await Deno.remove(script);
  const text = new TextDecoder();
  assert(out.success, text.decode(out.stderr));
  return text.decode(out.stdout).trim().split("\n");
}

const BACKENDS_MOD = new URL("../backends/mod.ts", import.meta.url).href;

Deno.test("without --allow-ffi, auto runs plain wasm and says why; a library path is an error", async () => {
  const [reason, error] = await runInNewProcess(
    `import { selectBackend } from "${BACKENDS_MOD}";\n` +
      `console.log((await selectBackend("wasm", { blas: "auto" })).reason);\n` +
      `try { await selectBackend("wasm", { blas: "libopenblas.so.0" }); console.log("loaded"); }\n` +
      `catch (e) { console.log(e.message); }\n`,
    ["--allow-read", "--allow-write", "--allow-env", "--allow-sys"],
  );
  assert(reason.includes("native BLAS not used: --allow-ffi not granted"), reason);
  assert(error.includes('loading "libopenblas.so.0" needs --allow-ffi'), error);
});

Deno.test({
  name: "the native BLAS also works on single-threaded wasm, whose heap is not shared memory",
  ignore,
  fn: async () => {
    const blasModule = new URL("../backends/_blas.ts", import.meta.url).href;
    const lines = await runInNewProcess(
      `import * as tf from "@tensorflow/tfjs-core";\n` +
        `import { selectBackend } from "${BACKENDS_MOD}";\n` +
        `import { nativeBlasCalls, useNativeBlas } from "${blasModule}";\n` +
        `console.log((await selectBackend("wasm", { wasmThreads: 1, blas: "auto" })).reason);\n` +
        `const a = tf.randomNormal([300, 150], 0, 1, "float32", 1);\n` +
        `const b = tf.randomNormal([150, 250], 0, 1, "float32", 2);\n` +
        `const native = tf.matMul(a, b).dataSync();\n` +
        `console.log(nativeBlasCalls());\n` +
        `useNativeBlas("off");\n` +
        `const plain = tf.matMul(a, b).dataSync();\n` +
        `let diff = 0;\n` +
        `for (let i = 0; i < plain.length; i++) diff = Math.max(diff, Math.abs(native[i] - plain[i]));\n` +
        `console.log(diff);\n`,
      ["--allow-read", "--allow-write", "--allow-env", "--allow-sys", "--allow-ffi"],
    );
    const [reason, calls, diff] = lines.slice(-3);
    assert(reason.includes("1 thread(s)") && reason.includes("native BLAS"), reason);
    assert(Number(calls) === 1, `native calls: ${calls}`);
    assert(Number(diff) <= 1e-4, `max diff ${diff}`);
  },
});

/** Whether /proc/cpuinfo lists every AVX-512 extension OpenBLAS's SkylakeX kernels use. */
async function cpuinfoHasAvx512(): Promise<boolean> {
  const out = await new Deno.Command("cat", { args: ["/proc/cpuinfo"], stdout: "piped" }).output();
  const flags = new TextDecoder().decode(out.stdout).match(/^flags\s*:(.*)$/m)?.[1].split(/\s+/) ??
    [];
  return ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].every((f) =>
    flags.includes(f)
  );
}

const linuxX64 = Deno.build.os === "linux" && Deno.build.arch === "x86_64";

Deno.test({
  name: "cpuHasAvx512() (libgcc's CPU table, through the FFI) agrees with /proc/cpuinfo",
  ignore: !linuxX64,
  fn: async () => {
    const found = cpuHasAvx512();
    assert(found !== null, "libgcc_s's __cpu_model was not found");
    assert(found === await cpuinfoHasAvx512(), `cpuHasAvx512() ${found}, /proc/cpuinfo differs`);
  },
});

Deno.test({
  name:
    "OpenBLAS gets SkylakeX kernels where the CPU has AVX-512 and the user set no core type, the user's core type otherwise, and the backend line says which",
  ignore: ignore || !linuxX64,
  fn: async () => {
    const blasModule = new URL("../backends/_blas.ts", import.meta.url).href;
    const code = `import { useNativeBlas } from "${blasModule}";\n` +
      `console.log(useNativeBlas("auto").detail);\n`;
    const permissions = ["--allow-read", "--allow-env", "--allow-ffi"];
    const [chosen] = (await runInNewProcess(code, permissions, { OPENBLAS_CORETYPE: undefined }))
      .slice(-1);
    if (await cpuinfoHasAvx512()) {
      assert(chosen.includes("core SkylakeX (chosen: the CPU has AVX-512)"), chosen);
    } else {
      assert(!chosen.includes("SkylakeX"), chosen);
    }
    const [kept] = (await runInNewProcess(code, permissions, { OPENBLAS_CORETYPE: "Haswell" }))
      .slice(-1);
    assert(kept.includes("core Haswell (OPENBLAS_CORETYPE)"), kept);
  },
});
