/**
 * Property tests of SIGMA's probability maths (lib/prob/distributions.ts), its interest
 * intensities and gated GRU, and a finite-difference check of the whole SIGMA loss.
 * fast-check prints the seed and the shrunk counterexample of any failure.
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { Rng } from "../lib/data/mod.ts";
import {
  gaussianKl,
  gaussianLogDensity,
  gumbelNoise,
  gumbelSoftmax,
  mixtureLogDensity,
  mixturePriorKl,
  orthogonalityLoss,
  reparameterise,
  standardNormalKl,
  straightThroughOneHot,
} from "../lib/prob/distributions.ts";
import { createGru, gatedCategoryGru } from "../lib/nn/gru.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { tinyTrainBatch } from "./_fixtures.ts";

await selectBackend("cpu");

const LOG_2PI = Math.log(2 * Math.PI);
const real = (min: number, max: number) =>
  fc.double({ min, max, noNaN: true, noDefaultInfinity: true });
const vector = (d: number, min: number, max: number) =>
  fc.array(real(min, max), { minLength: d, maxLength: d });

/** float64 log N(x | m, diag(exp(lv))). */
function logNormal64(x: number[], m: number[], lv: number[]): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    s += LOG_2PI + lv[i] + (x[i] - m[i]) ** 2 / Math.exp(lv[i]);
  }
  return -0.5 * s;
}

function logSumExp64(xs: number[]): number {
  const m = Math.max(...xs);
  return m + Math.log(xs.reduce((s, x) => s + Math.exp(x - m), 0));
}

const scalar = (f: () => tf.Tensor) => tf.tidy(() => f().dataSync()[0]);

Deno.test("gaussianKl() is >= 0, 0 for equal distributions, and standardNormalKl() is its N(0, I) case", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }).chain((d) =>
        fc.tuple(vector(d, -3, 3), vector(d, -3, 3), vector(d, -3, 3), vector(d, -3, 3))
      ),
      ([mq, lq, mp, lp]) => {
        const t = (a: number[]) => tf.tensor1d(a);
        const kl = scalar(() => gaussianKl(t(mq), t(lq), t(mp), t(lp)));
        // float32 rounding of terms up to ~e^6 allows a tiny negative value.
        assert(kl >= -1e-4, `KL ${kl}`);
        const self = scalar(() => gaussianKl(t(mq), t(lq), t(mq), t(lq)));
        assert(Math.abs(self) <= 1e-5 * mq.length, `KL(q||q) = ${self}`);
        const zeros = new Array(mq.length).fill(0);
        const std = scalar(() => standardNormalKl(t(mq), t(lq)));
        const general = scalar(() => gaussianKl(t(mq), t(lq), t(zeros), t(zeros)));
        assert(
          Math.abs(std - general) <= 1e-4 * Math.max(1, Math.abs(general)),
          `${std} vs ${general}`,
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("gaussianKl() equals the Monte-Carlo mean of log q - log p within 5 standard errors", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 3 }).chain((d) =>
        fc.tuple(vector(d, -2, 2), vector(d, -1, 1), vector(d, -2, 2), vector(d, -1, 1))
      ),
      fc.integer({ min: 1, max: 1 << 30 }),
      ([mq, lq, mp, lp], seed) => {
        const t = (a: number[]) => tf.tensor1d(a);
        const kl = scalar(() => gaussianKl(t(mq), t(lq), t(mp), t(lp)));
        const rng = new Rng(seed);
        const n = 20000;
        let sum = 0;
        let sumSq = 0;
        for (let s = 0; s < n; s++) {
          const z = mq.map((m, i) => m + Math.exp(lq[i] / 2) * rng.normal());
          const v = logNormal64(z, mq, lq) - logNormal64(z, mp, lp);
          sum += v;
          sumSq += v * v;
        }
        const mean = sum / n;
        const se = Math.sqrt(Math.max(sumSq / n - mean * mean, 0) / n);
        assert(Math.abs(mean - kl) <= 5 * se + 1e-4, `KL ${kl}, MC ${mean} +- ${se}`);
      },
    ),
    { numRuns: 100 },
  );
});

Deno.test("gaussianLogDensity() equals a float64 computation", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 8 }).chain((d) =>
        fc.tuple(vector(d, -5, 5), vector(d, -5, 5), vector(d, -4, 4))
      ),
      ([x, m, lv]) => {
        const got = scalar(() =>
          gaussianLogDensity(tf.tensor1d(x), tf.tensor1d(m), tf.tensor1d(lv))
        );
        const want = logNormal64(x, m, lv);
        assert(Math.abs(got - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${got} vs ${want}`);
      },
    ),
    { numRuns: 300 },
  );
});

/** A mixture: k weights summing to 1, k means and log-variances of size d, a point x. */
const mixture = (spread: number) =>
  fc.tuple(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 4 })).chain(([k, d]) =>
    fc.record({
      raw: fc.array(real(0.01, 1), { minLength: k, maxLength: k }),
      means: fc.array(vector(d, -spread, spread), { minLength: k, maxLength: k }),
      logVars: fc.array(vector(d, -2, 2), { minLength: k, maxLength: k }),
      x: vector(d, -spread, spread),
    })
  );

function mixture64(
  x: number[],
  weights: number[],
  means: number[][],
  logVars: number[][],
): number {
  return logSumExp64(weights.map((w, i) => Math.log(w) + logNormal64(x, means[i], logVars[i])));
}

Deno.test("mixtureLogDensity() equals a float64 log of the weighted sum, also 50+ SDs away", () => {
  for (const spread of [3, 200]) {
    fc.assert(
      fc.property(mixture(spread), ({ raw, means, logVars, x }) => {
        const total = raw.reduce((s, w) => s + w, 0);
        const weights = raw.map((w) => w / total);
        const got = scalar(() =>
          mixtureLogDensity(
            tf.tensor1d(x),
            tf.tensor1d(weights),
            tf.tensor2d(means),
            tf.tensor2d(logVars),
          )
        );
        const want = mixture64(x, weights, means, logVars);
        assert(Number.isFinite(got), `got ${got} (want ${want})`);
        // float32: relative 1e-4 of the value (which reaches -1e5 when 200 apart).
        assert(Math.abs(got - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${got} vs ${want}`);
      }),
      { numRuns: 200 },
    );
  }
});

Deno.test("mixtureLogDensity() with zero weights: the value of the other components, finite gradients", () => {
  // An interest intensity can underflow to exactly 0. log 0 = -inf is harmless in the value
  // but its gradient, 1/0 times a softmax weight of 0, is NaN for every input.
  fc.assert(
    fc.property(
      mixture(3).filter(({ raw }) => raw.length >= 2),
      fc.integer({ min: 0, max: 2 ** 31 - 1 }),
      ({ raw, means, logVars, x }, bits) => {
        const k = raw.length;
        // A non-empty proper subset of the components gets weight exactly 0.
        let zero = bits % ((1 << k) - 1);
        if (zero === 0) zero = 1;
        const kept = raw.map((w, i) => (zero >> i) & 1 ? 0 : w);
        const total = kept.reduce((s, w) => s + w, 0);
        const weights = kept.map((w) => w / total);
        const live = weights.flatMap((w, i) => w > 0 ? [i] : []);
        const want = mixture64(
          x,
          live.map((i) => weights[i]),
          live.map((i) => means[i]),
          live.map((i) => logVars[i]),
        );
        const inputs = [
          tf.tensor1d(x),
          tf.tensor1d(weights),
          tf.tensor2d(means),
          tf.tensor2d(logVars),
        ] as const;
        const got = scalar(() => mixtureLogDensity(...inputs));
        assert(Math.abs(got - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${got} vs ${want}`);
        const grads = tf.grads((a, w, m, l) => mixtureLogDensity(a, w, m, l))([...inputs]);
        for (const [i, g] of grads.entries()) {
          const values = g.dataSync();
          assert(values.every(Number.isFinite), `gradient ${i} is not finite: ${values}`);
        }
        tf.dispose([...grads, ...inputs]);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("mixtureLogDensity() of one component equals gaussianLogDensity()", () => {
  fc.assert(
    fc.property(mixture(5), ({ means, logVars, x }) => {
      const one = scalar(() =>
        mixtureLogDensity(
          tf.tensor1d(x),
          tf.tensor1d([1]),
          tf.tensor2d([means[0]]),
          tf.tensor2d([logVars[0]]),
        )
      );
      const gauss = scalar(() =>
        gaussianLogDensity(tf.tensor1d(x), tf.tensor1d(means[0]), tf.tensor1d(logVars[0]))
      );
      assert(Math.abs(one - gauss) <= 1e-5 * Math.max(1, Math.abs(gauss)), `${one} vs ${gauss}`);
    }),
    { numRuns: 200 },
  );
});

Deno.test("mixtureLogDensity() requires weights that are >= 0 and sum to 1", () => {
  fc.assert(
    fc.property(
      mixture(3),
      real(1.01, 3),
      ({ raw, means, logVars, x }, scale) => {
        const total = raw.reduce((s, w) => s + w, 0);
        const off = raw.map((w) => (w / total) * scale); // sums to `scale`, not 1
        tf.tidy(() => {
          assertThrows(
            () =>
              mixtureLogDensity(
                tf.tensor1d(x),
                tf.tensor1d(off),
                tf.tensor2d(means),
                tf.tensor2d(logVars),
              ),
            RangeError,
            "sum to",
          );
        });
        if (raw.length > 1) {
          const negative = raw.map((_, i) => (i === 0 ? -0.5 : 1.5 / (raw.length - 1)));
          tf.tidy(() => {
            assertThrows(
              () =>
                mixtureLogDensity(
                  tf.tensor1d(x),
                  tf.tensor1d(negative),
                  tf.tensor2d(means),
                  tf.tensor2d(logVars),
                ),
              RangeError,
              ">= 0",
            );
          });
        }
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("mixturePriorKl() averages >= 0 over samples and is 0 when q is the one prior component", () => {
  fc.assert(
    fc.property(
      mixture(2),
      fc.integer({ min: 1, max: 1 << 30 }),
      ({ raw, means, logVars }, seed) => {
        const total = raw.reduce((s, w) => s + w, 0);
        const weights = raw.map((w) => w / total);
        const d = means[0].length;
        const n = 4000;
        const rng = new Rng(seed);
        const mq = Array.from({ length: d }, () => rng.normal());
        const lq = Array.from({ length: d }, () => rng.normal() * 0.5);
        const z = Array.from(
          { length: n },
          () => mq.map((m, i) => m + Math.exp(lq[i] / 2) * rng.normal()),
        );
        const values = tf.tidy(() => {
          const tile = (v: number[]) => tf.tile(tf.tensor2d([v]), [n, 1]);
          return mixturePriorKl(
            tf.tensor2d(z),
            tile(mq),
            tile(lq),
            tile(weights),
            tf.tile(tf.tensor3d([means]), [n, 1, 1]),
            tf.tile(tf.tensor3d([logVars]), [n, 1, 1]),
            { checkWeights: false },
          ).dataSync();
        });
        let sum = 0;
        let sumSq = 0;
        for (const v of values) {
          sum += v;
          sumSq += v * v;
        }
        const mean = sum / n;
        const se = Math.sqrt(Math.max(sumSq / n - mean * mean, 0) / n);
        assert(mean >= -5 * se - 1e-4, `mean estimate ${mean} +- ${se}`);
        // q equal to a one-component prior: every single estimate is 0.
        const zero = tf.tidy(() =>
          mixturePriorKl(
            tf.tensor2d(z.slice(0, 50)),
            tf.tile(tf.tensor2d([mq]), [50, 1]),
            tf.tile(tf.tensor2d([lq]), [50, 1]),
            tf.ones([50, 1]),
            tf.tile(tf.tensor3d([[mq]]), [50, 1, 1]),
            tf.tile(tf.tensor3d([[lq]]), [50, 1, 1]),
          ).dataSync()
        );
        for (const v of zero) assert(Math.abs(v) <= 1e-4, `estimate ${v} with q = p`);
      },
    ),
    { numRuns: 60 },
  );
});

const logitsArb = fc.integer({ min: 2, max: 6 }).chain((k) => vector(k, -4, 4));

Deno.test("reparameterise() is mean + sd * eps, and its draws depend on the seed alone, 0 included", () => {
  fc.assert(
    fc.property(
      // Seed 0 often: tfjs's normal sampler takes it for "no seed" and draws from Math.random.
      fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2 ** 32 - 1 })),
      fc.float({ min: -3, max: 3, noNaN: true }), // mean
      fc.float({ min: -4, max: 4, noNaN: true }), // log-variance
      (seed, m, lv) => {
        const [a, b, unit] = tf.tidy(() => {
          const mean = tf.fill([64], m);
          const logVar = tf.fill([64], lv);
          return [
            reparameterise(mean, logVar, seed),
            reparameterise(mean, logVar, seed),
            reparameterise(tf.zeros([64]), tf.zeros([64]), seed),
          ].map((t) => t.dataSync().slice());
        });
        assertEquals([...a], [...b], `seed ${seed}: the same seed, other draws`);
        const sd = Math.exp(lv / 2);
        a.forEach((v, i) => {
          assert(Math.abs(v - (m + sd * unit[i])) <= 1e-5 * (1 + Math.abs(v)), `element ${i}`);
        });
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("gumbelSoftmax() soft samples lie on the simplex; hard ones are one-hot with the soft gradient", () => {
  fc.assert(
    fc.property(
      logitsArb,
      real(0.1, 3),
      fc.integer({ min: 0, max: 1 << 30 }),
      (logits, temp, seed) => {
        const k = logits.length;
        const rows = 8;
        const l = tf.tile(tf.tensor2d([logits]), [rows, 1]);
        const soft = tf.tidy(() => gumbelSoftmax(l, temp, seed, false).dataSync());
        const hard = tf.tidy(() => gumbelSoftmax(l, temp, seed, true).dataSync());
        for (let r = 0; r < rows; r++) {
          let s = 0;
          let ones = 0;
          let zeros = 0;
          let argSoft = 0;
          for (let j = 0; j < k; j++) {
            const v = soft[r * k + j];
            assert(v >= 0 && v <= 1, `soft value ${v}`);
            s += v;
            if (v > soft[r * k + argSoft]) argSoft = j;
            if (hard[r * k + j] === 1) ones++;
            if (hard[r * k + j] === 0) zeros++;
          }
          assert(Math.abs(s - 1) <= 1e-5, `row sums to ${s}`);
          assertEquals([ones, zeros], [1, k - 1]);
          assertEquals(hard[r * k + argSoft], 1); // the one-hot marks the soft sample's argmax
        }
        // Straight-through: d/dlogits of sum(w * hard) equals that of sum(w * soft).
        const w = tf.randomNormal([rows, k], 0, 1, "float32", seed + 1);
        const gradOf = (isHard: boolean) =>
          tf.tidy(() =>
            tf.grad((x: tf.Tensor) => tf.sum(tf.mul(gumbelSoftmax(x, temp, seed, isHard), w)))(l)
              .dataSync()
          );
        const gh = gradOf(true);
        const gs = gradOf(false);
        for (let i = 0; i < gh.length; i++) {
          assert(
            Math.abs(gh[i] - gs[i]) <= 1e-6,
            `${gh[i]} vs ${gs[i]}`,
          );
        }
        tf.dispose([l, w]);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("gumbelSoftmax() argmax frequencies match softmax probabilities", () => {
  fc.assert(
    fc.property(logitsArb, fc.integer({ min: 0, max: 1 << 30 }), (logits, seed) => {
      const k = logits.length;
      const draws = 6000;
      const hard = tf.tidy(() =>
        tf.sum(gumbelSoftmax(tf.tile(tf.tensor2d([logits]), [draws, 1]), 1, seed, true), 0)
          .dataSync()
      );
      const m = Math.max(...logits);
      const e = logits.map((x) => Math.exp(x - m));
      const z = e.reduce((s, x) => s + x, 0);
      for (let j = 0; j < k; j++) {
        const p = e[j] / z;
        const freq = hard[j] / draws;
        // 5 binomial standard errors, plus slack for float32 Gumbel noise.
        const tol = 5 * Math.sqrt((p * (1 - p)) / draws) + 2e-3;
        assert(Math.abs(freq - p) <= tol, `category ${j}: frequency ${freq}, probability ${p}`);
      }
    }),
    { numRuns: 30 },
  );
});

Deno.test("gumbelSoftmax() at a lower temperature is closer to one-hot; a temperature <= 0 is refused", () => {
  fc.assert(
    fc.property(
      logitsArb,
      real(0.05, 1),
      real(1.01, 4),
      fc.integer({ min: 0, max: 1 << 30 }),
      (logits, cold, factor, seed) => {
        const l = tf.tensor2d([logits]);
        const maxAt = (t: number) =>
          tf.tidy(() => tf.max(gumbelSoftmax(l, t, seed, false)).dataSync()[0]);
        // Same noise, so the same argmax; dividing by a smaller temperature sharpens it.
        assert(maxAt(cold) >= maxAt(cold * factor) - 1e-6);
        assertThrows(() => gumbelSoftmax(l, 0, seed, false), RangeError, "temperature");
        assertThrows(() => gumbelSoftmax(l, -cold, seed, true), RangeError, "temperature");
        l.dispose();
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("straightThroughOneHot() is the argmax one-hot with an identity gradient", () => {
  fc.assert(
    fc.property(logitsArb, (raw) => {
      // Ties (values equal once rounded to float32) have no single argmax: skip them.
      const logits = raw.map(Math.fround);
      fc.pre(new Set(logits).size === logits.length);
      const x = tf.tensor1d(logits);
      const value = tf.tidy(() => straightThroughOneHot(x).dataSync());
      const arg = logits.indexOf(Math.max(...logits));
      assertEquals(Array.from(value), logits.map((_, j) => (j === arg ? 1 : 0)));
      const w = logits.map((_, j) => j + 1);
      const g = tf.tidy(() =>
        tf.grad((t: tf.Tensor) => tf.sum(tf.mul(straightThroughOneHot(t), w)))(x).dataSync()
      );
      assertEquals(Array.from(g), w);
      x.dispose();
    }),
    { numRuns: 200 },
  );
});

Deno.test("orthogonalityLoss() is 0 for orthogonal rows at any scale and > 0 otherwise", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 4 }).chain((k) =>
        fc.tuple(
          fc.array(vector(6, -1, 1), { minLength: k, maxLength: k }),
          fc.array(real(0.1, 10), { minLength: k, maxLength: k }),
        )
      ),
      ([raw, scales]) => {
        // Gram-Schmidt in float64; skip the rare nearly dependent draw.
        const basis: number[][] = [];
        for (const v of raw) {
          const u = v.slice();
          for (const b of basis) {
            const dot = u.reduce((s, x, i) => s + x * b[i], 0);
            for (let i = 0; i < u.length; i++) u[i] -= dot * b[i];
          }
          const norm = Math.hypot(...u);
          fc.pre(norm > 1e-3);
          basis.push(u.map((x) => x / norm));
        }
        const scaled = basis.map((b, i) => b.map((x) => x * scales[i]));
        const zero = scalar(() => orthogonalityLoss(tf.tensor2d(scaled)));
        assert(Math.abs(zero) <= 1e-6, `orthogonal rows give ${zero}`);
        // Tilt row 1 towards row 0: cosine 0.5 between them.
        const tilted = scaled.map((r) => r.slice());
        tilted[1] = basis[1].map((x, i) => x + basis[0][i] * Math.sqrt(1 / 3));
        const positive = scalar(() => orthogonalityLoss(tf.tensor2d(tilted)));
        assert(Math.abs(positive - 2 * 0.25) <= 1e-4, `cosine 0.5 gives ${positive}, expected 0.5`);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("SIGMA intensities are non-negative and sum to 1 at every real position", () => {
  const model = new Sigma({
    numItems: 30,
    hidden: 8,
    heads: 2,
    inner: 16,
    maxLength: 12,
    interests: 3,
    gruLayers: 1,
  });
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.integer({ min: 1, max: 30 }), { minLength: 0, maxLength: 12 }), {
        minLength: 1,
        maxLength: 5,
      }),
      (histories) => {
        const length = 12;
        const inputs = new Int32Array(histories.length * length);
        histories.forEach((h, b) => inputs.set(h, b * length + length - h.length));
        const { assignment, intensity, mean } = model.interestsOf(inputs, histories.length, length);
        const alpha = intensity.dataSync();
        const a = assignment.dataSync();
        for (let i = 0; i < inputs.length; i++) {
          const s = alpha[i * 3] + alpha[i * 3 + 1] + alpha[i * 3 + 2];
          const sa = a[i * 3] + a[i * 3 + 1] + a[i * 3 + 2];
          for (let j = 0; j < 3; j++) assert(alpha[i * 3 + j] >= 0);
          if (inputs[i] !== 0) {
            assert(Math.abs(s - 1) <= 1e-5, `position ${i}: intensities sum to ${s}`);
            assert(Math.abs(sa - 1) <= 1e-5, `position ${i}: probabilities sum to ${sa}`);
          } else {
            assertEquals(sa, 0); // padding belongs to no category
          }
        }
        tf.dispose([assignment, intensity, mean]);
      },
    ),
    { numRuns: 200 },
  );
  model.params.dispose();
});

Deno.test("gatedCategoryGru() moves a category's state only where an item of it arrives", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 3 }),
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 2, max: 4 }),
      fc.integer({ min: 1, max: 1 << 30 }), // tfjs takes seed 0 as "no seed"
      (batch, length, k, seed) => {
        const d = 4;
        const rng = new Rng(seed);
        const gates = new Float32Array(batch * length * k);
        for (let i = 0; i < batch * length; i++) {
          const c = rng.int(k + 1); // k means "no category" (padding)
          if (c < k) gates[i * k + c] = 1;
        }
        const p = new ParamStore(seed, 0.5);
        createGru(p, "gru", d, 2);
        const states = tf.tidy(() =>
          gatedCategoryGru(
            p,
            "gru",
            tf.randomNormal([batch, length, d], 0, 1, "float32", seed) as tf.Tensor3D,
            tf.tensor3d(gates, [batch, length, k]),
            2,
          ).dataSync()
        );
        const at = (b: number, t: number, j: number) =>
          Array.from(
            states.subarray(((b * length + t) * k + j) * d, ((b * length + t) * k + j + 1) * d),
          );
        let moved = 0;
        let gated = 0;
        for (let b = 0; b < batch; b++) {
          for (let j = 0; j < k; j++) {
            let seen = false;
            for (let t = 0; t < length; t++) {
              const g = gates[(b * length + t) * k + j];
              const prev = t > 0 ? at(b, t - 1, j) : new Array(d).fill(0);
              const now = at(b, t, j);
              if (g === 0) assertEquals(now, prev); // exactly unchanged
              else {
                gated++;
                if (now.some((v, i) => v !== prev[i])) moved++;
              }
              seen ||= g === 1;
              if (!seen) assertEquals(now, new Array(d).fill(0));
            }
          }
        }
        assertEquals(moved, gated); // generic weights: every arrival changes the state
        p.dispose();
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("SIGMA's gradients match central finite differences, family by family, on their largest entries", () => {
  // float32 only (tfjs has no float64), so a check is only meaningful where the gradient is
  // far above the rounding of the differences (~1e-7 * |loss| / h). Weights and
  // initialisation are chosen so that every branch carries a large gradient: lambda 1,
  // beta1 1, beta2 0.5 (the paper's 1e-4 and 0.01 leave GRU, omega and interest gradients
  // near 1e-8), init std 0.3 (0.02 leaves attention uniform). Each parameter family is
  // checked on the objective (the total or one loss part) where its gradient is largest,
  // at its two largest entries, which must exceed 1e-2 (a cut or zeroed branch fails), and
  // at up to 4 more entries above 1e-2 drawn at random.
  // Left out: item and category embeddings, whose gradient includes the straight-through
  // estimator, by design not the derivative of the (piecewise constant) hard assignment;
  // the attention key biases, which softmax ignores (checked to be ~0 both ways instead).
  const model = new Sigma({
    numItems: 12,
    hidden: 8,
    heads: 2,
    inner: 8,
    maxLength: 6,
    interests: 2,
    gruLayers: 1,
    dropout: 0,
    seed: 9,
    lambda: 1,
    beta1: 1,
    beta2: 0.5,
    logVarInit: -3,
    initStd: 0.3,
  });
  const batch = tinyTrainBatch(3, 5, 12);
  const objectives = ["total", "recon", "kl", "recon_mie", "kl_mie", "orth"];
  const objective = (name: string) => {
    const { loss, parts } = model.loss(batch, stepSeeds(3, 0));
    return name === "total" ? loss : parts[name];
  };
  const value = (name: string) => tf.tidy(() => objective(name).dataSync()[0]);
  const vars = model.params.list();
  const records = model.params.records();
  const gradients = new Map<string, Float32Array[]>();
  for (const name of objectives) {
    const { grads } = tf.variableGrads(() => objective(name) as tf.Scalar, vars);
    // A variable the objective does not reach has no entry: its gradient is zero.
    gradients.set(
      name,
      vars.map((v) => (grads[v.name]?.dataSync() as Float32Array) ?? new Float32Array(v.size)),
    );
    tf.dispose(Object.values(grads));
  }
  const numeric = (name: string, index: number, at: number, h: number) => {
    const v = vars[index];
    const original = v.dataSync().slice();
    const shifted = (delta: number) => {
      const copy = original.slice();
      copy[at] += delta;
      v.assign(tf.tensor(copy, v.shape));
      return value(name);
    };
    const d = (shifted(h) - shifted(-h)) / (2 * h);
    v.assign(tf.tensor(original, v.shape));
    return d;
  };
  const excluded = (family: string) => family === "item" || family === "category";
  const rng = new Rng(11);
  let checked = 0;
  records.forEach((record, index) => {
    if (excluded(record.name)) return;
    if (record.name.endsWith(".attn.k.b")) {
      for (const name of objectives) {
        const g = gradients.get(name)![index];
        for (let at = 0; at < g.length; at++) assert(Math.abs(g[at]) < 1e-6, record.name);
      }
      assert(Math.abs(numeric("total", index, 0, 1e-1)) < 5e-3, `${record.name}: not invariant`);
      return;
    }
    // The objective where this family's gradient is largest, and its two largest entries.
    let best = { name: "", at: [0], size: 0 };
    for (const name of objectives) {
      const g = gradients.get(name)![index];
      const order = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]) - Math.abs(g[a]));
      if (Math.abs(g[order[0]]) > best.size) {
        best = { name, at: order.slice(0, 2), size: Math.abs(g[order[0]]) };
      }
    }
    assert(best.size >= 1e-2, `${record.name}: largest gradient ${best.size}, too small to test`);
    // Plus up to 4 other entries above 1e-2, drawn at random: the largest two may all sit
    // in one part of a fused parameter (one gate of the GRU's weights, say).
    const g = gradients.get(best.name)![index];
    const large = Array.from(g.keys()).filter((i) =>
      Math.abs(g[i]) >= 1e-2 && !best.at.includes(i)
    );
    for (let n = 0; n < 4 && large.length > 0; n++) {
      best.at.push(large.splice(rng.int(large.length), 1)[0]);
    }
    for (const at of best.at) {
      const analytic = gradients.get(best.name)![index][at];
      if (Math.abs(analytic) < 1e-2) continue; // the second largest may be small; the first is not
      const estimate = numeric(best.name, index, at, 1e-2);
      assert(
        Math.abs(estimate - analytic) <= 0.01 * Math.abs(analytic) + 5e-4,
        `${record.name}[${at}] on ${best.name}: analytic ${analytic}, numeric ${estimate}`,
      );
      checked++;
    }
  });
  // Every family but the excluded ones, at least one entry each.
  const families = records.filter((r) => !excluded(r.name) && !r.name.endsWith(".attn.k.b"));
  assert(checked >= families.length, `${checked} entries checked for ${families.length} families`);
  model.params.dispose();
});

Deno.test("gumbelSoftmax() is softmax((logits + its Gumbel noise) / tau), for tau from 0.01 to 10", async () => {
  await selectBackend("cpu");
  fc.assert(
    fc.property(
      fc.array(fc.float({ min: -5, max: 5, noNaN: true }), { minLength: 2, maxLength: 8 }),
      fc.double({ min: Math.log(0.01), max: Math.log(10), noNaN: true }).map(Math.exp),
      fc.integer({ min: 0, max: 2 ** 31 - 1 }),
      (logits, tau, seed) => {
        tf.tidy(() => {
          const x = tf.tensor2d([logits]);
          const got = gumbelSoftmax(x, tau, seed, false).dataSync();
          const want = tf.softmax(tf.div(tf.add(x, gumbelNoise(x.shape, seed)), tau)).dataSync();
          for (let i = 0; i < got.length; i++) {
            assert(Math.abs(got[i] - want[i]) <= 1e-6, `tau ${tau}: ${got[i]} vs ${want[i]}`);
          }
        });
      },
    ),
    { numRuns: 300 },
  );
});
