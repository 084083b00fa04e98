/**
 * A deterministic synthetic data set with planted multi-interest structure: the default
 * data of `deno task train`, and a fixture whose ground truth (item clusters, user
 * interests) tests can compare learned representations against.
 *
 * @module
 */
import type { SequenceDataset } from "./types.ts";
import { Rng } from "./random.ts";
import { checkPositiveInt, PAD_TOKEN } from "./_dense.ts";

/** Options of {@linkcode syntheticDataset}; every field has a default. */
export interface SyntheticOptions {
  /** Seed of the generator; equal options give identical data. Default 42. */
  seed?: number;
  /** Number of users. Default 600. */
  users?: number;
  /** Number of items. Default 200. */
  items?: number;
  /** Number of item clusters (interests). Default 4. */
  clusters?: number;
  /** Distinct clusters each user draws, with random mixture weights. Default 2. */
  interestsPerUser?: number;
  /** Shortest history (lengths are uniform in [minLength, maxLength]). Default 5. */
  minLength?: number;
  /** Longest history. Default 30. */
  maxLength?: number;
  /**
   * Probability that the next item stays in the current interest's cluster; otherwise
   * the user switches to another of their interests, chosen by weight. Default 0.7.
   */
  stickiness?: number;
  /** Probability that an item is drawn uniformly from the whole catalogue. Default 0.05. */
  noise?: number;
  /**
   * Whether a walk moves along its cluster's ring (true: the next item depends on the
   * previous one) or draws every item uniformly from the cluster (false: cluster
   * membership is the only signal, which makes the planted interests easiest to recover).
   * Default true.
   */
  sequential?: boolean;
}

/** A synthetic {@linkcode SequenceDataset} with its planted ground truth. */
export interface SyntheticDataset extends SequenceDataset {
  /** The planted cluster of each item as its single category (`categories[0]` is empty). */
  categories: Int32Array[];
  /** Equal to the number of clusters. */
  numCategories: number;
  /** `clusters[i]` is the planted cluster of item `i`; `clusters[0]` is -1 (padding). */
  clusters: Int32Array;
  /** `interests[u]` lists the clusters user `u` draws from. */
  interests: Int32Array[];
}

/**
 * Within a cluster the items form a ring and a user's walk moves forward by a small step,
 * so the next item depends on the previous one (sequential signal), not only on the
 * cluster. Weights of steps 1, 2, 3; the remainder jumps anywhere in the cluster.
 */
const STEP_WEIGHTS = [0.6, 0.25, 0.1];

/**
 * Generates a data set with planted multi-interest structure. Items are shuffled and cut
 * into `clusters` contiguous groups; each group is a ring. Each user draws
 * `interestsPerUser` distinct clusters with Dirichlet(1) mixture weights and a start
 * position on each ring, then a uniform length. Each next item: with probability
 * `stickiness` stay in the current interest (else switch to another of the user's
 * interests by weight); with probability `noise` emit a uniformly random item, else
 * advance that interest's walk by 1, 2 or 3 ring steps (probabilities 0.6, 0.25, 0.1) or
 * jump to a random item of the cluster (0.05).
 *
 * Item tokens are `i1..iN` (token `iK` is dense id K), user tokens `u0..uU-1`.
 *
 * @example Usage
 * ```ts
 * import { syntheticDataset } from "./synthetic.ts";
 * const ds = syntheticDataset({ seed: 7, users: 50 });
 * // ds.sequences.length = 50, ds.clusters[i] in 0..3
 * ```
 *
 * @param options See {@linkcode SyntheticOptions}.
 * @throws {RangeError} A count that is not a positive integer, more clusters than items,
 * more interests than clusters, `minLength > maxLength`, or a probability outside [0, 1].
 */
export function syntheticDataset(options: SyntheticOptions = {}): SyntheticDataset {
  const o = checkedOptions(options);
  const rng = new Rng(o.seed);
  const { rings, clusters } = plantRings(rng, o.items, o.clusters);
  const sequences: Int32Array[] = [];
  const interests: Int32Array[] = [];
  const clusterOrder = Int32Array.from({ length: o.clusters }, (_, c) => c);
  let interactions = 0;
  for (let u = 0; u < o.users; u++) {
    const mine = rng.shuffle(clusterOrder.slice()).slice(0, o.interestsPerUser);
    interests.push(mine);
    const seq = userWalk(rng, o, rings, mine);
    sequences.push(seq);
    interactions += seq.length;
  }

  const categories: Int32Array[] = [new Int32Array(0)];
  for (let i = 1; i <= o.items; i++) categories.push(Int32Array.of(clusters[i]));
  const source = `synthetic(seed=${o.seed}, users=${o.users}, items=${o.items}, ` +
    `clusters=${o.clusters}, interestsPerUser=${o.interestsPerUser}, ` +
    `minLength=${o.minLength}, maxLength=${o.maxLength}, stickiness=${o.stickiness}, ` +
    `noise=${o.noise}${o.sequential ? "" : ", sequential=false"})`;
  return {
    source,
    vocab: {
      users: Array.from({ length: o.users }, (_, u) => `u${u}`),
      items: [PAD_TOKEN, ...Array.from({ length: o.items }, (_, k) => `i${k + 1}`)],
    },
    numItems: o.items,
    sequences,
    categories,
    numCategories: o.clusters,
    clusters,
    interests,
    report: { interactions, skippedUsers: 0, notes: [] },
  };
}

/** {@linkcode SyntheticOptions} with every default filled in and every value checked. */
function checkedOptions(options: SyntheticOptions): Required<SyntheticOptions> {
  const o = {
    seed: options.seed ?? 42,
    users: options.users ?? 600,
    items: options.items ?? 200,
    clusters: options.clusters ?? 4,
    sequential: options.sequential ?? true,
    interestsPerUser: options.interestsPerUser ?? 2,
    minLength: options.minLength ?? 5,
    maxLength: options.maxLength ?? 30,
    stickiness: options.stickiness ?? 0.7,
    noise: options.noise ?? 0.05,
  };
  for (const k of ["users", "items", "clusters", "interestsPerUser", "minLength"] as const) {
    checkPositiveInt(k, o[k]);
  }
  checkPositiveInt("maxLength", o.maxLength);
  if (o.clusters > o.items) {
    throw new RangeError(`clusters (${o.clusters}) must not exceed items (${o.items})`);
  }
  if (o.interestsPerUser > o.clusters) {
    throw new RangeError(
      `interestsPerUser (${o.interestsPerUser}) must not exceed clusters (${o.clusters})`,
    );
  }
  if (o.minLength > o.maxLength) {
    throw new RangeError(`minLength (${o.minLength}) exceeds maxLength (${o.maxLength})`);
  }
  for (const k of ["stickiness", "noise"] as const) {
    if (!(o[k] >= 0 && o[k] <= 1)) throw new RangeError(`${k} must be in [0, 1], got ${o[k]}`);
  }
  return o;
}

/**
 * The planted clusters: a random permutation of the items cut into near-equal contiguous
 * rings, and each item's cluster (-1 for the padding).
 */
function plantRings(
  rng: Rng,
  items: number,
  count: number,
): { rings: Int32Array[]; clusters: Int32Array } {
  const perm = rng.shuffle(Int32Array.from({ length: items }, (_, k) => k + 1));
  const rings: Int32Array[] = [];
  const clusters = new Int32Array(items + 1).fill(-1);
  for (let c = 0; c < count; c++) {
    const ring = perm.slice(Math.floor((c * items) / count), Math.floor(((c + 1) * items) / count));
    rings.push(ring);
    for (const i of ring) clusters[i] = c;
  }
  return { rings, clusters };
}

/** One user's sequence: a walk over the rings of its interests `mine` (see the generator). */
function userWalk(
  rng: Rng,
  o: Required<SyntheticOptions>,
  rings: Int32Array[],
  mine: Int32Array,
): Int32Array {
  // Dirichlet(1) weights: normalised exponential draws (1 - next() avoids log(0)).
  const weights = Array.from(mine, () => -Math.log(1 - rng.next()));
  const pos = Array.from(mine, (c) => rng.int(rings[c].length));
  const length = o.minLength + rng.int(o.maxLength - o.minLength + 1);
  const seq = new Int32Array(length);
  let current = rng.categorical(weights);
  for (let t = 0; t < length; t++) {
    if (t > 0 && mine.length > 1 && rng.next() >= o.stickiness) {
      const others = weights.map((w, k) => (k === current ? 0 : w));
      current = rng.categorical(others);
    }
    if (rng.next() < o.noise) {
      seq[t] = 1 + rng.int(o.items);
      continue;
    }
    const ring = rings[mine[current]];
    if (!o.sequential) {
      seq[t] = ring[rng.int(ring.length)];
      continue;
    }
    const step = ringStep(rng.next());
    pos[current] = step > 0 ? (pos[current] + step) % ring.length : rng.int(ring.length);
    seq[t] = ring[pos[current]];
  }
  return seq;
}

/** The ring step (1, 2 or 3 by {@linkcode STEP_WEIGHTS}) for a uniform draw `x`, or -1: a jump. */
function ringStep(x: number): number {
  for (let s = 0, acc = 0; s < STEP_WEIGHTS.length; s++) {
    acc += STEP_WEIGHTS[s];
    if (x < acc) return s + 1;
  }
  return -1;
}

/**
 * The planted cluster of each item of a data set whose items have one category each (as
 * {@linkcode syntheticDataset} makes): `result[i]` is the first category of item `i`, or
 * -1 for padding and items without categories.
 *
 * @param dataset A data set with `categories`.
 * @throws {TypeError} The data set has no categories.
 */
export function plantedClusters(dataset: SequenceDataset): Int32Array {
  const cats = dataset.categories;
  if (cats === undefined) {
    throw new TypeError(`${dataset.source} has no categories to take clusters from`);
  }
  const out = new Int32Array(dataset.numItems + 1).fill(-1);
  for (let i = 1; i <= dataset.numItems; i++) if (cats[i]?.length > 0) out[i] = cats[i][0];
  return out;
}
