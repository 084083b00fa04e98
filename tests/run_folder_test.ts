import { selectBackend } from "../backends/mod.ts";
import { leaveOneOut, syntheticDataset } from "../lib/data/mod.ts";
import { SasRec } from "../lib/models/sasrec.ts";
import { train } from "../lib/train/trainer.ts";
import { openRunFolder } from "../lib/train/run_folder.ts";
import { assert, assertEquals, assertRejects } from "./_assert.ts";

const data = syntheticDataset({ seed: 31, users: 40, items: 20, maxLength: 8 });
const { split } = leaveOneOut(data);
const TINY = { numItems: data.numItems, hidden: 8, heads: 1, layers: 1, inner: 8, maxLength: 8 };
const RUN_FOLDER = new URL("../lib/train/run_folder.ts", import.meta.url).href;

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
