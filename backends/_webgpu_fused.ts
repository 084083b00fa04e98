/**
 * WGSL programs for the fused ops of `lib/nn/fused.ts`, registered for the webgpu backend:
 * LayerNorm with its residual add (one dispatch forward, one backward), the exact GELU and
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
 * The LayerNorm kernels return more than one tensor from one dispatch (the forward pass its
 * rows' statistics, the backward pass three gradients). A tfjs program has one output
 * binding, so the other outputs are made here and handed to the program as inputs, and
 * the program's code declares each such binding a second time, writable. WGSL forbids
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
  LAYER_NORM_GRAD_KERNEL,
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
    this.variableNames = withResidual
      ? ["x", "residual", "gamma", "beta", "outStats"]
      : ["x", "gamma", "beta", "outStats"];
    this.outputShape = [rows, cols];
    this.workgroupSize = [workgroup, 1, 1];
    this.perThread = Math.ceil(cols / workgroup);
    this.dispatch = [rows, 1, 1]; // one workgroup per row
    this.shaderKey = `sigmaLayerNorm_${workgroup}_${this.perThread}_${withResidual}`;
  }

  getUserCode(): string {
    const workgroup = this.workgroupSize[0];
    const z = this.withResidual ? "x[base + c] + residual[base + c]" : "x[base + c]";
    const statsBinding = this.variableNames.length; // binding 1 + index of "outStats"
    return `
  @group(0) @binding(${statsBinding}) var<storage, read_write> sigmaStatsOut : array<f32>;
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
      // The row's statistics, for the backward pass.
      if (tid == 0) {
        sigmaStatsOut[2 * row] = mean;
        sigmaStatsOut[2 * row + 1] = rstd;
      }
    }
  }`;
  }
}

/** Columns per workgroup of {@linkcode LayerNormGradProgram}'s parameter workgroups. */
const PARAM_COLUMNS = 8;

/**
 * The LayerNorm's backward pass in one dispatch, from the row statistics (mean, 1/std) its
 * forward pass saved: workgroups `0..R-1` each take one row's input gradient,
 * `dx = (g - mean(g) - x̂ mean(g x̂)) / std` with `g = dy gamma` (sums over the row by a
 * tree in workgroup memory); the `ceil(d / 8)` after them each take 8 columns of the
 * parameter gradients over every row, `dgamma = Σ dy x̂` (the output `outGamma`) and
 * `dbeta = Σ dy` (`outBeta`), the workgroup's threads striding the rows and adding up by
 * a tree. Which kind a workgroup is, thread 0 decides and `workgroupUniformLoad` tells all
 * (the barriers must be in uniform control flow; tfjs's workgroup id is not uniform to
 * WGSL's analysis).
 */
class LayerNormGradProgram implements WebGpuProgram {
  variableNames: string[];
  outputShape: number[];
  shaderKey: string;
  dispatchLayout = { x: [0, 1] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number];
  uniforms = "rows : i32, cols : i32,";
  perThread: number;
  withResidual: boolean;

  constructor(rows: number, cols: number, withResidual: boolean) {
    const workgroup = rowWorkgroup(cols);
    this.withResidual = withResidual;
    this.variableNames = withResidual
      ? ["dy", "x", "residual", "gamma", "stats", "outGamma", "outBeta"]
      : ["dy", "x", "gamma", "stats", "outGamma", "outBeta"];
    this.outputShape = [rows, cols];
    this.workgroupSize = [workgroup, 1, 1];
    this.perThread = Math.ceil(cols / workgroup);
    this.dispatch = [rows + Math.ceil(cols / PARAM_COLUMNS), 1, 1];
    this.shaderKey = `sigmaLayerNormGrad_${workgroup}_${this.perThread}_${withResidual}`;
  }

  getUserCode(): string {
    const workgroup = this.workgroupSize[0];
    const lanes = workgroup / PARAM_COLUMNS;
    const zAt = (i: string) => this.withResidual ? `x[${i}] + residual[${i}]` : `x[${i}]`;
    const gammaBinding = this.variableNames.indexOf("outGamma") + 1;
    return `
  @group(0) @binding(${gammaBinding}) var<storage, read_write> sigmaGammaOut : array<f32>;
  @group(0) @binding(${gammaBinding + 1}) var<storage, read_write> sigmaBetaOut : array<f32>;
  const SIGMA_PER_THREAD = ${this.perThread};
  ${WORKGROUP_INDEX_WGSL}
  ${workgroupSumWgsl(workgroup)}
  var<workgroup> sigmaTask : i32;
  fn main(index : i32) {
    let rows = uniforms.rows;
    let cols = uniforms.cols;
    if (localIndex == 0u) {
      sigmaTask = sigmaWorkgroupIndex();
    }
    let w = workgroupUniformLoad(&sigmaTask);
    let tid = i32(localIndex);
    if (w < rows) {
      // A row's input gradient.
      let base = w * cols;
      let mean = stats[2 * w];
      let rstd = stats[2 * w + 1];
      var xhat : array<f32, SIGMA_PER_THREAD>;
      var g : array<f32, SIGMA_PER_THREAD>;
      var a = vec4<f32>(0.0);
      for (var k = 0; k < SIGMA_PER_THREAD; k++) {
        let c = tid + k * ${workgroup};
        if (c < cols) {
          xhat[k] = (${zAt("base + c")} - mean) * rstd;
          g[k] = dy[base + c] * gamma[c];
          a += vec4<f32>(g[k], g[k] * xhat[k], 0.0, 0.0);
        }
      }
      let t = sigmaWorkgroupSum(a) / f32(cols);
      for (var k = 0; k < SIGMA_PER_THREAD; k++) {
        let c = tid + k * ${workgroup};
        if (c < cols) {
          result[base + c] = rstd * (g[k] - t.x - xhat[k] * t.y);
        }
      }
    } else if (w < rows + (cols + ${PARAM_COLUMNS - 1}) / ${PARAM_COLUMNS}) {
      // 8 columns of the parameter gradients, ${lanes} threads a column striding the rows.
      let lane = tid / ${PARAM_COLUMNS};
      let col = (w - rows) * ${PARAM_COLUMNS} + tid % ${PARAM_COLUMNS};
      var acc = vec2<f32>(0.0);
      if (col < cols) {
        for (var r = lane; r < rows; r += ${lanes}) {
          let i = r * cols + col;
          let d = dy[i];
          acc += vec2<f32>(d * (${zAt("i")} - stats[2 * r]) * stats[2 * r + 1], d);
        }
      }
      sigmaRed[tid] = vec4<f32>(acc, 0.0, 0.0);
      workgroupBarrier();
      for (var s = ${lanes / 2}; s > 0; s = s / 2) {
        if (lane < s) {
          sigmaRed[tid] = sigmaRed[tid] + sigmaRed[tid + s * ${PARAM_COLUMNS}];
        }
        workgroupBarrier();
      }
      if (lane == 0 && col < cols) {
        sigmaGammaOut[col] = sigmaRed[tid].x;
        sigmaBetaOut[col] = sigmaRed[tid].y;
      }
    }
  }`;
  }
}

function rowsAndCols(x: Info): [number, number] {
  const cols = x.shape[x.shape.length - 1];
  if (!(cols <= FUSED_LAYER_NORM_MAX_WIDTH)) {
    throw new RangeError(
      `fused LayerNorm takes a last axis up to ${FUSED_LAYER_NORM_MAX_WIDTH}, got ${cols}`,
    );
  }
  return [tf.util.sizeFromShape(x.shape) / cols, cols];
}

function layerNormKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { x, residual, gamma, beta } = args.inputs as Record<string, Info | undefined>;
  const { eps } = args.attrs as unknown as { eps: number };
  const backend = args.backend as unknown as WebGpuBackend;
  const [rows, cols] = rowsAndCols(x!);
  const program = new LayerNormProgram(rows, cols, residual !== undefined);
  const flat = [viewAs(x!, [rows, cols])]; // [R, d]
  if (residual) flat.push(viewAs(residual, [rows, cols]));
  const stats = backend.makeTensorInfo([rows, 2], "float32"); // written, not read
  const y = backend.runWebGPUProgram(program, [...flat, gamma!, beta!, stats], "float32", [
    { type: "int32", data: [rows] },
    { type: "int32", data: [cols] },
    { type: "float32", data: [eps] },
  ]);
  return [viewAs(y, x!.shape), stats];
}

function layerNormGradKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const { dy, x, residual, gamma, stats } = args.inputs as Record<string, Info | undefined>;
  const backend = args.backend as unknown as WebGpuBackend;
  const [rows, cols] = rowsAndCols(x!);
  const dgamma = backend.makeTensorInfo([cols], "float32"); // written, not read
  const dbeta = backend.makeTensorInfo([cols], "float32"); // written, not read
  const program = new LayerNormGradProgram(rows, cols, residual !== undefined);
  const flat = [viewAs(dy!, [rows, cols]), viewAs(x!, [rows, cols])]; // [R, d] each
  if (residual) flat.push(viewAs(residual, [rows, cols]));
  const dx = backend.runWebGPUProgram(
    program,
    [...flat, gamma!, stats!, dgamma, dbeta],
    "float32",
    [{ type: "int32", data: [rows] }, { type: "int32", data: [cols] }],
  );
  return [viewAs(dx, x!.shape), dgamma, dbeta];
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
    [LAYER_NORM_GRAD_KERNEL, layerNormGradKernel as tf.KernelFunc],
    [GELU_KERNEL, geluKernel as tf.KernelFunc],
    [GELU_GRAD_KERNEL, geluGradKernel as tf.KernelFunc],
    [GELU_TANH_KERNEL, geluTanhKernel as tf.KernelFunc],
    [GELU_TANH_GRAD_KERNEL, geluTanhGradKernel as tf.KernelFunc],
  ];
  for (const [kernelName, kernelFunc] of kernels) {
    tf.registerKernel({ kernelName, backendName: "webgpu", kernelFunc });
  }
}
