import { selectBackend } from "../backends/mod.ts";
import { syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { Recommender } from "../lib/inference/recommender.ts";
import { TINY_TRAIN_FLAGS } from "./_fixtures.ts";
import { assert } from "./_assert.ts";

const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;
const MOD = new URL("../mod.ts", import.meta.url).href;
const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const FLAGS = ["--allow-read", "--allow-write", "--allow-sys", "--allow-ffi"] as const;

/** Every subset of the four flags, as [granted, missing]. */
function combinations(): [string[], string[]][] {
  return Array.from({ length: 1 << FLAGS.length }, (_, mask) => [
    FLAGS.filter((_, i) => mask & (1 << i)),
    FLAGS.filter((_, i) => !(mask & (1 << i))),
  ]);
}

interface Outcome {
  granted: string[];
  missing: string[];
  code: number;
  stdout: string;
  stderr: string;
}

async function run(args: string[], granted: string[], missing: string[]): Promise<Outcome> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-env", ...granted, ...args],
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const text = new TextDecoder();
  return {
    granted,
    missing,
    code: out.code,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
  };
}

/** Runs `jobs` with at most `width` at a time. */
async function pool<T>(jobs: (() => Promise<T>)[], width = 4): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  }));
  return results;
}

/** A run either works or fails with a message naming a missing flag; it never crashes. */
function checkOutcome(what: string, o: Outcome, worked: (o: Outcome) => boolean): void {
  const label = `${what} with ${o.granted.join(" ") || "no flags"}`;
  assert(!/Uncaught|^\s+at /m.test(o.stderr), `${label}: crashed:\n${o.stderr}`);
  assert(!o.stderr.includes("Aborted("), `${label}: emscripten abort noise:\n${o.stderr}`);
  if (o.code === 0) {
    assert(worked(o), `${label}: exit 0 but wrong output:\n${o.stdout}\n${o.stderr}`);
  } else {
    assert(
      o.missing.some((flag) => o.stderr.includes(flag)),
      `${label}: failed without naming a missing flag (${o.missing.join(" ")}):\n${o.stderr}`,
    );
  }
}

Deno.test("train, recommend and in-code inference work or name the missing permission, under all 16 combinations", async () => {
  const dir = await Deno.makeTempDir();
  await selectBackend("cpu");
  const data = syntheticDataset({ seed: 29, users: 30, items: 20, maxLength: 8 });
  using r = new Recommender(
    new SasRec({ numItems: data.numItems, hidden: 8, heads: 1, layers: 1, inner: 8, maxLength: 8 }),
    data.vocab.items,
  );
  const bytes = await r.toBytes();
  await Deno.writeFile(`${dir}/model.safetensors`, bytes);
  const expected = (await r.recommend(["i1", "i2"], { k: 3 })).items.map((x) => x.item);
  let b64 = "";
  for (const b of bytes) b64 += String.fromCharCode(b);
  // The edge promise: the inference entry, a model from bytes, no permission at all.
  const script = `${dir}/infer.ts`;
  await Deno.writeTextFile(
    script,
    `import { Recommender, selectBackend } from "${MOD}";
const chosen = await selectBackend("auto");
const bytes = Uint8Array.from(atob("${btoa(b64)}"), (c) => c.charCodeAt(0));
const r = await Recommender.load(bytes);
const { items } = await r.recommend(["i1", "i2"], { k: 3 });
console.log(JSON.stringify({ backend: chosen.name, items: items.map((x) => x.item) }));
`,
  );
  const jobs: (() => Promise<[string, Outcome, (o: Outcome) => boolean]>)[] = [];
  for (const [granted, missing] of combinations()) {
    let n = 0;
    const out = () => `${dir}/run-${granted.join("").replaceAll("--allow-", "")}-${n++}`;
    jobs.push(async () => [
      "train",
      await run(
        [
          MAIN,
          "train",
          "--model",
          "sasrec",
          ...TINY_TRAIN_FLAGS,
          "--max-length",
          "8",
          "--out",
          out(),
        ],
        granted,
        missing,
      ),
      (o) => o.stdout.includes('"best_epoch"'),
    ]);
    jobs.push(async () => [
      "recommend",
      await run(
        [MAIN, "recommend", "--model", `${dir}/model.safetensors`, "--history", "i1 i2", "-k", "3"],
        granted,
        missing,
      ),
      (o) => expected.every((item) => o.stdout.includes(item)),
    ]);
    jobs.push(async () => [
      "inference",
      await run(["--config", CONFIG, script], granted, missing),
      (o) => JSON.parse(o.stdout).items.join() === expected.join(),
    ]);
  }
  const results = await pool(jobs);
  for (const [what, outcome, worked] of results) checkOutcome(what, outcome, worked);
  // In-code inference needs no permission at all: it worked in every combination.
  for (const [what, o] of results) if (what === "inference") assert(o.code === 0, o.stderr);
  await Deno.remove(dir, { recursive: true });
});
