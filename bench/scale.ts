/**
 * Scale on paper: what training and serving a model would take at a catalogue size, from
 * the models' actual parameter shapes (each model is built at two tiny catalogue sizes; the
 * item table is the only part that grows with the catalogue), and from one measured rate.
 *
 * ```sh
 * deno run -A bench/scale.ts                          # the docs' table
 * deno run -A bench/scale.ts --items 12101,1000000 --positions 131413 --gpu-tflops 17
 * ```
 *
 * Flags: `--models` (sasrec,sigma,diffurec), `--items` (catalogue sizes), `--positions`
 * (training target positions per epoch: 10M users x 10 by default), `--batch` (positions
 * per step, 12,800: 256 sequences of 50), `--gpu-tflops` (the rate a GPU sustains on the
 * full softmax's GEMMs: 17, measured on an H200 by `bench/torch_reference.py --device cuda`,
 * docs/performance.md), `--gpu-memory` (GiB, 141), `--token-bytes` (bytes per item token
 * in the model file's vocabulary, 12), `--history-tokens` (items a diffusion example reads
 * through its blocks: 8.88, Beauty's mean sequence length, DIFFUREC.md §1.1), `--link-gbs`
 * (GB/s each GPU moves in an all-reduce across machines: 50, a 400 Gb/s network port; an
 * assumption, not a measurement).
 *
 * Per row: parameters; model file size (float32 weights and the vocabulary); training state
 * (weights, gradients and Adam's two moments, float32); full-softmax logits of one step
 * (logits, their softmax and its gradient, float32; SIGMA scores every item once for
 * SGM-VAE and once per interest for MIE-VAE), and how many GPUs hold them when data
 * parallelism splits the step; the full softmax's GEMM work per epoch (forward and two
 * backward products of positions x items x d) in GPU hours at the given rate; and the rest
 * of the model's work per epoch, 6 FLOP per parameter outside the item table per token
 * read (a diffusion example reads its whole history), at the same rate: the floor a
 * sampled softmax leaves; and data parallelism's all-reduce of the dense gradients (the
 * whole item table every step: DistributedDataParallel averages every gradient, and Adam
 * here updates dense), bytes each GPU sends and receives per step (a ring all-reduce moves
 * about twice the gradients' size through every GPU) and the wall time of an epoch's worth
 * at `--link-gbs`.
 *
 * @module
 */
import { parseArgs } from "../cli/_args.ts";
import { positiveNumber } from "./_flags.ts";
import { selectBackend } from "../backends/mod.ts";
import { modelEntry } from "../lib/models/mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: { type: "string", default: "sasrec,sigma,diffurec" },
    items: { type: "string", default: "12101,100000,1000000,10000000" },
    positions: { type: "string", default: "100000000" },
    batch: { type: "string", default: "12800" },
    "gpu-tflops": { type: "string", default: "17" },
    "gpu-memory": { type: "string", default: "141" },
    "token-bytes": { type: "string", default: "12" },
    "history-tokens": { type: "string", default: "8.88" },
    "link-gbs": { type: "string", default: "50" },
  },
  strict: true,
});

const catalogues = values.items.split(",").map((t) => positiveNumber("items", t));
const positions = positiveNumber("positions", values.positions);
const batch = positiveNumber("batch", values.batch);
const tflops = positiveNumber("gpu-tflops", values["gpu-tflops"]);
const gpuBytes = positiveNumber("gpu-memory", values["gpu-memory"]) * 2 ** 30;
const tokenBytes = positiveNumber("token-bytes", values["token-bytes"]);
const historyTokens = positiveNumber("history-tokens", values["history-tokens"]);
const linkBytes = positiveNumber("link-gbs", values["link-gbs"]) * 1e9;

/**
 * Parameters at N items: the fixed part and d per item (item table rows), measured; how
 * many full-catalogue score sets a position makes; tokens a position reads.
 */
function parameterModel(
  name: string,
): { fixed: number; perItem: number; d: number; softmaxes: number; tokens: number } {
  const entry = modelEntry(name);
  const size = (numItems: number) => {
    const m = entry.create({ numItems });
    const n = m.params.size();
    m.params.dispose();
    return n;
  };
  const [a, b] = [size(10), size(20)];
  const perItem = (b - a) / 10;
  const softmaxes = name === "sigma" ? 1 + Number(entry.defaults.interests) : 1;
  const tokens = name.startsWith("diffurec") ? historyTokens : 1;
  return { fixed: a - 11 * perItem, perItem, d: Number(entry.defaults.hidden), softmaxes, tokens };
}

const human = (bytes: number) =>
  bytes >= 2 ** 40
    ? `${(bytes / 2 ** 40).toFixed(1)} TiB`
    : bytes >= 2 ** 30
    ? `${(bytes / 2 ** 30).toFixed(1)} GiB`
    : `${(bytes / 2 ** 20).toFixed(0)} MiB`;

await selectBackend("cpu");
console.log(
  `positions per epoch ${positions.toExponential(2)}, ${batch} per step, GPU at ${tflops} ` +
    `TFLOP/s on the softmax GEMMs with ${human(gpuBytes)}, all-reduce at ${linkBytes / 1e9} GB/s`,
);
console.log(
  "| model | items | parameters | model file | training state | softmax logits per step " +
    "| GPUs to hold them | full softmax per epoch | rest of the model per epoch " +
    "| all-reduce per step | all-reduce per epoch (wall) |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const name of values.models.split(",")) {
  const p = parameterModel(name);
  for (const n of catalogues) {
    const params = p.fixed + p.perItem * (n + 1);
    const file = params * 4 + (n + 1) * tokenBytes;
    const state = params * 4 * 4; // weights, gradients, Adam m and v
    const logits = batch * n * 4 * 3 * p.softmaxes; // logits, softmax, gradient
    const gpusForLogits = Math.max(1, Math.ceil(logits / (gpuBytes - state)));
    const fullFlop = 6 * positions * n * p.d * p.softmaxes; // forward, two backward GEMMs
    const restFlop = 6 * positions * p.tokens * p.fixed;
    const allReduce = 2 * params * 4; // a ring all-reduce through each GPU, float32
    const wall = (seconds: number) =>
      seconds >= 3600 ? `${(seconds / 3600).toFixed(1)} h` : `${(seconds / 60).toFixed(1)} min`;
    const gpuHours = (flop: number) => {
      const hours = flop / (tflops * 1e12) / 3600;
      return hours >= 1 ? `${hours.toFixed(1)} GPU-h` : `${(hours * 60).toFixed(1)} GPU-min`;
    };
    console.log(
      `| ${name} | ${n.toLocaleString("en")} | ${(params / 1e6).toFixed(1)}M | ${human(file)} | ` +
        `${human(state)} | ${human(logits)} | ${
          state > gpuBytes ? "state > 1 GPU" : gpusForLogits
        } | ` +
        `${gpuHours(fullFlop)} | ${gpuHours(restFlop)} | ${human(allReduce)} | ${
          wall(allReduce * (positions / batch) / linkBytes)
        } |`,
    );
  }
}
