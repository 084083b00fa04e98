/**
 * WGSL programs for the fused ops of `lib/nn/fused.ts`, registered for the webgpu backend:
 * LayerNorm with its residual add (one dispatch forward, two backward), the exact GELU and
 * the tanh-approximated GELU (one forward, one backward each). tfjs-backend-webgpu runs one
 * dispatch per op, and their fixed cost is most of a training step on a GPU; see that
 * module for what they replace.
 *
 * Each program is a tfjs-backend-webgpu `WebGPUProgram` run through the backend's
 * `runWebGPUProgram`, so tfjs compiles, caches, binds and records it like its own: tfjs
 * declares the inputs, the output `result` and `uniforms` (shapes and this file's scalars),
 * and the code here is the body. The row programs find their row from the workgroup's flat
 * index, because tfjs folds a dispatch of more than 65,535 workgroups into two or three
 * dimensions (`reshapeDispatch`). They keep a row in registers, `ceil(d / workgroup)`
 * values per thread, and sum over it with a tree in workgroup memory (fixed order: the
 * results do not change from run to run).
 *
 * Two of the kernels return two tensors from one dispatch. A tfjs program has one output
 * binding, so the second output is made here and handed to the program as an input, and
 * the program's code declares that input's binding a second time, writable. WGSL forbids
 * two variables on one binding only within what one entry point uses, and tfjs's read-only
 * declaration and its accessors are never called (checked under Deno's wgpu, on llvmpipe;
 * the pipeline layout, derived from the entry point, then has the binding writable). The
 * alternative, a packed `[2, d]` output split by two `Slice` kernels, costs two more
 * dispatches on webgpu, where tfjs 4.22's slice is always a copy.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { type Info, viewAs, type WebGpuBackend, type WebGpuProgram } from "./_webgpu_program.ts";
import {
  FUSED_LAYER_NORM_MAX_WIDTH,
  GELU_GRAD_KERNEL,
  GELU_KERNEL,
  GELU_TANH_CUBIC,
  GELU_TANH_GRAD_KERNEL,
  GELU_TANH_KERNEL,
  GELU_TANH_SLOPE,
  LAYER_NORM_GRAD_PARAMS_KERNEL,
  LAYER_NORM_GRAD_X_KERNEL,
  LAYER_NORM_KERNEL,
} from "../lib/nn/fused.ts";
import type { Tensor } from "../lib/nn/tensor_types.ts";

// ------------------------------------------------------------------------ shared WGSL

/**
 * The flat index of this workgroup. tfjs declares `workgroupId` and `numWorkgroups` and
 * may have folded a long dispatch into two or three dimensions.
 */
const WORKGROUP_INDEX_WGSL = `
  fn sigmaWorkgroupIndex() -> i32 {
    return i32((workgroupId.z * numWorkgroups.y + workgroupId.y) * numWorkgroups.x +
      workgroupId.x);
  }`;

/**
 * Sum over the workgroup of `v` (all four lanes at once), by a tree in workgroup memory;
 * every thread gets the total. Call it from uniform control flow only (it has barriers).
 */
const workgroupSumWgsl = (workgroup: number) => `
  var<workgroup> sigmaRed : array<vec4<f32>, ${workgroup}>;
  fn sigmaWorkgroupSum(v : vec4<f32>) -> vec4<f32> {
    let tid = localIndex;
    sigmaRed[tid] = v;
    workgroupBarrier();
    for (var s = ${workgroup / 2}u; s > 0u; s = s / 2u) {
      if (tid < s) {
        sigmaRed[tid] = sigmaRed[tid] + sigmaRed[tid + s];
      }
      workgroupBarrier();
    }
    let total = sigmaRed[0];
    workgroupBarrier(); // every thread has read it before sigmaRed is written again
    return total;
  }`;

/** The power of two in [32, 256] nearest above `d`: threads per row. */
function rowWorkgroup(d: number): number {
  return Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(d))));
}

// ------------------------------------------------------------------------- LayerNorm

/** `y = (z - mean) / sqrt(var + eps) * gamma + beta` per row, `z = x (+ residual)`. */
class LayerNormProgram implements WebGpuProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = "rows : i32, cols : i32, eps : f32,";
  perThread: number;
  withResidual: boolean;

  constructor(rows: number, cols: number, withResidual: boolean) {
    const workgroup = rowWorkgroup(cols);
    this.withResidual = withResidual;
    this.variableNames = withResidual ? ["x", "residual", "gamma", "beta"] : ["x", "gamma", "beta"];
    this.outputShape = [rows, cols];
    this.workgroupSize = [workgroup, 1, 1];
    this.perThread = Math.ceil(cols / workgroup);
    this.dispatch = [rows, 1, 1]; // one workgroup per row
    this.shaderKey = `sigmaLayerNorm_${workgroup}_${this.perThread}_${withResidual}`;
  }

  getUserCode(): string {
    const workgroup = this.workgroupSize[0];
    const z = this.withResidual ? "x[base + c] + residual[base + c]" : "x[base + c]";
    return `
  const SIGMA_PER_THREAD = ${this.perThread};
  ${WORKGROUP_INDEX_WGSL}
  ${workgroupSumWgsl(workgroup)}
  fn main(index : i32) {
    let rows = uniforms.rows;
    let cols = uniforms.cols;
    let row = sigmaWorkgroupIndex();
    // Threads of a folded dispatch past the last row compute the last row again, so that
    // every thread reaches every barrier, and write nothing.
    let base = min(row, rows - 1) * cols;
    let tid = i32(localIndex);
    var z : array<f32, SIGMA_PER_THREAD>;
    var s = 0.0;
    for (var k = 0; k < SIGMA_PER_THREAD; k++) {
      let c = tid + k * ${workgroup};
      if (c < cols) {
        z[k] = ${z};
        s += z[k];
      }
    }
    let mean = sigmaWorkgroupSum(vec4<f32>(s, 0.0, 0.0, 0.0)).x / f32(cols);
    var q = 0.0;
    for (var k = 0; k < SIGMA_PER_THREAD; k++) {
      if (tid + k * ${workgroup} < cols) {
        let dz = z[k] - mean;
        q += dz * dz;
      }
    }
    let variance = sigmaWorkgroupSum(vec4<f32>(q, 0.0, 0.0, 0.0)).x / f32(cols);
    let rstd = inverseSqrt(variance + uniforms.eps);
    if (row < rows) {
      for (var k = 0; k < SIGMA_PER_THREAD; k++) {
        let c = tid + k * ${workgroup};
        if (c < cols) {
          result[base + c] = (z[k] - mean) * rstd * gamma[c] + beta[c];
        }
      }
    }
  }`;
  }
}

/**
 * The LayerNorm's input gradient, `dx = (g - mean(g) - x̂ mean(g x̂)) / std` with
 * `g = dy gamma`, and per chunk of rows the column sums of `dy x̂` and `dy` into the second
 * output (bound as the input `outExtra`). One workgroup per chunk of `rowsPerGroup` rows:
 * fewer workgroups than rows, so that the parameter kernel has few partials to add.
 */
class LayerNormGradXProgram implements WebGpuProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = "rows : i32, cols : i32, rowsPerGroup : i32, chunks : i32, eps : f32,";
  perThread: number;
  withResidual: boolean;

  constructor(rows: number, cols: number, chunks: number, withResidual: boolean) {
    const workgroup = rowWorkgroup(cols);
    this.withResidual = withResidual;
    this.variableNames = withResidual
      ? ["dy", "x", "residual", "gamma", "outExtra"]
      : ["dy", "x", "gamma", "outExtra"];
    this.outputShape = [rows, cols];
    this.workgroupSize = [workgroup, 1, 1];
    this.perThread = Math.ceil(cols / workgroup);
    this.dispatch = [chunks, 1, 1];
    this.shaderKey = `sigmaLayerNormGradX_${workgroup}_${this.perThread}_${withResidual}`;
  }

  getUserCode(): string {
    const workgroup = this.workgroupSize[0];
    const z = this.withResidual ? "x[base + c] + residual[base + c]" : "x[base + c]";
    const extraBinding = this.variableNames.length; // binding 1 + index of "outExtra"
    return `
  @group(0) @binding(${extraBinding}) var<storage, read_write> sigmaExtraOut : array<f32>;
  const SIGMA_PER_THREAD = ${this.perThread};
  ${WORKGROUP_INDEX_WGSL}
  ${workgroupSumWgsl(workgroup)}
  fn main(index : i32) {
    let rows = uniforms.rows;
    let cols = uniforms.cols;
    let chunk = sigmaWorkgroupIndex();
    let tid = i32(localIndex);
    var z : array<f32, SIGMA_PER_THREAD>;
    var g : array<f32, SIGMA_PER_THREAD>;
    var sumDyXhat : array<f32, SIGMA_PER_THREAD>;
    var sumDy : array<f32, SIGMA_PER_THREAD>;
    for (var i = 0; i < uniforms.rowsPerGroup; i++) {
      let row = chunk * uniforms.rowsPerGroup + i;
      // Past the last row: compute the last row again (barriers), write and sum nothing.
      let valid = row < rows;
      let base = min(row, rows - 1) * cols;
      var s = 0.0;
      for (var k = 0; k < SIGMA_PER_THREAD; k++) {
        let c = tid + k * ${workgroup};
        if (c < cols) {
          z[k] = ${z};
          s += z[k];
        }
      }
      let mean = sigmaWorkgroupSum(vec4<f32>(s, 0.0, 0.0, 0.0)).x / f32(cols);
      // One tree for three sums: sum (z - mean)^2 (the variance, summed in the forward
      // pass's order, so 1/std is the forward pass's), sum g and sum g (z - mean).
      var a = vec4<f32>(0.0);
      for (var k = 0; k < SIGMA_PER_THREAD; k++) {
        let c = tid + k * ${workgroup};
        if (c < cols) {
          let dz = z[k] - mean;
          g[k] = dy[base + c] * gamma[c];
          a += vec4<f32>(dz * dz, g[k], g[k] * dz, 0.0);
        }
      }
      let t = sigmaWorkgroupSum(a) / f32(cols);
      let rstd = inverseSqrt(t.x + uniforms.eps);
      let meanG = t.y;
      let meanGXhat = t.z * rstd;
      if (valid) {
        for (var k = 0; k < SIGMA_PER_THREAD; k++) {
          let c = tid + k * ${workgroup};
          if (c < cols) {
            let xhat = (z[k] - mean) * rstd;
            result[base + c] = rstd * (g[k] - meanG - xhat * meanGXhat);
            let d = dy[base + c];
            sumDyXhat[k] += d * xhat;
            sumDy[k] += d;
          }
        }
      }
    }
    if (chunk < uniforms.chunks) {
      for (var k = 0; k < SIGMA_PER_THREAD; k++) {
        let c = tid + k * ${workgroup};
        if (c < cols) {
          sigmaExtraOut[2 * chunk * cols + c] = sumDyXhat[k];
          sigmaExtraOut[(2 * chunk + 1) * cols + c] = sumDy[k];
        }
      }
    }
  }`;
  }
}

/** Columns per workgroup of {@linkcode LayerNormGradParamsProgram}. */
const PARAM_COLUMNS = 8;
/** Threads per column of {@linkcode LayerNormGradParamsProgram}, summing chunks in turn. */
const PARAM_LANES = 32;

/**
 * `partials [C, 2, d] -> dgamma [d]` (the output) and `dbeta [d]` (the input `outExtra`,
 * written): each workgroup adds up the chunks of 8 columns, 32 threads a column.
 */
class LayerNormGradParamsProgram implements WebGpuProgram {
  variableNames = ["partials", "outExtra"];
  outputShape: number[];
  shaderKey = `sigmaLayerNormGradParams_${PARAM_COLUMNS}_${PARAM_LANES}`;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [PARAM_COLUMNS * PARAM_LANES, 1, 1];
  uniforms = "chunks : i32, cols : i32,";

  constructor(cols: number) {
    this.outputShape = [cols];
    this.dispatch = [Math.ceil(cols / PARAM_COLUMNS), 1, 1];
  }

  getUserCode(): string {
    return `
  @group(0) @binding(2) var<storage, read_write> sigmaExtraOut : array<f32>;
  ${WORKGROUP_INDEX_WGSL}
  var<workgroup> sigmaPairs : array<vec2<f32>, ${PARAM_COLUMNS * PARAM_LANES}>;
  fn main(index : i32) {
    let cols = uniforms.cols;
    let tid = i32(localIndex);
    let lane = tid / ${PARAM_COLUMNS};
    let col = sigmaWorkgroupIndex() * ${PARAM_COLUMNS} + tid % ${PARAM_COLUMNS};
    var acc = vec2<f32>(0.0);
    if (col < cols) {
      for (var k = lane; k < uniforms.chunks; k += ${PARAM_LANES}) {
        acc += vec2<f32>(partials[2 * k * cols + col], partials[(2 * k + 1) * cols + col]);
      }
    }
    sigmaPairs[tid] = acc;
    workgroupBarrier();
    for (var s = ${PARAM_LANES / 2}; s > 0; s = s / 2) {
      if (lane < s) {
        sigmaPairs[tid] = sigmaPairs[tid] + sigmaPairs[tid + s * ${PARAM_COLUMNS}];
      }
      workgroupBarrier();
    }
    if (lane == 0 && col < cols) {
      result[col] = sigmaPairs[tid].x;
      sigmaExtraOut[col] = sigmaPairs[tid].y;
    }
  }`;
  }
}

/**
 * Chunks of rows the input-gradient kernel sums parameter partials over: enough
 * workgroups to fill a large GPU, few enough that adding them up is a short loop.
 */
const MAX_CHUNKS = 1024;

function rowsAndCols(x: Info): [number, number] {
  const cols = x.shape[x.shape.length - 1];
  if (!(cols <= FUSED_LAYER_NORM_MAX_WIDTH)) {
    throw new RangeError(
      `fused LayerNorm takes a last axis up to ${FUSED_LAYER_NORM_MAX_WIDTH}, got ${cols}`,
    );
  }
  return [tf.util.sizeFromShape(x.shape) / cols, cols];
}

function layerNormKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { x, residual, gamma, beta } = args.inputs as Record<string, Info | undefined>;
  const { eps } = args.attrs as unknown as { eps: number };
  const backend = args.backend as unknown as WebGpuBackend;
  const [rows, cols] = rowsAndCols(x!);
  const program = new LayerNormProgram(rows, cols, residual !== undefined);
  const flat = [viewAs(x!, [rows, cols])]; // [R, d]
  if (residual) flat.push(viewAs(residual, [rows, cols]));
  const y = backend.runWebGPUProgram(program, [...flat, gamma!, beta!], "float32", [
    { type: "int32", data: [rows] },
    { type: "int32", data: [cols] },
    { type: "float32", data: [eps] },
  ]);
  return viewAs(y, x!.shape);
}

function layerNormGradXKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { dy, x, residual, gamma } = args.inputs as Record<string, Info | undefined>;
  const { eps } = args.attrs as unknown as { eps: number };
  const backend = args.backend as unknown as WebGpuBackend;
  const [rows, cols] = rowsAndCols(x!);
  const rowsPerGroup = Math.ceil(rows / Math.min(rows, MAX_CHUNKS));
  const chunks = Math.ceil(rows / rowsPerGroup);
  const partials = backend.makeTensorInfo([chunks, 2, cols], "float32"); // written, not read
  const program = new LayerNormGradXProgram(rows, cols, chunks, residual !== undefined);
  const flat = [viewAs(dy!, [rows, cols]), viewAs(x!, [rows, cols])]; // [R, d] each
  if (residual) flat.push(viewAs(residual, [rows, cols]));
  const dx = backend.runWebGPUProgram(program, [...flat, gamma!, partials], "float32", [
    { type: "int32", data: [rows] },
    { type: "int32", data: [cols] },
    { type: "int32", data: [rowsPerGroup] },
    { type: "int32", data: [chunks] },
    { type: "float32", data: [eps] },
  ]);
  return [viewAs(dx, x!.shape), partials];
}

function layerNormGradParamsKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { partials } = args.inputs as { partials: Info };
  const backend = args.backend as unknown as WebGpuBackend;
  const [chunks, two, cols] = partials.shape;
  if (partials.shape.length !== 3 || two !== 2) {
    throw new RangeError(`LayerNorm parameter partials must be [C, 2, d], got [${partials.shape}]`);
  }
  const dbeta = backend.makeTensorInfo([cols], "float32"); // written, not read
  const dgamma = backend.runWebGPUProgram(
    new LayerNormGradParamsProgram(cols),
    [partials, dbeta],
    "float32",
    [{ type: "int32", data: [chunks] }, { type: "int32", data: [cols] }],
  );
  return [dgamma, dbeta];
}

// ------------------------------------------------------------------------------ GELU

/**
 * 2/√π (-1)^n / (n! (2n + 1)), n = 0..11: the Maclaurin series of erf in x². For |x| < 1
 * the first omitted term is under 1.1e-10, far below float32's 6e-8 rounding, and the
 * terms fall fast enough (the largest is the first) that Horner's rule loses a few
 * roundings only.
 */
const ERF_SERIES = Array.from({ length: 12 }, (_, n) => {
  let factorial = 1;
  for (let i = 2; i <= n; i++) factorial *= i;
  return ((-1) ** n * 2) / (Math.sqrt(Math.PI) * factorial * (2 * n + 1));
});

/**
 * Numerical Recipes' `erfcc` fit (Press et al., 2nd ed., §6.2, a Chebyshev fit after
 * Hastings): `erfc(z) = t exp(-z² + P(t))`, `t = 1 / (1 + z / 2)`, relative error under
 * 1.2e-7 for every z >= 0. Coefficients of P from t^0 up.
 */
const ERFC_FIT = [
  -1.26551223,
  1.00002368,
  0.37409196,
  0.09678418,
  -0.18628806,
  0.27886807,
  -1.13520398,
  1.48851587,
  -0.82215223,
  0.17087277,
];

/** `c0 + w (c1 + w (...))` as WGSL, coefficients as float literals. */
function horner(coefficients: number[], w: string): string {
  return coefficients.reduceRight(
    (inner, c, i) => i === coefficients.length - 1 ? lit(c) : `${lit(c)} + ${w} * (${inner})`,
    "",
  );
}

/** A WGSL float literal of `c` (17 digits: the literal then rounds once, to f32). */
function lit(c: number): string {
  const s = c.toPrecision(17);
  return s.includes(".") || s.includes("e") ? s : `${s}.0`;
}

/**
 * erf, erfc and Φ for float32 in WGSL, which has no erf. erf(z) for |z| < 1 is the
 * series (relative error a few float32 roundings, also near 0, where 1 - erfc would lose
 * everything); beyond, 1 - erfc(|z|). Φ(x) = erfc(-x/√2)/2 is taken from erfc directly
 * on the far left, so that GELU's small negative values keep their relative accuracy.
 *
 * erfc's exp(-z²) is `sigmaExpNegSquare`, which splits v² as vh² + (v - vh)(v + vh), vh
 * v's top 12 bits, as fdlibm does: vh² is exact, so v²'s rounding (5e-7 relative at
 * v = 3, 3e-6 at 7) does not reach exp. Φ passes x itself with the scale 1/2, not x/√2,
 * whose rounding would cost the same again (erfc(z) moves by 2z² times z's relative error).
 * exp(-vh²) goes through `sigmaExp`, a Cody-Waite reduction to exp of |r| <= ln 2 / 2:
 * WGSL allows exp 3 + 2|a| units in the last place (llvmpipe's was 3e-6 off at a = 50).
 */
const ERF_WGSL = `
  // exp(a) as 2^k exp(r), a = k ln 2 + r: ln 2 in two parts, the first with 15 bits, so
  // that k ln2Hi is exact for |k| < 512 and a - k ln2Hi exact too.
  fn sigmaExp(a : f32) -> f32 {
    let k = round(a * ${lit(Math.LOG2E)});
    let r = (a - k * 0.693145751953125) - k * ${lit(Math.LN2 - 0.693145751953125)};
    return ldexp(exp(r), i32(k));
  }
  // exp(-scale v²) for scale 1 or 1/2 (exact products), v² split so that it is not rounded.
  fn sigmaExpNegSquare(v : f32, scale : f32) -> f32 {
    if (abs(v) >= 16.0) {
      return 0.0; // under float32's least value either way; keeps inf - inf from exp
    }
    let vh = bitcast<f32>(bitcast<u32>(v) & 0xfffff000u);
    return sigmaExp(-scale * vh * vh) * exp(-scale * (v - vh) * (v + vh));
  }
  fn sigmaErfSeries(z : f32) -> f32 {
    let w = z * z;
    return z * (${horner(ERF_SERIES, "w")});
  }
  // erfc(z) for z >= 0 given expNegZ2 = exp(-z²).
  fn sigmaErfcFit(z : f32, expNegZ2 : f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    return t * expNegZ2 * exp(${horner(ERFC_FIT, "t")});
  }
  fn sigmaErf(x : f32) -> f32 {
    let z = abs(x);
    if (z < 1.0) {
      return sigmaErfSeries(x);
    }
    let e = 1.0 - sigmaErfcFit(z, sigmaExpNegSquare(z, 1.0));
    return select(e, -e, x < 0.0);
  }
  fn sigmaPhi(x : f32) -> f32 {
    let z = x * ${lit(Math.SQRT1_2)};
    if (z <= -1.0) {
      return 0.5 * sigmaErfcFit(-z, sigmaExpNegSquare(x, 0.5));
    }
    if (z < 1.0) {
      return 0.5 + 0.5 * sigmaErfSeries(z);
    }
    return 1.0 - 0.5 * sigmaErfcFit(z, sigmaExpNegSquare(x, 0.5));
  }`;

/**
 * The tanh-approximated GELU `x s`, `s = sigmoid(a)`, `a = x (c0 + c1 x²)`, and its
 * derivative, in WGSL; the constants are the reference's float32 scalars. The sigmoid is
 * taken from `e = exp(-|a|)` (`sigmaExp`, accurate to a few ulp where WGSL's `exp` may be
 * 3 + 2|a| ulp off), `s = 1 / (1 + e)` or `e / (1 + e)`: `exp` never overflows, `s` keeps
 * its relative accuracy in the left tail, and `s (1 - s) = e / (1 + e)²` has no
 * cancellation. Past |a| = 104 `e` is below float32's least value and is set to 0 (the
 * argument clamped, as an infinite `a` would make Cody-Waite's reduction inf - inf), and
 * then the derivative's second term, 0, is set to 0 so that `0 · x³` cannot be NaN for a
 * huge x (the composed ops give NaN once x² overflows, past 1.8e19).
 */
const GELU_TANH_WGSL = `
  const SIGMA_GELU_TANH_C0 : f32 = ${lit(GELU_TANH_SLOPE)};
  const SIGMA_GELU_TANH_C1 : f32 = ${lit(GELU_TANH_CUBIC)};
  // (s, e): s = sigmoid(a), e = exp(-|a|), a = x (c0 + c1 x²) in the reference's order.
  fn sigmaGeluTanhSigmoid(v : f32) -> vec2<f32> {
    let a = v * (v * v * SIGMA_GELU_TANH_C1 + SIGMA_GELU_TANH_C0);
    let e = select(sigmaExp(max(-abs(a), -104.0)), 0.0, abs(a) > 104.0);
    return vec2<f32>(select(e / (1.0 + e), 1.0 / (1.0 + e), a >= 0.0), e);
  }
  fn sigmaGeluTanh(v : f32) -> f32 {
    return v * sigmaGeluTanhSigmoid(v).x;
  }
  // d/dx x s(a) = s + x s (1 - s) a', a' = c0 + 3 c1 x², s (1 - s) = e / (1 + e)².
  fn sigmaGeluTanhGrad(v : f32) -> f32 {
    let se = sigmaGeluTanhSigmoid(v);
    let e = se.y;
    let slope = SIGMA_GELU_TANH_C0 + 3.0 * SIGMA_GELU_TANH_C1 * v * v;
    return se.x + select(v * (e / ((1.0 + e) * (1.0 + e))) * slope, 0.0, e == 0.0);
  }`;

/** An element-wise program over flat float32 data; `expression` of `x` (and `dy`). */
class ElementwiseProgram implements WebGpuProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  size = true;
  expression: string;
  helpers: string;

  constructor(name: string, size: number, inputs: string[], expression: string, helpers = "") {
    this.variableNames = inputs;
    this.outputShape = [size];
    this.dispatch = [Math.ceil(size / 128), 1, 1];
    this.shaderKey = name;
    this.expression = expression;
    this.helpers = helpers;
  }

  getUserCode(): string {
    // tfjs's getGlobalIndex() (the index) accounts for a folded dispatch.
    return `
  ${ERF_WGSL}
  ${this.helpers}
  fn main(index : i32) {
    if (index < uniforms.size) {
      let v = x[index];
      result[index] = ${this.expression};
    }
  }`;
  }
}

/** φ(x) = exp(-x²/2) / √(2π), the standard normal density, as WGSL of `v`. */
const NORMAL_DENSITY = `sigmaExpNegSquare(v, 0.5) * ${lit(1 / Math.sqrt(2 * Math.PI))}`;

/**
 * The GELUs as WGSL functions for other programs (the linear layers' epilogue,
 * `_webgpu_linear.ts`): `sigmaActGelu(v)`, `sigmaActGeluGrad(v)` (the derivative),
 * `sigmaActGeluTanh(v)`, `sigmaActGeluTanhGrad(v)`, the same arithmetic as this file's
 * GELU kernels; and the SiLU `v sigmoid(v)`, `sigmaActSilu(v)` and `sigmaActSiluGrad(v)`.
 */
export const ACTIVATIONS_WGSL = `
  ${ERF_WGSL}
  ${GELU_TANH_WGSL}
  fn sigmaActGelu(v : f32) -> f32 { return v * sigmaPhi(v); }
  fn sigmaActGeluGrad(v : f32) -> f32 { return sigmaPhi(v) + v * ${NORMAL_DENSITY}; }
  fn sigmaActGeluTanh(v : f32) -> f32 { return sigmaGeluTanh(v); }
  fn sigmaActGeluTanhGrad(v : f32) -> f32 { return sigmaGeluTanhGrad(v); }
  fn sigmaActSilu(v : f32) -> f32 { return v * (1.0 / (1.0 + exp(-v))); }
  fn sigmaActSiluGrad(v : f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-v));
    return s + v * s * (1.0 - s);
  }`;

function geluKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { x } = args.inputs as { x: Info };
  const backend = args.backend as unknown as WebGpuBackend;
  const n = tf.util.sizeFromShape(x.shape);
  const program = new ElementwiseProgram("sigmaGelu", n, ["x"], "v * sigmaPhi(v)");
  return viewAs(backend.runWebGPUProgram(program, [viewAs(x, [n])], "float32"), x.shape);
}

function geluGradKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { dy, x } = args.inputs as { dy: Info; x: Info };
  const backend = args.backend as unknown as WebGpuBackend;
  const n = tf.util.sizeFromShape(x.shape);
  const program = new ElementwiseProgram(
    "sigmaGeluGrad",
    n,
    ["dy", "x"],
    `dy[index] * (sigmaPhi(v) + v * ${NORMAL_DENSITY})`,
  );
  const inputs = [viewAs(dy, [n]), viewAs(x, [n])];
  return viewAs(backend.runWebGPUProgram(program, inputs, "float32"), x.shape);
}

function geluTanhKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { x } = args.inputs as { x: Info };
  const backend = args.backend as unknown as WebGpuBackend;
  const n = tf.util.sizeFromShape(x.shape);
  const program = new ElementwiseProgram(
    "sigmaGeluTanh",
    n,
    ["x"],
    "sigmaGeluTanh(v)",
    GELU_TANH_WGSL,
  );
  return viewAs(backend.runWebGPUProgram(program, [viewAs(x, [n])], "float32"), x.shape);
}

function geluTanhGradKernel(args: Parameters<tf.KernelFunc>[0]): Info {
  const { dy, x } = args.inputs as { dy: Info; x: Info };
  const backend = args.backend as unknown as WebGpuBackend;
  const n = tf.util.sizeFromShape(x.shape);
  const program = new ElementwiseProgram(
    "sigmaGeluTanhGrad",
    n,
    ["dy", "x"],
    "dy[index] * sigmaGeluTanhGrad(v)",
    GELU_TANH_WGSL,
  );
  const inputs = [viewAs(dy, [n]), viewAs(x, [n])];
  return viewAs(backend.runWebGPUProgram(program, inputs, "float32"), x.shape);
}

/**
 * erf of every element of float32 `x` by the WGSL that the fused GELU uses, on the active
 * webgpu backend: for tests of its accuracy (no kernel uses it). Throws an `Error` on any
 * other backend.
 */
export function webGpuErf(x: Tensor): Tensor {
  if (tf.getBackend() !== "webgpu") {
    throw new Error(`webGpuErf runs on webgpu only; the active backend is ${tf.getBackend()}`);
  }
  const backend = tf.backend() as unknown as WebGpuBackend;
  const program = new ElementwiseProgram("sigmaErf", x.size, ["x"], "sigmaErf(v)");
  const out = backend.runWebGPUProgram(program, [viewAs(x, [x.size])], "float32");
  return tf.engine().makeTensorFromTensorInfo(viewAs(out, x.shape));
}

let registered = false;

/**
 * Registers the fused LayerNorm, GELU and tanh GELU kernels of `lib/nn/fused.ts` for the webgpu
 * backend; idempotent. Called by `backends/_select.ts` on load. Needs no GPU: the
 * programs compile when first run.
 */
export function registerWebGpuFusedKernels(): void {
  if (registered) return;
  registered = true;
  const kernels: [string, tf.KernelFunc][] = [
    [LAYER_NORM_KERNEL, layerNormKernel as tf.KernelFunc],
    [LAYER_NORM_GRAD_X_KERNEL, layerNormGradXKernel as tf.KernelFunc],
    [LAYER_NORM_GRAD_PARAMS_KERNEL, layerNormGradParamsKernel as tf.KernelFunc],
    [GELU_KERNEL, geluKernel as tf.KernelFunc],
    [GELU_GRAD_KERNEL, geluGradKernel as tf.KernelFunc],
    [GELU_TANH_KERNEL, geluTanhKernel as tf.KernelFunc],
    [GELU_TANH_GRAD_KERNEL, geluTanhGradKernel as tf.KernelFunc],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc });
  }
}
