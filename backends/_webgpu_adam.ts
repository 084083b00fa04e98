/**
 * Adam over many variables at once on tfjs's webgpu backend: the kernel
 * {@linkcode FUSED_ADAM_KERNEL} (named, and its contract given, in `lib/train/adam.ts`).
 *
 * Why: tfjs-backend-webgpu runs one GPU dispatch per op, and Adam written with tfjs ops
 * takes 14 of them per variable and step (two muls and an add per moment, a square, two
 * bias-correcting divisions, then a sqrt, an add, a division, a mul and an add): a model of
 * a few dozen parameter tensors spent hundreds of dispatches a step on its optimizer alone,
 * each with its own output buffer, uniform buffer and bind group. Here one compute shader updates
 * several variables per dispatch, in place: its moments (in two flat buffers, `m` and `v`,
 * that `Adam` keeps for the whole model) and the variable's own buffer.
 *
 * How, and why each piece of tfjs internals is touched:
 * - tfjs's programs have a single output buffer, which cannot update parameters and both
 *   moments. The kernel therefore records its own dispatch, on tfjs's command encoder and
 *   compute pass (`ensureCommandEncoderReady`, `computePassEncoder`), so that it runs after
 *   every op tfjs queued before it (the forward and backward passes that read the old
 *   parameters) and before every op queued after it: WebGPU orders the dispatches of one
 *   pass, and the command buffers of one queue.
 * - Like tfjs's `recordAndSubmit`, it adds the data ids it binds to
 *   `commandQueueOwnedIds` (tfjs then defers freeing a buffer disposed before the queue
 *   was submitted, instead of handing it to a new tensor while our dispatch still reads
 *   it), counts its dispatches in `dispatchCountInPass` and submits once that reaches
 *   `WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE`.
 * - Its constants (per variable: where it starts among the threads, its size, the offset
 *   of its moments, its bias corrections) go in a uniform buffer taken from tfjs's buffer
 *   manager and handed back through `uniformPendingDisposal`, freed when the queue is
 *   submitted, as tfjs's own uniforms are. A buffer reused from step to step would not do:
 *   `queue.writeBuffer` takes effect before the command buffer still being recorded runs,
 *   so a second step's constants would overwrite the first's before it was executed.
 * - A tensor read back earlier keeps a copy of its values on the CPU (`values`), which tfjs
 *   returns instead of the GPU buffer; the kernel drops that copy for every buffer it
 *   writes.
 * - Variables per dispatch: each binds its parameter (read-write) and its gradient (read);
 *   the moments take two more storage bindings; so `(maxStorageBuffersPerShaderStage - 2) /
 *   2` of them (3 under WebGPU's default limit of 8, which tfjs's device keeps: it does not
 *   ask for more). Binding the gradients one by one instead of copying them into one flat
 *   buffer first keeps the step to its dispatches: no copy commands, which would also end
 *   the compute pass.
 *
 * The arithmetic is the composed path's, operation for operation, in float32 (see
 * `lib/train/adam.ts`). WGSL lets the shader compiler contract `a * b + c` into a fused
 * multiply-add and allows divisions and square roots a few ulps from the correctly rounded
 * result, so the two paths may differ in the last bits; `tests/adam_fused_test.ts` bounds
 * the difference.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { FUSED_ADAM_KERNEL, type FusedAdamAttrs } from "../lib/train/adam.ts";

// WebGPU's flag values, from the specification (the globals `GPUBufferUsage` and
// `GPUShaderStage` are not typed in every environment this file is checked for).
const BUFFER_COPY_DST = 0x0008;
const BUFFER_UNIFORM = 0x0040;
const SHADER_STAGE_COMPUTE = 0x4;

/** Threads per workgroup; tfjs's element-wise programs use 64 as well. */
const WORKGROUP = 64;

/** Bytes of the uniform block before the per-variable entries (three vec4s). */
const HEADER_BYTES = 48;
/** Bytes of one variable's entry (two vec4s). */
const ENTRY_BYTES = 32;

/** A cap on variables per dispatch, whatever the device allows (shader size, uniforms). */
const MAX_VARIABLES_PER_DISPATCH = 16;

/** The parts of a WebGPU device the kernel uses (structural: see the flags above). */
interface Device {
  limits: {
    maxStorageBuffersPerShaderStage: number;
    maxComputeWorkgroupsPerDimension: number;
  };
  createShaderModule(descriptor: { code: string }): unknown;
  createBindGroupLayout(descriptor: { entries: unknown[] }): unknown;
  createPipelineLayout(descriptor: { bindGroupLayouts: unknown[] }): unknown;
  createComputePipeline(descriptor: {
    layout: unknown;
    compute: { module: unknown; entryPoint: string };
  }): unknown;
  createBindGroup(descriptor: {
    layout: unknown;
    entries: { binding: number; resource: { buffer: unknown } }[];
  }): unknown;
}

interface PassEncoder {
  setPipeline(pipeline: unknown): void;
  setBindGroup(index: number, group: unknown): void;
  dispatchWorkgroups(x: number, y?: number, z?: number): void;
}

/** tfjs-backend-webgpu 4.22's `WebGPUBackend`, the members this kernel relies on. */
interface WebGpuBackend {
  device: Device;
  queue: { writeBuffer(buffer: unknown, offset: number, data: ArrayBuffer): void };
  tensorMap: { get(dataId: tf.DataId): { resource: unknown; values: unknown; dtype: string } };
  uploadToGPU(dataId: tf.DataId): void;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  commandEncoder: { beginComputePass(descriptor: object): PassEncoder } | null;
  computePassEncoder: PassEncoder | null;
  commandQueueOwnedIds: WeakSet<object>;
  dispatchCountInPass: number;
  bufferManager: { acquireBuffer(size: number, usage: number): unknown };
  uniformPendingDisposal: unknown[];
}

/**
 * Variables one dispatch updates on a device with `maxStorageBuffersPerShaderStage` storage
 * bindings per stage (WebGPU's default and tfjs's device: 8, hence 3): two bindings each,
 * after the two moment buffers; at most 16.
 *
 * @example Usage
 * ```ts
 * import { variablesPerDispatch } from "./_webgpu_adam.ts";
 * variablesPerDispatch(8); // 3
 * ```
 */
export function variablesPerDispatch(maxStorageBuffersPerShaderStage: number): number {
  const fit = Math.floor((maxStorageBuffersPerShaderStage - 2) / 2);
  return Math.max(1, Math.min(MAX_VARIABLES_PER_DISPATCH, fit));
}

/** The WGSL of a dispatch over `count` variables. */
function shader(count: number): string {
  const bindings: string[] = [];
  const cases: string[] = [];
  for (let k = 0; k < count; k++) {
    bindings.push(
      `@group(0) @binding(${3 + 2 * k}) var<storage, read_write> w${k}: array<f32>;`,
      `@group(0) @binding(${4 + 2 * k}) var<storage, read> g${k}: array<f32>;`,
    );
    cases.push(`    case ${k}u: { w${k}[i] = adam(g${k}[i], j, c, w${k}[i]); }`);
  }
  return `
struct Var {
  // first thread, size, index of the first moment in m and v, unused
  range: vec4<u32>,
  // float32 1 - beta1^t and 1 - beta2^t of this variable's step t, unused, unused
  corr: vec4<f32>,
}
struct Params {
  beta: vec4<f32>, // beta1, 1 - beta1, beta2, 1 - beta2 (each rounded to float32)
  step: vec4<f32>, // epsilon, -learningRate, unused, unused
  total: vec4<u32>, // threads in use, unused, unused, unused
  vars: array<Var, ${count}>,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> m: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
${bindings.join("\n")}

// tfjs's AdamOptimizer as lib/train/adam.ts composes it, operation for operation.
fn adam(g: f32, j: u32, c: vec4<f32>, w: f32) -> f32 {
  let mNew = m[j] * params.beta.x + g * params.beta.y;
  let vNew = v[j] * params.beta.z + (g * g) * params.beta.w;
  m[j] = mNew;
  v[j] = vNew;
  let mHat = mNew / c.x;
  let vHat = vNew / c.y;
  return (mHat / (sqrt(vHat) + params.step.x)) * params.step.y + w;
}

@compute @workgroup_size(${WORKGROUP})
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) groups: vec3<u32>,
  @builtin(local_invocation_index) lane: u32,
) {
  let t = (wg.y * groups.x + wg.x) * ${WORKGROUP}u + lane;
  if (t >= params.total.x) {
    return;
  }
  // The variables' thread ranges follow each other: the last one starting at or before t.
  var k = 0u;
  for (var n = 1u; n < ${count}u; n++) {
    if (t >= params.vars[n].range.x) {
      k = n;
    }
  }
  let r = params.vars[k].range;
  let i = t - r.x;
  let j = r.z + i;
  let c = params.vars[k].corr;
  // Bindings cannot be indexed at run time: one case per variable.
  switch k {
${cases.join("\n")}
    default: {}
  }
}
`;
}

interface Pipeline {
  pipeline: unknown;
  layout: unknown;
}

/** Pipelines by device, then by variables per dispatch: compiled once each. */
const pipelines = new WeakMap<object, Map<number, Pipeline>>();

function pipelineFor(device: Device, count: number): Pipeline {
  let byCount = pipelines.get(device);
  if (!byCount) {
    byCount = new Map();
    pipelines.set(device, byCount);
  }
  let made = byCount.get(count);
  if (!made) {
    const entries: unknown[] = [
      { binding: 0, visibility: SHADER_STAGE_COMPUTE, buffer: { type: "uniform" } },
      { binding: 1, visibility: SHADER_STAGE_COMPUTE, buffer: { type: "storage" } },
      { binding: 2, visibility: SHADER_STAGE_COMPUTE, buffer: { type: "storage" } },
    ];
    for (let k = 0; k < count; k++) {
      entries.push(
        { binding: 3 + 2 * k, visibility: SHADER_STAGE_COMPUTE, buffer: { type: "storage" } },
        {
          binding: 4 + 2 * k,
          visibility: SHADER_STAGE_COMPUTE,
          buffer: { type: "read-only-storage" },
        },
      );
    }
    // An explicit layout (not "auto"): the bind group is made for it before any dispatch.
    const layout = device.createBindGroupLayout({ entries });
    const pipeline = device.createComputePipeline({
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module: device.createShaderModule({ code: shader(count) }), entryPoint: "main" },
    });
    made = { pipeline, layout };
    byCount.set(count, made);
  }
  return made;
}

/** One variable of a step, as the kernel receives it. */
interface Part {
  w: tf.TensorInfo;
  g: tf.TensorInfo;
  offset: number;
  size: number;
  c1: number;
  c2: number;
}

/** The GPU buffer of `info` (uploaded first when its values are still on the CPU). */
function bufferOf(backend: WebGpuBackend, info: tf.TensorInfo): unknown {
  backend.uploadToGPU(info.dataId);
  const data = backend.tensorMap.get(info.dataId);
  const resource = data.resource as { size?: unknown } | null;
  if (data.dtype !== "float32" || typeof resource?.size !== "number") { // not a GPUBuffer
    throw new TypeError(`${FUSED_ADAM_KERNEL}: expected a float32 tensor in a GPU buffer`);
  }
  return resource;
}

/** The kernel: see the module documentation and `FusedAdamAttrs`. */
function fusedAdam(args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo[] {
  const backend = args.backend as unknown as WebGpuBackend;
  const attrs = args.attrs as unknown as FusedAdamAttrs;
  const { inputs } = args;
  const parts: Part[] = [];
  attrs.offsets.forEach((offset, i) => {
    const w = inputs[`w${i}`] as tf.TensorInfo;
    const size = w.shape.reduce((a, b) => a * b, 1);
    if (size === 0) return;
    parts.push({
      w,
      g: inputs[`g${i}`] as tf.TensorInfo,
      offset,
      size,
      c1: attrs.corrections1[i],
      c2: attrs.corrections2[i],
    });
  });
  if (parts.length === 0) return [];
  const m = inputs.m as tf.TensorInfo;
  const v = inputs.v as tf.TensorInfo;
  const device = backend.device;
  const perDispatch = variablesPerDispatch(device.limits.maxStorageBuffersPerShaderStage);
  // Uploads first: one may record a copy on the command encoder, which ends the pass.
  const mBuffer = bufferOf(backend, m);
  const vBuffer = bufferOf(backend, v);
  const buffers = parts.map((p) => ({ w: bufferOf(backend, p.w), g: bufferOf(backend, p.g) }));
  const batch = tf.env().getNumber("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE");
  const maxGroups = device.limits.maxComputeWorkgroupsPerDimension;
  for (let first = 0; first < parts.length; first += perDispatch) {
    const group = parts.slice(first, first + perDispatch);
    const { pipeline, layout } = pipelineFor(device, group.length);
    // The uniform block: see `Params` in the shader.
    const bytes = HEADER_BYTES + ENTRY_BYTES * group.length;
    const block = new ArrayBuffer(bytes);
    const floats = new Float32Array(block);
    const words = new Uint32Array(block);
    // The composed path's scalars: tf.mul(m, beta1) makes a float32 scalar of beta1,
    // tf.mul(g, 1 - beta1) one of the double 1 - beta1, and so on; Float32Array rounds
    // the same way.
    floats.set([attrs.beta1, 1 - attrs.beta1, attrs.beta2, 1 - attrs.beta2], 0);
    floats.set([attrs.epsilon, -attrs.learningRate], 4);
    let threads = 0;
    group.forEach((p, k) => {
      const at = (HEADER_BYTES + ENTRY_BYTES * k) / 4;
      words.set([threads, p.size, p.offset], at);
      floats.set([p.c1, p.c2], at + 4);
      threads += p.size;
    });
    words[8] = threads;
    const uniform = backend.bufferManager.acquireBuffer(bytes, BUFFER_UNIFORM | BUFFER_COPY_DST);
    backend.queue.writeBuffer(uniform, 0, block);
    backend.uniformPendingDisposal.push(uniform);
    const entries = [
      { binding: 0, resource: { buffer: uniform } },
      { binding: 1, resource: { buffer: mBuffer } },
      { binding: 2, resource: { buffer: vBuffer } },
    ];
    group.forEach((_, k) => {
      entries.push(
        { binding: 3 + 2 * k, resource: { buffer: buffers[first + k].w } },
        { binding: 4 + 2 * k, resource: { buffer: buffers[first + k].g } },
      );
    });
    const bindGroup = device.createBindGroup({ layout, entries });
    // tfjs's recordAndSubmit, for a program of our own.
    const owned = backend.commandQueueOwnedIds;
    owned.add(m.dataId);
    owned.add(v.dataId);
    for (const p of group) {
      owned.add(p.w.dataId);
      owned.add(p.g.dataId);
    }
    backend.ensureCommandEncoderReady();
    backend.computePassEncoder ??= backend.commandEncoder!.beginComputePass({});
    const pass = backend.computePassEncoder;
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    const workgroups = Math.ceil(threads / WORKGROUP);
    const x = Math.min(workgroups, maxGroups);
    pass.dispatchWorkgroups(x, Math.ceil(workgroups / x), 1);
    backend.dispatchCountInPass++;
    if (backend.dispatchCountInPass >= batch) {
      backend.endComputePassEncoder();
      backend.submitQueue();
    }
  }
  // Written in place: a copy of the old values kept on the CPU by a read is stale now.
  for (const info of [m, v, ...parts.map((p) => p.w)]) {
    backend.tensorMap.get(info.dataId).values = null;
  }
  return [];
}

let registered = false;

/**
 * Registers {@linkcode FUSED_ADAM_KERNEL} for the webgpu backend; idempotent. Called by
 * `backends/_select.ts` on load. Where it is registered, `Adam` keeps its moments in two
 * flat tensors and steps every variable through it.
 */
export function registerWebGpuAdam(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: FUSED_ADAM_KERNEL,
    backendName: "webgpu",
    kernelFunc: fusedAdam,
  });
}
