/**
 * The vocabulary's token -> id index (`lib/inference/_vocabulary_index.ts`) against a `Map`.
 *
 * @module
 */
import fc from "fast-check";
import { VocabularyIndex } from "../lib/inference/_vocabulary_index.ts";
import { assertEquals, assertThrows } from "./_assert.ts";

Deno.test("VocabularyIndex finds every indexed token's id and nothing else, as a Map does (300 random vocabularies)", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.string({ maxLength: 6 }), { minLength: 1, maxLength: 200 }),
      fc.array(fc.string({ maxLength: 6 }), { maxLength: 30 }),
      fc.nat({ max: 3 }),
      (tokens, others, from) => {
        const index = new VocabularyIndex(tokens, from);
        const map = new Map(tokens.slice(from).map((t, i) => [t, i + from]));
        for (const t of [...tokens, ...others]) assertEquals(index.get(t), map.get(t), t);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("VocabularyIndex names a repeated token with both places, through the caller's error when given", () => {
  assertThrows(
    () => new VocabularyIndex(["<pad>", "a", "b", "a"]),
    RangeError,
    'token "a" is both at 1 and at 3',
  );
  // From 1: a token equal to the one at 0 is not a repeat.
  assertEquals(new VocabularyIndex(["x", "x", "y"], 1).get("x"), 1);
  class Mine extends Error {}
  assertThrows(
    () =>
      new VocabularyIndex(["p", "q", "p"], 0, (t, a, b) => {
        throw new Mine(`${t} ${a} ${b}`);
      }),
    Mine,
    "p 0 2",
  );
  // A million tokens: all found, in an index of 2^21 slots.
  const many = Array.from({ length: 1_000_000 }, (_, i) => `i${i}`);
  const index = new VocabularyIndex(many);
  for (let i = 0; i < many.length; i += 9_973) assertEquals(index.get(many[i]), i);
  assertEquals(index.get("i1000000"), undefined);
});
