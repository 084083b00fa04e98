/**
 * The browser page's script: loads a model file by URL, chooses a backend (WebGPU, else
 * WebAssembly, else cpu) and recommends for the history a person types or picks. Built
 * into one ES module by `web/build.ts`.
 *
 * Query parameters: `model` (the model file's URL, relative to the page; default
 * `model.safetensors`), `backend` (`auto`, `webgpu`, `wasm` or `cpu`; default `auto`),
 * and `item` (repeated) with `k` to fill the form and recommend at once.
 *
 * @module
 */
import { Recommender, type RecommendResult, selectBackend } from "../mod.ts";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const query = new URLSearchParams(location.search);
const state = (s: string) => document.body.dataset.state = s;

function showError(message: string): void {
  $("error").textContent = message;
  // The list on screen belongs to an earlier history: never show it beside the error.
  $("results").hidden = true;
  $("unknown").textContent = "";
  state("error");
}

/**
 * The form's `k`: blank is the default 10; anything else must be a whole number (the
 * recommender names a bad one). A number box the browser could not parse reads as blank,
 * so that is refused here rather than taken as the default.
 */
function readK(): number {
  const box = $<HTMLInputElement>("k");
  if (box.validity.badInput) throw new RangeError("k must be a whole number");
  return box.value.trim() === "" ? 10 : Number(box.value);
}

/** The variety box: a weight >= 0, blank for 0 (the model's own ranking). */
function readDiversity(): number {
  const box = $<HTMLInputElement>("diversity");
  if (box.validity.badInput) throw new RangeError("variety must be a number >= 0");
  return box.value.trim() === "" ? 0 : Number(box.value);
}

let recommender: Recommender | undefined;

// Attached before anything loads: a submit before the model is ready would otherwise be
// the browser's own, reloading the page without its query.
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!recommender) return;
  state("working"); // what a script (or a test) waits on: "done" or "error" follows
  $("error").textContent = "";
  try {
    const items = $<HTMLTextAreaElement>("history").value.split("\n").map((s) => s.trim())
      .filter((s) => s);
    const excludeSeen = $<HTMLInputElement>("seen").checked;
    render(
      await recommender.recommend(items, { k: readK(), excludeSeen, diversity: readDiversity() }),
    );
    state("done");
  } catch (e) {
    showError((e as Error).message);
  }
});

/** Where the model came from, as the page says it: its file name, and its host if not ours. */
function modelSource(url: URL): string {
  if (url.protocol === "data:") return "a data: URL";
  const file = url.pathname.split("/").pop();
  return url.origin === location.origin ? `${file}` : `${file} on ${url.host}`;
}

function render(result: RecommendResult): void {
  $("unknown").textContent = result.unknown.length > 0
    ? `Not in the model, skipped: ${result.unknown.join(", ")}`
    : "";
  const rows = result.items.map(({ item, score }, i) => {
    const tr = document.createElement("tr");
    tr.dataset.item = item;
    tr.dataset.score = String(score);
    for (const [text, cls] of [[String(i + 1), ""], [item, ""], [score.toFixed(4), "score"]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  });
  $("results").querySelector("tbody")!.replaceChildren(...rows);
  $("results").hidden = false;
}

async function main(): Promise<void> {
  state("loading");
  const choice = (query.get("backend") ?? "auto") as "auto" | "webgpu" | "wasm" | "cpu";
  // The wasm files sit beside this script (web/build.ts copies them there).
  const chosen = await selectBackend(choice, { wasmPaths: new URL("./", import.meta.url).href });
  $("backend").textContent = `backend: ${chosen.name} (${chosen.reason})`;
  const modelUrl = new URL(query.get("model") ?? "model.safetensors", location.href);
  const megabytes = (n: number) => (n / 1e6).toFixed(1);
  const loaded = await Recommender.load(modelUrl, {
    onLoadProgress: (n, total) => {
      $("model").textContent = `downloading the model: ${megabytes(n)}` +
        (total === undefined ? " MB" : ` of ${megabytes(total)} MB`);
    },
  });
  $("model").textContent = `${loaded.model.name} over ${loaded.numItems} items, ` +
    `from ${modelSource(modelUrl)}`;
  const picker = $<HTMLDataListElement>("catalogue");
  picker.replaceChildren(
    ...loaded.items.slice(1).map((item) => {
      const option = document.createElement("option");
      option.value = item;
      return option;
    }),
  );
  const history = $<HTMLTextAreaElement>("history");
  $("add").addEventListener("click", () => {
    const pick = $<HTMLInputElement>("pick");
    if (pick.value) {
      history.value += (history.value && !history.value.endsWith("\n") ? "\n" : "") + pick.value;
    }
    pick.value = "";
  });
  recommender = loaded;
  state("ready");
  if (query.getAll("item").length > 0) {
    history.value = query.getAll("item").join("\n");
    if (query.get("k")) $<HTMLInputElement>("k").value = query.get("k")!;
    if (query.get("diversity")) $<HTMLInputElement>("diversity").value = query.get("diversity")!;
    $<HTMLFormElement>("form").requestSubmit();
  }
}

main().catch((e) => showError(`could not start: ${(e as Error).message}`));
