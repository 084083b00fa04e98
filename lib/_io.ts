/**
 * File-system helpers of the Deno-only side (readers, trainer, checkpoints): paths shown
 * the way a user can find them, and write errors that name the file.
 *
 * @module
 */

/** Folders of kernel file systems: nothing a run writes can live there. */
const KERNEL_FOLDERS = ["/proc", "/sys", "/dev"];

/** `path` made absolute against the working folder (without touching the disk). */
export function absolutePath(path: string): string {
  if (path.startsWith("/")) return normalise(path);
  let cwd = "";
  try {
    cwd = Deno.cwd();
  } catch {
    return path; // no read permission for the working folder: show what was given
  }
  return normalise(`${cwd}/${path}`);
}

function normalise(path: string): string {
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return `/${parts.join("/")}`;
}

/**
 * `path` as messages show it: a relative path with its absolute form beside it, so that
 * "not found" says where the program looked.
 */
export function shownPath(path: string): string {
  if (path.startsWith("/")) return path;
  const absolute = absolutePath(path);
  return absolute === path ? path : `${path} (${absolute})`;
}

/**
 * Refuses a folder under `/proc`, `/sys` or `/dev` for a run's files. Deno would otherwise
 * answer "run again with the --allow-all flag", advice that cannot help.
 *
 * @throws {RangeError} The folder is empty (joined with a file name, "" names the
 * file-system root) or on a kernel file system.
 */
export function checkWritableFolder(dir: string, what: string): void {
  if (dir === "") {
    throw new RangeError(`${what} is empty (""): name a folder; "." is the working folder`);
  }
  const absolute = absolutePath(dir);
  const kernel = KERNEL_FOLDERS.find((k) => absolute === k || absolute.startsWith(`${k}/`));
  if (kernel) {
    throw new RangeError(
      `${what} ${shownPath(dir)} is under ${kernel}, a kernel file system that holds no ` +
        `files of ours; choose a folder on disk`,
    );
  }
}

/**
 * `name` inside the folder `dir`: `dir/name`, without doubling a trailing slash. Every run
 * file's path is made here, so that it lies in the folder the user named.
 *
 * @throws {RangeError} `dir` is empty: `"" + "/" + name` would be `/name`, in the root.
 */
export function joinPath(dir: string, name: string): string {
  if (dir === "") {
    throw new RangeError(`no folder given for ${name} (the folder's path is empty)`);
  }
  return dir.endsWith("/") ? `${dir}${name}` : `${dir}/${name}`;
}

/**
 * Runs `write`; an error it throws is rethrown (same class) naming `path`, and a full disk
 * says so. Deno's own message ("No space left on device (os error 28)") names no file.
 */
export async function writing<T>(
  path: string,
  write: () => Promise<T>,
  // What to do once space is freed; a run's writers continue with --resume.
  afterFull = "; training continues with --resume",
): Promise<T> {
  try {
    return await write();
  } catch (e) {
    if (!(e instanceof Error)) throw e;
    const full = /os error 28\b|No space left/.test(e.message)
      ? ` (the disk is full: free space and run again${afterFull})`
      : "";
    // Deno names some paths itself, but as given: a relative one gets its absolute form.
    if (!e.message.includes(path) || !path.startsWith("/")) {
      e.message += `: writing ${shownPath(path)}`;
    }
    e.message += full;
    throw e;
  }
}
