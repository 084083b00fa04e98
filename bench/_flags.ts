/**
 * Flag checks shared by the bench tools: a bad value stops the tool with the flag's name
 * and the text given, before any backend starts. Also the permission flags of the Deno
 * processes they start. Importing this module makes an uncaught error of a bench tool (a
 * bad flag, a missing file) end it with `error: MESSAGE` and exit code 1, not a stack
 * trace; `SIGMA_DEBUG=1` prints the stack too, as for the CLI.
 *
 * @module
 */

/** Prints `error` as the CLI does and ends the process with exit code 1. */
function stopWith(error: unknown): never {
  console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
  const env = Deno.permissions.querySync({ name: "env", variable: "SIGMA_DEBUG" }).state;
  if (error instanceof Error && env === "granted" && Deno.env.get("SIGMA_DEBUG")) {
    console.error(error.stack);
  }
  Deno.exit(1);
}

globalThis.addEventListener("error", (e) => {
  e.preventDefault();
  stopWith(e.error ?? e.message);
});
globalThis.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  stopWith(e.reason);
});

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
