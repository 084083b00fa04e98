/**
 * Inverted dropout whose mask comes from a counter-based generator, Philox2x32-10 (Salmon
 * et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), so that every backend
 * draws the same mask from the same seed without a sequential stream: element `i` of a
 * tensor is kept when word `i mod 2` of `philox(counter = (floor(i / 2), 0), key = seed)`
 * is at least `ceil(rate * 2^32)`.
 *
 * Why this generator: a mask that is a pure function of (seed, index) can be drawn where
 * the tensor is. The webgpu backend registers {@linkcode DROPOUT_KERNEL}, which draws it
 * inside the same dispatch that applies it (one dispatch forward, one backward: the
 * gradient is the same kernel applied to the incoming gradient, as the mask is recomputed
 * from the seed). wasm registers it too (bmm.wasm's loop on the heap: no JavaScript, no
 * upload). cpu draws the mask on the host with {@linkcode dropoutMask} and multiplies: the
 * reference the kernels are tested against. Both compute `x * m` with the same
 * float32 `m` (0 or `1 / (1 - rate)`), so they agree bit for bit.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor } from "./tensor_types.ts";

/**
 * Kernel `x -> x * mask(seed, rate)` (attrs `seed`, `threshold`, `scale`): see the module
 * documentation for the mask. Registered by `backends/` where drawing on the device pays.
 */
export const DROPOUT_KERNEL = "SigmaDropout";

/** Philox2x32's multiplier and Weyl key increment (Random123's constants). */
const PHILOX_M = 0xd256d193;
const PHILOX_W = 0x9e3779b9;

/** The high 32 bits of the 64-bit product of two u32, from 16-bit halves (exact in doubles). */
function mulHi(a: number, b: number): number {
  const aLo = a & 0xffff, aHi = a >>> 16, bLo = b & 0xffff, bHi = b >>> 16;
  const lh = aLo * bHi, hl = aHi * bLo;
  const mid = ((aLo * bLo) >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (aHi * bHi + (lh >>> 16) + (hl >>> 16) + (mid >>> 16)) >>> 0;
}

/**
 * Philox2x32-10 of the counter `(c0, c1)` under `key`: two u32 words. Checked against
 * Random123's known-answer vectors in the tests.
 */
export function philox2x32(c0: number, c1: number, key: number): [number, number] {
  let x0 = c0 >>> 0, x1 = c1 >>> 0, k = key >>> 0;
  for (let round = 0; round < 10; round++) {
    if (round > 0) k = (k + PHILOX_W) >>> 0;
    const lo = Math.imul(x0, PHILOX_M) >>> 0;
    const hi = mulHi(x0, PHILOX_M);
    x0 = (hi ^ k ^ x1) >>> 0;
    x1 = lo;
  }
  return [x0, x1];
}

/** The u32 threshold a word must reach to keep its element: `ceil(rate * 2^32)`. */
export function keepThreshold(rate: number): number {
  return Math.min(0xffffffff, Math.ceil(rate * 2 ** 32));
}

/** The float32 value of a kept mask entry, `1 / (1 - rate)`. */
export function keepScale(rate: number): number {
  return Math.fround(1 / (1 - rate));
}

/**
 * The dropout mask of `size` elements for `seed` (u32) and `rate`: `1 / (1 - rate)` where
 * an element is kept, 0 elsewhere, as float32. The host reference of {@linkcode
 * DROPOUT_KERNEL}.
 */
export function dropoutMask(size: number, rate: number, seed: number): Float32Array {
  return maskWithThreshold(size, keepThreshold(rate), keepScale(rate), seed);
}

/**
 * {@linkcode dropoutMask} from the kernel's attributes: an element is kept (`scale`) when its
 * Philox word reaches the u32 `threshold`.
 */
export function maskWithThreshold(
  size: number,
  threshold: number,
  scale: number,
  seed: number,
): Float32Array {
  const mask = new Float32Array(size);
  // Philox's rounds inline, with the multiplier's halves hoisted (no array per pair): this
  // loop is most of the cost of dropout on cpu and wasm.
  const mLo = PHILOX_M & 0xffff, mHi = PHILOX_M >>> 16;
  for (let pair = 0; pair * 2 < size; pair++) {
    let x0 = pair, x1 = 0, k = seed >>> 0;
    for (let round = 0; round < 10; round++) {
      if (round > 0) k = (k + PHILOX_W) >>> 0;
      const lo = Math.imul(x0, PHILOX_M) >>> 0;
      const aLo = x0 & 0xffff, aHi = x0 >>> 16;
      const lh = aLo * mHi, hl = aHi * mLo;
      const mid = ((aLo * mLo) >>> 16) + (lh & 0xffff) + (hl & 0xffff);
      const hi = aHi * mHi + (lh >>> 16) + (hl >>> 16) + (mid >>> 16);
      x0 = (hi ^ k ^ x1) >>> 0;
      x1 = lo;
    }
    const i = pair * 2;
    if (x0 >= threshold) mask[i] = scale;
    if (i + 1 < size && x1 >= threshold) mask[i + 1] = scale;
  }
  return mask;
}

function hasKernel(): boolean {
  return tf.getKernel(DROPOUT_KERNEL, tf.getBackend()) !== undefined;
}

/**
 * Inverted dropout of `x` with `rate`, its mask drawn from `seed` (see the module
 * documentation). Identity when `rate` is 0 or `seed` is null (inference).
 *
 * @throws {RangeError} `rate` outside [0, 1): a rate of 1 would scale by infinity.
 */
export function dropout(x: Tensor, rate: number, seed: number | null): Tensor {
  if (!(rate >= 0 && rate < 1)) {
    throw new RangeError(`dropout rate must be in [0, 1), got ${rate}`);
  }
  if (rate === 0 || seed === null) return x;
  const attrs = { seed: seed >>> 0, threshold: keepThreshold(rate), scale: keepScale(rate) };
  if (!hasKernel()) return tf.mul(x, tf.tensor(dropoutMask(x.size, rate, seed), x.shape));
  const run = (t: Tensor) =>
    tf.engine().runKernel(DROPOUT_KERNEL, { x: t }, attrs as unknown as tf.NamedAttrMap) as Tensor;
  // The gradient is the same mask applied to dy: the kernel recomputes it from the seed.
  const fused = tf.customGrad((input) => ({
    value: run(input as Tensor),
    gradFunc: (dy) => run(dy as Tensor),
  }));
  return fused(x);
}
