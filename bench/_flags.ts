/**
 * Flag checks shared by the bench tools: a bad value stops the tool with the flag's name
 * and the text given, before any backend starts. Also the permission flags of the Deno
 * processes they start.
 *
 * @module
 */

/** Permissions of the Deno processes the bench tools start: those `deno task train` has
 * (`--allow-ffi` for the native BLAS, `--allow-sys` for wasm's thread count). */
export const CHILD_PERMISSIONS: readonly string[] = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys",
  "--allow-ffi",
];

/** `text` as a positive integer, or a RangeError naming `--flag` and the text. */
export function positiveInt(flag: string, text: string | undefined): number {
  const n = Number(text);
  if (text === undefined || !Number.isInteger(n) || n < 1) {
    throw new RangeError(`--${flag} must be a positive integer, got "${text}"`);
  }
  return n;
}

/** `text` as a positive finite number, or a RangeError naming `--flag` and the text. */
export function positiveNumber(flag: string, text: string | undefined): number {
  const n = Number(text);
  if (text === undefined || !(n > 0) || !Number.isFinite(n)) {
    throw new RangeError(`--${flag} must be a positive number, got "${text}"`);
  }
  return n;
}

/** `positiveInt` of an optional flag: undefined when the flag was not given. */
export function optionalPositiveInt(flag: string, text: string | undefined): number | undefined {
  return text === undefined ? undefined : positiveInt(flag, text);
}
