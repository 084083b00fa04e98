/**
 * The portable model file: one [safetensors](https://huggingface.co/docs/safetensors) file
 * holding a trained model's weights, its kind, its full config, its item vocabulary and a
 * checksum over all of them. It loads from bytes, so it needs no filesystem: a path (under
 * Deno), a URL, a `Response` or an `ArrayBuffer` all work. PyTorch, JAX and the Hugging
 * Face tools read the weights as they are (a compact int8 item table as its codes and
 * `item.scale`: multiply each row by its scale).
 *
 * Layout (the safetensors format):
 *
 * - 8 bytes: the header's length N, an unsigned little-endian 64-bit integer;
 * - N bytes: the header, UTF-8 JSON, padded with spaces so the data starts 8-aligned;
 * - the data: every tensor's bytes, little-endian float32, in the model's parameter order;
 *   with a compact item table (`item_dtype` below), `item` is float16 (`F16`) or int8
 *   (`I8`, followed by `item.scale` `[N + 1]` `F32`, one scale a row).
 *
 * The header maps each parameter name (as the model's {@linkcode ParamStore} names it, e.g.
 * `item` `[N + 1, d]` or `enc.block0.attn.q.w` `[d, d]`) to
 * `{ "dtype": "F32", "shape": [...], "data_offsets": [begin, end] }` (offsets into the data)
 * and holds `__metadata__`, whose values are strings as safetensors requires:
 *
 * | key | value |
 * | --- | --- |
 * | `format` | `"sigma-rec"` |
 * | `format_version` | `"1"`; `"2"` when the item table is compact (`item_dtype`); `"3"` when the vocabulary is a tensor (below) |
 * | `model` | the model kind, as in `--model`: `"sasrec"`, `"sigma"`, `"diffurec"` or `"diffurecsys"` |
 * | `config` | the model's full config, JSON |
 * | `items` | the item vocabulary, a JSON array of tokens; index 0 is `"<pad>"`, index i the item whose score is column i; absent in version 3 |
 * | `info` | JSON, not needed to load: where the model came from (epoch, validation metrics, data) |
 * | `item_dtype` | `"f16"` or `"i8"` where the item table is stored compact (format version 2); absent for float32 |
 * | `checksum` | `"sha256:"` + 64 hex digits, see below |
 *
 * Vocabularies of more than {@linkcode VOCABULARY_TENSOR_ITEMS} items are stored as the tensor
 * `items` (`U8`, format version 3) instead: the same JSON array, gzip-compressed. As JSON in the
 * header's JSON (every quote escaped), a million tokens `i1`..`i1000000` took 12 MB, 9% of an
 * int8 file; compressed they take about 2 MB. Python reads them with
 * `json.loads(gzip.decompress(tensor.tobytes()))`.
 *
 * The checksum is the SHA-256 of, in order: for every metadata key except `checksum`, in
 * sorted order, the UTF-8 of `key=value\n`; then for every tensor, in sorted name order,
 * the UTF-8 of `name dtype [d0,d1,...]\n` followed by the tensor's bytes. So a change to the
 * config, the vocabulary or any weight (everything that changes results) breaks it,
 * whoever wrote the file, while the JSON's key order and spacing do not matter.
 *
 * Loading checks the layout, the format and its version, every tensor's shape against the
 * model the config describes, and the checksum, before any model is built: a file that
 * fails is rejected with an error naming what is wrong, and nothing is evaluated on it.
 *
 * @module
 */
import { PAD_TOKEN } from "../data/_dense.ts";
import type { ParamRecord } from "../nn/params.ts";
import {
  decodeFloat16,
  decodeInt8Rows,
  encodeFloat16,
  encodeInt8Rows,
  ITEM_DTYPES,
  type ItemDtype,
} from "./_item_codec.ts";
import { Sha256 } from "./_sha256.ts";
import { VocabularyIndex } from "./_vocabulary_index.ts";

export { ITEM_DTYPES, type ItemDtype } from "./_item_codec.ts";

/** The value of `__metadata__.format`. */
export const MODEL_FILE_FORMAT = "sigma-rec";
/**
 * The format version this library writes for float32 files; files with a compact item table
 * are version 2 (a reader of version 1 refuses them by their version, not deep inside). It
 * reads both.
 */
export const MODEL_FILE_VERSION = 1;
/** The format version of files whose item table is float16 or int8. */
const COMPACT_FILE_VERSION = 2;
/** The format version of files whose vocabulary is the gzip tensor `items`. */
const VOCABULARY_TENSOR_VERSION = 3;
/**
 * Vocabularies of more items than this are stored as a compressed tensor (format version 3);
 * smaller ones as JSON in the metadata, readable by readers of versions 1 and 2.
 */
export const VOCABULARY_TENSOR_ITEMS = 65_536;
/** The vocabulary tensor's name. */
const ITEMS_TENSOR = "items";
/** The conventional file name in a run folder. */
export const MODEL_FILE_NAME = "model.safetensors";

/**
 * The default largest model file {@linkcode modelFileBytes} fetches: 1 GiB, a 268M-float model
 * (two million items of 128 dimensions). It bounds what a URL someone else chose (the web
 * page's `?model=`) can make a tab or an isolate download before it fails. Paths are not
 * limited.
 */
export const MAX_MODEL_FILE_BYTES = 1024 * 1024 * 1024;

/**
 * The longest wait, in milliseconds, for a fetched model file's response and then for each
 * next piece of its body: a server that accepts and never answers (or stops sending) would
 * otherwise hold `recommend` or a server's start for ever. A slow download that keeps
 * arriving is not cut.
 */
export const MODEL_FETCH_STALL_MS = 30_000;

/** The largest header accepted (the vocabulary lives in it): 256 MiB. */
const MAX_HEADER_BYTES = 256 * 1024 * 1024;

/** Everything a model file holds, decoded. */
export interface ModelFileContents {
  /** Model kind, as in `--model`. */
  model: string;
  /** The model's full config. */
  config: Record<string, unknown>;
  /** Item tokens; `items[0]` is `"<pad>"`, `items[i]` is the item scored in column `i`. */
  items: string[];
  /** Parameter names and shapes, in the order of `values`. */
  params: ParamRecord[];
  /** Every parameter, concatenated in the order of `params`. */
  values: Float32Array;
  /** Where the model came from (epoch, validation metrics, data); not needed to load. */
  info: Record<string, unknown>;
  /**
   * How the file stored the item table (decoding gives float32 `values` either way). When
   * encoding, how to store it unless `EncodeModelFileOptions.itemDtype` says otherwise
   * (so a decoded file encodes as it was); absent means `"f32"`.
   */
  itemDtype?: ItemDtype;
  /** Decoded: the format version the file was written in. Ignored when encoding. */
  formatVersion?: number;
  /**
   * With `DecodeModelFileOptions.keepInt8Items`, an int8 item table as stored (its codes
   * and row scales), left out of `params` and `values`.
   */
  int8Items?: Int8Items;
}

/** An int8 item table as a model file stores it. */
export interface Int8Items {
  /** The parameter's name (`item`). */
  name: string;
  /** Its shape, `[N + 1, d]`. */
  shape: number[];
  /**
   * One int8 code a value, row after row (a view of the file's bytes); absent where they
   * went to `int8Sink` as they were read.
   */
  codes?: Uint8Array;
  /** One float32 scale a row: a value is `code * scale`. */
  scales: Float32Array;
}

/** Options of {@linkcode decodeModelFile}. */
export interface DecodeModelFileOptions {
  /**
   * Return an int8 item table as stored (`int8Items`) instead of decoding it to float32
   * values: for serving it int8 (`Recommender.load`'s `compactItems`). Default false.
   */
  keepInt8Items?: boolean;
}

/** Where a kept int8 table's codes go as they are read: `write` is called in byte order. */
export interface Int8CodesSink {
  /** Stores `chunk`, the codes from `byteOffset` on. */
  write(byteOffset: number, chunk: Uint8Array): void;
}

/** Options of {@linkcode decodeModelFileFrom}. */
export interface DecodeFromOptions extends DecodeModelFileOptions {
  /**
   * With `keepInt8Items`, asked for a place for the int8 table `[rows, width]` before its
   * codes are read: they are streamed there (and hashed) in pieces instead of being held in
   * memory, and `int8Items.codes` is absent. Returning null keeps them in memory. The caller
   * frees what it made when decoding throws (a checksum mismatch comes after the codes).
   */
  int8Sink?: (shape: number[]) => Int8CodesSink | null;
}

/**
 * A model file's bytes, read by range: from memory, or from a file on disk without holding
 * all of it (a 1M-item int8 table streams to the backend in pieces).
 */
export interface ModelFileReader {
  /** The file's size in bytes. */
  readonly size: number;
  /** A name for errors: the path or URL. */
  readonly name: string;
  /** Bytes `begin..end-1` (a view or a copy; not changed by later reads). */
  read(begin: number, end: number): Promise<Uint8Array>;
  /** Releases the file. */
  close(): void;
}

/** The piece a streamed tensor is read in: 4 MiB. */
const STREAM_CHUNK = 4 << 20;

/** Options of {@linkcode encodeModelFile}. */
export interface EncodeModelFileOptions {
  /**
   * How to store the item table (the parameter named `item`, `[N + 1, d]`): `f32` as
   * trained (default), `f16` (half the bytes), `i8` (a quarter, and a scale a row). The
   * rest of the model stays float32. What each costs in accuracy: `docs/serving.md`.
   */
  itemDtype?: ItemDtype;
}

/** Bytes a value of a stored dtype takes. */
const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, I8: 1, U8: 1 };

/** A tensor as stored: its name, dtype, shape and bytes. */
interface StoredTensor {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** Thrown when bytes are not a valid model file; the message names what is wrong. */
export class ModelFileError extends Error {
  /** Creates the error; `source` names the file, URL or "bytes". */
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = "ModelFileError";
  }
}

const encoder = new TextEncoder();

/**
 * The SHA-256 of `parts` read one after the other, as 64 hex digits. Shared by the model
 * file and the training checkpoints. Hashed in pieces (`_sha256.ts`): no joined copy of the
 * parts, and no need of `crypto.subtle` (which browsers offer only on https:// or localhost
 * pages).
 */
// deno-lint-ignore require-await
export async function sha256Hex(parts: Uint8Array[]): Promise<string> {
  const hash = new Sha256();
  for (const p of parts) hash.update(p);
  return hash.hex();
}

/**
 * Feeds the checksum's metadata part to `hash`: for every metadata key but `checksum`, in
 * sorted order, `key=value\n`. The tensors follow (see {@linkcode hashTensorHead}).
 */
function hashMetadata(hash: Sha256, metadata: Record<string, string>): void {
  for (const key of Object.keys(metadata).sort()) {
    if (key !== "checksum") hash.update(encoder.encode(`${key}=${metadata[key]}\n`));
  }
}

/** Feeds a tensor's line, `name dtype [d0,d1,...]\n`, to `hash`; its bytes come next. */
function hashTensorHead(hash: Sha256, t: { name: string; dtype: string; shape: number[] }) {
  hash.update(encoder.encode(`${t.name} ${t.dtype} [${t.shape.join(",")}]\n`));
}

/** Tensors in the checksum's order: by name, in UTF-16 code unit order. */
function byName<T extends { name: string }>(tensors: T[]): T[] {
  return [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** The checksum of metadata (without `checksum`) and named tensors, as the module doc says. */
function checksumOf(metadata: Record<string, string>, tensors: StoredTensor[]): string {
  const hash = new Sha256();
  hashMetadata(hash, metadata);
  for (const t of byName(tensors)) {
    hashTensorHead(hash, t);
    hash.update(t.bytes);
  }
  return `sha256:${hash.hex()}`;
}

function checkItems(items: unknown, source: string): string[] {
  if (!Array.isArray(items) || items.length < 2 || items.some((t) => typeof t !== "string")) {
    throw new ModelFileError(
      source,
      'the item vocabulary must be an array of at least 2 strings ("<pad>" and one item)',
    );
  }
  if (items[0] !== PAD_TOKEN) {
    throw new ModelFileError(
      source,
      `items[0] must be "${PAD_TOKEN}", got ${JSON.stringify(items[0])}`,
    );
  }
  new VocabularyIndex(items as string[], 0, (t, first, second) => {
    throw new ModelFileError(
      source,
      `item ${JSON.stringify(t)} is both items[${first}] and items[${second}]`,
    );
  });
  return items as string[];
}

/**
 * Encodes a model's contents as a model file (see the module doc for the layout).
 *
 * @example Usage
 * ```ts
 * import { decodeModelFile, encodeModelFile } from "./model_file.ts";
 * const bytes = await encodeModelFile({
 *   model: "sasrec",
 *   config: { numItems: 2 },
 *   items: ["<pad>", "tea", "mug"],
 *   params: [{ name: "item", shape: [3, 2] }],
 *   values: Float32Array.of(0, 0, 1, 2, 3, 4),
 *   info: {},
 * });
 * const back = await decodeModelFile(bytes);
 * // back.items = ["<pad>", "tea", "mug"], back.values = [0, 0, 1, 2, 3, 4]
 * ```
 *
 * @param contents What to store; `values` holds the parameters in the order of `params`.
 * @returns The file's bytes.
 * @throws {RangeError} `values` does not match the shapes, or the vocabulary is not valid.
 */
export async function encodeModelFile(
  contents: ModelFileContents,
  options: EncodeModelFileOptions = {},
): Promise<Uint8Array<ArrayBuffer>> {
  const items = checkItems(contents.items, "model file");
  const itemDtype = options.itemDtype ?? contents.itemDtype ?? "f32";
  if (!ITEM_DTYPES.includes(itemDtype)) {
    throw new RangeError(
      `itemDtype must be one of ${ITEM_DTYPES.join(", ")}, got ${JSON.stringify(itemDtype)}`,
    );
  }
  const tensors = storedTensors(contents, itemDtype);
  const vocabularyTensor = items.length - 1 > VOCABULARY_TENSOR_ITEMS;
  if (vocabularyTensor) {
    const bytes = await gzip(encoder.encode(JSON.stringify(items)));
    tensors.push({ name: ITEMS_TENSOR, dtype: "U8", shape: [bytes.length], bytes });
  }
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.bytes.length],
    };
    offset += t.bytes.length;
  }
  const compact = itemDtype !== "f32";
  const metadata: Record<string, string> = {
    format: MODEL_FILE_FORMAT,
    format_version: String(
      vocabularyTensor
        ? VOCABULARY_TENSOR_VERSION
        : compact
        ? COMPACT_FILE_VERSION
        : MODEL_FILE_VERSION,
    ),
    model: contents.model,
    config: JSON.stringify(contents.config),
    ...(vocabularyTensor ? {} : { items: JSON.stringify(items) }),
    info: JSON.stringify(contents.info ?? {}),
    ...(compact ? { item_dtype: itemDtype } : {}),
  };
  metadata.checksum = checksumOf(metadata, tensors);
  let json = encoder.encode(JSON.stringify({ __metadata__: metadata, ...header }));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const spaced = new Uint8Array(padded).fill(0x20);
    spaced.set(json);
    json = spaced;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of tensors) {
    out.set(t.bytes, at);
    at += t.bytes.length;
  }
  return out;
}

/**
 * The tensors of `contents` as the file stores them, in parameter order: float32, except the
 * item table in `itemDtype` (int8 followed by its row scales, `item.scale`).
 *
 * @throws {RangeError} `values` does not match the shapes, or a compact dtype was asked for a
 * model without an `item` table `[rows, d]`.
 */
function storedTensors(contents: ModelFileContents, itemDtype: ItemDtype): StoredTensor[] {
  const sizes = contents.params.map((p) => p.shape.reduce((a, b) => a * b, 1));
  const total = sizes.reduce((a, b) => a + b, 0);
  if (total !== contents.values.length) {
    throw new RangeError(
      `the parameters' shapes hold ${total} values, but ${contents.values.length} were given`,
    );
  }
  const item = contents.params.find((p) => p.name === "item");
  if (itemDtype !== "f32" && (item === undefined || item.shape.length !== 2)) {
    throw new RangeError(
      `itemDtype ${itemDtype} needs an "item" table [rows, d] among the parameters`,
    );
  }
  const tensors: StoredTensor[] = [];
  let offset = 0;
  contents.params.forEach((p, i) => {
    const values = contents.values.subarray(offset, offset + sizes[i]);
    offset += sizes[i];
    if (p.name !== "item" || itemDtype === "f32") {
      const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
      tensors.push({ name: p.name, dtype: "F32", shape: p.shape, bytes });
    } else if (itemDtype === "f16") {
      tensors.push({ name: p.name, dtype: "F16", shape: p.shape, bytes: encodeFloat16(values) });
    } else {
      const [rows, width] = p.shape;
      const { codes, scales } = encodeInt8Rows(values, rows, width);
      tensors.push({ name: p.name, dtype: "I8", shape: p.shape, bytes: codes });
      const bytes = new Uint8Array(scales.buffer);
      tensors.push({ name: ITEM_SCALE, dtype: "F32", shape: [rows], bytes });
    }
  });
  return tensors;
}

/** The int8 item table's row scales: a tensor of the file, not a parameter of the model. */
const ITEM_SCALE = "item.scale";

function parseJsonField(metadata: Record<string, string>, key: string, source: string): unknown {
  try {
    return JSON.parse(metadata[key]);
  } catch (e) {
    throw new ModelFileError(
      source,
      `metadata "${key}" is not valid JSON (${(e as Error).message})`,
    );
  }
}

/** `bytes` gzip-compressed (`CompressionStream`, which Deno, browsers and edge runtimes have). */
async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * The JSON value of gzip-compressed `bytes` (the vocabulary tensor), decompressed up to
 * {@linkcode MAX_HEADER_BYTES}: a file cannot make it inflate without bound.
 *
 * @throws {ModelFileError} Not gzip, more than the bound, or not JSON.
 */
async function gzippedJson(bytes: Uint8Array, source: string): Promise<unknown> {
  const chunks: Uint8Array[] = [];
  let length = 0;
  try {
    const reader = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
      .pipeThrough(new DecompressionStream("gzip")).getReader();
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      length += r.value.length;
      if (length > MAX_HEADER_BYTES) {
        await reader.cancel().catch(() => {});
        throw new RangeError(`it inflates past ${MAX_HEADER_BYTES} bytes`);
      }
      chunks.push(r.value);
    }
    const all = new Uint8Array(length);
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(all));
  } catch (e) {
    throw new ModelFileError(
      source,
      `tensor "${ITEMS_TENSOR}" is not a gzip-compressed JSON vocabulary (${(e as Error).message})`,
    );
  }
}

/** Reads and checks the header; returns it with the data's start. */
/**
 * The header length a file's first 8 bytes give (little-endian u64), checked against the
 * file's `size` and {@linkcode MAX_HEADER_BYTES}.
 *
 * @throws {ModelFileError} A length that does not fit: not a safetensors file, or truncated.
 */
function headerLength(first8: Uint8Array, size: number, source: string): number {
  const length = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (length > BigInt(Math.min(size - 8, MAX_HEADER_BYTES))) {
    throw new ModelFileError(
      source,
      `header length ${length} does not fit the file's ${size} bytes: not a safetensors file, or truncated`,
    );
  }
  return Number(length);
}

async function readHead(
  reader: ModelFileReader,
): Promise<{ header: Record<string, unknown>; dataStart: number }> {
  const source = reader.name;
  if (reader.size < 8) {
    throw new ModelFileError(source, `holds ${reader.size} bytes, too few for a safetensors file`);
  }
  const length = headerLength(await reader.read(0, 8), reader.size, source);
  const dataStart = 8 + length;
  let header: unknown;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(await reader.read(8, dataStart)),
    );
  } catch (e) {
    throw new ModelFileError(source, `the header is not valid JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new ModelFileError(source, "the header is not a JSON object");
  }
  return { header: header as Record<string, unknown>, dataStart };
}

/** The metadata strings, checked for this library's format and version. */
function readMetadata(header: Record<string, unknown>, source: string): Record<string, string> {
  const metadata = header.__metadata__ as Record<string, unknown> | undefined;
  if (!metadata || typeof metadata !== "object") {
    throw new ModelFileError(
      source,
      'has no "__metadata__": a safetensors file, but not a model file of this library',
    );
  }
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") throw new ModelFileError(source, `metadata "${k}" is not a string`);
  }
  const m = metadata as Record<string, string>;
  if (m.format !== MODEL_FILE_FORMAT) {
    throw new ModelFileError(
      source,
      `metadata "format" is ${JSON.stringify(m.format)}, expected "${MODEL_FILE_FORMAT}"`,
    );
  }
  const versions = [MODEL_FILE_VERSION, COMPACT_FILE_VERSION, VOCABULARY_TENSOR_VERSION].map(
    String,
  );
  if (!versions.includes(m.format_version)) {
    throw new ModelFileError(
      source,
      `format version ${JSON.stringify(m.format_version)} is not one this library reads ` +
        `(it reads versions ${versions.join(", ")}); a newer library may read it`,
    );
  }
  const vocabularyTensor = m.format_version === String(VOCABULARY_TENSOR_VERSION);
  if (vocabularyTensor && "items" in m) {
    throw new ModelFileError(
      source,
      'format version 3 keeps the vocabulary in tensor "items", ' +
        'not in metadata "items"',
    );
  }
  for (const key of ["model", "config", ...(vocabularyTensor ? [] : ["items"]), "checksum"]) {
    if (!(key in m)) throw new ModelFileError(source, `metadata "${key}" is missing`);
  }
  if (
    m.item_dtype !== undefined &&
    (m.item_dtype === "f32" || !ITEM_DTYPES.includes(m.item_dtype as ItemDtype))
  ) {
    throw new ModelFileError(
      source,
      `metadata "item_dtype" is ${
        JSON.stringify(m.item_dtype)
      }; expected "f16" or "i8" (absent: float32)`,
    );
  }
  return m;
}

/** A tensor of the header: where its bytes are in the file. */
interface PlacedTensor {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  length: number;
}

/** Every tensor of the header, checked against the data's bounds, in data order. */
function placeTensors(
  header: Record<string, unknown>,
  size: number,
  dataStart: number,
  source: string,
): PlacedTensor[] {
  const dataLength = size - dataStart;
  const tensors = [];
  const metadata = header.__metadata__ as Record<string, string>;
  const itemDtype = metadata.item_dtype;
  const vocabularyTensor = metadata.format_version === String(VOCABULARY_TENSOR_VERSION);
  // The item table may be compact, as the metadata says; the vocabulary of version 3 is
  // bytes; every other tensor is float32.
  const expected = (name: string) =>
    name === ITEMS_TENSOR && vocabularyTensor
      ? "U8"
      : name === "item" && itemDtype === "f16"
      ? "F16"
      : name === "item" && itemDtype === "i8"
      ? "I8"
      : "F32";
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e?.dtype !== expected(name)) {
      throw new ModelFileError(
        source,
        `tensor "${name}" has dtype ${JSON.stringify(e?.dtype)}; ${expected(name)} is read there` +
          (name === "item" ? ` (item_dtype ${JSON.stringify(itemDtype ?? "f32")})` : ""),
      );
    }
    const dtype = e.dtype as string;
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
      throw new ModelFileError(source, `tensor "${name}" has shape ${JSON.stringify(shape)}`);
    }
    const offsets = e.data_offsets;
    const size = shape.reduce((a: number, b: number) => a * b, 1) * DTYPE_BYTES[dtype];
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || !Number.isInteger(offsets[0]) ||
      !Number.isInteger(offsets[1]) || offsets[0] < 0 || offsets[1] > dataLength ||
      offsets[1] - offsets[0] !== size
    ) {
      throw new ModelFileError(
        source,
        `tensor "${name}" [${shape}] has data_offsets ${JSON.stringify(offsets)}, which do not ` +
          `hold its ${size} bytes inside the ${dataLength} bytes of data (truncated file?)`,
      );
    }
    const begin = dataStart + offsets[0];
    tensors.push({ name, dtype, shape, begin, length: size });
  }
  tensors.sort((a, b) => a.begin - b.begin);
  let covered = 0;
  for (const t of tensors) {
    if (t.begin - dataStart !== covered) {
      throw new ModelFileError(
        source,
        `tensor "${t.name}" overlaps another or leaves a gap before it`,
      );
    }
    covered += t.length;
  }
  if (covered !== dataLength) {
    throw new ModelFileError(source, `${dataLength - covered} bytes of data belong to no tensor`);
  }
  return tensors;
}

/**
 * Decodes and checks a model file (see the module doc): the layout, the format and version,
 * the vocabulary and the checksum over config, vocabulary and weights.
 *
 * @example Usage
 * ```ts ignore
 * const contents = await decodeModelFile(await Deno.readFile("runs/sasrec/model.safetensors"));
 * console.log(contents.model, contents.items.length - 1, "items");
 * ```
 *
 * @param bytes The file's bytes.
 * @param source A name for errors: the path or URL. Default "model file".
 * @returns The contents; `values` is a copy, independent of `bytes`.
 * @throws {ModelFileError} Anything wrong, named: not safetensors, a truncated file, an
 * unknown format or version, a bad vocabulary, or a checksum that does not match.
 */
export function decodeModelFile(
  bytes: Uint8Array,
  source = "model file",
  options: DecodeModelFileOptions = {},
): Promise<ModelFileContents> {
  return decodeModelFileFrom(bytesReader(bytes, source), options);
}

/**
 * {@linkcode decodeModelFile} over a {@linkcode ModelFileReader}: each tensor read by its
 * range and hashed in the checksum's order, a kept int8 table optionally streamed to
 * `int8Sink` in pieces. The reader is not closed.
 *
 * @throws {ModelFileError} As {@linkcode decodeModelFile}.
 */
export async function decodeModelFileFrom(
  reader: ModelFileReader,
  options: DecodeFromOptions = {},
): Promise<ModelFileContents> {
  const source = reader.name;
  const { header, dataStart } = await readHead(reader);
  const metadata = readMetadata(header, source);
  const placed = placeTensors(header, reader.size, dataStart, source);
  const keptPlace = options.keepInt8Items ? placed.find((t) => t.dtype === "I8") : undefined;
  const sink = keptPlace && options.int8Sink ? options.int8Sink([...keptPlace.shape]) : null;
  // Read in the checksum's order (by name), hashed as they arrive.
  const hash = new Sha256();
  hashMetadata(hash, metadata);
  const read = new Map<PlacedTensor, Uint8Array>();
  for (const t of byName(placed)) {
    hashTensorHead(hash, t);
    if (t === keptPlace && sink) {
      for (let at = 0; at < t.length; at += STREAM_CHUNK) {
        const end = Math.min(t.length, at + STREAM_CHUNK);
        const chunk = await reader.read(t.begin + at, t.begin + end);
        hash.update(chunk);
        sink.write(at, chunk);
      }
    } else {
      const bytes = await reader.read(t.begin, t.begin + t.length);
      hash.update(bytes);
      read.set(t, bytes);
    }
  }
  const sum = `sha256:${hash.hex()}`;
  if (sum !== metadata.checksum) {
    throw new ModelFileError(
      source,
      `checksum mismatch: the file says ${metadata.checksum}, its contents hash to ${sum}; ` +
        "the file was changed or corrupted after it was written",
    );
  }
  // In data order, as the model's parameters are.
  const tensors: StoredTensor[] = placed.filter((t) => read.has(t)).map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    bytes: read.get(t)!,
  }));
  const config = parseJsonField(metadata, "config", source);
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    throw new ModelFileError(source, 'metadata "config" is not a JSON object');
  }
  const vocabulary = tensors.find((t) => t.name === ITEMS_TENSOR && t.dtype === "U8");
  if (metadata.format_version === String(VOCABULARY_TENSOR_VERSION) && !vocabulary) {
    throw new ModelFileError(source, `format version 3 needs the vocabulary tensor "items"`);
  }
  const items = checkItems(
    vocabulary
      ? await gzippedJson(vocabulary.bytes, source)
      : parseJsonField(metadata, "items", source),
    source,
  );
  const info = "info" in metadata ? parseJsonField(metadata, "info", source) : {};
  const itemDtype = (metadata.item_dtype ?? "f32") as ItemDtype;
  if (placed.some((t) => t.name === ITEM_SCALE) && itemDtype !== "i8") {
    throw new ModelFileError(source, `tensor "${ITEM_SCALE}" belongs to int8 item tables only`);
  }
  const kept = keptPlace && (tensors.find((t) => t.name === keptPlace.name) ?? keptPlace);
  const params = tensors.filter((t) => t.name !== ITEM_SCALE && t !== kept && t !== vocabulary);
  const values = new Float32Array(params.reduce((n, t) => n + sizeOf(t.shape), 0));
  let offset = 0;
  for (const t of params) {
    values.set(decodedValues(t, tensors, source), offset);
    offset += sizeOf(t.shape);
  }
  return {
    model: metadata.model,
    config: config as Record<string, unknown>,
    items,
    params: params.map(({ name, shape }) => ({ name, shape })),
    values,
    info: (info ?? {}) as Record<string, unknown>,
    itemDtype,
    formatVersion: Number(metadata.format_version),
    ...(kept
      ? {
        int8Items: {
          name: kept.name,
          shape: [...kept.shape],
          ...("bytes" in kept ? { codes: kept.bytes } : {}),
          scales: int8Scales(kept, tensors, source),
        },
      }
      : {}),
  };
}

/** A reader over bytes in memory: each range a view. */
function bytesReader(bytes: Uint8Array, name: string): ModelFileReader {
  return {
    size: bytes.length,
    name,
    read: (begin, end) => Promise.resolve(bytes.subarray(begin, end)),
    close() {},
  };
}

function sizeOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * The row scales of the int8 item table `t` (`item.scale`).
 *
 * @throws {ModelFileError} They are missing or of the wrong shape.
 */
function int8Scales(
  t: { shape: number[] },
  all: StoredTensor[],
  source: string,
): Float32Array {
  const scale = all.find((s) => s.name === ITEM_SCALE);
  if (!scale || scale.shape.length !== 1 || scale.shape[0] !== t.shape[0]) {
    throw new ModelFileError(
      source,
      `the int8 item table [${t.shape}] needs "${ITEM_SCALE}" [${t.shape[0]}], found ` +
        (scale ? `[${scale.shape}]` : "none"),
    );
  }
  const scales = new Float32Array(scale.shape[0]);
  new Uint8Array(scales.buffer).set(scale.bytes);
  return scales;
}

/**
 * A stored tensor's values as float32: float32 bytes copied (the data need not be 4-aligned
 * in the file), the item table decoded from float16 or from int8 and its row scales.
 *
 * @throws {ModelFileError} An int8 item table whose `item.scale` is missing or of the wrong
 * shape.
 */
function decodedValues(t: StoredTensor, all: StoredTensor[], source: string): Float32Array {
  if (t.dtype === "F16") return decodeFloat16(t.bytes);
  if (t.dtype === "I8") return decodeInt8Rows(t.bytes, int8Scales(t, all, source), t.shape[1]);
  const out = new Float32Array(t.bytes.length / 4);
  new Uint8Array(out.buffer).set(t.bytes);
  return out;
}

/** Where a model file can come from. */
export type ModelSource = string | URL | Response | Uint8Array | ArrayBuffer;

/**
 * A download's progress: the bytes so far, and the total the server declared
 * (`content-length`), undefined when it declared none.
 */
export type LoadProgress = (loaded: number, total: number | undefined) => void;

/**
 * The bytes of a model file from a path (under Deno), a URL (`http:`, `https:`, `file:`,
 * `data:`, fetched), a `Response`, or bytes; and a name for errors.
 *
 * @param source Where the file is.
 * @param maxBytes The largest file fetched from a URL or read from a `Response`: a larger one
 * is refused from its `content-length`, or when the download passes it. Paths (the caller's
 * own files) and bytes in memory are not limited.
 * @param stallMs See {@linkcode MODEL_FETCH_STALL_MS}.
 * @param onProgress Called as a fetched file's bytes arrive: the bytes so far and the total
 * its `content-length` declares (undefined without one). Not called for paths and bytes.
 * @throws {TypeError} A path where the runtime has no file system (pass a URL or bytes).
 * @throws {RangeError} A fetched file larger than `maxBytes` (both sizes are named).
 * @throws {TypeError} A `Response` whose body was already read.
 * @throws {Error} A fetch that fails or answers with an HTTP error (the status is named).
 */
export async function modelFileBytes(
  source: ModelSource,
  maxBytes: number = MAX_MODEL_FILE_BYTES,
  stallMs: number = MODEL_FETCH_STALL_MS,
  onProgress?: LoadProgress,
): Promise<{ bytes: Uint8Array; name: string }> {
  checkLimits(maxBytes, stallMs);
  if (source instanceof Uint8Array) return { bytes: source, name: "model bytes" };
  if (source instanceof ArrayBuffer) return { bytes: new Uint8Array(source), name: "model bytes" };
  if (source instanceof Response) {
    return await responseBytes(source, source.url || "response", maxBytes, undefined, onProgress);
  }
  const text = String(source);
  if (source instanceof URL || isUrlText(text)) {
    const stall = new StallTimer(stallMs);
    let response: Response;
    try {
      response = await fetch(text, { signal: stall.signal });
    } catch (e) {
      stall.stop();
      if (stall.fired) throw stall.error(text, "no answer");
      throw new Error(`${text}: could not fetch the model file (${(e as Error).message})`);
    }
    try {
      return await responseBytes(response, text, maxBytes, stall, onProgress);
    } finally {
      stall.stop();
    }
  }
  // deno-lint-ignore no-explicit-any
  const deno = (globalThis as any).Deno;
  if (!deno?.readFile) {
    throw new TypeError(
      `${text}: loading a model from a path needs a file system; pass a URL, a Response or bytes`,
    );
  }
  return { bytes: await pathBytes(deno, text), name: text };
}

/** A reader of the file at `path`, by range (seek and read; never the whole unless asked). */
// deno-lint-ignore no-explicit-any
async function pathReader(deno: any, path: string): Promise<ModelFileReader> {
  const file = await openRegularFile(deno, path);
  let size: number;
  try {
    size = (await file.stat()).size;
  } catch (e) {
    file.close();
    throw e;
  }
  return {
    size,
    name: path,
    read: async (begin, end) => {
      const out = new Uint8Array(end - begin);
      await file.seek(begin, deno.SeekMode.Start);
      for (let at = 0; at < out.length;) {
        const n = await file.read(out.subarray(at));
        if (n === null) {
          throw new ModelFileError(path, `ended after ${begin + at} of ${size} bytes`);
        }
        at += n;
      }
      return out;
    },
    close: () => file.close(),
  };
}

/**
 * `path` opened for reading, where it is a regular file (a device or FIFO could be read
 * without end; opening a FIFO waits for a writer, so it is looked at first).
 *
 * @throws {Deno.errors.NotFound} No such file (the message names it as a model file).
 * @throws {ModelFileError} Not a regular file.
 */
// deno-lint-ignore no-explicit-any
async function openRegularFile(deno: any, path: string) {
  try {
    if (!(await deno.stat(path)).isFile) {
      throw new ModelFileError(path, "is not a regular file (a folder, a device or a pipe?)");
    }
    return await deno.open(path);
  } catch (e) {
    if (e instanceof deno.errors.NotFound) {
      throw new deno.errors.NotFound(`model file not found: ${path}`);
    }
    throw e;
  }
}

/** Whether a source's text is a URL to fetch (`scheme://...` or `data:`), not a path. */
function isUrlText(text: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\/|^data:/i.test(text);
}

/**
 * @throws {RangeError} A `maxBytes` that is not a positive integer, or a `stallMs` that is not
 * a positive number.
 */
function checkLimits(maxBytes: number, stallMs: number): void {
  if (!(Number.isSafeInteger(maxBytes) && maxBytes > 0)) {
    throw new RangeError(`maxBytes must be a positive integer, got ${maxBytes}`);
  }
  if (!(Number.isFinite(stallMs) && stallMs > 0)) {
    throw new RangeError(`stallMs must be a positive number, got ${stallMs}`);
  }
}

/**
 * A model file's bytes from a path, with the data readers' checks: a regular file (a device
 * or FIFO could be read without end), and the header length in its first 8 bytes fitting
 * its size, before the whole is read (a 2 GB text file passed as a model was read whole,
 * peaking at 4.2 GB, before it was refused).
 */
// deno-lint-ignore no-explicit-any
async function pathBytes(deno: any, path: string): Promise<Uint8Array> {
  const reader = await pathReader(deno, path);
  try {
    if (reader.size < 8) {
      throw new ModelFileError(path, `holds ${reader.size} bytes, too few for a safetensors file`);
    }
    headerLength(await reader.read(0, 8), reader.size, path); // before the whole is read
    return await reader.read(0, reader.size);
  } finally {
    reader.close();
  }
}

/**
 * A model file opened for reading by range: a path (under Deno) read piece by piece as it
 * is decoded, never whole; anything else fetched or taken whole, as
 * {@linkcode modelFileBytes} does (with its limits and progress). Close it when done.
 *
 * @throws As {@linkcode modelFileBytes}.
 */
export async function openModelFile(
  source: ModelSource,
  maxBytes: number = MAX_MODEL_FILE_BYTES,
  stallMs: number = MODEL_FETCH_STALL_MS,
  onProgress?: LoadProgress,
): Promise<ModelFileReader> {
  // deno-lint-ignore no-explicit-any
  const deno = (globalThis as any).Deno;
  checkLimits(maxBytes, stallMs); // refused for paths too, though a path is not limited
  // (Not `String(source)` first: that would spell out every byte of a Uint8Array.)
  if (typeof source !== "string" || isUrlText(source) || !deno?.open) {
    const { bytes, name } = await modelFileBytes(source, maxBytes, stallMs, onProgress);
    return bytesReader(bytes, name);
  }
  return await pathReader(deno, source);
}

/** Aborts a fetch when nothing arrives for `ms`; {@linkcode StallTimer.arm} restarts it. */
class StallTimer {
  readonly #controller = new AbortController();
  readonly #ms: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** Whether it aborted the fetch. */
  fired = false;

  constructor(ms: number) {
    this.#ms = ms;
    this.arm();
  }

  /** The signal to fetch with. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** Starts the wait again (something arrived). */
  arm(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.fired = true;
      this.#controller.abort();
    }, this.#ms);
  }

  /** Ends the wait. */
  stop(): void {
    clearTimeout(this.#timer);
  }

  /** The error of a fetch this timer cut: what did not arrive, and after how long. */
  error(name: string, what: string): Error {
    return new Error(
      `${name}: ${what} from the server for ${this.#ms / 1000} s; gave up fetching the model file`,
    );
  }
}

/** The body of `response`, read chunk by chunk so that a body over `maxBytes` stops early. */
async function responseBytes(
  response: Response,
  name: string,
  maxBytes: number,
  stall?: StallTimer,
  onProgress?: LoadProgress,
) {
  if (response.bodyUsed || response.body?.locked) {
    throw new TypeError(`${name}: the response's body was already read`);
  }
  // Dropping a body we will not read frees the connection; a failure to drop it is not
  // the error to report.
  const drop = () => response.body?.cancel().catch(() => {});
  if (!response.ok) {
    await drop();
    throw new Error(`${name}: fetching the model file answered HTTP ${response.status}`);
  }
  const declared = Number(response.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) {
    await drop();
    throw tooLarge(name, declared, maxBytes);
  }
  // Into one buffer of the declared size (grown by doubling where the body is longer, as a
  // compressed transfer's is): not a list of chunks joined at the end, which held the file
  // twice.
  let bytes = new Uint8Array(Number.isFinite(declared) && declared > 0 ? declared : 1 << 20);
  let length = 0;
  // A reader, not `for await`: Safari's streams are not async iterable.
  const reader = response.body?.getReader();
  for (;;) {
    stall?.arm();
    let chunk;
    try {
      chunk = await reader?.read();
    } catch (e) {
      if (stall?.fired) throw stall.error(name, `nothing more after ${length} bytes`);
      throw e;
    }
    if (!chunk || chunk.done) break;
    length += chunk.value.length;
    if (length > maxBytes) {
      await reader!.cancel().catch(() => {});
      throw tooLarge(name, length, maxBytes, "at least ");
    }
    if (length > bytes.length) {
      const grown = new Uint8Array(Math.min(maxBytes, Math.max(length, 2 * bytes.length)));
      grown.set(bytes.subarray(0, length - chunk.value.length));
      bytes = grown;
    }
    bytes.set(chunk.value, length - chunk.value.length);
    onProgress?.(length, Number.isFinite(declared) ? declared : undefined);
  }
  return { bytes: bytes.subarray(0, length), name };
}

function tooLarge(name: string, size: number, maxBytes: number, atLeast = ""): RangeError {
  return new RangeError(
    `${name}: the model file is ${atLeast}${size} bytes, more than the ${maxBytes} allowed ` +
      `(maxFileBytes)`,
  );
}
