/**
 * Dropout on the webgpu backend: {@linkcode DROPOUT_KERNEL} as one WGSL program that draws
 * the Philox2x32-10 mask of `lib/nn/dropout.ts` where the tensor is and applies it, instead
 * of a mask drawn in JavaScript, uploaded, compared, cast and multiplied (four dispatches
 * and an upload). It matches `dropoutMask` (the host reference) bit for bit; the tests
 * check both.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { DROPOUT_KERNEL } from "../lib/nn/dropout.ts";

/** What this file needs of tfjs-backend-webgpu 4.22's backend (not in its public types). */
interface WebGpuBackendLike {
  runWebGPUProgram(
    program: unknown,
    inputs: tf.TensorInfo[],
    dtype: tf.DataType,
    uniforms: { type: string; data: number[] }[],
  ): tf.TensorInfo;
}

/**
 * WGSL of `lib/nn/dropout.ts`'s generator: `sigmaPhilox(counter, seed)` is Philox2x32-10 of
 * the counter `(counter, 0)` under the key `seed`, both words. `sigmaMulHi` is the high word
 * of a 32 x 32 product from 16-bit halves (WGSL has no u64). Shared by every kernel that
 * draws the dropout mask (this one, attention's).
 */
export const PHILOX_WGSL = `
  fn sigmaMulHi(a : u32, b : u32) -> u32 {
    let aLo = a & 0xffffu; let aHi = a >> 16u;
    let bLo = b & 0xffffu; let bHi = b >> 16u;
    let lh = aLo * bHi; let hl = aHi * bLo;
    let mid = ((aLo * bLo) >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    return aHi * bHi + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
  }
  fn sigmaPhilox(counter : u32, seed : u32) -> vec2<u32> {
    var x0 = counter; var x1 = 0u; var key = seed;
    for (var n = 0; n < 10; n++) {
      if (n > 0) { key = key + 0x9e3779b9u; }
      let lo = x0 * 0xd256d193u;
      x0 = sigmaMulHi(x0, 0xd256d193u) ^ key ^ x1;
      x1 = lo;
    }
    return vec2<u32>(x0, x1);
  }`;

/** tfjs's flat element-wise layout (`flatDispatchLayout`, `computeDispatch`), written out. */
class DropoutProgram {
  variableNames = ["X"];
  outputShape: number[];
  shaderKey = "sigma_dropout_philox";
  dispatchLayout: { x: number[] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [128, 1, 1];
  size = true;
  uniforms = "seed : u32, threshold : u32, scale : f32,";

  constructor(shape: number[]) {
    this.outputShape = shape;
    this.dispatchLayout = { x: shape.map((_, i) => i) };
    this.dispatch = [Math.ceil(tf.util.sizeFromShape(shape) / 128), 1, 1];
  }

  getUserCode(): string {
    return `
      ${PHILOX_WGSL}
      ${"fn main(index : i32)"} {
        if (index < uniforms.size) {
          let i = u32(index);
          let words = sigmaPhilox(i >> 1u, uniforms.seed);
          let word = select(words.x, words.y, (i & 1u) == 1u);
          let m = select(0.0, uniforms.scale, word >= uniforms.threshold);
          setOutputAtIndex(index, getXByOutputIndex(index) * m);
        }
      }
    `;
  }
}

let registered = false;

/** Registers {@linkcode DROPOUT_KERNEL} for webgpu; idempotent. */
export function registerWebGpuDropout(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: DROPOUT_KERNEL,
    backendName: "webgpu",
    kernelFunc: ({ inputs, backend, attrs }) => {
      const x = inputs.x as tf.TensorInfo;
      const { seed, threshold, scale } = attrs as unknown as {
        seed: number;
        threshold: number;
        scale: number;
      };
      return (backend as unknown as WebGpuBackendLike).runWebGPUProgram(
        new DropoutProgram(x.shape),
        [x],
        "float32",
        [
          { type: "uint32", data: [seed] },
          { type: "uint32", data: [threshold] },
          { type: "float32", data: [scale] },
        ],
      );
    },
  });
}
