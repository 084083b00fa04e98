/**
 * Generative sequential recommendation in Deno on tfjs: SIGMA (a VAE whose prior is a
 * Gaussian mixture of the user's own interests) and the SASRec baseline behind one model
 * interface, with full-catalogue evaluation, a seeded
 * trainer with atomic checkpoints, and a backend chosen at run time (WebGPU, WebAssembly
 * SIMD or the pure-JS cpu kernels).
 *
 * The usual way in is the command line (`deno task train`, `eval`, `recommend`, `serve`);
 * this module is the same pipeline as a library, up to recommendations: a
 * {@linkcode Recommender} on the caller's own item names, a portable model file
 * (safetensors; {@linkcode encodeModelFile}) that loads from a path, a URL or bytes, and the
 * HTTP API as a plain fetch handler ({@linkcode createHandler}).
 *
 * @example Train a small SASRec on the embedded synthetic data and read its test metrics
 * ```ts
 * import {
 *   leaveOneOut,
 *   SasRec,
 *   selectBackend,
 *   syntheticDataset,
 *   train,
 *   evaluateModel,
 * } from "./mod.ts";
 *
 * const chosen = await selectBackend("auto");
 * console.log(`backend ${chosen.name}: ${chosen.reason}`);
 * const data = syntheticDataset({ seed: 7 });
 * const { split } = leaveOneOut(data);
 * const numItems = data.numItems;
 * const model = new SasRec({ numItems, hidden: 32, heads: 2, layers: 1, inner: 64 });
 * await train(model, split, numItems, { epochs: 2, batchSize: 128 });
 * const test = await evaluateModel(model, split.test, numItems, 256, model.config.maxLength);
 * console.log(test["recall@20"], test["ndcg@20"]);
 * model.params.dispose();
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
  type SelectBackendOptions,
} from "./backends/mod.ts";
export * from "./lib/data/mod.ts";
export * from "./lib/eval/mod.ts";
export {
  type ModelEntry,
  modelEntry,
  MODELS,
  SasRec,
  SASREC_DEFAULTS,
  SASREC_HELP,
  type SasRecConfig,
  SEQUENCE_ENCODER_DEFAULTS,
  SEQUENCE_ENCODER_HELP,
  type SequenceEncoderConfig,
  type SequentialModel,
  Sigma,
  SIGMA_DEFAULTS,
  SIGMA_HELP,
  type SigmaConfig,
  stepSeeds,
  validateSasRecConfig,
  validateSigmaConfig,
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
export { type Init, type ParamRecord, ParamStore } from "./lib/nn/params.ts";
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
  type CheckpointMeta,
  fnv1a,
  readCheckpoint,
  type ResumeState,
  writeCheckpoint,
} from "./lib/train/checkpoint.ts";
export {
  type EpochRecord,
  evaluateModel,
  SELECTION_METRIC,
  train,
  TRAIN_DEFAULTS,
  type TrainHooks,
  type TrainOptions,
  type TrainResult,
} from "./lib/train/trainer.ts";
export {
  decodeModelFile,
  encodeModelFile,
  MODEL_FILE_FORMAT,
  MODEL_FILE_NAME,
  MODEL_FILE_VERSION,
  modelFileBytes,
  type ModelFileContents,
  ModelFileError,
  type ModelSource,
} from "./lib/inference/model_file.ts";
export {
  type Recommendation,
  Recommender,
  type RecommenderOptions,
  type RecommendOptions,
  type RecommendResult,
  type ServableModel,
} from "./lib/inference/recommender.ts";
export { createHandler, type HandlerLimits, type HandlerOptions } from "./lib/serve/handler.ts";
export { MicroBatcher, type MicroBatcherOptions } from "./lib/serve/batcher.ts";
