import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { Sigma, type SigmaConfig } from "../lib/models/sigma.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { createGru, gatedCategoryGru, gatedCategoryGruReference } from "../lib/nn/gru.ts";
import { itemLoss } from "../lib/nn/item_losses.ts";
import { splitBatch } from "../lib/train/trainer.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import {
  assertFlatTensorCount,
  assertParity,
  maxAbs,
  maxAbsDiff,
  type ModelRun,
} from "./_model_checks.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const BACKENDS = ["cpu", "wasm", "webgpu"] as const;
const TINY: Partial<SigmaConfig> & { numItems: number } = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  layers: 1,
  inner: 32,
  maxLength: 8,
  interests: 3,
  gruLayers: 2,
  seed: 3,
};

Deno.test("gatedCategoryGru() equals the taped reference in values and every gradient", async () => {
  await selectBackend("cpu");
  // Shapes, layers and gate patterns vary; the hand-written BPTT must match tfjs's autodiff
  // of the same ops to float32 rounding (2e-5 relative to the gradient's scale).
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 3 }), // batch
      fc.integer({ min: 1, max: 6 }), // length
      fc.integer({ min: 1, max: 4 }), // interests
      fc.integer({ min: 1, max: 3 }), // layers
      fc.integer({ min: 1, max: 1 << 30 }), // seed: tfjs takes 0 as "no seed"
      (batch, length, k, layers, seed) => {
        const d = 4;
        const p = new ParamStore(seed, 0.4);
        createGru(p, "gru", d, layers);
        const items = tf.variable(tf.randomNormal([batch, length, d], 0, 1, "float32", seed));
        const gates = tf.variable(tf.tidy(() => {
          const choice = tf.randomUniform([batch, length], 0, k + 1, "int32", seed + 1);
          return tf.slice(tf.cast(tf.oneHot(choice, k + 1), "float32"), [0, 0, 0], [-1, -1, k]);
        })); // some rows all zero: items of no category, like padding
        const weights = tf.randomNormal([batch, length, k, d], 0, 1, "float32", seed + 2);
        const vars = [...p.list(), items, gates];
        const run = (f: typeof gatedCategoryGru) => {
          const { value, grads } = tf.variableGrads(
            () =>
              tf.sum(
                tf.mul(f(p, "gru", items as tf.Tensor3D, gates as tf.Tensor3D, layers), weights),
              ) as tf.Scalar,
            vars,
          );
          const out = [value.dataSync()[0], ...vars.map((v) => grads[v.name].dataSync())];
          tf.dispose([value, ...Object.values(grads)]);
          return out as [number, ...Float32Array[]];
        };
        const [fastValue, ...fastGrads] = run(gatedCategoryGru);
        const [refValue, ...refGrads] = run(gatedCategoryGruReference);
        assert(Math.abs(fastValue - refValue) <= 1e-5 * Math.max(1, Math.abs(refValue)));
        fastGrads.forEach((g, i) => {
          const diff = maxAbsDiff(g, refGrads[i]);
          assert(diff <= 2e-5 * Math.max(1, maxAbs(refGrads[i])), `gradient ${i}: ${diff}`);
        });
        tf.dispose([items, gates, weights]);
        p.dispose();
      },
    ),
    { numRuns: 40 },
  );
});

Deno.test("itemLoss() full softmax equals the taped max-over-interests cross-entropy", async () => {
  await selectBackend("cpu");
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 9 }), // positions
      fc.integer({ min: 1, max: 4 }), // interests
      fc.integer({ min: 2, max: 13 }), // items
      fc.integer({ min: 1, max: 64 }), // logit budget: 1 forces one position per chunk
      fc.integer({ min: 1, max: 1 << 30 }), // tfjs takes seed 0 as "no seed"
      (positions, k, n, budget, seed) => {
        const d = 3;
        const q = tf.variable(tf.randomNormal([positions, k, d], 0, 1, "float32", seed));
        const table = tf.variable(tf.randomNormal([n + 1, d], 0, 1, "float32", seed + 1));
        const targets = Int32Array.from({ length: positions }, (_, i) => 1 + ((i * 7 + seed) % n));
        const w = tf.randomUniform([positions], 0.5, 2, "float32", seed + 2);
        const fused = tf.variableGrads(() =>
          tf.sum(tf.mul(
            itemLoss(q as tf.Tensor3D, table as tf.Tensor2D, targets, {
              kind: "softmax",
              negatives: 1,
              temperature: 1,
              seed: 0,
              logitBudget: budget,
            }),
            w,
          )) as tf.Scalar, [q, table]);
        const reference = tf.variableGrads(() => {
          const real = tf.slice(table, [1, 0], [-1, -1]);
          const all = tf.matMul(tf.reshape(q, [positions * k, d]), real, false, true);
          const logits = tf.max(tf.reshape(all, [positions, k, n]), 1); // [P, N]
          const onehot = tf.oneHot(tf.tensor1d(targets.map((t) => t - 1), "int32"), n);
          const target = tf.sum(tf.mul(logits, tf.cast(onehot, "float32")), 1);
          return tf.sum(tf.mul(tf.sub(tf.logSumExp(logits, 1), target), w)) as tf.Scalar;
        }, [q, table]);
        const a = fused.value.dataSync()[0];
        const b = reference.value.dataSync()[0];
        assert(Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b)), `loss ${a} vs ${b}`);
        for (const v of [q, table]) {
          const diff = maxAbsDiff(
            fused.grads[v.name].dataSync(),
            reference.grads[v.name].dataSync(),
          );
          assert(diff <= 1e-5, `gradient of ${v.shape}: ${diff}`);
        }
        tf.dispose([q, table, w, fused.value, reference.value]);
        tf.dispose([...Object.values(fused.grads), ...Object.values(reference.grads)]);
      },
    ),
    { numRuns: 150 },
  );
});

interface Run extends ModelRun {
  parts: Record<string, number>;
}

/** Loss, its parts, gradients of every parameter and scores of tiny SIGMA on `backend`. */
async function sigmaRun(
  backend: (typeof BACKENDS)[number],
  extra = {},
  step?: number,
): Promise<Run> {
  await selectBackend(backend);
  const model = new Sigma({ ...TINY, ...extra });
  const batch = tinyTrainBatch(5, 6, TINY.numItems);
  const vars = model.params.list();
  let partTensors: Record<string, tf.Tensor> = {};
  const { value, grads } = tf.variableGrads(() => {
    const out = model.loss(batch, stepSeeds(7, 0), step);
    partTensors = Object.fromEntries(
      Object.entries(out.parts).map(([k, v]) => [k, tf.keep(v)]),
    );
    return out.loss;
  }, vars);
  const loss = (await value.data())[0];
  const parts: Record<string, number> = {};
  for (const [k, v] of Object.entries(partTensors)) parts[k] = (await v.data())[0];
  const out: Float32Array[] = [];
  for (const v of vars) out.push(await grads[v.name].data() as Float32Array);
  const scores = tf.tidy(() => model.scores(tinyEvalBatch(5, 6, TINY.numItems)));
  const s = await scores.data() as Float32Array;
  tf.dispose([value, scores, ...Object.values(grads), ...Object.values(partTensors)]);
  model.params.dispose();
  return { loss, parts, grads: out, scores: s };
}

// Tolerances as for SASRec (tests/backends_test.ts): float32 kernels sum in different
// orders per backend; 1e-4 relative on the loss and 1e-3 of each gradient's scale still
// catch a wrong kernel. The Gumbel and epsilon draws come from tfjs's host-side seeded
// generators, so every backend sees the same noise.
Deno.test("SIGMA loss, its parts, gradients and scores agree on cpu, wasm and webgpu", async () => {
  for (const ranking of ["sgm", "mie"] as const) {
    const ref = await sigmaRun("cpu", { ranking });
    assert(Number.isFinite(ref.loss), `cpu loss ${ref.loss}`);
    for (const backend of ["wasm", "webgpu"] as const) {
      const run = await sigmaRun(backend, { ranking });
      assert(
        Math.abs(run.loss - ref.loss) <= 1e-4 * Math.abs(ref.loss),
        `${backend} loss ${run.loss} vs cpu ${ref.loss}`,
      );
      for (const [k, v] of Object.entries(ref.parts)) {
        assert(
          Math.abs(run.parts[k] - v) <= 1e-4 * Math.max(Math.abs(v), 1e-2),
          `${backend} ${k}: ${run.parts[k]} vs ${v}`,
        );
      }
      assertParity(ref, run, backend);
    }
  }
});

Deno.test("tensor count stays flat over 5 SIGMA training steps on every backend", async () => {
  for (const backend of BACKENDS) {
    await selectBackend(backend);
    const start = tf.memory().numTensors;
    const model = new Sigma(TINY);
    assertFlatTensorCount(model, TINY.numItems, backend);
    const score = () => tf.tidy(() => model.scores(tinyEvalBatch(4, 6, TINY.numItems))).dispose();
    score(); // the first call caches the item table's transpose (ParamStore.transposed)
    const before = tf.memory().numTensors;
    score();
    score();
    assertEquals(tf.memory().numTensors, before, `${backend}: scores() leaked`);
    model.params.dispose();
    assertEquals(tf.memory().numTensors, start, `${backend}: dispose() left tensors behind`);
  }
});

/** Losses of 15 Adam steps on one tiny batch. */
async function lossCurve(extra: Partial<SigmaConfig>, backend = "cpu"): Promise<number[]> {
  await selectBackend(backend as "cpu");
  const model = new Sigma({ ...TINY, dropout: 0, ...extra });
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
  optimizer.dispose();
  model.params.dispose();
  return losses;
}

Deno.test("SIGMA training moves the loss down on every backend", async () => {
  for (const backend of BACKENDS) {
    const losses = await lossCurve({}, backend);
    assert(losses[14] < 0.7 * losses[0], `${backend}: loss ${losses[0]} -> ${losses[14]}`);
  }
});

Deno.test("every SIGMA variant trains: standard prior, no L_orth, MIE ranking, bce, sampled", async () => {
  const variants: Partial<SigmaConfig>[] = [
    { prior: "standard", lambdaUni: 1 },
    { prior: "standard", lambdaUni: 1e-4 },
    { orthogonality: false },
    { ranking: "mie" },
    { interests: 1 },
    { interests: 8 },
    { loss: "bce" },
    { loss: "sampled", negatives: 5 },
  ];
  for (const v of variants) {
    const losses = await lossCurve(v);
    assert(losses.every(Number.isFinite), `${JSON.stringify(v)}: ${losses}`);
    assert(losses[14] < losses[0], `${JSON.stringify(v)}: loss ${losses[0]} -> ${losses[14]}`);
  }
});

Deno.test("SIGMA variants change what they should: the KL, orthogonality and KL_MIE weight terms", async () => {
  const base = await sigmaRun("cpu");
  const uni = await sigmaRun("cpu", { prior: "standard" });
  const noOrth = await sigmaRun("cpu", { orthogonality: false });
  // The standard-prior KL is the closed form (>= 0); the mixture one is an estimate.
  assert(uni.parts.kl >= 0, `standard-prior KL ${uni.parts.kl}`);
  assert(Math.abs(uni.parts.kl - base.parts.kl) > 1e-6, "the prior must change the KL");
  // Without L_orth the loss drops exactly beta2 * orth.
  const expected = base.loss - 0.01 * base.parts.orth;
  assert(Math.abs(noOrth.loss - expected) <= 1e-5 * Math.abs(expected), `${noOrth.loss}`);
  // gamma scales KL_MIE alone: the loss drops beta1 (1 - gamma) KL_MIE, the parts stay.
  const halfKl = await sigmaRun("cpu", { mieKlWeight: 0.25 });
  const lighter = base.loss - 0.01 * 0.75 * base.parts.kl_mie;
  assert(
    Math.abs(halfKl.loss - lighter) <= 1e-5 * Math.abs(lighter),
    `${halfKl.loss} vs ${lighter}`,
  );
  assertEquals(halfKl.parts, base.parts);
  // Warm-up: gamma rises linearly with the step, from 0 to mieKlWeight.
  for (const [step, share] of [[0, 0], [25, 0.25], [100, 1], [500, 1]]) {
    const warm = await sigmaRun("cpu", { mieKlWarmup: 100 }, step);
    const want = base.loss - 0.01 * (1 - share) * base.parts.kl_mie;
    assert(
      Math.abs(warm.loss - want) <= 1e-5 * Math.abs(want),
      `step ${step}: ${warm.loss} vs ${want}`,
    );
  }
});

Deno.test("priorGradient false keeps the loss and stops only SGM's KL from training the prior", async () => {
  const base = await sigmaRun("cpu");
  const detached = await sigmaRun("cpu", { priorGradient: false });
  const noKl = await sigmaRun("cpu", { lambda: 0 });
  assertEquals(detached.loss, base.loss); // the forward pass is unchanged
  // Parameters only the prior depends on (omega's MLP) now get exactly the gradient of a
  // loss without SGM's KL; the posterior of z still gets the KL's gradient.
  const probe = new Sigma(TINY);
  const names = probe.params.records().map((r) => r.name);
  probe.params.dispose();
  let checked = 0;
  names.forEach((name, i) => {
    if (name.startsWith("omega.")) {
      assert(maxAbsDiff(detached.grads[i], noKl.grads[i]) <= 1e-7, `${name}: KL gradient leaked`);
      assert(
        maxAbsDiff(base.grads[i], noKl.grads[i]) > 1e-7,
        `${name}: the KL should reach it by default`,
      );
      checked++;
    }
    if (name.startsWith("enc_sigma.")) {
      assert(
        maxAbsDiff(detached.grads[i], base.grads[i]) <= 1e-6,
        `${name}: posterior gradient changed`,
      );
    }
  });
  assertEquals(checked, 4);
});

Deno.test("interestNorm standardises every interest mean over its d entries", async () => {
  await selectBackend("cpu");
  const batch = tinyTrainBatch(4, 6, TINY.numItems);
  // Same seed, same parameters: the plain model gives the raw means of Eq. 5.
  const means = async (interestNorm: boolean) => {
    const model = new Sigma({ ...TINY, interestNorm });
    const { mean, intensity, assignment } = model.interestsOf(batch.inputs, 4, 6);
    const values = await mean.data() as Float32Array; // [B, L, k, d]
    tf.dispose([mean, intensity, assignment]);
    model.params.dispose();
    return values;
  };
  const [raw, normed] = [await means(false), await means(true)];
  const d = TINY.hidden!;
  let rows = 0;
  for (let r = 0; r < raw.length / d; r++) {
    const v = raw.subarray(r * d, (r + 1) * d);
    const mu = v.reduce((a, b) => a + b, 0) / d;
    const variance = v.reduce((a, b) => a + (b - mu) ** 2, 0) / d;
    const want = Array.from(v, (x) => (x - mu) / Math.sqrt(variance + 1e-6));
    const diff = maxAbsDiff(normed.subarray(r * d, (r + 1) * d), want);
    assert(diff <= 1e-4, `row ${r}: standardised mean differs by ${diff}`);
    rows++;
  }
  assert(rows > 0, "no interest mean was checked");
});

Deno.test("logVarInit starts MIE-VAE's KL at the closed form of omega^2 = exp(logVarInit)", async () => {
  // At initialisation the interest means are tiny (item embeddings ~ N(0, 0.02)) and the
  // omega MLP's weights add little, so each of the k x d interest dimensions contributes
  // 0.5 (e^v - 1 - v): a check that the option reaches the log-variance output.
  const k = TINY.interests!, d = TINY.hidden!;
  for (const v of [0, -3, -6]) {
    const { parts } = await sigmaRun("cpu", { logVarInit: v, dropout: 0 });
    const expected = k * d * 0.5 * (Math.exp(v) - 1 - v);
    assert(
      Math.abs(parts.kl_mie - expected) <= 0.02 * expected + 0.05,
      `logVarInit ${v}: KL_MIE ${parts.kl_mie}, expected about ${expected}`,
    );
  }
});

Deno.test("Sigma() rejects bad config fields, naming the field and value", () => {
  const bad: [Partial<SigmaConfig>, string][] = [
    [{ interests: 0 }, "interests"],
    [{ hidden: 10, heads: 4 }, "divisible"],
    [{ prior: "gaussian" as "mixture" }, "prior"],
    [{ loss: "hinge" as "bce" }, "loss"],
    [{ ranking: "both" as "sgm" }, "ranking"],
    [{ lambda: -1 }, "lambda"],
    [{ categoryTemperature: 0 }, "categoryTemperature"],
    [{ dropout: 1 }, "dropout"],
    [{ negatives: 2.5 }, "negatives"],
    [{ logVarInit: Number.NaN }, "logVarInit"],
    [{ mieKlWeight: -0.5 }, "mieKlWeight"],
    [{ mieKlWarmup: 2.5 }, "mieKlWarmup"],
    [{ priorGradient: "no" as unknown as boolean }, "priorGradient"],
    [{ interestNorm: 1 as unknown as boolean }, "interestNorm"],
    [{ interestLogVarBound: -1 }, "interestLogVarBound must be a finite number >= 0, got -1"],
    [{ interestLogVarBound: Infinity }, "interestLogVarBound"],
  ];
  for (const [config, word] of bad) {
    assertThrows(() => new Sigma({ ...TINY, ...config }), RangeError, word);
  }
});

Deno.test("splitBatch() pieces respect the position budget and give the whole batch's gradient", async () => {
  await selectBackend("cpu");
  const model = new SasRec({
    numItems: 30,
    hidden: 16,
    heads: 2,
    layers: 1,
    inner: 32,
    maxLength: 8,
    dropout: 0,
  });
  const batch = tinyTrainBatch(6, 8, 30);
  let total = 0;
  for (const t of batch.targets) if (t !== 0) total += 1;
  const vars = model.params.list();
  const whole = tf.variableGrads(() => model.loss(batch, stepSeeds(1, 0)).loss, vars);
  for (const budget of [1, 5, 9, 100]) {
    const pieces = splitBatch(batch, budget);
    let covered = 0;
    for (const piece of pieces) {
      let n = 0;
      for (const t of piece.targets) if (t !== 0) n++;
      assert(n <= budget || piece.batch === 1, `piece of ${n} positions over budget ${budget}`);
      covered += n;
    }
    assertEquals(covered, total);
    assertEquals(pieces.reduce((s, p) => s + p.batch, 0), batch.batch);
    const summed: tf.Tensor[] = vars.map((v) => tf.zerosLike(v));
    for (const piece of pieces) {
      let n = 0;
      for (const t of piece.targets) if (t !== 0) n++;
      const { value, grads } = tf.variableGrads(
        () => tf.mul(model.loss(piece, stepSeeds(1, 0)).loss, n / total) as tf.Scalar,
        vars,
      );
      vars.forEach((v, i) => {
        const next = tf.add(summed[i], grads[v.name]);
        summed[i].dispose();
        summed[i] = next;
      });
      tf.dispose([value, ...Object.values(grads)]);
    }
    vars.forEach((v, i) => {
      const diff = maxAbsDiff(summed[i].dataSync(), whole.grads[v.name].dataSync());
      assert(diff <= 1e-5, `budget ${budget}, ${v.shape}: ${diff}`);
    });
    tf.dispose(summed);
  }
  tf.dispose([whole.value, ...Object.values(whole.grads)]);
  model.params.dispose();
});

Deno.test("a SIGMA config saved with the former name categories for k still builds the same model", async () => {
  await selectBackend("cpu");
  const { interests: _, ...rest } = TINY;
  const old = { ...rest, categories: 2 } as unknown as SigmaConfig;
  const model = new Sigma(old);
  assertEquals(model.config.interests, 2);
  assertEquals("categories" in model.config, false);
  model.params.dispose();
});

Deno.test("SIGMA's loss is its parts with their weights: recon + lambda KL + beta1 (recon_MIE + gamma KL_MIE) + beta2 L_orth", async () => {
  await selectBackend("cpu");
  // Weights and an initialisation that make every term large: a wrong sign or a dropped
  // term moves the total far beyond float error.
  const weights = { lambda: 1, lambdaUni: 0.7, beta1: 0.5, mieKlWeight: 0.5, beta2: 5 };
  for (const prior of ["mixture", "standard"] as const) {
    const model = new Sigma({ ...TINY, ...weights, prior, logVarInit: -3, dropout: 0 });
    const batch = tinyTrainBatch(4, 6, TINY.numItems);
    const [total, parts] = tf.tidy(() => {
      const { loss, parts } = model.loss(batch, stepSeeds(9, 0));
      return [
        loss.dataSync()[0],
        Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, v.dataSync()[0]])),
      ] as const;
    });
    const klWeight = prior === "mixture" ? weights.lambda : weights.lambdaUni;
    const terms = [
      parts.recon,
      klWeight * parts.kl,
      weights.beta1 * parts.recon_mie,
      weights.beta1 * weights.mieKlWeight * parts.kl_mie,
      weights.beta2 * parts.orth,
    ];
    const expected = terms.reduce((a, b) => a + b, 0);
    const tolerance = 1e-5 * Math.abs(expected);
    assert(Math.abs(total - expected) <= tolerance, `${prior}: ${total} vs parts ${expected}`);
    // Each term is far above the tolerance, so removing or flipping any one is caught.
    for (const [i, t] of terms.entries()) {
      assert(Math.abs(t) > 100 * tolerance, `${prior}: term ${i} (${t}) too small to test`);
    }
    model.params.dispose();
  }
});

releaseWebGpuAfterTests();
