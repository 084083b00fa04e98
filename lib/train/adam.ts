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
 * On a backend with the kernel {@linkcode FUSED_ADAM_KERNEL} registered (webgpu:
 * `backends/_webgpu_adam.ts`), the same step is one kernel call for all variables: the
 * moments then live in two flat tensors (every variable's at its own offset) and the
 * kernel writes them and the parameters in place, a few GPU dispatches a step instead of
 * 14 per variable. Elsewhere (cpu, wasm) each variable keeps its own moments and the step
 * is composed of tfjs ops as above. The layout follows the backend of each step.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

/**
 * Kernel: one Adam step of several variables, written in place; no outputs. Inputs: `m`
 * and `v`, the flat first and second moments (float32 `[total]`), and for variable `i`
 * its parameter `w${i}` and gradient `g${i}` (float32, the same shape). Attributes:
 * {@linkcode FusedAdamAttrs}. Per element `j` of variable `i`, with `o` its offset, in
 * float32 operations (constants rounded to float32 first, as tfjs's scalars are):
 * `m[o+j] = m[o+j]*beta1 + g*(1-beta1)`, `v[o+j] = v[o+j]*beta2 + g*g*(1-beta2)`,
 * `w[j] = (m[o+j]/c1) / (sqrt(v[o+j]/c2) + epsilon) * -learningRate + w[j]`.
 *
 * The caller guarantees what writing in place needs: no other tensor shares the data of
 * `m`, `v` or any `w${i}`, and no gradient shares the data of any of them.
 */
export const FUSED_ADAM_KERNEL = "SigmaFusedAdam";

/** The attributes of {@linkcode FUSED_ADAM_KERNEL}. */
export interface FusedAdamAttrs {
  /** Decay of the first moment. */
  beta1: number;
  /** Decay of the second moment. */
  beta2: number;
  /** Added to the second moment's root. */
  epsilon: number;
  /** Step size. */
  learningRate: number;
  /** Per variable: the index of its first moment in `m` and `v`. */
  offsets: number[];
  /** Per variable: its float32 `1 - beta1^t` at its own step `t` (1-based). */
  corrections1: number[];
  /** Per variable: its float32 `1 - beta2^t`. */
  corrections2: number[];
}

/**
 * Most moment values the flat layout holds: 2^25 floats, 128 MiB per buffer, WebGPU's
 * default `maxStorageBufferBindingSize` and so within every device's limit (a shader binds
 * each flat buffer whole). A model beyond it takes the composed path.
 */
export const MAX_FUSED_MOMENTS = 2 ** 25;

/** One variable's Adam state. */
interface Slot {
  /** First moment on the composed path; null while the moments are in the flat tensors. */
  m: tf.Variable | null;
  /** Second moment, likewise. */
  v: tf.Variable | null;
  /** Index of this variable's moments in the flat tensors (fused layout). */
  offset: number;
  /** The variable's shape and size. */
  shape: number[];
  size: number;
  /** Steps this variable has taken. */
  steps: number;
  /** beta1 to the power steps + 1, accumulated in float32 as tfjs accumulates it. */
  acc1: number;
  /** beta2 to the power steps + 1, likewise. */
  acc2: number;
}

/** A variable of one step and its gradient. */
interface StepPart {
  name: string;
  variable: tf.Variable;
  gradient: tf.Tensor;
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
  /** Decay of the first moment. */
  readonly beta1: number;
  /** Decay of the second moment. */
  readonly beta2: number;
  /** Added to the second moment's root. */
  readonly epsilon: number;
  #slots = new Map<string, Slot>();
  /** The flat moments of the fused layout (null before its first variable, or composed). */
  #flat: { m: tf.Variable; v: tf.Variable } | null = null;
  /** Whether the moments are in the flat tensors (the last step was fused). */
  #fusedLayout = false;

  /**
   * An optimizer with no state yet: each variable's starts at its first gradient.
   *
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
   * shape than its variable (checked for every name before any variable moves).
   */
  applyGradients(grads: Record<string, tf.Tensor>): void {
    const variables = tf.engine().registeredVariables;
    const parts: StepPart[] = Object.entries(grads).map(([name, gradient]) => {
      const variable = variables[name];
      if (variable === undefined) throw new RangeError(`Adam: no variable named "${name}"`);
      if (!tf.util.arraysEqual(variable.shape, gradient.shape)) {
        throw new RangeError(
          `Adam: gradient of "${name}" has shape [${gradient.shape}], the variable [${variable.shape}]`,
        );
      }
      return { name, variable, gradient };
    });
    if (parts.length === 0) return;
    if (this.#fusable(parts)) this.#fusedStep(parts);
    else this.#composedStep(parts);
  }

  /** Whether this step can go through {@linkcode FUSED_ADAM_KERNEL}. */
  #fusable(parts: StepPart[]): boolean {
    if (tf.getKernel(FUSED_ADAM_KERNEL, tf.getBackend()) === undefined) return false;
    // Other dtypes go to the composed path, whose assign rejects them as before.
    if (parts.some((p) => p.variable.dtype !== "float32")) return false;
    let total = 0;
    for (const slot of this.#slots.values()) total += slot.size;
    for (const p of parts) if (!this.#slots.has(p.name)) total += p.variable.size;
    return total <= MAX_FUSED_MOMENTS;
  }

  #composedStep(parts: StepPart[]): void {
    this.#toSeparate();
    for (const { name, variable, gradient } of parts) {
      const slot = this.#slot(name, variable);
      const m0 = slot.m!;
      const v0 = slot.v!;
      tf.tidy(() => {
        // tfjs's AdamOptimizer, operation for operation, with this variable's own powers.
        const m = tf.add(tf.mul(m0, this.beta1), tf.mul(gradient, 1 - this.beta1));
        const v = tf.add(
          tf.mul(v0, this.beta2),
          tf.mul(tf.square(gradient), 1 - this.beta2),
        );
        const mHat = tf.div(m, tf.scalar(Math.fround(1 - slot.acc1)));
        const vHat = tf.div(v, tf.scalar(Math.fround(1 - slot.acc2)));
        m0.assign(m);
        v0.assign(v);
        const step = tf.mul(tf.div(mHat, tf.add(tf.sqrt(vHat), this.epsilon)), -this.learningRate);
        variable.assign(tf.add(step, variable));
      });
      this.#advance(slot);
    }
  }

  #fusedStep(parts: StepPart[]): void {
    this.#toFlat();
    this.#grow(parts.filter((p) => !this.#slots.has(p.name)).map((p) => p.variable));
    const slots = parts.map((p) => this.#slots.get(p.name)!);
    const flat = this.#flat!;
    tf.tidy(() => {
      // The kernel writes in place, into the very buffers of these tensors. tfjs shares a
      // buffer between tensors (clone, reshape, a variable made from a tensor), and such a
      // sharer must keep its values: a shared one first gets a buffer of its own.
      for (const t of [flat.m, flat.v, ...parts.map((p) => p.variable)]) ownData(t);
      const written = new Set<tf.DataId>(parts.map((p) => p.variable.dataId));
      const inputs: tf.NamedTensorMap = { m: flat.m, v: flat.v };
      parts.forEach(({ variable, gradient }, i) => {
        let g = gradient.dtype === "float32" ? gradient : tf.cast(gradient, "float32");
        // A gradient that is a written variable itself (then not shared: one tensor) would
        // be bound for reading and writing at once, which WebGPU refuses: a copy.
        if (written.has(g.dataId)) g = tf.mul(g, 1);
        inputs[`w${i}`] = variable;
        inputs[`g${i}`] = g;
      });
      const attrs: FusedAdamAttrs = {
        beta1: this.beta1,
        beta2: this.beta2,
        epsilon: this.epsilon,
        learningRate: this.learningRate,
        offsets: slots.map((s) => s.offset),
        corrections1: slots.map((s) => Math.fround(1 - s.acc1)),
        corrections2: slots.map((s) => Math.fround(1 - s.acc2)),
      };
      tf.engine().runKernel(FUSED_ADAM_KERNEL, inputs, attrs as unknown as tf.NamedAttrMap);
    });
    for (const slot of slots) this.#advance(slot);
  }

  /** Moves per-variable moments into flat tensors (variables in the order they joined). */
  #toFlat(): void {
    if (this.#fusedLayout) return;
    this.#fusedLayout = true;
    const slots = [...this.#slots.values()];
    let total = 0;
    for (const slot of slots) {
      slot.offset = total;
      total += slot.size;
    }
    if (slots.length === 0) return;
    this.#flat = tf.tidy(() => ({
      m: tf.variable(concat1d(slots.map((s) => tf.reshape(s.m!, [s.size])), total), false),
      v: tf.variable(concat1d(slots.map((s) => tf.reshape(s.v!, [s.size])), total), false),
    }));
    for (const slot of slots) {
      slot.m!.dispose();
      slot.v!.dispose();
      slot.m = null;
      slot.v = null;
    }
  }

  /** Moves flat moments back into per-variable ones. */
  #toSeparate(): void {
    if (!this.#fusedLayout) return;
    this.#fusedLayout = false;
    const flat = this.#flat;
    this.#flat = null;
    if (!flat) return;
    for (const slot of this.#slots.values()) {
      const part = (t: tf.Tensor) =>
        tf.tidy(() =>
          tf.variable(tf.reshape(tf.slice(t, [slot.offset], [slot.size]), slot.shape), false)
        );
      slot.m = part(flat.m);
      slot.v = part(flat.v);
    }
    flat.m.dispose();
    flat.v.dispose();
  }

  /** Gives `joining` (fused layout) slots at the end of the flat moments, zeros there. */
  #grow(joining: tf.Variable[]): void {
    if (joining.length === 0) return;
    const old = this.#flat;
    const before = old ? old.m.size : 0;
    let total = before;
    for (const variable of joining) {
      this.#slots.set(variable.name, this.#newSlot(variable, null, null, total));
      total += variable.size;
    }
    if (old && total === before) return;
    const grown = (t: tf.Tensor | undefined) =>
      tf.tidy(() =>
        tf.variable(t ? concat1d([t, tf.zeros([total - before])], total) : tf.zeros([total]), false)
      );
    this.#flat = { m: grown(old?.m), v: grown(old?.v) };
    old?.m.dispose();
    old?.v.dispose();
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
    const flat = this.#flat;
    const maxima = tf.tidy(() =>
      tf.stack(names.map((name) => {
        const slot = this.#slots.get(name)!;
        return tf.max(slot.v ?? tf.slice(flat!.v, [slot.offset], [slot.size]));
      }))
    );
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
    // Flat moments are read once each, then cut (copies: tfjs keeps the array it returned).
    const flat = this.#flat
      ? await Promise.all([this.#flat.m.data(), this.#flat.v.data()]) as Float32Array[]
      : null;
    return await Promise.all(variables.map(async (variable) => {
      const slot = this.#slots.get(variable.name);
      if (!slot) {
        const size = variable.size;
        return { m: new Float32Array(size), v: new Float32Array(size), steps: 0 };
      }
      if (!slot.m || !slot.v) {
        const end = slot.offset + slot.size;
        return {
          m: flat![0].slice(slot.offset, end),
          v: flat![1].slice(slot.offset, end),
          steps: slot.steps,
        };
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
    // Per-variable moments: a slot is dropped and made afresh; the next fused step
    // gathers them into flat tensors again.
    this.#toSeparate();
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
        slot.m!.assign(tf.tensor(m, variable.shape));
        slot.v!.assign(tf.tensor(v, variable.shape));
      });
      // The powers as the uninterrupted run accumulated them, product by product.
      while (slot.steps < steps) this.#advance(slot);
    });
  }

  /** Frees every moment. */
  dispose(): void {
    for (const name of [...this.#slots.keys()]) this.#drop(name);
    this.#flat?.m.dispose();
    this.#flat?.v.dispose();
    this.#flat = null;
    this.#fusedLayout = false;
  }

  /** The slot of `name` (composed layout), made with zero moments at its first step. */
  #slot(name: string, variable: tf.Variable): Slot {
    let slot = this.#slots.get(name);
    if (!slot) {
      slot = this.#newSlot(
        variable,
        tf.tidy(() => tf.variable(tf.zerosLike(variable), false)),
        tf.tidy(() => tf.variable(tf.zerosLike(variable), false)),
        0,
      );
      this.#slots.set(name, slot);
    }
    return slot;
  }

  #newSlot(
    variable: tf.Variable,
    m: tf.Variable | null,
    v: tf.Variable | null,
    offset: number,
  ): Slot {
    return {
      m,
      v,
      offset,
      shape: variable.shape.slice(),
      size: variable.size,
      steps: 0,
      acc1: Math.fround(this.beta1),
      acc2: Math.fround(this.beta2),
    };
  }

  /** Counts a step of `slot` and moves its powers on, in float32 as tfjs's Adam does. */
  #advance(slot: Slot): void {
    slot.steps += 1;
    slot.acc1 = Math.fround(slot.acc1 * Math.fround(this.beta1));
    slot.acc2 = Math.fround(slot.acc2 * Math.fround(this.beta2));
  }

  /** Forgets `name`'s state (its own moments freed; flat ones stay until dispose). */
  #drop(name: string): void {
    const slot = this.#slots.get(name);
    if (!slot) return;
    slot.m?.dispose();
    slot.v?.dispose();
    this.#slots.delete(name);
  }
}

/** `parts` (1-D) end to end, `total` values; a fresh tensor even for one part or none. */
function concat1d(parts: tf.Tensor[], total: number): tf.Tensor {
  const nonEmpty = parts.filter((p) => p.size > 0);
  // tf.concat of a single tensor is a clone, which shares its data: not a tensor of its own.
  if (nonEmpty.length <= 1) {
    return nonEmpty.length === 0 ? tf.zeros([total]) : tf.mul(nonEmpty[0], 1);
  }
  return tf.concat(nonEmpty);
}

/**
 * Gives `variable` a buffer no other tensor shares, when one does (refCount above 1 on the
 * backend holding its data), so that writing it in place changes nothing else. Not
 * `tf.clone` (tfjs's Identity hands back the same data) nor `tf.add(x, 0)` (turns -0 into
 * +0): `x * 1` is a new tensor equal to `x` in every bit but NaN payloads.
 */
function ownData(variable: tf.Variable): void {
  const engine = tf.engine();
  const holder = engine.state.tensorInfo.get(variable.dataId)?.backend ?? engine.backend;
  if (holder.refCount(variable.dataId) <= 1) return;
  tf.tidy(() => variable.assign(tf.mul(variable, 1)));
}
