/**
 * The python3 that PyTorch comparisons run: the bench's reference step and the twins' tests.
 *
 * @module
 */

/** Where python3 may be: pip's on the PATH first, then Debian's (which `python3-torch` fills). */
const CANDIDATES = ["python3", "/usr/bin/python3"];

/**
 * The first python3 that imports torch, or why there is none (the last candidate's error),
 * for a caller that skips or prints a reason instead of failing.
 */
export async function findTorchPython(): Promise<{ python: string; missing: string }> {
  let why = "";
  for (const python of CANDIDATES) {
    try {
      const out = await new Deno.Command(python, {
        args: ["-c", "import torch"],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (out.success) return { python, missing: "" };
      why = `${python}: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()}`;
    } catch (e) {
      why = `${python}: ${(e as Error).message}`;
    }
  }
  return { python: "", missing: why || "no python3 found" };
}
