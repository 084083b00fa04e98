/**
 * Int8 item tables kept int8 for serving (`lib/inference/_int8_items.ts`,
 * `Recommender.load(..., { compactItems: true })`): the ranking kernel against a float64
 * reference, and a compact recommender against the same file decoded to float32.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import { DiffuRec } from "../lib/models/diffurec.ts";
import type { ServableModel } from "../lib/inference/recommender.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { hasInt8TopK, Int8ItemTable, quantiseQueries } from "../lib/inference/_int8_items.ts";
import { seededUniform } from "./_fixtures.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";

await selectBackend("wasm");
/** Whether this process's wasm backend has the int8 ranking kernel (bmm.wasm). */
const kernel = hasInt8TopK();
await selectBackend("cpu");

Deno.test("quantiseQueries() keeps each row within half a step of its int16 scale", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 2 ** 30 }),
      (d, seed) => {
        const x = seededUniform(3 * d, seed, -5, 5);
        x[0] = 0; // a zero among them
        const { q16, qscale } = quantiseQueries(x, 3, d);
        for (let r = 0; r < 3; r++) {
          for (let u = 0; u < d; u++) {
            const i = r * d + u;
            assert(
              Math.abs(q16[i] * qscale[r] - x[i]) <= qscale[r] * 0.5 * (1 + 1e-6),
              `row ${r} [${u}]`,
            );
            assert(Math.abs(q16[i]) <= 32767);
          }
        }
      },
    ),
    { numRuns: 200 },
  );
  const { qscale } = quantiseQueries(Float32Array.from([1, NaN, 0, 0]), 2, 2);
  assert(Number.isNaN(qscale[0]) && qscale[1] === 1, `scales ${qscale}`);
});

Deno.test({
  name:
    "int8_top_k on wasm: each history's best k rows of an int8 table, best first, as a float64 ranking of the decoded table says (300 random cases)",
  ignore: !kernel,
  fn: async () => {
    await selectBackend("wasm");
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }), // histories
        fc.integer({ min: 1, max: 3 }), // queries a history
        fc.integer({ min: 2, max: 80 }), // rows
        fc.constantFrom(16, 32, 48),
        fc.integer({ min: 1, max: 2 ** 30 }),
        fc.integer({ min: 1, max: 80 }),
        (h, q, n, d, seed, kDraw) => {
          const k = 1 + (kDraw - 1) % (n - 1);
          const codes = Uint8Array.from(
            seededUniform(n * d, seed, -127.4, 127.4),
            (x) => Math.round(x) & 0xff,
          );
          const scales = seededUniform(n, seed + 1, 0.001, 0.05);
          const queries = seededUniform(h * q * d, seed + 2, -3, 3);
          const table = new Int8ItemTable(codes, scales, d);
          const top = tf.tidy(() => table.topK(tf.tensor3d(queries, [h, q, d]), k, 1));
          const values = top.values.dataSync(), ids = top.indices.dataSync();
          tf.dispose([top.values, top.indices]);
          table.dispose();
          const signed = new Int8Array(codes.buffer);
          const score = (b: number, i: number) => {
            let best = -Infinity;
            for (let j = 0; j < q; j++) {
              let s = 0;
              for (let u = 0; u < d; u++) {
                s += queries[(b * q + j) * d + u] * signed[i * d + u] * scales[i];
              }
              best = Math.max(best, s);
            }
            return best;
          };
          for (let b = 0; b < h; b++) {
            const all = Array.from({ length: n - 1 }, (_, i) => score(b, i + 1)).sort((x, y) =>
              y - x
            );
            // The query's int16 rounding moves an entry by at most half its scale, so row i's
            // score by at most half the scale times scale[i] times the sum of |codes|.
            let top = 0;
            for (let u = 0; u < q * d; u++) top = Math.max(top, Math.abs(queries[b * q * d + u]));
            const bound = (i: number) => {
              let sum = 0;
              for (let u = 0; u < d; u++) sum += Math.abs(signed[i * d + u]);
              return 0.51 * (top / 32767) * scales[i] * sum + 1e-5 * Math.abs(score(b, i));
            };
            let tol = 0;
            for (let i = 1; i < n; i++) tol = Math.max(tol, bound(i));
            const label = `history ${b}: h ${h}, q ${q}, n ${n}, d ${d}, k ${k}`;
            for (let r = 0; r < k; r++) {
              const id = ids[b * k + r];
              assert(id >= 1 && id < n, `${label}: id ${id}`);
              assert(Math.abs(values[b * k + r] - score(b, id)) <= tol, `${label}: score of ${id}`);
              assert(Math.abs(values[b * k + r] - all[r]) <= 2 * tol, `${label}: rank ${r}`);
              if (r > 0) {
                assert(values[b * k + r] <= values[b * k + r - 1], `${label}: order at ${r}`);
              }
            }
            assertEquals(new Set(ids.subarray(b * k, b * k + k)).size, k, `${label}: distinct`);
          }
        },
      ),
      { numRuns: 300 },
    );
    await selectBackend("cpu");
  },
});

const data = syntheticDataset({ seed: 11, users: 60, items: 30, maxLength: 12 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 12 };
const tokens = (ids: Int32Array) => Array.from(ids, (i) => data.vocab.items[i]);

const MODELS: [string, () => ServableModel][] = [
  ["sasrec", () => new SasRec({ ...TINY, seed: 5 })],
  ["sigma", () => new Sigma({ ...TINY, seed: 5, interests: 3 })],
  ["sigma, mie ranking", () => new Sigma({ ...TINY, seed: 5, interests: 3, ranking: "mie" })],
  ["diffurec", () => new DiffuRec({ ...TINY, seed: 5, steps: 4 })],
];

Deno.test({
  name:
    "a compactItems recommender ranks as the same int8 file decoded to float32, holding a quarter of the table's bytes (every model, wasm)",
  ignore: !kernel,
  fn: async () => {
    await selectBackend("wasm");
    for (const [kind, make] of MODELS) {
      using source = new Recommender(make(), data.vocab.items);
      const bytes = await source.toBytes({}, { itemDtype: "i8" });
      const before = tf.memory().numBytes;
      using decoded = await Recommender.load(bytes);
      const decodedBytes = tf.memory().numBytes - before;
      using compact = await Recommender.load(bytes, { compactItems: true });
      const compactBytes = tf.memory().numBytes - before - decodedBytes;
      assert(compact.compactItems && !decoded.compactItems, kind);
      // The float32 table is (N + 1) d 4 bytes; the int8 one (N + 1) d, plus a scale a row.
      const rows = data.numItems + 1;
      assertEquals(decodedBytes - compactBytes, rows * TINY.hidden * 3 - 4 * rows, kind);
      const histories = split.test.slice(0, 20).map((e) => tokens(e.history));
      histories.push([], ["unknown-token"]);
      for (const o of [{ k: 5 }, { k: 10, exclude: ["i3"] }, { k: 29, excludeSeen: false }]) {
        const a = await decoded.recommendBatch(histories, o);
        const b = await compact.recommendBatch(histories, o);
        for (let i = 0; i < histories.length; i++) {
          const label = `${kind} ${JSON.stringify(o)} history ${i}`;
          const mine = new Map(b[i].items.map((x) => [x.item, x.score]));
          const shared = a[i].items.filter((x) => mine.has(x.item));
          // The query's int16 rounding may swap two items of nearly equal score at the edge.
          assert(shared.length >= a[i].items.length - 1, `${label}: ${shared.length} shared`);
          const scale = Math.max(1e-6, ...a[i].items.map((x) => Math.abs(x.score)));
          for (const x of shared) {
            assert(Math.abs(mine.get(x.item)! - x.score) <= 1e-3 * scale, `${label}: ${x.item}`);
          }
        }
      }
    }
    await selectBackend("cpu");
  },
});

Deno.test({
  name:
    "a compactItems recommender refuses what needs the float32 table, by name, keeps the tensor count flat, and falls back where it cannot keep the table",
  ignore: !kernel,
  fn: async () => {
    await selectBackend("wasm");
    using source = new Recommender(new SasRec({ ...TINY, seed: 2 }), data.vocab.items);
    const i8 = await source.toBytes({}, { itemDtype: "i8" });
    using r = await Recommender.load(i8, { compactItems: true });
    await assertRejects(() => r.recommend(["i1"], { diversity: 1 }), RangeError, "compactItems");
    assertEquals(r.diversityMethods, [], "no method to offer");
    assertEquals(source.diversityMethods, ["mmr"], "SASRec's float32 table");
    await assertRejects(() => r.toBytes(), TypeError, "compactItems");
    await r.recommend(["i1"]);
    const before = tf.memory().numTensors;
    for (let i = 0; i < 50; i++) {
      await r.recommendBatch([tokens(split.test[i % split.test.length].history), []], { k: 4 });
    }
    assertEquals(tf.memory().numTensors, before, "tensors after 50 more calls");
    // A float16 file, or a width the kernel does not take, or cpu: decoded as usual.
    using f16 = await Recommender.load(await source.toBytes({}, { itemDtype: "f16" }), {
      compactItems: true,
    });
    assert(!f16.compactItems, "f16");
    using narrow = new Recommender(new SasRec({ ...TINY, hidden: 8, seed: 2 }), data.vocab.items);
    using narrowLoaded = await Recommender.load(await narrow.toBytes({}, { itemDtype: "i8" }), {
      compactItems: true,
    });
    assert(!narrowLoaded.compactItems, "width 8");
    assertEquals((await narrowLoaded.recommend(["i1"], { k: 3 })).items.length, 3);
    await selectBackend("cpu");
    using onCpu = await Recommender.load(i8, { compactItems: true });
    assert(!onCpu.compactItems, "cpu");
  },
});

Deno.test({
  name:
    "Int8ItemTable refuses a width past the int32 sums and a non-finite row scale; tiny queries keep their codes in range",
  ignore: !kernel,
  fn: async () => {
    await selectBackend("wasm");
    assertThrows(
      () => new Int8ItemTable(new Uint8Array(2 * 528), new Float32Array(2), 528),
      RangeError,
      "at most 512, got 528",
    );
    assertThrows(
      () => new Int8ItemTable(new Uint8Array(2 * 16), Float32Array.from([1, NaN]), 16),
      RangeError,
      "row 1 of the int8 item table has scale NaN",
    );
    // At 512, every code 127 and a query of ones: the largest sum, exactly.
    const table = new Int8ItemTable(
      new Uint8Array(2 * 512).fill(127),
      Float32Array.from([1, 1]),
      512,
    );
    const top = tf.tidy(() => table.topK(tf.ones([1, 1, 512]) as tf.Tensor3D, 1, 1));
    assertEquals(top.values.dataSync()[0], 127 * 512);
    tf.dispose([top.values, top.indices]);
    table.dispose();
    for (const tiny of [1e-38, 1e-40, 1e-44]) {
      const { q16, qscale } = quantiseQueries(Float32Array.from([tiny, -tiny / 3]), 1, 2);
      assert(
        qscale[0] > 0 && Math.abs(q16[0]) <= 32767 && q16[0] > 0,
        `${tiny}: ${q16} x ${qscale}`,
      );
    }
    await selectBackend("cpu");
  },
});

Deno.test({
  name:
    "a compactItems recommender loaded from a path streams its int8 table into place: the bytes' ranking exactly; changed codes are refused by the checksum with no tensor left",
  ignore: !kernel,
  fn: async () => {
    await selectBackend("wasm");
    const dir = await Deno.makeTempDir();
    try {
      using source = new Recommender(new Sigma({ ...TINY, seed: 4 }), data.vocab.items);
      assertEquals(source.diversityMethods, ["mmr", "interests"], "SIGMA's float32 table");
      const bytes = await source.toBytes({}, { itemDtype: "i8" });
      const path = `${dir}/model.safetensors`;
      await Deno.writeFile(path, bytes);
      const start = tf.memory().numBytes;
      using fromBytes = await Recommender.load(bytes, { compactItems: true });
      const between = tf.memory().numBytes;
      using fromPath = await Recommender.load(path, { compactItems: true });
      assert(fromPath.compactItems, "kept int8");
      // The same tensors as from bytes: nothing else left on the backend.
      assertEquals(tf.memory().numBytes - between, between - start);
      const histories = split.test.slice(0, 30).map((e) => tokens(e.history));
      assertEquals(
        await fromPath.recommendBatch(histories, { k: 7 }),
        await fromBytes.recommendBatch(histories, { k: 7 }),
      );
      // One code changed, in the middle of the streamed table.
      const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
      const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
      const [begin, end] = header.item.data_offsets as number[];
      const changed = bytes.slice();
      changed[8 + headerLength + Math.floor((begin + end) / 2)] ^= 1;
      await Deno.writeFile(path, changed);
      const tensors = tf.memory().numTensors;
      await assertRejects(
        () => Recommender.load(path, { compactItems: true }),
        Error,
        "checksum mismatch",
      );
      assertEquals(tf.memory().numTensors, tensors, "tensors after the refused file");
      // A sound file with an override the model does not take: the caller's RangeError, and
      // the table filled while reading is freed.
      await Deno.writeFile(path, bytes);
      await assertRejects(
        () => Recommender.load(path, { compactItems: true, inference: { reverseSteps: 2 } }),
        RangeError,
        "reverseSteps",
      );
      assertEquals(tf.memory().numTensors, tensors, "tensors after the refused override");
    } finally {
      await Deno.remove(dir, { recursive: true });
      await selectBackend("cpu");
    }
  },
});

Deno.test({
  name:
    "Int8ItemTable.receiving: codes written in pieces, in any order, rank as the table built whole; writes outside it and ranking before the scales are refused",
  ignore: !kernel,
  fn: async () => {
    await selectBackend("wasm");
    const rows = 37, width = 32;
    const codes = new Uint8Array(rows * width).map((_, i) => (i * 7919) % 256);
    const scales = seededUniform(rows, 3, 0.01, 1);
    const whole = new Int8ItemTable(codes, scales, width);
    const pieces = Int8ItemTable.receiving(rows, width)!;
    assert(pieces !== null, "wasm writes in place");
    assertThrows(() => pieces.write(rows * width - 3, new Uint8Array(4)), RangeError, "outside");
    const q = tf.tensor3d(seededUniform(2 * 3 * width, 5, -1, 1), [2, 3, width]);
    assertThrows(() => pieces.topK(q, 5), Error, "scales are not set");
    for (const at of [600, 0, 1000, 100]) {
      pieces.write(at, codes.subarray(at, Math.min(codes.length, at + (at === 1000 ? 184 : 500))));
    }
    pieces.setScales(scales);
    assertThrows(() => pieces.setScales(scales), Error, "already set");
    const a = whole.topK(q, 9), b = pieces.topK(q, 9);
    assertEquals(b.indices.arraySync(), a.indices.arraySync());
    assertEquals(b.values.arraySync(), a.values.arraySync());
    tf.dispose([q, a.values, a.indices, b.values, b.indices]);
    whole.dispose();
    pieces.dispose();
    await selectBackend("cpu");
    assertEquals(Int8ItemTable.receiving(rows, width), null, "cpu has no in-place writer");
  },
});
