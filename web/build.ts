/**
 * `deno task build:web [--out DIR]`: the browser page as a static folder (default
 * `dist/web/`): `index.html`, `app.js` (the page's script and the library, one ES module),
 * `inference.js` (the inference API alone, for a page or an edge runtime of one's own:
 * `web/inference.ts`) and the WebAssembly files of tfjs's wasm backend. Put a model file beside them as
 * `model.safetensors`, or pass `?model=URL` to the page.
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { out: { type: "string", default: "dist/web" } },
  strict: true,
});
const here = new URL("./", import.meta.url);
const out = values.out.replace(/\/+$/, "");
await Deno.mkdir(out, { recursive: true });

/**
 * tfjs-core picks its Node.js platform wherever a `process` global with a Node version
 * exists, and that platform reads `TextEncoder` from Node's `util` module, which a browser
 * bundle leaves out: imported by Node, or by an edge runtime that defines `process`, the
 * bundle stopped at load (`this.util.TextEncoder is not a constructor`). These bundles are
 * for the web platform, so the choice is made explicit: tfjs's "Node unless a browser" line
 * becomes "the browser platform unless already chosen", which needs only the standard APIs
 * (`fetch`, `TextEncoder`, `performance`). The line is found in the minified output; if a
 * tfjs release changes it, the build stops and says so rather than ship the old crash.
 */
function webPlatformOnly(code: string, file: string): string {
  const node =
    /([\w$]+)\(\)\.get\("IS_NODE"\)&&!\1\(\)\.get\("IS_BROWSER"\)&&\1\(\)\.setPlatform\("node",new [\w$]+\);/;
  const found = code.match(node);
  const browser = code.match(/setPlatform\("browser",new ([\w$]+)\)/);
  if (!found || !browser) {
    throw new Error(
      `${file}: tfjs's platform selection was not found in the bundle (a new tfjs release?): ` +
        "cannot make the web platform explicit",
    );
  }
  const env = found[1];
  return code.replace(
    node,
    `${env}().get("IS_BROWSER")||${env}().setPlatform("browser",new ${browser[1]});`,
  );
}

/** Bundles `entry` (a file of this folder) into `${out}/${name}`, web platform only. */
async function bundle(entry: string, name: string): Promise<void> {
  const made = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--platform",
      "browser",
      "--format",
      "esm",
      "--minify",
      "-o",
      `${out}/${name}`,
      // Decoded: a checkout path with a space or a non-ASCII letter is percent-encoded.
      decodeURIComponent(new URL(entry, here).pathname),
    ],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!made.success) {
    console.error(`error: deno bundle of ${entry} failed (see above)`);
    Deno.exit(1);
  }
  const path = `${out}/${name}`;
  try {
    await Deno.writeTextFile(path, webPlatformOnly(await Deno.readTextFile(path), path));
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}

await bundle("app.ts", "app.js");
await bundle("inference.ts", "inference.js");
await Deno.copyFile(new URL("index.html", here), `${out}/index.html`);
// The bundle installed the npm packages into node_modules/ (deno.json: nodeModulesDir auto).
const wasmOut = new URL("../node_modules/@tensorflow/tfjs-backend-wasm/wasm-out/", here);
for (const file of ["tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm"]) {
  try {
    await Deno.copyFile(new URL(file, wasmOut), `${out}/${file}`);
  } catch (e) {
    console.error(`error: cannot copy ${file} from ${wasmOut.pathname}: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
let bytes = 0;
for await (const entry of Deno.readDir(out)) {
  bytes += (await Deno.stat(`${out}/${entry.name}`)).size;
}
console.error(
  `wrote ${out}/: index.html, app.js, inference.js, 2 wasm files (${(bytes / 1e6).toFixed(2)} MB)`,
);
