import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { train } from "../lib/train/trainer.ts";
import { assert, assertEquals } from "./_assert.ts";

const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;
const DENO_SERVE = new URL("../cli/deno_serve.ts", import.meta.url).pathname;
const data = syntheticDataset({ seed: 19, users: 40, items: 25, maxLength: 10 });
const TINY = { numItems: data.numItems, hidden: 16, heads: 2, layers: 1, inner: 16, maxLength: 10 };
const PERMISSIONS = ["--allow-read", "--allow-write", "--allow-env", "--allow-sys", "--allow-net"];

/**
 * Runs deno with `args`, killed after 60 s: a server that should have refused to start
 * fails the test instead of hanging it.
 */
async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    env: { NO_COLOR: "1", ...env },
    signal: AbortSignal.timeout(60_000),
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

const cli = (...args: string[]) => run(["run", ...PERMISSIONS, MAIN, ...args]);

/** A temp folder holding a model file of a tiny SASRec, and the recommender it came from. */
async function fixture() {
  await selectBackend("cpu");
  const r = new Recommender(new SasRec({ ...TINY, seed: 6 }), data.vocab.items);
  const dir = await Deno.makeTempDir();
  await Deno.writeFile(`${dir}/model.safetensors`, await r.toBytes());
  return {
    r,
    dir,
    [Symbol.asyncDispose]: async () => {
      r.dispose();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("cli recommend --history prints the API's top k with scores; the run folder works too", async () => {
  await using f = await fixture();
  const history = data.vocab.items.slice(1, 4);
  const expected = await f.r.recommend([...history, "zz"], { k: 4 });
  for (const model of [`${f.dir}/model.safetensors`, f.dir]) {
    const out = await cli(
      "recommend",
      "--model",
      model,
      "--history",
      `${history.join(" ")} zz`,
      "-k",
      "4",
      "--backend",
      "cpu",
    );
    assertEquals(out.code, 0, out.stderr);
    const rows = out.stdout.trim().split("\n").slice(1).map((l) => l.trim().split(/\s+/));
    assertEquals(rows.map((r) => r[1]), expected.items.map((x) => x.item));
    rows.forEach((r, i) => assert(Math.abs(Number(r[2]) - expected.items[i].score) < 1e-6));
    assert(out.stderr.includes("skipped: zz"), out.stderr);
  }
});

Deno.test("cli recommend reads a run folder caught mid-swap (checkpoint only at .prev), as eval does (hardening item 11)", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  const model = new SasRec({ ...TINY, seed: 4 });
  await train(model, leaveOneOut(data).split, data.numItems, { epochs: 1, batchSize: 16 }, {
    out: dir,
    checkpointInfo: { data: { kind: "synthetic" }, itemTokens: data.vocab.items },
  });
  model.params.dispose();
  // What a reader sees between the swap's two renames when no model file is there.
  await Deno.remove(`${dir}/model.safetensors`);
  await Deno.rename(`${dir}/checkpoint`, `${dir}/checkpoint.prev`);
  const out = await cli(
    "recommend",
    "--model",
    dir,
    "--history",
    data.vocab.items.slice(1, 3).join(" "),
    "--backend",
    "cpu",
  );
  assertEquals(out.code, 0, out.stderr);
  assert(out.stderr.includes("checkpoint.prev (checkpoint)"), out.stderr);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("cli recommend --input writes one JSON line per user, as recommendBatch answers", async () => {
  await using f = await fixture();
  const users = data.sequences.slice(0, 30).map((
    s,
    u,
  ) => [`user${u}`, ...Array.from(s, (i) => data.vocab.items[i])]);
  await Deno.writeTextFile(
    `${f.dir}/in.txt`,
    users.map((u) => u.join(" ")).join("\n") + "\nnewcomer\n",
  );
  const out = await cli(
    "recommend",
    "--model",
    f.dir,
    "--input",
    `${f.dir}/in.txt`,
    "--output",
    `${f.dir}/out.jsonl`,
    "-k",
    "3",
    "--backend",
    "cpu",
    "--batch-size",
    "7",
  );
  assertEquals(out.code, 0, out.stderr);
  const lines = (await Deno.readTextFile(`${f.dir}/out.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assertEquals(lines.map((l) => l.user), [...users.map((u) => u[0]), "newcomer"]);
  const expected = await f.r.recommendBatch([...users.map((u) => u.slice(1)), []], { k: 3 });
  lines.forEach((l, i) =>
    assertEquals(l.items.map((x: { item: string }) => x.item), expected[i].items.map((x) => x.item))
  );
  assert(out.stderr.includes("recommended for 31 users"), out.stderr);
  // To stdout when no --output is given.
  const toStdout = await cli(
    "recommend",
    "--model",
    f.dir,
    "--input",
    `${f.dir}/in.txt`,
    "--backend",
    "cpu",
  );
  assertEquals(toStdout.stdout.trim().split("\n").length, 31);
});

Deno.test("cli recommend --diversity W re-ranks as the API does at that weight; a method the model lacks is named", async () => {
  await using f = await fixture();
  const users = data.sequences.slice(0, 12).map((s) => Array.from(s, (i) => data.vocab.items[i]));
  await Deno.writeTextFile(
    `${f.dir}/in.txt`,
    users.map((u, i) => [`user${i}`, ...u].join(" ")).join("\n") + "\n",
  );
  const args = ["recommend", "--model", f.dir, "--input", `${f.dir}/in.txt`, "--backend", "cpu"];
  const out = await cli(...args, "-k", "6", "--diversity", "2");
  assertEquals(out.code, 0, out.stderr);
  const lines = out.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const expected = await f.r.recommendBatch(users, { k: 6, diversity: 2 });
  const plain = await f.r.recommendBatch(users, { k: 6 });
  const names = (items: { item: string }[]) => items.map((x) => x.item);
  lines.forEach((l, i) => assertEquals(names(l.items), names(expected[i].items)));
  assert(expected.some((e, i) => names(e.items).join() !== names(plain[i].items).join()));
  const bad = await cli(...args, "--diversity", "1", "--diversity-method", "interests");
  assert(bad.code !== 0);
  assert(bad.stderr.includes("use the diversity method mmr"), bad.stderr);
  const stray = await cli(...args, "--diversity-pool", "50");
  assert(stray.code !== 0);
  assert(stray.stderr.includes("--diversity-pool goes with --diversity W"), stray.stderr);
});

Deno.test("cli export --model --item-dtype writes a smaller model file that recommend reads; bad dtypes and existing files are refused by name", async () => {
  await using f = await fixture();
  const history = data.vocab.items.slice(1, 4).join(" ");
  const top = async (model: string) => {
    const out = await cli("recommend", "--model", model, "--history", history, "--backend", "cpu");
    assertEquals(out.code, 0, out.stderr);
    return out.stdout.trim().split("\n").slice(1).map((l) => l.trim().split(/\s+/)[1]);
  };
  const reference = await top(f.dir);
  const f32 = (await Deno.stat(`${f.dir}/model.safetensors`)).size;
  for (const dtype of ["f16", "i8"]) {
    const path = `${f.dir}/${dtype}.safetensors`;
    const out = await cli("export", "--model", f.dir, "--item-dtype", dtype, "--out", path);
    assertEquals(out.code, 0, out.stderr);
    assert(out.stderr.includes(`item table ${dtype}`), out.stderr);
    assert((await Deno.stat(path)).size < f32, `${dtype} is not smaller`);
    const mine = await top(path);
    // An untrained model's scores lie close: most of the top 10, not every one.
    assert(
      mine.filter((x) => reference.includes(x)).length >= 8,
      `${dtype}: ${mine} vs ${reference}`,
    );
    const again = await cli("export", "--model", f.dir, "--item-dtype", dtype, "--out", path);
    assert(again.code !== 0 && again.stderr.includes("exists; not replaced"), again.stderr);
  }
  const bad = await cli("export", "--model", f.dir, "--item-dtype", "f8", "--out", `${f.dir}/x`);
  assert(
    bad.code !== 0 && bad.stderr.includes("--item-dtype must be one of f32, f16, i8"),
    bad.stderr,
  );
});

Deno.test("cli recommend rejects bad input with messages naming the flag, file or line", async () => {
  await using f = await fixture();
  await Deno.writeTextFile(`${f.dir}/dup.txt`, "a i1 i2\nb i3\na i4\n");
  await Deno.writeFile(
    `${f.dir}/broken.safetensors`,
    (await Deno.readFile(`${f.dir}/model.safetensors`)).slice(0, 500),
  );
  const cases: [string[], string][] = [
    [["recommend", "--history", "i1"], "--model"],
    [["recommend", "--model", f.dir], "--history"],
    [["recommend", "--model", f.dir, "--history", "i1", "-k", "0"], "--k"],
    [["recommend", "--model", `${f.dir}/none`, "--history", "i1"], `${f.dir}/none`],
    [
      ["recommend", "--model", `${f.dir}/broken.safetensors`, "--history", "i1"],
      "broken.safetensors",
    ],
    [["recommend", "--model", f.dir, "--input", `${f.dir}/dup.txt`], `${f.dir}/dup.txt:3`],
    [["recommend", "--model", f.dir, "--input", `${f.dir}/no.txt`], `${f.dir}/no.txt`],
    [
      ["recommend", "--model", f.dir, "--history", "i1", "--sampling", "one"],
      '--sampling ("one") is not an inference option of model sasrec (it has none)',
    ],
    [
      ["recommend", "--model", f.dir, "--history", "i1", "--reverse-steps=-1"],
      "--reverse-steps must be an integer >= 0",
    ],
    [["serve", "--model", f.dir, "--lambda", "x"], "--lambda must be a decimal number"],
    [["serve", "--model", f.dir, "--eval-seed", "2"], "--eval-seed (2) is not an inference"],
    [["serve", "--model", f.dir, "--port", "70000"], "--port"],
    [["serve"], "--model"],
    [["serve", "--model", f.dir, "--batch-wait-ms", "60000"], "--batch-wait-ms"],
  ];
  for (const [args, word] of cases) {
    const r = await cli(...args, "--backend", "cpu");
    assert(r.code !== 0, `${args.join(" ")} succeeded`);
    assert(r.stderr.includes(word), `${args.join(" ")}: stderr lacks "${word}":\n${r.stderr}`);
    assert(!r.stderr.includes("    at "), `${args.join(" ")}: a stack trace`);
  }
  assertEquals(
    (await Array.fromAsync(Deno.readDir(f.dir))).some((e) => e.name.endsWith(".tmp")),
    false,
  );
});

Deno.test("the deno serve module answers with the same handler", async () => {
  await using f = await fixture();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["serve", "--host", "127.0.0.1", "--port", "0", ...PERMISSIONS, DENO_SERVE],
    env: { NO_COLOR: "1", SIGMA_MODEL: `${f.dir}/model.safetensors`, SIGMA_BACKEND: "cpu" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const streams = [child.stdout, child.stderr].map((s) =>
      s.pipeThrough(new TextDecoderStream()).getReader()
    );
    let log = "";
    let base = "";
    // deno serve says where it listens on stdout or stderr depending on the version.
    const reads = streams.map((r) => r.read());
    while (!base) {
      const i = await Promise.race(reads.map((p, i) => p.then(() => i)));
      const { done, value } = await reads[i];
      if (done) throw new Error(`deno serve exited:\n${log}`);
      log += value;
      reads[i] = streams[i].read();
      base = log.match(/(http:\/\/127\.0\.0\.1:\d+)/)?.[1] ?? "";
    }
    const health = await (await fetch(`${base}/health`)).json();
    assertEquals([health.model, health.items, health.backend], ["sasrec", data.numItems, "cpu"]);
    const got = await (await fetch(`${base}/recommend`, {
      method: "POST",
      body: JSON.stringify({ history: ["i1"], k: 3 }),
    })).json();
    assertEquals(
      got.items.map((x: { item: string }) => x.item),
      (await f.r.recommend(["i1"], { k: 3 })).items.map((x) => x.item),
    );
    streams.forEach((s) => s.cancel());
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
});

Deno.test("the deno serve module refuses a missing or bad variable by name, before it listens", async () => {
  await using f = await fixture();
  const model = `${f.dir}/model.safetensors`;
  const cases: [Record<string, string>, string][] = [
    [{}, "SIGMA_MODEL"],
    [
      { SIGMA_MODEL: model, SIGMA_BATCH_WAIT_MS: "2ms" },
      'SIGMA_BATCH_WAIT_MS must be a number from 0 to 10000, got "2ms"',
    ],
    [{ SIGMA_MODEL: model, SIGMA_BATCH_WAIT_MS: "" }, "SIGMA_BATCH_WAIT_MS"],
    [{ SIGMA_MODEL: model, SIGMA_BATCH_WAIT_MS: "60000" }, "SIGMA_BATCH_WAIT_MS"],
    [
      { SIGMA_MODEL: model, SIGMA_BACKEND: "gpu" },
      'SIGMA_BACKEND must be one of auto, webgpu, wasm, cpu, got "gpu"',
    ],
    [{ SIGMA_MODEL: `${f.dir}/missing.safetensors`, SIGMA_BACKEND: "cpu" }, "missing.safetensors"],
    [
      { SIGMA_MODEL: model, SIGMA_COMPACT_ITEMS: "yes" },
      'SIGMA_COMPACT_ITEMS must be 0 or 1, got "yes"',
    ],
  ];
  for (const [env, word] of cases) {
    const r = await run(
      ["serve", "--host", "127.0.0.1", "--port", "0", ...PERMISSIONS, DENO_SERVE],
      env,
    );
    const what = JSON.stringify(env);
    assertEquals(r.code, 1, `${what}: ${r.stderr}`);
    assert(r.stderr.includes(word), `${what}: stderr lacks ${word}:\n${r.stderr}`);
    assert(!r.stderr.includes("    at "), `${what}: a stack trace:\n${r.stderr}`);
    assert(
      !r.stderr.includes("Listening") && !/http:\/\/127/.test(r.stderr + r.stdout),
      `${what}: it listened`,
    );
  }
});

/** Whether `path` is a character device; `test -c`, since Deno reads /dev only under -A. */
async function isCharDevice(path: string): Promise<boolean> {
  return (await new Deno.Command("test", { args: ["-c", path] }).output()).success;
}

Deno.test("cli recommend --output writes a device or a pipe in place, and through a link keeps the link (hardening items 2)", async () => {
  await using f = await fixture();
  const input = `${f.dir}/in.txt`;
  await Deno.writeTextFile(input, "u1 " + data.vocab.items.slice(1, 4).join(" ") + "\n");
  const recommendTo = (output: string) =>
    cli("recommend", "--model", f.dir, "--input", input, "--output", output, "--backend", "cpu");
  // /dev/null: written, still the device (the old code renamed a regular file over it).
  const toNull = await recommendTo("/dev/null");
  assertEquals(toNull.code, 0, toNull.stderr);
  assert(await isCharDevice("/dev/null"), "/dev/null became a regular file");
  // /dev/full: the write fails with the device named, and the device stays.
  const toFull = await recommendTo("/dev/full");
  assertEquals(toFull.code, 1, toFull.stderr);
  assert(toFull.stderr.includes("/dev/full"), toFull.stderr);
  assert(await isCharDevice("/dev/full"), "/dev/full became a regular file");
  // A FIFO: the reader gets the JSON lines and the FIFO stays a FIFO.
  const fifo = `${f.dir}/pipe`;
  const made = await new Deno.Command("mkfifo", { args: [fifo] }).output().catch(() => null);
  if (made?.success) {
    const reader = new Deno.Command("cat", { args: [fifo], stdout: "piped" }).output();
    const toFifo = await recommendTo(fifo);
    assertEquals(toFifo.code, 0, toFifo.stderr);
    const read = new TextDecoder().decode((await reader).stdout);
    assertEquals(JSON.parse(read.trim()).user, "u1");
    assert((await Deno.lstat(fifo)).isFifo, "the FIFO was replaced");
  } else console.warn("no mkfifo: the FIFO case was skipped");
  // A link to a file: the file gets the lines, the link stays a link.
  await Deno.writeTextFile(`${f.dir}/target.jsonl`, "old\n");
  await Deno.symlink(`${f.dir}/target.jsonl`, `${f.dir}/link.jsonl`);
  const toLink = await recommendTo(`${f.dir}/link.jsonl`);
  assertEquals(toLink.code, 0, toLink.stderr);
  assert((await Deno.lstat(`${f.dir}/link.jsonl`)).isSymlink, "the link was replaced");
  assertEquals(JSON.parse(await Deno.readTextFile(`${f.dir}/target.jsonl`)).user, "u1");
  // "-" is stdout; an empty name and a folder are refused by name.
  const toDash = await recommendTo("-");
  assertEquals(JSON.parse(toDash.stdout.trim()).user, "u1");
  const empty = await recommendTo("");
  assert(empty.code !== 0 && empty.stderr.includes("--output is empty"), empty.stderr);
  const folder = await recommendTo(f.dir);
  assert(folder.code !== 0 && folder.stderr.includes("is a folder"), folder.stderr);
});
