/**
 * Flag checks shared by the bench tools: a bad value stops the tool with the flag's name
 * and the text given, before any backend starts.
 *
 * @module
 */

/** `text` as a positive integer, or a RangeError naming `--flag` and the text. */
export function positiveInt(flag: string, text: string | undefined): number {
  const n = Number(text);
  if (text === undefined || !Number.isInteger(n) || n < 1) {
    throw new RangeError(`--${flag} must be a positive integer, got "${text}"`);
  }
  return n;
}

/** `positiveInt` of an optional flag: undefined when the flag was not given. */
export function optionalPositiveInt(flag: string, text: string | undefined): number | undefined {
  return text === undefined ? undefined : positiveInt(flag, text);
}
