/**
 * What the project's WGSL kernels use of tfjs-backend-webgpu 4.22 (not in its public types):
 * the shape of a program `runWebGPUProgram` runs, its uniforms, and the backend's two
 * methods the kernels call. One place, so the fused kernels' files hold only their maths.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";

/** A tensor as kernels see it. */
export type Info = tf.TensorInfo;

/** A uniform value a program declares in its `uniforms` string, in the same order. */
export interface ProgramUniform {
  /** How tfjs packs the value. */
  type: "int32" | "uint32" | "float32";
  /** The value (one number for a scalar field). */
  data: number[];
}

/** What tfjs-backend-webgpu 4.22 reads of a program (`webgpu_program.ts`). */
export interface WebGpuProgram {
  /** Names of the input bindings, in order: binding `1 + i` (the output is binding 0). */
  variableNames: string[];
  /** The output's shape. */
  outputShape: number[];
  /** Identifies the generated code; tfjs appends the inputs' ranks and dtypes. */
  shaderKey: string;
  /** Output axes per dispatch dimension; only `x` here, so the index is a flat one. */
  dispatchLayout: { x: number[] };
  /** Workgroups per dimension; tfjs reshapes an `x` over 65,535 into `x * y (* z)`. */
  dispatch: [number, number, number];
  /** Threads per workgroup. */
  workgroupSize: [number, number, number];
  /** Extra members of the `Uniforms` struct, e.g. `"rows : i32, eps : f32,"`. */
  uniforms?: string;
  /** Whether tfjs adds `uniforms.size`, the output's element count. */
  size?: boolean;
  /** The WGSL of `main`, after tfjs's generated bindings and helpers. */
  getUserCode(): string;
}

/** What the kernels use of tfjs-backend-webgpu's backend object. */
export interface WebGpuBackend {
  /** Runs `program` into a new output (one dispatch). */
  runWebGPUProgram(
    program: WebGpuProgram,
    inputs: Info[],
    outputDtype: tf.DataType,
    uniforms?: ProgramUniform[],
  ): Info;
  /** A new tensor's bookkeeping (its buffer comes with its first use). */
  makeTensorInfo(shape: number[], dtype: tf.DataType): Info;
  /** Drops one reference to a tensor's data (freed once the queue no longer uses it). */
  disposeData(dataId: tf.DataId): boolean;
  /** The backend's tensor records; `values` is a copy on the CPU kept by a read. */
  tensorMap: { get(dataId: tf.DataId): { values: unknown } };
  /** The device, for the limits that decide how much one program may bind. */
  device: { limits: { maxStorageBuffersPerShaderStage: number } };
}

/** An i32 uniform of one value. */
export const int = (value: number): ProgramUniform => ({ type: "int32", data: [value] });

/** `t`'s data under another shape of the same size (a view, as tfjs's Reshape returns). */
export const viewAs = (t: Info, shape: number[]): Info => ({
  dataId: t.dataId,
  shape,
  dtype: t.dtype,
});
