/**
 * A named store of trainable parameters, their seeded initialisation and their
 * (de)serialisation to plain arrays for checkpoints.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor, Variable } from "./tensor_types.ts";

/**
 * `tf.randomNormal` from a 32-bit `seed`, 0 included: tfjs's normal sampler takes seed 0 for
 * "no seed" and draws from `Math.random`, so 0 is passed as 2^32, which no 32-bit seed is.
 * (Its uniform sampler honours 0.)
 */
export function seededNormal(shape: number[], mean: number, std: number, seed: number): Tensor {
  return tf.randomNormal(shape, mean, std, "float32", seed === 0 ? 2 ** 32 : seed);
}

/**
 * How a parameter starts: the reference code's N(0, initStd) (`"normal"`), zeros, ones,
 * every entry equal to a given number, N(0, std²) for a given std (`{ normal: std }`), or
 * uniform on (-bound, bound) (`{ uniform: bound }`, PyTorch's `Linear` default with
 * bound 1/sqrt(fan_in)).
 */
export type Init = "normal" | "zeros" | "ones" | number | { normal: number } | { uniform: number };

/** Plain-data form of a parameter, as stored in a checkpoint. */
export interface ParamRecord {
  /** Parameter name, e.g. `"enc.block0.attn.q.w"`. */
  name: string;
  /** Shape of the parameter. */
  shape: number[];
}

/** What {@linkcode ParamStore.plan} has recorded so far, while it runs. */
let planning: {
  records: ParamRecord[];
  values: number;
  limit: { tensors: number; values: number };
} | null = null;

/** Records a parameter of a plan; a stand-in for the variable no caller of `create` reads. */
function planned(name: string, shape: number[]): Variable {
  const plan = planning!;
  plan.records.push({ name, shape: [...shape] });
  plan.values += shape.reduce((a, b) => a * b, 1);
  if (plan.records.length > plan.limit.tensors || plan.values > plan.limit.values) {
    throw new RangeError(
      `the config describes a model larger than its tensors: more than ` +
        `${plan.limit.tensors} tensors or ${plan.limit.values} values (at "${name}" [${shape}])`,
    );
  }
  return null as unknown as Variable;
}

/**
 * A parameter held outside the store, of which only rows are read: an item table kept int8
 * for serving (`lib/inference/_int8_items.ts`). Its model can embed histories (through
 * `itemRows` in `layers.ts`) but not train, score the whole table or be saved.
 */
export interface ExternalRows {
  /** The rows of `ids` (int32, any shape), `[...ids.shape, width]` float32. */
  rowsOf(ids: Tensor): Tensor;
  /** Frees what holds the rows. */
  dispose(): void;
}

/** Throws a `RangeError` naming `what` if `values` holds a NaN or an infinity. */
function requireFinite(values: Float32Array, what: string): void {
  for (let j = 0; j < values.length; j++) {
    if (!Number.isFinite(values[j])) throw new RangeError(`${what} holds a non-finite value`);
  }
}

/** What {@linkcode ParamStore.withValues} gives `create`, while it runs. */
let given: Map<string, Float32Array | ExternalRows> | null = null;
/** The stores `create` filled while {@linkcode ParamStore.withValues} ran. */
const givenStores = new Set<ParamStore>();

/**
 * Owns every trainable variable of a model, by name. Creation is seeded: the same seed
 * and the same order of `create` calls give bit-identical initial values on any backend,
 * because tfjs draws seeded random numbers on the host.
 */
export class ParamStore {
  readonly #vars = new Map<string, tf.Variable>();
  readonly #derived = new Map<string, { source: object; value: tf.Tensor }>();
  readonly #external = new Map<string, ExternalRows>();
  #seed: number;
  /** Standard deviation of `"normal"` initialisation (reference code: 0.02). */
  readonly initStd: number;

  /** Creates an empty store whose random initialisation starts from `seed`. */
  constructor(seed: number, initStd = 0.02) {
    this.#seed = seed >>> 0;
    this.initStd = initStd;
  }

  /**
   * The parameters `build` would create (names and shapes), without allocating any: while
   * it runs, every store's `create` only records. Stops with a `RangeError` as soon as
   * they pass `limit` (more tensors or more values), so that a config asking for a huge
   * model costs nothing to refuse. Tensors `build` makes besides parameters are freed.
   *
   * @example Usage
   * ```ts ignore
   * const records = ParamStore.plan(() => new SasRec(config), { tensors: 40, values: 1e6 });
   * ```
   */
  static plan(build: () => unknown, limit: { tensors: number; values: number }): ParamRecord[] {
    if (planning) throw new Error("ParamStore.plan does not nest");
    planning = { records: [], values: 0, limit };
    try {
      tf.tidy(() => {
        build();
      });
      return planning.records;
    } finally {
      planning = null;
    }
  }

  /**
   * Runs `build` with every store's `create` taking each parameter's values from `values`
   * (by name, in the parameter's shape) instead of drawing them: a model loaded from a file
   * is then allocated once, with no random table to replace (at 1M items of d 128 that
   * table is 512 MB, and the heap it grew stays grown). A value that is
   * {@linkcode ExternalRows} makes that parameter external: the store owns it from then
   * on, `get` refuses it by name, and only its rows are read.
   *
   * On a throw, every parameter created so far is freed (external ones stay the caller's).
   *
   * @throws {RangeError} A parameter `values` lacks, whose size differs, or that holds a
   * non-finite value (named), as {@linkcode ParamStore.assign} refuses one.
   */
  static withValues<T>(values: Map<string, Float32Array | ExternalRows>, build: () => T): T {
    if (planning || given) throw new Error("ParamStore.withValues does not nest");
    given = values;
    try {
      return build();
    } catch (e) {
      for (const store of givenStores) {
        store.#external.clear(); // not this store's to free: the build failed
        store.dispose();
      }
      throw e;
    } finally {
      given = null;
      givenStores.clear();
    }
  }

  /** Creates a parameter; throws if the name is taken. */
  create(name: string, shape: number[], init: Init = "normal"): Variable {
    if (planning) return planned(name, shape);
    if (this.#vars.has(name)) throw new Error(`Parameter "${name}" is already defined`);
    if (given) return this.#fromGiven(name, shape, given);
    // Each parameter gets its own seed derived from the store's, so adding a parameter at
    // the end never changes the values of the ones before it.
    this.#seed = (Math.imul(this.#seed ^ 0x9e3779b9, 0x85ebca6b) + 0x68e31da4) >>> 0;
    const value = tf.tidy(() => {
      if (init === "zeros") return tf.zeros(shape);
      if (init === "ones") return tf.ones(shape);
      if (typeof init === "number") return tf.fill(shape, init);
      if (typeof init === "object" && "uniform" in init) {
        return tf.randomUniform(shape, -init.uniform, init.uniform, "float32", this.#seed);
      }
      const std = typeof init === "object" ? init.normal : this.initStd;
      return seededNormal(shape, 0, std, this.#seed);
    });
    // No tfjs name: tfjs names are global to the engine, and two models may coexist.
    const v = tf.variable(value, true);
    value.dispose();
    this.#vars.set(name, v);
    return v;
  }

  #fromGiven(
    name: string,
    shape: number[],
    values: Map<string, Float32Array | ExternalRows>,
  ): Variable {
    givenStores.add(this);
    const data = values.get(name);
    if (data && !(data instanceof Float32Array)) {
      this.#external.set(name, data);
      return null as unknown as Variable; // no caller reads it (as in a plan)
    }
    const size = shape.reduce((a, b) => a * b, 1);
    if (!data || data.length !== size) {
      throw new RangeError(
        `parameter "${name}" [${shape}] needs ${size} values, ` +
          (data ? `got ${data.length}` : "and none were given"),
      );
    }
    requireFinite(data, `parameter "${name}"`);
    const value = tf.tensor(data, shape, "float32");
    const v = tf.variable(value, true);
    value.dispose();
    this.#vars.set(name, v);
    return v;
  }

  /** The parameter called `name`; throws a clear error if there is none. */
  get(name: string): Variable {
    const v = this.#vars.get(name);
    if (!v) {
      if (this.#external.has(name)) {
        throw new TypeError(
          `parameter "${name}" is held outside this model (an int8 item table kept for ` +
            "serving): only its rows can be read",
        );
      }
      throw new Error(`No parameter named "${name}"`);
    }
    return v;
  }

  /** The {@linkcode ExternalRows} that stand for parameter `name`, if it is external. */
  external(name: string): ExternalRows | undefined {
    return this.#external.get(name);
  }

  /** All parameters in creation order. */
  list(): Variable[] {
    return [...this.#vars.values()];
  }

  /** Names and shapes in creation order. */
  records(): ParamRecord[] {
    return [...this.#vars.entries()].map(([name, v]) => ({ name, shape: [...v.shape] }));
  }

  /** Total number of scalar parameters. */
  size(): number {
    return this.list().reduce((n, v) => n + v.size, 0);
  }

  /** Reads every parameter to the host, concatenated in creation order. */
  async toArrays(): Promise<{ records: ParamRecord[]; values: Float32Array }> {
    const records = this.records();
    const values = new Float32Array(this.size());
    let offset = 0;
    for (const v of this.list()) {
      values.set(await v.data() as Float32Array, offset);
      offset += v.size;
    }
    return { records, values };
  }

  /**
   * Overwrites every parameter from `values`. The records must match this store's names
   * and shapes exactly; a mismatch throws a `RangeError` naming the first offending field.
   */
  assign(records: ParamRecord[], values: Float32Array, source = "checkpoint"): void {
    const mine = this.records();
    if (records.length !== mine.length) {
      throw new RangeError(
        `${source}: has ${records.length} parameters, the model has ${mine.length}`,
      );
    }
    for (let i = 0; i < mine.length; i++) {
      const a = records[i], b = mine[i];
      if (a.name !== b.name || a.shape.join(",") !== b.shape.join(",")) {
        throw new RangeError(
          `${source}: parameter ${i} is "${a.name}" [${a.shape}], the model expects "${b.name}" [${b.shape}]`,
        );
      }
    }
    if (values.length !== this.size()) {
      throw new RangeError(
        `${source}: holds ${values.length} values, the model has ${this.size()} parameters`,
      );
    }
    let offset = 0;
    for (const [name, v] of this.#vars) {
      const slice = values.subarray(offset, offset + v.size);
      requireFinite(slice, `${source}: parameter "${name}"`);
      tf.tidy(() => v.assign(tf.tensor(slice, v.shape)));
      offset += v.size;
    }
  }

  /**
   * Makes every parameter hold `other`'s current value, shared rather than copied: tfjs
   * gives a variable new data whenever it changes, so `other`'s later updates do not reach
   * this store (a twin of a model that ranks another way, see the trainer's
   * `validSampling`). The stores must have the same names and shapes, in the same order.
   *
   * @throws {RangeError} The first parameter whose name or shape differs.
   */
  shareFrom(other: ParamStore, source = "shared parameters"): void {
    const mine = [...this.#vars], theirs = [...other.#vars];
    if (mine.length !== theirs.length) {
      throw new RangeError(`${source}: has ${theirs.length} parameters, this has ${mine.length}`);
    }
    for (let i = 0; i < mine.length; i++) {
      const [name, v] = mine[i], [theirName, w] = theirs[i];
      if (name !== theirName || v.shape.join(",") !== w.shape.join(",")) {
        throw new RangeError(
          `${source}: parameter ${i} is "${theirName}" [${w.shape}], this expects "${name}" [${v.shape}]`,
        );
      }
    }
    for (let i = 0; i < mine.length; i++) mine[i][1].assign(theirs[i][1]);
  }

  /**
   * The transpose of parameter `name`, computed once and kept until the parameter changes
   * (an Adam step or `assign` gives it new data). For inference: tfjs-backend-wasm's
   * XNNPACK packs a matrix operand once per tensor, so scoring against a reused transpose of
   * the item table is ~50x faster than against a fresh one (3.6 ms against 0.06 ms for an
   * Office-sized table). Not differentiable: never use it inside a loss. Safe inside
   * `tf.tidy`; freed by {@linkcode ParamStore.dispose}.
   */
  transposed(name: string): Tensor {
    const v = this.get(name);
    const cached = this.#derived.get(name);
    // tfjs gives a variable a new dataId object whenever its value is replaced.
    if (cached && cached.source === v.dataId && !cached.value.isDisposed) return cached.value;
    cached?.value.dispose();
    const value = tf.keep(tf.tidy(() => tf.transpose(v)));
    this.#derived.set(name, { source: v.dataId, value });
    return value;
  }

  /** Frees every variable, every cached transpose and every external parameter. */
  dispose(): void {
    for (const v of this.#vars.values()) v.dispose();
    this.#vars.clear();
    for (const e of this.#external.values()) e.dispose();
    this.#external.clear();
    for (const d of this.#derived.values()) d.value.dispose();
    this.#derived.clear();
  }
}
