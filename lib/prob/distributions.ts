/**
 * The probability pieces of SIGMA as tensor functions: diagonal-Gaussian log-densities and
 * KL divergences, the Gaussian-mixture log-density, the one-sample Monte-Carlo KL against
 * a mixture prior (paper Eq. 12), the (straight-through) Gumbel-softmax, and the
 * orthogonality loss of the category embeddings (Eq. 4). Each is checked by property
 * tests in `tests/distributions_property_test.ts`.
 *
 * Variances are always passed as log-variances, so every function is defined for any
 * real input and nothing divides by a variance that underflowed to zero.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Scalar, Tensor, Tensor2D } from "../nn/tensor_types.ts";
import { oneHotFloat, withCustomGradient } from "../nn/layers.ts";
import { seededNormal } from "../nn/params.ts";

const LOG_2PI = Math.log(2 * Math.PI);

/**
 * `log N(x | mean, diag(exp(logVar)))`, summed over the last axis, with the full
 * normalising constant. Shapes broadcast; the result drops the last axis.
 */
export function gaussianLogDensity(x: Tensor, mean: Tensor, logVar: Tensor): Tensor {
  const diff = tf.sub(x, mean);
  const scaled = tf.mul(tf.square(diff), tf.exp(tf.neg(logVar))); // (x - m)^2 / s^2
  const perDim = tf.add(tf.add(scaled, logVar), LOG_2PI); // [..., d]
  return tf.mul(tf.sum(perDim, -1), -0.5); // [...]
}

/**
 * Closed-form `KL(N(mean, diag(exp(logVar))) || N(0, I))` summed over the last axis:
 * `1/2 sum(exp(logVar) + mean^2 - 1 - logVar)` (paper Eq. 7 with its 1/2 factor).
 */
export function standardNormalKl(mean: Tensor, logVar: Tensor): Tensor {
  const perDim = tf.sub(tf.sub(tf.add(tf.exp(logVar), tf.square(mean)), 1), logVar);
  return tf.mul(tf.sum(perDim, -1), 0.5);
}

/**
 * Closed-form `KL(q || p)` of two diagonal Gaussians given by means and log-variances,
 * summed over the last axis:
 * `1/2 sum(logVarP - logVarQ + (exp(logVarQ) + (meanQ - meanP)^2) / exp(logVarP) - 1)`.
 */
export function gaussianKl(
  meanQ: Tensor,
  logVarQ: Tensor,
  meanP: Tensor,
  logVarP: Tensor,
): Tensor {
  const ratio = tf.mul(
    tf.add(tf.exp(logVarQ), tf.square(tf.sub(meanQ, meanP))),
    tf.exp(tf.neg(logVarP)),
  );
  const perDim = tf.sub(tf.add(tf.sub(logVarP, logVarQ), ratio), 1);
  return tf.mul(tf.sum(perDim, -1), 0.5);
}

/** Options of {@linkcode mixtureLogDensity}. */
export interface MixtureOptions {
  /**
   * Check on the host that every row of weights sums to 1 (within 1e-4) and is
   * non-negative, throwing a `RangeError` otherwise. This reads the weights back from the
   * device, so callers whose weights are normalised by construction turn it off.
   * Default true.
   */
  checkWeights?: boolean;
}

/** Positive weights below this are treated as this, so their log stays finite. */
const MIN_WEIGHT = 1e-30;
/**
 * The log-weight of a component whose weight is exactly 0: low enough that it never
 * counts in the log-sum-exp, where log(1e-30) = -69 did count against components whose own
 * log-density is below about -69 (a far-away point), yet finite, so gradients stay finite.
 */
const ZERO_LOG_WEIGHT = -1e9;

/**
 * `log sum_i w_i N(x | means_i, diag(exp(logVars_i)))`, computed as a log-sum-exp over
 * components so it stays finite when every component is far from `x`.
 *
 * @param x Points `[..., d]`.
 * @param weights Mixture weights `[..., k]`, each row summing to 1.
 * @param means Component means `[..., k, d]`.
 * @param logVars Component log-variances `[..., k, d]`.
 * @returns Log-densities `[...]`.
 * @throws {RangeError} A row of weights that does not sum to 1 or holds a negative value
 * (when `checkWeights` is on).
 */
export function mixtureLogDensity(
  x: Tensor,
  weights: Tensor,
  means: Tensor,
  logVars: Tensor,
  options: MixtureOptions = {},
): Tensor {
  if (options.checkWeights ?? true) checkMixtureWeights(weights);
  const components = gaussianLogDensity(tf.expandDims(x, -2), means, logVars); // [..., k]
  // A zero weight's log is log(1e-30) + ZERO_LOG_WEIGHT (arithmetic, not tf.where: Deno's
  // tfjs has no Select gradient). Its gradient stays 0: max() sends it to the constant.
  const isZero = tf.sub(1, tf.cast(tf.greater(weights, 0), "float32")); // [..., k]
  const logWeights = tf.add(
    tf.log(tf.maximum(weights, MIN_WEIGHT)),
    tf.mul(isZero, ZERO_LOG_WEIGHT),
  ); // [..., k]
  return tf.logSumExp(tf.add(components, logWeights), -1); // [...]
}

function checkMixtureWeights(weights: Tensor): void {
  const k = weights.shape[weights.shape.length - 1];
  const values = weights.dataSync();
  for (let row = 0; row * k < values.length; row++) {
    let sum = 0;
    for (let i = 0; i < k; i++) {
      const w = values[row * k + i];
      if (!(w >= 0)) {
        throw new RangeError(`Mixture weight ${i} of row ${row} is ${w}; weights must be >= 0`);
      }
      sum += w;
    }
    if (Math.abs(sum - 1) > 1e-4) {
      throw new RangeError(`Mixture weights of row ${row} sum to ${sum}, not 1`);
    }
  }
}

/**
 * One-sample Monte-Carlo estimate of `KL(q || p)` for a diagonal-Gaussian posterior `q`
 * and a Gaussian-mixture prior `p` (paper Eq. 12): `log q(z) - log p(z)` at a sample
 * `z ~ q`. Its expectation over `z` is the true KL (>= 0); a single value may be negative.
 *
 * @param z The sample `[..., d]`, drawn from `q` by the caller (reparameterised).
 * @param mean Posterior mean `[..., d]`.
 * @param logVar Posterior log-variance `[..., d]`.
 * @param weights Prior weights `[..., k]`, rows summing to 1.
 * @param means Prior component means `[..., k, d]`.
 * @param logVars Prior component log-variances `[..., k, d]`.
 * @returns The estimate `[...]`.
 */
export function mixturePriorKl(
  z: Tensor,
  mean: Tensor,
  logVar: Tensor,
  weights: Tensor,
  means: Tensor,
  logVars: Tensor,
  options: MixtureOptions = {},
): Tensor {
  return tf.sub(
    gaussianLogDensity(z, mean, logVar),
    mixtureLogDensity(z, weights, means, logVars, options),
  );
}

/** `mean + exp(logVar / 2) * eps` with `eps ~ N(0, I)` drawn from `seed`. */
export function reparameterise(mean: Tensor, logVar: Tensor, seed: number): Tensor {
  const eps = seededNormal(mean.shape, 0, 1, seed); // seed 0 too, unlike tf.randomNormal
  return tf.add(mean, tf.mul(tf.exp(tf.mul(logVar, 0.5)), eps));
}

/**
 * One-hot of each row's argmax over the last axis, with the straight-through gradient:
 * the gradient passes to `soft` unchanged, as if the op were the identity.
 */
export function straightThroughOneHot(soft: Tensor): Tensor {
  const k = soft.shape[soft.shape.length - 1];
  const f = withCustomGradient(1, ([s]) => ({
    value: oneHotFloat(tf.argMax(s, -1), k),
    gradFunc: (dy) => [dy],
  }));
  return f(soft);
}

/** Standard Gumbel noise `-log(-log U)` with `U` uniform in (0, 1), drawn from `seed`. */
export function gumbelNoise(shape: number[], seed: number): Tensor {
  const u = tf.randomUniform(shape, 1e-10, 1 - 1e-7, "float32", seed);
  return tf.neg(tf.log(tf.neg(tf.log(u))));
}

/**
 * Gumbel-softmax over the last axis: `softmax((logits + g) / temperature)` with Gumbel
 * noise `g` from `seed`. With `hard`, the forward value is the one-hot argmax of that
 * sample and the gradient is the soft sample's (straight-through).
 *
 * @throws {RangeError} A temperature that is not positive.
 */
export function gumbelSoftmax(
  logits: Tensor,
  temperature: number,
  seed: number,
  hard: boolean,
): Tensor {
  if (!(temperature > 0)) {
    throw new RangeError(`Gumbel-softmax temperature must be positive, got ${temperature}`);
  }
  const noisy = tf.add(logits, gumbelNoise(logits.shape, seed));
  const soft = tf.softmax(tf.div(noisy, temperature)); // softmax is over the last axis
  return hard ? straightThroughOneHot(soft) : soft;
}

/** Rows of `x` divided by their L2 norms (norms floored at `eps`). */
export function l2Normalise(x: Tensor, eps = 1e-12): Tensor {
  const norm = tf.sqrt(tf.maximum(tf.sum(tf.square(x), -1, true), eps * eps));
  return tf.div(x, norm);
}

/**
 * Orthogonality loss of category embeddings `[k, d]` (paper Eq. 4, squared as in the
 * authors' code): rows are L2-normalised, then `sum_{i != j} (g_i . g_j)^2`. Zero exactly
 * when the rows are pairwise orthogonal.
 */
export function orthogonalityLoss(categories: Tensor2D): Scalar {
  const g = l2Normalise(categories) as Tensor2D; // [k, d]
  const k = g.shape[0];
  const gram = tf.matMul(g, g, false, true); // [k, k], tiny: the transposed path is fine
  const offDiagonal = tf.sub(tf.ones([k, k]), tf.eye(k)); // [k, k]
  return tf.sum(tf.mul(tf.square(gram), offDiagonal)) as Scalar;
}
