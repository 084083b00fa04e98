/**
 * The diffusion maths against closed forms and sampled moments (spec `DIFFUREC.md` §7,
 * tests 1-6, 8, 9, 14).
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import {
  betaSchedule,
  diffusionSchedule,
  forwardSample,
  mixSeed,
  networkSteps,
  respacedSchedule,
  reverseChain,
  reverseStep,
  SCHEDULE_NAMES,
  stepEmbedding,
  trainingNoise,
  uncertaintyWeights,
} from "../lib/diffusion/mod.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";

await selectBackend("cpu");

const close = (a: number, b: number, relative: number, what: string) =>
  assert(Math.abs(a - b) <= relative * Math.abs(b), `${what}: ${a}, expected ${b}`);

Deno.test("trunc_lin at T = 32 and its fallback at T = 16 give the spec's values", () => {
  const betas = betaSchedule("trunc_lin", 32);
  assert(Math.abs(betas[0] - 0.013125) <= 1e-12 && Math.abs(betas[31] - 0.635) <= 1e-12);
  const s = diffusionSchedule(betas);
  close(s.alphaBars[0], 0.986875, 1e-4, "alphaBar_0");
  close(s.alphaBars[7], 0.4935, 1e-3, "alphaBar_7");
  close(s.alphaBars[15], 0.05198, 1e-3, "alphaBar_15");
  close(s.alphaBars[23], 8.05e-4, 1e-3, "alphaBar_23");
  close(s.alphaBars[31], 9.9013e-7, 1e-4, "alphaBar_31");
  const sixteen = betaSchedule("trunc_lin", 16); // 0.02 * 62.5 + 0.01 > 1: the fallback
  assert(Math.abs(sixteen[15] - 0.0725) <= 1e-12, `beta_end ${sixteen[15]}`);
  assert(Math.abs(diffusionSchedule(sixteen).alphaBars[15] - 0.4825) <= 1e-3);
});

Deno.test("every schedule: betas in (0, 1], alphaBar strictly decreasing, for T from 11 to 200", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(...SCHEDULE_NAMES),
      fc.integer({ min: 11, max: 200 }),
      (name, T) => {
        // Their betas end at 0.02 * 1000 / T > 1 (pw_lin at T = 11 has a one-point second
        // part, which numpy's linspace puts at its start): refused, naming the schedule.
        if ((name === "linear" || (name === "pw_lin" && T > 11)) && T < 20) {
          assertThrows(() => betaSchedule(name, T), RangeError, `${name} with ${T} steps`);
          return;
        }
        const betas = betaSchedule(name, T);
        assertEquals(betas.length, T);
        const cap = ["cosine", "sqrt", "trunc_cos"].includes(name) ? 0.999 : 1;
        betas.forEach((b, t) => assert(b > 0 && b <= cap, `${name} T=${T} beta_${t} = ${b}`));
        const s = diffusionSchedule(betas);
        for (let t = 1; t < T; t++) assert(s.alphaBars[t] < s.alphaBars[t - 1], `${name} ${t}`);
        if (name === "trunc_lin" || name === "linear") {
          for (let t = 1; t < T; t++) assert(betas[t] > betas[t - 1], `${name} not increasing`);
        }
      },
    ),
    { numRuns: 300 },
  );
  assertThrows(() => betaSchedule("pw_lin", 10), RangeError, "more than 10");
  assertThrows(() => betaSchedule("nope" as "linear", 8), RangeError, "trunc_lin");
});

Deno.test("the posterior: c1_0 = 1, c2_0 = 0, and for t >= 1 the Gaussian product of the two kernels", () => {
  for (const name of SCHEDULE_NAMES) {
    const s = diffusionSchedule(betaSchedule(name, 32));
    assertEquals([s.posteriorX0[0], s.posteriorXt[0], s.posteriorVariance[0]], [1, 0, 0]);
    for (let t = 1; t < 32; t++) {
      // q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}):
      // precision 1/var = a_t / beta_t + 1 / (1 - abar_{t-1}),
      // mean = var (sqrt(a_t) / beta_t x_t + sqrt(abar_{t-1}) / (1 - abar_{t-1}) x_0).
      const precision = s.alphas[t] / s.betas[t] + 1 / (1 - s.alphaBarsPrev[t]);
      const variance = 1 / precision;
      close(s.posteriorVariance[t], variance, 1e-9, `${name} variance ${t}`);
      close(
        s.posteriorXt[t],
        variance * Math.sqrt(s.alphas[t]) / s.betas[t],
        1e-9,
        `${name} c2 ${t}`,
      );
      close(
        s.posteriorX0[t],
        variance * Math.sqrt(s.alphaBarsPrev[t]) / (1 - s.alphaBarsPrev[t]),
        1e-9,
        `${name} c1 ${t}`,
      );
    }
    const expected = [s.posteriorVariance[1], ...s.betas.slice(1)].map(Math.log);
    assertEquals(Array.from(s.reverseLogVariance), expected);
  }
});

/** Per-dimension mean and variance over the rows of `[n, d]`. */
function moments(x: tf.Tensor2D): { mean: Float32Array; variance: Float32Array } {
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, 0);
    return { mean: mean.dataSync() as Float32Array, variance: variance.dataSync() as Float32Array };
  });
}

Deno.test("forward samples have the closed-form marginal, which equals t + 1 one-step kernels", () => {
  const s = diffusionSchedule(betaSchedule("trunc_lin", 32));
  const n = 20_000;
  const x0 = [1.5, -0.5, 0, 3];
  const d = x0.length;
  for (const t of [0, 7, 31]) {
    const clean = tf.tile(tf.tensor2d([x0]), [n, 1]) as tf.Tensor2D;
    const noise = tf.randomNormal([n, d], 0, 1, "float32", 100 + t) as tf.Tensor2D;
    const direct = forwardSample(clean, new Int32Array(n).fill(t), noise, s);
    // The same marginal by applying x <- sqrt(a_k) x + sqrt(beta_k) e for k = 0..t.
    let stepped = clean.clone();
    for (let k = 0; k <= t; k++) {
      const next = tf.tidy(() =>
        tf.add(
          tf.mul(stepped, Math.sqrt(s.alphas[k])),
          // Seeds from 1: tfjs draws seed 0 from Math.random, about 2% of runs failed (8 checks at 3 SE).
          tf.mul(tf.randomNormal([n, d], 0, 1, "float32", 1000 * t + k + 1), Math.sqrt(s.betas[k])),
        )
      ) as tf.Tensor2D;
      stepped.dispose();
      stepped = next;
    }
    const mean = x0.map((v) => Math.sqrt(s.alphaBars[t]) * v);
    const variance = 1 - s.alphaBars[t];
    for (const [name, sample] of [["direct", direct], ["stepped", stepped]] as const) {
      const m = moments(sample);
      for (let i = 0; i < d; i++) {
        // 3 standard errors of a mean and of a variance (normal: sd of s² is var sqrt(2/n)).
        const seMean = Math.sqrt(variance / n);
        assert(Math.abs(m.mean[i] - mean[i]) <= 3 * seMean + 1e-6, `${name} t=${t} mean ${i}`);
        const seVar = variance * Math.sqrt(2 / n);
        assert(Math.abs(m.variance[i] - variance) <= 3 * seVar + 1e-6, `${name} t=${t} var ${i}`);
      }
    }
    tf.dispose([clean, noise, direct, stepped]);
  }
});

Deno.test("a reverse step at t = 0 returns the prediction exactly, whatever the noise", () => {
  const s = diffusionSchedule(betaSchedule("trunc_lin", 32));
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }), /* tfjs takes 0 as "no seed" */
      (seed) => {
        tf.tidy(() => {
          const x0 = tf.randomNormal([3, 5], 0, 2, "float32", seed) as tf.Tensor2D;
          const xt = tf.randomNormal([3, 5], 0, 1, "float32", seed + 1) as tf.Tensor2D;
          const noise = tf.randomNormal([3, 5], 0, 1, "float32", seed + 2) as tf.Tensor2D;
          assertEquals(reverseStep(x0, xt, 0, noise, s).dataSync(), x0.dataSync());
        });
      },
    ),
    { numRuns: 100 },
  );
});

/** Standard normal noise of `shape` for step t, from `seed + t`. */
const seededNoise = (shape: [number, number], seed: number) => (t: number) =>
  tf.randomNormal(shape, 0, 1, "float32", seed + t) as tf.Tensor2D;

Deno.test("with an oracle x0 the chain ends at x0, each step at the posterior mean plus its noise", () => {
  for (const steps of [32, 8, 1]) {
    const s = respacedSchedule(diffusionSchedule(betaSchedule("trunc_lin", 32)), steps);
    const target = tf.tensor2d([[0.3, -1.2, 2.0], [1, 1, 1]]);
    const x0 = target.dataSync();
    const seen: number[] = [];
    let previous: { x: Float32Array; z: Float32Array; t: number } | null = null;
    const noises = new Map<number, Float32Array>();
    const final = reverseChain(
      (x, t) => {
        seen.push(t);
        const now = x.dataSync() as Float32Array;
        if (previous) {
          // x_t = c1 x0 + c2 x_{t+1} + sigma_{t+1} z_{t+1}, where the chain came from.
          const u = previous.t;
          const sigma = Math.exp(0.5 * s.reverseLogVariance[u]);
          now.forEach((v, i) => {
            const mean = s.posteriorX0[u] * x0[i] + s.posteriorXt[u] * previous!.x[i];
            assert(Math.abs(v - (mean + sigma * previous!.z[i])) <= 1e-5, `step ${u}`);
          });
        }
        previous = { x: now.slice(), z: new Float32Array(0), t };
        return target.clone();
      },
      tf.randomNormal([2, 3], 0, 1, "float32", 7) as tf.Tensor2D,
      s,
      (t) => {
        const z = tf.randomNormal([2, 3], 0, 1, "float32", 11 + t) as tf.Tensor2D;
        noises.set(t, z.dataSync() as Float32Array);
        previous!.z = noises.get(t)!;
        return z;
      },
    );
    assertEquals(final.dataSync(), target.dataSync());
    assertEquals(seen, Array.from({ length: steps }, (_, i) => steps - 1 - i));
    assertEquals([...noises.keys()], seen.filter((t) => t > 0)); // no noise drawn at t = 0
    tf.dispose([target, final]);
  }
});

Deno.test("the chain is deterministic given x_T and the noise seed, and frees its tensors", () => {
  const s = diffusionSchedule(betaSchedule("trunc_lin", 32));
  const w = tf.tensor2d([[0.5, 0.1], [-0.2, 0.9]]);
  const predict = (x: tf.Tensor2D) => tf.tanh(tf.matMul(x, w)) as tf.Tensor2D;
  const xT = tf.randomNormal([4, 2], 0, 1, "float32", 3) as tf.Tensor2D;
  const before = tf.memory().numTensors;
  const a = reverseChain(predict, xT, s, seededNoise([4, 2], 5));
  assertEquals(tf.memory().numTensors, before + 1); // the result only
  const b = reverseChain(predict, xT, s, seededNoise([4, 2], 5));
  const c = reverseChain(predict, xT, s, seededNoise([4, 2], 6));
  assertEquals(a.dataSync(), b.dataSync());
  assert(a.dataSync().some((v, i) => v !== c.dataSync()[i]), "another noise seed, same chain");
  tf.dispose([w, xT, a, b, c]);
});

Deno.test("respacing keeps each kept step's marginal and the first and last steps", () => {
  const base = diffusionSchedule(betaSchedule("trunc_lin", 32));
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 32 }), (count) => {
      const s = respacedSchedule(base, count);
      assertEquals(s.steps, count);
      assertEquals(s.originalSteps, 32);
      if (count > 1) assertEquals(s.timesteps[0], 0);
      assertEquals(s.timesteps[count - 1], 31);
      s.timesteps.forEach((t, i) => {
        if (i > 0) assert(t > s.timesteps[i - 1], "timesteps not increasing");
        close(s.alphaBars[i], base.alphaBars[t], 1e-9, `alphaBar of kept step ${t}`);
      });
    }),
    { numRuns: 32 },
  );
  assertEquals(Array.from(respacedSchedule(base, 8).timesteps), [0, 4, 9, 13, 18, 22, 27, 31]);
  assertThrows(() => respacedSchedule(base, 0), RangeError, "from 1 to 32");
});

Deno.test("step embedding: cosines then sines of t * 1000 / T", () => {
  const s = diffusionSchedule(betaSchedule("trunc_lin", 32));
  const zero = stepEmbedding([0], 6).dataSync();
  assertEquals(Array.from(zero), [1, 1, 1, 0, 0, 0]);
  const steps = networkSteps([1], s, true);
  assertEquals(steps[0], 31.25);
  const d = 8;
  const e = stepEmbedding(steps, d).dataSync();
  for (let k = 0; k < d / 2; k++) {
    const angle = 31.25 * Math.exp(-Math.log(10000) * k / (d / 2));
    assert(
      Math.abs(e[k] - Math.cos(angle)) <= 1e-6 && Math.abs(e[d / 2 + k] - Math.sin(angle)) <= 1e-6,
    );
  }
  assertEquals(stepEmbedding([2], 5).dataSync()[4], 0); // odd width: a zero appended
  assertEquals(networkSteps([3], s, false)[0], 3);
});

Deno.test("uncertainty weights: mean and sd lambda over 1e6 draws, fresh per seed, padding-independent; fixed is lambda", () => {
  const seeds = (base: number) => Array.from({ length: 1000 }, (_, r) => mixSeed(base, r));
  for (const lambda of [0.001, 0.5]) {
    const a = uncertaintyWeights(seeds(1), 10, 100, lambda, "sampled");
    const { mean, variance } = tf.moments(a);
    close(mean.dataSync()[0], lambda, 0.01, "mean");
    close(Math.sqrt(variance.dataSync()[0]), lambda, 0.01, "sd");
    const b = uncertaintyWeights(seeds(2), 10, 100, lambda, "sampled");
    assert(a.dataSync()[0] !== b.dataSync()[0], "the same draws for another seed");
    // More padding on the left leaves a row's newest positions' draws as they were.
    const padded = uncertaintyWeights(seeds(1), 13, 100, lambda, "sampled");
    const tail = tf.slice(padded, [0, 3, 0], [-1, -1, -1]);
    assertEquals(tail.dataSync(), a.dataSync());
    tf.dispose([a, b, mean, variance, padded, tail]);
  }
  const fixed = uncertaintyWeights([1, 2], 3, 4, 0.25, "fixed");
  assertEquals(fixed.shape, [2, 3, 4]);
  assert(fixed.dataSync().every((v) => v === 0.25));
  assert(uncertaintyWeights([1], 2, 2, 0, "sampled").dataSync().every((v) => v === 0));
  fixed.dispose();
});

Deno.test("training noise: variance 1 (none), 1.01 independent (compat), 1.01 with 0.01 covariance (shared)", () => {
  // 40,000 rows: the variance of the row mean is known to sqrt(2 / n) = 0.7%.
  const n = 40_000;
  const d = 128;
  for (const mode of ["none", "compat", "shared"] as const) {
    const noise = trainingNoise(Array.from({ length: n }, (_, r) => mixSeed(17, r)), d, mode, 0.1);
    const [perDim, rowMean] = tf.tidy(() => [
      tf.mean(tf.moments(noise, 0).variance).dataSync()[0],
      // Variance of each row's mean over its d elements: (v + (d - 1) c) / d for per-dim
      // variance v and covariance c between dimensions.
      tf.moments(tf.mean(noise, 1)).variance.dataSync()[0],
    ]);
    const v = mode === "none" ? 1 : 1.01;
    close(perDim, v, 0.005, `${mode} per-dimension variance`);
    const c = mode === "shared" ? 0.01 : 0;
    close(rowMean, (v + (d - 1) * c) / d, 0.03, `${mode} variance of the row mean`);
    noise.dispose();
  }
});
