/**
 * An int8 item table kept int8 in memory (`Recommender.load(..., { compactItems: true })`):
 * a model file's `i8` table (`_item_codec.ts`: a code per value, a float32 scale per row)
 * is uploaded as it is, 4 codes to an int32, a quarter of the float32 table (128 MB against
 * 512 MB at 1M items of d 128). Two things read it:
 *
 * - the history's rows, for the model's embedding lookups (`ParamStore`'s external rows):
 *   gathered as codes and decoded `code * scale` on the host, the values a decoded file has;
 * - the ranking: {@linkcode INT8_TOP_K_KERNEL} scores every row against the ranking
 *   queries, each query quantised to int16 (a scale per query), with integer dot products,
 *   and keeps each history's best k in a heap: no score vector of the catalogue, no float32
 *   table. The scores differ from the decoded table's float32 ones by the query's rounding
 *   (a relative 2^-16 of its largest entry). Widths up to 512 (the int32 sums).
 *
 * The kernel runs on wasm (bmm.wasm's `int8_top_k`, registered by `backends/`); where it is
 * not registered the recommender decodes the table to float32 instead.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor, Tensor1D, Tensor2D, Tensor3D } from "../nn/tensor_types.ts";

/**
 * Kernel `(q16 [R, d/2] int32: int16 pairs, qscale [R], codes [N, d/4] int32: int8
 * quads, scales [N]; Q, k, first) -> (values [R/Q, k], ids [R/Q, k] int32)`: for each
 * history (Q query rows), the k best rows `first..N-1` by `max over its queries of
 * qscale * scale * dot(q16, codes)`, best first, the lower row first on equal scores.
 */
export const INT8_TOP_K_KERNEL = "SigmaInt8TopK";

/**
 * Widths the kernel takes: a multiple of 16 (its SIMD step), at most 512 (a sum of d
 * products of up to 127 x 32767 each stays within int32 up to 516).
 */
export function int8TableWidthOk(d: number): boolean {
  return d > 0 && d % 16 === 0 && d <= 512;
}

/** Whether the active backend ranks int8 tables in place. */
export function hasInt8TopK(): boolean {
  return tf.getKernel(INT8_TOP_K_KERNEL, tf.getBackend()) !== undefined;
}

/**
 * Writes `bytes` into tensor `t`'s own memory from `byteOffset` on, in place: how a backend
 * lets a large table be filled in pieces (registered by `backends/` for wasm).
 */
export type TensorBytesWriter = (t: Tensor, byteOffset: number, bytes: Uint8Array) => void;

const writers = new Map<string, TensorBytesWriter>();

/** Registers how backend `name` writes into a tensor in place (see {@linkcode TensorBytesWriter}). */
export function registerTensorBytesWriter(name: string, writer: TensorBytesWriter): void {
  writers.set(name, writer);
}

/** An int8 item table on the active backend: codes and row scales. */
export class Int8ItemTable {
  /** Rows (items, padding included). */
  readonly rows: number;
  /** Values a row. */
  readonly width: number;
  readonly #codes: Tensor2D; // [rows, width / 4] int32, 4 codes each, little-endian
  #scales: Tensor1D | null = null; // [rows]; null until the scales are set

  /**
   * @param codes The file's int8 codes, `rows * width` bytes.
   * @param scales One float32 scale a row.
   * @throws {RangeError} A width the kernel does not take, or sizes that disagree.
   */
  constructor(codes: Uint8Array, scales: Float32Array, width: number);
  /** A table of `rows` whose codes arrive by {@linkcode Int8ItemTable.write}. */
  constructor(codes: null, rows: number, width: number);
  constructor(codes: Uint8Array | null, scalesOrRows: Float32Array | number, width: number) {
    if (!int8TableWidthOk(width)) {
      throw new RangeError(
        `an int8 item table needs a width divisible by 16 and at most 512, got ${width}`,
      );
    }
    this.rows = typeof scalesOrRows === "number" ? scalesOrRows : scalesOrRows.length;
    this.width = width;
    if (codes === null) {
      // fill, not zeros: zeros makes the values on the host first, then copies them over.
      this.#codes = tf.keep(tf.fill([this.rows, width / 4], 0, "int32"));
      return;
    }
    if (codes.length !== this.rows * width) {
      throw new RangeError(`${codes.length} int8 codes for ${this.rows} rows of ${width}`);
    }
    // Aligned for the int32 view (the file's bytes need not be).
    const packed = codes.byteOffset % 4 === 0
      ? new Int32Array(codes.buffer, codes.byteOffset, codes.length / 4)
      : new Int32Array(codes.slice().buffer);
    this.#codes = tf.keep(tf.tensor2d(packed, [this.rows, width / 4], "int32"));
    try {
      this.setScales(scalesOrRows as Float32Array);
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /**
   * An empty table of `rows` rows of `width` to fill with {@linkcode Int8ItemTable.write},
   * where the active backend writes into tensors in place; null elsewhere.
   *
   * @throws {RangeError} A width the kernel does not take.
   */
  static receiving(rows: number, width: number): Int8ItemTable | null {
    if (!writers.has(tf.getBackend())) return null;
    return new Int8ItemTable(null, rows, width);
  }

  /**
   * Writes codes `byteOffset..` (row after row, as the file stores them) in place.
   *
   * @throws {RangeError} Bytes outside the table.
   * @throws {Error} A backend that cannot write in place.
   */
  write(byteOffset: number, bytes: Uint8Array): void {
    const writer = writers.get(tf.getBackend());
    if (!writer) throw new Error(`backend ${tf.getBackend()} cannot write tensors in place`);
    if (byteOffset < 0 || byteOffset + bytes.length > this.rows * this.width) {
      throw new RangeError(
        `codes ${byteOffset}..${byteOffset + bytes.length} are outside the table's ` +
          `${this.rows * this.width}`,
      );
    }
    writer(this.#codes, byteOffset, bytes);
  }

  /**
   * Sets the row scales (once).
   *
   * @throws {RangeError} Not one finite scale a row.
   * @throws {Error} Scales already set.
   */
  setScales(scales: Float32Array): void {
    if (this.#scales) throw new Error("the table's scales are already set");
    if (scales.length !== this.rows) {
      throw new RangeError(`${scales.length} scales for ${this.rows} rows`);
    }
    const bad = scales.findIndex((s) => !Number.isFinite(s));
    if (bad >= 0) {
      throw new RangeError(`row ${bad} of the int8 item table has scale ${scales[bad]}`);
    }
    this.#scales = tf.keep(tf.tensor1d(scales));
  }

  /** The scales, which a table filled in place gets last. */
  get #rowScales(): Tensor1D {
    if (!this.#scales) throw new Error("the int8 item table's scales are not set yet");
    return this.#scales;
  }

  /** The rows of `ids` (int32, any shape) decoded, `[...ids.shape, width]` float32. */
  rowsOf(ids: Tensor): Tensor {
    const [packed, scales] = tf.tidy(() => {
      const flat = tf.reshape(ids, [-1]);
      return [tf.gather(this.#codes, flat), tf.gather(this.#rowScales, flat)];
    });
    try {
      const p = packed.dataSync() as Int32Array, s = scales.dataSync() as Float32Array;
      const signed = new Int8Array(p.buffer, p.byteOffset, p.byteLength);
      const out = new Float32Array(signed.length);
      for (let r = 0; r < s.length; r++) {
        for (let u = 0; u < this.width; u++) {
          out[r * this.width + u] = signed[r * this.width + u] * s[r];
        }
      }
      return tf.tensor(out, [...ids.shape, this.width], "float32");
    } finally {
      tf.dispose([packed, scales]);
    }
  }

  /**
   * The best `k` rows `first..rows-1` for each history of `queries` `[H, Q, d]` (a row's
   * score the max over the history's Q queries): values and ids `[H, k]`, best first.
   *
   * @throws {RangeError} `k` outside 1..rows - first, or a query of another width.
   */
  topK(queries: Tensor3D, k: number, first = 1): { values: Tensor2D; indices: Tensor2D } {
    const [h, q, d] = queries.shape;
    if (d !== this.width) {
      throw new RangeError(`queries of width ${d} for an item table of width ${this.width}`);
    }
    if (!Number.isInteger(k) || k < 1 || k > this.rows - first) {
      throw new RangeError(`k must be an integer from 1 to ${this.rows - first}, got ${k}`);
    }
    const { q16, qscale } = quantiseQueries(queries.dataSync() as Float32Array, h * q, d);
    return tf.tidy(() => {
      const [values, indices] = tf.engine().runKernel(INT8_TOP_K_KERNEL, {
        q16: tf.tensor2d(new Int32Array(q16.buffer), [h * q, d / 2], "int32"),
        qscale: tf.tensor1d(qscale),
        codes: this.#codes,
        scales: this.#rowScales,
      }, { Q: q, k, first }) as Tensor2D[];
      if (!qscale.some(Number.isNaN)) return { values, indices };
      // A query that is not finite scores NaN, as the float32 path would say.
      const v = values.dataSync().slice();
      for (let r = 0; r < h * q; r++) {
        if (Number.isNaN(qscale[r])) v.fill(NaN, Math.floor(r / q) * k, Math.floor(r / q) * k + k);
      }
      return { values: tf.tensor2d(v, [h, k]), indices };
    });
  }

  /** Frees the codes and scales. */
  dispose(): void {
    tf.dispose(this.#scales ? [this.#codes, this.#scales] : [this.#codes]);
  }
}

/**
 * Each row of `values` (`rows` of `d`) as int16 codes with a scale, `max |x| / 32767` (1 for
 * a row of zeros); a non-finite row keeps its NaN in the scale, so that its scores are NaN.
 */
export function quantiseQueries(
  values: Float32Array,
  rows: number,
  d: number,
): { q16: Int16Array; qscale: Float32Array } {
  const q16 = new Int16Array(rows * d);
  const qscale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let top = 0;
    for (let u = 0; u < d; u++) top = Math.max(top, Math.abs(values[r * d + u]));
    if (!Number.isFinite(top)) {
      qscale[r] = NaN;
      continue;
    }
    // At least the smallest float32 (a subnormal top would round its scale to 0), and each
    // code clamped: a rounded scale may fall below top / 32767.
    const scale = top === 0 ? 1 : Math.max(Math.fround(top / 32767), 2 ** -149);
    qscale[r] = scale;
    for (let u = 0; u < d; u++) {
      q16[r * d + u] = Math.max(-32767, Math.min(32767, Math.round(values[r * d + u] / scale)));
    }
  }
  return { q16, qscale };
}
