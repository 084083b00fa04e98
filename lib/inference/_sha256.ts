/**
 * SHA-256 (FIPS 180-4) fed in pieces. WebCrypto's `digest` takes its input whole, so a model
 * file's checksum needed the file's bytes joined into one more buffer (and the digest copies
 * its input again): three copies of a 145 MB file at once while loading. This hashes the
 * pieces as they are read, and lets a large tensor stream from a file into the backend's
 * memory without a copy of the whole. Checked against `crypto.subtle` (tests/sha256_test.ts).
 *
 * @module
 */

/** The round constants: the first 32 bits of the fractional cube roots of the first 64 primes. */
const K = Uint32Array.of(
  0x428a2f98,
  0x71374491,
  0xb5c0fbcf,
  0xe9b5dba5,
  0x3956c25b,
  0x59f111f1,
  0x923f82a4,
  0xab1c5ed5,
  0xd807aa98,
  0x12835b01,
  0x243185be,
  0x550c7dc3,
  0x72be5d74,
  0x80deb1fe,
  0x9bdc06a7,
  0xc19bf174,
  0xe49b69c1,
  0xefbe4786,
  0x0fc19dc6,
  0x240ca1cc,
  0x2de92c6f,
  0x4a7484aa,
  0x5cb0a9dc,
  0x76f988da,
  0x983e5152,
  0xa831c66d,
  0xb00327c8,
  0xbf597fc7,
  0xc6e00bf3,
  0xd5a79147,
  0x06ca6351,
  0x14292967,
  0x27b70a85,
  0x2e1b2138,
  0x4d2c6dfc,
  0x53380d13,
  0x650a7354,
  0x766a0abb,
  0x81c2c92e,
  0x92722c85,
  0xa2bfe8a1,
  0xa81a664b,
  0xc24b8b70,
  0xc76c51a3,
  0xd192e819,
  0xd6990624,
  0xf40e3585,
  0x106aa070,
  0x19a4c116,
  0x1e376c08,
  0x2748774c,
  0x34b0bcb5,
  0x391c0cb3,
  0x4ed8aa4a,
  0x5b9cca4f,
  0x682e6ff3,
  0x748f82ee,
  0x78a5636f,
  0x84c87814,
  0x8cc70208,
  0x90befffa,
  0xa4506ceb,
  0xbef9a3f7,
  0xc67178f2,
);

/** An incremental SHA-256: {@linkcode Sha256.update} any number of times, then `hex()`. */
export class Sha256 {
  // The chaining state: the first 32 bits of the fractional square roots of the first 8 primes.
  readonly #h = Uint32Array.of(
    0x6a09e667,
    0xbb67ae85,
    0x3c6ef372,
    0xa54ff53a,
    0x510e527f,
    0x9b05688c,
    0x1f83d9ab,
    0x5be0cd19,
  );
  readonly #w = new Uint32Array(64); // the message schedule
  readonly #block = new Uint8Array(64); // a partial block carried between updates
  #held = 0; // bytes in #block
  #length = 0; // bytes hashed so far
  #done = false;

  /** Hashes `bytes` after everything before. */
  update(bytes: Uint8Array): this {
    if (this.#done) throw new Error("this SHA-256 was already finished");
    this.#length += bytes.length;
    let at = 0;
    if (this.#held > 0) {
      const take = Math.min(64 - this.#held, bytes.length);
      this.#block.set(bytes.subarray(0, take), this.#held);
      this.#held += take;
      at = take;
      if (this.#held < 64) return this;
      this.#compress(this.#block, 0);
      this.#held = 0;
    }
    for (; at + 64 <= bytes.length; at += 64) this.#compress(bytes, at);
    this.#block.set(bytes.subarray(at));
    this.#held = bytes.length - at;
    return this;
  }

  /** The digest as 64 lower-case hex digits; the hash takes no more input after it. */
  hex(): string {
    if (this.#done) throw new Error("this SHA-256 was already finished");
    const bits = this.#length * 8;
    const tail = new Uint8Array(this.#held + 9 <= 64 ? 64 : 128);
    tail.set(this.#block.subarray(0, this.#held));
    tail[this.#held] = 0x80;
    // The length in bits, big-endian in the last 8 bytes (exact below 2^53).
    const view = new DataView(tail.buffer);
    view.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(tail.length - 4, bits >>> 0);
    for (let at = 0; at < tail.length; at += 64) this.#compress(tail, at);
    this.#done = true;
    return Array.from(this.#h, (x) => x.toString(16).padStart(8, "0")).join("");
  }

  /** One 64-byte block of `bytes` from `at` into the state. */
  #compress(bytes: Uint8Array, at: number): void {
    const w = this.#w, h = this.#h;
    for (let i = 0; i < 16; i++) {
      const j = at + 4 * i;
      w[i] = (bytes[j] << 24) | (bytes[j + 1] << 16) | (bytes[j + 2] << 8) | bytes[j + 3];
    }
    for (let i = 16; i < 64; i++) {
      const x = w[i - 15], y = w[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let i = 0; i < 64; i++) {
      const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (k + s1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
  }
}
