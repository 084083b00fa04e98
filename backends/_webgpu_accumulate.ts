/**
 * The kernel `ACCUMULATE_KERNEL` of `lib/train/accumulate.ts` for the webgpu backend:
 * `acc_i += g_i` for several pairs per dispatch, in place.
 *
 * One tfjs program per group of pairs, run through `runWebGPUProgram`: its inputs are the
 * pairs, and each `acc_i`'s binding is declared a second time, writable (the trick
 * `_webgpu_fused.ts` documents), so the sums go into the tensors that hold them. The
 * program's own output, one float, is a placeholder, freed at once. Threads run over the
 * pairs' elements end to end (each pair's first thread in the uniforms, as the fused Adam
 * does); bindings cannot be indexed at run time, so a `switch` picks the pair's.
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
import { ACCUMULATE_KERNEL } from "../lib/train/accumulate.ts";

/** Threads per workgroup. */
const WORKGROUP = 64;

/** `acc_k[i] += g_k[i]` over `count` pairs whose elements follow each other. */
class AccumulateProgram implements WebGpuProgram {
  variableNames: string[];
  outputShape = [1];
  shaderKey: string;
  dispatchLayout = { x: [0] };
  dispatch: [number, number, number];
  workgroupSize: [number, number, number] = [WORKGROUP, 1, 1];
  uniforms: string;
  private count: number;

  constructor(count: number, total: number) {
    this.count = count;
    this.variableNames = [];
    for (let k = 0; k < count; k++) this.variableNames.push(`acc${k}`, `g${k}`);
    this.uniforms = [...Array(count).keys()].map((k) => `start${k} : i32,`).join(" ") +
      " total : i32,";
    this.shaderKey = `sigmaAccumulate_${count}`;
    this.dispatch = [Math.ceil(total / WORKGROUP), 1, 1];
  }

  getUserCode(): string {
    const decls: string[] = [];
    const find: string[] = [];
    const cases: string[] = [];
    for (let k = 0; k < this.count; k++) {
      decls.push(
        `@group(0) @binding(${1 + 2 * k}) var<storage, read_write> acc${k}W : array<f32>;`,
      );
      if (k > 0) {
        find.push(`if (t >= uniforms.start${k}) { k = ${k}; start = uniforms.start${k}; }`);
      }
      cases.push(`case ${k}: { acc${k}W[t - start] = acc${k}W[t - start] + g${k}[t - start]; }`);
    }
    // tfjs's index accounts for a folded dispatch.
    return `
  ${decls.join("\n  ")}
  fn main(index : i32) {
    let t = index;
    // The placeholder output must be used: a binding the shader never touches is left out
    // of the pipeline's layout, and tfjs's bind group, which has it, would not match.
    if (t == 0) {
      result[0] = 0.0;
    }
    if (t >= uniforms.total) {
      return;
    }
    var k = 0;
    var start = 0;
    ${find.join("\n    ")}
    switch k {
      ${cases.join("\n      ")}
      default: {}
    }
  }`;
  }
}

function accumulateKernel(args: Parameters<tf.KernelFunc>[0]): Info[] {
  const backend = args.backend as unknown as Backend;
  const inputs = args.inputs as Record<string, Info>;
  const { pairs } = args.attrs as unknown as { pairs: number };
  const size = (t: Info) => t.shape.reduce((a, b) => a * b, 1);
  // Bindings: the placeholder output and two per pair.
  const limit = backend.device.limits.maxStorageBuffersPerShaderStage;
  const perProgram = Math.max(1, Math.min(16, Math.floor((limit - 1) / 2)));
  for (let first = 0; first < pairs; first += perProgram) {
    const group: Info[] = [];
    const uniforms: ProgramUniform[] = [];
    let total = 0;
    for (let k = first; k < Math.min(pairs, first + perProgram); k++) {
      group.push(inputs[`acc${k}`], inputs[`g${k}`]);
      uniforms.push(int(total));
      total += size(inputs[`acc${k}`]);
    }
    uniforms.push(int(total));
    const placeholder = backend.runWebGPUProgram(
      new AccumulateProgram(group.length / 2, total),
      group,
      "float32",
      uniforms,
    );
    backend.disposeData(placeholder.dataId);
  }
  // Written in place: a copy of the old values kept on the CPU by a read is stale now.
  for (let k = 0; k < pairs; k++) backend.tensorMap.get(inputs[`acc${k}`].dataId).values = null;
  return [];
}

let registered = false;

/** Registers `ACCUMULATE_KERNEL` for the webgpu backend; idempotent. */
export function registerWebGpuAccumulate(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: ACCUMULATE_KERNEL,
    backendName: "webgpu",
    kernelFunc: accumulateKernel as unknown as tf.KernelFunc,
  });
}
