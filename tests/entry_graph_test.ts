import { assert, assertEquals } from "./_assert.ts";

const ROOT = new URL("../", import.meta.url);

/** The modules of `entry`'s import graph, as `deno info --json` lists them. */
async function graph(entry: string) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL(entry, ROOT).pathname],
    env: { NO_COLOR: "1" },
  }).output();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules: {
      specifier: string;
      dependencies?: { specifier: string; code?: { specifier: string } }[];
    }[];
  };
}

/** What in `source` only Deno (or Node) offers: `Deno.` members, FFI, `node:` imports. */
function denoOnly(source: string): string[] {
  const found: string[] = [];
  // Comments may name Deno APIs; only code counts.
  const code = source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:])\/\/.*$/gm, "$1");
  for (const m of code.matchAll(/\bDeno\s*\.\s*\w+/g)) found.push(m[0]);
  for (const m of code.matchAll(/["']node:[\w/]+["']/g)) found.push(m[0]);
  if (/\bdlopen\b/.test(code)) found.push("dlopen");
  return found;
}

Deno.test("the inference entry's import graph uses no Deno API, no FFI and no node: module", async () => {
  const info = await graph("mod.ts");
  const local = info.modules.filter((m) => m.specifier.startsWith(ROOT.href));
  assert(local.length > 20, `only ${local.length} local modules in the graph`);
  const offenders: string[] = [];
  const packages = new Set<string>();
  for (const m of local) {
    const found = denoOnly(await Deno.readTextFile(new URL(m.specifier)));
    if (found.length > 0) {
      offenders.push(`${m.specifier.slice(ROOT.href.length)}: ${found.join(", ")}`);
    }
    for (const d of m.dependencies ?? []) {
      const target = d.code?.specifier ?? d.specifier;
      if (target.startsWith("node:")) offenders.push(`${m.specifier}: imports ${target}`);
      if (target.startsWith("npm:")) packages.add(target.replace(/^npm:\/?/, ""));
    }
  }
  assertEquals(offenders, []);
  const names = [...packages];
  assert(names.some((p) => p.startsWith("@tensorflow/tfjs-core@")), names.join(", "));
  // The umbrella package (layers, converter, data, webgl) is not needed to serve.
  assertEquals(names.filter((p) => p.startsWith("@tensorflow/tfjs@")), []);
});

Deno.test("the graph check sees Deno-only code where it is: train.ts reaches the file system and FFI", async () => {
  const info = await graph("train.ts");
  const found = new Set<string>();
  for (const m of info.modules.filter((m) => m.specifier.startsWith(ROOT.href))) {
    for (const f of denoOnly(await Deno.readTextFile(new URL(m.specifier)))) found.add(f);
  }
  for (const api of ["Deno.readTextFile", "Deno.dlopen", '"node:os"']) {
    assert(found.has(api), `${api} not found in train.ts's graph: ${[...found].join(", ")}`);
  }
  // Training registers its own gradients (backends/_gradients.ts), not the umbrella's.
  const umbrella = info.modules.flatMap((m) => m.dependencies ?? [])
    .map((d) => d.code?.specifier ?? d.specifier)
    .filter((s) => s.startsWith("npm:@tensorflow/tfjs@") || s.startsWith("npm:/@tensorflow/tfjs@"));
  assertEquals(umbrella, []);
});

Deno.test("the browser type-check config pins the same packages as deno.json", async () => {
  const root = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const web = JSON.parse(await Deno.readTextFile(new URL("web/deno.check.json", ROOT)));
  assertEquals(web.imports, root.imports);
  assert(
    !web.compilerOptions.lib.some((l: string) => l.startsWith("deno")),
    web.compilerOptions.lib,
  );
});
