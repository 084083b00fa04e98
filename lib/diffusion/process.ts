/**
 * The diffusion processes on tensors: the forward marginal `q(x_t | x_0)`, the DDPM
 * posterior and reverse step, the whole reverse chain, the sinusoidal step embedding, the
 * uncertainty weights Λ and DiffuRecSys's training noise (spec `DIFFUREC.md` §2.4-§2.8,
 * §3.2). Coefficients come from a {@linkcode DiffusionSchedule} (float64 on the host);
 * random draws are seeded, so every backend draws the same numbers.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor, Tensor2D } from "@tensorflow/tfjs-core";
import type { DiffusionSchedule } from "./schedule.ts";
import { Rng } from "../data/random.ts";

/** Per-example coefficients `[B, 1]` of the steps `t` (one per row). */
function perRow(values: Float64Array, t: ArrayLike<number>): Tensor2D {
  return tf.tensor2d(Float32Array.from(t, (step) => values[step]), [t.length, 1]);
}

/**
 * A sample of `q(x_t | x_0) = N(sqrt(alphaBar_t) x_0, (1 - alphaBar_t) I)`:
 * `sqrt(alphaBar_t) x0 + sqrt(1 - alphaBar_t) noise`, one step per row.
 *
 * @param x0 Clean vectors `[B, d]`.
 * @param t Steps `[B]`, each in `0..T-1`.
 * @param noise Standard normal noise `[B, d]` (or DiffuRecSys's, see {@linkcode trainingNoise}).
 * @param schedule The schedule.
 * @returns `x_t` `[B, d]`.
 */
export function forwardSample(
  x0: Tensor2D,
  t: ArrayLike<number>,
  noise: Tensor2D,
  schedule: DiffusionSchedule,
): Tensor2D {
  return tf.tidy(() => {
    const keep = perRow(schedule.alphaBars.map(Math.sqrt), t);
    const mix = perRow(schedule.alphaBars.map((a) => Math.sqrt(1 - a)), t);
    return tf.add(tf.mul(x0, keep), tf.mul(noise, mix)) as Tensor2D;
  });
}

/**
 * The DDPM posterior mean of `x_{t-1}` given `x_t` and a prediction of `x_0`, for all
 * rows at one step `t`: `c1_t x0 + c2_t x_t`.
 */
export function posteriorMean(
  x0: Tensor2D,
  xt: Tensor2D,
  t: number,
  schedule: DiffusionSchedule,
): Tensor2D {
  return tf.tidy(() =>
    tf.add(tf.mul(x0, schedule.posteriorX0[t]), tf.mul(xt, schedule.posteriorXt[t])) as Tensor2D
  );
}

/**
 * One reverse step: the posterior mean plus, for `t > 0`, `sigma_t noise` with the "fixed
 * large" variance. At `t = 0` it returns the prediction `x0` itself (c1 = 1, c2 = 0).
 */
export function reverseStep(
  x0: Tensor2D,
  xt: Tensor2D,
  t: number,
  noise: Tensor2D,
  schedule: DiffusionSchedule,
): Tensor2D {
  if (t === 0) return tf.clone(x0);
  return tf.tidy(() => {
    const mean = posteriorMean(x0, xt, t, schedule);
    const sigma = Math.exp(0.5 * schedule.reverseLogVariance[t]);
    return tf.add(mean, tf.mul(noise, sigma)) as Tensor2D;
  });
}

/**
 * The reverse chain from `xT`: for t = T-1 down to 0, `x0 = predict(x, t)` then one
 * {@linkcode reverseStep} with `noise(t)` (not called at t = 0). `predict` gets the
 * chain's step `t` (`schedule.timesteps[t]` is the original step). Intermediate tensors are
 * freed.
 *
 * @param predict The model's `x_0` prediction from `x_t` at step `t` (`[B, d]`).
 * @param xT The start `[B, d]`, usually standard normal.
 * @param schedule The schedule (respaced for a shorter chain).
 * @param noise Standard normal noise `[B, d]` for step `t > 0`.
 * @returns The final vector `[B, d]`: the `x_0` predicted at the last step.
 */
export function reverseChain(
  predict: (x: Tensor2D, t: number) => Tensor2D,
  xT: Tensor2D,
  schedule: DiffusionSchedule,
  noise: (t: number) => Tensor2D,
): Tensor2D {
  let x = tf.clone(xT);
  for (let t = schedule.steps - 1; t >= 0; t--) {
    const next = tf.tidy(() => {
      const x0 = predict(x, t);
      return t === 0 ? x0 : reverseStep(x0, x, t, noise(t), schedule);
    });
    x.dispose();
    x = next;
  }
  return x;
}

/**
 * The sinusoidal step embedding: for `d/2` frequencies `w_k = exp(-ln(10000) k / (d/2))`,
 * `[cos(s w_0), .., cos(s w_{d/2-1}), sin(s w_0), .., sin(s w_{d/2-1})]` (all cosines
 * first), with a zero appended when `d` is odd. `s` is the step as the network sees it:
 * `t * 1000 / T` when rescaled, as the authors' code does.
 *
 * @param steps The steps as the network sees them `[B]`.
 * @param d Width.
 * @returns `[B, d]`.
 */
export function stepEmbedding(steps: ArrayLike<number>, d: number): Tensor2D {
  const half = Math.floor(d / 2);
  const out = new Float32Array(steps.length * d);
  for (let b = 0; b < steps.length; b++) {
    for (let k = 0; k < half; k++) {
      const angle = steps[b] * Math.exp(-Math.log(10000) * k / half);
      out[b * d + k] = Math.cos(angle);
      out[b * d + half + k] = Math.sin(angle);
    }
  }
  return tf.tensor2d(out, [steps.length, d]);
}

/** The steps of `t` as the network sees them: `t * 1000 / T` when `rescale`, else `t`. */
export function networkSteps(
  t: ArrayLike<number>,
  schedule: DiffusionSchedule,
  rescale: boolean,
): Float64Array {
  const scale = rescale ? 1000 / schedule.originalSteps : 1;
  return Float64Array.from(t, (step) => schedule.timesteps[step] * scale);
}

/** How the uncertainty weights Λ are drawn. */
export type LambdaMode = "sampled" | "fixed";

/**
 * The uncertainty weights Λ `[B, length, d]`: every element drawn from `N(lambda, lambda²)`
 * (`sampled`, the authors' code), or every element `lambda` (`fixed`). Row r draws from
 * its own seed (see {@linkcode rowNormals}) and fills its positions from the newest back,
 * so a row's real (rightmost) positions get the same draws however far its batch is padded.
 */
export function uncertaintyWeights(
  rowSeeds: ArrayLike<number>,
  length: number,
  d: number,
  lambda: number,
  mode: LambdaMode,
): Tensor {
  const shape: [number, number, number] = [rowSeeds.length, length, d];
  if (mode === "fixed" || lambda === 0) return tf.fill(shape, lambda);
  const draws = rowNormals(rowSeeds, length * d, lambda, Math.abs(lambda));
  const out = new Float32Array(draws.length);
  for (let r = 0; r < rowSeeds.length; r++) {
    for (let p = 0; p < length; p++) {
      const from = (r * length + (length - 1 - p)) * d;
      out.set(draws.subarray(from, from + d), (r * length + p) * d);
    }
  }
  return tf.tensor3d(out, shape);
}

/** DiffuRecSys's training noise modes (spec §3.2). */
export type OffsetNoise = "none" | "compat" | "shared";

/**
 * The noise of the training forward process `[B, d]`, one seeded stream per row (see
 * {@linkcode rowNormals}): standard normal (`none`), plus `scale` times a second
 * independent normal per element (`compat`, what DiffuRecSys's code did when it was on:
 * isotropic, variance `1 + scale²`), or plus `scale` times one normal per row shared by its
 * d elements (`shared`, offset noise proper: covariance `scale²` between dimensions).
 */
export function trainingNoise(
  rowSeeds: ArrayLike<number>,
  d: number,
  mode: OffsetNoise,
  scale: number,
): Tensor2D {
  const rows = rowSeeds.length;
  const noise = rowNormals(rowSeeds, d);
  if (mode !== "none") {
    const extraSeeds = Array.from(rowSeeds, (s) => mixSeed(s, 0x5bd1e995));
    const extra = rowNormals(extraSeeds, mode === "compat" ? d : 1, 0, scale);
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < d; i++) {
        noise[r * d + i] += mode === "compat" ? extra[r * d + i] : extra[r];
      }
    }
  }
  return tf.tensor2d(noise, [rows, d]);
}

/**
 * Normal draws on the host, `perRow` per row, each row from its own seed: a row's numbers
 * do not depend on the other rows of its batch (so a history gets the same recommendations
 * alone or batched), and every backend sees the same numbers.
 *
 * @param rowSeeds One seed per row.
 * @param perRow Draws per row.
 * @param mean Mean of every draw.
 * @param std Standard deviation of every draw.
 * @returns `Float32Array` of `rowSeeds.length * perRow` draws, row-major.
 */
export function rowNormals(
  rowSeeds: ArrayLike<number>,
  perRow: number,
  mean = 0,
  std = 1,
): Float32Array {
  const out = new Float32Array(rowSeeds.length * perRow);
  for (let r = 0; r < rowSeeds.length; r++) {
    const rng = new Rng(rowSeeds[r]);
    const base = r * perRow;
    for (let i = 0; i < perRow; i++) out[base + i] = mean + std * rng.normal();
  }
  return out;
}

/** A 32-bit seed mixed from `seed` and `salt` (splitmix-style), for separate streams. */
export function mixSeed(seed: number, salt: number): number {
  let z = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul((salt + 1) >>> 0, 0x85ebca77)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}
