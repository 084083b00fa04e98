/**
 * An optional native BLAS for the wasm backend's large matrix products, through Deno's FFI.
 *
 * Why: the item GEMMs of a full-softmax step are most of its work, and WebAssembly SIMD
 * (128-bit vectors) caps them: XNNPACK reaches 32-62 GFLOP/s on this machine's two cores
 * (`bench/gemm.ts`), which puts one SIGMA Beauty epoch at >= 125 s of GEMM alone, and no
 * wasm kernel can pass 117 (`bench/simd_peak.ts`). OpenBLAS on the same cores, with
 * AVX-512, does the same products at 121-177 GFLOP/s. tfjs-backend-wasm
 * keeps every tensor in one linear heap, so `cblas_sgemm` can read and write tfjs's tensors
 * in place: nothing is copied, and every other kernel stays on wasm.
 *
 * It is off unless asked for (`SelectBackendOptions.blas` in `mod.ts`; the CLI's
 * `--blas` asks for `auto` by default) because it needs `--allow-ffi` and a shared library
 * on the host. Without either, the wasm backend runs exactly as before.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import { matMulDims } from "./_matmul_dims.ts";
import { setHeapGemm, setMatMulAccelerator } from "./_kernels.ts";

type Info = tf.TensorInfo;

/** Libraries tried by `auto`, in order: Linux's OpenBLAS, then macOS's Accelerate and
 * Homebrew's OpenBLAS, then Windows. The first that opens and exports `cblas_sgemm` wins.
 * Only the Linux names have been run (Debian's libopenblas0-pthread); the others are the
 * libraries' documented install paths. */
export const BLAS_CANDIDATES: readonly string[] = [
  "libopenblas.so.0",
  "libopenblas.so",
  "/System/Library/Frameworks/Accelerate.framework/Accelerate",
  "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
  "/usr/local/opt/openblas/lib/libopenblas.dylib",
  "libopenblas.dll",
];

const SYMBOLS = {
  cblas_sgemm: {
    // order, transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "f32",
      "pointer",
      "i32",
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_corename: { parameters: [], result: "pointer", optional: true },
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
} as const;

// CBLAS enum values (cblas.h).
const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

/**
 * A call (all the products of a batch together) of fewer multiply-adds than this stays on
 * the wasm kernels: one FFI call and OpenBLAS's thread wake-up cost a few microseconds.
 */
export const BLAS_MIN_MULTIPLY_ADDS = 1 << 20;

/**
 * A batch whose single products are smaller than this many multiply-adds stays on wasm:
 * each product is one FFI call, which costs more than a product of a few hundred
 * multiply-adds (attention's single query, `[1, 32] x [32, 10]`). Above it the batch goes
 * to the BLAS even when each product is small: tfjs-wasm's single-threaded build runs a
 * batched product on a scalar loop, and `bench/attention_matmul.ts --threads 1` timed
 * `[1024 x 10 x 32] x [32 x 10]` at 4.0 ms there against 2.3 through BLAS, and
 * `[512 x 50 x 64] x [64 x 50]` at 105 against 13.
 */
export const BLAS_MIN_PRODUCT = 1 << 10;

/** What {@linkcode useNativeBlas} found. */
export interface BlasStatus {
  /** Whether large wasm matrix products now run on the native library. */
  active: boolean;
  /** For the progress log: the library and its build, or why none is used. */
  detail: string;
}

type BlasLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

let active: { library: BlasLibrary } | null = null;
let calls = 0;
/** Libraries opened so far, by path: switching the BLAS off and on does not reopen them. */
const opened = new Map<string, BlasLibrary>();

function cString(pointer: Deno.PointerValue): string | null {
  return pointer ? new Deno.UnsafePointerView(pointer).getCString() : null;
}

/**
 * OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each call before they sleep,
 * and on a machine whose cores tfjs-backend-wasm's own threads also use, that spinning
 * took the cores from every wasm kernel between two GEMMs: a SIGMA Beauty step went from
 * 1.1 s to 1.5 s, with Multiply and Add three times slower. 2^4 cycles makes them sleep at
 * once. OpenBLAS reads this when it loads, so it is set before; a user's value is kept.
 */
function quietIdleThreads(): void {
  try {
    if (Deno.env.get("OPENBLAS_THREAD_TIMEOUT") === undefined) {
      Deno.env.set("OPENBLAS_THREAD_TIMEOUT", "4");
    }
  } catch {
    // no --allow-env: OpenBLAS keeps its default, slower but correct
  }
}

/**
 * Whether this CPU runs OpenBLAS's SkylakeX kernels (AVX-512 F, CD, BW, DQ and VL, with the
 * OS saving their registers), or null where that cannot be told. Read from libgcc's
 * `__cpu_model` (the table behind GCC's `__builtin_cpu_supports`, filled when libgcc_s
 * loads; its layout is GCC's ABI since 4.8) through the FFI: the `deno task` permissions do
 * not let a program read `/proc/cpuinfo` (Deno 2 reads `/proc` only under `--allow-all`).
 * Linux on x86-64 only.
 */
export function cpuHasAvx512(): boolean | null {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return null;
  let libc:
    | Deno.DynamicLibrary<{
      dlopen: { parameters: ["buffer", "i32"]; result: "pointer" };
      dlvsym: { parameters: ["pointer", "buffer", "buffer"]; result: "pointer" };
    }>
    | null = null;
  try {
    libc = Deno.dlopen("libc.so.6", {
      dlopen: { parameters: ["buffer", "i32"], result: "pointer" },
      dlvsym: { parameters: ["pointer", "buffer", "buffer"], result: "pointer" },
    });
    const text = (s: string) => new TextEncoder().encode(`${s}\0`);
    const RTLD_NOW = 2;
    const handle = libc.symbols.dlopen(text("libgcc_s.so.1"), RTLD_NOW);
    if (!handle) return null;
    // `__cpu_model` has a non-default symbol version: dlsym would not find it.
    const model = libc.symbols.dlvsym(handle, text("__cpu_model"), text("GCC_4.8.0"));
    if (!model) return null;
    // struct { u32 vendor, type, subtype; u32 features[1]; }: GCC's processor_features
    // bits AVX512F 15, AVX512VL 20, AVX512BW 21, AVX512DQ 22, AVX512CD 23.
    const features = new Deno.UnsafePointerView(model).getUint32(12);
    return [15, 20, 21, 22, 23].every((bit) => (features >>> bit & 1) === 1);
  } catch {
    return null;
  } finally {
    libc?.close();
  }
}

/**
 * OpenBLAS 0.3.21 runs its Haswell (AVX2) kernels on CPUs it does not know, AVX-512 ones
 * included (this project's AMD EPYC hosts), where its SkylakeX kernels do the item GEMMs
 * 1.6-1.8x faster (docs/performance.md). So, before OpenBLAS loads and unless the user set
 * `OPENBLAS_CORETYPE`, it is set to SkylakeX where {@linkcode cpuHasAvx512} says the CPU
 * has what those kernels use; never elsewhere (they would stop the process with an illegal
 * instruction). Returns what to say of the choice, or "" where nothing was decided here.
 */
function chooseCoreType(): string {
  try {
    if (Deno.env.get("OPENBLAS_CORETYPE") !== undefined) return "OPENBLAS_CORETYPE";
    const avx512 = cpuHasAvx512();
    if (avx512 !== true) return avx512 === false ? "" : "AVX-512 unknown";
    Deno.env.set("OPENBLAS_CORETYPE", "SkylakeX");
    return "chosen: the CPU has AVX-512";
  } catch {
    return ""; // no --allow-env: OpenBLAS chooses
  }
}

function open(path: string): BlasLibrary | string {
  const known = opened.get(path);
  if (known) return known;
  try {
    const library = Deno.dlopen(path, SYMBOLS);
    opened.set(path, library);
    return library;
  } catch (error) {
    return error instanceof Error ? error.message.split("\n")[0] : String(error);
  }
}

/**
 * Routes the wasm backend's large `BatchMatMul`s to a native BLAS, or stops doing so.
 *
 * `choice` is `"off"`, `"auto"` (the first of {@linkcode BLAS_CANDIDATES} that loads; none
 * found is not an error) or the path of a library exporting `cblas_sgemm` (which must
 * load: anything else is an `Error` naming the path). `threads` is passed to OpenBLAS, so
 * that `--threads 1` means one core for the GEMMs too. Safe to call again: the last call
 * decides.
 */
export function useNativeBlas(choice: string, threads?: number): BlasStatus {
  if (choice === "off") {
    active = null;
    return { active: false, detail: "native BLAS off" };
  }
  if (choice === "") throw new RangeError('blas: expected "auto", "off" or a library path');
  const ffi = Deno.permissions.querySync({ name: "ffi" }).state;
  if (ffi !== "granted") {
    if (choice !== "auto") {
      throw new Error(`blas: loading "${choice}" needs --allow-ffi (permission is ${ffi})`);
    }
    active = null;
    return { active: false, detail: "native BLAS not used: --allow-ffi not granted" };
  }
  quietIdleThreads();
  const why = chooseCoreType();
  const tried: string[] = [];
  for (const path of choice === "auto" ? BLAS_CANDIDATES : [choice]) {
    const library = open(path);
    if (typeof library === "string") {
      tried.push(`${path}: ${library}`);
      continue;
    }
    if (threads !== undefined) library.symbols.openblas_set_num_threads?.(threads);
    const core = library.symbols.openblas_get_corename
      ? cString(library.symbols.openblas_get_corename())
      : null;
    const config = library.symbols.openblas_get_config
      ? cString(library.symbols.openblas_get_config())
      : null;
    const coreText = core && `core ${core}${why ? ` (${why})` : ""}`;
    const build = [config?.split(" ").slice(0, 2).join(" "), coreText].filter(Boolean).join(", ");
    active = { library };
    return {
      active: true,
      detail: `large matmuls on native BLAS ${path}${build ? ` (${build})` : ""}`,
    };
  }
  if (choice !== "auto") throw new Error(`blas: cannot load ${tried[0]}`);
  active = null;
  return { active: false, detail: "native BLAS not used: no library found" };
}

/** Whether large wasm matrix products currently run on a native BLAS. */
export function nativeBlasActive(): boolean {
  return active !== null;
}

/** How many `BatchMatMul`s the native BLAS has run in this process (for tests and logs). */
export function nativeBlasCalls(): number {
  return calls;
}

/** What the BLAS path needs of a tfjs-backend-wasm instance. */
interface WasmHeap {
  wasm: { HEAPU8: Uint8Array };
  dataIdMap: { get(id: unknown): { memoryOffset: number } };
  makeOutput(shape: number[], dtype: string): Info;
}

/**
 * `BatchMatMul` (rank >= 2, batch dimensions equal or one side 1) through `cblas_sgemm`
 * on tfjs's heap; null when no library is active or the call is small or unusual.
 */
export function blasBatchMatMul(
  backend: WasmHeap,
  a: Info,
  b: Info,
  transA: boolean,
  transB: boolean,
): Info | null {
  if (!active) return null;
  const dims = matMulDims(a, b, transA, transB);
  if (!dims) return null;
  const { batchA, batchB, batch, m, n, k } = dims;
  if (batch * m * n * k < BLAS_MIN_MULTIPLY_ADDS || m * n * k < BLAS_MIN_PRODUCT) return null;
  const out = backend.makeOutput(dims.outShape, "float32");
  // The heap's address is taken after the output exists: allocating may grow (move) it.
  const heap = Deno.UnsafePointer.of(backend.wasm.HEAPU8 as Uint8Array<ArrayBuffer>);
  const at = (t: Info, index: number, stride: number) =>
    Deno.UnsafePointer.offset(
      heap!,
      backend.dataIdMap.get(t.dataId).memoryOffset + 4 * index * stride,
    );
  const sgemm = active.library.symbols.cblas_sgemm;
  calls++;
  for (let i = 0; i < batch; i++) {
    sgemm(
      ROW_MAJOR,
      transA ? TRANS : NO_TRANS,
      transB ? TRANS : NO_TRANS,
      m,
      n,
      k,
      1,
      at(a, batchA === 1 ? 0 : i, m * k),
      dims.rowA, // leading dimension: the stored row length
      at(b, batchB === 1 ? 0 : i, k * n),
      dims.rowB,
      0,
      at(out, i, m * n),
      n,
    );
  }
  return out;
}

// The wasm kernels try this first; it declines (null) while no library is active.
setMatMulAccelerator((backend, a, b, transposeA, transposeB) =>
  blasBatchMatMul(backend as WasmHeap, a, b, transposeA, transposeB)
);

// Loops of one product a step (the wasm GRU kernel) use it for products the rule above
// would send here; `calls` counts them too.
setHeapGemm({
  accepts: (m, n, k) => active !== null && m * n * k >= BLAS_MIN_MULTIPLY_ADDS,
  run: (backend, a, b, c, m, n, k, transB, beta) => {
    const heap = Deno.UnsafePointer.of(
      (backend as WasmHeap).wasm.HEAPU8 as Uint8Array<ArrayBuffer>,
    );
    const at = (offset: number) => Deno.UnsafePointer.offset(heap!, offset);
    calls++;
    active!.library.symbols.cblas_sgemm(
      ROW_MAJOR,
      NO_TRANS,
      transB ? TRANS : NO_TRANS,
      m,
      n,
      k,
      1,
      at(a),
      k,
      at(b),
      transB ? k : n,
      beta,
      at(c),
      n,
    );
  },
});
