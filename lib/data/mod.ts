/**
 * Data for sequential recommendation: readers for sequence-lines, RecBole `.inter` and
 * MovieLens `ratings.dat` files, k-core filtering, item categories, the leave-one-out
 * split, padded train and evaluation batches, a seeded generator and a synthetic data set
 * with planted multi-interest structure.
 *
 * @example Usage
 * ```ts
 * import { evalBatches, leaveOneOut, Rng, syntheticDataset, trainBatches } from "./mod.ts";
 * const { split, skipped } = leaveOneOut(syntheticDataset({ users: 100 }));
 * const epoch = trainBatches(split.train, { batchSize: 32, rng: new Rng(1) });
 * const test = evalBatches(split.test, { batchSize: 64 });
 * ```
 *
 * @module
 */
export type * from "./types.ts";
export * from "./random.ts";
export * from "./readers.ts";
export * from "./filter.ts";
export * from "./categories.ts";
export * from "./split.ts";
export * from "./batches.ts";
export * from "./synthetic.ts";
export * from "./from_sequences.ts";
