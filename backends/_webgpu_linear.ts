/**
 * WGSL programs for `fusedLinears` of `lib/nn/fused_ops.ts`, registered for the webgpu
 * backend: up to three linear layers of one input, `y_i = x w_i + b_i`, forward in one
 * dispatch and backward in one (`dx = Σ dy_i w_iᵀ`, every `dw_i = xᵀ dy_i` and every
 * `db_i = Σ_rows dy_i`).
 *
 * Why: a linear layer through tfjs's ops is a fused matmul forward and two matmuls and a
 * column sum backward, and an attention's three projections of the same input add two more
 * `Add`s for `dx`: 14 dispatches where these programs take 2 (and a dropout on a layer's
 * output two more, here none). On a GPU a dispatch's fixed
 * cost, not its arithmetic, is most of a small matmul's time (docs/performance.md).
 *
 * How: every program is a list of tile products, each a region of the dispatch's
 * workgroups; a workgroup finds its region and its 32 x 32 output tile from its flat index,
 * then runs a shared-memory tiled product: per step of 16 along the summed axis its 64
 * threads load the two operands' 32 x 16 tiles (8 elements each, in the operand's memory
 * order, so that neighbouring threads read neighbouring addresses), a barrier, then each
 * thread adds 16 steps into its 4 x 4 outputs, a barrier. The bias gradient is summed by
 * the weight gradient's first row of tiles from the `dy` tiles it loads anyway. A layer's
 * dropout is applied in the forward store (`(acc + b) * mask`) and to `dy` as it is loaded
 * backward, its Philox mask recomputed from the seed (`_webgpu_dropout.ts`'s WGSL). Sums
 * run in a fixed order: results do not change from run to run.
 *
 * Why not tfjs's matmul: its programs have one output and one product; these put three
 * products and their bias and dropout work in one dispatch. On llvmpipe they are about as
 * fast as tfjs's per product; on a real GPU, where a dispatch's fixed cost dominates at
 * these sizes, they are unmeasured (no GPU was lent: docs/performance.md).
 *
 * The region is decided by thread 0 and read back by `workgroupUniformLoad`: tfjs keeps the
 * workgroup id in a private variable, which WGSL's uniformity analysis treats as
 * non-uniform, and the tile loop's barriers must be in uniform control flow (Chrome's
 * compiler enforces it). More outputs than tfjs's one come by the trick
 * `backends/_webgpu_fused.ts` documents (made here, bound as inputs, declared again
 * writable).
 *
 * Bindings: the forward program binds `1 + 3n` storage buffers and the backward `2 + 4n`
 * (one more with an addend, one more per activated layer): a device with fewer storage
 * buffers per stage than a group of layers needs gets the layers in smaller groups, the
 * input gradient carried from group to group as the addend.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  type Info,
  int,
  type ProgramUniform,
  type WebGpuBackend as Backend,
  type WebGpuProgram,
} from "./_webgpu_program.ts";
import { PHILOX_WGSL } from "./_webgpu_dropout.ts";
import { ACTIVATIONS_WGSL } from "./_webgpu_fused.ts";
import {
  LINEAR_ACT_KERNEL,
  type LinearActivationName,
  type LinearsAttrs,
  linearsGradKernelName,
  linearsKernelName,
  MAX_SHARED_LINEARS,
} from "../lib/nn/fused_ops.ts";

/** The side of a square output tile. */
const TILE = 32;
/** Threads per workgroup, 8 x 8; each computes 4 x 4 outputs of the tile. */
const THREADS = 64;
/** The step along the summed axis: each operand's tile in workgroup memory is 32 x 16. */
const STEP = 16;

/**
 * One operand of a tile product, a logical matrix read from a buffer: `index(p, q)` is
 * the WGSL index of its element at row `p`, column `q`; `alongRows` says that memory runs
 * along its rows (a transposed view), so the load swaps the threads' roles.
 */
interface Operand {
  buffer: string;
  index: (p: string, q: string) => string;
  /** The WGSL factor an element read at flat index `i` is multiplied by (a dropout mask). */
  factor?: (i: string) => string;
  rows: string;
  cols: string;
  alongRows: boolean;
}

/** One product `A B` added into a tile: `A` `[R, K]`, `B` `[K, C]`. */
interface Term {
  a: Operand;
  b: Operand;
  /** Also sum `B`'s rows into `sigmaBias` (in the first row of tiles): a bias gradient. */
  sumB?: boolean;
}

/** The WGSL statement that sets `target` to the operand's element (p, q). */
function read(o: Operand, target: string, p: string, q: string): string {
  const at = o.index(p, q);
  return o.factor
    ? `let at = ${at}; ${target} = ${o.buffer}[at] * ${o.factor("at")};`
    : `${target} = ${o.buffer}[${at}];`;
}

/**
 * The WGSL that adds the terms' products into the thread's 4 x 4 outputs `acc` of the tile
 * `(tm, tn)`: rows `tm * 32 + ty + 8 i`, columns `tn * 32 + tx + 8 j` (neighbouring threads,
 * neighbouring columns). Per step of 16 along the summed axis, the 64 threads load the
 * 32 x 16 tile of A and the 16 x 32 tile of B, 8 elements each, in the operand's memory
 * order (neighbouring threads, neighbouring addresses).
 */
function termsWgsl(terms: Term[]): string {
  return terms.map(({ a, b, sumB }) => {
    // Element e (0..511) of A's tile is (r, k) = (e / 16, e % 16), or along rows
    // (e % 32, e / 32); B's is (k, c) = (e / 32, e % 32), or along rows (e % 16, e / 16).
    const [ar, ak] = a.alongRows ? ["e % 32", "e / 32"] : ["e / 16", "e % 16"];
    const [bk, bc] = b.alongRows ? ["e % 16", "e / 16"] : ["e / 32", "e % 32"];
    return `
    for (var k0 = 0; k0 < ${a.cols}; k0 += ${STEP}) {
      for (var s = 0; s < 8; s++) {
        let e = tid + ${THREADS} * s;
        let ar = ${ar};
        let ak = ${ak};
        let p = tm * ${TILE} + ar;
        let q = k0 + ak;
        var v = 0.0;
        if (p < ${a.rows} && q < ${a.cols}) { ${read(a, "v", "p", "q")} }
        sigmaA[ar * ${STEP} + ak] = v;
        let bk = ${bk};
        let bc = ${bc};
        let k = k0 + bk;
        let c = tn * ${TILE} + bc;
        var w = 0.0;
        if (k < ${b.rows} && c < ${b.cols}) { ${read(b, "w", "k", "c")} }
        sigmaB[bk * ${TILE} + bc] = w;
      }
      workgroupBarrier();
      for (var kk = 0; kk < ${STEP}; kk++) {
        var av : array<f32, 4>;
        var bv : array<f32, 4>;
        for (var i = 0; i < 4; i++) {
          av[i] = sigmaA[(ty + 8 * i) * ${STEP} + kk];
          bv[i] = sigmaB[kk * ${TILE} + tx + 8 * i];
        }
        for (var i = 0; i < 4; i++) {
          for (var j = 0; j < 4; j++) {
            acc[i * 4 + j] += av[i] * bv[j];
          }
        }${
      sumB
        ? `
        if (tm == 0 && ty == 0) {
          for (var j = 0; j < 4; j++) { sigmaBias[j] += bv[j]; }
        }`
        : ""
    }
      }
      workgroupBarrier();
    }`;
  }).join("");
}

/**
 * The WGSL that stores the thread's outputs: `store(row, col, i, j)` is the statement for
 * output `acc[i * 4 + j]` at `(row, col)`, run where both are inside `rows` x `cols`.
 */
function storeWgsl(rows: string, cols: string, store: string): string {
  return `
        for (var i = 0; i < 4; i++) {
          for (var j = 0; j < 4; j++) {
            let row = tm * ${TILE} + ty + 8 * i;
            let col = tn * ${TILE} + tx + 8 * j;
            if (row < ${rows} && col < ${cols}) {
              ${store}
            }
          }
        }`;
}

/** One region of a program: its output tile grid and the WGSL that fills a tile. */
interface Region {
  rows: number;
  cols: number;
  body: string;
}

/**
 * A program of tile-product regions: thread 0 finds the workgroup's region and tile, every
 * thread reads them uniformly, the region's body runs. `names` are the inputs (tfjs's
 * read-only bindings, in order); `extra` the names among them that are outputs.
 */
class TileProgram implements WebGpuProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [THREADS, 1, 1];
  uniforms: string;
  private extra: string[];
  private regions: Region[];
  private uniformNames: string[];
  private activations: boolean;

  constructor(
    key: string,
    names: string[],
    extra: string[],
    outputShape: number[],
    uniformNames: string[],
    regions: Region[],
    activations = false,
  ) {
    this.activations = activations;
    this.variableNames = names;
    this.extra = extra;
    this.outputShape = outputShape;
    this.regions = regions;
    this.uniformNames = uniformNames;
    this.shaderKey = key;
    // Uniforms are i32 unless named `name:type`.
    const fields = [...uniformNames];
    regions.forEach((_, r) => fields.push(`tileStart${r}`, `tileCols${r}`));
    fields.push("tiles");
    this.uniforms = fields.map((f) => {
      const [name, type] = f.split(":");
      return `${name} : ${type ?? "i32"},`;
    }).join(" ");
    this.dispatch = [tileCount(regions), 1, 1];
  }

  /** The uniforms' values after the program's own: each region's first tile and width. */
  tileUniforms(): ProgramUniform[] {
    const values: ProgramUniform[] = [];
    let start = 0;
    for (const region of this.regions) {
      const cols = Math.ceil(region.cols / TILE);
      values.push(int(start), int(cols));
      start += Math.ceil(region.rows / TILE) * cols;
    }
    values.push(int(start));
    return values;
  }

  getUserCode(): string {
    const extraDecls = this.extra.map((name) => {
      const binding = 1 + this.variableNames.indexOf(name);
      return `@group(0) @binding(${binding}) var<storage, read_write> ${name}W : array<f32>;`;
    });
    const find = this.regions.map((_, r) =>
      r === 0 ? "" : `if (w >= uniforms.tileStart${r}) { r = ${r}; }`
    ).join("\n      ");
    const starts = this.regions.map((_, r) => `uniforms.tileStart${r}`).join(", ");
    const widths = this.regions.map((_, r) => `uniforms.tileCols${r}`).join(", ");
    const cases = this.regions.map((region, r) => `
      case ${r}: {${region.body}
      }`).join("");
    return `
  ${extraDecls.join("\n  ")}
  ${PHILOX_WGSL}
  ${this.activations ? ACTIVATIONS_WGSL : ""}
  // The dropout mask's value at flat index i (dropout.ts): scale where kept, else 0.
  fn sigmaKeep(i : i32, seed : u32, threshold : u32, scale : f32) -> f32 {
    let words = sigmaPhilox(u32(i) >> 1u, seed);
    let word = select(words.x, words.y, (u32(i) & 1u) == 1u);
    return select(0.0, scale, word >= threshold);
  }
  var<workgroup> sigmaA : array<f32, ${TILE * STEP}>;
  var<workgroup> sigmaB : array<f32, ${TILE * STEP}>;
  var<workgroup> sigmaTask : vec4<i32>;
  fn main(index : i32) {
    if (localIndex == 0u) {
      let w = i32((workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x +
        workgroupId.x);
      var r = 0;
      ${find}
      var starts = array<i32, ${this.regions.length}>(${starts});
      var widths = array<i32, ${this.regions.length}>(${widths});
      let t = w - starts[r];
      // Workgroups of a folded dispatch past the last tile: region -1, nothing to do.
      sigmaTask = select(vec4<i32>(-1, 0, 0, 0), vec4<i32>(r, t / widths[r], t % widths[r], 0),
        w < uniforms.tiles);
    }
    let task = workgroupUniformLoad(&sigmaTask);
    let tm = task.y;
    let tn = task.z;
    let tid = i32(localIndex);
    let ty = tid / 8;
    let tx = tid % 8;
    var acc : array<f32, 16>;
    var sigmaBias : array<f32, 4>;
    switch task.x {${cases}
      default: {}
    }
  }`;
  }

  /** The uniforms' names, as the program's own values must be given (in this order). */
  ownUniforms(): string[] {
    return this.uniformNames;
  }
}

function tileCount(regions: Region[]): number {
  return regions.reduce(
    (n, r) => n + Math.ceil(r.rows / TILE) * Math.ceil(r.cols / TILE),
    0,
  );
}

/** The mask factor of layer `i`'s dropout, from its uniforms. */
const maskOf = (i: number) => (at: string) =>
  `sigmaKeep(${at}, bitcast<u32>(uniforms.seed${i}), bitcast<u32>(uniforms.threshold${i}), uniforms.scale${i})`;

/** Layer `i`'s dropout uniforms (declared where a layer has dropout). */
const dropoutUniforms = (masked: boolean[]) =>
  masked.flatMap((m, i) => m ? [`seed${i}`, `threshold${i}`, `scale${i}:f32`] : []);

/** The WGSL function of an activation (`ACTIVATIONS_WGSL`), or of its derivative. */
const actFn = (act: LinearActivationName, grad = false) =>
  `sigmaAct${{ gelu: "Gelu", geluTanh: "GeluTanh", silu: "Silu" }[act]}${grad ? "Grad" : ""}`;

/**
 * The factor layer `i`'s `dy` is read with backward: an activated layer's saved slope
 * `slope${i}` (its dropout mask times the activation's derivative, written by the forward
 * pass: one load instead of an erf and a Philox per read), else its dropout mask.
 */
function dyFactor(
  i: number,
  masked: boolean,
  act: LinearActivationName | null,
): ((at: string) => string) | undefined {
  if (act) return (at) => `slope${i}[${at}]`;
  return masked ? maskOf(i) : undefined;
}

/** Row-major `[rows, cols]` matrix `buffer`, read as it is. */
const plain = (buffer: string, rows: string, cols: string): Operand => ({
  buffer,
  rows,
  cols,
  index: (p, q) => `${p} * ${cols} + ${q}`,
  alongRows: false,
});

/** The transpose of row-major `[cols, rows]` matrix `buffer`, `[rows, cols]`. */
const transposed = (buffer: string, rows: string, cols: string): Operand => ({
  buffer,
  rows,
  cols,
  index: (p, q) => `${q} * ${rows} + ${p}`,
  alongRows: true,
});

/**
 * `y_i = act_i(x w_i + b_i) * mask_i`: region `i` is layer `i`'s output; `y_0` is the
 * program's output, the others and each activated layer's slope `mask_i * act_i'(x w_i +
 * b_i)` (what its gradient multiplies `dy_i` by) are extra outputs.
 */
function forwardProgram(
  n: number,
  rows: number,
  outs: number[],
  masked: boolean[],
  acts: (LinearActivationName | null)[],
  residuals: boolean[],
): TileProgram {
  const names = ["x"];
  for (let i = 0; i < n; i++) {
    names.push(`w${i}`, `b${i}`);
    if (residuals[i]) names.push(`r${i}`);
  }
  const extra = Array.from({ length: n - 1 }, (_, i) => `y${i + 1}`);
  acts.forEach((act, i) => act && extra.push(`slope${i}`));
  const regions = outs.map((out, i): Region => {
    const o = `uniforms.out${i}`;
    const target = i === 0 ? "result" : `y${i}W`;
    const act = acts[i];
    const value = act ? `${actFn(act)}(v)` : "v";
    const mask = masked[i] ? maskOf(i)("at") : "1.0";
    const add = residuals[i] ? `r${i}[at] + ` : "";
    const store = act
      ? `let at = row * ${o} + col;
              let v = acc[i * 4 + j] + b${i}[col];
              let m = ${mask};
              slope${i}W[at] = m * ${actFn(act, true)}(v);
              ${target}[at] = ${add}${value} * m;`
      : `let at = row * ${o} + col;
              let v = acc[i * 4 + j] + b${i}[col];
              ${target}[at] = ${add}${masked[i] ? `${value} * ${mask}` : value};`;
    return {
      rows,
      cols: out,
      body: `${
        termsWgsl([{
          a: plain("x", "uniforms.rows", "uniforms.inDim"),
          b: plain(`w${i}`, "uniforms.inDim", o),
        }])
      }${storeWgsl("uniforms.rows", o, store)}`,
    };
  });
  return new TileProgram(
    `sigmaLinears_${n}_${masked.map(Number).join("")}_${acts.map((a) => a ?? "-").join(",")}_${
      residuals.map(Number).join("")
    }`,
    [...names, ...extra],
    extra,
    [rows, outs[0]],
    ["rows", "inDim", ...outs.map((_, i) => `out${i}`), ...dropoutUniforms(masked)],
    regions,
    acts.some((a) => a !== null),
  );
}

/**
 * The backward pass: region 0 is `dx = Σ dy_i w_iᵀ (+ addend)` (the program's output),
 * region `1 + i` is `dw_i = xᵀ dy_i`, whose first row of tiles also writes `db_i`.
 */
function backwardProgram(
  n: number,
  rows: number,
  inDim: number,
  outs: number[],
  withAddend: boolean,
  masked: boolean[],
  acts: (LinearActivationName | null)[],
): TileProgram {
  const names = ["x"];
  for (let i = 0; i < n; i++) {
    names.push(`w${i}`, `dy${i}`);
    if (acts[i]) names.push(`slope${i}`);
  }
  if (withAddend) names.push("addend");
  const extra: string[] = [];
  for (let i = 0; i < n; i++) extra.push(`dw${i}`, `db${i}`);
  const o = (i: number) => `uniforms.out${i}`;
  const dx: Region = {
    rows,
    cols: inDim,
    body: `${
      termsWgsl(outs.map((_, i) => ({
        a: { ...plain(`dy${i}`, "uniforms.rows", o(i)), factor: dyFactor(i, masked[i], acts[i]) },
        b: transposed(`w${i}`, o(i), "uniforms.inDim"),
      })))
    }${
      storeWgsl(
        "uniforms.rows",
        "uniforms.inDim",
        `result[row * uniforms.inDim + col] = acc[i * 4 + j]${
          withAddend ? " + addend[row * uniforms.inDim + col]" : ""
        };`,
      )
    }`,
  };
  const grads = outs.map((out, i): Region => ({
    rows: inDim,
    cols: out,
    body: `${
      termsWgsl([{
        a: transposed("x", "uniforms.inDim", "uniforms.rows"),
        b: { ...plain(`dy${i}`, "uniforms.rows", o(i)), factor: dyFactor(i, masked[i], acts[i]) },
        sumB: true,
      }])
    }${storeWgsl("uniforms.inDim", o(i), `dw${i}W[row * ${o(i)} + col] = acc[i * 4 + j];`)}
        if (tm == 0 && ty == 0) {
          for (var j = 0; j < 4; j++) {
            let col = tn * ${TILE} + tx + 8 * j;
            if (col < ${o(i)}) { db${i}W[col] = sigmaBias[j]; }
          }
        }`,
  }));
  return new TileProgram(
    `sigmaLinearsGrad_${n}_${withAddend}_${masked.map(Number).join("")}_${
      acts.map((a) => a ?? "-").join(",")
    }`,
    [...names, ...extra],
    extra,
    [rows, inDim],
    ["rows", "inDim", ...outs.map((_, i) => `out${i}`), ...dropoutUniforms(masked)],
    [dx, ...grads],
    acts.some((a) => a !== null),
  );
}

/** Runs `program` with its own uniform values, then its tile uniforms. */
function run(backend: Backend, program: TileProgram, inputs: Info[], own: ProgramUniform[]): Info {
  return backend.runWebGPUProgram(program, inputs, "float32", [
    ...own,
    ...program.tileUniforms(),
  ]);
}

/**
 * The uniforms of a group of layers: shapes, then each masked layer's seed and threshold
 * (u32 bits as i32) and scale.
 */
function groupUniforms(
  rows: number,
  inDim: number,
  outs: number[],
  dropouts: LinearsAttrs["dropouts"],
): ProgramUniform[] {
  const values = [int(rows), int(inDim), ...outs.map(int)];
  for (const d of dropouts) {
    if (d) {
      values.push(int(d[0] | 0), int(d[1] | 0), { type: "float32", data: [d[2]] });
    }
  }
  return values;
}

/** A cap on layers per program below the device's, for tests of the grouped path. */
let groupCap = MAX_SHARED_LINEARS;

/**
 * Caps the layers one program takes (default and at most 3), as a device with few storage
 * buffers per stage would: tests run the grouped path with it on any adapter.
 */
export function capLinearGroups(layers: number): void {
  groupCap = Math.max(1, Math.min(MAX_SHARED_LINEARS, Math.floor(layers)));
}

/**
 * The layers' groups, `[first, end)` each, one program apiece: as many layers as the
 * device's storage bindings per stage take (`fixed` for the program, `perLayer(i)` for
 * layer `i`), at most {@linkcode capLinearGroups}'s; one layer at least.
 */
function groups(
  backend: Backend,
  n: number,
  fixed: number,
  perLayer: (i: number) => number,
): [number, number][] {
  const limit = backend.device.limits.maxStorageBuffersPerShaderStage;
  const out: [number, number][] = [];
  let first = 0;
  while (first < n) {
    let end = first + 1;
    let used = fixed + perLayer(first);
    while (end < n && end - first < groupCap && used + perLayer(end) <= limit) {
      used += perLayer(end);
      end++;
    }
    out.push([first, end]);
    first = end;
  }
  return out;
}

/** `SigmaLinears{n}`: `(x, w0, b0, ...) -> y_0..y_{n-1}`. */
function linearsKernel(n: number) {
  return (args: Parameters<tf.KernelFunc>[0]): Info[] => {
    const backend = args.backend as unknown as Backend;
    const inputs = args.inputs as Record<string, Info>;
    const x = inputs.x;
    const [rows, inDim] = x.shape;
    const layers = Array.from(
      { length: n },
      (_, i) => ({
        w: inputs[`w${i}`],
        b: inputs[`b${i}`],
        r: inputs[`r${i}`] as Info | undefined,
      }),
    );
    const { dropouts, activations, residuals } = args.attrs as unknown as LinearsAttrs;
    // Bindings: the output and x; per layer w, b, its output (but the first's), an
    // activated layer's slope and a residual.
    const spans = groups(
      backend,
      n,
      1,
      (i) => 3 + (activations[i] ? 1 : 0) + (residuals[i] ? 1 : 0),
    );
    const ys: Info[] = [];
    const slopes: Info[] = [];
    for (const [first, end] of spans) {
      const group = layers.slice(first, end);
      const outs = group.map((l) => l.w.shape[1]);
      const acts = activations.slice(first, end);
      const extra = outs.slice(1).map((out) => backend.makeTensorInfo([rows, out], "float32"));
      const slope = outs.flatMap((out, i) =>
        acts[i] ? [backend.makeTensorInfo([rows, out], "float32")] : []
      );
      const masks = dropouts.slice(first, end);
      const y0 = run(
        backend,
        forwardProgram(
          group.length,
          rows,
          outs,
          masks.map((d) => d !== null),
          acts,
          residuals.slice(first, end),
        ),
        [x, ...group.flatMap((l) => l.r ? [l.w, l.b, l.r] : [l.w, l.b]), ...extra, ...slope],
        groupUniforms(rows, inDim, outs, masks),
      );
      ys.push(y0, ...extra);
      slopes.push(...slope);
    }
    return [...ys, ...slopes];
  };
}

/** `SigmaLinearsGrad{n}`: `(x, w0, dy0, ...) -> (dx, dw_0..dw_{n-1}, db_0..db_{n-1})`. */
function linearsGradKernel(n: number) {
  return (args: Parameters<tf.KernelFunc>[0]): Info[] => {
    const backend = args.backend as unknown as Backend;
    const inputs = args.inputs as Record<string, Info>;
    const x = inputs.x;
    const [rows, inDim] = x.shape;
    const layers = Array.from(
      { length: n },
      (_, i) => ({
        w: inputs[`w${i}`],
        dy: inputs[`dy${i}`],
        slope: inputs[`slope${i}`] as Info | undefined,
      }),
    );
    const { dropouts, activations } = args.attrs as unknown as LinearsAttrs;
    // Bindings: dx, x, an addend; per layer w, dy, dw, db and an activated layer's
    // pre-activation.
    const spans = groups(backend, n, 3, (i) => 4 + (activations[i] ? 1 : 0));
    const dw: Info[] = [];
    const db: Info[] = [];
    let dx: Info | null = null;
    const partial: Info[] = [];
    for (const [first, end] of spans) {
      const group = layers.slice(first, end);
      const outs = group.map((l) => l.w.shape[1]);
      const extra: Info[] = [];
      for (const out of outs) {
        extra.push(backend.makeTensorInfo([inDim, out], "float32"));
        extra.push(backend.makeTensorInfo([out], "float32"));
      }
      const masks = dropouts.slice(first, end);
      const acts = activations.slice(first, end);
      const next: Info = run(
        backend,
        backwardProgram(
          group.length,
          rows,
          inDim,
          outs,
          dx !== null,
          masks.map((d) => d !== null),
          acts,
        ),
        [
          x,
          ...group.flatMap((l, i) => acts[i] ? [l.w, l.dy, l.slope!] : [l.w, l.dy]),
          ...(dx ? [dx] : []),
          ...extra,
        ],
        groupUniforms(rows, inDim, outs, masks),
      );
      if (dx) partial.push(dx);
      dx = next;
      for (let i = 0; i < group.length; i++) dw.push(extra[2 * i]), db.push(extra[2 * i + 1]);
    }
    // A group's input gradient was the next group's addend only: not an output.
    for (const t of partial) backend.disposeData(t.dataId);
    return [dx!, ...dw, ...db];
  };
}

let registered = false;

/**
 * Registers `SigmaLinears{n}` and `SigmaLinearsGrad{n}` (n = 1..3) for the webgpu backend;
 * idempotent. Called by `backends/_select.ts` on load.
 */
export function registerWebGpuLinears(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: LINEAR_ACT_KERNEL,
    backendName: "webgpu",
    kernelFunc: linearsKernel(1) as unknown as tf.KernelFunc,
  });
  for (let n = 1; n <= MAX_SHARED_LINEARS; n++) {
    tf.registerKernel({
      kernelName: linearsKernelName(n),
      backendName: "webgpu",
      kernelFunc: linearsKernel(n) as unknown as tf.KernelFunc,
    });
    tf.registerKernel({
      kernelName: linearsGradKernelName(n),
      backendName: "webgpu",
      kernelFunc: linearsGradKernel(n) as unknown as tf.KernelFunc,
    });
  }
}
