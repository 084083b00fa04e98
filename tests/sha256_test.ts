/**
 * The incremental SHA-256 (`lib/inference/_sha256.ts`) against WebCrypto's, on random
 * bytes cut into random pieces.
 *
 * @module
 */
import fc from "fast-check";
import { Sha256 } from "../lib/inference/_sha256.ts";
import { assertEquals, assertThrows } from "./_assert.ts";

async function subtleHex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("Sha256 equals crypto.subtle's SHA-256 however the input is cut (400 random cases)", async () => {
  await fc.assert(
    fc.asyncProperty(
      // Lengths around the block (64) and padding (56) edges, and past several blocks.
      fc.uint8Array({ minLength: 0, maxLength: 300 }),
      fc.array(fc.nat({ max: 300 }), { maxLength: 6 }),
      async (bytes, cuts) => {
        const points = [0, ...cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b)];
        const hash = new Sha256();
        for (let i = 0; i < points.length; i++) {
          hash.update(bytes.subarray(points[i], points[i + 1] ?? bytes.length));
        }
        assertEquals(hash.hex(), await subtleHex(bytes));
      },
    ),
    { numRuns: 400 },
  );
});

Deno.test("Sha256: FIPS 180-4's examples, a million bytes in uneven pieces, no input after the digest", async () => {
  const text = (s: string) => new TextEncoder().encode(s);
  assertEquals(
    new Sha256().update(text("abc")).hex(),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  assertEquals(
    new Sha256().update(text("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")).hex(),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
  const million = new Uint8Array(1_000_000).map((_, i) => (i * 31 + (i >> 9)) & 255);
  const hash = new Sha256();
  for (let at = 0, step = 1; at < million.length; at += step, step = (step * 3) % 65_537 + 1) {
    hash.update(million.subarray(at, at + step));
  }
  assertEquals(hash.hex(), await subtleHex(million));
  assertThrows(() => hash.update(text("more")), Error, "already finished");
  assertThrows(() => hash.hex(), Error, "already finished");
});
