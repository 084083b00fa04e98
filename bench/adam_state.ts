/**
 * Adam's second moments in a run's resumable state: per parameter, the largest and the
 * median `v`, and for the item table how many rows hold a `v` above `--frozen`. A `v`
 * far above the squared size of a parameter's usual gradient makes Adam's step
 * `m / sqrt(v)` vanish for as long as `v` takes to decay (by `beta2` = 0.999 a step:
 * ~2,300 steps per factor 10), so those parameters stop learning: what one huge gradient
 * (a KL term's exp of an unbounded log-variance) leaves behind.
 *
 * ```sh
 * deno run -A bench/adam_state.ts --run runs/i18-beauty/sigma-s42
 * deno run -A bench/adam_state.ts --run runs/i18-beauty/sigma-s42 --data ../shared/data/Beauty.txt
 * ```
 *
 * Flags: `--run DIR` (a run folder of `deno task train`; reads `DIR/state`, written after
 * every epoch), `--frozen` (1: the `v` above which an item row counts as frozen; a usual
 * item gradient's square is ~1e-6), `--data FILE` (the run's data set: also print the
 * share of its interactions that fall on the frozen rows), `--all` (every parameter; by
 * default the 12 with the largest `v`).
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import "./_flags.ts";
import { readCheckpoint } from "../lib/train/checkpoint.ts";
import { readDataset } from "../lib/data/files.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    run: { type: "string" },
    frozen: { type: "string", default: "1" },
    data: { type: "string" },
    all: { type: "boolean", default: false },
  },
  strict: true,
});
if (!flags.run) throw new TypeError("--run DIR is required: a run folder of deno task train");
const frozenAbove = Number(flags.frozen);
if (!(frozenAbove > 0)) throw new RangeError(`--frozen must be positive, got "${flags.frozen}"`);

const { meta, values, path } = await readCheckpoint(`${flags.run}/state`);
const offsets = new Map<string, { start: number; size: number; shape: number[] }>();
let offset = 0;
for (const p of meta.params) {
  const size = p.shape.reduce((a, b) => a * b, 1);
  offsets.set(p.name, { start: offset, size, shape: p.shape });
  offset += size;
}
const slice = (name: string) => {
  const at = offsets.get(name)!;
  return values.subarray(at.start, at.start + at.size);
};
const median = (xs: Float32Array) => {
  const sorted = Float32Array.from(xs).sort();
  return sorted[Math.floor(sorted.length / 2)];
};

const rows: { name: string; max: number; median: number }[] = [];
for (const p of meta.params) {
  if (p.name.startsWith("adam.")) continue;
  if (!offsets.has(`adam.v/${p.name}`)) continue;
  const v = slice(`adam.v/${p.name}`);
  let max = 0;
  for (const x of v) if (x > max) max = x;
  rows.push({ name: p.name, max, median: median(v) });
}
if (rows.length === 0) {
  throw new RangeError(`${path}: holds no Adam moments (adam.v/...): not a training state`);
}
rows.sort((a, b) => b.max - a.max);
const fmt = (x: number) => x.toPrecision(3).padStart(10);
console.log(`${path}: epoch ${meta.epoch}, Adam step ${meta.resume?.step ?? "?"}`);
console.log(`${"parameter".padEnd(28)} ${"v max".padStart(10)} ${"v median".padStart(10)}`);
for (const r of flags.all ? rows : rows.slice(0, 12)) {
  console.log(`${r.name.padEnd(28)} ${fmt(r.max)} ${fmt(r.median)}`);
}

if (offsets.has("adam.v/item")) {
  const { shape } = offsets.get("item")!;
  const [n, d] = shape;
  const v = slice("adam.v/item");
  const frozen: number[] = [];
  for (let row = 1; row < n; row++) {
    let max = 0;
    for (let j = 0; j < d; j++) max = Math.max(max, v[row * d + j]);
    if (max > frozenAbove) frozen.push(row);
  }
  let line = `item rows with v > ${frozenAbove}: ${frozen.length} of ${n - 1}`;
  if (flags.data) {
    // Rows are the run's item ids; count the file's interactions by item token.
    const data = await readDataset(flags.data);
    const counts = new Map<string, number>();
    let total = 0;
    for (const seq of data.sequences) {
      for (const item of seq) {
        const token = data.vocab.items[item];
        counts.set(token, (counts.get(token) ?? 0) + 1);
      }
      total += seq.length;
    }
    const onFrozen = frozen.reduce((sum, row) => sum + (counts.get(meta.itemTokens[row]) ?? 0), 0);
    line += `, ${(100 * onFrozen / total).toFixed(1)}% of the interactions in ${flags.data}`;
  }
  console.log(line);
}
