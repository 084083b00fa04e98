/**
 * Generative sequential recommendation on tfjs: SIGMA (a VAE whose prior is a Gaussian
 * mixture of the user's own interests), the SASRec baseline and the diffusion recommenders
 * DiffuRec and DiffuRecSys (built by name through {@linkcode MODELS}; their inference
 * settings changed with {@linkcode withInferenceOverrides}) behind one model interface,
 * full-catalogue evaluation, and everything that serves a trained model:
 * a {@linkcode Recommender} on the caller's own item names, the portable model file
 * (safetensors; {@linkcode decodeModelFile}) read from bytes, a URL or a `Response`, the
 * HTTP API as a plain fetch handler ({@linkcode createHandler}), and a backend chosen at
 * run time (WebGPU, WebAssembly SIMD or pure-JS cpu kernels).
 *
 * This entry runs wherever JavaScript runs: browsers, edge isolates, Deno with no
 * permissions. Its import graph uses no `Deno.*`, no FFI and no `node:` module (a test
 * walks it). Training, file readers, run folders and the native BLAS are Deno-only and
 * live behind `./train`; the command line behind `./cli`.
 *
 * @example Load a model file and recommend
 * ```ts
 * import { datasetFromSequences, Recommender, SasRec, selectBackend } from "./mod.ts";
 *
 * await selectBackend("auto");
 * // A model file from a URL, a path, a Response or bytes: here, one made on the spot.
 * const data = datasetFromSequences({ ann: ["tea", "mug", "kettle"], bob: ["mug", "spoon"] });
 * using fresh = new Recommender(new SasRec({ numItems: data.numItems }), data.vocab.items);
 * const bytes = await fresh.toBytes();
 *
 * using recommender = await Recommender.load(bytes);
 * const { items, unknown } = await recommender.recommend(["tea", "teapot"], { k: 2 });
 * console.log(items, unknown); // two of mug, kettle, spoon with scores; ["teapot"]
 * ```
 *
 * @module
 */

export {
  BACKEND_CHOICES,
  type BackendChoice,
  type ChosenBackend,
  probeWebGpu,
  selectBackend,
  type WebBackendOptions,
} from "./backends/web.ts";
export * from "./lib/data/mod.ts";
export * from "./lib/eval/mod.ts";
export {
  type ModelEntry,
  modelEntry,
  modelPreset,
  MODELS,
  type ModelTrainDefaults,
  SasRec,
  SASREC_DEFAULTS,
  SASREC_HELP,
  type SasRecConfig,
  SEQUENCE_ENCODER_DEFAULTS,
  SEQUENCE_ENCODER_HELP,
  type SequenceEncoderConfig,
  type SequentialModel,
  Sigma,
  SIGMA_DEFAULT_PRESET,
  SIGMA_DEFAULTS,
  SIGMA_HELP,
  SIGMA_PRESETS,
  type SigmaConfig,
  stepSeeds,
  validateSasRecConfig,
  validateSigmaConfig,
  withInferenceOverrides,
} from "./lib/models/mod.ts";
export {
  gaussianKl,
  gaussianLogDensity,
  gumbelNoise,
  gumbelSoftmax,
  l2Normalise,
  mixtureLogDensity,
  type MixtureOptions,
  mixturePriorKl,
  orthogonalityLoss,
  reparameterise,
  standardNormalKl,
  straightThroughOneHot,
} from "./lib/prob/distributions.ts";
export {
  ITEM_LOSS_KINDS,
  itemLoss,
  type ItemLossKind,
  type ItemLossOptions,
} from "./lib/nn/item_losses.ts";
export { type ExternalRows, type Init, type ParamRecord, ParamStore } from "./lib/nn/params.ts";
export type { SeedSource } from "./lib/nn/layers.ts";
export type {
  Scalar,
  Tensor,
  Tensor1D,
  Tensor2D,
  Tensor3D,
  Variable,
} from "./lib/nn/tensor_types.ts";
export {
  decodeModelFile,
  type DecodeModelFileOptions,
  encodeModelFile,
  type EncodeModelFileOptions,
  type Int8Items,
  ITEM_DTYPES,
  type ItemDtype,
  type LoadProgress,
  MAX_MODEL_FILE_BYTES,
  MODEL_FETCH_STALL_MS,
  MODEL_FILE_FORMAT,
  MODEL_FILE_NAME,
  MODEL_FILE_VERSION,
  modelFileBytes,
  type ModelFileContents,
  ModelFileError,
  type ModelSource,
} from "./lib/inference/model_file.ts";
export {
  BLOCK_ITEMS,
  PASS_BUDGET,
  type Recommendation,
  Recommender,
  type RecommenderOptions,
  type RecommendOptions,
  type RecommendResult,
  type ServableModel,
} from "./lib/inference/recommender.ts";
export { createHandler, type HandlerLimits, type HandlerOptions } from "./lib/serve/handler.ts";
export { MAX_WAIT_MS, MicroBatcher, type MicroBatcherOptions } from "./lib/serve/batcher.ts";
