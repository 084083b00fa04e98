/**
 * Hardening tests from a mutation run: each test below fails on a planted bug that the
 * rest of the suite let through, and states the invariant it checks.
 *
 * - DiffuRec's reverse chain (`DIFFUREC.md` §2.6-§2.8): a fresh Λ at every reverse step,
 *   and the Approximator input Z = H0 + Λ ⊙ (x_t + temb).
 * - SIGMA (`SIGMA.md`): `scoreAt: "mu+sigma"` adds the standard deviation exp(logVar / 2);
 *   the hard interests' Gumbel-softmax uses `gumbelTemperature`; a mixture component of
 *   weight exactly 0 takes no part in the mixture term, gradients included.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { blockSettings, DiffuRec, type DiffuRecConfig } from "../lib/models/diffurec.ts";
import { Sigma, type SigmaConfig } from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import {
  mixSeed,
  networkSteps,
  rowNormals,
  stepEmbedding,
  uncertaintyWeights,
} from "../lib/diffusion/mod.ts";
import { embeddingLookup, layerNorm, linear } from "../lib/nn/layers.ts";
import { paddingMask, preLnBlock } from "../lib/nn/pre_ln.ts";
import { mixtureLogDensity, mixturePriorKl } from "../lib/prob/distributions.ts";
import type { EvalBatch, TrainBatch } from "../lib/data/types.ts";
import type { Tensor2D, Tensor3D } from "../lib/nn/tensor_types.ts";
import { assert, assertEquals } from "./_assert.ts";
import { historiesBatch, tinyTrainBatch } from "./_fixtures.ts";
import { maxAbs, maxAbsDiff } from "./_model_checks.ts";

await selectBackend("cpu");

// ------------------------------------------------------------------------- DiffuRec

const DIFFUREC: Partial<DiffuRecConfig> & { numItems: number } = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  layers: 2,
  inner: 32,
  maxLength: 8,
  steps: 8,
  seed: 3,
  evalSeed: 5,
  // A large lambda: the Λ term is of the size of H0, so how it is built shows in the scores.
  lambda: 0.5,
};

const HISTORIES = [[3, 5, 8], [1, 2], [7, 7, 9, 4, 6]];

/** How the hand-built reference forms the Approximator input (the spec's, or a wrong one). */
type Combine = "spec" | "oneLambda" | "noStep" | "addLambda" | "stepOutsideLambda";

/**
 * DiffuRec's recommendation scores built by hand from the spec (`DIFFUREC.md` §2.6-§2.8)
 * and the model's parameters, drawing from the same seeded streams as the model:
 * a row's seed is `evalSeed` mixed with its history's items; x_T from stream 0, Λ of
 * reverse step t from stream 1000 + t, the step's noise from stream 2000 + t. At each step,
 * from t = S-1 down to 0:
 *
 *   temb = W2 SiLU(W1 φ(t · 1000 / T)),  Z = H0 + Λ_t ⊙ (x_t + temb)  (every position),
 *   x̂0 = LN_out(blocks(Z))[newest],   x_{t-1} = c1_t x̂0 + c2_t x_t + σ_t z_t (x̂0 at t = 0),
 *
 * the DDPM update done here on the host in float64. Scores are x_0 · Eᵀ. `combine` other
 * than "spec" builds a wrong variant, to show that the comparison can tell.
 */
function referenceScores(model: DiffuRec, batch: EvalBatch, combine: Combine): number[][] {
  const c = model.config;
  const p = model.params;
  const d = c.hidden;
  const { batch: rows, length, inputs } = batch;
  const sched = model.reverseSchedule;
  const rowSeeds = Array.from({ length: rows }, (_, b) => {
    let h = mixSeed(c.evalSeed, 0x7f4a7c15);
    for (let j = 0; j < length; j++) {
      const id = inputs[b * length + j];
      if (id !== 0) h = mixSeed(h, id);
    }
    return h;
  });
  const stream = (salt: number) => rowSeeds.map((s) => mixSeed(s, salt));
  let x = Float64Array.from(rowNormals(stream(0), d)); // x_T, [B, d]
  for (let t = sched.steps - 1; t >= 0; t--) {
    const x0 = tf.tidy(() => {
      const h0 = layerNorm(
        p,
        "embed.ln",
        embeddingLookup(p.get("item") as Tensor2D, tf.tensor2d(inputs, [rows, length], "int32")),
        c.layerNormEps,
      ); // [B, L, d]
      const phi = stepEmbedding(
        networkSteps(new Int32Array(rows).fill(t), sched, c.rescaleSteps),
        d,
      );
      const hidden = linear(p, "time.l1", phi);
      const temb = linear(p, "time.l2", tf.mul(hidden, tf.sigmoid(hidden))); // [B, d]
      const lambdaSalt = combine === "oneLambda" ? 1000 + sched.steps - 1 : 1000 + t;
      const lambda = uncertaintyWeights(stream(lambdaSalt), length, d, c.lambda, c.lambdaMode);
      const xt = tf.tensor2d(Float32Array.from(x), [rows, d]);
      const term = {
        spec: () => tf.mul(lambda, tf.expandDims(tf.add(xt, temb), 1)),
        oneLambda: () => tf.mul(lambda, tf.expandDims(tf.add(xt, temb), 1)),
        noStep: () => tf.mul(lambda, tf.expandDims(xt, 1)),
        addLambda: () => tf.add(lambda, tf.expandDims(tf.add(xt, temb), 1)),
        stepOutsideLambda: () =>
          tf.add(tf.mul(lambda, tf.expandDims(xt, 1)), tf.expandDims(temb, 1)),
      }[combine]();
      let h = tf.add(h0, term) as Tensor3D;
      const mask = paddingMask(inputs, rows, length, c.attentionMask);
      for (let l = 0; l < c.layers; l++) {
        h = preLnBlock(p, `block${l}`, h, mask, blockSettings(c), null, l === c.layers - 1);
      }
      return layerNorm(p, "out.ln", h, c.layerNormEps).dataSync() as Float32Array; // [B, 1, d]
    });
    if (t === 0) {
      x = Float64Array.from(x0);
    } else {
      const noise = rowNormals(stream(2000 + t), d);
      const sigma = Math.exp(0.5 * sched.reverseLogVariance[t]);
      x = x.map((xi, i) =>
        sched.posteriorX0[t] * x0[i] + sched.posteriorXt[t] * xi + sigma * noise[i]
      );
    }
  }
  const table = p.get("item").arraySync() as number[][]; // [N + 1, d]
  return Array.from(
    { length: rows },
    (_, b) => table.map((e) => e.reduce((s, v, i) => s + v * x[b * d + i], 0)),
  );
}

function scoresOf(model: { scores(b: EvalBatch): Tensor2D }, batch: EvalBatch): number[][] {
  return tf.tidy(() => model.scores(batch).arraySync() as number[][]);
}

/** Largest difference relative to the largest entry of `want`. */
function relativeDiff(got: number[][], want: number[][]): number {
  return maxAbsDiff(got.flat(), want.flat()) / maxAbs(want.flat());
}

Deno.test("DiffuRec's reverse chain equals a hand-built chain with a fresh Λ per step and Z = H0 + Λ ⊙ (x_t + temb)", () => {
  // Invariant (DIFFUREC.md §2.6-§2.8): each reverse step t calls the Approximator on
  // Z = H0 + Λ_t ⊙ (x_t + temb(t)), Λ_t drawn afresh for that step (its own stream,
  // 1000 + t), temb(t) the step MLP of the sinusoidal embedding of t; the DDPM update adds
  // c1_t x̂0 + c2_t x_t + σ_t z_t. The model's scores match that reference to float32
  // rounding; the same reference built with one Λ reused at every step, without the step
  // embedding, with Λ added instead of multiplied, or with temb outside Λ, does not.
  const model = new DiffuRec(DIFFUREC);
  const batch = historiesBatch(HISTORIES, 6);
  const got = scoresOf(model, batch);
  const tol = 1e-5; // measured: ~5e-8
  const spec = relativeDiff(got, referenceScores(model, batch, "spec"));
  assert(spec <= tol, `the chain is off the reference by ${spec}`);
  for (const wrong of ["oneLambda", "noStep", "addLambda", "stepOutsideLambda"] as const) {
    const off = relativeDiff(got, referenceScores(model, batch, wrong));
    assert(off > 50 * tol, `the reference with ${wrong} is only ${off} away: the test cannot tell`);
  }
  model.params.dispose();
});

/** DiffuRec that keeps a copy of every Λ its Approximator is given. */
class LambdaSpy extends DiffuRec {
  drawn: Float32Array[] = [];
  protected override lambda(rowSeeds: ArrayLike<number>, length: number): tf.Tensor {
    const out = super.lambda(rowSeeds, length);
    this.drawn.push(out.dataSync() as Float32Array);
    return out;
  }
}

Deno.test("DiffuRec draws a fresh Λ at every reverse step: S steps, S different draws, each N(λ, λ²)", () => {
  // Invariant (DIFFUREC.md §2.7: x̂0 = f(H0, x, t) "with fresh Λ"): scoring a batch with a
  // chain of S steps draws Λ S times, once per Approximator call, and no two steps share
  // a draw; each draw has mean λ and standard deviation λ. Reusing one draw at every step
  // makes the draws equal (or their number 1).
  for (const reverseSteps of [0, 3]) {
    const model = new LambdaSpy({ ...DIFFUREC, reverseSteps });
    const steps = model.reverseSchedule.steps;
    scoresOf(model, historiesBatch(HISTORIES, 6));
    assertEquals(model.drawn.length, steps, "one Λ per reverse step");
    for (let i = 0; i < steps; i++) {
      const values = Array.from(model.drawn[i]);
      const mean = values.reduce((s, v) => s + v, 0) / values.length;
      const sd = Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / values.length);
      const lambda = DIFFUREC.lambda!;
      assert(Math.abs(mean - lambda) < 0.2 * lambda, `step ${i}: mean ${mean}`);
      assert(Math.abs(sd - lambda) < 0.2 * lambda, `step ${i}: sd ${sd}`);
      for (let j = 0; j < i; j++) {
        // Independent draws differ by ~λ·sqrt(2) per element: far above 0.1 λ on average.
        const mad = values.reduce((s, v, e) => s + Math.abs(v - model.drawn[j][e]), 0) /
          values.length;
        assert(mad > 0.1 * lambda, `steps ${j} and ${i} share a Λ (mean |diff| ${mad})`);
      }
    }
    model.params.dispose();
  }
});

Deno.test("DiffuRec's one call from x = 0 reads Λ ⊙ temb(0): halving λ and doubling the step MLP's output leaves scores unchanged, λ = 0 does not", () => {
  // Invariant (DIFFUREC.md §2.6): Z = H0 + Λ ⊙ (x_t + temb). With `sampling: "one"` x_t = 0
  // and, with `lambdaMode: "fixed"`, Λ = λ everywhere: Z = H0 + λ temb(0). So the scores
  // depend on λ and temb only through their product: λ/2 with the step MLP's last layer
  // (weights and bias) doubled scores the same, while λ = 0 (Z = H0) scores differently.
  // Dropping temb makes λ = 0 score the same; adding Λ instead of multiplying, or adding
  // temb outside Λ, breaks the product.
  const base = { ...DIFFUREC, sampling: "one" as const, lambdaMode: "fixed" as const };
  const batch = historiesBatch(HISTORIES, 6);
  const model = new DiffuRec({ ...base, lambda: 0.4 });
  const scaled = new DiffuRec({ ...base, lambda: 0.2 });
  for (const name of ["time.l2.w", "time.l2.b"]) {
    const v = scaled.params.get(name);
    v.assign(tf.tidy(() => tf.mul(v, 2)));
  }
  const off = new DiffuRec({ ...base, lambda: 0 });
  const want = scoresOf(model, batch);
  const same = relativeDiff(scoresOf(scaled, batch), want);
  assert(same <= 1e-5, `λ/2 with temb doubled is ${same} away`);
  const apart = relativeDiff(scoresOf(off, batch), want);
  assert(apart > 1e-2, `λ = 0 is only ${apart} away: temb(0) does not reach the Approximator`);
  for (const m of [model, scaled, off]) m.params.dispose();
});

// ------------------------------------------------------------------------- SIGMA

const SIGMA: Partial<SigmaConfig> & { numItems: number } = {
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

/** Replaces the values of parameter `name` by `f` of its current values. */
function edit(model: Sigma, name: string, f: (v: Float32Array) => ArrayLike<number>): void {
  const v = model.params.get(name);
  const values = Float32Array.from(f(v.dataSync() as Float32Array));
  v.assign(tf.tensor(values, v.shape));
}

Deno.test("SIGMA scoreAt mu+sigma ranks at mu + exp(logVar / 2), the standard deviation, not the variance", () => {
  // Invariant: with `scoreAt: "mu+sigma"` the decoder reads z = mu + sigma, sigma =
  // exp(logVar / 2). Make Enc_sigma's output a known vector: its last LayerNorm's gain 0
  // and bias b (b_i = logVarInit + 0.5 sin i, logVarInit = -4: sigma ~ e^-2 = 0.14 against
  // a variance ~ e^-4 = 0.02). Then logVar = b at every position, and ranking at mu + sigma
  // equals ranking at mu with exp(b / 2) added to Enc_mu's last LayerNorm bias. Adding
  // exp(b) there (the variance) gives other scores: the test can tell.
  const logVarInit = -4;
  const b = Array.from({ length: SIGMA.hidden! }, (_, i) => logVarInit + 0.5 * Math.sin(i));
  const last = (enc: string) => `${enc}.block${SIGMA.layers! - 1}.ln2`;
  const make = (scoreAt: "mu" | "mu+sigma", shift: (logVar: number) => number) => {
    const model = new Sigma({ ...SIGMA, logVarInit, scoreAt });
    edit(model, `${last("enc_sigma")}.g`, (g) => g.map(() => 0));
    edit(model, `${last("enc_sigma")}.b`, () => b);
    edit(model, `${last("enc_mu")}.b`, (bias) => bias.map((v, i) => v + shift(b[i])));
    return model;
  };
  const batch = historiesBatch(HISTORIES, 6);
  const atSigma = make("mu+sigma", () => 0);
  const got = scoresOf(atSigma, batch);
  const sd = make("mu", (lv) => Math.exp(lv / 2));
  const variance = make("mu", (lv) => Math.exp(lv));
  const plain = make("mu", () => 0);
  const same = relativeDiff(got, scoresOf(sd, batch));
  // Measured: ~4e-8 for the spec's shift, ~9e-3 for the variance, ~1e-2 for no shift.
  assert(same <= 1e-6, `mu + sigma is ${same} away from mu shifted by exp(logVar / 2)`);
  const byVariance = relativeDiff(got, scoresOf(variance, batch));
  assert(byVariance > 1e-3, `shifting by exp(logVar) is only ${byVariance} away`);
  const byNothing = relativeDiff(got, scoresOf(plain, batch));
  assert(byNothing > 1e-3, `ranking at mu is only ${byNothing} away`);
  for (const m of [atSigma, sd, variance, plain]) m.params.dispose();
});

/** SIGMA's loss and its gradient on every parameter (by parameter name), for one seeded step. */
function lossAndGrads(model: Sigma, batch: TrainBatch, seed = 2) {
  const names = model.params.records().map((r) => r.name);
  const vars = names.map((name) => model.params.get(name));
  const grads = new Map<string, Float32Array>();
  let loss = NaN;
  tf.tidy(() => {
    const out = tf.variableGrads(() => model.loss(batch, stepSeeds(seed, 0)).loss, vars);
    loss = out.value.dataSync()[0];
    vars.forEach((v, i) => {
      const g = out.grads[v.name];
      grads.set(names[i], (g ? g.dataSync() : new Float32Array(v.size)) as Float32Array);
    });
  });
  return { loss, grads, names };
}

Deno.test("SIGMA's hard interests use gumbelTemperature: it moves the gradient, not the loss; categoryTemperature is not it", () => {
  // Invariant (SIGMA.md, hard interests): each item's category is a straight-through
  // Gumbel-softmax over log a at temperature `gumbelTemperature` (not the item-to-category
  // `categoryTemperature`). Forward, the hard sample is the argmax of (log a + g) / tau,
  // which no tau > 0 changes: the loss of one seeded step is the same for every
  // gumbelTemperature. Backward, the gradient is the soft sample's,
  // softmax((log a + g) / tau), so the gradient on the category embeddings (through log a)
  // changes with it. Using categoryTemperature in the Gumbel-softmax (or any fixed one)
  // leaves the gradient unchanged when gumbelTemperature changes.
  const batch = tinyTrainBatch(4, 6, SIGMA.numItems);
  const dropoutFree = {
    ...SIGMA,
    dropout: 0,
    categoryTemperature: 0.1,
    beta1: 1,
    lambda: 1,
    orthogonality: false,
  };
  const runs = [0.3, 1, 3].map((gumbelTemperature) => {
    const model = new Sigma({ ...dropoutFree, gumbelTemperature });
    const out = lossAndGrads(model, batch);
    const category = out.grads.get("category")!;
    model.params.dispose();
    return { loss: out.loss, category };
  });
  for (const [i, run] of runs.entries()) {
    assert(Number.isFinite(run.loss) && run.category.every(Number.isFinite), `run ${i} not finite`);
    assert(
      Math.abs(run.loss - runs[0].loss) <= 1e-6 * Math.max(1, Math.abs(runs[0].loss)),
      `gumbelTemperature changed the loss: ${run.loss} vs ${runs[0].loss}`,
    );
    if (i === 0) continue;
    // Measured: ~5e-4 of the gradient's largest entry. A Gumbel-softmax that ignores
    // gumbelTemperature runs the same float32 ops on the same numbers: a difference of 0.
    const diff = maxAbsDiff(run.category, runs[0].category);
    assert(
      diff > 1e-5 * maxAbs(runs[0].category),
      `gumbelTemperature did not move the category gradient (${diff})`,
    );
  }
});

Deno.test("mixture log-density: a zero-weight component does not count, even where it is the only one near, and gets no gradient", () => {
  // Invariant (lib/prob/distributions.ts, ZERO_LOG_WEIGHT): a component of weight exactly
  // 0 is absent from the mixture. At a point next to that component and far (log-density
  // ~ -800) from the live one, log p(x) is the live component's alone, and the zero
  // component's mean and log-variance get a gradient of exactly 0; every gradient is
  // finite. Flooring the weight at 1e-30 without the zero guard lets the zero component
  // count with log-weight -69, which here dominates; log(0) makes the weight gradient NaN.
  const d = 4;
  const x = tf.tensor1d([0.1, -0.2, 0.3, 0]);
  const weights = tf.tensor1d([0, 1]);
  const means = tf.tensor2d([[0, 0, 0, 0], [20, 20, 20, 20]]);
  const logVars = tf.tensor2d([[0, 0, 0, 0], [0, 0, 0, 0]]);
  const xs = [0.1, -0.2, 0.3, 0];
  const live = -0.5 * (xs.reduce((s, v) => s + (v - 20) ** 2, 0) + d * Math.log(2 * Math.PI));
  const got = tf.tidy(() => mixtureLogDensity(x, weights, means, logVars).dataSync()[0]);
  assert(Math.abs(got - live) <= 1e-5 * Math.abs(live), `log p = ${got}, the live one ${live}`);
  const [gx, gw, gm, gl] = tf.grads((a, w, m, l) => mixtureLogDensity(a, w, m, l))([
    x,
    weights,
    means,
    logVars,
  ]);
  for (const [i, g] of [gx, gw, gm, gl].entries()) {
    assert(g.dataSync().every(Number.isFinite), `gradient ${i} is not finite`);
  }
  const zeroMean = Array.from(gm.dataSync().subarray(0, d));
  const zeroLogVar = Array.from(gl.dataSync().subarray(0, d));
  assert(
    [...zeroMean, ...zeroLogVar].every((g) => g === 0),
    `the zero-weight component got a gradient: ${zeroMean} ${zeroLogVar}`,
  );
  assert(gm.dataSync().subarray(d).some((v) => v !== 0), "the live component has no gradient");
  // The same through the Monte-Carlo KL the SGM-VAE uses (z = x, posterior N(x, I)).
  const kl = tf.tidy(() =>
    mixturePriorKl(x, x, tf.zeros([d]), weights, means, logVars).dataSync()[0]
  );
  const logQ = -0.5 * d * Math.log(2 * Math.PI);
  assert(Math.abs(kl - (logQ - live)) <= 1e-5 * Math.abs(live), `KL ${kl}`);
  tf.dispose([x, weights, means, logVars, gx, gw, gm, gl]);
});

Deno.test("SIGMA trains through an interest of intensity exactly 0: finite loss and gradients, and no gradient on that interest from the mixture KL", () => {
  // Invariant: an interest that no item of the history is assigned to has intensity
  // (mixture weight) exactly 0; SGM-VAE's KL against the mixture prior then treats it as
  // absent. categoryTemperature 1e-4 makes the item-to-category softmax underflow to
  // exact 0s; the batch holds only items whose weight on interest j is 0. With beta1 = 0
  // and no orthogonality loss, category row g_j reaches the loss only through the mixture
  // KL (via its log-variance MLP), so one training step gives finite loss and gradients,
  // and g_j's gradient is exactly 0 (the other rows' is not). A mixture term that lets a
  // zero weight count as 1e-30 gives g_j a (tiny) gradient; log(0) makes gradients NaN.
  const config = {
    ...SIGMA,
    categoryTemperature: 1e-4,
    beta1: 0,
    orthogonality: false,
    lambda: 1,
    dropout: 0,
  };
  const model = new Sigma(config);
  const k = config.interests!;
  const a = tf.tidy(() => model.itemCategories().arraySync() as number[][]); // [N + 1, k]
  const zeroOn = (j: number) =>
    a.flatMap((row, item) => item > 0 && row[j] === 0 && row.some((v) => v > 0) ? [item] : []);
  const j = [...Array(k).keys()].reduce((best, i) =>
    zeroOn(i).length > zeroOn(best).length ? i : best
  );
  const items = zeroOn(j);
  assert(items.length >= 4, `only ${items.length} items with weight 0 on interest ${j}`);
  // Rows of 2..5 real inputs from those items, left-padded, a target after each.
  const length = 5;
  const rows = 4;
  const batch: TrainBatch = {
    batch: rows,
    length,
    inputs: new Int32Array(rows * length),
    targets: new Int32Array(rows * length),
  };
  for (let b = 0; b < rows; b++) {
    const real = Math.min(length, b + 2);
    for (let t = 0; t < real; t++) {
      const at = b * length + length - real + t;
      batch.inputs[at] = items[(b * 3 + t) % items.length];
      batch.targets[at] = items[(b * 3 + t + 1) % items.length];
    }
  }
  // Precondition: the intensity of interest j is exactly 0 at every real position, and the
  // intensities still sum to 1 there.
  const intensity = tf.tidy(() =>
    model.interestsOf(batch.inputs, rows, length).intensity.arraySync() as number[][][]
  );
  for (let b = 0; b < rows; b++) {
    for (let t = 0; t < length; t++) {
      if (batch.inputs[b * length + t] === 0) continue;
      const alpha = intensity[b][t];
      assertEquals(alpha[j], 0, `intensity of interest ${j} at row ${b}, position ${t}`);
      assert(Math.abs(alpha.reduce((s, v) => s + v, 0) - 1) < 1e-5, "intensities do not sum to 1");
    }
  }
  const { loss, grads, names } = lossAndGrads(model, batch);
  assert(Number.isFinite(loss), `loss ${loss}`);
  for (const name of names) {
    assert(grads.get(name)!.every(Number.isFinite), `gradient of ${name} is not finite`);
  }
  const d = config.hidden!;
  const category = grads.get("category")!; // [k, d]
  const zeroRow = Array.from(category.subarray(j * d, (j + 1) * d));
  assert(
    zeroRow.every((g) => g === 0),
    `interest ${j} (weight 0) got a gradient from the mixture KL: ${zeroRow}`,
  );
  for (let i = 0; i < k; i++) {
    if (i === j) continue;
    assert(
      category.subarray(i * d, (i + 1) * d).some((v) => v !== 0),
      `interest ${i} got no gradient: the test cannot tell`,
    );
  }
  model.params.dispose();
});
