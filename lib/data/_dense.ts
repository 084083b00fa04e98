/**
 * Helpers shared by the readers: dense token indices and error-message formatting.
 *
 * @module
 */

/** Padding marker stored at `vocab.items[0]`. */
export const PAD_TOKEN = "<pad>";

/** Assigns dense ids to tokens in order of first appearance, starting at `first`. */
export class TokenIndex {
  readonly tokens: string[] = [];
  readonly #ids = new Map<string, number>();
  readonly #first: number;

  constructor(first: number) {
    this.#first = first;
  }

  /** The dense id of `token`, assigning the next one on first sight. */
  id(token: string): number {
    let id = this.#ids.get(token);
    if (id === undefined) {
      id = this.#first + this.tokens.length;
      this.#ids.set(token, id);
      this.tokens.push(token);
    }
    return id;
  }

  /** The dense id of `token`, or undefined when it was never seen. */
  get(token: string): number | undefined {
    return this.#ids.get(token);
  }

  get size(): number {
    return this.tokens.length;
  }
}

/** Offending text for an error message, shortened so a huge line cannot flood the log. */
export function quote(text: string, max = 80): string {
  const t = text.length > max ? `${text.slice(0, max)}…` : text;
  return JSON.stringify(t);
}

/**
 * Control characters (other than tab, LF and CR) and U+FFFD, the mark of bytes that were not
 * UTF-8: a text data file has none, so one means binary or corrupted input.
 */
// deno-lint-ignore no-control-regex
const NOT_TEXT = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\ufffd]/;

/**
 * Splits text into lines, accepting both LF and CRLF files.
 *
 * @throws {SyntaxError} The text holds a control character, undecodable bytes or a CR
 * without its LF: binary, corrupted or CR-only input is refused, naming `source` and the
 * line, rather than read as tokens.
 */
export function splitLines(text: string, source: string): string[] {
  const bad = NOT_TEXT.exec(text);
  if (bad) {
    const line = text.slice(0, bad.index).split("\n").length;
    const code = bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
    throw new SyntaxError(
      `${source}:${line}: character U+${code} is not text: is this a binary or corrupted file?`,
    );
  }
  // A CR with more text after it on its line (classic Mac endings) would read as a space and
  // merge two lines. Trailing ones (CR CR LF, a last line ending in CR) are whitespace.
  const cr = /\r[ \t]*[^\s]/.exec(text);
  if (cr) {
    const line = text.slice(0, cr.index).split("\n").length;
    throw new SyntaxError(
      `${source}:${line}: a carriage return (CR) inside the line, as if it ended there; ` +
        "lines must end in LF or CRLF",
    );
  }
  return text.split(/\r?\n/);
}

/** Checks that `value` is a positive integer, else a RangeError naming `name`. */
export function checkPositiveInt(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive integer, got ${value}`);
  }
}

/** Checks that `value` is a non-negative integer, else a RangeError naming `name`. */
export function checkNonNegativeInt(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
  }
}

/** "1 user" / "3 users": notes read better with the right plural. */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}
