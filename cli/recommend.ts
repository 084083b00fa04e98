/**
 * `deno task recommend`: the top items for one history given on the command line, or for
 * every user of a sequence-lines file, written as JSON lines.
 *
 * @module
 */
import { writing } from "../lib/_io.ts";
import { parseArgs } from "./_args.ts";
import type { Recommender, RecommendOptions } from "../lib/inference/recommender.ts";
import { checkDiversityWeight } from "../lib/eval/diversify.ts";
import {
  BACKEND_OPTIONS,
  diversityFlags,
  flagsGiven,
  INFERENCE_OPTIONS,
  inferenceFlags,
  intFlag,
  numberFlag,
  progressWriter,
  startBackend,
  withFlagNames,
} from "./_flags.ts";
import { loadRecommender } from "./_model.ts";
import { readText } from "../lib/data/files.ts";
import { splitLines } from "../lib/data/_dense.ts";

/** The `recommend` lines of the CLI's usage. */
export const RECOMMEND_USAGE = [
  '  deno task recommend --model FILE|RUN_DIR|URL (--history "i1 i2 ..." | --input FILE) [options]',
];

/** The `recommend` options of the CLI's usage. */
export const RECOMMEND_OPTIONS = [
  "Recommend:",
  "  --model M         a model file (model.safetensors), a run folder, or a URL to a model file",
  "  --history H       one history, items oldest first, separated by spaces; prints the top k",
  "  --input FILE      sequence lines (user item item ...): one JSON line per user",
  "  --output FILE     where --input's JSON lines go (default, or -: stdout); a file is replaced",
  "                    whole at the end, a device or pipe is written in place",
  "  -k, --k N         how many items per history (default 10)",
  "  --exclude I       items never to recommend, separated by spaces",
  "  --keep-seen       may recommend items of the history (default: never)",
  "  --diversity W     trade relevance for variety, W >= 0 (default 0: the model's ranking);",
  "                    the best --diversity-pool items (default 100) are re-ranked",
  "  --diversity-method auto | mmr | interests: unlike item vectors (mmr; auto), or filling",
  "                    the list across the model's interests (SIGMA)",
  "  --batch-size N    histories scored per forward pass (default 256)",
  "  --backend, --threads, --blas: as for train (threads default: the logical CPUs)",
  "  --reverse-steps, --sampling, --eval-seed, --lambda: as for eval (DiffuRec, DiffuRecSys)",
];

/** Runs `recommend` with its arguments. */
export async function recommendCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      history: { type: "string" },
      input: { type: "string" },
      output: { type: "string" },
      k: { type: "string", short: "k" },
      exclude: { type: "string" },
      "keep-seen": { type: "boolean" },
      diversity: { type: "string" },
      "diversity-method": { type: "string" },
      "diversity-pool": { type: "string" },
      "batch-size": { type: "string" },
      ...BACKEND_OPTIONS,
      ...INFERENCE_OPTIONS,
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(["Usage:", ...RECOMMEND_USAGE, "", ...RECOMMEND_OPTIONS].join("\n"));
    return;
  }
  if (!values.model) throw new TypeError("recommend needs --model FILE|RUN_DIR|URL");
  if ((values.history === undefined) === (values.input === undefined)) {
    throw new TypeError("recommend needs exactly one of --history and --input");
  }
  if (values.output !== undefined && values.input === undefined) {
    throw new TypeError("--output goes with --input");
  }
  const options: RecommendOptions = {
    k: intFlag("k", values.k, 10),
    excludeSeen: !values["keep-seen"],
    exclude: values.exclude?.split(/\s+/).filter((t) => t) ?? [],
    ...diversityOptions(values),
  };
  const batchSize = intFlag("batch-size", values["batch-size"], 256);
  const inference = inferenceFlags(values);
  await startBackend(values);
  const model = values.model;
  const { recommender, from } = await withFlagNames(
    () => loadRecommender(model, { batchSize, inference }),
    flagsGiven(inference),
  );
  console.error(
    `model: ${recommender.model.name} over ${recommender.numItems} items, from ${from}`,
  );
  try {
    if (values.history !== undefined) {
      await printOne(recommender, values.history.split(/\s+/).filter((t) => t), options);
    } else {
      await recommendFile(recommender, values.input!, values.output, options, batchSize * 4);
    }
  } finally {
    recommender.dispose();
  }
}

async function printOne(r: Recommender, history: string[], options: RecommendOptions) {
  const { items, unknown } = await r.recommend(history, options);
  if (unknown.length > 0) console.error(`not in the model, skipped: ${unknown.join(" ")}`);
  if (history.length === unknown.length) {
    console.error("the history has no known item: these are the model's picks with no context");
  }
  const width = Math.max(4, ...items.map((i) => i.item.length));
  console.log(`rank  ${"item".padEnd(width)}  score`);
  items.forEach((x, i) => {
    console.log(`${String(i + 1).padStart(4)}  ${x.item.padEnd(width)}  ${x.score.toFixed(6)}`);
  });
}

/** Users and histories of a sequence-lines text, with each line's number for errors. */
function parseLines(text: string, path: string): { user: string; history: string[] }[] {
  const rows: { user: string; history: string[] }[] = [];
  const seen = new Map<string, number>();
  splitLines(text, path).forEach((raw, n) => {
    const line = raw.trim();
    if (line === "") return;
    const [user, ...history] = line.split(/\s+/);
    const first = seen.get(user);
    if (first !== undefined) {
      throw new SyntaxError(
        `${path}:${n + 1}: user "${user}" already has a history on line ${first}`,
      );
    }
    seen.set(user, n + 1);
    rows.push({ user, history });
  });
  return rows;
}

/**
 * Where `--output` goes. A regular file (or a new name) is written beside the target and
 * renamed over it at the end, so a failed run leaves no half file; through a link, the
 * link's target is replaced and the link stays. A device, FIFO or socket is written in
 * place: renaming over it would replace `/dev/full` or a pipe with a regular file.
 * `-` or no flag is stdout.
 */
async function outputTarget(
  output: string | undefined,
): Promise<{ kind: "stdout" } | { kind: "replace" | "in place"; path: string }> {
  if (output === undefined || output === "-") return { kind: "stdout" };
  if (output === "") throw new TypeError("--output is empty: name a file, or - for stdout");
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(output);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { kind: "replace", path: output };
    throw e;
  }
  if (info.isDirectory) {
    throw new Deno.errors.IsADirectory(`--output ${output} is a folder; name a file in it`);
  }
  if (!info.isFile) return { kind: "in place", path: output };
  const link = (await Deno.lstat(output)).isSymlink;
  return { kind: "replace", path: link ? await Deno.realPath(output) : output };
}

async function recommendFile(
  r: Recommender,
  input: string,
  output: string | undefined,
  options: RecommendOptions,
  chunk: number,
) {
  // The data readers' checks: a regular UTF-8 text file of bounded size.
  const text = await readText(input, "--input");
  const rows = parseLines(text, input);
  const target = await outputTarget(output);
  const tmp = target.kind === "replace" ? `${target.path}.tmp` : null;
  const file = tmp
    ? await writing(tmp, async () => {
      await Deno.remove(tmp).catch(() => {}); // a stale one (or a link by that name) goes
      return await Deno.open(tmp, { write: true, createNew: true });
    })
    : target.kind === "in place"
    ? await writing(target.path, () => Deno.open(target.path, { write: true }))
    : null;
  const where = tmp ?? (target.kind === "in place" ? target.path : null);
  const sink = file ?? Deno.stdout;
  const encoder = new TextEncoder();
  const say = progressWriter();
  const started = performance.now();
  let unknownTotal = 0;
  try {
    for (let at = 0; at < rows.length; at += chunk) {
      const part = rows.slice(at, at + chunk);
      const results = await r.recommendBatch(part.map((p) => p.history), options);
      const lines = results.map((res, i) => {
        unknownTotal += res.unknown.length;
        const line: Record<string, unknown> = { user: part[i].user, items: res.items };
        if (res.unknown.length > 0) line.unknown = res.unknown;
        return JSON.stringify(line) + "\n";
      });
      const bytes = encoder.encode(lines.join(""));
      const put = async () => {
        for (let off = 0; off < bytes.length;) off += await sink.write(bytes.subarray(off));
      };
      await (where ? writing(where, put, "") : put());
      const done = at + part.length;
      const seconds = (performance.now() - started) / 1000;
      const rate = done / seconds;
      say(
        `\rrecommend ${done}/${rows.length} users, ${rate.toFixed(0)} users/s, ETA ${
          ((rows.length - done) / rate).toFixed(0)
        }s`,
      );
    }
  } catch (e) {
    file?.close();
    if (tmp) await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  file?.close();
  if (tmp) await Deno.rename(tmp, (target as { path: string }).path);
  const seconds = (performance.now() - started) / 1000;
  say(
    `\rrecommended for ${rows.length} users in ${seconds.toFixed(1)}s` +
      (unknownTotal > 0 ? `; ${unknownTotal} history items not in the model were skipped` : "") +
      (target.kind !== "stdout" ? `; wrote ${output}` : "") + "\n",
  );
}

/** `--diversity`, `--diversity-method` and `--diversity-pool` as recommend options, checked. */
function diversityOptions(v: Record<string, unknown>): RecommendOptions {
  const flags = diversityFlags(v, "W");
  if (!flags) return {};
  return {
    diversity: checkDiversityWeight(numberFlag("diversity", v.diversity as string), "--diversity"),
    diversityMethod: flags.method,
    diversityPool: flags.pool,
  };
}
