// Batched matrix product for tfjs-backend-wasm's heap: C[b] = op(A[b]) @ op(B[b]).
//
// Why: tfjs-backend-wasm 4.22 sends every matmul with a batch dimension > 1 (attention's
// scores and mixes, and their gradients) to a scalar loop at ~3 GFLOP/s; XNNPACK serves
// only the 2-D case. This kernel keeps a 6x8 block of C in 12 SIMD registers and adds one
// rank-1 update per step of k with fused multiply-adds (relaxed SIMD), which is what the
// small matrices of attention (L x L x d/h, e.g. 50 x 50 x 32) need.
//
// Build: backends/wasm/build.sh (clang 16). The module imports the heap it works on
// ("env" "memory") and keeps no state of its own: no stack, no globals, no data.
#include <stdint.h>
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(name)))

static inline v128_t madd(v128_t a, v128_t b, v128_t c) {
  // a * b + c, fused where the CPU can (clang 16 has the builtin but not yet the
  // wasm_simd128.h name wasm_f32x4_relaxed_madd).
  typedef float f32x4 __attribute__((vector_size(16)));
  return (v128_t)__builtin_wasm_relaxed_madd_f32x4((f32x4)a, (f32x4)b, (f32x4)c);
}

// One matrix: c[M, N] = op(a) @ op(b), where op(a)[m, k] = a[m * sam + k * sak] and
// op(b)[k, n] = b[k * sbk + n], rows of op(b) contiguous (the caller packs b otherwise).
static void gemm(const float *a, int sam, int sak, const float *b, int sbk, float *c,
                 int M, int N, int K) {
  int m = 0;
  for (; m + 6 <= M; m += 6) {
    int n = 0;
    for (; n + 8 <= N; n += 8) {
      v128_t c00 = wasm_f32x4_splat(0), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
             c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
      const float *ap = a + m * sam;
      const float *bp = b + n;
      for (int k = 0; k < K; k++) {
        const v128_t b0 = wasm_v128_load(bp), b1 = wasm_v128_load(bp + 4);
        v128_t x;
        x = wasm_f32x4_splat(ap[0]);
        c00 = madd(x, b0, c00), c01 = madd(x, b1, c01);
        x = wasm_f32x4_splat(ap[sam]);
        c10 = madd(x, b0, c10), c11 = madd(x, b1, c11);
        x = wasm_f32x4_splat(ap[2 * sam]);
        c20 = madd(x, b0, c20), c21 = madd(x, b1, c21);
        x = wasm_f32x4_splat(ap[3 * sam]);
        c30 = madd(x, b0, c30), c31 = madd(x, b1, c31);
        x = wasm_f32x4_splat(ap[4 * sam]);
        c40 = madd(x, b0, c40), c41 = madd(x, b1, c41);
        x = wasm_f32x4_splat(ap[5 * sam]);
        c50 = madd(x, b0, c50), c51 = madd(x, b1, c51);
        ap += sak;
        bp += sbk;
      }
      float *cp = c + m * N + n;
      wasm_v128_store(cp, c00), wasm_v128_store(cp + 4, c01), cp += N;
      wasm_v128_store(cp, c10), wasm_v128_store(cp + 4, c11), cp += N;
      wasm_v128_store(cp, c20), wasm_v128_store(cp + 4, c21), cp += N;
      wasm_v128_store(cp, c30), wasm_v128_store(cp + 4, c31), cp += N;
      wasm_v128_store(cp, c40), wasm_v128_store(cp + 4, c41), cp += N;
      wasm_v128_store(cp, c50), wasm_v128_store(cp + 4, c51);
    }
    for (; n < N; n++) {  // the last N % 8 columns
      for (int i = 0; i < 6; i++) {
        float s = 0;
        for (int k = 0; k < K; k++) s += a[(m + i) * sam + k * sak] * b[k * sbk + n];
        c[(m + i) * N + n] = s;
      }
    }
  }
  for (; m < M; m++) {  // the last M % 6 rows, 4 columns at a time
    int n = 0;
    for (; n + 4 <= N; n += 4) {
      v128_t acc = wasm_f32x4_splat(0);
      for (int k = 0; k < K; k++) {
        acc = madd(wasm_f32x4_splat(a[m * sam + k * sak]), wasm_v128_load(b + k * sbk + n), acc);
      }
      wasm_v128_store(c + m * N + n, acc);
    }
    for (; n < N; n++) {
      float s = 0;
      for (int k = 0; k < K; k++) s += a[m * sam + k * sak] * b[k * sbk + n];
      c[m * N + n] = s;
    }
  }
}

// Batches first..last-1 of C[b] = op(A[b % batchA]) @ op(B[b % batchB]) (batch 1
// broadcasts). A is [batchA, M, K] ([batchA, K, M] if transA), B is [batchB, K, N]
// ([batchB, N, K] if transB), C is [batch, M, N]. `scratch` holds K * N floats: with
// transB each B[b] is packed there first so that its rows are contiguous.
EXPORT("bmm")
void bmm(const float *A, const float *B, float *C, int batchA, int batchB, int first,
         int last, int M, int N, int K, int transA, int transB, float *scratch) {
  const int sam = transA ? 1 : K, sak = transA ? M : 1;
  for (int b = first; b < last; b++) {
    const float *a = A + (b % batchA) * M * K;
    const float *bm = B + (b % batchB) * K * N;
    if (transB) {  // bm is [N, K]: pack op(b) = bm^T as [K, N]
      for (int n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) scratch[k * N + n] = bm[n * K + k];
      }
      bm = scratch;
    }
    gemm(a, sam, sak, bm, N, C + b * M * N, M, N, K);
  }
}

// Max over the k rows of x [k, M] and the first row reaching it: best [M], winner [M]
// (int32). Four columns at a time; a strict greater-than keeps the earliest row on ties.
EXPORT("max_over_rows")
void max_over_rows(const float *x, float *best, int32_t *winner, int k, int M) {
  int i = 0;
  for (; i + 4 <= M; i += 4) {
    v128_t b = wasm_v128_load(x + i);
    v128_t w = wasm_i32x4_splat(0);
    for (int j = 1; j < k; j++) {
      const v128_t v = wasm_v128_load(x + j * M + i);
      const v128_t better = wasm_f32x4_gt(v, b);
      b = wasm_v128_bitselect(v, b, better);
      w = wasm_v128_bitselect(wasm_i32x4_splat(j), w, better);
    }
    wasm_v128_store(best + i, b);
    wasm_v128_store(winner + i, w);
  }
  for (; i < M; i++) {
    float b = x[i];
    int32_t w = 0;
    for (int j = 1; j < k; j++) {
      if (x[j * M + i] > b) b = x[j * M + i], w = j;
    }
    best[i] = b;
    winner[i] = w;
  }
}

// out [k, M]: g[i] in row winner[i] of column i, zero elsewhere.
EXPORT("route_to_rows")
void route_to_rows(const float *g, const int32_t *winner, float *out, int k, int M) {
  for (int j = 0; j < k; j++) {
    const v128_t jj = wasm_i32x4_splat(j);
    float *row = out + j * M;
    int i = 0;
    for (; i + 4 <= M; i += 4) {
      const v128_t mine = wasm_i32x4_eq(wasm_v128_load(winner + i), jj);
      wasm_v128_store(row + i, wasm_v128_and(wasm_v128_load(g + i), mine));
    }
    for (; i < M; i++) row[i] = winner[i] == j ? g[i] : 0.0f;
  }
}

// Inverted dropout with lib/nn/dropout.ts's mask: y[i] = x[i] * m[i], where m[i] = scale if
// word (i mod 2) of Philox2x32-10((i / 2, 0), seed) >= threshold, else 0. The host loop in
// JavaScript costs ~30 ns an element; here there is no JS and no upload, and four counters
// run in SIMD lanes.

// Philox2x32-10 of the counter (pair, 0) under seed: word 0 in the low half, word 1 high.
static inline uint64_t philox(uint32_t pair, uint32_t seed) {
  uint32_t x0 = pair, x1 = 0, k = seed;
  for (int round = 0; round < 10; round++) {
    if (round > 0) k += 0x9e3779b9u;
    const uint64_t product = (uint64_t)x0 * 0xd256d193u;
    x0 = (uint32_t)(product >> 32) ^ k ^ x1;
    x1 = (uint32_t)product;
  }
  return ((uint64_t)x1 << 32) | x0;
}

// Philox2x32-10 of the four counters (pair + i, 0), i = 0..3, under seed, in SIMD lanes:
// *w0 gets each counter's word 0, the return value its word 1. The u32 x u32 -> u64
// products are two widening multiplies (lanes 0-1 and 2-3), their halves regathered.
static inline v128_t philox4(v128_t x0, uint32_t seed, v128_t *w0) {
  const v128_t m = wasm_i32x4_splat((int32_t)0xd256d193u);
  v128_t x1 = wasm_i32x4_splat(0);
  uint32_t k = seed;
  for (int round = 0; round < 10; round++) {
    if (round > 0) k += 0x9e3779b9u;
    const v128_t low = wasm_u64x2_extmul_low_u32x4(x0, m);  // counters 0, 1
    const v128_t high = wasm_u64x2_extmul_high_u32x4(x0, m);  // counters 2, 3
    const v128_t lo = wasm_i32x4_shuffle(low, high, 0, 2, 4, 6);
    const v128_t hi = wasm_i32x4_shuffle(low, high, 1, 3, 5, 7);
    x0 = wasm_v128_xor(wasm_v128_xor(hi, wasm_i32x4_splat((int32_t)k)), x1);
    x1 = lo;
  }
  *w0 = x0;
  return x1;
}

// philox4 on two sets of counters at once (a and b, words 0 and 1 in place).
static inline void philox4x2(v128_t *a0, v128_t *a1, v128_t *b0, v128_t *b1, uint32_t seed) {
  const v128_t m = wasm_i32x4_splat((int32_t)0xd256d193u);
  v128_t xa = *a0, ya = *a1, xb = *b0, yb = *b1;
  uint32_t k = seed;
  for (int round = 0; round < 10; round++) {
    if (round > 0) k += 0x9e3779b9u;
    const v128_t key = wasm_i32x4_splat((int32_t)k);
    const v128_t la = wasm_u64x2_extmul_low_u32x4(xa, m), ha = wasm_u64x2_extmul_high_u32x4(xa, m);
    const v128_t lb = wasm_u64x2_extmul_low_u32x4(xb, m), hb = wasm_u64x2_extmul_high_u32x4(xb, m);
    const v128_t loA = wasm_i32x4_shuffle(la, ha, 0, 2, 4, 6), hiA = wasm_i32x4_shuffle(la, ha, 1, 3, 5, 7);
    const v128_t loB = wasm_i32x4_shuffle(lb, hb, 0, 2, 4, 6), hiB = wasm_i32x4_shuffle(lb, hb, 1, 3, 5, 7);
    xa = wasm_v128_xor(wasm_v128_xor(hiA, key), ya), ya = loA;
    xb = wasm_v128_xor(wasm_v128_xor(hiB, key), yb), yb = loB;
  }
  *a0 = xa, *a1 = ya, *b0 = xb, *b1 = yb;
}

// Elements 0..7 of y = x * mask from four counters' words w0, w1 (element 2p is word 0 of
// counter p, 2p + 1 its word 1).
static inline void dropout8(const float *x, float *y, v128_t w0, v128_t w1, v128_t limit,
                            v128_t kept) {
  const v128_t first = wasm_i32x4_shuffle(w0, w1, 0, 4, 1, 5);  // elements 0 .. 3
  const v128_t second = wasm_i32x4_shuffle(w0, w1, 2, 6, 3, 7);  // elements 4 .. 7
  const v128_t m0 = wasm_v128_and(wasm_u32x4_ge(first, limit), kept);
  const v128_t m1 = wasm_v128_and(wasm_u32x4_ge(second, limit), kept);
  wasm_v128_store(y, wasm_f32x4_mul(wasm_v128_load(x), m0));
  wasm_v128_store(y + 4, wasm_f32x4_mul(wasm_v128_load(x + 4), m1));
}

EXPORT("philox_dropout")
void philox_dropout(const float *x, float *y, int n, uint32_t seed, uint32_t threshold,
                    float scale) {
  // Sixteen elements (eight counters) at a time, then eight, then a pair: element 2p is word
  // 0 of counter p, 2p + 1 word 1, as the scalar loop below and lib/nn/dropout.ts draw them.
  const v128_t limit = wasm_i32x4_splat((int32_t)threshold);
  const v128_t kept = wasm_f32x4_splat(scale);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    // Two independent chains of four counters, interleaved round by round: one chain's
    // widening multiplies wait on the last round's, the other's fill the gap.
    const int pair = i >> 1;
    v128_t a0 = wasm_i32x4_make(pair, pair + 1, pair + 2, pair + 3), a1 = wasm_i32x4_splat(0);
    v128_t b0 = wasm_i32x4_make(pair + 4, pair + 5, pair + 6, pair + 7), b1 = a1;
    philox4x2(&a0, &a1, &b0, &b1, seed);
    dropout8(x + i, y + i, a0, a1, limit, kept);
    dropout8(x + i + 8, y + i + 8, b0, b1, limit, kept);
  }
  for (; i + 8 <= n; i += 8) {
    const int pair = i >> 1;
    v128_t w0;
    const v128_t w1 = philox4(wasm_i32x4_make(pair, pair + 1, pair + 2, pair + 3), seed, &w0);
    dropout8(x + i, y + i, w0, w1, limit, kept);
  }
  for (; i < n; i += 2) {
    const uint64_t words = philox((uint32_t)(i >> 1), seed);
    y[i] = x[i] * ((uint32_t)words >= threshold ? scale : 0.0f);
    if (i + 1 < n) y[i + 1] = x[i + 1] * ((uint32_t)(words >> 32) >= threshold ? scale : 0.0f);
  }
}

// SIGMA's gated category GRU (lib/nn/gru.ts), one layer's whole recurrence per call, for
// the wasm backend: the same contract as the webgpu programs of backends/_webgpu_gru.ts.
//
// Why: composed of tfjs ops the recurrence is a dozen ops per position and layer forward
// and two dozen backward, each paying tfjs-backend-wasm's per-op cost (a SIGMA step at
// length 100 made 114k kernel calls, docs/performance.md). Here each position is one
// product of all state rows with W_h (the gemm above) and one pass over the rows.
//
// Rows: m = b * k + j is the state of sequence b, category j; at position t it lives at
// row (b * L + t) * k + j of the [B, L, k, .] tensors.

// exp(x) for x clamped to [-87, 88]: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its
// Taylor series to r^7 (truncation below 1e-8 relative), times 2^n built in the exponent
// bits. Plain multiplies and adds (no relaxed fused ones), so the bits do not depend on
// the CPU. Branch-free so that clang vectorises the loops that call it.
static inline float exp_clamped(float x) {
  x = x < -87.0f ? -87.0f : x;  // NaN passes: it compares false
  x = x > 88.0f ? 88.0f : x;
  const float n = __builtin_rintf(x * 1.44269504f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

static inline float sigmoid(float a) { return 1.0f / (1.0f + exp_clamped(-a)); }

// tanh from exp of a non-positive argument only, as the webgpu program does.
static inline float tanh_(float a) {
  const float e = exp_clamped(-2.0f * __builtin_fabsf(a));
  return __builtin_copysignf((1.0f - e) / (1.0f + e), a);
}

// The scratch floats gru_forward (backward = 0) or gru_backward (1) needs for M = B k state
// rows of width d: the callers allocate what this says, so the two cannot disagree.
EXPORT("gru_scratch_floats")
int gru_scratch_floats(int M, int d, int backward) {
  return backward ? (3 * d + 5 * M) * d : 4 * M * d;
}

// Position t of gru_forward, once hh = h W_h is in the scratch (there, or by the native
// BLAS from JavaScript, backends/_wasm_gru.ts): the gates, the outputs, h moved on.
EXPORT("gru_forward_step")
void gru_forward_step(const float *restrict xi, const float *restrict gates,
                      const float *restrict bh, float *restrict states, float *restrict prev,
                      float *restrict acts, int B, int L, int k, int xiK, int d, float *scratch,
                      int t) {
  const int M = B * k, d3 = 3 * d;
  float *restrict h = scratch;
  const float *restrict hh = h + M * d;
  for (int m = 0; m < M; m++) {
    const int b = m / k, j = m - b * k;
    const int row = (b * L + t) * k + j;
    const float *restrict x = xi + ((b * L + t) * xiK + (xiK == 1 ? 0 : j)) * d3;
    const float *restrict s = hh + m * d3;
    const float g = gates[row];
    float *restrict hm = h + m * d;
    float *restrict out = states + row * d, *restrict before = prev + row * d;
    float *restrict a = acts + row * 4 * d;
    for (int u = 0; u < d; u++) {
      const float an = s[2 * d + u] + bh[2 * d + u];
      const float r = sigmoid(x[u] + (s[u] + bh[u]));
      const float z = sigmoid(x[d + u] + (s[d + u] + bh[d + u]));
      const float n = tanh_(x[2 * d + u] + r * an);
      const float hu = hm[u];
      // h + gate * (GRU(h) - h), as the composed path computes it.
      const float next = hu + g * (((1.0f - z) * n + z * hu) - hu);
      before[u] = hu;
      out[u] = next;
      hm[u] = next;
      a[u] = r, a[d + u] = z, a[2 * d + u] = n, a[3 * d + u] = an;
    }
  }
}

// Forward: xi [B, L, xiK, 3d] (the input projection with its bias; xiK = 1 broadcasts over
// categories), gates [B, L, k], wh [d, 3d], bh [3d] -> states, prev [B, L, k, d] (the
// state after and before each step), acts [B, L, k, 4d] (r, z, n, W_hn h + b_hn).
// Scratch, 4 B k d floats: the state h [B k, d] and h W_h [B k, 3d].
EXPORT("gru_forward")
void gru_forward(const float *restrict xi, const float *restrict gates,
                 const float *restrict wh, const float *restrict bh, float *restrict states,
                 float *restrict prev, float *restrict acts, int B, int L, int k, int xiK,
                 int d, float *scratch) {
  const int M = B * k, d3 = 3 * d;
  float *restrict h = scratch, *restrict hh = h + M * d;
  for (int i = 0; i < M * d; i++) h[i] = 0.0f;
  for (int t = 0; t < L; t++) {
    gemm(h, d, 1, wh, d3, hh, M, d3, d);  // hh = h W_h, [M, 3d]
    gru_forward_step(xi, gates, bh, states, prev, acts, B, L, k, xiK, d, scratch, t);
  }
}

// Position t of gru_backward before its product: from dy and the carried gradient, this
// step's dhh, dxi and dgate, dhh's rows packed into the scratch and the gradient's direct
// part (straight into the previous state) beside them. The caller then forms the carry
// for position t - 1: dhh W_h^T + direct (there, or by the native BLAS from JavaScript).
EXPORT("gru_backward_step")
void gru_backward_step(const float *restrict dy, const float *restrict prev,
                       const float *restrict acts, const float *restrict gates,
                       float *restrict dhh, float *restrict dxi, float *restrict dgate, int B,
                       int L, int k, int d, float *scratch, int t) {
  const int M = B * k, d3 = 3 * d;
  const float *restrict carry = scratch + d3 * d;
  float *restrict dhhT = scratch + d3 * d + M * d, *restrict direct = dhhT + M * d3;
  for (int m = 0; m < M; m++) {
    const int b = m / k, j = m - b * k;
    const int row = (b * L + t) * k + j;
    const float g = gates[row];
    const float *restrict dyr = dy + row * d, *restrict c = carry + m * d;
    const float *restrict hp = prev + row * d, *restrict a = acts + row * 4 * d;
    float *restrict o = dhh + row * d3, *restrict x = dxi + row * d3;
    float *restrict p = dhhT + m * d3, *restrict dir = direct + m * d;
    float part = 0.0f;  // d gate: sum over units, in unit order
    for (int u = 0; u < d; u++) {
      const float dOut = dyr[u] + c[u];
      const float z = a[d + u], n = a[2 * d + u], h = hp[u];
      part += dOut * (((1.0f - z) * n + z * h) - h);
    }
    dgate[row] = part;
    for (int u = 0; u < d; u++) {
      const float dOut = dyr[u] + c[u];
      const float r = a[u], z = a[d + u], n = a[2 * d + u], hn = a[3 * d + u];
      const float h = hp[u];
      const float dMoved = dOut * g;
      const float dn = dMoved * (1.0f - z);
      const float dz = dMoved * (h - n);
      const float dnPre = dn * (1.0f - n * n);  // through tanh
      const float drPre = (dnPre * hn) * (r * (1.0f - r));  // through sigmoid
      const float dzPre = dz * (z * (1.0f - z));
      const float dhn = dnPre * r;
      o[u] = drPre, o[d + u] = dzPre, o[2 * d + u] = dhn;
      x[u] = drPre, x[d + u] = dzPre, x[2 * d + u] = dnPre;
      p[u] = drPre, p[d + u] = dzPre, p[2 * d + u] = dhn;
      dir[u] = dOut * ((1.0f - g) + g * z);  // straight into the previous state
    }
  }
}

// Backward, positions last to first: dy [B, L, k, d] (into the states from outside the
// recurrence), prev and acts of gru_forward, gates, wh -> dhh [B, L, k, 3d] (into
// W_h h + b_h), dxi [B, L, k, 3d] (into xi), dgate [B, L, k]. Scratch, (3d + 5 B k) d
// floats: W_h transposed [3d, d], the gradient into the previous state [B k, d], this
// step's dhh rows packed for the product [B k, 3d], the direct part of that gradient
// [B k, d].
EXPORT("gru_backward")
void gru_backward(const float *restrict dy, const float *restrict prev,
                  const float *restrict acts, const float *restrict gates,
                  const float *restrict wh, float *restrict dhh, float *restrict dxi,
                  float *restrict dgate, int B, int L, int k, int d, float *scratch) {
  const int M = B * k, d3 = 3 * d;
  float *restrict wht = scratch, *restrict carry = wht + d3 * d;
  float *restrict dhhT = carry + M * d, *restrict direct = dhhT + M * d3;
  for (int u = 0; u < d; u++) {
    for (int i = 0; i < d3; i++) wht[i * d + u] = wh[u * d3 + i];
  }
  for (int i = 0; i < M * d; i++) carry[i] = 0.0f;
  for (int t = L - 1; t >= 0; t--) {
    gru_backward_step(dy, prev, acts, gates, dhh, dxi, dgate, B, L, k, d, scratch, t);
    gemm(dhhT, d3, 1, wht, d, carry, M, d, d3);  // ... and through W_h: dhh W_h^T
    for (int i = 0; i < M * d; i++) carry[i] += direct[i];
  }
}

// LayerNorm over the last axis (lib/nn/fused.ts, LAYER_NORM_KERNEL): rows of z = residual + x
// (x alone when has_residual is 0) -> y = (z - mean) / sqrt(var + eps) * gamma + beta, the
// biased variance, and stats [R, 2] = (mean, 1 / sqrt(var + eps)) per row for the backward
// pass. One pass over a row for the sum, one for the variance, one for the output, where
// the composed tfjs ops make nine.
EXPORT("layer_norm")
void layer_norm(const float *restrict x, const float *restrict residual,
                const float *restrict gamma, const float *restrict beta, float *restrict y,
                float *restrict stats, int R, int d, float eps, int has_residual) {
  for (int r = 0; r < R; r++) {
    const float *restrict xr = x + r * d;
    float *restrict yr = y + r * d;
    float sum = 0.0f;
    if (has_residual) {
      const float *restrict rr = residual + r * d;
      for (int u = 0; u < d; u++) yr[u] = rr[u] + xr[u], sum += yr[u];
    } else {
      for (int u = 0; u < d; u++) yr[u] = xr[u], sum += xr[u];
    }
    const float mean = sum / (float)d;
    float squares = 0.0f;
    for (int u = 0; u < d; u++) squares += (yr[u] - mean) * (yr[u] - mean);
    const float inv = 1.0f / __builtin_sqrtf(squares / (float)d + eps);
    for (int u = 0; u < d; u++) yr[u] = (yr[u] - mean) * inv * gamma[u] + beta[u];
    stats[2 * r] = mean, stats[2 * r + 1] = inv;
  }
}

// Its gradients (LAYER_NORM_GRAD_KERNEL) from the saved stats: with xhat = (z - mean) inv and
// g = dy gamma, dx = inv (g - mean(g) - xhat mean(g xhat)); dgamma = sum over rows of
// dy xhat, dbeta of dy, summed row after row (the same order on every run).
EXPORT("layer_norm_grad")
void layer_norm_grad(const float *restrict dy, const float *restrict x,
                     const float *restrict residual, const float *restrict gamma,
                     const float *restrict stats, float *restrict dx, float *restrict dgamma,
                     float *restrict dbeta, int R, int d, int has_residual) {
  for (int u = 0; u < d; u++) dgamma[u] = 0.0f, dbeta[u] = 0.0f;
  for (int r = 0; r < R; r++) {
    const float *restrict dyr = dy + r * d, *restrict xr = x + r * d;
    const float *restrict rr = has_residual ? residual + r * d : xr;
    float *restrict dxr = dx + r * d;
    const float mean = stats[2 * r], inv = stats[2 * r + 1];
    float sumG = 0.0f, sumGX = 0.0f;
    for (int u = 0; u < d; u++) {
      const float z = has_residual ? rr[u] + xr[u] : xr[u];
      const float xhat = (z - mean) * inv, g = dyr[u] * gamma[u];
      dxr[u] = xhat;  // kept for the second pass
      sumG += g, sumGX += g * xhat;
      dgamma[u] += dyr[u] * xhat, dbeta[u] += dyr[u];
    }
    const float meanG = sumG / (float)d, meanGX = sumGX / (float)d;
    for (int u = 0; u < d; u++) dxr[u] = inv * (dyr[u] * gamma[u] - meanG - dxr[u] * meanGX);
  }
}

// out = a op b where b broadcasts over a [R, d] (op: 0 add, 1 subtract, 2 multiply): per
// column (per_row 0: b is [d], one value a column) or per row (per_row 1: b is [R], one
// value a row). tfjs-backend-wasm 4.22 runs every broadcasting binary op element by
// element with index arithmetic (~7-14 ns an element); these are SIMD loops. Each result
// is the one float32 operation tfjs computes, so the bits are the same.
EXPORT("broadcast_binary")
void broadcast_binary(const float *restrict a, const float *restrict b, float *restrict out,
                      int R, int d, int op, int per_row) {
  for (int r = 0; r < R; r++) {
    const float *restrict ar = a + r * d;
    float *restrict o = out + r * d;
    if (per_row) {
      const float v = b[r];
      if (op == 0) {
        for (int u = 0; u < d; u++) o[u] = ar[u] + v;
      } else if (op == 1) {
        for (int u = 0; u < d; u++) o[u] = ar[u] - v;
      } else {
        for (int u = 0; u < d; u++) o[u] = ar[u] * v;
      }
    } else if (op == 0) {
      for (int u = 0; u < d; u++) o[u] = ar[u] + b[u];
    } else if (op == 1) {
      for (int u = 0; u < d; u++) o[u] = ar[u] - b[u];
    } else {
      for (int u = 0; u < d; u++) o[u] = ar[u] * b[u];
    }
  }
}

// The GELUs (lib/nn/fused.ts: GELU_KERNEL, GELU_TANH_KERNEL and their gradients), one pass
// each way where the composed tfjs ops make 4-6 forward and about 15 backward. The same
// formulas as the webgpu programs (backends/_webgpu_fused.ts, which explains them): erf by
// its Maclaurin series below |z| = 1 and Numerical Recipes' erfc fit beyond, exp(-v^2)
// with v^2 split so that it is not rounded, the tanh GELU's sigmoid from exp(-|a|).

// exp(-scale v^2) for scale 1 or 1/2: v^2 = vh^2 + (v - vh)(v + vh), vh v's top 12 bits.
// 0 from |v| = 16 on. Branch-free (a select), as are the helpers below, so that the GELU
// loops vectorise: the scalar loop with branches took 22 ns an element forward and 52
// backward, against about 1 for an add.
static inline float exp_neg_square(float v, float scale) {
  const float vh = __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, v) & 0xfffff000u);
  const float e = exp_clamped(-scale * vh * vh) * exp_clamped(-scale * (v - vh) * (v + vh));
  return __builtin_fabsf(v) >= 16.0f ? 0.0f : e;
}

// 2/sqrt(pi) (-1)^n / (n! (2n + 1)), n = 0..11, in z^2 (Horner).
static inline float erf_series(float z) {
  const float w = z * z;
  return z * (1.1283791670955126f + w * (-0.37612638903183754f + w * (0.11283791670955128f + w * (-0.026866170645131252f + w * (0.005223977625442188f + w * (-0.0008548327023450854f + w * (0.00012055332981789664f + w * (-1.4925650358406252e-05f + w * (1.6462114365889246e-06f + w * (-1.6365844691234927e-07f + w * (1.480719281587922e-08f + w * (-1.2290555301717928e-09f))))))))))));
}

// erfc(z) for z >= 0 given exp(-z^2).
static inline float erfc_fit(float z, float exp_neg_z2) {
  const float t = 1.0f / (1.0f + 0.5f * z);
  return t * exp_neg_z2 * exp_clamped(-1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * (0.17087277f))))))))));
}

// Phi(x), the standard normal CDF, given e = exp(-x^2 / 2): the series below |z| = 1, erfc
// beyond (directly on the far left). Both are computed and one selected (no branch); each
// value is the one the branch would give, and neither produces a NaN the other hides.
static inline float normal_cdf(float x, float e) {
  const float z = x * 0.7071067811865476f;
  const float series = 0.5f + 0.5f * erf_series(z);
  const float tail = 0.5f * erfc_fit(__builtin_fabsf(z), e);
  const float outer = z < 0.0f ? tail : 1.0f - tail;
  return __builtin_fabsf(z) < 1.0f ? series : outer;
}

// The tanh GELU's s = sigmoid(a), a = x (c0 + c1 x^2), and e = exp(-|a|) (0 past |a| = 87).
static inline float gelu_tanh_sigmoid(float v, float *e) {
  const float a = v * (v * v * 0.07135481627260025f + 1.5957691216057308f);
  const float m = -__builtin_fabsf(a);
  *e = m < -87.0f ? 0.0f : exp_clamped(m);
  return a >= 0.0f ? 1.0f / (1.0f + *e) : *e / (1.0f + *e);
}

// y = gelu(x) (tanh 0: exact, x Phi(x); 1: x sigmoid(a)); with dy (gradient 1): the
// gradient dy gelu'(x) instead. One loop a case, each without branches, so each vectorises.
EXPORT("gelu")
void gelu(const float *restrict x, const float *restrict dy, float *restrict y, int n,
          int tanh_form, int gradient) {
  if (tanh_form && !gradient) {
    for (int i = 0; i < n; i++) {
      float e;
      y[i] = x[i] * gelu_tanh_sigmoid(x[i], &e);
    }
  } else if (tanh_form) {
    for (int i = 0; i < n; i++) {
      const float v = x[i];
      float e;
      const float s = gelu_tanh_sigmoid(v, &e);
      const float slope = 1.5957691216057308f + 3.0f * 0.07135481627260025f * v * v;
      const float tail = v * (e / ((1.0f + e) * (1.0f + e))) * slope;
      y[i] = dy[i] * (s + (e == 0.0f ? 0.0f : tail));
    }
  } else if (!gradient) {
    for (int i = 0; i < n; i++) {
      const float v = x[i];
      y[i] = v * normal_cdf(v, exp_neg_square(v, 0.5f));
    }
  } else {
    for (int i = 0; i < n; i++) {
      const float v = x[i];
      const float e = exp_neg_square(v, 0.5f);
      y[i] = dy[i] * (normal_cdf(v, e) + v * (e * 0.3989422804014327f));
    }
  }
}

// The full softmax's loss over one chunk of logits (lib/nn/fused_ops.ts: SOFTMAX_XENT_KERNEL,
// the contract of backends/_webgpu_ops.ts's program): per row i of logits [rows, cols], over
// the columns first..cols-1, m = max, s = sum of exp(x - m), prob = exp(x - m) / s (0 in the
// columns before first) and loss[i] = m + log(s) - x[targets[start + i]]. Three passes over
// a row (max; exp and store; scale) where the composed tfjs ops made a softmax, two maxima, a
// log, a gather and subtractions, the maxima single-threaded at ~1.6 ns an element. A target
// outside first..cols-1, or a row with no finite maximum, gives a NaN loss instead of reading
// or writing past the row; the gradient kernel, which has no `first`, leaves out the one-hot
// of a target outside 0..cols-1 only (a NaN loss poisons the step either way).

// exp_clamped on four lanes: the same operations in the same order, so each lane's bits are
// the scalar function's.
static inline v128_t exp4(v128_t x) {
  x = wasm_f32x4_pmax(x, wasm_f32x4_splat(-87.0f));
  x = wasm_f32x4_pmin(x, wasm_f32x4_splat(88.0f));
  const v128_t n = wasm_f32x4_nearest(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504f)));
  const v128_t r = wasm_f32x4_sub(wasm_f32x4_sub(x, wasm_f32x4_mul(n, wasm_f32x4_splat(0.693359375f))),
                                  wasm_f32x4_mul(n, wasm_f32x4_splat(-2.12194440e-4f)));
  v128_t p = wasm_f32x4_splat(1.0f / 5040);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.0f / 720));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.0f / 120));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.0f / 24));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.0f / 6));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(0.5f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.0f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.0f));
  const v128_t bits = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_trunc_sat_f32x4(n), wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, bits);
}

// log(s) for s >= 1 (a sum of exponentials that holds exp(0)), in double: s = 2^e u with u
// in [sqrt(1/2), sqrt(2)), log u = 2 atanh(z), z = (u - 1) / (u + 1), |z| < 0.172, by its
// series to z^13 (truncation below 1e-11). A NaN (a NaN logit) stays NaN.
static double log_at_least_one(double s) {
  if (!(s <= 1.7976931348623157e308)) return s;  // NaN and +inf are their own logs here
  uint64_t bits = __builtin_bit_cast(uint64_t, s);
  int e = (int)((bits >> 52) & 0x7ff) - 1023;
  double u = __builtin_bit_cast(double, (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  if (u > 1.4142135623730951) u *= 0.5, e += 1;
  const double z = (u - 1.0) / (u + 1.0), w = z * z;
  const double series =
      z * (2.0 + w * (2.0 / 3 + w * (2.0 / 5 + w * (2.0 / 7 + w * (2.0 / 9 + w * (2.0 / 11 + w * (2.0 / 13)))))));
  return e * 0.6931471805599453 + series;
}

EXPORT("softmax_xent")
void softmax_xent(const float *restrict logits, const int32_t *restrict targets,
                  float *restrict prob, float *restrict loss, int rows, int cols, int start,
                  int first) {
  for (int i = 0; i < rows; i++) {
    const float *restrict x = logits + (int64_t)i * cols;
    float *restrict p = prob + (int64_t)i * cols;
    for (int c = 0; c < first; c++) p[c] = 0.0f;
    // Max: four lanes, then the tail (the order is fixed; max is exact anyway).
    float m = -__builtin_inff();
    int c = first;
    if (cols - first >= 4) {
      v128_t mv = wasm_f32x4_splat(m);
      for (; c + 4 <= cols; c += 4) mv = wasm_f32x4_pmax(mv, wasm_v128_load(x + c));
      const float a = wasm_f32x4_extract_lane(mv, 0), b = wasm_f32x4_extract_lane(mv, 1);
      const float g = wasm_f32x4_extract_lane(mv, 2), h = wasm_f32x4_extract_lane(mv, 3);
      m = a > b ? a : b;
      m = m > g ? m : g;
      m = m > h ? m : h;
    }
    for (; c < cols; c++) m = x[c] > m ? x[c] : m;
    // exp(x - m) into prob, summed in four lanes, then the tail.
    const v128_t mm = wasm_f32x4_splat(m);
    v128_t sv = wasm_f32x4_splat(0.0f);
    c = first;
    for (; c + 4 <= cols; c += 4) {
      const v128_t e = exp4(wasm_f32x4_sub(wasm_v128_load(x + c), mm));
      wasm_v128_store(p + c, e);
      sv = wasm_f32x4_add(sv, e);
    }
    float s = (wasm_f32x4_extract_lane(sv, 0) + wasm_f32x4_extract_lane(sv, 1)) +
              (wasm_f32x4_extract_lane(sv, 2) + wasm_f32x4_extract_lane(sv, 3));
    for (; c < cols; c++) {
      p[c] = exp_clamped(x[c] - m);
      s += p[c];
    }
    const float inverse = 1.0f / s;
    const v128_t iv = wasm_f32x4_splat(inverse);
    c = first;
    for (; c + 4 <= cols; c += 4) wasm_v128_store(p + c, wasm_f32x4_mul(wasm_v128_load(p + c), iv));
    for (; c < cols; c++) p[c] *= inverse;
    const int t = targets[start + i];
    const int inside = t >= first && t < cols && m > -__builtin_inff();
    // (m - x[t]) first: m + log(s) would lose log(s) to rounding at |m| near float's range.
    loss[i] = inside ? (float)(((double)m - (double)x[t]) + log_at_least_one((double)s))
                     : __builtin_nanf("");
  }
}

// Its gradient (SOFTMAX_XENT_GRAD_KERNEL): g = (prob - onehot(targets[start + i])) dy[start + i]
// per row of prob [rows, cols].
EXPORT("softmax_xent_grad")
void softmax_xent_grad(const float *restrict prob, const int32_t *restrict targets,
                       const float *restrict dy, float *restrict g, int rows, int cols,
                       int start) {
  for (int i = 0; i < rows; i++) {
    const float *restrict p = prob + (int64_t)i * cols;
    float *restrict gr = g + (int64_t)i * cols;
    const float d = dy[start + i];
    for (int c = 0; c < cols; c++) gr[c] = p[c] * d;
    const int t = targets[start + i];
    if (t >= 0 && t < cols) gr[t] = (p[t] - 1.0f) * d;
  }
}

// The best k rows of an int8 item table for each history, without a score vector of the
// catalogue (lib/inference/_int8_items.ts: INT8_TOP_K_KERNEL). Queries q [H * Q, d] (Q a
// history: an item's score is the max over them) come quantised to int16 with a scale per
// query row (q16, qscale); the table is int8 codes [N, d] with a float32 scale per row. Row
// i's score for query r is qscale[r] * scale[i] * (the int32 dot product of the codes), for
// rows first..N-1. Each history keeps a min-heap of its best k in vals/idx [H, k] (a lower
// score, or an equal one at a higher row, is worse), sorted best first at the end. d must
// be a multiple of 16 and at most 512: a sum of d products of up to 127 * 32767 each
// overflows int32 past 516.

static inline int worse(float va, int ia, float vb, int ib) {
  return va < vb || (va == vb && ia > ib);
}

static void sift_down(float *v, int32_t *x, int k, int at) {
  for (;;) {
    const int l = 2 * at + 1, r = l + 1;
    int w = at;
    if (l < k && worse(v[l], x[l], v[w], x[w])) w = l;
    if (r < k && worse(v[r], x[r], v[w], x[w])) w = r;
    if (w == at) return;
    const float tv = v[at];
    const int32_t tx = x[at];
    v[at] = v[w], x[at] = x[w], v[w] = tv, x[w] = tx;
    at = w;
  }
}

// The int32 dot product of 16-code steps of row and the int16 query qr, d values.
static inline v128_t dot_i8_i16(const int8_t *restrict row, const int16_t *restrict qr, int d) {
  v128_t acc = wasm_i32x4_splat(0);
  for (int u = 0; u < d; u += 16) {
    const v128_t c = wasm_v128_load(row + u);
    acc = wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(c),
                                                   wasm_v128_load(qr + u)));
    acc = wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(c),
                                                   wasm_v128_load(qr + u + 8)));
  }
  return acc;
}

static inline void heap_offer(float *restrict v, int32_t *restrict x, int k, float s, int i) {
  // Rows come in increasing order: an equal score never displaces the heap's worst.
  if (s > v[0]) {
    v[0] = s, x[0] = i;
    sift_down(v, x, k, 0);
  }
}

// Four rows' int32 sums (one vector each) reduced across lanes together into their scores,
// compared with the heap's worst in one step, and offered in row order.
static inline void offer_four(float *restrict v, int32_t *restrict x, int k, v128_t a0, v128_t a1,
                              v128_t a2, v128_t a3, float qscale, const float *scale, int i) {
  const v128_t s01 = wasm_i32x4_add(wasm_i32x4_shuffle(a0, a1, 0, 4, 1, 5),
                                    wasm_i32x4_shuffle(a0, a1, 2, 6, 3, 7));
  const v128_t s23 = wasm_i32x4_add(wasm_i32x4_shuffle(a2, a3, 0, 4, 1, 5),
                                    wasm_i32x4_shuffle(a2, a3, 2, 6, 3, 7));
  const v128_t dots = wasm_i32x4_add(wasm_i32x4_shuffle(s01, s23, 0, 1, 4, 5),
                                     wasm_i32x4_shuffle(s01, s23, 2, 3, 6, 7));
  const v128_t scores = wasm_f32x4_mul(
      wasm_f32x4_mul(wasm_f32x4_convert_i32x4(dots), wasm_f32x4_splat(qscale)),
      wasm_v128_load(scale));
  if (!wasm_v128_any_true(wasm_f32x4_gt(scores, wasm_f32x4_splat(v[0])))) return;
  heap_offer(v, x, k, wasm_f32x4_extract_lane(scores, 0), i);
  heap_offer(v, x, k, wasm_f32x4_extract_lane(scores, 1), i + 1);
  heap_offer(v, x, k, wasm_f32x4_extract_lane(scores, 2), i + 2);
  heap_offer(v, x, k, wasm_f32x4_extract_lane(scores, 3), i + 3);
}

EXPORT("int8_top_k")
void int8_top_k(const int16_t *restrict q16, const float *restrict qscale, int H, int Q, int d,
                const int8_t *restrict codes, const float *restrict scale, int first, int N,
                int k, float *restrict vals, int32_t *restrict idx) {
  for (int h = 0; h < H * k; h++) vals[h] = -__builtin_inff(), idx[h] = 0x7fffffff;
  int i = first;
  if (Q == 1) {
    // Eight rows at a time: each 16-value step of the query loaded once for the eight, one
    // accumulator a row (named, not an array: bmm.wasm may not use a stack); their sums
    // reduced four at a time across lanes, and four scores made and compared with the heap's
    // worst in one SIMD step.
    for (; i + 8 <= N; i += 8) {
      const int8_t *restrict row = codes + (int64_t)i * d;
      for (int h = 0; h < H; h++) {
        const int16_t *restrict qr = q16 + (int64_t)h * d;
        v128_t a0 = wasm_i32x4_splat(0), a1 = a0, a2 = a0, a3 = a0;
        v128_t a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int u = 0; u < d; u += 16) {
          const v128_t lo = wasm_v128_load(qr + u), hi = wasm_v128_load(qr + u + 8);
#define STEP(acc, r)                                                                        \
  do {                                                                                      \
    const v128_t c = wasm_v128_load(row + (r) * d + u);                                     \
    acc = wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(c), lo));  \
    acc = wasm_i32x4_add(acc, wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(c), hi)); \
  } while (0)
          STEP(a0, 0); STEP(a1, 1); STEP(a2, 2); STEP(a3, 3);
          STEP(a4, 4); STEP(a5, 5); STEP(a6, 6); STEP(a7, 7);
#undef STEP
        }
        float *restrict v = vals + (int64_t)h * k;
        int32_t *restrict x = idx + (int64_t)h * k;
        offer_four(v, x, k, a0, a1, a2, a3, qscale[h], scale + i, i);
        offer_four(v, x, k, a4, a5, a6, a7, qscale[h], scale + i + 4, i + 4);
      }
    }
  }
  for (; i < N; i++) {
    const int8_t *restrict row = codes + (int64_t)i * d;
    for (int h = 0; h < H; h++) {
      float best = -__builtin_inff();
      for (int j = 0; j < Q; j++) {
        const v128_t acc = dot_i8_i16(row, q16 + (int64_t)(h * Q + j) * d, d);
        const int32_t dot = wasm_i32x4_extract_lane(acc, 0) + wasm_i32x4_extract_lane(acc, 1) +
                            wasm_i32x4_extract_lane(acc, 2) + wasm_i32x4_extract_lane(acc, 3);
        const float s = (float)dot * qscale[h * Q + j] * scale[i];
        best = s > best ? s : best;
      }
      heap_offer(vals + (int64_t)h * k, idx + (int64_t)h * k, k, best, i);
    }
  }
  // Heap sort each history's k: the worst moves to the end, so the row ends best first.
  for (int h = 0; h < H; h++) {
    float *restrict v = vals + (int64_t)h * k;
    int32_t *restrict x = idx + (int64_t)h * k;
    for (int n = k - 1; n > 0; n--) {
      const float tv = v[0];
      const int32_t tx = x[0];
      v[0] = v[n], x[0] = x[n], v[n] = tv, x[n] = tx;
      sift_down(v, x, n, 0);
    }
  }
}
