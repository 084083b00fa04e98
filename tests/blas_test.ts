import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import {
  BLAS_MIN_MULTIPLY_ADDS,
  nativeBlasActive,
  nativeBlasCalls,
  useNativeBlas,
} from "../backends/_blas.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { assert, assertThrows } from "./_assert.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import { assertParity, maxAbs, maxAbsDiff, type ModelRun } from "./_model_checks.ts";

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
    const cases: { a: number[]; b: number[]; ta: boolean; tb: boolean; seed: number }[] = [];
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
          cases.push({
            a: [...leadA, ...(ta ? [k, m] : [m, k])],
            b: [...leadB, ...(tb ? [n, k] : [k, n])],
            ta,
            tb,
            seed,
          });
        },
      ),
      { numRuns: 150 },
    );
    const product = async (c: (typeof cases)[number]) => {
      const out = tf.tidy(() =>
        tf.matMul(
          tf.randomNormal(c.a, 0, 1, "float32", c.seed),
          tf.randomNormal(c.b, 0, 1, "float32", c.seed + 1),
          c.ta,
          c.tb,
        )
      );
      const values = await out.data() as Float32Array;
      out.dispose();
      return values;
    };
    for (const c of cases) {
      useNativeBlas("off");
      const expected = await product(c);
      useNativeBlas("auto");
      const before = nativeBlasCalls();
      const actual = await product(c);
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

Deno.test("useNativeBlas() names a library that does not load, and rejects an empty name", () => {
  assertThrows(
    () => useNativeBlas("/nonexistent/libnoblas.so"),
    Error,
    "/nonexistent/libnoblas.so",
  );
  assertThrows(() => useNativeBlas(""), RangeError, "auto");
  assert(!nativeBlasActive());
});

Deno.test("without --allow-ffi, auto runs plain wasm and says why; a library path is an error", async () => {
  const mod = new URL("../backends/mod.ts", import.meta.url).href;
  const script = await Deno.makeTempFile({ suffix: ".ts" });
  await Deno.writeTextFile(
    script,
    `import { selectBackend } from "${mod}";\n` +
      `console.log((await selectBackend("wasm", { blas: "auto" })).reason);\n` +
      `try { await selectBackend("wasm", { blas: "libopenblas.so.0" }); console.log("loaded"); }\n` +
      `catch (e) { console.log(e.message); }\n`,
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--config",
      new URL("../deno.json", import.meta.url).pathname, // the script is outside the project
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-sys",
      script,
    ],
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  await Deno.remove(script);
  const text = new TextDecoder();
  assert(out.success, text.decode(out.stderr));
  const [reason, error] = text.decode(out.stdout).trim().split("\n");
  assert(reason.includes("native BLAS not used: --allow-ffi not granted"), reason);
  assert(error.includes('loading "libopenblas.so.0" needs --allow-ffi'), error);
});
