/**
 * Full-catalogue evaluation for sequential recommendation: pessimistic ranking of each
 * target with its history excluded, Recall@K, NDCG@K, MRR, and, with item categories,
 * Diversity@K (paper Eq. 15), coverage@K and intra-list distance ILD@K; diversified top-K
 * lists (MMR, or coverage of SIGMA's interests) and their evaluation.
 *
 * ```ts ignore
 * import { evaluate, METRIC_KEYS } from "./mod.ts";
 * const { metrics, count } = await evaluate((b) => model.scores(b), batches, { numItems });
 * for (const key of METRIC_KEYS) console.log(key, metrics[key]);
 * ```
 *
 * @module
 */
export {
  DEFAULT_KS,
  listDiversity,
  listIntraListDistance,
  METRIC_KEYS,
  MetricAccumulator,
  type MetricAccumulatorOptions,
  type MetricKey,
  metricKeys,
  type Metrics,
  metricsFromRanks,
} from "./metrics.ts";
export { rankBatch, rankOfTarget, topKBatch } from "./rank.ts";
export {
  checkDiversityWeight,
  DEFAULT_DIVERSITY_POOL,
  type DiversifiableModel,
  type DiversifiedEvalOptions,
  diversifiedOrder,
  diversifiedRank,
  DIVERSITY_METHODS,
  type DiversityMethod,
  evaluateDiversified,
  interestOrder,
  mmrOrder,
  type PoolSignals,
  poolSignals,
  resolveDiversityMethod,
} from "./diversify.ts";
export {
  EVAL_PROTOCOLS,
  type EvalProtocol,
  type EvalResult,
  evaluate,
  evaluateModel,
  type EvaluateOptions,
} from "./evaluate.ts";
