import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { train } from "../lib/train/trainer.ts";
import { openRunFolder } from "../lib/train/run_folder.ts";
import { absolutePath, joinPath } from "../lib/_io.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import fc from "fast-check";

const data = syntheticDataset({ seed: 31, users: 40, items: 20, maxLength: 8 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 8, heads: 1, layers: 1, inner: 8, maxLength: 8 };
const RUN_FOLDER = new URL("../lib/train/run_folder.ts", import.meta.url).href;
const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;

async function trainInto(
  out: string,
  hooks: { resume?: boolean; overwrite?: boolean } = {},
  epochs = 1,
) {
  const model = new SasRec(TINY);
  try {
    return await train(model, split, data.numItems, { epochs, batchSize: 16 }, { out, ...hooks });
  } finally {
    model.params.dispose();
  }
}

Deno.test("train() refuses a folder that holds a run, unless asked to resume or overwrite it", async () => {
  await selectBackend("cpu");
  const dir = await Deno.makeTempDir();
  const out = `${dir}/run`;
  await trainInto(out, {}, 2);
  const log = await Deno.readTextFile(`${out}/log.jsonl`);
  const error = await assertRejects(() => trainInto(out), Error, "already holds a run");
  for (const word of [out, "--resume", "--overwrite", "log.jsonl"]) {
    assert(error.message.includes(word), `${error.message} lacks ${word}`);
  }
  assertEquals(await Deno.readTextFile(`${out}/log.jsonl`), log, "the refused run touched the log");
  // A run that fails its checks touches nothing, even with overwrite.
  const model = new SasRec(TINY);
  await assertRejects(
    () => train(model, split, data.numItems, { epochs: 0 }, { out, overwrite: true }),
    RangeError,
    "epochs",
  );
  model.params.dispose();
  assertEquals(await Deno.readTextFile(`${out}/log.jsonl`), log);
  // Overwrite replaces the run whole: a file of the old run that the new one would not write
  // is gone too.
  await Deno.writeTextFile(`${out}/metrics.json`, "{}");
  await trainInto(out, { overwrite: true }, 1);
  assertEquals((await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").length, 1);
  await assertRejects(() => Deno.stat(`${out}/metrics.json`), Deno.errors.NotFound);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a second run into a locked folder stops at once, naming the holder; a killed holder blocks nothing", async () => {
  const dir = await Deno.makeTempDir();
  const out = `${dir}/run`;
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { openRunFolder } = await import("${RUN_FOLDER}");
       await openRunFolder(${JSON.stringify(out)});
       console.log("locked");
       await new Promise((r) => setTimeout(r, 60_000));`,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = holder.stdout.pipeThrough(new TextDecoderStream()).getReader();
    assertEquals((await reader.read()).value?.trim(), "locked");
    const error = await assertRejects(() => openRunFolder(out), Error, "in use by another run");
    assert(error.message.includes(`process ${holder.pid}`), error.message);
    assert(error.message.includes(out), error.message);
    holder.kill("SIGKILL");
    await holder.status;
    reader.releaseLock();
    // The system released the dead process's lock: the folder opens, and a run trains in it.
    const lock = await openRunFolder(out);
    lock.release();
    await selectBackend("cpu");
    await trainInto(out);
  } finally {
    try {
      holder.kill("SIGKILL");
    } catch {
      // already ended
    }
    await holder.status;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an empty run folder is refused by the library and the CLI, writing nothing in the root (hardening item 1)", async () => {
  await selectBackend("cpu");
  const rootBefore = await Array.fromAsync(Deno.readDir("/"), (e) => e.name);
  await assertRejects(() => openRunFolder(""), RangeError, "--out ''");
  await assertRejects(() => trainInto(""), RangeError, 'hooks.out is ""');
  const cli = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "train", "--model", "sasrec", "--out", "", "--epochs", "1"],
    env: { NO_COLOR: "1" },
  }).output();
  const stderr = new TextDecoder().decode(cli.stderr);
  assertEquals(cli.code, 1, stderr);
  assert(stderr.includes("the run folder is empty (--out '')"), stderr);
  assertEquals(await Array.fromAsync(Deno.readDir("/"), (e) => e.name), rootBefore);
});

Deno.test("joinPath keeps every run file inside the folder named (property over any path)", () => {
  fc.assert(
    fc.property(fc.string(), fc.constantFrom(".lock", "log.jsonl", "checkpoint"), (dir, name) => {
      if (dir === "") {
        assertThrows(() => joinPath(dir, name), RangeError);
        return;
      }
      const folder = absolutePath(dir);
      const expected = folder === "/" ? `/${name}` : `${folder}/${name}`;
      assertEquals(absolutePath(joinPath(dir, name)), expected);
    }),
    { numRuns: 500 },
  );
});

Deno.test("openRunFolder locks inside the folder named or refuses, for any folder name (property)", async () => {
  const base = await Deno.makeTempDir();
  await fc.assert(
    fc.asyncProperty(
      fc.string().filter((s) => !s.split("/").includes("..") && !s.includes("\0")),
      async (name) => {
        const dir = name === "" ? "" : `${base}/${name}`;
        let lock;
        try {
          lock = await openRunFolder(dir);
        } catch (e) {
          assert(e instanceof RangeError || e instanceof Error, String(e));
          return;
        }
        try {
          const folder = absolutePath(dir);
          assert(folder === base || folder.startsWith(`${base}/`), `${folder} outside ${base}`);
          assert((await Deno.lstat(`${folder}/.lock`)).isFile, `no lock in ${folder}`);
        } finally {
          lock.release();
        }
      },
    ),
    { numRuns: 60 },
  );
  // Every lock was released without a run: nothing of them is left.
  assertEquals(await Array.fromAsync(Deno.readDir(base)), []);
  await Deno.remove(base, { recursive: true });
});

Deno.test("a .lock that is a link is refused, and its target is left as it was (hardening item 3)", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/precious.txt`, "keep me\n");
  await Deno.mkdir(`${dir}/run`);
  await Deno.symlink(`${dir}/precious.txt`, `${dir}/run/.lock`);
  await assertRejects(() => openRunFolder(`${dir}/run`), Error, "is a symbolic link");
  assertEquals(await Deno.readTextFile(`${dir}/precious.txt`), "keep me\n");
  // A dangling link: refused too, and its target is not created.
  await Deno.mkdir(`${dir}/run2`);
  await Deno.symlink(`${dir}/nothing.txt`, `${dir}/run2/.lock`);
  await assertRejects(() => openRunFolder(`${dir}/run2`), Error, "is a symbolic link");
  await assertRejects(() => Deno.lstat(`${dir}/nothing.txt`), Deno.errors.NotFound);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a refused run leaves no folder or .lock of its own, and an old run's .lock as it was (hardening item 4)", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/bad.txt`, "u1 1 2\n");
  const train = (...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "train", "--model", "sasrec", "--backend", "cpu", ...args],
      env: { NO_COLOR: "1" },
    }).output();
  // Refused after the lock (its data has no user with 3 items): the new folders are gone.
  const fresh = await train("--data", `${dir}/bad.txt`, "--out", `${dir}/new/deeper`);
  assertEquals(fresh.code, 1, new TextDecoder().decode(fresh.stderr));
  await assertRejects(() => Deno.lstat(`${dir}/new`), Deno.errors.NotFound);
  // A folder holding a run: refused before the lock, and its .lock keeps its text; also
  // when the refusal comes after the lock (--resume with data that fails).
  await Deno.mkdir(`${dir}/held`);
  await Deno.writeTextFile(`${dir}/held/log.jsonl`, "");
  await Deno.writeTextFile(`${dir}/held/.lock`, "process 1, the old run\n");
  const held = await train("--out", `${dir}/held`);
  assert(new TextDecoder().decode(held.stderr).includes("already holds a run"));
  const resumed = await train("--data", `${dir}/bad.txt`, "--out", `${dir}/held`, "--resume");
  assertEquals(resumed.code, 1);
  assertEquals(await Deno.readTextFile(`${dir}/held/.lock`), "process 1, the old run\n");
  // The library: a lock released before the run begins undoes itself; after begin() it stays.
  const lock = await openRunFolder(`${dir}/lib/run`);
  lock.release();
  await assertRejects(() => Deno.lstat(`${dir}/lib`), Deno.errors.NotFound);
  const kept = await openRunFolder(`${dir}/lib/run`);
  kept.begin();
  kept.release();
  assert((await Deno.lstat(`${dir}/lib/run/.lock`)).isFile);
  await Deno.remove(dir, { recursive: true });
});
