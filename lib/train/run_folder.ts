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

import { absolutePath, checkWritableFolder, joinPath, shownPath, writing } from "../_io.ts";

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
  /**
   * Says that the run has begun to write into the folder. Until then, {@linkcode release}
   * puts the folder back as it was found: a refused run (bad data, a backend that does not
   * start) leaves no `.lock` and no folder of its own behind, and an old run's `.lock`
   * keeps its text. The trainer calls it before it writes or clears anything.
   */
  begin(): void;
  /** Releases the lock (idempotent); see {@linkcode begin} for what it undoes. */
  release(): void;
}

/** The run files present in `dir`. */
export async function runFilesIn(dir: string): Promise<string[]> {
  const present: string[] = [];
  for (const name of RUN_FILES) {
    try {
      await Deno.lstat(joinPath(dir, name));
      present.push(name);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return present;
}

/** Throws when `dir` holds a run and neither option allows replacing or continuing it. */
async function refuseHeldRun(
  dir: string,
  options: { resume?: boolean; overwrite?: boolean },
): Promise<void> {
  if (options.resume || options.overwrite) return;
  const found = await runFilesIn(dir).catch((e) => {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    throw e;
  });
  if (found.length > 0) {
    throw new Error(
      `${shownPath(dir)} already holds a run (${found.join(", ")}); ` +
        `pass --resume to continue it, ` +
        `--overwrite to replace it, or choose another --out`,
    );
  }
}

/** The folders of `dir` and above it that do not exist yet, deepest first. */
async function missingFolders(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (let at = absolutePath(dir); at !== "/"; at = at.slice(0, at.lastIndexOf("/")) || "/") {
    try {
      await Deno.lstat(at);
      break;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      missing.push(at);
    }
  }
  return missing;
}

/**
 * Opens `DIR/.lock` without following a link: a new one is created exclusively (which
 * fails on a link, even a dangling one), an existing one must be a regular file.
 */
async function openLockFile(path: string): Promise<{ file: Deno.FsFile; created: boolean }> {
  let info: Deno.FileInfo | null = null;
  try {
    info = await Deno.lstat(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (info === null) {
    try {
      const file = await Deno.open(path, { read: true, write: true, createNew: true });
      return { file, created: true };
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      return await openLockFile(path); // made meanwhile (or a link): look again
    }
  }
  if (!info.isFile) {
    const kind = info.isSymlink ? "a symbolic link" : "not a regular file";
    throw new Error(
      `${shownPath(path)} is ${kind}; a run's lock must be a plain file (it is written, ` +
        `and a link would send that text elsewhere): remove it and run again`,
    );
  }
  return { file: await Deno.open(path, { read: true, write: true }), created: false };
}

/** Whether the open `file` is still the file at `path` (not replaced or removed meanwhile). */
async function stillAt(file: Deno.FsFile, path: string): Promise<boolean> {
  const [open, named] = await Promise.all([
    file.stat(),
    Deno.lstat(path).catch(() => null),
  ]);
  return named !== null && named.isFile && named.ino === open.ino && named.dev === open.dev;
}

/**
 * Locks `dir` (creating it) for one run, then checks that it may write there: a folder
 * that holds a run needs `resume` (continue it) or `overwrite` (replace it). Nothing is
 * created or rewritten for a run that is refused, and the lock file is never followed
 * through a link.
 *
 * @example Usage
 * ```ts ignore
 * const lock = await openRunFolder("runs/office", { resume: false, overwrite: false });
 * try {
 *   lock.begin();
 *   // ... write the run ...
 * } finally {
 *   lock.release();
 * }
 * ```
 *
 * @throws {RangeError} The folder is empty (`--out ''`, which would put the run's files in
 * the file-system root) or under `/proc`, `/sys` or `/dev`.
 * @throws {Error} Another process holds the folder (its process id and start are named),
 * the folder holds a run and neither option was given (the files found are named), or its
 * `.lock` is a link or not a regular file.
 */
export async function openRunFolder(
  dir: string,
  options: { resume?: boolean; overwrite?: boolean } = {},
): Promise<RunLock> {
  if (dir === "") {
    throw new RangeError(
      "the run folder is empty (--out ''): name a folder for the run, e.g. --out runs/office",
    );
  }
  checkWritableFolder(dir, "run folder");
  // Refused before anything is created: a refused run leaves the folder as it found it.
  await refuseHeldRun(dir, options);
  for (let attempt = 0;; attempt++) {
    const lock = await tryOpenRunFolder(dir, options);
    if (lock) return lock;
    // The lock file was replaced or removed between opening and locking it (a refused run
    // cleaning up after itself): lock the one that is there now.
    if (attempt >= 8) throw new Error(`${shownPath(dir)}: its .lock keeps changing; try again`);
  }
}

/** One attempt of {@linkcode openRunFolder}; null when the lock file changed under it. */
async function tryOpenRunFolder(
  dir: string,
  options: { resume?: boolean; overwrite?: boolean },
): Promise<RunLock | null> {
  const madeFolders = await missingFolders(dir);
  await writing(dir, () => Deno.mkdir(dir, { recursive: true }));
  const path = joinPath(dir, ".lock");
  const { file, created } = await openLockFile(path);
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
  if (!(await stillAt(file, path))) {
    file.close();
    return null;
  }
  let begun = false;
  let released = false;
  let previous: Uint8Array | null = null;
  const undo = () => {
    // Put the folder back: the lock file and folders this attempt made go, an old lock
    // file gets its text back. Under the lock, so no other run is between these steps.
    try {
      if (created) Deno.removeSync(path);
      else if (previous !== null) {
        file.truncateSync(0);
        file.seekSync(0, Deno.SeekMode.Start);
        file.writeSync(previous);
      }
      for (const folder of madeFolders) Deno.removeSync(folder); // only when empty
    } catch {
      // best effort: a folder another process has written into stays
    }
  };
  const lock: RunLock = {
    dir,
    begin: () => {
      begun = true;
    },
    release: () => {
      if (released) return;
      released = true;
      try {
        if (!begun) undo();
        file.unlockSync();
        file.close();
      } catch {
        // already released
      }
    },
  };
  try {
    // Under the lock, again: a run may have been written since the first look.
    await refuseHeldRun(dir, options);
    if (!created) previous = await readAll(file);
    // Who holds it, for the message a second run prints. The file stays after a run's
    // release: deleting it could let two runs lock two different files of the same name.
    await file.truncate(0);
    await file.seek(0, Deno.SeekMode.Start);
    await file.write(
      new TextEncoder().encode(`process ${Deno.pid}, started ${new Date().toISOString()}\n`),
    );
  } catch (e) {
    lock.release();
    throw e;
  }
  return lock;
}

/** The whole of an open file, read from its start (the file stays open). */
async function readAll(file: Deno.FsFile): Promise<Uint8Array> {
  await file.seek(0, Deno.SeekMode.Start);
  const parts: Uint8Array[] = [];
  for (;;) {
    const buffer = new Uint8Array(4096);
    const n = await file.read(buffer);
    if (n === null) break;
    parts.push(buffer.subarray(0, n));
  }
  const all = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.length;
  }
  return all;
}

/** Removes every run file of `dir` (for an overwrite), leaving the lock. */
export async function clearRun(dir: string): Promise<void> {
  for (const name of await runFilesIn(dir)) {
    await Deno.remove(joinPath(dir, name), { recursive: true });
  }
}
