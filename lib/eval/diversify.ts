/**
 * Diversified top-K lists: re-rank the best `pool` items of a history by relevance and by
 * how much each adds to what the list already holds, with one weight, 0 giving the model's
 * own ranking exactly. Two ways to say "adds":
 *
 * - `mmr`, maximal marginal relevance (Carbonell and Goldstein, 1998) on the model's item
 *   vectors: each next item maximises `rel(i) - w * max_{s in list} cos(v_i, v_s)`. Works for
 *   every model with item vectors (all here).
 * - `interests`, on the model's own interests (xQuAD-style coverage, Santos et al., 2010):
 *   each next item maximises `rel(i) + w * sum_j alpha_j a_ij prod_{s in list} (1 - a_sj)`,
 *   `alpha` the user's interest weights and `a_ij` item i's membership in interest j. SIGMA
 *   gives both (its intensities and MIE-VAE's item-to-category probabilities), so the list
 *   fills across the interests in proportion to their weight.
 *
 * `rel` is the score min-max scaled over the pool (1 for the best item, 0 for the pool's
 * worst), so that one weight means the same for models whose scores differ in scale. Ties
 * go to the better-scored item, which is what makes weight 0 the model's ranking.
 *
 * {@linkcode evaluateDiversified} measures the trade-off: the same metrics as `evaluate`
 * with the re-ranked lists at several weights from one scoring pass.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { EvalBatch } from "../data/types.ts";
import type { SequentialModel } from "../models/_model.ts";
import { l2Normalise } from "../prob/distributions.ts";
import { prepareBatch, rankTensors, readRanks } from "./_device.ts";
import { DEFAULT_KS, MetricAccumulator, type Metrics } from "./metrics.ts";
import { checkCatalogue } from "./evaluate.ts";

/** How a list is diversified: see the module's description. */
export type DiversityMethod = "mmr" | "interests";

/**
 * The diversity methods, and `auto`: `mmr`, for every model. Chosen on Beauty's validation
 * split (docs/results.md, "Accuracy against diversity"): SIGMA's `interests` bought +0.2%
 * Diversity@20 at weight 2, `mmr` +4.5% at 0.5 for 2.4% of Recall@20.
 */
export const DIVERSITY_METHODS: readonly (DiversityMethod | "auto")[] = [
  "auto",
  "mmr",
  "interests",
];

/** Candidates re-ranked per history unless said otherwise: the best 100 after exclusions. */
export const DEFAULT_DIVERSITY_POOL = 100;

/** A model that can be diversified: any model, with the optional methods it offers. */
export type DiversifiableModel = Pick<
  SequentialModel,
  "name" | "scores" | "itemVectors" | "interestsForRanking"
>;

/**
 * The method `method` resolves to for `model`: `auto` is `mmr` (see
 * {@linkcode DIVERSITY_METHODS}).
 *
 * @throws {RangeError} An unknown method, or one the model cannot give (`interests` for a
 * model without interests, any method for a model without item vectors), named.
 */
export function resolveDiversityMethod(
  model: DiversifiableModel,
  method: string = "auto",
): DiversityMethod {
  if (!DIVERSITY_METHODS.includes(method as DiversityMethod)) {
    throw new RangeError(
      `diversity method must be one of ${DIVERSITY_METHODS.join(", ")}, got ${
        JSON.stringify(method)
      }`,
    );
  }
  if (model.itemVectors === undefined) {
    throw new RangeError(`model ${model.name} has no item vectors to diversify with`);
  }
  if (method === "auto") return "mmr";
  if (method === "interests" && model.interestsForRanking === undefined) {
    throw new RangeError(
      `model ${model.name} has no interests to diversify over: use the diversity method mmr`,
    );
  }
  return method as DiversityMethod;
}

/**
 * Checks a diversity weight: a finite number >= 0.
 *
 * @throws {TypeError} Not a number, naming `what` and the value.
 * @throws {RangeError} Negative or not finite, naming `what` and the value.
 */
export function checkDiversityWeight(weight: unknown, what = "diversity"): number {
  if (typeof weight !== "number") {
    throw new TypeError(`${what} must be a number >= 0, got ${JSON.stringify(weight)}`);
  }
  if (!Number.isFinite(weight) || weight < 0) {
    throw new RangeError(`${what} must be a finite number >= 0, got ${weight}`);
  }
  return weight;
}

/** Scores scaled to [0, 1] over the pool: 1 for the best, 0 for the worst (all 1 if equal). */
function relevance(scores: ArrayLike<number>): Float64Array {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < scores.length; i++) {
    lo = Math.min(lo, scores[i]);
    hi = Math.max(hi, scores[i]);
  }
  const rel = new Float64Array(scores.length);
  for (let i = 0; i < scores.length; i++) rel[i] = hi > lo ? (scores[i] - lo) / (hi - lo) : 1;
  return rel;
}

/** Weight 0: the pool's own order, its first `length` indices. */
function poolOrder(pool: number, length: number): Int32Array {
  return Int32Array.from({ length: Math.min(length, pool) }, (_, i) => i);
}

/**
 * The greedy loop both methods share: `length` picks from `pool` candidates, each the
 * unpicked index of highest `gain(i)` (the first on ties), then `picked(i)` updates the
 * state `gain` reads. Returns the picked pool indices in order.
 */
function greedy(
  pool: number,
  length: number,
  gain: (i: number) => number,
  picked: (i: number) => void,
): Int32Array {
  const order = new Int32Array(Math.min(length, pool));
  const taken = new Uint8Array(pool);
  for (let step = 0; step < order.length; step++) {
    let best = -1, bestGain = -Infinity;
    for (let i = 0; i < pool; i++) {
      if (taken[i]) continue;
      const g = gain(i);
      if (best < 0 || g > bestGain) [best, bestGain] = [i, g];
    }
    taken[best] = 1;
    order[step] = best;
    picked(best);
  }
  return order;
}

/**
 * MMR over a pool: the pool indices of a `length`-item list, in order.
 *
 * @param scores The pool's scores, best first (the model's order).
 * @param vectors The pool's item vectors, `[pool, d]` row-major, each of norm 1 (or 0).
 * @param d Vector width.
 * @param length Items to pick (at most the pool).
 * @param weight 0: the pool's own order; larger: more weight on dissimilarity.
 */
export function mmrOrder(
  scores: ArrayLike<number>,
  vectors: Float32Array,
  d: number,
  length: number,
  weight: number,
): Int32Array {
  const pool = scores.length;
  if (weight === 0) return poolOrder(pool, length);
  const rel = relevance(scores);
  const closest = new Float64Array(pool).fill(-Infinity); // max cosine to the list so far
  return greedy(
    pool,
    length,
    (i) => rel[i] - weight * (closest[i] === -Infinity ? 0 : closest[i]),
    (s) => {
      for (let i = 0; i < pool; i++) {
        let dot = 0;
        for (let u = 0; u < d; u++) dot += vectors[i * d + u] * vectors[s * d + u];
        if (dot > closest[i]) closest[i] = dot;
      }
    },
  );
}

/**
 * Interest coverage over a pool (xQuAD-style): the pool indices of a `length`-item list.
 *
 * @param scores The pool's scores, best first.
 * @param profile The user's interest weights `[k]` (SIGMA's intensities; sum 1).
 * @param memberships Each pool item's membership in each interest, `[pool, k]` row-major.
 * @param k Interests.
 * @param length Items to pick.
 * @param weight 0: the pool's own order; larger: more weight on uncovered interests.
 */
export function interestOrder(
  scores: ArrayLike<number>,
  profile: ArrayLike<number>,
  memberships: Float32Array,
  k: number,
  length: number,
  weight: number,
): Int32Array {
  const pool = scores.length;
  if (weight === 0) return poolOrder(pool, length);
  const rel = relevance(scores);
  const uncovered = new Float64Array(k).fill(1); // prod over the list of (1 - a_sj)
  return greedy(
    pool,
    length,
    (i) => {
      let cover = 0;
      for (let j = 0; j < k; j++) cover += profile[j] * memberships[i * k + j] * uncovered[j];
      return rel[i] + weight * cover;
    },
    (s) => {
      for (let j = 0; j < k; j++) uncovered[j] *= 1 - memberships[s * k + j];
    },
  );
}

/** What {@linkcode poolSignals} reads back for one batch's pools. */
export interface PoolSignals {
  /** `mmr`: unit item vectors `[rows, pool, d]`. */
  vectors?: Float32Array;
  /** `interests`: each row's interest weights `[rows, k]`. */
  profile?: Float32Array;
  /** `interests`: each pool item's memberships `[rows, pool, k]`. */
  memberships?: Float32Array;
  /** d for `vectors`, k for `profile` and `memberships`. */
  width: number;
}

/**
 * The model's view of each row's pool, read back: what {@linkcode mmrOrder} or
 * {@linkcode interestOrder} needs. Only the pool's rows of the item table are gathered, so a
 * large catalogue is never copied to the host.
 *
 * @param ids Pool item ids `[rows, pool]` row-major.
 */
export async function poolSignals(
  model: DiversifiableModel,
  method: DiversityMethod,
  batch: EvalBatch,
  ids: Int32Array,
): Promise<PoolSignals> {
  const index = tf.tensor1d(ids, "int32");
  try {
    if (method === "mmr") {
      const vectors = tf.tidy(() => l2Normalise(tf.gather(model.itemVectors!(), index)));
      const width = vectors.shape[1]!;
      return { vectors: await readAndDispose(vectors), width };
    }
    const [profile, memberships] = tf.tidy(() => {
      const { profile, items } = model.interestsForRanking!(batch);
      return [profile, tf.gather(items, index)];
    });
    const width = profile.shape[1]!;
    return {
      profile: await readAndDispose(profile),
      memberships: await readAndDispose(memberships),
      width,
    };
  } finally {
    index.dispose();
  }
}

async function readAndDispose<T extends Float32Array | Int32Array = Float32Array>(
  t: tf.Tensor,
): Promise<T> {
  try {
    return await t.data() as T;
  } finally {
    t.dispose();
  }
}

/**
 * One row's list: pool indices, in order, by `method` at `weight` (see the module).
 *
 * @param row The row of `signals` and of the pool.
 * @param scores This row's pool scores, best first (excluded items already removed).
 * @param keep Maps candidate `i` to its column of the fetched pool (the recommender drops
 * excluded columns); default: the first columns, in order.
 */
export function diversifiedOrder(
  method: DiversityMethod,
  signals: PoolSignals,
  row: number,
  pool: number,
  scores: ArrayLike<number>,
  length: number,
  weight: number,
  keep?: (i: number) => number,
): Int32Array {
  if (weight === 0) return poolOrder(scores.length, length);
  const w = signals.width;
  // `keep` maps the row's remaining candidates to their columns of the fetched pool; without
  // it they are its first columns, read in place.
  const gather = (table: Float32Array) => {
    const start = row * pool * w;
    if (!keep) return table.subarray(start, start + scores.length * w);
    const out = new Float32Array(scores.length * w);
    for (let i = 0; i < scores.length; i++) {
      const at = (row * pool + keep(i)) * w;
      out.set(table.subarray(at, at + w), i * w);
    }
    return out;
  };
  if (method === "mmr") return mmrOrder(scores, gather(signals.vectors!), w, length, weight);
  const profile = signals.profile!.subarray(row * w, (row + 1) * w);
  return interestOrder(scores, profile, gather(signals.memberships!), w, length, weight);
}

/**
 * The 0-based rank of a target in the diversified ranking: the re-ranked `list` first, then
 * every other competing item in score order (ties pessimistic, as `rankOfTarget`). So an
 * item the list left out ranks after it, and the metrics at every cutoff are exact. (At
 * weight 0 callers use `rank` itself: the list is then the model's order, whose ties
 * `topk` breaks by id, and `evaluate` counts tied items ahead of the target.)
 *
 * @param rank The target's rank in the model's own ranking.
 * @param targetScore The target's score.
 * @param target The target's id.
 * @param list The diversified list's item ids.
 * @param listScores Their scores.
 */
export function diversifiedRank(
  rank: number,
  targetScore: number,
  target: number,
  list: ArrayLike<number>,
  listScores: ArrayLike<number>,
): number {
  let above = 0;
  const t = Math.fround(targetScore);
  for (let i = 0; i < list.length; i++) {
    if (list[i] === target) return i;
    if (Math.fround(listScores[i]) >= t) above++;
  }
  return list.length + rank - above;
}

/** Options of {@linkcode evaluateDiversified}. */
export interface DiversifiedEvalOptions {
  /** Number of real items N. */
  numItems: number;
  /** The weights to measure, each >= 0 (0: the model's own ranking). */
  weights: readonly number[];
  /** See {@linkcode DiversityMethod}; `auto` (default) as {@linkcode resolveDiversityMethod}. */
  method?: DiversityMethod | "auto";
  /** Candidates per history re-ranked. Default {@linkcode DEFAULT_DIVERSITY_POOL} (at least the largest K). */
  pool?: number;
  /** Cutoffs K. Default `[10, 20, 40]`. */
  ks?: readonly number[];
  /** Item categories, for Diversity@K, ILD@K and coverage@K. */
  categories?: readonly Int32Array[];
  /** Called after each batch with the examples done so far and the total. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * The metrics of `evaluate` for the diversified lists of `model` at each weight: one scoring
 * pass per batch, each weight's lists re-ranked from it. Ranks follow
 * {@linkcode diversifiedRank}, so weight 0 gives exactly `evaluate`'s metrics.
 *
 * @returns One entry per weight, in the order given.
 * @throws {RangeError} A bad weight, method or pool, or what `evaluate` throws for.
 */
export async function evaluateDiversified(
  model: DiversifiableModel,
  batches: readonly EvalBatch[],
  options: DiversifiedEvalOptions,
): Promise<{ weight: number; method: DiversityMethod; metrics: Metrics }[]> {
  const method = resolveDiversityMethod(model, options.method);
  const weights = options.weights.map((w, i) => checkDiversityWeight(w, `weights[${i}]`));
  checkCatalogue(options.numItems, options.categories);
  if (options.pool !== undefined && (!Number.isInteger(options.pool) || options.pool < 1)) {
    throw new RangeError(`pool must be a positive integer, got ${options.pool}`);
  }
  const accs = weights.map(() =>
    new MetricAccumulator({ ks: options.ks ?? DEFAULT_KS, categories: options.categories })
  );
  const length = accs[0]?.maxK ?? 0;
  const pool = Math.max(length, options.pool ?? DEFAULT_DIVERSITY_POOL);
  const total = batches.reduce((n, b) => n + b.batch, 0);
  let done = 0;
  for (const batch of batches) {
    const fetched = await scoredPools(model, batch, options.numItems, pool);
    const signals = await poolSignals(model, method, batch, fetched.ids);
    for (const [w, weight] of weights.entries()) {
      const lists: Int32Array[] = [];
      const ranks = new Int32Array(batch.batch);
      for (let r = 0; r < batch.batch; r++) {
        const n = fetched.valid[r];
        const scores = fetched.scores.subarray(r * fetched.pool, r * fetched.pool + n);
        const order = diversifiedOrder(method, signals, r, fetched.pool, scores, length, weight);
        const list = order.map((i) => fetched.ids[r * fetched.pool + i]);
        const listScores = Array.from(order, (i) => scores[i]);
        // Weight 0 is the model's ranking: its own pessimistic rank, exactly evaluate's.
        ranks[r] = weight === 0 ? fetched.ranks[r] : diversifiedRank(
          fetched.ranks[r],
          fetched.targetScores[r],
          batch.targets[r],
          list,
          listScores,
        );
        lists.push(list);
      }
      accs[w].add(ranks);
      if (options.categories) accs[w].addTopK(lists);
    }
    done += batch.batch;
    options.onProgress?.(done, total);
  }
  return weights.map((weight, w) => ({ weight, method, metrics: accs[w].result() }));
}

/**
 * One batch scored once: each row's target rank and score, and its best `pool` competing
 * items (ids and scores, best first; `valid` of them where fewer compete).
 */
async function scoredPools(
  model: DiversifiableModel,
  batch: EvalBatch,
  numItems: number,
  pool: number,
) {
  const width = numItems + 1;
  const fetch = Math.min(pool, width);
  let prep: ReturnType<typeof prepareBatch> | undefined;
  const t = tf.tidy(() => {
    const scores = model.scores(batch);
    if (scores.shape[0] !== batch.batch || scores.shape[1] !== width) {
      throw new RangeError(
        `model ${model.name} returned scores [${scores.shape}]; expected [${batch.batch},${width}]`,
      );
    }
    prep = prepareBatch(batch, scores.shape);
    // The ranks and the pool from one upload of the mask, as evaluate's top lists are made.
    const { ranks, nans, top, topScores } = rankTensors(scores, prep, fetch, true);
    const flat = tf.reshape(scores, [-1]);
    const targetScores = tf.gather(flat, tf.tensor1d(prep.targetIndex, "int32"));
    return { ranks, nans, values: topScores!, indices: top!, targetScores };
  });
  const [scores, ids, targetScores] = await Promise.all([
    readAndDispose<Float32Array>(t.values),
    readAndDispose<Int32Array>(t.indices),
    readAndDispose<Float32Array>(t.targetScores),
  ]).catch((e) => {
    tf.dispose([t.ranks, t.nans]);
    throw e;
  });
  // Throws on NaN scores, naming the row; disposes ranks and nans either way.
  const { ranks } = await readRanks({ ranks: t.ranks, nans: t.nans }, prep!, batch);
  const valid = Int32Array.from(prep!.allowedCount, (n) => Math.min(n, fetch));
  return { ranks, scores, ids, targetScores, valid, pool: fetch };
}
