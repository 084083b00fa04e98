/**
 * Micro-batching: requests that arrive within a few milliseconds of each other are scored
 * in one forward pass, which costs little more than scoring one of them.
 *
 * @module
 */
import type { Recommender, RecommendOptions, RecommendResult } from "../inference/recommender.ts";

/** Options of a {@linkcode MicroBatcher}. */
export interface MicroBatcherOptions {
  /**
   * How long the first request of a batch waits for others, in milliseconds; 0 scores every
   * request on its own at once. Default 2.
   */
  waitMs?: number;
  /** Most requests in one batch; a full batch is scored without waiting. Default 64. */
  maxBatch?: number;
}

/**
 * The longest micro-batching window accepted, in milliseconds. A lone request waits this
 * long for company, so a window of seconds is a mistake; timers also silently turn any
 * delay over 2^31 - 1 ms into 1 ms.
 */
export const MAX_WAIT_MS = 10_000;

interface Pending {
  history: string[];
  options: RecommendOptions;
  resolve: (r: RecommendResult) => void;
  reject: (e: unknown) => void;
}

/**
 * Collects single-history requests and scores them together through
 * {@linkcode Recommender.recommendBatch}. Each caller gets its own result, or its own
 * error: a request that fails alone (a bad option) never fails the others of its batch.
 *
 * @example Usage
 * ```ts ignore
 * const batcher = new MicroBatcher(recommender, { waitMs: 2 });
 * const [a, b] = await Promise.all([
 *   batcher.recommend(["tea"], { k: 5 }),
 *   batcher.recommend(["mug"], { k: 5 }),
 * ]); // one forward pass for both
 * ```
 */
export class MicroBatcher {
  readonly #recommender: Recommender;
  readonly #waitMs: number;
  readonly #maxBatch: number;
  #queue: Pending[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Batches requests for `recommender`.
   *
   * @throws {RangeError} `waitMs` outside 0 to {@linkcode MAX_WAIT_MS}, or `maxBatch` not a
   * positive integer.
   */
  constructor(recommender: Recommender, options: MicroBatcherOptions = {}) {
    const waitMs = options.waitMs ?? 2;
    const maxBatch = options.maxBatch ?? 64;
    if (!(waitMs >= 0 && waitMs <= MAX_WAIT_MS)) {
      throw new RangeError(`waitMs must be from 0 to ${MAX_WAIT_MS}, got ${waitMs}`);
    }
    if (!Number.isInteger(maxBatch) || maxBatch < 1) {
      throw new RangeError(`maxBatch must be a positive integer, got ${maxBatch}`);
    }
    this.#recommender = recommender;
    this.#waitMs = waitMs;
    this.#maxBatch = maxBatch;
  }

  /** The recommendations for one history, scored with whatever arrives alongside it. */
  recommend(history: string[], options: RecommendOptions = {}): Promise<RecommendResult> {
    if (this.#waitMs === 0) return this.#recommender.recommend(history, options);
    return new Promise((resolve, reject) => {
      this.#queue.push({ history, options, resolve, reject });
      if (this.#queue.length >= this.#maxBatch) this.#flush();
      else this.#timer ??= setTimeout(() => this.#flush(), this.#waitMs);
    });
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#queue;
    this.#queue = [];
    if (batch.length === 0) return;
    this.#recommender.recommendBatch(batch.map((p) => p.history), batch.map((p) => p.options))
      .then((results) => batch.forEach((p, i) => p.resolve(results[i])))
      .catch(() => {
        // One request's options failed the batch: score each alone so only it fails.
        for (const p of batch) {
          this.#recommender.recommend(p.history, p.options).then(p.resolve, p.reject);
        }
      });
  }
}
