/**
 * Run folders: one run at a time writes into a folder, and a finished or interrupted run is
 * never overwritten by accident.
 *
 * - A lock: `DIR/.lock`, held with the operating system's file lock (`flock`) for as long
 *   as the run writes. A second run into the same folder stops at once, naming the
 *   process that holds it. The system drops the lock when its process ends, however it
 *   ends, so a killed run never blocks the next one.
 * - A folder that already holds a run (a log, a checkpoint, a state, metrics or a model
 *   file) is refused unless the caller asks to resume it or to overwrite it.
 *
 * @module
 */

import { checkWritableFolder, shownPath, writing } from "../_io.ts";

/** The files and folders that make up a run (besides the lock). */
export const RUN_FILES: readonly string[] = [
  "log.jsonl",
  "log.jsonl.tmp",
  "metrics.json",
  "metrics.json.tmp",
  "model.safetensors",
  "model.safetensors.tmp",
  "checkpoint",
  "checkpoint.next",
  "checkpoint.prev",
  "state",
  "state.next",
  "state.prev",
];

/** A held run-folder lock. */
export interface RunLock {
  /** The folder it locks. */
  readonly dir: string;
  /** Releases the lock (idempotent). */
  release(): void;
}

/** The run files present in `dir`. */
export async function runFilesIn(dir: string): Promise<string[]> {
  const present: string[] = [];
  for (const name of RUN_FILES) {
    try {
      await Deno.lstat(`${dir}/${name}`);
      present.push(name);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return present;
}

/**
 * Locks `dir` (creating it) for one run, then checks that it may write there: a folder
 * that holds a run needs `resume` (continue it) or `overwrite` (replace it).
 *
 * @example Usage
 * ```ts ignore
 * const lock = await openRunFolder("runs/office", { resume: false, overwrite: false });
 * try {
 *   // ... write the run ...
 * } finally {
 *   lock.release();
 * }
 * ```
 *
 * @throws {RangeError} The folder is under `/proc`, `/sys` or `/dev`.
 * @throws {Error} Another process holds the folder (its process id and start are named), or
 * the folder holds a run and neither option was given (the files found are named).
 */
export async function openRunFolder(
  dir: string,
  options: { resume?: boolean; overwrite?: boolean } = {},
): Promise<RunLock> {
  checkWritableFolder(dir, "run folder");
  await writing(dir, () => Deno.mkdir(dir, { recursive: true }));
  const path = `${dir}/.lock`;
  const file = await Deno.open(path, { read: true, write: true, create: true });
  let locked = false;
  try {
    locked = await file.tryLock(true);
  } catch (e) {
    file.close();
    throw e;
  }
  if (!locked) {
    file.close();
    const holder = (await Deno.readTextFile(path).catch(() => "")).trim() || "another process";
    throw new Error(
      `${
        shownPath(dir)
      } is in use by another run (${holder}); wait for it to end, or choose another --out`,
    );
  }
  const lock: RunLock = {
    dir,
    release: () => {
      try {
        file.unlockSync();
        file.close();
      } catch {
        // already released
      }
    },
  };
  try {
    // Who holds it, for the message a second run prints. The file stays after release:
    // deleting it could let two runs lock two different files of the same name.
    await file.truncate(0);
    await file.write(
      new TextEncoder().encode(`process ${Deno.pid}, started ${new Date().toISOString()}\n`),
    );
    if (!options.resume && !options.overwrite) {
      const found = await runFilesIn(dir);
      if (found.length > 0) {
        throw new Error(
          `${shownPath(dir)} already holds a run (${found.join(", ")}); ` +
            `pass --resume to continue it, ` +
            `--overwrite to replace it, or choose another --out`,
        );
      }
    }
  } catch (e) {
    lock.release();
    throw e;
  }
  return lock;
}

/** Removes every run file of `dir` (for an overwrite), leaving the lock. */
export async function clearRun(dir: string): Promise<void> {
  for (const name of await runFilesIn(dir)) {
    await Deno.remove(`${dir}/${name}`, { recursive: true });
  }
}
