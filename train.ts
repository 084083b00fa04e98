/**
 * Training under Deno: everything in `mod.ts`, plus the trainer (Adam, early stopping,
 * atomic checkpoints, resume), the file readers, run folders, and a backend choice that
 * adds wasm threads and the optional native BLAS and registers the gradients training
 * needs. Needs Deno (file system, and `--allow-ffi` for the BLAS).
 *
 * @example Train a small SASRec on the embedded synthetic data and read its test metrics
 * ```ts
 * import {
 *   evaluateModel,
 *   leaveOneOut,
 *   SasRec,
 *   selectBackend,
 *   syntheticDataset,
 *   train,
 * } from "./train.ts";
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

export * from "./mod.ts";
export {
  type BackendChoice,
  type BackendPurpose,
  selectBackend,
  type SelectBackendOptions,
  WEBGPU_TRAINING_RULE,
} from "./backends/mod.ts";
export { readCategories, readDataset } from "./lib/data/files.ts";
export {
  type CheckpointMeta,
  fnv1a,
  readCheckpoint,
  type ResumeState,
  writeCheckpoint,
  writeFileAtomic,
} from "./lib/train/checkpoint.ts";
export {
  clearRun,
  openRunFolder,
  RUN_FILES,
  runFilesIn,
  type RunLock,
} from "./lib/train/run_folder.ts";
export {
  checkSeed,
  type EpochRecord,
  FROZEN_ADAM_V,
  SELECTION_METRIC,
  train,
  TRAIN_DEFAULTS,
  type TrainHooks,
  type TrainOptions,
  type TrainResult,
  VALID_SAMPLINGS,
  type ValidSampling,
} from "./lib/train/trainer.ts";
