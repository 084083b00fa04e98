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
  state("error");
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
  const recommender = await Recommender.load(modelUrl);
  $("model").textContent = `${recommender.model.name} over ${recommender.numItems} items, ` +
    `from ${modelUrl.pathname.split("/").pop()}`;
  const picker = $<HTMLDataListElement>("catalogue");
  picker.replaceChildren(
    ...recommender.items.slice(1).map((item) => {
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
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("error").textContent = "";
    try {
      const items = history.value.split("\n").map((s) => s.trim()).filter((s) => s);
      const k = Number($<HTMLInputElement>("k").value);
      const excludeSeen = $<HTMLInputElement>("seen").checked;
      render(await recommender.recommend(items, { k, excludeSeen }));
      state("done");
    } catch (e) {
      showError((e as Error).message);
    }
  });
  state("ready");
  if (query.getAll("item").length > 0) {
    history.value = query.getAll("item").join("\n");
    if (query.get("k")) $<HTMLInputElement>("k").value = query.get("k")!;
    $<HTMLFormElement>("form").requestSubmit();
  }
}

main().catch((e) => showError(`could not start: ${(e as Error).message}`));
