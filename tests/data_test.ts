import fc from "fast-check";
import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertNotEquals,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import {
  attachCategories,
  evalBatches,
  type EvalExample,
  evalPaddedLength,
  fiveCore,
  formatFromPath,
  leaveOneOut,
  paddedTrainBatch,
  parseCategories,
  parseDataset,
  plantedClusters,
  readMovieLensRatings,
  readRecBoleInter,
  readSequenceLines,
  Rng,
  type SequenceDataset,
  syntheticDataset,
  type TrainBatch,
  trainBatches,
} from "../lib/data/mod.ts";
import { MAX_DATA_FILE_BYTES, readCategories, readDataset } from "../lib/data/files.ts";
import { type DataSpec, withoutStrayMinRating } from "../cli/_data.ts";

const arr = (a: ArrayLike<number>): number[] => Array.from(a);
const tokens = (ds: SequenceDataset, u: number): string[] =>
  arr(ds.sequences[u]).map((i) => ds.vocab.items[i]);

/** Row `r` of a `[batch, length]` array. */
const row = (flat: Int32Array, length: number, r: number): number[] =>
  arr(flat.subarray(r * length, (r + 1) * length));

// ---------------------------------------------------------------------------------------
// Readers

Deno.test("readSequenceLines() keeps item token 0 as a real item", () => {
  const ds = readSequenceLines("0 0 5 7\n1 5 0\n", "inline.txt");
  assertEquals(ds.vocab.items, ["<pad>", "0", "5", "7"]);
  assertEquals(ds.numItems, 3);
  assertEquals(arr(ds.sequences[0]), [1, 2, 3]);
  assertEquals(arr(ds.sequences[1]), [2, 1]);
  assertEquals(ds.vocab.users, ["0", "1"]);
  for (const s of ds.sequences) assert(s.every((i) => i >= 1), "no real item may map to padding");
});

Deno.test("readSequenceLines() remaps ids densely in order of first appearance", () => {
  const ds = readSequenceLines("  bob  x y x \r\n\nann z\ty\n", "inline.txt");
  assertEquals(ds.vocab.users, ["bob", "ann"]);
  assertEquals(ds.vocab.items, ["<pad>", "x", "y", "z"]);
  assertEquals(arr(ds.sequences[0]), [1, 2, 1]);
  assertEquals(arr(ds.sequences[1]), [3, 2]);
  assertEquals(ds.report.interactions, 5);
  assertEquals(ds.source, "inline.txt");
});

Deno.test("readSequenceLines() reports and skips empty histories", () => {
  const ds = readSequenceLines("a 1 2\nb\n\nc 3\nd   \n", "inline.txt");
  assertEquals(ds.vocab.users, ["a", "c"]);
  assertEquals(ds.sequences.length, 2);
  assertEquals(ds.report.skippedUsers, 2);
  assertEquals(ds.report.notes, ["2 users with an empty history skipped"]);
});

Deno.test("readSequenceLines() rejects a repeated user naming source and both lines", () => {
  const e = assertThrows(
    () => readSequenceLines("a 1\nb 2\n\na 3\n", "dup.txt"),
    SyntaxError,
    "dup.txt:4",
  );
  assert(e.message.includes("line 1"), e.message);
  assert(e.message.includes('"a"'), e.message);
});

Deno.test("readers refuse a CR without its LF, naming the line, rather than merge lines", () => {
  // Read as a space, the CR would make u2 an item of u1 and lose user u2.
  assertThrows(
    () => readSequenceLines("u1 1 2 3\ru2 4 5 6\r", "mac.txt"),
    SyntaxError,
    "mac.txt:1: a carriage return (CR) inside the line",
  );
  assertThrows(() => readSequenceLines("u1 1 2\r\nu2 3\r4\n", "mid.txt"), SyntaxError, "mid.txt:2");
  const vocab = { users: ["u"], items: ["<pad>", "a", "b"] };
  assertThrows(() => parseCategories("a x\rb y\n", vocab, "c.txt"), SyntaxError, "c.txt:1");
  assertEquals(readSequenceLines("u1 1 2\r\nu2 3\r\n", "crlf.txt").vocab.users, ["u1", "u2"]);
  // CR CR LF (a CRLF file written again in text mode) and a last CR are only whitespace.
  const twice = readSequenceLines("u1 1 2\r\r\nu2 3 \r\nu3 4\r", "twice.txt");
  assertEquals([twice.vocab.users, tokens(twice, 1)], [["u1", "u2", "u3"], ["3"]]);
});

Deno.test("the CLI drops a stored minRating that cannot apply (older runs, eval --data of a MovieLens run)", () => {
  const spec: DataSpec = { kind: "file", path: "x.txt", kCore: 2, minRating: 3 };
  assertEquals(withoutStrayMinRating(spec), { kind: "file", path: "x.txt", kCore: 2 });
  const dat: DataSpec = { kind: "file", path: "r.dat", minRating: 3 };
  assertEquals(withoutStrayMinRating(dat), dat);
  const told: DataSpec = { kind: "file", path: "r.txt", format: "movielens", minRating: 3 };
  assertEquals(withoutStrayMinRating(told), told);
});

Deno.test("parseDataset() refuses minRating for data without ratings, and a bad kCore, by name", () => {
  assertThrows(
    () => parseDataset("u 1 2 3\n", "x.txt", { minRating: 4 }),
    TypeError,
    'minRating must go with MovieLens ratings (format "movielens"); x.txt is read as "lines"',
  );
  assertThrows(() => parseDataset("u 1 2 3\n", "x.txt", { kCore: NaN }), RangeError, "kCore");
  assertThrows(() => parseDataset("u 1 2 3\n", "x.txt", { kCore: -1 }), RangeError, "kCore");
  assertEquals(parseDataset("1::10::5::100\n", "r.dat", { minRating: 4 }).numItems, 1);
});

const INTER = [
  "user_id:token\titem_id:token\trating:float\ttimestamp:float",
  "u1\ti9\t5\t300",
  "u2\ti0\t3\t100",
  "u1\ti8\t4\t100",
  "u1\ti7\t4\t200",
  "u1\ti6\t1\t200",
  "",
].join("\n");

Deno.test("readRecBoleInter() sorts each user's interactions by timestamp, stably", () => {
  const ds = readRecBoleInter(INTER, "x.inter");
  assertEquals(ds.vocab.users, ["u1", "u2"]);
  // Item ids follow first appearance in the file; order within a user follows time, and
  // the tie at 200 keeps file order (i7 before i6).
  assertEquals(ds.vocab.items, ["<pad>", "i9", "i0", "i8", "i7", "i6"]);
  assertEquals(tokens(ds, 0), ["i8", "i7", "i6", "i9"]);
  assertEquals(tokens(ds, 1), ["i0"]);
  assertEquals(ds.report.interactions, 5);
});

Deno.test("readRecBoleInter() finds columns by name and keeps file order without timestamp", () => {
  const text = "item_id:token\tuser_id:token\nb\tu\na\tu\nb\tv\n";
  const ds = readRecBoleInter(text, "y.inter");
  assertEquals(tokens(ds, 0), ["b", "a"]);
  assertEquals(tokens(ds, 1), ["b"]);
  assertEquals(ds.vocab.users, ["u", "v"]);
});

Deno.test("readRecBoleInter() errors name the source, the line and the text", () => {
  assertThrows(
    () => readRecBoleInter("user_id:token\trating:float\nu\t1\n", "h.inter"),
    SyntaxError,
    "h.inter:1: header has no item_id column",
  );
  const e = assertThrows(
    () => readRecBoleInter("user_id:token\titem_id:token\nu\ti\nu\ti\textra\n", "c.inter"),
    SyntaxError,
    "c.inter:3",
  );
  assert(e.message.includes("extra"), e.message);
  assertThrows(
    () => readRecBoleInter("user_id\titem_id\ttimestamp\nu\ti\tsoon\n", "t.inter"),
    SyntaxError,
    't.inter:2: timestamp "soon" is not a number',
  );
  assertThrows(() => readRecBoleInter("\n\n", "e.inter"), SyntaxError, "e.inter");
});

Deno.test("readMovieLensRatings() keeps ratings >= 4 and sorts by timestamp", () => {
  const text = [
    "1::10::5::300",
    "1::11::3::100",
    "2::12::2::50",
    "1::12::4::100",
    "3::10::4::7",
  ].join("\n");
  const ds = readMovieLensRatings(text, "ratings.dat");
  assertEquals(ds.vocab.users, ["1", "3"]);
  assertEquals(tokens(ds, 0), ["12", "10"]);
  assertEquals(tokens(ds, 1), ["10"]);
  assertEquals(ds.report.interactions, 5);
  assertEquals(ds.report.skippedUsers, 1);
  assertEquals(ds.report.notes, [
    "2 ratings below 4 dropped",
    "1 user with no interaction left skipped",
  ]);
  const all = readMovieLensRatings(text, "ratings.dat", { minRating: 1 });
  assertEquals(tokens(all, 0), ["11", "12", "10"]);
  assertEquals(all.sequences.length, 3);
});

Deno.test("readMovieLensRatings() rejects malformed lines with file:line", () => {
  assertThrows(
    () => readMovieLensRatings("1::2::5::9\n1::2::5\n", "r.dat"),
    SyntaxError,
    'r.dat:2: expected user::item::rating::timestamp, got "1::2::5"',
  );
  assertThrows(
    () => readMovieLensRatings("1::2::five::9\n", "r.dat"),
    SyntaxError,
    'r.dat:1: rating "five" is not a number',
  );
  assertThrows(() => readMovieLensRatings("", "r.dat", { minRating: NaN }), RangeError);
});

Deno.test("readDataset() picks the format by extension and names a missing file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/a.txt`, "u 0 1 2\n");
    await Deno.writeTextFile(`${dir}/a.inter`, "user_id:token\titem_id:token\nu\t0\n");
    await Deno.writeTextFile(`${dir}/ratings.dat`, "u::0::5::1\n");
    await Deno.writeTextFile(`${dir}/cats.txt`, "0 red\n2 blue red\n");
    const lines = await readDataset(`${dir}/a.txt`, { categories: `${dir}/cats.txt` });
    assertEquals(tokens(lines, 0), ["0", "1", "2"]);
    assertEquals(lines.source, `${dir}/a.txt`);
    assertEquals(lines.numCategories, 2);
    assertEquals(lines.categories?.map(arr), [[], [0], [], [1, 0]]);
    assertEquals(tokens(await readDataset(`${dir}/a.inter`), 0), ["0"]);
    assertEquals(tokens(await readDataset(`${dir}/ratings.dat`), 0), ["0"]);
    // An explicit format overrides the extension.
    const forced = await readDataset(`${dir}/a.inter`, { format: "lines" });
    assertEquals(forced.vocab.users, ["user_id:token", "u"]);
    await assertRejects(
      () => readDataset(`${dir}/missing.txt`),
      Deno.errors.NotFound,
      `${dir}/missing.txt`,
    );
    await assertRejects(
      () => readCategories(`${dir}/nope.json`, lines.vocab),
      Deno.errors.NotFound,
      "nope.json",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(formatFromPath("X/R.DAT"), "movielens");
  assertThrows(() => formatFromPath("data.csv"), TypeError, "data.csv");
});

// ---------------------------------------------------------------------------------------
// k-core

/** A reference k-core over (user, item) token pairs, written independently of fiveCore. */
function referenceCore(seqs: number[][], k: number): Map<number, number[]> {
  let users = new Map(seqs.map((s, u) => [u, s.slice()]));
  for (;;) {
    const count = new Map<number, number>();
    for (const s of users.values()) for (const i of s) count.set(i, (count.get(i) ?? 0) + 1);
    const next = new Map<number, number[]>();
    for (const [u, s] of users) {
      const kept = s.filter((i) => count.get(i)! >= k);
      if (kept.length >= k) next.set(u, kept);
    }
    const same = next.size === users.size &&
      [...next].every(([u, s]) => s.length === users.get(u)!.length);
    users = next;
    if (same) return users;
  }
}

function datasetOf(seqs: number[][]): SequenceDataset {
  return readSequenceLines(
    seqs.map((s, u) => [`u${u}`, ...s.map((i) => `${i}`)].join(" ")).join("\n"),
    "prop",
  );
}

Deno.test("fiveCore() reaches the fixed point: every user and item keeps >= k", () => {
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.integer({ min: 0, max: 12 }), { minLength: 1, maxLength: 12 }), {
        maxLength: 25,
      }),
      fc.integer({ min: 1, max: 6 }),
      (seqs, k) => {
        const ds = datasetOf(seqs);
        const core = fiveCore(ds, k);
        const count = new Map<number, number>();
        for (const s of core.sequences) {
          if (s.length < k) return false;
          for (const i of s) count.set(i, (count.get(i) ?? 0) + 1);
        }
        for (let i = 1; i <= core.numItems; i++) if ((count.get(i) ?? 0) < k) return false;
        // Filtering again changes nothing.
        const again = fiveCore(core, k);
        assertEquals(again.sequences.map(arr), core.sequences.map(arr));
        // Same result as the independent reference, by tokens.
        const ref = referenceCore(seqs, k);
        assertEquals(core.vocab.users, [...ref.keys()].map((u) => `u${u}`));
        core.sequences.forEach((_, u) => {
          const expected = ref.get(Number(core.vocab.users[u].slice(1)))!.map(String);
          assertEquals(tokens(core, u), expected);
        });
        assertEquals(core.report.skippedUsers, ds.sequences.length - ref.size);
        return true;
      },
    ),
    { numRuns: 250 },
  );
});

Deno.test("fiveCore() re-densifies ids, carries categories and notes the removals", () => {
  const ds = attachCategories(
    readSequenceLines("a x y z\nb x y\nc y x q\n", "small"),
    parseCategories('{"x": ["X"], "y": ["Y"], "z": ["Z"], "q": ["X"]}', {
      users: [],
      items: ["<pad>", "x", "y", "z", "q"],
    }, "c.json"),
  );
  const core = fiveCore(ds, 2);
  assertEquals(core.vocab.items, ["<pad>", "x", "y"]);
  assertEquals(core.sequences.map(arr), [[1, 2], [1, 2], [2, 1]]);
  assertEquals(core.categories?.map(arr), [[], [0], [1]]);
  assertEquals(core.report.interactions, 6);
  assertEquals(
    core.report.notes.at(-1),
    "2-core filter (2 passes): removed 0 users, 2 items, 2 interactions",
  );
  assertThrows(() => fiveCore(ds, 0), RangeError, "k");
});

// ---------------------------------------------------------------------------------------
// Categories

Deno.test("parseCategories() names a category on more than 90% of the items and drops the ones asked for", () => {
  const items = ["<pad>", ...Array.from({ length: 20 }, (_, i) => `i${i}`)];
  const vocab = { users: [], items };
  // "root" is on 19 of 20 items (95%), "half" on 10 (50%), each item also its own leaf.
  const text = items.slice(1).map((t, i) =>
    `${t} ${i === 0 ? "" : "root "}${i % 2 ? "half " : ""}leaf${i}`
  ).join("\n");
  const parsed = parseCategories(text, vocab, "tree.txt");
  const dominant = parsed.notes.filter((n) => n.includes("% of the items"));
  assertEquals(dominant.length, 1);
  assert(dominant[0].includes('"root" is on 95.0%'), dominant[0]);
  assert(dominant[0].includes("--drop-category root"), dominant[0]);
  const dropped = parseCategories(text, vocab, "tree.txt", { drop: ["root"] });
  assertEquals(dropped.notes.filter((n) => n.includes("% of the items")), []);
  assert(!dropped.categoryTokens.includes("root"));
  assertEquals(dropped.numCategories, parsed.numCategories - 1);
  assertEquals(dropped.categories[2].length, parsed.categories[2].length - 1);
  // A name with a comma and spaces (an Amazon root) is dropped whole, and shown quoted.
  const json = JSON.stringify(
    Object.fromEntries(items.slice(1).map((t) => [t, ["Clothing, Shoes & Jewelry", t]])),
  );
  const note = parseCategories(json, vocab, "a.json").notes.find((n) => n.includes("100.0%"))!;
  assert(note.includes("--drop-category 'Clothing, Shoes & Jewelry'"), note);
  const gone = parseCategories(json, vocab, "a.json", { drop: ["Clothing, Shoes & Jewelry"] });
  assert(!gone.categoryTokens.includes("Clothing, Shoes & Jewelry"));
  // A category the file does not have is a typo, not a no-op.
  assertThrows(
    () => parseCategories(text, vocab, "tree.txt", { drop: ["rot"] }),
    RangeError,
    '"rot"',
  );
  // Exactly 90% is not named: the line is "more than".
  const ninety = items.slice(1).map((t, i) => `${t} ${i < 18 ? "common " : ""}leaf${i}`)
    .join("\n");
  assertEquals(
    parseCategories(ninety, vocab, "n.txt").notes.filter((n) => n.includes("%")),
    [],
  );
});

Deno.test("parseCategories() names what is wrong: empty lists of known items, a top-level array, non-categories (hardening item 15)", () => {
  const vocab = { users: ["u"], items: ["<pad>", "a", "b"] };
  assertThrows(
    () => parseCategories('{"a": [], "b": []}', vocab, "e.json"),
    RangeError,
    "e.json: no item of the data set has a category: the 2 items of the data set it names have empty lists",
  );
  assertThrows(
    () => parseCategories('[["a", "x"]]', vocab, "arr.json"),
    SyntaxError,
    "arr.json: expected a JSON object mapping item tokens to lists",
  );
  for (const list of ["[1e400]", '[""]', '["  "]', "[true]"]) {
    assertThrows(
      () => parseCategories(`{"a": ${list}}`, vocab, "v.json"),
      SyntaxError,
      "expected a list of non-empty strings or finite numbers",
    );
  }
  // Items the data set lacks still get the old hint.
  assertThrows(
    () => parseCategories('{"zz": ["x"]}', vocab, "o.json"),
    RangeError,
    "keyed by other item ids?",
  );
});

Deno.test("parseCategories() reads JSON like item2attributes, densifying category ids", () => {
  const vocab = { users: ["u"], items: ["<pad>", "4", "83", "0"] };
  const c = parseCategories('{"4": [1, 2, 3], "83": [3, 3, 9], "999": [1]}', vocab, "a.json");
  assertEquals(c.categories.map(arr), [[], [0, 1, 2], [2, 3], []]);
  assertEquals(c.numCategories, 4);
  assertEquals(c.categoryTokens, ["1", "2", "3", "9"]);
  assertEquals(c.notes, [
    "a.json: 1 item not in the vocabulary ignored",
    "a.json: 1 vocabulary item without categories",
  ]);
  assertThrows(() => parseCategories("{bad", vocab, "b.json"), SyntaxError, "b.json");
  assertThrows(() => parseCategories('{"4": 1}', vocab, "b.json"), SyntaxError, '"4"');
});

Deno.test("parseCategories() reads text lines `item cat cat ...`", () => {
  const vocab = { users: ["u"], items: ["<pad>", "a", "b", "c"] };
  const c = parseCategories("b toys\n\nzz toys\na home toys\nc\n", vocab, "c.txt");
  assertEquals(c.categories.map(arr), [[], [1, 0], [0], []]);
  assertEquals(c.categoryTokens, ["toys", "home"]);
  assertEquals(c.notes.length, 2);
  assertThrows(() => parseCategories("a x\nb y\na z\n", vocab, "d.txt"), SyntaxError, "d.txt:3");
  const ds = readSequenceLines("u a b\n", "s");
  assertThrows(() => attachCategories(ds, c), RangeError);
});

// ---------------------------------------------------------------------------------------
// Leave-one-out

Deno.test("leaveOneOut() gives train s[:-2], valid s[-2], test s[-1] and counts skipped users", () => {
  const ds = readSequenceLines("a 1 2 3 4 5\nb 1 2\nc 6 7 8\nd 9\ne 2 4 6 8\n", "loo");
  const { split, skipped } = leaveOneOut(ds);
  assertEquals(skipped, 2);
  // c has a one-item prefix: it has no training target but is still evaluated.
  assertEquals(
    split.train.map(arr),
    [[1, 2, 3], [2, 4]].map((s) => s.map((t) => ds.vocab.items.indexOf(`${t}`))),
  );
  assertEquals(split.valid.length, 3);
  assertEquals(split.test.length, 3);
  const v = split.valid[0];
  const t = split.test[0];
  const id = (x: number) => ds.vocab.items.indexOf(`${x}`);
  assertEquals([v.user, arr(v.history), v.target], [0, [1, 2, 3].map(id), id(4)]);
  assertEquals([t.user, arr(t.history), t.target], [0, [1, 2, 3, 4].map(id), id(5)]);
  assertEquals(split.valid.map((e) => e.user), [0, 2, 4]);
  assertEquals([arr(split.test[1].history), split.test[1].target], [[6, 7].map(id), id(8)]);
});

// ---------------------------------------------------------------------------------------
// Rng

Deno.test("Rng is deterministic and its draws are in range", () => {
  const a = new Rng(123);
  const b = new Rng(123);
  const xs = Array.from({ length: 1000 }, () => a.next());
  assertEquals(xs, Array.from({ length: 1000 }, () => b.next()));
  assert(xs.every((x) => x >= 0 && x < 1));
  assertAlmostEquals(xs.reduce((s, x) => s + x, 0) / xs.length, 0.5, 0.05);
  assertNotEquals(new Rng(1).next(), new Rng(2).next());
  const ints = Array.from({ length: 500 }, () => a.int(7));
  assert(ints.every((i) => Number.isInteger(i) && i >= 0 && i < 7));
  assertEquals(new Set(ints).size, 7);
  const perm = a.shuffle([...Array(50).keys()]);
  assertEquals([...perm].sort((x, y) => x - y), [...Array(50).keys()]);
  const ns = Array.from({ length: 4000 }, () => a.normal());
  const mean = ns.reduce((s, x) => s + x, 0) / ns.length;
  const variance = ns.reduce((s, x) => s + (x - mean) ** 2, 0) / ns.length;
  assertAlmostEquals(mean, 0, 0.1);
  assertAlmostEquals(variance, 1, 0.1);
  const counts = [0, 0, 0];
  for (let k = 0; k < 3000; k++) counts[a.categorical([1, 0, 3])]++;
  assertEquals(counts[1], 0);
  assertAlmostEquals(counts[2] / 3000, 0.75, 0.05);
  const saved = a.state;
  const next = a.next();
  a.state = saved;
  assertEquals(a.next(), next);
  assertThrows(() => a.int(0), RangeError);
  assertThrows(() => new Rng(NaN), RangeError);
});

// ---------------------------------------------------------------------------------------
// Train batches

Deno.test("paddedTrainBatch() left pads and aligns targets with the next item", () => {
  const b = paddedTrainBatch([Int32Array.of(5, 6, 7, 8), Int32Array.of(3, 9)], 100);
  assertEquals([b.batch, b.length], [2, 3]);
  assertEquals(row(b.inputs, 3, 0), [5, 6, 7]);
  assertEquals(row(b.targets, 3, 0), [6, 7, 8]);
  assertEquals(row(b.inputs, 3, 1), [0, 0, 3]);
  assertEquals(row(b.targets, 3, 1), [0, 0, 9]);
  const full = paddedTrainBatch([Int32Array.of(5, 6, 7, 8), Int32Array.of(3, 9)], 6, 6);
  assertEquals(full.length, 6);
  assertEquals(row(full.inputs, 6, 0), [0, 0, 0, 5, 6, 7]);
  assertEquals(row(full.targets, 6, 1), [0, 0, 0, 0, 0, 9]);
  assertThrows(() => paddedTrainBatch([Int32Array.of(1)], 10), RangeError, "row 0");
  assertThrows(() => paddedTrainBatch([Int32Array.of(1, 2, 3)], 10, 1), RangeError, "padTo");
  assertThrows(() => paddedTrainBatch([Int32Array.of(1, 2, 3)], 10, 11), RangeError, "padTo");
});

Deno.test("paddedTrainBatch() truncation keeps the most recent items", () => {
  const b = paddedTrainBatch([Int32Array.of(1, 2, 3, 4, 5, 6, 7)], 3);
  assertEquals(b.length, 3);
  assertEquals(row(b.inputs, 3, 0), [4, 5, 6]);
  assertEquals(row(b.targets, 3, 0), [5, 6, 7]);
});

/** The (truncated) sequence a batch row encodes: first input, then every target. */
function decodeRows(b: TrainBatch): string[] {
  const out: string[] = [];
  for (let r = 0; r < b.batch; r++) {
    const inp = row(b.inputs, b.length, r);
    const tgt = row(b.targets, b.length, r);
    const start = inp.findIndex((x) => x !== 0);
    // Padding is a left block, and targets sit exactly where inputs do.
    assert(start >= 0 && inp.slice(start).every((x) => x !== 0));
    assertEquals(tgt.map((x) => x !== 0), inp.map((x) => x !== 0));
    // targets[j] is the item after inputs[j].
    for (let j = start; j < b.length - 1; j++) assertEquals(tgt[j], inp[j + 1]);
    out.push([inp[start], ...tgt.slice(start)].join(","));
  }
  return out;
}

/** Sequences, batch size, max length, bucketing and seed for trainBatches() properties. */
const TRAIN_BATCH_CASES = [
  fc.array(fc.array(fc.integer({ min: 1, max: 30 }), { maxLength: 15 }), { maxLength: 60 }),
  fc.integer({ min: 1, max: 8 }),
  fc.integer({ min: 1, max: 12 }),
  fc.boolean(),
  fc.integer(),
] as const;

Deno.test("trainBatches() uses every training target exactly once per epoch", () => {
  fc.assert(
    fc.property(
      ...TRAIN_BATCH_CASES,
      (seqs, batchSize, maxLength, bucket, seed) => {
        const train = seqs.map((s) => Int32Array.from(s));
        const batches = trainBatches(train, { batchSize, maxLength, bucket, rng: new Rng(seed) });
        const got: string[] = [];
        let partial = 0;
        for (const b of batches) {
          assert(b.length <= maxLength && b.length >= 1);
          assert(b.batch >= 1 && b.batch <= batchSize);
          if (b.batch < batchSize) partial++;
          assertEquals(b.inputs.length, b.batch * b.length);
          const rows = decodeRows(b);
          // Padded to the longest row of the batch: some row starts at column 0.
          assert(rows.some((r) => r.split(",").length === b.length + 1));
          got.push(...rows);
        }
        assert(partial <= 1, "only the last rows may form a short batch");
        const expected = seqs.filter((s) => s.length >= 2).map((s) =>
          s.slice(-(maxLength + 1)).join(",")
        );
        assertEquals(got.sort(), expected.sort());
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("trainBatches() prefixes: every target of every sequence is one row, its L items before it as input", () => {
  fc.assert(
    fc.property(
      ...TRAIN_BATCH_CASES,
      (seqs, batchSize, maxLength, bucket, seed) => {
        const train = seqs.map((s) => Int32Array.from(s));
        const batches = trainBatches(train, {
          batchSize,
          maxLength,
          bucket,
          rng: new Rng(seed),
          examples: "prefixes",
        });
        const got: string[] = [];
        let partial = 0;
        for (const b of batches) {
          assert(b.length <= maxLength && b.length >= 1);
          assert(b.batch >= 1 && b.batch <= batchSize);
          if (b.batch < batchSize) partial++;
          for (let r = 0; r < b.batch; r++) {
            const row = b.inputs.subarray(r * b.length, (r + 1) * b.length);
            const targets = b.targets.subarray(r * b.length, (r + 1) * b.length);
            // One target, in the last column; the input is left padded, never gapped.
            assert(targets.slice(0, -1).every((t) => t === 0) && targets[b.length - 1] > 0);
            const first = row.findIndex((x) => x !== 0);
            assert(first >= 0 && row.slice(first).every((x) => x !== 0));
            got.push([...row.slice(first), targets[b.length - 1]].join(","));
          }
        }
        assert(partial <= 1, "only the last rows may form a short batch");
        const expected = seqs.flatMap((s) =>
          s.slice(1).map((_, j) => s.slice(Math.max(0, j + 1 - maxLength), j + 2).join(","))
        );
        assertEquals(got.sort(), expected.sort());
      },
    ),
    { numRuns: 200 },
  );
  assertThrows(
    () =>
      trainBatches([Int32Array.of(1, 2)], {
        batchSize: 1,
        rng: new Rng(1),
        examples: "windows" as "prefixes",
      }),
    RangeError,
    'examples must be one of sequences, prefixes, got "windows"',
  );
});

const BEAUTY = new URL("../../shared/data/Beauty.txt", import.meta.url);
const haveBeauty = (() => {
  try {
    return Deno.statSync(BEAUTY).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "Beauty gives DIFFUREC.md's counts: 22,363 users, 12,101 items, 198,502 interactions, " +
    "131,413 training examples (needs ../shared/data)",
  ignore: !haveBeauty,
  async fn() {
    const data = await readDataset(BEAUTY.pathname);
    const { split } = leaveOneOut(data);
    assertEquals([data.sequences.length, data.numItems], [22_363, 12_101]);
    assertEquals(data.sequences.reduce((n, s) => n + s.length, 0), 198_502);
    const batches = trainBatches(split.train, {
      batchSize: 512,
      maxLength: 50,
      rng: new Rng(1),
      examples: "prefixes",
    });
    assertEquals(batches.reduce((n, b) => n + b.batch, 0), 131_413);
    // Sequences of SASRec's kind keep the most recent 50 positions: 2.6% fewer targets.
    const sequences = trainBatches(split.train, { batchSize: 256, maxLength: 50, rng: new Rng(1) });
    assertEquals(sequences.reduce((n, b) => n + b.targets.filter((t) => t > 0).length, 0), 128_031);
    // The test input is the training sequence and the validation item.
    for (const u of [0, 1, 22_362]) {
      assertEquals(
        Array.from(split.test[u].history),
        [...split.train[u], split.valid[u].target],
      );
    }
  },
});

Deno.test("trainBatches() is reproducible from the seed and reshuffles each epoch", () => {
  const { split } = leaveOneOut(syntheticDataset({ users: 300 }));
  const opts = { batchSize: 16, maxLength: 20 };
  const a = trainBatches(split.train, { ...opts, rng: new Rng(5) });
  const b = trainBatches(split.train, { ...opts, rng: new Rng(5) });
  assertEquals(a, b);
  const rng = new Rng(5);
  trainBatches(split.train, { ...opts, rng });
  assertNotEquals(trainBatches(split.train, { ...opts, rng }), a);
  assertNotEquals(trainBatches(split.train, { ...opts, rng: new Rng(6) }), a);
});

Deno.test("trainBatches() bucketing pads less than plain shuffling", () => {
  const { split } = leaveOneOut(syntheticDataset({ users: 600, minLength: 3, maxLength: 60 }));
  const waste = (bs: TrainBatch[]) => {
    let pad = 0;
    let total = 0;
    for (const b of bs) {
      total += b.inputs.length;
      pad += b.inputs.filter((x) => x === 0).length;
    }
    return pad / total;
  };
  const opts = { batchSize: 8, maxLength: 50 };
  const bucketed = waste(trainBatches(split.train, { ...opts, rng: new Rng(1) }));
  const plain = waste(trainBatches(split.train, { ...opts, rng: new Rng(1), bucket: false }));
  assert(bucketed < plain / 2, `bucketed ${bucketed} vs plain ${plain}`);
  assertThrows(() => trainBatches(split.train, { batchSize: 0, rng: new Rng(1) }), RangeError);
});

// ---------------------------------------------------------------------------------------
// Eval batches

Deno.test("evalPaddedLength() rounds up to the step and caps at maxLength", () => {
  assertEquals(evalPaddedLength(0, 100), 10);
  assertEquals(evalPaddedLength(1, 100), 10);
  assertEquals(evalPaddedLength(10, 100), 10);
  assertEquals(evalPaddedLength(11, 100), 20);
  assertEquals(evalPaddedLength(99, 100), 100);
  assertEquals(evalPaddedLength(500, 100), 100);
  assertEquals(evalPaddedLength(3, 5), 5);
  assertEquals(evalPaddedLength(0, 1, 1), 1);
  assertEquals(evalPaddedLength(7, 50, 4), 8);
  assertThrows(() => evalPaddedLength(-1, 100), RangeError);
  assertThrows(() => evalPaddedLength(3, 100, 0), RangeError);
});

Deno.test("evalBatches() pads a row by its own history, whatever the batch size", () => {
  const example = fc.record({
    history: fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 40 }),
    target: fc.integer({ min: 1, max: 40 }),
  });
  fc.assert(
    fc.property(
      fc.array(example, { maxLength: 40 }),
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 1, max: 30 }),
      (raw, bs1, bs2, maxLength) => {
        const examples: EvalExample[] = raw.map((e, user) => ({
          user,
          history: Int32Array.from(e.history),
          target: e.target,
        }));
        const view = (batchSize: number) => {
          const rows = new Map<number, unknown>();
          let lastLength = 0;
          for (const b of evalBatches(examples, { batchSize, maxLength })) {
            assert(b.length >= lastLength, "groups ascend by length");
            lastLength = b.length;
            assert(b.batch <= batchSize && b.length <= maxLength);
            for (let r = 0; r < b.batch; r++) {
              rows.set(b.users[r], {
                length: b.length,
                inputs: row(b.inputs, b.length, r),
                target: b.targets[r],
                exclude: arr(b.exclude[r]),
              });
            }
          }
          return rows;
        };
        const a = view(bs1);
        const b = view(bs2);
        assertEquals(a.size, examples.length);
        assertEquals(a, b);
        for (const ex of examples) {
          const r = a.get(ex.user) as { length: number; inputs: number[]; exclude: number[] };
          const h = arr(ex.history);
          assertEquals(r.length, evalPaddedLength(h.length, maxLength));
          const kept = h.slice(Math.max(0, h.length - maxLength));
          assertEquals(r.inputs, [...new Array(r.length - kept.length).fill(0), ...kept]);
          assertEquals(r.exclude, [...new Set(h)].sort((x, y) => x - y));
        }
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("evalBatches() keeps input order within a group and truncates to the most recent", () => {
  const ex = (user: number, history: number[], target: number): EvalExample => ({
    user,
    history: Int32Array.from(history),
    target,
  });
  const long = Array.from({ length: 25 }, (_, k) => k + 1);
  const batches = evalBatches(
    [ex(0, long, 2), ex(1, [4, 4, 1], 9), ex(2, [], 3), ex(3, [7], 8)],
    { batchSize: 2, maxLength: 20 },
  );
  assertEquals(batches.map((b) => [b.length, arr(b.users)]), [[10, [1, 2]], [10, [3]], [20, [0]]]);
  assertEquals(row(batches[0].inputs, 10, 0), [0, 0, 0, 0, 0, 0, 0, 4, 4, 1]);
  assertEquals(row(batches[0].inputs, 10, 1), new Array(10).fill(0));
  assertEquals(batches[0].exclude.map(arr), [[1, 4], []]);
  assertEquals(row(batches[2].inputs, 20, 0), long.slice(5));
  assertEquals(arr(batches[2].exclude[0]), long);
  assertEquals(arr(batches[0].targets), [9, 3]);
  assertThrows(() => evalBatches([ex(0, [1], 0)], { batchSize: 1 }), RangeError, "target");
});

// ---------------------------------------------------------------------------------------
// Synthetic data

Deno.test("syntheticDataset() is deterministic in its seed", () => {
  const a = syntheticDataset({ seed: 9, users: 100 });
  const b = syntheticDataset({ seed: 9, users: 100 });
  assertEquals(a, b);
  const c = syntheticDataset({ seed: 10, users: 100 });
  assertNotEquals(a.sequences, c.sequences);
  assertNotEquals(arr(a.clusters), arr(c.clusters));
  assertEquals(
    a.source,
    "synthetic(seed=9, users=100, items=200, clusters=4, interestsPerUser=2, minLength=5, " +
      "maxLength=30, stickiness=0.7, noise=0.05)",
  );
});

Deno.test("syntheticDataset() has the requested shape and planted clusters", () => {
  const ds = syntheticDataset();
  assertEquals(ds.sequences.length, 600);
  assertEquals(ds.numItems, 200);
  assertEquals(ds.vocab.items.length, 201);
  assertEquals([ds.vocab.items[0], ds.vocab.items[17], ds.vocab.users[3]], ["<pad>", "i17", "u3"]);
  let total = 0;
  for (const s of ds.sequences) {
    assert(s.length >= 5 && s.length <= 30);
    assert(s.every((i) => i >= 1 && i <= 200));
    total += s.length;
  }
  assertEquals(ds.report.interactions, total);
  assertEquals(ds.numCategories, 4);
  assertEquals(arr(plantedClusters(ds)), arr(ds.clusters));
  assertEquals(ds.clusters[0], -1);
  const sizes = [0, 0, 0, 0];
  for (let i = 1; i <= 200; i++) sizes[ds.clusters[i]]++;
  assertEquals(sizes, [50, 50, 50, 50]);
  assert(ds.interests.every((m) => m.length === 2 && m[0] !== m[1]));
  assertThrows(() => syntheticDataset({ interestsPerUser: 5 }), RangeError, "interestsPerUser");
  assertThrows(() => syntheticDataset({ minLength: 9, maxLength: 3 }), RangeError, "minLength");
  assertThrows(() => syntheticDataset({ noise: 2 }), RangeError, "noise");
  assertThrows(() => plantedClusters(readSequenceLines("u 1 2", "s")), TypeError);
});

Deno.test("syntheticDataset() sequences exhibit the planted structure", () => {
  const ds = syntheticDataset({ seed: 1 });
  let pairs = 0;
  let sameCluster = 0;
  let ownInterest = 0;
  let items = 0;
  const next = new Map<number, Map<number, number>>();
  ds.sequences.forEach((s, u) => {
    const mine = new Set(ds.interests[u]);
    for (let t = 0; t < s.length; t++) {
      items++;
      if (mine.has(ds.clusters[s[t]])) ownInterest++;
      if (t === 0) continue;
      pairs++;
      if (ds.clusters[s[t]] === ds.clusters[s[t - 1]]) sameCluster++;
      const m = next.get(s[t - 1]) ?? new Map<number, number>();
      m.set(s[t], (m.get(s[t]) ?? 0) + 1);
      next.set(s[t - 1], m);
    }
  });
  // Random clusters would agree 1/4 of the time; stickiness 0.7 makes it about 0.65.
  assert(sameCluster / pairs > 0.55, `same-cluster fraction ${sameCluster / pairs}`);
  assert(ownInterest / items > 0.9, `own-interest fraction ${ownInterest / items}`);
  // Sequential signal: the most frequent successor of an item carries far more than the
  // 1/50 a cluster-uniform choice would give.
  let top = 0;
  for (const m of next.values()) top += Math.max(...m.values());
  assert(top / pairs > 0.3, `top-successor fraction ${top / pairs}`);
});

Deno.test("syntheticDataset() with sequential false draws items uniformly within the interest", () => {
  const ds = syntheticDataset({ seed: 2, noise: 0, sequential: false });
  const next = new Map<number, Map<number, number>>();
  let pairs = 0;
  ds.sequences.forEach((s, u) => {
    const mine = new Set(ds.interests[u]);
    for (let t = 0; t < s.length; t++) {
      // noise 0: every item belongs to one of the user's interests.
      assert(mine.has(ds.clusters[s[t]]), `user ${u} item ${s[t]}`);
      if (t === 0) continue;
      pairs++;
      const m = next.get(s[t - 1]) ?? new Map<number, number>();
      m.set(s[t], (m.get(s[t]) ?? 0) + 1);
      next.set(s[t - 1], m);
    }
  });
  // No ring walk: the most frequent successor carries little more than chance (the
  // sequential data set's is above 0.3, see the test above).
  let top = 0;
  for (const m of next.values()) top += Math.max(...m.values());
  assert(top / pairs < 0.2, `top-successor fraction ${top / pairs}`);
  assert(ds.source.includes("sequential=false"), ds.source);
});

Deno.test("leaveOneOut() holds out the last two items of every history and leaks neither (property)", () => {
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.integer({ min: 1, max: 30 }), { maxLength: 12 }), {
        minLength: 1,
        maxLength: 20,
      }),
      (histories) => {
        const sequences = histories.map((h) => Int32Array.from(h));
        const dataset: SequenceDataset = {
          source: "property",
          vocab: { users: histories.map((_, u) => `u${u}`), items: [] },
          numItems: 30,
          sequences,
          report: { interactions: 0, skippedUsers: 0, notes: [] },
        };
        const { split, skipped } = leaveOneOut(dataset);
        const kept = sequences.filter((s) => s.length >= 3);
        assertEquals(skipped, sequences.length - kept.length);
        assertEquals(split.valid.length, kept.length);
        assertEquals(split.test.length, kept.length);
        let t = 0;
        kept.forEach((s, i) => {
          const n = s.length;
          const valid = split.valid[i], test = split.test[i];
          assertEquals(sequences[valid.user], s);
          assertEquals([...valid.history, valid.target], [...s.subarray(0, n - 1)]);
          assertEquals([...test.history, test.target], [...s]);
          // The training prefix ends before the validation target: neither held-out item.
          if (n - 2 >= 2) assertEquals([...split.train[t++]], [...s.subarray(0, n - 2)]);
        });
        assertEquals(t, split.train.length);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("readers refuse binary, corrupted, endless and non-file input, naming the file and line", async () => {
  assertThrows(
    () => readSequenceLines("u1 a b\nu2 \u0001\u0002 c\n", "x.txt"),
    SyntaxError,
    "x.txt:2",
  );
  assertThrows(
    () => readRecBoleInter("user_id:token\titem_id:token\na\tx\nb\t\u0000\n", "y.inter"),
    SyntaxError,
    "y.inter:3",
  );
  assertThrows(() => readSequenceLines("u1 caf\uFFFD\n", "z.txt"), SyntaxError, "U+FFFD");
  const dir = await Deno.makeTempDir();
  // 20 kB of random bytes: not UTF-8, or control characters, but never "71 users".
  const random = new Uint8Array(20_000);
  for (let i = 0; i < random.length; i++) random[i] = (i * 2654435761 >>> 13) & 0xff;
  await Deno.writeFile(`${dir}/random.txt`, random);
  await assertRejects(() => readDataset(`${dir}/random.txt`), SyntaxError, `${dir}/random.txt`);
  await assertRejects(
    () => readDataset("/dev/zero", { format: "lines" }),
    TypeError,
    "not a regular file",
  );
  await assertRejects(() => readDataset(dir, { format: "lines" }), TypeError, "not a regular file");
  // A byte-order mark is not part of the first user's name, nor of a JSON error.
  await Deno.writeTextFile(`${dir}/bom.txt`, "\uFEFFu1 a b c\n");
  assertEquals((await readDataset(`${dir}/bom.txt`)).vocab.users, ["u1"]);
  await Deno.writeTextFile(`${dir}/bom.json`, '\uFEFF{"a": [1,}');
  const bom = await assertRejects(
    () => readDataset(`${dir}/bom.txt`, { categories: `${dir}/bom.json` }),
    SyntaxError,
    `${dir}/bom.json: invalid JSON`,
  );
  assert(!bom.message.includes("\uFEFF"), "an invisible byte-order mark in the message");
  assertThrows(
    () => parseCategories("a x\nb y\na z\n", readSequenceLines("u a b\n", "d.txt").vocab, "c.txt"),
    SyntaxError,
    'c.txt:3: item "a" already has categories on line 1',
  );
  // JSON.parse keeps the last of two equal keys: the item's categories would be a guess.
  const twoItems = readSequenceLines("u a b\n", "d.txt").vocab;
  assertThrows(
    () =>
      parseCategories(
        '{\n"a": ["x"],\n"b": ["{\\"a\\": 1"],\n"\\u0061" : ["z"]}',
        twoItems,
        "c.json",
      ),
    SyntaxError,
    'c.json:4: item "a" already has categories on line 2',
  );
  assertThrows(
    () => parseCategories('{"a": ["x"],\r"b": ["y"],\r\n"a": ["z"]}', twoItems, "c.json"),
    SyntaxError,
    'c.json:3: item "a" already has categories on line 1',
  );
  // Keys are only the top object's: a value string that looks like a key is not one.
  assertEquals(
    parseCategories('{"a": ["a", "b"], "b": ["a"]}', twoItems, "c.json").categories.map((c) => [
      ...c,
    ]),
    [[], [0, 1], [0]],
  );
  // Over the size limit (a sparse file: no disk used): refused before it is read.
  const big = await Deno.open(`${dir}/big.txt`, { write: true, create: true });
  await big.truncate(MAX_DATA_FILE_BYTES + 1);
  big.close();
  await assertRejects(
    () => readDataset(`${dir}/big.txt`),
    RangeError,
    `at most ${MAX_DATA_FILE_BYTES}`,
  );
  await Deno.remove(dir, { recursive: true });
});
