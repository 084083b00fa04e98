/**
 * `serve` in a child process on an ephemeral loopback port, for the tests and benchmarks
 * that need a real server: starts it, waits until it listens, and keeps its log.
 *
 * @module
 */

const MAIN = new URL("./main.ts", import.meta.url).pathname;

/** A running `serve` child. */
export interface ServeChild {
  /** The child process (send it SIGTERM to stop it). */
  child: Deno.ChildProcess;
  /** The server's root URL, e.g. `http://127.0.0.1:41234/`. */
  base: string;
  /** The first line it logged: the backend it chose. */
  backendLine: string;
  /** Its whole stderr, once it has exited. */
  log: () => Promise<string>;
}

/**
 * Starts `main.ts serve --port 0 ...args` with `permissions` and resolves once it listens.
 *
 * @throws {Error} The server exited before listening (its log is in the message).
 */
export async function startServeChild(
  args: string[],
  permissions: string[] = ["--allow-read", "--allow-env", "--allow-sys", "--allow-net"],
): Promise<ServeChild> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, MAIN, "serve", "--port", "0", ...args],
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  let base = "";
  while (!base) {
    const { done, value } = await lines.read();
    if (done) throw new Error(`the server exited before listening:\n${log}`);
    log += value;
    base = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+\/)/)?.[1] ?? "";
  }
  // Keep reading, so that the child never blocks on a full pipe.
  const rest = (async () => {
    for (;;) {
      const { done, value } = await lines.read();
      if (done) return log;
      log += value;
    }
  })();
  return { child, base, backendLine: log.split("\n")[0], log: () => rest };
}
