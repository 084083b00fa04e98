/**
 * The page `GET /` serves: a person types a history, one item per line, and sees the
 * recommendations with their scores. A link can carry the history: `/?item=a&item=b&k=5`. Self-contained (no external scripts or styles), and
 * it talks to the same server's `/health` and `/recommend`.
 *
 * @module
 */

/** The HTML of the page. */
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sigma-rec: recommendations</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  #model { color: #666; margin-top: 0; }
  textarea { width: 100%; min-height: 8rem; font: 14px ui-monospace, monospace; }
  .row { display: flex; gap: 1rem; align-items: center; margin: .6rem 0; }
  button { padding: .4rem 1.2rem; }
  table { border-collapse: collapse; width: 100%; margin-top: 1rem; }
  td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #ddd; }
  td.score { font-family: ui-monospace, monospace; text-align: right; }
  #error { color: #b00; white-space: pre-wrap; }
  #unknown { color: #a60; }
</style>
</head>
<body>
<h1>Recommendations</h1>
<p id="model">loading model details…</p>
<form id="form" novalidate>
  <label for="history">History, oldest first, one item per line:</label>
  <textarea id="history" spellcheck="false"></textarea>
  <div class="row">
    <label>Top <input id="k" type="number" min="1" max="1000" value="10" style="width:5rem"></label>
    <label><input id="seen" type="checkbox" checked> hide items already in the history</label>
    <label title="0: the model's ranking; higher trades relevance for variety">Variety <input id="diversity" type="number" min="0" step="0.1" value="0" style="width:4rem"></label>
    <button type="submit">Recommend</button>
  </div>
</form>
<p id="unknown"></p>
<p id="error"></p>
<table id="results" hidden>
  <thead><tr><th>#</th><th>item</th><th style="text-align:right">score</th></tr></thead>
  <tbody></tbody>
</table>
<script type="module">
const $ = (id) => document.getElementById(id);
const base = new URL(".", location.href);
fetch(new URL("health", base)).then((r) => r.json()).then((h) => {
  $("model").textContent = h.model + " over " + h.items + " items, on the " + h.backend + " backend";
}).catch((e) => { $("model").textContent = "health check failed: " + e; });
// A link can carry a history: ?item=a&item=b&k=5 fills the form and asks at once.
const query = new URLSearchParams(location.search);
if (query.getAll("item").length) {
  $("history").value = query.getAll("item").join("\\n");
  if (query.get("k")) $("k").value = query.get("k");
  if (query.get("diversity")) $("diversity").value = query.get("diversity");
  queueMicrotask(() => $("form").requestSubmit());
}
// Only the latest request's answer is shown: an earlier one may arrive after it.
let latest = 0;
function showError(message) {
  $("results").hidden = true;
  $("unknown").textContent = "";
  $("error").textContent = message;
}
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const asked = ++latest;
  $("error").textContent = "";
  const history = $("history").value.split("\\n").map((s) => s.trim()).filter((s) => s);
  const box = $("k");
  if (box.validity.badInput) return showError("k must be a whole number");
  // Blank is the server's default; a bad number is the server's to name (a 400).
  const k = box.value.trim() === "" ? {} : { k: Number(box.value) };
  const variety = $("diversity");
  if (variety.validity.badInput) return showError("variety must be a number >= 0");
  const diversity = variety.value.trim() === "" ? {} : { diversity: Number(variety.value) };
  const body = { history, ...k, excludeSeen: $("seen").checked, ...diversity };
  let response, answer;
  try {
    response = await fetch(new URL("recommend", base), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = (response.headers.get("content-type") ?? "").includes("application/json");
    answer = json ? await response.json() : null;
  } catch (e) {
    if (asked === latest) showError("the server did not answer: " + e.message);
    return;
  }
  if (asked !== latest) return;
  if (!response.ok || answer === null) {
    return showError(answer?.error ?? "the server answered " + response.status + " " + response.statusText);
  }
  $("unknown").textContent = "";
  if (answer.unknown.length) $("unknown").textContent = "Not in the model, skipped: " + answer.unknown.join(", ");
  const rows = $("results").querySelector("tbody");
  rows.replaceChildren(...answer.items.map((x, i) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of [[String(i + 1)], [x.item], [x.score.toFixed(4), "score"]]) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
  $("results").hidden = false;
});
</script>
</body>
</html>
`;
