/**
 * The fused attention (`lib/nn/attention.ts`, `backends/_webgpu_attention.ts`): on cpu and
 * wasm, bit for bit the composed ops `selfAttention` ran before (with and without dropout
 * on the probabilities, in either layout); on webgpu, the same values and gradients as
 * those ops on cpu within float32 tolerance (dropout at rates 0 to 0.9, both layouts, fully
 * masked rows, Lq = 1 and dispatches folded past 65,535 workgroups included), in 3
 * dispatches for a forward and backward pass instead of 14 (24 with dropout and the
 * per-head transposes), with a flat tensor count.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { probeWebGpu, selectBackend } from "../backends/mod.ts";
import {
  ATTENTION_GRAD_KEY_VALUE_KERNEL,
  ATTENTION_GRAD_QUERY_KERNEL,
  ATTENTION_KERNEL,
  type AttentionLayout,
  type AttentionOptions,
  scaledDotAttention,
  scaledDotAttentionReference,
} from "../lib/nn/attention.ts";
import { dropout, dropoutMask } from "../lib/nn/dropout.ts";
import { seededUniform } from "./_fixtures.ts";
import { assert, assertEquals } from "./_assert.ts";
import { countGpuDispatches, releaseWebGpuAfterTests } from "./_webgpu.ts";

const noGpu = (await probeWebGpu()) === null;

// --------------------------------------------------------------- the code replaced

/** The attention of `selfAttention` in `lib/nn/layers.ts` before the fused op, verbatim. */
function todaysAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  m: tf.Tensor,
  scale: number,
): tf.Tensor {
  const logits = tf.add(tf.mul(tf.matMul(q, k, false, true), scale), m); // [B, h, Lq, L]
  const probs = tf.softmax(logits); // [B, h, Lq, L]
  return tf.matMul(probs, v); // [B, h, Lq, dh]
}

/**
 * The attention part of `selfAttention` (and of `pre_ln.ts`'s `attention`) before the fused
 * op took the layout and the dropout, verbatim but for the names: q, k, v come in `layout`
 * (the callers' `[B, L, h, dh]` views for `sequence`), are transposed to `[B, h, L, dh]`,
 * and with a seed the probabilities are composed and dropped.
 */
function todaysLayersAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  m: tf.Tensor,
  scale: number,
  layout: AttentionLayout,
  rate: number,
  seed: number | null,
): tf.Tensor {
  const split = (t: tf.Tensor) => layout === "sequence" ? tf.transpose(t, [0, 2, 1, 3]) : t;
  const [qh, kh, vh] = [split(q), split(k), split(v)]; // [B, h, L, dh]
  const attended = seed === null || rate === 0 ? todaysAttention(qh, kh, vh, m, scale) : tf.matMul(
    dropout(tf.softmax(tf.add(tf.mul(tf.matMul(qh, kh, false, true), scale), m)), rate, seed),
    vh,
  ); // [B, h, Lq, dh]
  return layout === "sequence" ? tf.transpose(attended, [0, 2, 1, 3]) : attended;
}

type AttentionOp = (
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  m: tf.Tensor,
  scale: number,
) => tf.Tensor;

// ---------------------------------------------------------------------- helpers

const uniform = seededUniform;

/** Which mask shape: `[B, 1, Lq, L]`, shared by the batch, or one row for every query. */
type MaskShape = "full" | "shared" | "row";

/**
 * One attention case: q `[B, h, Lq, dh]`, k and v `[B, h, L, dh]` (handed over in `layout`),
 * a mask, a seed, and a dropout rate on the probabilities (its seed is `seed`).
 */
interface AttentionCase {
  b: number;
  h: number;
  lq: number;
  l: number;
  dh: number;
  maskShape: MaskShape;
  /** Whether some rows are masked whole (padding queries). */
  fullyMasked: boolean;
  seed: number;
  /** The layout the tensors are handed over in (default `heads`). */
  layout?: AttentionLayout;
  /** Dropout on the probabilities (default 0), its seed `seed`. */
  rate?: number;
}

/** `c`'s options for {@linkcode scaledDotAttention}. */
function optionsOf(c: AttentionCase): AttentionOptions {
  return { layout: c.layout ?? "heads", dropout: { rate: c.rate ?? 0, seed: c.seed } };
}

/** `data` `[b, x, y, dh]` as `[b, y, x, dh]`: between the two layouts, either way. */
function swapAxes(data: Float32Array, b: number, x: number, y: number, dh: number) {
  const out = new Float32Array(data.length);
  for (let n = 0; n < b; n++) {
    for (let i = 0; i < x; i++) {
      for (let j = 0; j < y; j++) {
        const from = ((n * x + i) * y + j) * dh;
        out.set(data.subarray(from, from + dh), ((n * y + j) * x + i) * dh);
      }
    }
  }
  return out;
}

function maskShapeOf(c: AttentionCase): number[] {
  if (c.maskShape === "shared") return [1, 1, c.lq, c.l];
  if (c.maskShape === "row") return [c.b, 1, 1, c.l];
  return [c.b, 1, c.lq, c.l];
}

/**
 * The inputs of a case, every value in [-1, 1], so that a score is at most dh · scale =
 * sqrt(dh) < 32 in size: -1e9 plus a score rounds to -1e9 itself in float32 (spacing 64
 * there), and a fully masked row attends uniformly on both paths. The mask is -1e9 at about a
 * third of the entries, and over whole rows every third row with `fullyMasked`.
 */
function inputsOf(c: AttentionCase) {
  const mShape = maskShapeOf(c);
  const mask = uniform(mShape.reduce((a, b) => a * b, 1), c.seed + 4, 0, 1)
    .map((x) => (x < 0.35 ? -1e9 : 0));
  if (c.fullyMasked) {
    for (let row = 0; row * c.l < mask.length; row += 3) {
      mask.fill(-1e9, row * c.l, (row + 1) * c.l);
    }
  }
  return {
    q: uniform(c.b * c.h * c.lq * c.dh, c.seed),
    k: uniform(c.b * c.h * c.l * c.dh, c.seed + 1),
    v: uniform(c.b * c.h * c.l * c.dh, c.seed + 2),
    dy: uniform(c.b * c.h * c.lq * c.dh, c.seed + 3),
    mask,
    mShape,
    scale: 1 / Math.sqrt(c.dh),
  };
}

/**
 * `op`'s value and its gradients w.r.t. q, k and v (for the upstream gradient dy) on the
 * active backend, read back, with the tensors handed over in `layout` and the results
 * returned in the `heads` layout.
 */
async function attentionRun(
  op: AttentionOp,
  c: AttentionCase,
  layout: AttentionLayout = "heads",
): Promise<Float32Array[]> {
  const x = inputsOf(c);
  const sequence = layout === "sequence";
  // Host data [B, h, L, dh] as a tensor in `layout`, and a tensor's data back.
  const lay = (data: Float32Array, rows: number) =>
    sequence
      ? tf.tensor4d(swapAxes(data, c.b, c.h, rows, c.dh), [c.b, rows, c.h, c.dh])
      : tf.tensor4d(data, [c.b, c.h, rows, c.dh]);
  const unlay = (data: Float32Array, rows: number) =>
    sequence ? swapAxes(data, c.b, rows, c.h, c.dh) : data;
  const outs = tf.tidy(() => {
    const q = lay(x.q, c.lq);
    const k = lay(x.k, c.l);
    const v = lay(x.v, c.l);
    const m = tf.tensor(x.mask, x.mShape);
    const f = (qt: tf.Tensor, kt: tf.Tensor, vt: tf.Tensor) => op(qt, kt, vt, m, x.scale);
    const dy = lay(x.dy, c.lq);
    return [f(q, k, v), ...tf.grads(f)([q, k, v], dy)];
  });
  const values = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return values.map((data, n) => unlay(data, n < 2 ? c.lq : c.l));
}

/** The bit patterns of float32 data, so that equality is bitwise (-0 and NaN included). */
const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** float32's unit roundoff. */
const U = 2 ** -24;

/**
 * Per-element tolerances of `[out, dq, dk, dv]` on webgpu against the composed ops on cpu.
 * Both are float32 but sum in other orders (a workgroup's loops and trees against tfjs's
 * matmuls and reductions) and take exp by other instructions (WGSL's is within a few ulps),
 * so an element differs by a few roundings of each term that went into it: `n u Σ|term|`,
 * n the length of the longest chain of sums behind it (dh for a score or dp, L for the
 * softmax and D, then L or Lq for the output's own sum). The terms are taken in absolute
 * value, in float64: `out = Σ_j p_j v_j`, `dv = Σ_i p_i dy_i`, and for dq and dk `scale
 * Σ p (|dp| + |D|) |k or q|` with `dp` and `D` themselves sums of absolute values, as
 * `dp - D` cancels. A probability's own error is relative, some roundings of a score
 * (at most dh · scale in size) and of the exp: the factor `1 + max |score|`. Hence
 * `8 u (dh + L + Lq) (1 + max |score|) Σ|term|`, plus 1e-30 so that exact zeros (masked
 * keys in every row) compare as such. With dropout each probability's term carries its
 * mask factor m (0 or 1 / (1 - rate)): `p' = m p` in out and dv, `m |dp|` in D and ds. The
 * largest difference seen on llvmpipe was under 6% of this (4 runs of the 44 cases below);
 * a probability off by 1e-4 of itself fails it, and a mask entry drawn wrong fails by far.
 */
function attentionTolerances(c: AttentionCase): Float64Array[] {
  const x = inputsOf(c);
  const { b: nb, h: nh, lq, l, dh } = c;
  const [mb, , mq] = x.mShape;
  const rate = c.rate ?? 0;
  // The dropout mask's factors on the probabilities [B, h, Lq, L]; 1 without dropout.
  const keep = rate > 0 ? dropoutMask(nb * nh * lq * l, rate, c.seed) : null;
  const out = new Float64Array(nb * nh * lq * dh);
  const dq = new Float64Array(out.length);
  const dk = new Float64Array(nb * nh * l * dh);
  const dv = new Float64Array(dk.length);
  let maxScore = 0;
  const sums: {
    p: number[];
    m: number[];
    dpAbs: number[];
    dAbs: number;
    bh: number;
    i: number;
  }[] = [];
  for (let bh = 0; bh < nb * nh; bh++) {
    const b = Math.floor(bh / nh);
    for (let i = 0; i < lq; i++) {
      const maskRow = ((mb === 1 ? 0 : b) * mq + (mq === 1 ? 0 : i)) * l;
      const s: number[] = [];
      const dpAbs: number[] = [];
      for (let j = 0; j < l; j++) {
        let acc = 0;
        let accDp = 0;
        for (let d = 0; d < dh; d++) {
          acc += x.q[(bh * lq + i) * dh + d] * x.k[(bh * l + j) * dh + d];
          accDp += Math.abs(x.dy[(bh * lq + i) * dh + d] * x.v[(bh * l + j) * dh + d]);
        }
        maxScore = Math.max(maxScore, Math.abs(acc * x.scale));
        s.push(acc * x.scale + x.mask[maskRow + j]);
        dpAbs.push(accDp);
      }
      const top = Math.max(...s);
      const e = s.map((v) => Math.exp(v - top));
      const total = e.reduce((a, v) => a + v, 0);
      const p = e.map((v) => v / total);
      const m = p.map((_, j) => keep === null ? 1 : keep[(bh * lq + i) * l + j]);
      const dAbs = p.reduce((a, pj, j) => a + pj * m[j] * dpAbs[j], 0);
      sums.push({ p, m, dpAbs, dAbs, bh, i });
    }
  }
  for (const { p, m, dpAbs, dAbs, bh, i } of sums) {
    for (let j = 0; j < l; j++) {
      const ds = x.scale * p[j] * (m[j] * dpAbs[j] + dAbs);
      const dropped = m[j] * p[j]; // p'
      for (let d = 0; d < dh; d++) {
        const [qi, kj] = [(bh * lq + i) * dh + d, (bh * l + j) * dh + d];
        out[qi] += dropped * Math.abs(x.v[kj]);
        dq[qi] += ds * Math.abs(x.k[kj]);
        dk[kj] += ds * Math.abs(x.q[qi]);
        dv[kj] += dropped * Math.abs(x.dy[qi]);
      }
    }
  }
  const factor = 8 * U * (dh + l + lq) * (1 + maxScore);
  return [out, dq, dk, dv].map((t) => t.map((v) => factor * v + 1e-30));
}

/**
 * The fused op on webgpu, tensors in `c.layout`, against the composed ops on cpu in the
 * `heads` layout (with dropout: `matMul(dropout(probabilities), v)`).
 */
async function assertAttentionMatchesCpu(c: AttentionCase, label: string) {
  await selectBackend("cpu");
  const dropped = { dropout: optionsOf(c).dropout };
  const reference = await attentionRun(
    (q, k, v, m, scale) => scaledDotAttentionReference(q, k, v, m, scale, dropped),
    c,
  );
  await selectBackend("webgpu", { webgpuCpuForward: false });
  const fused = await attentionRun(
    (q, k, v, m, scale) => scaledDotAttention(q, k, v, m, scale, optionsOf(c)),
    c,
    c.layout,
  );
  const tolerances = attentionTolerances(c);
  ["out", "dq", "dk", "dv"].forEach((name, n) => {
    assertEquals(fused[n].length, reference[n].length);
    for (let j = 0; j < fused[n].length; j++) {
      const [a, b, tolerance] = [fused[n][j], reference[n][j], tolerances[n][j]];
      assert(
        Math.abs(a - b) <= tolerance,
        `${label} ${JSON.stringify(c)} ${name}[${j}]: ${a} vs ${b} (tolerance ${tolerance})`,
      );
    }
  });
}

/** Small cases (llvmpipe is slow), Lq = 1 often: the ranking path's last query only. */
const smallCase = fc.record({
  b: fc.integer({ min: 1, max: 3 }),
  h: fc.integer({ min: 1, max: 3 }),
  lq: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 6 })),
  l: fc.integer({ min: 1, max: 9 }),
  dh: fc.integer({ min: 1, max: 9 }),
  maskShape: fc.constantFrom<MaskShape>("full", "full", "shared", "row"),
  fullyMasked: fc.boolean(),
  seed: fc.integer({ min: 1, max: 2 ** 30 }),
  layout: fc.constantFrom<AttentionLayout>("heads", "sequence"),
  rate: fc.constantFrom(0, 0, 0.1, 0.5, 0.9),
});

// ------------------------------------------------------------- cpu and wasm: unchanged

Deno.test("scaledDotAttention() on cpu and wasm is today's composed ops, bit for bit, value and gradients (2 x 30 cases)", async () => {
  for (const backend of ["cpu", "wasm"] as const) {
    await selectBackend(backend);
    // No kernel there: the function takes the reference path.
    assertEquals(tf.getKernel(ATTENTION_KERNEL, backend), undefined);
    await fc.assert(
      fc.asyncProperty(smallCase, async (c) => {
        const layout = c.layout ?? "heads";
        const fused = await attentionRun(
          (q, k, v, m, scale) => scaledDotAttention(q, k, v, m, scale, optionsOf(c)),
          c,
          layout,
        );
        const today = await attentionRun(
          (q, k, v, m, scale) =>
            todaysLayersAttention(q, k, v, m, scale, layout, c.rate ?? 0, c.seed),
          c,
          layout,
        );
        assertEquals(fused.length, 4);
        fused.forEach((a, i) => assertEquals(bits(a), bits(today[i]), `${backend} output ${i}`));
        // Without options: the code selfAttention ran before it had any.
        if (layout === "heads" && !c.rate) {
          const plain = await attentionRun(todaysAttention, c);
          fused.forEach((a, i) => assertEquals(bits(a), bits(plain[i]), `${backend} plain ${i}`));
        }
      }),
      { numRuns: 30 },
    );
  }
  await selectBackend("cpu");
});

Deno.test("scaledDotAttention() refuses a dropout rate outside [0, 1)", async () => {
  await selectBackend("cpu");
  const t = tf.ones([1, 1, 2, 2]);
  const m = tf.zeros([1, 1, 2, 2]);
  for (const rate of [1, -0.1, NaN]) {
    let thrown: unknown;
    try {
      scaledDotAttention(t, t, t, m, 1, { dropout: { rate, seed: 3 } });
    } catch (e) {
      thrown = e;
    }
    assert(thrown instanceof RangeError, `rate ${rate}`);
  }
  tf.dispose([t, m]);
});

// ------------------------------------------------------------------------- webgpu

Deno.test({
  name:
    "scaledDotAttention() on webgpu: value and gradients equal the composed ops on cpu (40 random cases and 8 edge shapes)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const kernels = [
      ATTENTION_KERNEL,
      ATTENTION_GRAD_QUERY_KERNEL,
      ATTENTION_GRAD_KEY_VALUE_KERNEL,
    ];
    for (const name of kernels) {
      assert(tf.getKernel(name, "webgpu") !== undefined, `no ${name} on webgpu`);
    }
    await fc.assert(
      fc.asyncProperty(smallCase, (c) => assertAttentionMatchesCpu(c, "random")),
      { numRuns: 40 },
    );
    const edge = { maskShape: "full", fullyMasked: true } as const;
    // More keys than threads and a head wider than the workgroup: several of each a thread.
    await assertAttentionMatchesCpu(
      { b: 1, h: 1, lq: 3, l: 130, dh: 70, ...edge, seed: 1 },
      "wide",
    );
    // The same with dropout, in the sequence layout: a thread's keys each draw their mask.
    await assertAttentionMatchesCpu(
      { b: 1, h: 2, lq: 3, l: 130, dh: 70, ...edge, seed: 5, layout: "sequence", rate: 0.5 },
      "wide, dropout",
    );
    // SASRec's ranking shape: the last query over 200 keys, heads of 64.
    await assertAttentionMatchesCpu(
      { b: 2, h: 2, lq: 1, l: 200, dh: 64, ...edge, seed: 2 },
      "Lq 1",
    );
    await assertAttentionMatchesCpu(
      { b: 2, h: 2, lq: 1, l: 200, dh: 64, ...edge, seed: 6, layout: "sequence", rate: 0.2 },
      "Lq 1, dropout",
    );
    // Self-attention of a batch: Lq = L, every third row padding.
    await assertAttentionMatchesCpu({ b: 3, h: 2, lq: 20, l: 20, dh: 8, ...edge, seed: 3 }, "L 20");
    // DiffuRec's training shape in small: the sequence layout and dropout 0.1.
    await assertAttentionMatchesCpu(
      { b: 3, h: 2, lq: 20, l: 20, dh: 8, ...edge, seed: 7, layout: "sequence", rate: 0.1 },
      "L 20, dropout",
    );
    // More rows than the 65,535 workgroups of one dispatch dimension, in all three
    // programs: tfjs folds the dispatch, and the rows past the last one must write nothing.
    await assertAttentionMatchesCpu(
      { b: 2185, h: 1, lq: 30, l: 30, dh: 1, ...edge, seed: 4 },
      "65,550 rows",
    );
    // And the mask's indices past the fold: each row draws from its own first index.
    await assertAttentionMatchesCpu(
      { b: 1093, h: 2, lq: 30, l: 30, dh: 1, ...edge, seed: 8, layout: "sequence", rate: 0.5 },
      "65,580 rows, dropout",
    );
  },
});

Deno.test({
  name:
    "scaledDotAttention() on webgpu: layouts agree bit for bit; a null seed or rate 0 is no dropout",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const c: AttentionCase = {
      b: 2,
      h: 3,
      lq: 5,
      l: 7,
      dh: 4,
      maskShape: "full",
      fullyMasked: true,
      seed: 11,
    };
    const run = (options: AttentionOptions, layout: AttentionLayout = "heads") =>
      attentionRun(
        (q, k, v, m, scale) => scaledDotAttention(q, k, v, m, scale, { ...options, layout }),
        c,
        layout,
      );
    const same = (a: Float32Array[], b: Float32Array[], label: string) =>
      a.forEach((x, n) => assertEquals(bits(x), bits(b[n]), `${label} output ${n}`));
    // The programs address rows by strides: the same sums in the same order either way.
    const dropped = { dropout: { rate: 0.4, seed: 12 } };
    const withDropout = await run(dropped);
    same(await run(dropped, "sequence"), withDropout, "layouts");
    const plain = await run({});
    same(await run({}, "sequence"), plain, "layouts, no dropout");
    same(await run({ dropout: { rate: 0.4, seed: null } }), plain, "seed null");
    same(await run({ dropout: { rate: 0, seed: 12 } }), plain, "rate 0");
    // And dropout does change the result.
    const [a, b] = [bits(plain[0]), bits(withDropout[0])];
    assert(a.some((x, n) => x !== b[n]), "dropout left the output as it was");
  },
});

Deno.test({
  name:
    "scaledDotAttention() on webgpu: 1 dispatch forward and 3 with the backward pass, against 5 and 14 composed (10, 24 with dropout, transposes)",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const c: AttentionCase = {
      b: 2,
      h: 2,
      lq: 5,
      l: 5,
      dh: 4,
      maskShape: "full",
      fullyMasked: true,
      seed: 9,
    };
    const x = inputsOf(c);
    const q = tf.tensor4d(x.q, [c.b, c.h, c.lq, c.dh]);
    const k = tf.tensor4d(x.k, [c.b, c.h, c.l, c.dh]);
    const v = tf.tensor4d(x.v, [c.b, c.h, c.l, c.dh]);
    const m = tf.tensor(x.mask, x.mShape);
    const dy = tf.tensor4d(x.dy, [c.b, c.h, c.lq, c.dh]);
    // The same data as [B, L, h, dh] views, for the sequence layout (counts only).
    const sequence = [q, k, v, dy].map((t) => tf.reshape(t, [c.b, c.l, c.h, c.dh]));
    const count = (op: AttentionOp, backward: boolean, inputs: tf.Tensor[] = [q, k, v, dy]) => {
      const [qt, kt, vt, dyt] = inputs;
      const f = (a: tf.Tensor, b: tf.Tensor, d: tf.Tensor) => op(a, b, d, m, x.scale);
      // Once to compile and upload, then counted.
      tf.dispose(tf.tidy(() => backward ? tf.grads(f)([qt, kt, vt], dyt) : f(qt, kt, vt)));
      return countGpuDispatches(() =>
        tf.tidy(() => {
          backward ? tf.grads(f)([qt, kt, vt], dyt) : f(qt, kt, vt);
        })
      );
    };
    assertEquals(count(scaledDotAttention, false), 1);
    assertEquals(count(scaledDotAttention, true), 3);
    // With dropout, in the sequence layout: still 1 and 3.
    const options: AttentionOptions = { layout: "sequence", dropout: { rate: 0.3, seed: 5 } };
    const fusedAll: AttentionOp = (a, b, d, mt, scale) =>
      scaledDotAttention(a, b, d, mt, scale, options);
    assertEquals(count(fusedAll, false, sequence), 1);
    assertEquals(count(fusedAll, true, sequence), 3);
    // The composed ops, for the record (lib/nn/attention.ts quotes these).
    assertEquals(count(todaysAttention, false), 5);
    assertEquals(count(todaysAttention, true), 14);
    // With dropout and the per-head transposes, what selfAttention ran before.
    const todayAll: AttentionOp = (a, b, d, mt, scale) =>
      todaysLayersAttention(a, b, d, mt, scale, "sequence", 0.3, 5);
    assertEquals(count(todayAll, false, sequence), 10);
    assertEquals(count(todayAll, true, sequence), 24);
    tf.dispose([q, k, v, m, dy, ...sequence]);
  },
});

Deno.test({
  name: "scaledDotAttention() keeps the tensor count flat on webgpu, with and without tf.tidy",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    const c: AttentionCase = {
      b: 2,
      h: 3,
      lq: 4,
      l: 6,
      dh: 5,
      maskShape: "full",
      fullyMasked: true,
      seed: 21,
    };
    const x = inputsOf(c);
    const m = tf.tensor(x.mask, x.mShape);
    const cases: AttentionOptions[] = [
      {},
      { layout: "sequence", dropout: { rate: 0.3, seed: 4 } },
    ];
    for (const options of cases) {
      // [B, h, L, dh], or [B, L, h, dh] in the sequence layout (the data's order is moot).
      const shape = (rows: number) =>
        options.layout === "sequence" ? [c.b, rows, c.h, c.dh] : [c.b, c.h, rows, c.dh];
      const q = tf.tensor(x.q, shape(c.lq));
      const k = tf.tensor(x.k, shape(c.l));
      const v = tf.tensor(x.v, shape(c.l));
      const dy = tf.tensor(x.dy, shape(c.lq));
      const f = (qt: tf.Tensor, kt: tf.Tensor, vt: tf.Tensor) =>
        scaledDotAttention(qt, kt, vt, m, x.scale, options);
      const step = () => tf.tidy(() => tf.grads(f)([q, k, v], dy).concat(f(q, k, v)));
      tf.dispose(step()); // compiles and uploads
      const before = tf.memory().numTensors;
      for (let n = 0; n < 5; n++) {
        const outs = step();
        assertEquals(outs.length, 4);
        await Promise.all(outs.map((t) => t.data()));
        tf.dispose(outs);
        assertEquals(tf.memory().numTensors, before, `${options.layout} after step ${n + 1}`);
      }
      // Without tidy: the gradient's intermediates (the row statistics) are disposed too.
      const grads = tf.grads(f)([q, k, v], dy);
      tf.dispose(grads);
      assertEquals(tf.memory().numTensors, before);
      tf.dispose([q, k, v, dy]);
    }
    m.dispose();
  },
});

Deno.test({
  name: "scaledDotAttention() on webgpu takes the composed path for a mask it does not fuse",
  ignore: noGpu,
  fn: async () => {
    await selectBackend("webgpu", { webgpuCpuForward: false });
    // A mask per head ([B, h, Lq, L]) is not a shape the kernels take: composed ops, so
    // the result is the reference's, bit for bit, and takes its 5 dispatches.
    const [q, k, v] = [1, 2, 3].map((s) => tf.tensor4d(uniform(2 * 2 * 3 * 4, s), [2, 2, 3, 4]));
    const m = tf.tensor4d(uniform(2 * 2 * 3 * 3, 4).map((u) => (u < 0 ? -1e9 : 0)), [2, 2, 3, 3]);
    let out: tf.Tensor | undefined;
    const dispatches = countGpuDispatches(() => {
      out = tf.tidy(() => scaledDotAttention(q, k, v, m, 0.5));
    });
    const reference = tf.tidy(() => scaledDotAttentionReference(q, k, v, m, 0.5));
    assertEquals(dispatches, 5);
    assertEquals(
      bits(await out!.data() as Float32Array),
      bits(await reference.data() as Float32Array),
    );
    tf.dispose([q, k, v, m, out!, reference]);
  },
});

releaseWebGpuAfterTests();
