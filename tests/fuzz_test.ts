/**
 * Fuzzing of every reader: fast-check byte strings and near-valid mutations of valid files.
 * Each input either parses to data that passes its own invariants or is rejected with an
 * error of a built-in input class whose message starts with the file's name (and names a
 * line that exists, when it names one); never another error, never a hang.
 */
import fc from "fast-check";
import { type DatasetFormat, parseCategories, parseDataset } from "../lib/data/mod.ts";
import { readText } from "../lib/data/files.ts";
import { PAD_TOKEN } from "../lib/data/_dense.ts";
import type { SequenceDataset } from "../lib/data/types.ts";
import { decodeModelFile, encodeModelFile, ModelFileError } from "../lib/inference/model_file.ts";
import { assert, assertEquals } from "./_assert.ts";

/** A valid file of each format, the seed of the mutations. */
const VALID: Record<DatasetFormat, { source: string; text: string }> = {
  lines: { source: "fuzz.txt", text: "u1 a b c\nu2 b c d e\nu3 a d\n" },
  recbole: {
    source: "fuzz.inter",
    text: "user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\nu1\tb\t2\nu2\tc\t3.5\n",
  },
  movielens: { source: "fuzz.dat", text: "1::10::5::100\n1::11::4::101\n2::10::5::102\n" },
};

/** Bytes and text pieces that break parsers: separators, controls, numbers, encodings. */
const PIECES = [
  "\t",
  " ",
  "\n",
  "\r",
  "\r\n",
  "\u0000",
  "\u0007",
  "::",
  ":",
  "-",
  "1e309",
  "NaN",
  "-0",
  "\uFEFF",
  "\u00e9",
  "\uD800",
  "\u2028",
  "{",
  '"',
  "x",
  "9".repeat(40),
];

type Mutation =
  | { kind: "delete"; at: number; length: number }
  | { kind: "insert"; at: number; piece: string }
  | { kind: "duplicate"; at: number }
  | { kind: "truncate"; at: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    kind: fc.constant("delete" as const),
    at: fc.nat(),
    length: fc.integer({ min: 1, max: 6 }),
  }),
  fc.record({
    kind: fc.constant("insert" as const),
    at: fc.nat(),
    piece: fc.constantFrom(...PIECES),
  }),
  fc.record({ kind: fc.constant("duplicate" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
);

function mutate(text: string, mutations: Mutation[]): string {
  for (const m of mutations) {
    const at = text.length === 0 ? 0 : m.at % (text.length + 1);
    if (m.kind === "delete") text = text.slice(0, at) + text.slice(at + m.length);
    else if (m.kind === "insert") text = text.slice(0, at) + m.piece + text.slice(at);
    else if (m.kind === "truncate") text = text.slice(0, at);
    else {
      const lines = text.split("\n");
      const n = m.at % lines.length;
      lines.splice(n, 0, lines[n]);
      text = lines.join("\n");
    }
  }
  return text;
}

/** Text inputs of a format: near-valid mutations, and arbitrary strings. */
function texts(format: DatasetFormat): fc.Arbitrary<string> {
  return fc.oneof(
    fc.array(mutation, { minLength: 1, maxLength: 6 }).map((ms) => mutate(VALID[format].text, ms)),
    fc.string({ unit: "binary", maxLength: 300 }),
    fc.array(fc.constantFrom(...PIECES, "u1", "a", "1", "5", "user_id", "item_id"), {
      maxLength: 40,
    }).map((parts) => parts.join("")),
  );
}

/** The invariants every data set a reader returns must hold. */
function checkDataset(ds: SequenceDataset, text: string): void {
  assert(Number.isInteger(ds.numItems) && ds.numItems >= 1, `numItems ${ds.numItems}`);
  assertEquals(ds.vocab.items.length, ds.numItems + 1);
  assertEquals(ds.vocab.items[0], PAD_TOKEN);
  assertEquals(new Set(ds.vocab.items).size, ds.vocab.items.length, "item tokens repeat");
  assertEquals(ds.sequences.length, ds.vocab.users.length);
  assertEquals(new Set(ds.vocab.users).size, ds.vocab.users.length, "user tokens repeat");
  const used = new Uint8Array(ds.numItems + 1);
  let total = 0;
  for (const seq of ds.sequences) {
    assert(seq.length > 0, "an empty history was kept");
    for (const id of seq) {
      assert(Number.isInteger(id) && id >= 1 && id <= ds.numItems, `item id ${id}`);
      used[id] = 1;
    }
    total += seq.length;
  }
  assert(used.slice(1).every((u) => u === 1), "an item id that no history uses");
  assert(ds.report.interactions >= total, `${ds.report.interactions} read, ${total} kept`);
  for (const token of [...ds.vocab.items.slice(1), ...ds.vocab.users]) {
    assert(token.length > 0 && token.trim() === token, `token ${JSON.stringify(token)}`);
  }
  assert(text.length > 0);
}

/** An error a reader may give: a built-in input class, naming `source` (and a real line). */
function checkRejection(e: unknown, source: string, text: string): void {
  assert(
    e instanceof SyntaxError || e instanceof RangeError || e instanceof TypeError,
    `${source}: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`,
  );
  const message = (e as Error).message;
  assert(message.startsWith(source), `does not name ${source}: ${message}`);
  const line = message.slice(source.length).match(/^:(\d+):/);
  if (line) {
    const n = Number(line[1]);
    assert(n >= 1 && n <= text.split("\n").length, `line ${n} of ${text.split("\n").length}`);
  }
}

/**
 * Runs `read` on `input`; the time bound catches a hang, not slowness: inputs are a few
 * hundred bytes and a read takes well under a millisecond.
 */
function within<T>(read: () => T): T {
  const started = performance.now();
  try {
    return read();
  } finally {
    const ms = performance.now() - started;
    assert(ms < 2000, `a read of a small input took ${ms.toFixed(0)} ms`);
  }
}

for (const format of ["lines", "recbole", "movielens"] as const) {
  Deno.test(`fuzz: the ${format} reader parses or names the file and line (400 cases)`, () => {
    const { source, text: valid } = VALID[format];
    checkDataset(parseDataset(valid, source), valid); // the seed itself is valid
    let parsed = 0;
    fc.assert(
      fc.property(texts(format), (text) => {
        try {
          checkDataset(within(() => parseDataset(text, source)), text);
          parsed++;
        } catch (e) {
          if (e instanceof Error && e.name === "AssertionError") throw e;
          checkRejection(e, source, text);
        }
      }),
      { numRuns: 400 },
    );
    // Not every input was refused: mutations of a valid file often stay valid.
    assert(parsed > 0, `every one of 400 inputs was refused`);
  });
}

Deno.test("fuzz: random bytes through readText either decode or are refused, naming the file", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/bytes.txt`;
  try {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 400 }), async (bytes) => {
        await Deno.writeFile(path, bytes);
        let text: string;
        try {
          text = await readText(path, "dataset");
        } catch (e) {
          assert(e instanceof SyntaxError, String(e));
          assert(e.message.includes(path), e.message);
          return;
        }
        try {
          checkDataset(within(() => parseDataset(text, path)), text);
        } catch (e) {
          if (e instanceof Error && e.name === "AssertionError") throw e;
          checkRejection(e, path, text);
        }
      }),
      { numRuns: 200 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fuzz: the categories reader parses or names the file and line (400 cases)", () => {
  const vocab = parseDataset(VALID.lines.text, VALID.lines.source).vocab;
  const source = "fuzz.json";
  const seeds = ['{"a": ["x", "y"], "b": [1], "d": []}\n', "a x y\nb 1\nc z\n"];
  checkCategories(parseCategories(seeds[0], vocab, source), vocab.items.length);
  let parsed = 0;
  fc.assert(
    fc.property(
      fc.oneof(
        fc.tuple(fc.constantFrom(...seeds), fc.array(mutation, { minLength: 1, maxLength: 6 }))
          .map(([seed, ms]) => mutate(seed, ms)),
        fc.string({ unit: "binary", maxLength: 300 }),
        fc.json().map((j) => j),
      ),
      (text) => {
        try {
          checkCategories(within(() => parseCategories(text, vocab, source)), vocab.items.length);
          parsed++;
        } catch (e) {
          if (e instanceof Error && e.name === "AssertionError") throw e;
          checkRejection(e, source, text);
        }
      },
    ),
    { numRuns: 400 },
  );
  assert(parsed > 0, "every one of 400 inputs was refused");
});

function checkCategories(
  c: ReturnType<typeof parseCategories>,
  vocabularySize: number,
): void {
  assertEquals(c.categories.length, vocabularySize);
  assertEquals(c.categories[0].length, 0);
  assertEquals(c.categoryTokens.length, c.numCategories);
  assert(c.categories.some((list) => list.length > 0), "no item has a category");
  for (const list of c.categories) {
    for (const id of list) assert(id >= 0 && id < c.numCategories, `category id ${id}`);
    assertEquals(new Set(list).size, list.length, "a category listed twice for one item");
  }
}

Deno.test("fuzz: a model file with mutated or random bytes loads whole or is refused by name", async () => {
  const valid = await encodeModelFile({
    model: "sasrec",
    config: { hidden: 2 },
    items: [PAD_TOKEN, "a", "b"],
    params: [{ name: "item", shape: [3, 2] }, { name: "bias", shape: [2] }],
    values: Float32Array.from([0.5, -1, 2, 0, 1e-3, 7, 3, 4]),
    info: { epoch: 1 },
  });
  const source = "fuzz.safetensors";
  const header = new DataView(valid.buffer).getUint32(0, true) + 8; // length field + JSON
  let loaded = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        // Bytes of the header or the data replaced, the file cut short or extended.
        fc.array(fc.tuple(fc.nat({ max: valid.length - 1 }), fc.nat({ max: 255 })), {
          minLength: 1,
          maxLength: 4,
        }).map((edits) => {
          const bytes = valid.slice();
          for (const [at, value] of edits) bytes[at % header] = value;
          return bytes;
        }),
        fc.nat({ max: valid.length }).map((n) => valid.slice(0, n)),
        fc.uint8Array({ maxLength: 64 }).map((tail) => new Uint8Array([...valid, ...tail])),
        fc.uint8Array({ maxLength: 200 }),
        fc.nat({ max: 2 ** 32 - 1 }).map((length) => {
          const bytes = valid.slice();
          new DataView(bytes.buffer).setUint32(0, length, true);
          return bytes;
        }),
      ),
      async (bytes) => {
        try {
          const file = await decodeModelFile(bytes, source);
          const size = file.params.reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
          assertEquals(file.values.length, size);
          assertEquals(file.items[0], PAD_TOKEN);
          loaded++;
        } catch (e) {
          if (e instanceof Error && e.name === "AssertionError") throw e;
          assert(e instanceof ModelFileError, `${(e as Error).name}: ${(e as Error).message}`);
          assert(e.message.startsWith(source), e.message);
        }
      },
    ),
    { numRuns: 400 },
  );
  // The unchanged file and harmless edits load; most edits are caught by the checksum.
  assert(loaded < 400, "every mutated file loaded: the checks never fired");
  assert((await decodeModelFile(valid, source)).values.length === 8);
});
