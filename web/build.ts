/**
 * `deno task build:web [--out DIR]`: the browser page as a static folder (default
 * `dist/web/`): `index.html`, `app.js` (the page's script and the library, one ES module)
 * and the WebAssembly files of tfjs's wasm backend. Put a model file beside them as
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

const bundle = await new Deno.Command(Deno.execPath(), {
  args: [
    "bundle",
    "--platform",
    "browser",
    "--format",
    "esm",
    "--minify",
    "-o",
    `${out}/app.js`,
    // Decoded: a checkout path with a space or a non-ASCII letter is percent-encoded in a URL.
    decodeURIComponent(new URL("app.ts", here).pathname),
  ],
  stdout: "inherit",
  stderr: "inherit",
}).output();
if (!bundle.success) {
  console.error("error: deno bundle failed (see above)");
  Deno.exit(1);
}
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
console.error(`wrote ${out}/: index.html, app.js, 2 wasm files (${(bytes / 1e6).toFixed(2)} MB)`);
