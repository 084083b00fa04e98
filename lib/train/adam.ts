/**
 * Adam with one step count per variable, as PyTorch's `torch.optim.Adam` keeps it.
 *
 * tfjs's `tf.train.adam` counts steps for the optimizer as a whole and updates every
 * variable of the gradient map by position. Two things differ from the PyTorch code the
 * models come from, and both matter when part of a model joins training late (SIGMA's
 * `--hard-interests-from`, the authors' GRU path from epoch 30):
 * - a variable that first gets a gradient at step 2,400 was bias-corrected as if it had
 *   2,400 steps of history: its first updates were about 3 times the learning rate, where
 *   PyTorch's are the learning rate;
 * - a variable without a gradient still moved by its momentum (the trainer had to give it a
 *   zero gradient to keep tfjs's moments in place), where PyTorch leaves it alone.
 *
 * Here a variable's moments and step count start at its first gradient, a step without
 * one leaves it untouched, and the update is computed with exactly tfjs's float32
 * operations, so a variable that gets a gradient at every step follows `tf.train.adam`
 * bit for bit.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/** One variable's Adam state. */
interface Slot {
  /** First moment. */
  m: tf.Variable;
  /** Second moment. */
  v: tf.Variable;
  /** Steps this variable has taken. */
  steps: number;
  /** beta1 to the power steps + 1, accumulated in float32 as tfjs accumulates it. */
  acc1: number;
  /** beta2 to the power steps + 1, likewise. */
  acc2: number;
}

/** Adam's state of one variable, for a checkpoint (see {@linkcode Adam.state}). */
export interface AdamSlotState {
  /** First moment, the variable's shape flattened. */
  m: Float32Array;
  /** Second moment. */
  v: Float32Array;
  /** Steps the variable has taken; 0: none yet (the moments are then zeros). */
  steps: number;
}

/**
 * Adam (Kingma and Ba) with per-variable step counts; see the module documentation.
 *
 * @example Usage
 * ```ts
 * import * as tf from "@tensorflow/tfjs-core";
 * import { selectBackend } from "../../backends/mod.ts";
 * import { Adam } from "./adam.ts";
 * await selectBackend("cpu");
 * const w = tf.variable(tf.tensor1d([1, -2]));
 * const adam = new Adam(0.1);
 * const { grads } = tf.variableGrads(() => tf.sum(tf.square(w)) as tf.Scalar, [w]);
 * adam.applyGradients(grads); // a first step: each entry moves by 0.1 against its gradient
 * // w is now [0.9, -1.9]
 * adam.dispose();
 * ```
 */
export class Adam {
  /** Step size; the trainer changes it between epochs (StepLR). */
  learningRate: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  #slots = new Map<string, Slot>();

  /**
   * @param learningRate Step size.
   * @param beta1 Decay of the first moment. Default 0.9.
   * @param beta2 Decay of the second moment. Default 0.999.
   * @param epsilon Added to the second moment's root. Default 1e-8 (PyTorch's; tfjs's is 1e-7).
   */
  constructor(learningRate: number, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8) {
    this.learningRate = learningRate;
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.epsilon = epsilon;
  }

  /**
   * One step of every variable named in `grads` (variables by name, as `tf.variableGrads`
   * returns them); variables not named are left as they are.
   *
   * @throws {RangeError} A name that is no registered variable, or a gradient of another
   * shape than its variable.
   */
  applyGradients(grads: Record<string, tf.Tensor>): void {
    const variables = tf.engine().registeredVariables;
    for (const [name, gradient] of Object.entries(grads)) {
      const variable = variables[name];
      if (variable === undefined) throw new RangeError(`Adam: no variable named "${name}"`);
      if (!tf.util.arraysEqual(variable.shape, gradient.shape)) {
        throw new RangeError(
          `Adam: gradient of "${name}" has shape [${gradient.shape}], the variable [${variable.shape}]`,
        );
      }
      const slot = this.#slot(name, variable);
      tf.tidy(() => {
        // tfjs's AdamOptimizer, operation for operation, with this variable's own powers.
        const m = tf.add(tf.mul(slot.m, this.beta1), tf.mul(gradient, 1 - this.beta1));
        const v = tf.add(
          tf.mul(slot.v, this.beta2),
          tf.mul(tf.square(gradient), 1 - this.beta2),
        );
        const mHat = tf.div(m, tf.scalar(Math.fround(1 - slot.acc1)));
        const vHat = tf.div(v, tf.scalar(Math.fround(1 - slot.acc2)));
        slot.m.assign(m);
        slot.v.assign(v);
        const step = tf.mul(tf.div(mHat, tf.add(tf.sqrt(vHat), this.epsilon)), -this.learningRate);
        variable.assign(tf.add(step, variable));
      });
      this.#advance(slot);
    }
  }

  /**
   * The largest second moment `v` over every variable's state, and the (tf) name of the
   * variable holding it (`null` before the first step). A `v` far above the square of a
   * parameter's usual gradient makes its step `m / sqrt(v)` vanish until `v` decays (by
   * `beta2` a step: with 0.999, ~2,300 steps per factor 10): what one huge gradient leaves
   * behind.
   */
  async largestSecondMoment(): Promise<{ param: string; v: number } | null> {
    const names = [...this.#slots.keys()];
    if (names.length === 0) return null;
    const maxima = tf.tidy(() => tf.stack(names.map((name) => tf.max(this.#slots.get(name)!.v))));
    const values = await maxima.data();
    maxima.dispose();
    let at = 0;
    for (let i = 1; i < values.length; i++) if (values[i] > values[at]) at = i;
    return { param: names[at], v: values[at] };
  }

  /**
   * Every variable's state, in the order given (zeros and 0 steps for one that has had no
   * gradient yet), for a checkpoint.
   */
  async state(variables: readonly tf.Variable[]): Promise<AdamSlotState[]> {
    return await Promise.all(variables.map(async (variable) => {
      const slot = this.#slots.get(variable.name);
      if (!slot) {
        const size = variable.size;
        return { m: new Float32Array(size), v: new Float32Array(size), steps: 0 };
      }
      return {
        m: await slot.m.data() as Float32Array,
        v: await slot.v.data() as Float32Array,
        steps: slot.steps,
      };
    }));
  }

  /**
   * Puts back what {@linkcode Adam.state} returned, variable by variable; the next step
   * then computes what it would have computed without the interruption.
   *
   * @throws {RangeError} A state of the wrong size, or a negative or fractional step count.
   */
  restore(variables: readonly tf.Variable[], states: readonly AdamSlotState[]): void {
    if (states.length !== variables.length) {
      throw new RangeError(
        `Adam.restore: ${states.length} states for ${variables.length} variables`,
      );
    }
    variables.forEach((variable, i) => {
      const { m, v, steps } = states[i];
      if (m.length !== variable.size || v.length !== variable.size) {
        throw new RangeError(
          `Adam.restore: "${variable.name}" has ${variable.size} values, its moments ${m.length} and ${v.length}`,
        );
      }
      if (!Number.isInteger(steps) || steps < 0) {
        throw new RangeError(`Adam.restore: "${variable.name}" has steps ${steps}`);
      }
      this.#drop(variable.name);
      if (steps === 0) return;
      const slot = this.#slot(variable.name, variable);
      tf.tidy(() => {
        slot.m.assign(tf.tensor(m, variable.shape));
        slot.v.assign(tf.tensor(v, variable.shape));
      });
      // The powers as the uninterrupted run accumulated them, product by product.
      while (slot.steps < steps) this.#advance(slot);
    });
  }

  /** Frees every moment. */
  dispose(): void {
    for (const name of [...this.#slots.keys()]) this.#drop(name);
  }

  #slot(name: string, variable: tf.Variable): Slot {
    let slot = this.#slots.get(name);
    if (!slot) {
      slot = {
        m: tf.tidy(() => tf.variable(tf.zerosLike(variable), false)),
        v: tf.tidy(() => tf.variable(tf.zerosLike(variable), false)),
        steps: 0,
        acc1: Math.fround(this.beta1),
        acc2: Math.fround(this.beta2),
      };
      this.#slots.set(name, slot);
    }
    return slot;
  }

  /** Counts a step of `slot` and moves its powers on, in float32 as tfjs's Adam does. */
  #advance(slot: Slot): void {
    slot.steps += 1;
    slot.acc1 = Math.fround(slot.acc1 * Math.fround(this.beta1));
    slot.acc2 = Math.fround(slot.acc2 * Math.fround(this.beta2));
  }

  #drop(name: string): void {
    const slot = this.#slots.get(name);
    if (!slot) return;
    slot.m.dispose();
    slot.v.dispose();
    this.#slots.delete(name);
  }
}
