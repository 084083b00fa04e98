import fc from "fast-check";
import { absolutePath, checkWritableFolder, shownPath, writing } from "../lib/_io.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";

const MAIN = new URL("../cli/main.ts", import.meta.url).pathname;

const IO = new URL("../lib/_io.ts", import.meta.url).href;

Deno.test("writing() names the file of a failed write and says when the disk is full", async () => {
  // /dev/full answers every write with ENOSPC, as a full disk does. Deno lets only
  // --allow-all write to devices, so the write runs in a child process.
  const script = `
    import { writing } from "${IO}";
    try {
      await writing("/dev/full", () => Deno.writeFile("/dev/full", new Uint8Array(16)));
    } catch (e) {
      console.log(JSON.stringify({ name: e.constructor.name, message: e.message }));
    }`;
  const out = await new Deno.Command(Deno.execPath(), { args: ["eval", "-A", script] }).output();
  const { message } = JSON.parse(new TextDecoder().decode(out.stdout));
  assert(message.includes("/dev/full"), message);
  assert(message.includes("the disk is full"), message);
  assert(message.includes("--resume"), message);
  // Other errors keep their class and get the path, without the disk-full advice.
  const missing = await assertRejects(
    () => writing("no/such/folder/f", () => Deno.writeTextFile("no/such/folder/f", "x")),
    Deno.errors.NotFound,
    `writing no/such/folder/f (${Deno.cwd()}/no/such/folder/f)`,
  );
  assert(!missing.message.includes("disk is full"), missing.message);
});

Deno.test("absolutePath() resolves . and .. against the working folder (300 cases)", () => {
  const segment = fc.constantFrom("a", "b", "c d", ".", "..", "");
  fc.assert(
    fc.property(fc.array(segment, { maxLength: 8 }), fc.boolean(), (parts, rooted) => {
      const path = (rooted ? "/" : "") + parts.join("/");
      const absolute = absolutePath(path);
      assert(absolute.startsWith("/"), absolute);
      const segments = absolute.split("/").slice(1);
      assert(!segments.includes(".") && !segments.includes(".."), absolute);
      // The same walk done by hand: a stack of names, popped by "..".
      const stack = path.startsWith("/") ? [] : Deno.cwd().split("/").filter((s) => s !== "");
      for (const p of parts) {
        if (p === "..") stack.pop();
        else if (p !== "" && p !== ".") stack.push(p);
      }
      assertEquals(absolute, `/${stack.join("/")}`);
    }),
    { numRuns: 300 },
  );
  assertEquals(shownPath("/x/y"), "/x/y");
  assertEquals(shownPath("x"), `x (${Deno.cwd()}/x)`);
});

Deno.test("checkWritableFolder() refuses kernel file systems only", () => {
  for (const dir of ["/proc", "/proc/self/run", "/sys/x", "/dev/shm/../full", "/tmp/../proc/1"]) {
    assertThrows(() => checkWritableFolder(dir, "run folder"), RangeError, "kernel file system");
  }
  for (const dir of ["/procs", "/tmp/proc", "runs/proc", "/developer/x"]) {
    checkWritableFolder(dir, "run folder");
  }
});

/** Whether this process may mount a small tmpfs (root in a container that allows it). */
function canMount(): boolean {
  try {
    if (Deno.uid() !== 0) return false;
    const dir = Deno.makeTempDirSync();
    const mounted = new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", "size=64k", "t", dir] })
      .outputSync().success;
    if (mounted) new Deno.Command("umount", { args: [dir] }).outputSync();
    Deno.removeSync(dir);
    return mounted;
  } catch {
    return false;
  }
}

Deno.test({
  name: "train on a full disk stops with an error naming the file it could not write",
  ignore: !canMount(),
  fn: async () => {
    const disk = await Deno.makeTempDir();
    await new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", "size=96k", "t", disk] })
      .output();
    try {
      const args = ["run", "-A", MAIN, "train", "--backend", "cpu", "--out", `${disk}/run`];
      const tiny = ["--hidden", "16", "--heads", "1", "--inner", "16", "--epochs", "1"];
      const out = await new Deno.Command(Deno.execPath(), {
        args: [...args, ...tiny],
        env: { NO_COLOR: "1" },
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assertEquals(out.code, 1, stderr);
      const error = stderr.slice(stderr.lastIndexOf("error:"));
      assert(error.includes(`writing ${disk}/run/`), error);
      assert(error.includes("the disk is full"), error);
      assert(!stderr.includes("    at "), "a stack trace instead of a message");
    } finally {
      await new Deno.Command("umount", { args: [disk] }).output();
      await Deno.remove(disk, { recursive: true });
    }
  },
});
