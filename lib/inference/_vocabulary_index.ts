/**
 * A token -> id index over a fixed vocabulary array (a loaded model's), in one `Int32Array` of
 * open-addressed slots: 8 MB at a million tokens, which stay where they are, in the array. A
 * `Map` took 49 MB of JavaScript heap and 105 MB of resident memory while it grew (measured at
 * 6345cd9 loading a 1M-item model file, docs/serving.md). `lib/data/_dense.ts`'s `TokenIndex`
 * is the growable one the data readers build vocabularies with.
 *
 * @module
 */

/** The 32-bit FNV-1a hash of a string's UTF-16 code units. */
function hashOf(token: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < token.length; i++) h = Math.imul(h ^ token.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The ids of `tokens[from..]` by token; lookups of anything else say undefined. */
export class VocabularyIndex {
  readonly #tokens: readonly string[];
  readonly #slots: Int32Array; // id + 1 of the token hashed there, 0 where empty
  readonly #mask: number;

  /**
   * Indexes `tokens[from..]`.
   *
   * @param onDuplicate Called (and expected to throw) for a token at `second` that is
   * already at `first`; without it a {@linkcode RangeError} names both.
   */
  constructor(
    tokens: readonly string[],
    from = 0,
    onDuplicate?: (token: string, first: number, second: number) => never,
  ) {
    this.#tokens = tokens;
    // At most half full, so that probes stay short.
    let size = 16;
    while (size < 2 * (tokens.length - from)) size *= 2;
    this.#slots = new Int32Array(size);
    this.#mask = size - 1;
    for (let id = from; id < tokens.length; id++) {
      const token = tokens[id];
      let slot = hashOf(token) & this.#mask;
      for (; this.#slots[slot] !== 0; slot = (slot + 1) & this.#mask) {
        const first = this.#slots[slot] - 1;
        if (tokens[first] === token) {
          if (onDuplicate) onDuplicate(token, first, id);
          throw new RangeError(
            `token ${JSON.stringify(token)} is both at ${first} and at ${id} of the vocabulary`,
          );
        }
      }
      this.#slots[slot] = id + 1;
    }
  }

  /** The id of `token`, or undefined where it is not indexed. */
  get(token: string): number | undefined {
    for (let slot = hashOf(token) & this.#mask;; slot = (slot + 1) & this.#mask) {
      const entry = this.#slots[slot];
      if (entry === 0) return undefined;
      if (this.#tokens[entry - 1] === token) return entry - 1;
    }
  }
}
