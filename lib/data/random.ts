/**
 * A small deterministic pseudo-random number generator, so shuffles, initialisations and
 * synthetic data are reproducible from one integer seed on every platform.
 *
 * @module
 */

/**
 * A seeded generator based on mulberry32 (a 32-bit state, full 2^32 period, good enough
 * statistical quality for shuffling and sampling; not cryptographic).
 *
 * @example Usage
 * ```ts
 * import { Rng } from "./random.ts";
 * const rng = new Rng(42);
 * const order = rng.shuffle([0, 1, 2, 3]);
 * const u = rng.next(); // in [0, 1)
 * ```
 */
export class Rng {
  #state: number;
  // Box-Muller yields two normals per draw; keeping the second halves the cost.
  #spare: number | undefined;

  /**
   * Creates a generator from `seed`; equal seeds give equal streams.
   *
   * @param seed Any finite number; it is truncated to an unsigned 32-bit integer.
   */
  constructor(seed: number) {
    if (!Number.isFinite(seed)) {
      throw new RangeError(`Rng seed must be a finite number, got ${seed}`);
    }
    // Math.trunc first so that negative and fractional seeds map predictably.
    this.#state = Math.trunc(seed) >>> 0;
    this.#spare = undefined;
  }

  /**
   * The current 32-bit state; `rng.state = saved` resumes an exact stream (e.g. from a
   * checkpoint). Setting it discards a cached normal draw.
   */
  get state(): number {
    return this.#state;
  }

  set state(value: number) {
    if (!Number.isFinite(value)) {
      throw new RangeError(`Rng state must be a finite number, got ${value}`);
    }
    this.#state = Math.trunc(value) >>> 0;
    this.#spare = undefined;
  }

  /** Next unsigned 32-bit integer of the stream (mulberry32). */
  nextUint32(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float uniformly distributed in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /**
   * An integer uniformly distributed in [0, n).
   *
   * @param n A positive integer.
   */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0) {
      throw new RangeError(`Rng.int(n) needs a positive integer n, got ${n}`);
    }
    return Math.floor(this.next() * n);
  }

  /** A standard normal draw N(0, 1) (Box-Muller). */
  normal(): number {
    if (this.#spare !== undefined) {
      const s = this.#spare;
      this.#spare = undefined;
      return s;
    }
    // 1 - next() lies in (0, 1], so the logarithm is finite.
    const u = 1 - this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /**
   * An index drawn with probability proportional to `weights[i]`.
   *
   * @param weights Non-negative weights with a positive sum.
   */
  categorical(weights: ArrayLike<number>): number {
    let total = 0;
    for (let i = 0; i < weights.length; i++) {
      const w = weights[i];
      if (!(w >= 0) || !Number.isFinite(w)) {
        throw new RangeError(`Rng.categorical: weight ${i} is ${w}, expected finite and >= 0`);
      }
      total += w;
    }
    if (!(total > 0)) {
      throw new RangeError("Rng.categorical: weights must have a positive sum");
    }
    let x = this.next() * total;
    for (let i = 0; i < weights.length; i++) {
      x -= weights[i];
      if (x < 0) return i;
    }
    // Rounding can leave x at a hair above zero; the last positive weight takes it.
    for (let i = weights.length - 1; i >= 0; i--) if (weights[i] > 0) return i;
    return weights.length - 1;
  }

  /**
   * Shuffles `array` in place (Fisher-Yates) and returns it.
   *
   * @param array Any mutable array-like, e.g. an `Array` or a typed array.
   */
  shuffle<T extends { length: number; [i: number]: unknown }>(array: T): T {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = array[i];
      array[i] = array[j];
      array[j] = tmp;
    }
    return array;
  }
}
