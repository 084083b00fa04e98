/**
 * Checkpoints: a folder holding `model.json` (model name, full config, training settings,
 * data vocabulary, parameter names and shapes, a checksum over all of it and the weights)
 * and `weights.bin` (every parameter as little-endian float32, in creation order).
 *
 * Writing is atomic: the new checkpoint is written complete into a sibling folder and
 * swapped in with renames, so a crash at any moment leaves either the previous checkpoint
 * or the new one intact, never a mixture.
 *
 * @module
 */
import { writing } from "../_io.ts";
import type { ParamRecord } from "../nn/params.ts";
import type { LeaveOneOutSplit } from "../data/types.ts";
import { sha256Hex } from "../inference/model_file.ts";

/** The `model.json` of a checkpoint. */
export interface CheckpointMeta {
  /**
   * Format version of this file. 2: the checksum covers all of `model.json` (config,
   * vocabulary, data, settings) and `weights.bin`. 1 (read only, from earlier runs): it
   * covers `weights.bin` alone.
   */
  format: 1 | 2;
  /** Model name, as in `--model`. */
  model: string;
  /** The model's full configuration. */
  config: Record<string, unknown>;
  /** How the data was read (path or synthetic options), to rebuild it for evaluation. */
  data: Record<string, unknown>;
  /** Training settings of the run. */
  train: Record<string, unknown>;
  /**
   * The named config bundle the run's config was built from (`deno task train --preset`, or
   * the model's default preset), for the record: `config` holds every field. Absent where
   * none was applied, and in runs from before presets were recorded.
   */
  preset?: string;
  /** Dense item id -> token (index 0 = padding). */
  itemTokens: string[];
  /** Epoch (1-based) whose parameters these are. */
  epoch: number;
  /** Validation metrics of that epoch. */
  valid: Record<string, number>;
  /** Parameter names and shapes, in the order of `weights.bin`. */
  params: ParamRecord[];
  /**
   * Present in a run's `state/` folder only: where training stands after `epoch`, so that
   * `train` can resume it. `weights.bin` then also holds Adam's first and second moments
   * after the parameters (records named `adam.m/NAME` and `adam.v/NAME`).
   */
  resume?: ResumeState;
  /** Number of float32 values in `weights.bin`. */
  values: number;
  /**
   * Format 2: `"sha256:"` and the SHA-256 of `model.json`'s other fields (as canonical JSON:
   * keys sorted, no spaces), a newline, and `weights.bin`'s bytes. Format 1: FNV-1a of
   * `weights.bin` alone, hex.
   */
  checksum: string;
}

/** Every field `model.json` may hold; any other is rejected. */
const META_FIELDS = new Set([
  "format",
  "model",
  "config",
  "data",
  "train",
  "preset",
  "itemTokens",
  "epoch",
  "valid",
  "params",
  "resume",
  "values",
  "checksum",
]);

/** JSON with object keys sorted at every level: the same value always gives the same text. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

/** The format-2 checksum of a checkpoint (see {@linkcode CheckpointMeta.checksum}). */
async function checkpointChecksum(
  meta: Omit<CheckpointMeta, "checksum">,
  weights: Uint8Array,
): Promise<string> {
  const head = new TextEncoder().encode(canonicalJson(meta) + "\n");
  return `sha256:${await sha256Hex([head, weights])}`;
}

/**
 * `"sha256:"` and the SHA-256 of a leave-one-out split: every training sequence, and every
 * validation and test example's user, history and target, in order, each list
 * length-prefixed. Equal for the same data read the same way; any changed, added, removed or
 * reordered interaction changes it.
 */
export async function splitFingerprint(split: LeaveOneOutSplit): Promise<string> {
  const ints: number[] = [split.train.length];
  const list = (items: Int32Array) => {
    ints.push(items.length);
    for (const item of items) ints.push(item);
  };
  split.train.forEach(list);
  for (const examples of [split.valid, split.test]) {
    ints.push(examples.length);
    for (const e of examples) {
      ints.push(e.user, e.target);
      list(e.history);
    }
  }
  const bytes = new Uint8Array(Int32Array.from(ints).buffer);
  return `sha256:${await sha256Hex([bytes])}`;
}

/** Where an interrupted training run stands at the end of an epoch. */
export interface ResumeState {
  /** Adam steps taken so far (also the next step's seed index). */
  step: number;
  /** State of the batching generator at the start of the next epoch. */
  rngState: number;
  /** Best validation epoch so far (0: none yet), its Recall@20 and metrics. */
  best: { epoch: number; score: number; valid: Record<string, number> };
  /** Evaluations since the best one, counted in epochs (early stopping). */
  sinceBest: number;
  /** Wall seconds of training so far. */
  seconds: number;
  /**
   * Adam steps each parameter has taken, in the order of `params` (a parameter that joined
   * training late has fewer); absent in states written before it existed, where a parameter
   * with moments of exactly 0 had taken none and every other one `step`.
   */
  adamSteps?: number[];
  /**
   * {@linkcode splitFingerprint} of the run's split: resume refuses data whose sequences
   * differ even where the vocabulary and file name are the same. Absent in states written
   * before it existed, which are not checked.
   */
  split?: string;
}

/** FNV-1a 32-bit hash of a byte array, as 8 hex digits. */
export function fnv1a(bytes: Uint8Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Writes a checkpoint folder at `dir` atomically (see the module doc). */
export async function writeCheckpoint(
  dir: string,
  meta: Omit<CheckpointMeta, "format" | "values" | "checksum">,
  values: Float32Array,
): Promise<void> {
  await writing(dir, () => writeCheckpointFolder(dir, meta, values));
}

async function writeCheckpointFolder(
  dir: string,
  meta: Omit<CheckpointMeta, "format" | "values" | "checksum">,
  values: Float32Array,
): Promise<void> {
  const next = `${dir}.next`;
  const prev = `${dir}.prev`;
  await Deno.remove(next, { recursive: true }).catch(() => {});
  await Deno.mkdir(next, { recursive: true });
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const unsummed: Omit<CheckpointMeta, "checksum"> = { format: 2, ...meta, values: values.length };
  // Through JSON first, so the checksum is of what model.json will hold (-0 becomes 0, ...).
  const stored = JSON.parse(JSON.stringify(unsummed));
  const full: CheckpointMeta = { ...unsummed, checksum: await checkpointChecksum(stored, bytes) };
  await writeSynced(`${next}/weights.bin`, bytes);
  // Synced too: after a power loss an empty model.json would not fall back to `.prev`.
  await writeSynced(
    `${next}/model.json`,
    new TextEncoder().encode(JSON.stringify(full, null, 1) + "\n"),
  );
  await syncFolder(next); // the two names, not only their bytes
  if (await exists(dir)) {
    await Deno.remove(prev, { recursive: true }).catch(() => {});
    await Deno.rename(dir, prev);
  }
  await Deno.rename(next, dir);
  // The swap on disk before `.prev` goes: a power loss then cannot leave neither folder.
  await syncFolder(parentFolder(dir));
  await Deno.remove(prev, { recursive: true }).catch(() => {});
}

/**
 * Writes `bytes` to `path` atomically: into `path.tmp`, synced, then renamed over `path`
 * and the folder synced, so a crash or a power loss leaves the old file or the new one,
 * never a part.
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  await writing(path, async () => {
    await writeSynced(`${path}.tmp`, bytes);
    await Deno.rename(`${path}.tmp`, path);
    await syncFolder(parentFolder(path));
  });
}

/** The folder holding `path` ("." for a bare name). */
function parentFolder(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const slash = trimmed.lastIndexOf("/");
  return slash < 0 ? "." : slash === 0 ? "/" : trimmed.slice(0, slash);
}

/**
 * Syncs a folder's entries to disk, so a rename in it survives a power loss. Best effort:
 * where a folder cannot be opened as a file (Windows) or synced (some network file systems)
 * the rename is as durable as the operating system makes it on its own.
 */
async function syncFolder(dir: string): Promise<void> {
  let folder: Deno.FsFile | undefined;
  try {
    folder = await Deno.open(dir, { read: true });
    await folder.sync();
  } catch {
    // See above: not an error of the write itself.
  } finally {
    folder?.close();
  }
}

/** Writes (or with `append`, appends) `bytes` to `path` and waits until they are on disk. */
export async function writeSynced(path: string, bytes: Uint8Array, append = false): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: !append, append });
  try {
    let off = 0;
    while (off < bytes.length) off += await f.write(bytes.subarray(off));
    await f.sync();
  } finally {
    f.close();
  }
}

/**
 * Reads a checkpoint folder. Falls back to `dir.prev` when a crash interrupted a swap.
 * Throws a `SyntaxError` or `RangeError` naming the file and field when anything is off.
 */
export async function readCheckpoint(
  dir: string,
): Promise<{ meta: CheckpointMeta; values: Float32Array; path: string }> {
  let path = dir.replace(/\/+$/, "");
  if (!(await exists(`${path}/model.json`)) && (await exists(`${path}.prev/model.json`))) {
    path = `${path}.prev`;
  }
  const metaPath = `${path}/model.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(metaPath);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`No checkpoint at ${dir}: ${metaPath} does not exist`);
    }
    throw e;
  }
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${metaPath}: not valid JSON (${(e as Error).message})`);
  }
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    throw new SyntaxError(`${metaPath}: not a JSON object`);
  }
  if (meta.format !== 1 && meta.format !== 2) {
    throw new RangeError(`${metaPath}: field "format" is ${meta.format}, expected 1 or 2`);
  }
  for (const field of ["model", "config", "data", "itemTokens", "params", "values", "checksum"]) {
    if (!(field in meta)) throw new SyntaxError(`${metaPath}: field "${field}" is missing`);
  }
  for (const field of Object.keys(meta)) {
    if (!META_FIELDS.has(field)) {
      throw new SyntaxError(`${metaPath}: unknown field "${field}" (a changed or foreign file?)`);
    }
  }
  if (meta.preset !== undefined && typeof meta.preset !== "string") {
    throw new SyntaxError(
      `${metaPath}: field "preset" is ${JSON.stringify(meta.preset)}, not a name`,
    );
  }
  const bytes = await Deno.readFile(`${path}/weights.bin`);
  if (bytes.length !== meta.values * 4) {
    throw new RangeError(
      `${path}/weights.bin: holds ${bytes.length} bytes, model.json field "values" says ${meta.values} float32 values (${
        meta.values * 4
      } bytes)`,
    );
  }
  const { checksum: _, ...unsummed } = meta;
  const sum = meta.format === 2 ? await checkpointChecksum(unsummed, bytes) : fnv1a(bytes);
  if (sum !== meta.checksum) {
    const what = meta.format === 2 ? `${metaPath} and weights.bin` : `${path}/weights.bin`;
    throw new RangeError(
      `${what}: checksum ${sum} does not match model.json field "checksum" ${meta.checksum}; ` +
        "the checkpoint was changed or corrupted after it was written",
    );
  }
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, meta.values);
  return { meta, values, path };
}
