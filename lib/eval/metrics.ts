/**
 * Host-side metric maths: Recall@K, NDCG@K and MRR from 0-based ranks, and Diversity@K
 * (paper Eq. 15), coverage@K and intra-list distance ILD@K from top-K lists.
 *
 * Every sum is kept as exact integer counts (a histogram of ranks, counts of dissimilar
 * pairs and of distinct categories) and only turned into means in {@linkcode
 * MetricAccumulator.result}, in a fixed order. So the metrics do not depend on how the
 * examples were cut into batches, nor even on the order the examples arrive in: they are
 * bitwise identical either way.
 *
 * @module
 */

/** The cutoffs the paper reports (SIGMA.md, "Data and protocol"). */
export const DEFAULT_KS: readonly number[] = [10, 20, 40];

/** The ranking metric keys for {@linkcode DEFAULT_KS}, in the order `metrics.json` lists them. */
export const METRIC_KEYS = [
  "recall@10",
  "recall@20",
  "recall@40",
  "ndcg@10",
  "ndcg@20",
  "ndcg@40",
  "mrr",
] as const;

/** One of {@linkcode METRIC_KEYS}. */
export type MetricKey = typeof METRIC_KEYS[number];

/**
 * Metric values by key: `"recall@K"`, `"ndcg@K"` for each K, `"mrr"`, and, when item
 * categories were given, `"diversity@K"`, `"coverage@K"` and `"ild@K"` for each K. All lie
 * in [0, 1].
 */
export type Metrics = Record<string, number>;

/**
 * The metric keys produced for `ks`, in the order {@linkcode MetricAccumulator.result}
 * lists them: recall for each K, NDCG for each K, MRR, then (with categories) diversity,
 * coverage and ILD for each K.
 *
 * @example Usage
 * ```ts
 * import { metricKeys } from "./metrics.ts";
 * metricKeys([10, 20, 40]); // the same list as METRIC_KEYS
 * ```
 *
 * @param ks Cutoffs, positive integers.
 * @param withCategories Whether diversity, coverage and ILD keys are included. Default false.
 * @throws {RangeError} A K that is not a positive integer, or an empty list.
 */
export function metricKeys(ks: readonly number[] = DEFAULT_KS, withCategories = false): string[] {
  const checked = checkKs(ks);
  const keys = [
    ...checked.map((k) => `recall@${k}`),
    ...checked.map((k) => `ndcg@${k}`),
    "mrr",
  ];
  if (withCategories) {
    keys.push(
      ...checked.map((k) => `diversity@${k}`),
      ...checked.map((k) => `coverage@${k}`),
      ...checked.map((k) => `ild@${k}`),
    );
  }
  return keys;
}

/** Options of {@linkcode MetricAccumulator}. */
export interface MetricAccumulatorOptions {
  /** Cutoffs K. Default {@linkcode DEFAULT_KS}. */
  ks?: readonly number[];
  /**
   * Item categories: `categories[i]` lists the category ids of item `i` (`categories[0]`,
   * padding, is empty). Needed for diversity and coverage.
   */
  categories?: readonly Int32Array[];
  /**
   * Number of categories, the denominator of coverage. Default: one more than the largest
   * category id in `categories`.
   */
  numCategories?: number;
}

/**
 * Collects ranks (and, with categories, top-K lists) batch by batch and turns them into
 * {@linkcode Metrics}.
 *
 * Definitions, over the examples added (`rank` is 0-based: 0 = the target ranked first):
 * - Recall@K: fraction of examples with `rank < K` (one target, so this is the hit rate).
 * - NDCG@K: mean of `1 / log2(rank + 2)` when `rank < K`, else 0 (IDCG = 1).
 * - MRR: mean of `1 / (rank + 1)`, with no cutoff.
 * - Diversity@K (paper Eq. 15): per example, over all pairs `j < k` of the first K items
 *   of its top list, the fraction of pairs whose category lists do not intersect; mean over
 *   examples. An item with no categories shares none with any item. When the list holds
 *   fewer than K items (a catalogue smaller than K after exclusions), the fraction is over
 *   the pairs it has; a list with fewer than 2 items has no pairs and counts as 0.
 * - Coverage@K: per example, the number of distinct categories among the first K items
 *   of its top list divided by `numCategories`; mean over examples. (A per-user catalogue
 *   coverage, so it is comparable across data sets of different sizes.)
 * - ILD@K, intra-list distance: per example, the mean over pairs of the first K items of
 *   `1 - Jaccard` of their category sets (two items without categories are at distance 1,
 *   as Eq. 15 counts them dissimilar); fewer than 2 items count as 0; mean over examples.
 *   Unlike Eq. 15, a category shared by every item only lowers each pair's distance (by
 *   less the more categories the items have), so it does not make every list score 0.
 *
 * @example Usage
 * ```ts
 * import { MetricAccumulator } from "./metrics.ts";
 * const acc = new MetricAccumulator({ ks: [1, 2] });
 * acc.add([0, 3]);
 * acc.add([1]);
 * acc.result(); // { "recall@1": 1/3, "recall@2": 2/3, ..., mrr: (1 + 1/4 + 1/2) / 3 }
 * ```
 */
export class MetricAccumulator {
  /** The cutoffs, as given. */
  readonly ks: readonly number[];
  readonly #maxK: number;
  readonly #categories?: readonly Int32Array[];
  readonly #numCategories: number;
  /** How many examples had each rank; exact counts, so batching cannot change them. */
  readonly #rankCounts = new Map<number, number>();
  #count = 0;
  #topKCount = 0;
  /** Per K: number of pairs in a list -> total of dissimilar pairs over lists of that size. */
  readonly #dissimilar: Map<number, number>[];
  /** Per K: total over lists of the number of distinct categories. */
  readonly #distinct: number[];
  /** Per K: each list's ILD -> how many lists had it, summed in key order at the end. */
  readonly #ild: Map<number, number>[];

  /**
   * Starts an empty accumulator.
   *
   * @param options See {@linkcode MetricAccumulatorOptions}.
   * @throws {RangeError} A K that is not a positive integer, a negative category id, or a
   * `numCategories` that is not a positive integer above every category id.
   */
  constructor(options: MetricAccumulatorOptions = {}) {
    this.ks = checkKs(options.ks ?? DEFAULT_KS);
    this.#maxK = Math.max(...this.ks);
    this.#dissimilar = this.ks.map(() => new Map());
    this.#distinct = this.ks.map(() => 0);
    this.#ild = this.ks.map(() => new Map());
    this.#numCategories = 0;
    if (options.categories) {
      let largest = -1;
      options.categories.forEach((list, item) => {
        for (const c of list) {
          if (!Number.isInteger(c) || c < 0) {
            throw new RangeError(`categories[${item}] holds category id ${c}, not an id >= 0`);
          }
          if (c > largest) largest = c;
        }
      });
      const n = options.numCategories ?? largest + 1;
      if (!Number.isInteger(n) || n < 1 || n <= largest) {
        throw new RangeError(
          `numCategories must be a positive integer above the largest category id ${largest}, got ${n}`,
        );
      }
      this.#categories = options.categories;
      this.#numCategories = n;
    } else if (options.numCategories !== undefined) {
      throw new TypeError("numCategories was given without categories");
    }
  }

  /** Number of examples whose ranks were added. */
  get count(): number {
    return this.#count;
  }

  /** The largest cutoff: how long the lists given to {@linkcode addTopK} need to be. */
  get maxK(): number {
    return this.#maxK;
  }

  /** Whether categories were given, so {@linkcode addTopK} is expected. */
  get hasCategories(): boolean {
    return this.#categories !== undefined;
  }

  /**
   * Adds the 0-based ranks of the targets of some examples.
   *
   * @param ranks One rank per example, non-negative integers.
   * @throws {RangeError} A rank that is not a non-negative integer (nothing is added then).
   */
  add(ranks: ArrayLike<number>): void {
    for (let i = 0; i < ranks.length; i++) {
      const r = ranks[i];
      if (!Number.isInteger(r) || r < 0) {
        throw new RangeError(`ranks[${i}] is ${r}, not a non-negative integer`);
      }
    }
    for (let i = 0; i < ranks.length; i++) {
      this.#rankCounts.set(ranks[i], (this.#rankCounts.get(ranks[i]) ?? 0) + 1);
    }
    this.#count += ranks.length;
  }

  /**
   * Adds the top lists of some examples for diversity and coverage: item ids, best first,
   * after excluding each example's history; only the first {@linkcode maxK} count.
   *
   * @param lists One list per example.
   * @throws {TypeError} The accumulator has no categories.
   * @throws {RangeError} An item id outside the categories' item range, or listed twice in
   * one list (nothing is added then).
   */
  addTopK(lists: Iterable<ArrayLike<number>>): void {
    const categories = this.#categories;
    if (!categories) throw new TypeError("addTopK() needs an accumulator built with categories");
    const all = [...lists];
    all.forEach((list, row) => {
      const seen = new Set<number>();
      for (let j = 0; j < Math.min(list.length, this.#maxK); j++) {
        const item = list[j];
        if (!Number.isInteger(item) || item < 1 || item >= categories.length) {
          throw new RangeError(
            `top list ${row} holds item ${item}, outside 1..${categories.length - 1}`,
          );
        }
        if (seen.has(item)) throw new RangeError(`top list ${row} holds item ${item} twice`);
        seen.add(item);
      }
    });
    for (const list of all) this.#addList(list, categories);
    this.#topKCount += all.length;
  }

  #addList(list: ArrayLike<number>, categories: readonly Int32Array[]): void {
    const m = Math.min(list.length, this.#maxK);
    // dissimilarUpTo[k] = dissimilar pairs (j, k') with j < k' <= k: a running count, so
    // every cutoff K reads its prefix without recounting.
    const dissimilarUpTo = new Int32Array(Math.max(m, 1));
    const distinctUpTo = new Int32Array(Math.max(m, 1));
    const distanceUpTo = new Float64Array(Math.max(m, 1)); // summed in list order: fixed
    const seen = new Set<number>();
    for (let k = 0; k < m; k++) {
      const ck = categories[list[k]];
      let d = 0;
      let distance = 0;
      for (let j = 0; j < k; j++) {
        if (!intersects(categories[list[j]], ck)) d++;
        distance += jaccardDistance(categories[list[j]], ck);
      }
      dissimilarUpTo[k] = (k > 0 ? dissimilarUpTo[k - 1] : 0) + d;
      distanceUpTo[k] = (k > 0 ? distanceUpTo[k - 1] : 0) + distance;
      for (const c of ck) seen.add(c);
      distinctUpTo[k] = seen.size;
    }
    this.ks.forEach((K, i) => {
      const n = Math.min(K, m);
      const pairs = (n * (n - 1)) / 2;
      const dissimilar = n > 0 ? dissimilarUpTo[n - 1] : 0;
      this.#dissimilar[i].set(pairs, (this.#dissimilar[i].get(pairs) ?? 0) + dissimilar);
      this.#distinct[i] += n > 0 ? distinctUpTo[n - 1] : 0;
      const ild = pairs > 0 ? distanceUpTo[n - 1] / pairs : 0;
      this.#ild[i].set(ild, (this.#ild[i].get(ild) ?? 0) + 1);
    });
  }

  /**
   * The metrics of everything added so far (see the class description for definitions).
   * Means are accumulated in float64 from exact counts in a fixed order.
   *
   * @throws {RangeError} Nothing was added (a mean over no examples is undefined), or, with
   * categories, the number of top lists differs from the number of ranks.
   */
  result(): Metrics {
    const n = this.#count;
    if (n === 0) throw new RangeError("No examples were added: metrics are undefined");
    if (this.#categories && this.#topKCount !== n) {
      throw new RangeError(`${n} ranks but ${this.#topKCount} top lists were added`);
    }
    // Ascending ranks: a fixed summation order independent of arrival order.
    const ranks = [...this.#rankCounts.keys()].sort((a, b) => a - b);
    const out: Metrics = {};
    for (const K of this.ks) {
      let hits = 0;
      for (const r of ranks) if (r < K) hits += this.#rankCounts.get(r)!;
      out[`recall@${K}`] = hits / n;
    }
    for (const K of this.ks) {
      let gain = 0;
      for (const r of ranks) if (r < K) gain += this.#rankCounts.get(r)! / Math.log2(r + 2);
      out[`ndcg@${K}`] = gain / n;
    }
    let reciprocal = 0;
    for (const r of ranks) reciprocal += this.#rankCounts.get(r)! / (r + 1);
    out.mrr = reciprocal / n;
    if (this.#categories) {
      this.ks.forEach((K, i) => {
        let total = 0;
        const byPairs = this.#dissimilar[i];
        for (const pairs of [...byPairs.keys()].sort((a, b) => a - b)) {
          if (pairs > 0) total += byPairs.get(pairs)! / pairs;
        }
        out[`diversity@${K}`] = total / n;
      });
      this.ks.forEach((K, i) => {
        out[`coverage@${K}`] = this.#distinct[i] / this.#numCategories / n;
      });
      this.ks.forEach((K, i) => {
        // Ascending values: the same sum whatever order the lists came in.
        let total = 0;
        const byValue = this.#ild[i];
        for (const value of [...byValue.keys()].sort((a, b) => a - b)) {
          total += value * byValue.get(value)!;
        }
        out[`ild@${K}`] = total / n;
      });
    }
    return out;
  }
}

/**
 * Recall@K, NDCG@K for each K, and MRR of a set of 0-based target ranks (0 = the target
 * ranked first). See {@linkcode MetricAccumulator} for the definitions.
 *
 * @example Usage
 * ```ts
 * import { metricsFromRanks } from "./metrics.ts";
 * const m = metricsFromRanks([0, 12, 100]);
 * // m["recall@10"] = 1/3, m["recall@20"] = 2/3, m["ndcg@10"] = 1/3, m.mrr = (1 + 1/13 + 1/101) / 3
 * ```
 *
 * @param ranks One rank per example, non-negative integers; at least one.
 * @param ks Cutoffs. Default {@linkcode DEFAULT_KS}.
 * @returns Keys `"recall@K"`, `"ndcg@K"` for each K, and `"mrr"`.
 * @throws {RangeError} No ranks, a rank that is not a non-negative integer, or a K that is
 * not a positive integer.
 */
export function metricsFromRanks(
  ranks: ArrayLike<number>,
  ks: readonly number[] = DEFAULT_KS,
): Metrics {
  const acc = new MetricAccumulator({ ks });
  acc.add(ranks);
  return acc.result();
}

/**
 * Diversity of one top list (Eq. 15 for a single user): the fraction of pairs among its
 * first `k` items whose category lists do not intersect; 0 with fewer than 2 items.
 *
 * @param list Item ids, best first.
 * @param categories `categories[i]` lists the category ids of item `i`.
 * @param k Cutoff, a positive integer. Default: the whole list.
 * @throws {RangeError} `k` is not a positive integer, or an item has no categories entry.
 */
export function listDiversity(
  list: ArrayLike<number>,
  categories: readonly Int32Array[],
  k: number = list.length,
): number {
  return meanOverPairs(list, categories, k, (a, b) => intersects(a, b) ? 0 : 1);
}

/**
 * Intra-list distance of one top list (ILD@K for a single user): the mean over pairs of its
 * first `k` items of `1 - Jaccard` of their category sets; 0 with fewer than 2 items. Two
 * items without categories are at distance 1 (they share none, as in Eq. 15).
 *
 * @example Usage
 * ```ts
 * import { listIntraListDistance } from "./metrics.ts";
 * const categories = [new Int32Array(0), Int32Array.of(0, 1), Int32Array.of(1), Int32Array.of(2)];
 * listIntraListDistance([1, 2, 3], categories); // ((1 - 1/2) + 1 + 1) / 3 = 5/6
 * ```
 *
 * @param list Item ids, best first.
 * @param categories `categories[i]` lists the (distinct) category ids of item `i`.
 * @param k Cutoff, a positive integer. Default: the whole list.
 * @throws {RangeError} `k` is not a positive integer, or an item has no categories entry.
 */
export function listIntraListDistance(
  list: ArrayLike<number>,
  categories: readonly Int32Array[],
  k: number = list.length,
): number {
  return meanOverPairs(list, categories, k, jaccardDistance);
}

/**
 * The mean of `pair` over the pairs of the first `k` items of `list`; 0 with fewer than 2.
 * Summed in the order {@linkcode MetricAccumulator} sums (each item against those before it,
 * then the running total), so that the two agree bit for bit.
 */
function meanOverPairs(
  list: ArrayLike<number>,
  categories: readonly Int32Array[],
  k: number,
  pair: (a: Int32Array, b: Int32Array) => number,
): number {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k must be a positive integer, got ${k}`);
  const m = Math.min(k, list.length);
  let total = 0;
  for (let b = 0; b < m; b++) {
    let sum = 0;
    for (let a = 0; a < b; a++) {
      const ca = categories[list[a]];
      const cb = categories[list[b]];
      if (!ca || !cb) {
        throw new RangeError(`item ${ca ? list[b] : list[a]} has no categories entry`);
      }
      sum += pair(ca, cb);
    }
    total += sum;
  }
  return m < 2 ? 0 : total / ((m * (m - 1)) / 2);
}

/** `1 - |a ∩ b| / |a ∪ b|` of two lists of distinct ids; 1 when both are empty. */
function jaccardDistance(a: Int32Array, b: Int32Array): number {
  let shared = 0;
  for (let i = 0; i < a.length; i++) {
    for (let j = 0; j < b.length; j++) if (a[i] === b[j]) shared++;
  }
  const union = a.length + b.length - shared;
  return union === 0 ? 1 : 1 - shared / union;
}

/** Validates cutoffs: a non-empty list of positive integers. */
function checkKs(ks: readonly number[]): readonly number[] {
  if (ks.length === 0) throw new RangeError("ks must hold at least one cutoff");
  for (const k of ks) {
    if (!Number.isInteger(k) || k < 1) {
      throw new RangeError(`Every K must be a positive integer, got ${k}`);
    }
  }
  return [...ks];
}

/** Whether two short category lists share an id; lists are tiny, so a nested scan wins. */
function intersects(a: Int32Array, b: Int32Array): boolean {
  for (let i = 0; i < a.length; i++) {
    for (let j = 0; j < b.length; j++) if (a[i] === b[j]) return true;
  }
  return false;
}
