/**
 * Flag parsing, backend start-up and progress output shared by the subcommands.
 *
 * @module
 */
import {
  type BackendChoice,
  type BackendPurpose,
  type ChosenBackend,
  selectBackend,
} from "../backends/mod.ts";
import { DIVERSITY_METHODS, type DiversityMethod } from "../lib/eval/diversify.ts";

/** The number a flag holds; a `RangeError` naming the flag otherwise. */
export function numberFlag(flag: string, text: string): number {
  // Decimal notation only: Number() also reads "0x10", "0b1", "0o7" and blanks around.
  const value = DECIMAL.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(value)) {
    throw new RangeError(`--${flag} must be a decimal number, got "${text}"`);
  }
  return value;
}

/** A decimal number: digits with an optional sign, point and exponent. */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * Runs `check`; when it throws, the error names command-line flags instead of the fields
 * the library checked ("batchSize must be ..." becomes "--batch-size must be ...").
 *
 * @param check A check of library options or a model config.
 * @param flags Field name -> flag name (without dashes).
 */
export function withFlagNames<T>(check: () => T, flags: Record<string, string>): T {
  try {
    const out = check();
    // An async check: its rejection is renamed the same way.
    if (out instanceof Promise) {
      return out.catch((e) => {
        throw flagNamed(e, flags);
      }) as T;
    }
    return out;
  } catch (e) {
    throw flagNamed(e, flags);
  }
}

/** `e` with each field of `flags` in its message named as its flag (see `withFlagNames`). */
function flagNamed(e: unknown, flags: Record<string, string>): unknown {
  if (!(e instanceof RangeError || e instanceof TypeError)) return e;
  let message = e.message;
  for (const [field, flag] of Object.entries(flags)) {
    message = message.replace(new RegExp(`\\b${field}\\b(?= must| \\()`, "g"), `--${flag}`);
  }
  return message === e.message ? e : new (e.constructor as ErrorConstructor)(message, { cause: e });
}

/** `--threads`: a positive integer, or undefined when not given. */
export function threadsFlag(text: string | undefined): number | undefined {
  return text === undefined ? undefined : intFlag("threads", text, 1);
}

/** A flag that holds `true` or `false`. */
export function booleanFlag(flag: string, text: string): boolean {
  if (text === "true") return true;
  if (text === "false") return false;
  throw new RangeError(`--${flag} must be true or false, got "${text}"`);
}

/**
 * Progress text to stderr: `\r`-prefixed text replaces the current line on a terminal;
 * in a log file only whole lines are written.
 */
export function progressWriter(): (text: string) => void {
  const encoder = new TextEncoder();
  const tty = Deno.stderr.isTerminal();
  return (text) => {
    if (tty) {
      Deno.stderr.writeSync(
        encoder.encode(text.startsWith("\r") ? `\r\x1b[K${text.slice(1)}` : text),
      );
    } else if (text.endsWith("\n")) {
      // Logs in files get whole lines only: one per epoch.
      Deno.stderr.writeSync(encoder.encode(text.replace(/^\r/, "")));
    }
  };
}

/** An integer flag of at least `min`, or `fallback` when not given. */
export function intFlag(flag: string, text: string | undefined, fallback: number, min = 1): number {
  if (text === undefined) return fallback;
  const n = numberFlag(flag, text);
  // Safe integers only: 1e20 epochs or steps could never be counted to.
  if (!Number.isSafeInteger(n) || n < min) {
    throw new RangeError(`--${flag} must be an integer >= ${min}, got "${text}"`);
  }
  return n;
}

/** The `parseArgs` options of the flags that choose the backend. */
export const BACKEND_OPTIONS = {
  backend: { type: "string" },
  threads: { type: "string" },
  blas: { type: "string" },
} as const;

/**
 * Starts the backend that `--backend`, `--threads` and `--blas` ask for and logs the choice
 * to stderr. `threads` is the wasm thread count when `--threads` is not given (default:
 * every logical CPU); `purpose` is what `auto` weighs (training passes over WebGPU).
 */
export async function startBackend(
  values: { backend?: string; threads?: string; blas?: string },
  threads?: number,
  purpose: BackendPurpose = "inference",
): Promise<ChosenBackend> {
  const chosen = await selectBackend((values.backend ?? "auto") as BackendChoice, {
    wasmThreads: threadsFlag(values.threads) ?? threads,
    blas: values.blas ?? "auto",
    purpose,
  });
  console.error(`backend: ${chosen.name} (${chosen.reason})`);
  return chosen;
}

/** The `parseArgs` options of the flags that change how a diffusion model ranks. */
export const INFERENCE_OPTIONS = {
  "reverse-steps": { type: "string" },
  sampling: { type: "string" },
  "eval-seed": { type: "string" },
  lambda: { type: "string" },
} as const;

/** A config field's flag name: `reverseSteps` -> `reverse-steps`. */
export const kebab = (field: string): string =>
  field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/**
 * The flag of each field of `inference` (see {@linkcode withFlagNames}): only the fields the
 * user set, so that an error about a value stored in a checkpoint is not put on a flag.
 */
export function flagsGiven(inference: Record<string, unknown>): Record<string, string> {
  return Object.fromEntries(Object.keys(inference).map((field) => [field, kebab(field)]));
}

/**
 * The inference overrides the flags ask for (see `withInferenceOverrides`), parsed; empty
 * when none is given. Whether the model has them is checked where it is loaded.
 */
export function inferenceFlags(
  values: { "reverse-steps"?: string; sampling?: string; "eval-seed"?: string; lambda?: string },
): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  if (values["reverse-steps"] !== undefined) {
    out.reverseSteps = intFlag("reverse-steps", values["reverse-steps"], 0, 0);
  }
  if (values.sampling !== undefined) out.sampling = values.sampling;
  if (values["eval-seed"] !== undefined) {
    out.evalSeed = intFlag("eval-seed", values["eval-seed"], 0, 0);
  }
  if (values.lambda !== undefined) out.lambda = numberFlag("lambda", values.lambda);
  return out;
}

/**
 * The diversity flags `eval` and `recommend` share, checked: `--diversity-method` (auto,
 * mmr or interests; default auto) and `--diversity-pool` (default 100); undefined when
 * `--diversity` is not given, where either of the other two is an error.
 */
export function diversityFlags(
  v: Record<string, unknown>,
  shape: string,
): { method: DiversityMethod | "auto"; pool: number } | undefined {
  if (typeof v.diversity !== "string") {
    const stray = ["diversity-method", "diversity-pool"].find((f) => v[f] !== undefined);
    if (stray) throw new TypeError(`--${stray} goes with --diversity ${shape}`);
    return undefined;
  }
  const method = (v["diversity-method"] ?? "auto") as DiversityMethod | "auto";
  if (!DIVERSITY_METHODS.includes(method)) {
    throw new RangeError(
      `--diversity-method must be one of ${DIVERSITY_METHODS.join(", ")}, got "${method}"`,
    );
  }
  const pool = intFlag("diversity-pool", v["diversity-pool"] as string | undefined, 100);
  return { method, pool };
}
