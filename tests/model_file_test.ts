import * as tf from "@tensorflow/tfjs-core";
import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Sigma } from "../lib/models/sigma.ts";
import {
  decodeModelFile,
  encodeModelFile,
  MODEL_FILE_NAME,
  modelFileBytes,
  ModelFileError,
  VOCABULARY_TENSOR_ITEMS,
} from "../lib/inference/model_file.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import {
  decodeInt8Rows,
  encodeFloat16,
  encodeInt8Rows,
  fromFloat16Bits,
  toFloat16Bits,
} from "../lib/inference/_item_codec.ts";
import fc from "fast-check";
import { seededUniform } from "./_fixtures.ts";
import { evaluateModel, train } from "../lib/train/trainer.ts";
import { maxAbs, maxAbsDiff } from "./_model_checks.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { releaseWebGpuAfterTests } from "./_webgpu.ts";

const data = syntheticDataset({ seed: 13, users: 60, items: 30, maxLength: 12 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 12 };
const HISTORIES = split.test.slice(0, 6).map((ex) =>
  Array.from(ex.history, (i) => data.vocab.items[i])
);

function tinyModel(kind: "sasrec" | "sigma") {
  return kind === "sasrec"
    ? new SasRec({ ...TINY, seed: 8 })
    : new Sigma({ ...TINY, seed: 8, interests: 3 });
}

/** The file's bytes, with `edit` applied to a copy of its header JSON and re-framed. */
function withHeader(bytes: Uint8Array, edit: (h: Record<string, unknown>) => void): Uint8Array {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  edit(header);
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + bytes.length - 8 - n);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(bytes.subarray(8 + n), 8 + json.length);
  return out;
}

async function topAndScores(r: Recommender) {
  const results = await r.recommendBatch(HISTORIES, { k: 10 });
  return {
    top: results.map((x) => x.items.map((i) => i.item)),
    scores: results.flatMap((x) => x.items.map((i) => i.score)),
  };
}

Deno.test("a model file round-trips SASRec and SIGMA: same config, vocabulary and scores", async () => {
  await selectBackend("cpu");
  for (const kind of ["sasrec", "sigma"] as const) {
    using r = new Recommender(tinyModel(kind), data.vocab.items);
    const bytes = await r.toBytes({ note: "test" });
    using back = await Recommender.load(bytes);
    assertEquals(back.model.name, kind);
    assertEquals(back.model.config, r.model.config);
    assertEquals(back.items, r.items);
    assertEquals(await topAndScores(back), await topAndScores(r));
    const decoded = await decodeModelFile(bytes);
    assertEquals(decoded.info, { note: "test" });
    assertEquals(decoded.params, r.model.params.records());
  }
});

Deno.test("a model file saved on wasm loads on cpu and webgpu with the same top-10", async () => {
  for (const kind of ["sasrec", "sigma"] as const) {
    await selectBackend("wasm");
    using saved = new Recommender(tinyModel(kind), data.vocab.items);
    const ref = await topAndScores(saved);
    const bytes = await saved.toBytes();
    for (const backend of ["cpu", "webgpu"] as const) {
      await selectBackend(backend);
      using loaded = await Recommender.load(bytes);
      const got = await topAndScores(loaded);
      assertEquals(got.top, ref.top, `${kind} on ${backend}`);
      const diff = maxAbsDiff(got.scores, ref.scores);
      assert(diff <= 1e-5 * Math.max(maxAbs(ref.scores), 1), `${kind} ${backend}: ${diff}`);
    }
  }
});

Deno.test("a model file loads from a path, a file: URL, a data: URL, a Response and an ArrayBuffer", async () => {
  await selectBackend("cpu");
  using r = new Recommender(tinyModel("sasrec"), data.vocab.items);
  const bytes = await r.toBytes();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/${MODEL_FILE_NAME}`;
  await Deno.writeFile(path, bytes);
  let b64 = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    b64 += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  const sources = [
    path,
    new URL(`file://${path}`),
    `data:application/octet-stream;base64,${btoa(b64)}`,
    new Response(bytes),
    bytes.slice().buffer,
  ];
  const expected = await topAndScores(r);
  for (const source of sources) {
    using loaded = await Recommender.load(source);
    assertEquals(await topAndScores(loaded), expected);
  }
  await assertRejects(() => Recommender.load(`${dir}/none.safetensors`), Error, "none.safetensors");
  await assertRejects(
    () => Recommender.load(new Response("gone", { status: 404 })),
    Error,
    "HTTP 404",
  );
  // A file one byte over maxFileBytes is refused from every source that fetches one; at the
  // limit it loads; a path, the caller's own file, is not limited.
  for (const source of [sources[1], sources[2], new Response(bytes)]) {
    await assertRejects(
      () => Recommender.load(source, { maxFileBytes: bytes.length - 1 }),
      RangeError,
      `more than the ${bytes.length - 1} allowed (maxFileBytes)`,
    );
  }
  // Progress as the bytes arrive: rising counts ending at the file's size, with the total
  // the response declared (none without a content-length).
  // A declared length below the body's (a compressed transfer declares the compressed size)
  // grows the buffer; the bytes are the file's either way.
  const chunked = () =>
    new ReadableStream<Uint8Array>({
      start(controller) {
        for (let at = 0; at < bytes.length; at += 1000) {
          controller.enqueue(bytes.slice(at, at + 1000));
        }
        controller.close();
      },
    });
  for (const declared of [bytes.length, undefined, 777]) {
    const seen: [number, number | undefined][] = [];
    const headers = declared ? { "content-length": String(declared) } : undefined;
    using streamed = await Recommender.load(new Response(chunked(), { headers }), {
      onLoadProgress: (loaded, total) => seen.push([loaded, total]),
    });
    assertEquals(streamed.numItems, r.numItems);
    assertEquals(seen.length, Math.ceil(bytes.length / 1000));
    assert(seen.every(([n], i) => i === 0 || n > seen[i - 1][0]), "progress must rise");
    assertEquals(seen.at(-1), [bytes.length, declared]);
    const read = await modelFileBytes(new Response(chunked(), { headers }));
    assertEquals(read.bytes, bytes, `content-length ${declared}`);
  }
  using atLimit = await Recommender.load(sources[1], { maxFileBytes: bytes.length });
  assertEquals(atLimit.numItems, r.numItems);
  using fromPath = await Recommender.load(path, { maxFileBytes: 1 });
  assertEquals(fromPath.numItems, r.numItems);
  // A path is not limited, but a limit that is no limit is still refused by name.
  await assertRejects(() => Recommender.load(path, { maxFileBytes: 0 }), RangeError, "maxBytes");
  // A body read before is named as such, also on an HTTP error (not a stream's TypeError).
  const read = new Response(bytes);
  await read.arrayBuffer();
  await assertRejects(() => Recommender.load(read), TypeError, "body was already read");
  const gone = new Response("gone", { status: 404 });
  const reader = gone.body!.getReader();
  await assertRejects(() => Recommender.load(gone), TypeError, "body was already read");
  reader.releaseLock();
  await assertRejects(() => Recommender.load(gone), Error, "HTTP 404");
  // An endless body stops at the limit, and a declared length over it is not read at all.
  let pulled = 0;
  const endless = () =>
    new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled++;
        controller.enqueue(new Uint8Array(1 << 16));
      },
    });
  await assertRejects(
    () => modelFileBytes(new Response(endless()), 1 << 20),
    RangeError,
    "at least",
  );
  assert(pulled <= 20, `read ${pulled} chunks of 64 KiB past a 1 MiB limit`);
  pulled = 0;
  const declared = new Response(endless(), { headers: { "content-length": String(2 ** 40) } });
  await assertRejects(() => modelFileBytes(declared), RangeError, `${2 ** 40} bytes`);
  assert(pulled <= 1, `read ${pulled} chunks of a body declared too large`);
  await assertRejects(() => modelFileBytes(bytes, 0), RangeError, "maxBytes");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a damaged or foreign model file is rejected with what is wrong, before any model is built", async () => {
  await selectBackend("cpu");
  using r = new Recommender(tinyModel("sigma"), data.vocab.items);
  const good = await r.toBytes();
  const n = Number(new DataView(good.buffer).getBigUint64(0, true));
  const flipped = (at: number) => {
    const b = good.slice();
    b[at] ^= 0x01;
    return b;
  };
  const header = new TextDecoder().decode(good.subarray(8, 8 + n));
  const tokenAt = 8 + header.indexOf('\\"i7\\"') + 3; // inside the vocabulary's JSON string
  const configAt = 8 + header.indexOf("hidden") + 2;
  const cases: [string, Uint8Array, string][] = [
    ["a flipped weight bit", flipped(good.length - 5), "checksum mismatch"],
    ["a changed vocabulary entry", flipped(tokenAt), "checksum mismatch"],
    ["a changed config key", flipped(configAt), "checksum mismatch"],
    ["a truncated file", good.subarray(0, good.length - 100), "data_offsets"],
    ["a file of 5 bytes", good.subarray(0, 5), "too few"],
    ["a header longer than the file", good.subarray(0, 8 + 10), "does not fit"],
    ["garbage in the header", flipped(9), "header is not valid JSON"],
    [
      "an unknown format version",
      withHeader(good, (h) => (h.__metadata__ as Record<string, string>).format_version = "9"),
      'format version "9"',
    ],
    [
      "another format",
      withHeader(good, (h) => (h.__metadata__ as Record<string, string>).format = "other"),
      'metadata "format"',
    ],
    [
      "a plain safetensors file",
      withHeader(good, (h) => delete h.__metadata__),
      "__metadata__",
    ],
    [
      "a forged checksum",
      withHeader(good, (h) => (h.__metadata__ as Record<string, string>).checksum = "sha256:00"),
      "checksum mismatch",
    ],
    [
      "a float16 tensor",
      withHeader(good, (h) => (h.item as Record<string, string>).dtype = "F16"),
      'tensor "item" has dtype "F16"',
    ],
  ];
  for (const [what, bytes, message] of cases) {
    await assertRejects(() => Recommender.load(bytes), ModelFileError, message);
    assert(what.length > 0);
  }
});

Deno.test("a model path that is a pipe, or a large file that is no model file, is refused before it is read (hardening item 6)", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  // 2 GB of which only the first bytes are written (sparse): text, not a safetensors header.
  const big = `${dir}/big.txt`;
  await Deno.writeTextFile(big, "aaaaaaaaaaaaaaaa");
  await Deno.truncate(big, 2_000_000_000);
  await assertRejects(
    () => Recommender.load(big),
    ModelFileError,
    "does not fit the file's 2000000000 bytes",
  );
  // A FIFO: reading it would wait for a writer (and then read without end).
  const fifo = `${dir}/model.safetensors`;
  if ((await new Deno.Command("mkfifo", { args: [fifo] }).output()).success) {
    await assertRejects(() => Recommender.load(fifo), ModelFileError, "not a regular file");
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a model URL whose server does not answer, or stops sending, fails after the stall time (hardening item 7)", async () => {
  await selectBackend("cpu");
  let release = () => {};
  const held = new Promise<void>((resolve) => release = resolve);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    if (new URL(req.url).pathname === "/silent") {
      await held; // accepts, answers nothing
      return new Response("late");
    }
    // Headers and 100 bytes, then nothing more until released.
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(new Uint8Array(100));
        await held;
        controller.close();
      },
    });
    return new Response(body, { headers: { "content-length": "1000" } });
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    await assertRejects(
      () => Recommender.load(`${base}/silent`, { fetchStallMs: 300 }),
      Error,
      "no answer from the server for 0.3 s",
    );
    await assertRejects(
      () => Recommender.load(`${base}/stalls`, { fetchStallMs: 300 }),
      Error,
      "nothing more after 100 bytes from the server for 0.3 s",
    );
  } finally {
    release();
    await server.shutdown();
  }
});

Deno.test("a model file's header is padded to 8 bytes, as safetensors writes it, so tensor data starts aligned (hardening item 24)", async () => {
  await selectBackend("cpu");
  for (const kind of ["sasrec", "sigma"] as const) {
    using r = new Recommender(tinyModel(kind), data.vocab.items);
    for (const info of [{}, { note: "x" }, { note: "xy" }, { note: "xyz" }]) {
      const bytes = await r.toBytes(info);
      const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
      assertEquals((8 + n) % 8, 0, `${kind} ${JSON.stringify(info)}: header of ${n} bytes`);
      // The padding is spaces, which JSON ignores: the header still parses.
      const text = new TextDecoder().decode(bytes.subarray(8, 8 + n));
      assert(/^\{.*\} *$/s.test(text), text.slice(-20));
    }
  }
});

Deno.test("a model file whose tensors do not fit its config is rejected, naming the tensor", async () => {
  await selectBackend("cpu");
  const model = tinyModel("sasrec");
  const { records, values } = await model.params.toArrays();
  model.params.dispose();
  const base = { model: "sasrec", config: model.config as unknown as Record<string, unknown> };
  const bad = [
    // The config says hidden 16; a file claiming 8 describes another model.
    [{ ...base, config: { ...base.config, hidden: 8 } }, "is [", records, values],
    [{ ...base, model: "transformer9000" }, "transformer9000", records, values],
    // A 2-D tensor transposed: the same number of values, another shape.
    [
      base,
      "the model's config gives [",
      records.map((r) =>
        r.shape.length === 2 && r.shape[0] !== r.shape[1]
          ? { ...r, shape: [r.shape[1], r.shape[0]] }
          : r
      ),
      values,
    ],
    // Object's own members are no models (a plain object lookup found "constructor").
    [{ ...base, model: "constructor" }, 'Unknown model "constructor"', records, values],
    [base, 'tensor "item"', records.slice(1), values.subarray(records[0].shape[0] * 16)],
  ] as const;
  for (const [head, message, params, v] of bad) {
    const bytes = await encodeModelFile({
      ...head,
      items: data.vocab.items,
      params: [...params],
      values: v,
      info: {},
    });
    await assertRejects(() => Recommender.load(bytes), ModelFileError, message);
  }
  // A config asking for a huge model (checksum valid) is refused from the tensor table,
  // before anything is allocated: 10 million layers hung and grew past 2.7 GB before.
  for (
    const [field, value] of [["layers", 1e7], ["maxLength", 1e9], ["inner", 1e12]] as const
  ) {
    const bytes = await encodeModelFile({
      ...base,
      config: { ...base.config, [field]: value },
      items: data.vocab.items,
      params: records,
      values,
      info: {},
    });
    const before = tf.memory().numTensors;
    await assertRejects(() => Recommender.load(bytes), ModelFileError, "more than");
    assertEquals(tf.memory().numTensors, before, `${field}: tensors left behind`);
  }
  await assertRejects(
    () =>
      encodeModelFile({
        ...base,
        items: ["<pad>", "a", "a"],
        params: records,
        values,
        info: {},
      }),
    ModelFileError,
    '"a" is both',
  );
});

Deno.test("train() writes model.safetensors of the best epoch, with the vocabulary, for both models", async () => {
  await selectBackend("cpu");
  for (const kind of ["sasrec", "sigma"] as const) {
    const out = await Deno.makeTempDir();
    const model = tinyModel(kind);
    const result = await train(model, split, data.numItems, { epochs: 2, batchSize: 32 }, {
      out,
      checkpointInfo: { data: { kind: "synthetic" }, itemTokens: data.vocab.items },
    });
    using loaded = await Recommender.load(`${out}/${MODEL_FILE_NAME}`);
    assertEquals(loaded.items, data.vocab.items);
    const file = await decodeModelFile(await Deno.readFile(`${out}/${MODEL_FILE_NAME}`));
    assertEquals(file.info.epoch, result.bestEpoch);
    const ref = await evaluateModel(model, split.test, data.numItems, 64, TINY.maxLength);
    const again = await evaluateModel(loaded.model, split.test, data.numItems, 64, TINY.maxLength);
    assertEquals(again, ref);
    model.params.dispose();
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("train() without a vocabulary names items by their dense ids in the model file", async () => {
  await selectBackend("cpu");
  const out = await Deno.makeTempDir();
  const model = tinyModel("sasrec");
  await train(model, split, data.numItems, { epochs: 1, batchSize: 32 }, { out });
  model.params.dispose();
  using loaded = await Recommender.load(`${out}/${MODEL_FILE_NAME}`);
  assertEquals(loaded.items.slice(0, 3), ["<pad>", "1", "2"]);
  assertEquals(loaded.numItems, data.numItems);
  await Deno.remove(out, { recursive: true });
});

/** Reads a model file with the reference `safetensors` package and recomputes its checksum. */
const PYTHON_CHECK = `
import hashlib, json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
    h = hashlib.sha256()
    for k in sorted(meta):
        if k != "checksum":
            h.update(f"{k}={meta[k]}\\n".encode())
    shapes = {}
    dtypes = {"float32": ("F32", "<f4"), "float16": ("F16", "<f2"), "int8": ("I8", "i1")}
    for name in sorted(f.keys()):
        t = f.get_tensor(name)
        shapes[name] = list(t.shape)
        dtype, layout = dtypes[str(t.dtype)]
        h.update(f"{name} {dtype} [{','.join(map(str, t.shape))}]\\n".encode())
        h.update(t.astype(layout).tobytes())
print(json.dumps({"model": meta["model"], "ok": "sha256:" + h.hexdigest() == meta["checksum"],
                  "shapes": shapes, "items": json.loads(meta["items"])[:3]}))
`;

const probe = await new Deno.Command("python3", { args: ["-c", "import safetensors, numpy"] })
  .output().catch(() => null);
if (!probe?.success) {
  console.warn(
    "model_file_test: skipped: python3 with the safetensors and numpy packages is absent",
  );
}

Deno.test({
  name: "the reference safetensors package reads a model file and reproduces its checksum",
  ignore: !probe?.success,
  fn: async () => {
    await selectBackend("cpu");
    using r = new Recommender(tinyModel("sigma"), data.vocab.items);
    const dir = await Deno.makeTempDir();
    await Deno.writeFile(`${dir}/m.safetensors`, await r.toBytes());
    const out = await new Deno.Command("python3", {
      args: ["-c", PYTHON_CHECK, `${dir}/m.safetensors`],
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    const seen = JSON.parse(new TextDecoder().decode(out.stdout));
    assertEquals(seen.model, "sigma");
    assertEquals(seen.ok, true);
    assertEquals(seen.items, ["<pad>", data.vocab.items[1], data.vocab.items[2]]);
    assertEquals(
      seen.shapes,
      Object.fromEntries(r.model.params.records().map((p) => [p.name, p.shape])),
    );
    // The compact item tables are standard safetensors dtypes: read, and the checksum agrees.
    for (const itemDtype of ["f16", "i8"] as const) {
      await Deno.writeFile(`${dir}/${itemDtype}.safetensors`, await r.toBytes({}, { itemDtype }));
      const compact = await new Deno.Command("python3", {
        args: ["-c", PYTHON_CHECK, `${dir}/${itemDtype}.safetensors`],
      }).output();
      assertEquals(compact.code, 0, new TextDecoder().decode(compact.stderr));
      const read = JSON.parse(new TextDecoder().decode(compact.stdout));
      assertEquals(read.ok, true, itemDtype);
      if (itemDtype === "i8") assertEquals(read.shapes["item.scale"], [data.numItems + 1]);
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("float16 codes are the nearest half to every float (ties to even), specials kept (2,000 cases)", () => {
  const check = (x: number) => {
    const bits = toFloat16Bits(x);
    const h = fromFloat16Bits(bits);
    if (Number.isNaN(x)) return assert(Number.isNaN(h), `NaN -> ${h}`);
    assertEquals(toFloat16Bits(h), bits, `${x}: ${h} does not code back to itself`);
    // IEEE: past the largest half plus half its ulp (65504 + 16), the nearest is infinity.
    if (!Number.isFinite(h)) return assert(Math.abs(x) >= 65520, `${x} -> ${h}`);
    // No other half is nearer: the neighbours one code below and above.
    for (const other of [bits - 1, bits + 1]) {
      if (other < 0 || (other & 0x7fff) > 0x7c00 || (other & 0x8000) !== (bits & 0x8000)) continue;
      const o = fromFloat16Bits(other);
      const [dh, d_o] = [Math.abs(Math.fround(x) - h), Math.abs(Math.fround(x) - o)];
      assert(
        dh < d_o || (dh === d_o && (bits & 1) === 0) || !Number.isFinite(o),
        `${x}: ${h} (${bits}) but ${o} is as near or nearer`,
      );
    }
  };
  for (
    const x of [
      0,
      -0,
      1,
      -1,
      65504,
      65519,
      65520,
      1e6,
      -1e6,
      2 ** -24,
      2 ** -25,
      2 ** -26,
      6e-8,
      Infinity,
      -Infinity,
      NaN,
    ]
  ) {
    check(x);
  }
  assertEquals(Object.is(fromFloat16Bits(toFloat16Bits(-0)), -0), true);
  assertEquals(fromFloat16Bits(toFloat16Bits(65520)), Infinity); // halfway to 2^16: even is Inf
  fc.assert(
    fc.property(fc.float({ noNaN: true, min: Math.fround(-7e4), max: Math.fround(7e4) }), check),
    { numRuns: 1000 },
  );
  fc.assert(
    fc.property(fc.float({ noNaN: true, min: Math.fround(-1e-3), max: Math.fround(1e-3) }), check),
    { numRuns: 1000 },
  );
});

Deno.test("int8 rows: codes in -127..127, each value within half its row's scale, zero rows stay zero (300 cases)", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 6 }),
      fc.integer({ min: 1, max: 20 }),
      fc.nat(),
      (rows, width, seed) => {
        const values = seededUniform(rows * width, seed, -3, 3);
        values.fill(0, 0, width); // a padding row of zeros
        const { codes, scales } = encodeInt8Rows(values, rows, width);
        const back = decodeInt8Rows(codes, scales, width);
        assertEquals(scales[0], 0);
        const signed = new Int8Array(codes.buffer);
        for (let r = 1; r < rows; r++) {
          // The scale uses the whole range: the row's largest value codes as +-127.
          const largest = Math.max(...signed.subarray(r * width, (r + 1) * width).map(Math.abs));
          assertEquals(largest, 127, `row ${r}`);
        }
        for (let r = 0; r < rows; r++) {
          for (let u = 0; u < width; u++) {
            const i = r * width + u;
            const code = new Int8Array(codes.buffer)[i];
            assert(code >= -127 && code <= 127);
            const error = Math.abs(back[i] - values[i]);
            assert(error <= scales[r] * (0.5 + 1e-6), `row ${r}: ${back[i]} vs ${values[i]}`);
          }
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("compact item tables: f16 and i8 files are smaller, decode within the codec's bounds, keep the rest exact, and the checksum covers them", async () => {
  await selectBackend("cpu");
  using r = new Recommender(tinyModel("sasrec"), data.vocab.items);
  const f32 = await r.toBytes();
  assertEquals(await r.toBytes({}, { itemDtype: "f32" }), f32); // f32 files as before
  const plain = await decodeModelFile(f32);
  assertEquals(plain.itemDtype, "f32");
  const rows = data.numItems + 1;
  const d = TINY.hidden;
  let previous = f32.length;
  for (const itemDtype of ["f16", "i8"] as const) {
    const bytes = await r.toBytes({}, { itemDtype });
    assert(bytes.length < previous, `${itemDtype}: ${bytes.length} bytes, not below ${previous}`);
    previous = bytes.length;
    const back = await decodeModelFile(bytes);
    assertEquals(back.itemDtype, itemDtype);
    assertEquals(back.params, plain.params);
    let at = 0;
    for (const p of plain.params) {
      const size = p.shape.reduce((a, b) => a * b, 1);
      const mine = back.values.subarray(at, at + size);
      const theirs = plain.values.subarray(at, at + size);
      if (p.name !== "item") assertEquals(mine, theirs, p.name);
      else {
        for (let i = 0; i < size; i++) {
          const row = theirs.subarray(Math.floor(i / d) * d, Math.floor(i / d) * d + d);
          const bound = itemDtype === "f16"
            ? Math.abs(theirs[i]) * 2 ** -11 + 2 ** -25
            : Math.max(...row.map(Math.abs)) / 127 / 2 * (1 + 1e-6);
          assert(Math.abs(mine[i] - theirs[i]) <= bound, `${itemDtype} item ${i}`);
        }
      }
      at += size;
    }
    // A flipped byte of the compact table (the data's last bytes for i8 are its scales).
    for (const from of [bytes.length - 1, bytes.length - rows * (itemDtype === "i8" ? 4 : 1) - 3]) {
      const bad = bytes.slice();
      bad[from] ^= 0x10;
      await assertRejects(() => decodeModelFile(bad), ModelFileError, "checksum mismatch");
    }
  }
  assert(rows * d > 0);
  // A file that says i8 but lacks the scales, and one with a stray scale tensor, are named.
  const i8 = await r.toBytes({}, { itemDtype: "i8" });
  const noScale = withHeader(i8, (h) => {
    delete h["item.scale"];
  });
  await assertRejects(() => decodeModelFile(noScale), ModelFileError);
  const unknownDtype = withHeader(i8, (h) => {
    (h.__metadata__ as Record<string, string>).item_dtype = "f8";
  });
  await assertRejects(() => decodeModelFile(unknownDtype), ModelFileError, '"item_dtype" is "f8"');
  await assertRejects(() => r.toBytes({}, { itemDtype: "f8" as "f16" }), RangeError, "itemDtype");
  // A decoded file encodes as it was stored.
  const decoded = await decodeModelFile(i8);
  assertEquals((await decodeModelFile(await encodeModelFile(decoded))).itemDtype, "i8");
  // float16 refuses what it would make infinite; int8 keeps a row of tiny values apart from 0.
  assertThrows(() => encodeFloat16(Float32Array.of(1, 70000)), RangeError, "item value 1");
  const tiny = encodeInt8Rows(Float32Array.of(1e-44, -1e-44), 1, 2);
  assert(decodeInt8Rows(tiny.codes, tiny.scales, 2)[0] > 0, "a tiny row decoded to 0");
});

Deno.test("a trained model saved with an f16 or i8 item table ranks the same top-10 as float32 (f16: every list; i8: at least 9 of 10 items on average)", async () => {
  await selectBackend("cpu");
  for (const kind of ["sasrec", "sigma"] as const) {
    const model = tinyModel(kind);
    await train(model, split, data.numItems, { epochs: 3, batchSize: 32, seed: 3 });
    using r = new Recommender(model, data.vocab.items);
    const histories = split.test.map((ex) => Array.from(ex.history, (i) => data.vocab.items[i]));
    const names = (rs: { items: { item: string }[] }[]) =>
      rs.map((x) => x.items.map((i) => i.item));
    const reference = names(await r.recommendBatch(histories, { k: 10 }));
    for (const itemDtype of ["f16", "i8"] as const) {
      using loaded = await Recommender.load(await r.toBytes({}, { itemDtype }));
      const lists = names(await loaded.recommendBatch(histories, { k: 10 }));
      const overlap = lists.map((l, h) => l.filter((x) => reference[h].includes(x)).length / 10);
      const mean = overlap.reduce((a, b) => a + b, 0) / overlap.length;
      if (itemDtype === "f16") assert(mean >= 0.99, `${kind} f16: top-10 overlap ${mean}`);
      else assert(mean >= 0.9, `${kind} i8: top-10 overlap ${mean}`);
      console.log(`${kind} ${itemDtype}: mean top-10 overlap with f32 ${mean.toFixed(4)}`);
    }
  }
});

releaseWebGpuAfterTests();

Deno.test("a model file whose weights hold a NaN is refused on load, naming the parameter, as a checkpoint is", async () => {
  await selectBackend("cpu");
  using r = new Recommender(new SasRec({ ...TINY, seed: 4 }), data.vocab.items);
  const { records, values } = await r.model.params.toArrays();
  const bad = values.slice();
  bad[bad.length - 1] = NaN; // in the last parameter
  const bytes = await encodeModelFile({
    model: "sasrec",
    config: r.model.config as unknown as Record<string, unknown>,
    items: [...data.vocab.items],
    params: records,
    values: bad,
    info: {},
  });
  const before = tf.memory().numTensors;
  const last = records[records.length - 1].name;
  await assertRejects(
    () => Recommender.load(bytes),
    ModelFileError,
    `parameter "${last}" holds a non-finite value`,
  );
  assertEquals(tf.memory().numTensors, before, "no tensor left by the refused load");
});

Deno.test("a vocabulary of more than 65,536 items is a gzip tensor (format version 3) that decodes to the same tokens and loads; smaller ones stay JSON", async () => {
  await selectBackend("cpu");
  const header = (bytes: Uint8Array) => {
    const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
    return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  };
  // Tokens shaped like product codes, with a quote and a non-ASCII one among them.
  const tokens = (n: number) => [
    "<pad>",
    'say "tea"',
    "thé",
    ...Array.from({ length: n - 2 }, (_, i) => `B0${(i * 7919).toString(36).padStart(8, "0")}`),
  ];
  for (const n of [VOCABULARY_TENSOR_ITEMS, VOCABULARY_TENSOR_ITEMS + 1]) {
    const items = tokens(n);
    using r = new Recommender(new SasRec({ ...TINY, numItems: n, seed: 3 }), items);
    for (const itemDtype of ["f32", "i8"] as const) {
      const bytes = await r.toBytes({}, { itemDtype });
      const h = header(bytes);
      const big = n > VOCABULARY_TENSOR_ITEMS;
      const label = `${n} items, ${itemDtype}`;
      assertEquals(
        h.__metadata__.format_version,
        big ? "3" : itemDtype === "f32" ? "1" : "2",
        label,
      );
      assertEquals("items" in h.__metadata__, !big, label);
      assertEquals(h.items?.dtype, big ? "U8" : undefined, label);
      if (big) {
        // Smaller than the JSON it replaces, which the header would escape once more.
        const json = JSON.stringify(JSON.stringify(items)).length;
        assert(h.items.shape[0] < json / 3, `${label}: ${h.items.shape[0]} bytes against ${json}`);
      }
      const back = await decodeModelFile(bytes);
      assertEquals(back.items, items, label);
      assertEquals(back.params.map((p) => p.name).includes("items"), false, label);
      using loaded = await Recommender.load(bytes);
      // What /health reports: the loaded file's version, not the writer's.
      assertEquals(loaded.formatVersion, big ? 3 : itemDtype === "f32" ? 1 : 2, label);
      const top = await loaded.recommend([items[5], "thé"], { k: 3 });
      assertEquals(top.items.length, 3, label);
      if (!big) continue;
      // The tensor is covered by the checksum; version 3 with metadata items is refused.
      const [begin] = h.items.data_offsets as number[];
      const n8 = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
      const bad = bytes.slice();
      bad[8 + n8 + begin + 20] ^= 1;
      await assertRejects(() => decodeModelFile(bad), ModelFileError, "checksum mismatch");
      const both = withHeader(bytes, (x) => {
        (x.__metadata__ as Record<string, string>).items = "[]";
      });
      await assertRejects(() => decodeModelFile(both), ModelFileError, 'not in metadata "items"');
    }
  }
});
