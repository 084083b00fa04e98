/**
 * The full-catalogue evaluation loop: score each batch, rank its targets on the active
 * backend, and accumulate the metrics on the host.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Tensor2D } from "../nn/tensor_types.ts";
import type { EvalBatch } from "../data/types.ts";
import { prepareBatch, type PreparedBatch, rankTensors, readRanks } from "./_device.ts";
import { DEFAULT_KS, MetricAccumulator, type Metrics } from "./metrics.ts";
import { evalBatches } from "../data/batches.ts";
import type { EvalExample } from "../data/types.ts";
import type { SequentialModel } from "../models/_model.ts";

/** Options of {@linkcode evaluate}. */
export interface EvaluateOptions {
  /** Number of real items N; `scoreFn` must return N + 1 columns. */
  numItems: number;
  /** Cutoffs K. Default `[10, 20, 40]`. */
  ks?: readonly number[];
  /**
   * Item categories (`categories[i]` for item `i`, length N + 1). When given, the result
   * also has `"diversity@K"` and `"coverage@K"` for each K.
   */
  categories?: readonly Int32Array[];
  /** Denominator of coverage. Default: one more than the largest category id. */
  numCategories?: number;
  /** Called after each batch with the examples done so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** What {@linkcode evaluate} returns. */
export interface EvalResult {
  /** Metric values by key (see `Metrics`); means over all examples. */
  metrics: Metrics;
  /** Number of examples (rows over all batches) evaluated. */
  count: number;
}

/**
 * Evaluates a scorer over the full catalogue: for each batch, `scoreFn(batch)` runs inside
 * `tf.tidy`, each target is ranked as `rankOfTarget` defines (history and padding
 * excluded, the target kept, ties pessimistic), and the metrics are accumulated as exact
 * counts, so they do not depend on how the examples are cut into batches or in which
 * order the batches come. No tensors are left behind, also when an error is thrown.
 *
 * @example Usage
 * ```ts ignore
 * import { evaluate } from "./evaluate.ts";
 * const { metrics, count } = await evaluate((b) => model.scores(b), batches, { numItems });
 * console.log(count, metrics["recall@20"], metrics["ndcg@20"]);
 * ```
 *
 * @param scoreFn Returns `[batch.batch, numItems + 1]` scores for a batch; column 0 is
 * padding. Tensors it creates are disposed after each batch.
 * @param batches The evaluation batches, e.g. from `evalBatches`.
 * @param options See {@linkcode EvaluateOptions}.
 * @returns The metrics and the number of examples.
 * @throws {RangeError} `numItems` not a positive integer, categories of the wrong length, a
 * bad K, no examples at all, scores of the wrong shape (expected and actual named), a
 * target or excluded id out of range, or NaN scores (row and user named).
 */
export async function evaluate(
  scoreFn: (batch: EvalBatch) => Tensor2D,
  batches: Iterable<EvalBatch>,
  options: EvaluateOptions,
): Promise<EvalResult> {
  const { numItems, categories } = options;
  checkCatalogue(numItems, categories);
  const acc = new MetricAccumulator({
    ks: options.ks ?? DEFAULT_KS,
    categories,
    numCategories: options.numCategories,
  });
  const topK = categories ? acc.maxK : 0;
  const list = Array.isArray(batches) ? batches as EvalBatch[] : [...batches];
  const total = list.reduce((n, b) => n + b.batch, 0);
  let done = 0;
  for (const batch of list) {
    let prep: PreparedBatch | undefined;
    // Only tensors leave the tidy: it walks every key of what it returns, and the host
    // mask has one key per score.
    const tensors = tf.tidy(() => {
      const scores = scoreFn(batch);
      const expected = [batch.batch, numItems + 1];
      if (
        !(scores instanceof tf.Tensor) || scores.rank !== 2 ||
        scores.shape[0] !== expected[0] || scores.shape[1] !== expected[1]
      ) {
        const actual = scores instanceof tf.Tensor ? `[${scores.shape}]` : String(scores);
        throw new RangeError(
          `scoreFn returned scores of shape ${actual}; expected [${expected}] ` +
            `(batch rows, numItems + 1)`,
        );
      }
      prep = prepareBatch(batch, scores.shape);
      return rankTensors(scores, prep, topK);
    });
    const { ranks, top } = await readRanks(tensors, prep!, batch);
    acc.add(ranks);
    if (top) acc.addTopK(top);
    done += batch.batch;
    options.onProgress?.(done, total);
  }
  return { metrics: acc.result(), count: acc.count };
}

/**
 * Checks an evaluation's catalogue: `numItems` a positive integer, `categories` (if given)
 * one entry per item and padding.
 *
 * @throws {RangeError} Naming the value.
 */
export function checkCatalogue(numItems: number, categories?: readonly Int32Array[]): void {
  if (!Number.isInteger(numItems) || numItems < 1) {
    throw new RangeError(`numItems must be a positive integer, got ${numItems}`);
  }
  if (categories && categories.length !== numItems + 1) {
    throw new RangeError(
      `categories must have numItems + 1 = ${numItems + 1} entries, got ${categories.length}`,
    );
  }
}

/**
 * How ranking is scored:
 * - `library` (default): the history is excluded from each ranking, K = 10, 20, 40;
 * - `diffurec`: DiffuRec's code's protocol: the history is not excluded (only padding is),
 *   K = 5, 10, 20; its HR@K is `recall@K` here (one target per user). Metrics are averaged
 *   over users and ties are pessimistic, as in the library protocol (the code averages
 *   per batch and breaks ties as `topk` does; see `DIFFUREC.md` §1.4).
 */
export type EvalProtocol = "library" | "diffurec";

/** The protocols {@linkcode evaluateModel} knows. */
export const EVAL_PROTOCOLS: readonly EvalProtocol[] = ["library", "diffurec"];

/**
 * Evaluates `model` on `examples` with full-catalogue ranking (see {@linkcode evaluate}):
 * histories batched by `evalBatches`, truncated to `maxLength`, scored by `model.scores`.
 *
 * @example Usage
 * ```ts ignore
 * const test = await evaluateModel(model, split.test, data.numItems, 256, 100);
 * console.log(test["recall@20"], test["ndcg@20"]);
 * ```
 *
 * @param model The model to score with.
 * @param examples Validation or test examples, e.g. `leaveOneOut(dataset).split.test`.
 * @param numItems Number of real items N.
 * @param batchSize Histories per batch; results do not depend on it.
 * @param maxLength Longest history kept, the model's `maxLength`.
 * @param categories Item categories, for Diversity@K and coverage@K.
 * @param protocol See {@linkcode EvalProtocol}. Default `library`.
 * @returns Metric values by key.
 */
export async function evaluateModel(
  model: SequentialModel,
  examples: EvalExample[],
  numItems: number,
  batchSize: number,
  maxLength: number,
  categories?: Int32Array[],
  protocol: EvalProtocol = "library",
): Promise<Record<string, number>> {
  let batches = evalBatches(examples, { batchSize, maxLength });
  if (protocol === "diffurec") {
    batches = batches.map((b) => ({ ...b, exclude: b.exclude.map(() => new Int32Array(0)) }));
  }
  const ks = protocol === "diffurec" ? [5, 10, 20] : undefined;
  const result = await evaluate((b) => model.scores(b), batches, { numItems, categories, ks });
  return result.metrics;
}
