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
} from "../lib/inference/model_file.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { evaluateModel, train } from "../lib/train/trainer.ts";
import { maxAbs, maxAbsDiff } from "./_model_checks.ts";
import { assert, assertEquals, assertRejects } from "./_assert.ts";
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
  using atLimit = await Recommender.load(sources[1], { maxFileBytes: bytes.length });
  assertEquals(atLimit.numItems, r.numItems);
  using fromPath = await Recommender.load(path, { maxFileBytes: 1 });
  assertEquals(fromPath.numItems, r.numItems);
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
    for name in sorted(f.keys()):
        t = f.get_tensor(name)
        shapes[name] = list(t.shape)
        h.update(f"{name} F32 [{','.join(map(str, t.shape))}]\\n".encode())
        h.update(t.astype("<f4").tobytes())
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
    await Deno.remove(dir, { recursive: true });
  },
});

releaseWebGpuAfterTests();
