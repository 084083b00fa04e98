/**
 * Compact item tables for the model file: float16, and int8 with one float32 scale a row.
 * The item table is most of a large model (1M items of 128 floats: 512 MB of float32), and
 * only ever multiplied into scores, so its precision is the cheapest to give up.
 *
 * - `f16`: IEEE 754 half precision, rounded to nearest even (subnormals, infinities and NaN
 *   kept): 2 bytes a value, a relative error of at most 2^-11 in the normal range.
 * - `i8`: symmetric per-row quantisation, `q = round(x / s)` in -127..127 with
 *   `s = max|x| / 127` of the row (0 for a row of zeros): 1 byte a value plus 4 a row, an
 *   absolute error of at most `s / 2`.
 *
 * @module
 */

/** How the item table is stored: float32 (as trained), float16, or int8 with row scales. */
export type ItemDtype = "f32" | "f16" | "i8";

/** The item dtypes, in order of size. */
export const ITEM_DTYPES: readonly ItemDtype[] = ["f32", "f16", "i8"];

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The float16 bits nearest to `x` (ties to even). */
export function toFloat16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // Inf, NaN (quiet)
  const e = exponent - 127 + 15; // the half's biased exponent
  if (e >= 0x1f) return sign | 0x7c00; // too large: Inf
  if (e <= 0) {
    // Subnormal half (or 0): the mantissa with its implicit 1, shifted, rounded to even.
    if (e < -10) return sign;
    const m = mantissa | 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = m & ((1 << shift) - 1);
    let out = m >>> shift;
    if (rest > half || (rest === half && (out & 1))) out++;
    return sign | out;
  }
  let out = (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (out & 1))) out++; // may carry into the exponent
  return sign | out;
}

/** The number float16 `bits` hold. */
export function fromFloat16Bits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? NaN : sign * Infinity;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** The largest finite float16, 65504; from 65520 on a value rounds to infinity. */
export const FLOAT16_MAX = 65504;

/**
 * `values` as little-endian float16 bytes.
 *
 * @throws {RangeError} A finite value that float16 would make infinite (|x| >= 65520), or a
 * value that is not finite, naming its index: it would score every item as infinity.
 */
export function encodeFloat16(values: Float32Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const bits = toFloat16Bits(values[i]);
    if ((bits & 0x7c00) === 0x7c00) {
      throw new RangeError(
        `item value ${i} is ${values[i]}: float16 holds finite values up to ${FLOAT16_MAX}`,
      );
    }
    view.setUint16(2 * i, bits, true);
  }
  return out;
}

/** Little-endian float16 `bytes` as float32 values. */
export function decodeFloat16(bytes: Uint8Array): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = fromFloat16Bits(view.getUint16(2 * i, true));
  return out;
}

/**
 * `values` (`rows` rows of `width`) as int8 codes and a float32 scale a row (see the module).
 *
 * @throws {RangeError} A value that is not finite (it has no int8 code), naming its row.
 */
export function encodeInt8Rows(
  values: Float32Array,
  rows: number,
  width: number,
): { codes: Uint8Array<ArrayBuffer>; scales: Float32Array<ArrayBuffer> } {
  const codes = new Int8Array(rows * width);
  const scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const row = values.subarray(r * width, (r + 1) * width);
    let largest = 0;
    for (const x of row) {
      if (!Number.isFinite(x)) throw new RangeError(`item row ${r} holds ${x}: no int8 code`);
      largest = Math.max(largest, Math.abs(x));
    }
    // A row below ~1.8e-43 would get scale 0 and decode to 0: the smallest float instead.
    const scale = largest === 0 ? 0 : Math.max(Math.fround(largest / 127), 1.401298464324817e-45);
    scales[r] = scale;
    if (scale === 0) continue;
    for (let u = 0; u < width; u++) {
      codes[r * width + u] = Math.max(-127, Math.min(127, Math.round(row[u] / scale)));
    }
  }
  return { codes: new Uint8Array(codes.buffer), scales };
}

/** Int8 `codes` and row `scales` back as float32 values, `code * scale`. */
export function decodeInt8Rows(
  codes: Uint8Array,
  scales: Float32Array,
  width: number,
): Float32Array {
  const signed = new Int8Array(codes.buffer, codes.byteOffset, codes.byteLength);
  const out = new Float32Array(signed.length);
  for (let r = 0; r < scales.length; r++) {
    for (let u = 0; u < width; u++) out[r * width + u] = signed[r * width + u] * scales[r];
  }
  return out;
}
