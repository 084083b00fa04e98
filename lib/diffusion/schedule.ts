/**
 * Noise schedules of the diffusion recommenders (DiffuRec, DiffuRecSys): the betas, the
 * cumulative products and every coefficient of the forward process and of the DDPM
 * posterior, computed once on the host in float64 (spec: `DIFFUREC.md` §2.3, §2.8).
 *
 * Index convention, as in the authors' code: step `t` runs from 0 to T - 1, and `t = 0`
 * is already one noising step (`alphaBar[0] = 1 - beta[0]`); `alphaBarPrev[0] = 1`.
 *
 * @module
 */

/** The schedules the authors' code knows; `trunc_lin` is its default. */
export const SCHEDULE_NAMES = [
  "trunc_lin",
  "linear",
  "cosine",
  "sqrt",
  "trunc_cos",
  "pw_lin",
] as const;

/** A schedule's name. */
export type ScheduleName = typeof SCHEDULE_NAMES[number];

/** Betas of the `alphaBar`-defined schedules are capped here, as in improved DDPM. */
const MAX_BETA = 0.999;

/**
 * The T betas of a named schedule. With `scale = 1000 / T`:
 * - `trunc_lin`: linear from `1e-4 scale + 0.01` to `0.02 scale + 0.01`, the end replaced by
 *   `1e-3 scale + 0.01` when it would exceed 1 (T <= 20);
 * - `linear`: linear from `1e-4 scale` to `0.02 scale` (Ho et al., any T);
 * - `cosine`, `sqrt`: `min(1 - a((t + 1) / T) / a(t / T), 0.999)` for
 *   `a(u) = cos²((u + 0.008) / 1.008 · π/2)` and `a(u) = 1 - sqrt(u + 1e-4)`;
 * - `trunc_cos`: `a(u) = cos²((u + 0.1) / 1.1 · π/2)`, first beta `min(1 - a(0), 0.999)`,
 *   then `min(1 - a(t / T) / a((t - 1) / T), 0.999)`;
 * - `pw_lin`: 10 steps linear from `1e-4 scale + 0.01` down to `1e-4 scale`, then T - 10
 *   steps linear from `1e-4 scale` to `0.02 scale`.
 *
 * @example Usage
 * ```ts
 * import { betaSchedule } from "./schedule.ts";
 * const betas = betaSchedule("trunc_lin", 32); // betas[0] = 0.013125, betas[31] = 0.635
 * ```
 *
 * @param name The schedule.
 * @param steps T, the number of diffusion steps (>= 1; `pw_lin` needs > 10).
 * @returns `Float64Array` of T betas.
 * @throws {RangeError} An unknown name, a step count out of range, or a beta outside
 * (0, 1] (`linear` needs T >= 20).
 */
export function betaSchedule(name: ScheduleName, steps: number): Float64Array {
  return checkedBetas(name, steps, namedBetas(name, steps));
}

function namedBetas(name: ScheduleName, steps: number): Float64Array {
  if (!Number.isInteger(steps) || steps < 1) {
    throw new RangeError(`steps must be a positive integer, got ${steps}`);
  }
  const scale = 1000 / steps;
  switch (name) {
    case "trunc_lin": {
      const start = scale * 1e-4 + 0.01;
      let end = scale * 0.02 + 0.01;
      if (end > 1) end = scale * 1e-3 + 0.01;
      return linspace(start, end, steps);
    }
    case "linear":
      return linspace(scale * 1e-4, scale * 0.02, steps);
    case "cosine":
      return fromAlphaBar(steps, (u) => Math.cos((u + 0.008) / 1.008 * Math.PI / 2) ** 2);
    case "sqrt":
      return fromAlphaBar(steps, (u) => 1 - Math.sqrt(u + 1e-4));
    case "trunc_cos": {
      const a = (u: number) => Math.cos((u + 0.1) / 1.1 * Math.PI / 2) ** 2;
      const betas = new Float64Array(steps);
      betas[0] = Math.min(1 - a(0), MAX_BETA);
      for (let t = 1; t < steps; t++) {
        betas[t] = Math.min(1 - a(t / steps) / a((t - 1) / steps), MAX_BETA);
      }
      return betas;
    }
    case "pw_lin": {
      if (steps <= 10) throw new RangeError(`pw_lin needs more than 10 steps, got ${steps}`);
      const mid = scale * 1e-4;
      const first = linspace(scale * 1e-4 + 0.01, mid, 10);
      const second = linspace(mid, scale * 0.02, steps - 10);
      const betas = new Float64Array(steps);
      betas.set(first);
      betas.set(second, 10);
      return betas;
    }
    default:
      throw new RangeError(
        `unknown schedule "${name}": expected one of ${SCHEDULE_NAMES.join(", ")}`,
      );
  }
}

/** {@linkcode betaSchedule}'s betas, refused when one leaves (0, 1] (`linear` below T = 20). */
function checkedBetas(name: string, steps: number, betas: Float64Array): Float64Array {
  const bad = betas.findIndex((b) => !(b > 0 && b <= 1));
  if (bad >= 0) {
    throw new RangeError(
      `schedule ${name} with ${steps} steps has beta ${bad} = ${betas[bad]}, outside (0, 1]; ` +
        `use more steps or another schedule`,
    );
  }
  return betas;
}

/** numpy's `linspace(start, end, n)`: n points, both ends included. */
function linspace(start: number, end: number, n: number): Float64Array {
  const out = new Float64Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const step = (end - start) / (n - 1);
  for (let i = 0; i < n; i++) out[i] = start + i * step;
  out[n - 1] = end;
  return out;
}

function fromAlphaBar(steps: number, a: (u: number) => number): Float64Array {
  const betas = new Float64Array(steps);
  for (let t = 0; t < steps; t++) {
    betas[t] = Math.min(1 - a((t + 1) / steps) / a(t / steps), MAX_BETA);
  }
  return betas;
}

/** Every coefficient the forward process and the reverse chain need, per step. */
export interface DiffusionSchedule {
  /** Steps of the chain (T, or fewer when respaced). */
  readonly steps: number;
  /**
   * The original step each step stands for (`0..T-1`): what the step embedding is given.
   * The identity unless respaced.
   */
  readonly timesteps: Int32Array;
  /** T of the schedule this one was taken from (the step embedding's scale is 1000 / T). */
  readonly originalSteps: number;
  /** beta_t. */
  readonly betas: Float64Array;
  /** alpha_t = 1 - beta_t. */
  readonly alphas: Float64Array;
  /** alphaBar_t = prod_{k <= t} alpha_k. */
  readonly alphaBars: Float64Array;
  /** alphaBar_{t-1}, with alphaBar_{-1} = 1. */
  readonly alphaBarsPrev: Float64Array;
  /** c1_t = beta_t sqrt(alphaBar_{t-1}) / (1 - alphaBar_t): the posterior mean's x0 weight. */
  readonly posteriorX0: Float64Array;
  /** c2_t = (1 - alphaBar_{t-1}) sqrt(alpha_t) / (1 - alphaBar_t): its x_t weight. */
  readonly posteriorXt: Float64Array;
  /** betaTilde_t = beta_t (1 - alphaBar_{t-1}) / (1 - alphaBar_t), the posterior variance. */
  readonly posteriorVariance: Float64Array;
  /**
   * The reverse chain's log-variance, improved DDPM's "fixed large":
   * `log([betaTilde_1, beta_1, .., beta_{T-1}])` (betaTilde_1 at t = 0, whose noise is
   * never added).
   */
  readonly reverseLogVariance: Float64Array;
}

/**
 * The schedule of `betas`: cumulative products and posterior coefficients.
 *
 * @example Usage
 * ```ts
 * import { betaSchedule, diffusionSchedule } from "./schedule.ts";
 * const s = diffusionSchedule(betaSchedule("trunc_lin", 32));
 * // s.posteriorX0[0] = 1, s.posteriorXt[0] = 0: the last reverse step returns x0
 * ```
 *
 * @param betas The betas, each in (0, 1].
 * @param timesteps The original steps they stand for (default 0..T-1).
 * @param originalSteps T of the original schedule (default `betas.length`).
 * @throws {RangeError} A beta outside (0, 1].
 */
export function diffusionSchedule(
  betas: Float64Array,
  timesteps?: Int32Array,
  originalSteps?: number,
): DiffusionSchedule {
  const steps = betas.length;
  betas.forEach((b, t) => {
    if (!(b > 0 && b <= 1)) throw new RangeError(`beta ${t} is ${b}; betas must be in (0, 1]`);
  });
  const alphas = betas.map((b) => 1 - b);
  const alphaBars = new Float64Array(steps);
  const alphaBarsPrev = new Float64Array(steps);
  let product = 1;
  for (let t = 0; t < steps; t++) {
    alphaBarsPrev[t] = product;
    product *= alphas[t];
    alphaBars[t] = product;
  }
  const posteriorX0 = new Float64Array(steps);
  const posteriorXt = new Float64Array(steps);
  const posteriorVariance = new Float64Array(steps);
  // t = 0: q(x_{-1} | x_0) is x_0 itself; exact, where the formulas lose the last bits.
  posteriorX0[0] = 1;
  for (let t = 1; t < steps; t++) {
    const oneMinus = 1 - alphaBars[t];
    posteriorX0[t] = betas[t] * Math.sqrt(alphaBarsPrev[t]) / oneMinus;
    posteriorXt[t] = (1 - alphaBarsPrev[t]) * Math.sqrt(alphas[t]) / oneMinus;
    posteriorVariance[t] = betas[t] * (1 - alphaBarsPrev[t]) / oneMinus;
  }
  const reverseLogVariance = new Float64Array(steps);
  for (let t = 0; t < steps; t++) {
    // At t = 0 the variance is never used (no noise is added); improved DDPM puts
    // betaTilde_1 there so the log stays finite.
    reverseLogVariance[t] = Math.log(
      t === 0 ? (steps > 1 ? posteriorVariance[1] : betas[0]) : betas[t],
    );
  }
  return {
    steps,
    timesteps: timesteps ?? Int32Array.from({ length: steps }, (_, t) => t),
    originalSteps: originalSteps ?? steps,
    betas,
    alphas,
    alphaBars,
    alphaBarsPrev,
    posteriorX0,
    posteriorXt,
    posteriorVariance,
    reverseLogVariance,
  };
}

/**
 * A chain of `count` steps taken evenly from `base` (improved DDPM's respacing): steps
 * `round(i (T - 1) / (count - 1))` (halves to even, as Python rounds), the betas recomputed from their alphaBars so that each
 * kept step keeps its marginal `q(x_t | x_0)`. The first and last steps are always kept.
 *
 * @example Usage
 * ```ts
 * import { betaSchedule, diffusionSchedule, respacedSchedule } from "./schedule.ts";
 * const eight = respacedSchedule(diffusionSchedule(betaSchedule("trunc_lin", 32)), 8);
 * // eight.timesteps = [0, 4, 9, 13, 18, 22, 27, 31]
 * ```
 *
 * @param base A schedule of T steps (not itself respaced).
 * @param count Steps to keep, 1..T.
 * @throws {RangeError} `count` out of range, or `base` already respaced.
 */
export function respacedSchedule(base: DiffusionSchedule, count: number): DiffusionSchedule {
  if (base.steps !== base.originalSteps) {
    throw new RangeError("respace the original schedule, not a respaced one");
  }
  if (!Number.isInteger(count) || count < 1 || count > base.steps) {
    throw new RangeError(`reverse steps must be an integer from 1 to ${base.steps}, got ${count}`);
  }
  if (count === base.steps) return base;
  const kept = new Int32Array(count);
  if (count === 1) kept[0] = base.steps - 1;
  else {
    const stride = (base.steps - 1) / (count - 1);
    for (let i = 0; i < count; i++) kept[i] = roundHalfEven(i * stride);
  }
  const betas = new Float64Array(count);
  let last = 1;
  kept.forEach((t, i) => {
    betas[i] = 1 - base.alphaBars[t] / last;
    last = base.alphaBars[t];
  });
  return diffusionSchedule(betas, kept, base.originalSteps);
}

/** Rounds to the nearest integer, halves to the even one (Python's `round`). */
function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const fraction = x - floor;
  if (fraction > 0.5) return floor + 1;
  if (fraction < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}
