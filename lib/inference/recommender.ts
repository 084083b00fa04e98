/**
 * Recommendations on the caller's own item tokens: a {@linkcode Recommender} wraps a
 * trained model and its item vocabulary, scores histories exactly as evaluation does, and
 * returns the top items with their scores, best first.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { historyBatches } from "../data/batches.ts";
import { type SequentialModel } from "../models/_model.ts";
import { modelEntry, withInferenceOverrides } from "../models/mod.ts";
import {
  checkDiversityWeight,
  DEFAULT_DIVERSITY_POOL,
  diversifiedOrder,
  DIVERSITY_METHODS,
  type DiversityMethod,
  type PoolSignals,
  poolSignals,
  resolveDiversityMethod,
} from "../eval/diversify.ts";
import { ParamStore } from "../nn/params.ts";
import type { Tensor2D } from "../nn/tensor_types.ts";
import type { EvalBatch } from "../data/types.ts";
import { BLOCK_SCORES, blockedTopK, blockRows, type TopK } from "./_blocked_top_k.ts";
import { hasInt8TopK, Int8ItemTable, int8TableWidthOk } from "./_int8_items.ts";
import { decodeInt8Rows } from "./_item_codec.ts";
import { VocabularyIndex } from "./_vocabulary_index.ts";
import {
  decodeModelFileFrom,
  encodeModelFile,
  type EncodeModelFileOptions,
  type LoadProgress,
  type ModelFileContents,
  ModelFileError,
  type ModelSource,
  openModelFile,
} from "./model_file.ts";

/**
 * Most (history, fetched item) pairs one forward pass of `recommendBatch` ranks: 256
 * histories at k = 64, or 16 at k = 1,000. Larger requests run in several passes, with the
 * event loop free between them.
 */
export const PASS_BUDGET = 16_384;

/**
 * Default {@linkcode RecommenderOptions.blockItems}: catalogues of more items are ranked
 * 65,536 items at a time with a running top-k.
 */
export const BLOCK_ITEMS = 65_536;

/** Re-ranking work (k x pool x width multiply-adds) done between event-loop turns: ~20 ms. */
const RERANK_SLICE = 2e7;

/** How a history is turned into recommendations. */
export interface RecommendOptions {
  /** How many items to return, a positive integer. Default 10. */
  k?: number;
  /** Never return an item of the history. Default true. */
  excludeSeen?: boolean;
  /** Item tokens never to return (tokens the model does not know are ignored). Default none. */
  exclude?: Iterable<string>;
  /**
   * Throw a `RangeError` naming the first history item the model does not know, instead of
   * skipping it and listing it in `unknown`. Default false.
   */
  strict?: boolean;
  /**
   * How much to trade relevance for variety, a number >= 0. 0 (default): the model's
   * ranking, exactly. Above 0 the best {@linkcode RecommendOptions.diversityPool} items are
   * re-ranked so that each next item adds what the list lacks (`lib/eval/diversify.ts`):
   * the list is then no longer in score order. 1 weighs the two about equally.
   */
  diversity?: number;
  /**
   * How variety is judged: `mmr` (item vectors: unlike items), `interests` (the model's
   * interests, SIGMA's: fill the list across them in proportion to their weight), or `auto`
   * (default): `mmr`, which bought far more diversity than SIGMA's interests on Beauty.
   */
  diversityMethod?: DiversityMethod | "auto";
  /** Candidates re-ranked when `diversity` is above 0, at least `k`. Default 100. */
  diversityPool?: number;
}

/** One recommended item. */
export interface Recommendation {
  /** The item's token, as in the training data. */
  item: string;
  /** The model's score: the logit the item's rank comes from (higher is better). */
  score: number;
}

/** What {@linkcode Recommender.recommend} returns for one history. */
export interface RecommendResult {
  /** Up to `k` items, best first; fewer when fewer items are left to recommend. */
  items: Recommendation[];
  /** Items of the history that the model does not know, skipped, in order of appearance. */
  unknown: string[];
}

/** Options of a {@linkcode Recommender}. */
export interface RecommenderOptions {
  /** Most histories scored in one forward pass of {@linkcode Recommender.recommendBatch}. Default 256. */
  batchSize?: number;
  /**
   * A catalogue of more items than this is ranked from the model's ranking queries (all
   * models here give them) in blocks of at least this many items, as many as 16 MB of
   * scores allow (one history: up to 4M items at once), merging a running top-k
   * (`_blocked_top_k.ts`): no `[batch, items]` score matrix and no transposed copy of the
   * item table, which at 1M items of d 128 are 256 MB (64 histories) and 512 MB. The items
   * returned are the same; scores may differ in the last float bits. Default
   * {@linkcode BLOCK_ITEMS}.
   */
  blockItems?: number;
  /**
   * How many scores (histories x queries x items) a block of that ranking aims at: a block
   * scores `max(blockItems, blockScores / (histories x queries))` items, so past
   * `blockScores / blockItems` queries (64 by default) the `blockItems` floor decides, and a
   * block holds that many more. Its product is computed transposed first, so the peak is
   * about twice the block's scores. Default `BLOCK_SCORES` (2^22, 16 MB).
   */
  blockScores?: number;
  /**
   * For {@linkcode Recommender.load} of a file with an int8 item table (`export
   * --item-dtype i8`): keep the table int8 in memory instead of decoding it to float32 (a
   * quarter of the bytes: 132 MB against 512 MB at 1M items of d 128), and rank by integer
   * dot products with a running top-k (`_int8_items.ts`). Where the backend lacks that
   * kernel (it runs on wasm), or the width is not a multiple of 16 up to 512, the table is
   * decoded as usual (`Recommender.compactItems` says which). Such a recommender cannot re-rank for
   * diversity, give full score vectors or save a model file. Default false.
   */
  compactItems?: boolean;
  /**
   * For {@linkcode Recommender.load}: new values of config fields that change only how the
   * model ranks (its `inferenceFields`, see `withInferenceOverrides`). For DiffuRec and
   * DiffuRecSys, `{ sampling: "one" }` makes one Approximator call instead of the reverse
   * chain's 32, and `{ reverseSteps: 4 }` strides the chain to 4 steps; what they cost in
   * accuracy is measured in `docs/diffusion-notes.md`. Default: the file's config.
   */
  inference?: Record<string, number | string>;
  /**
   * For {@linkcode Recommender.load}: the largest model file fetched from a URL or read from
   * a `Response`; a larger one is a `RangeError`. Default `MAX_MODEL_FILE_BYTES` (1 GiB).
   * Paths are not limited: they are the caller's own files.
   */
  maxFileBytes?: number;
  /**
   * For {@linkcode Recommender.load} from a URL: the longest wait in milliseconds for the
   * server's answer and then for each next piece of the file; past it the load fails,
   * saying so. Default `MODEL_FETCH_STALL_MS` (30 s).
   */
  fetchStallMs?: number;
  /**
   * For {@linkcode Recommender.load} from a URL or a `Response`: called as the file's bytes
   * arrive, with the bytes so far and the declared total (undefined without a
   * `content-length`), e.g. for a progress bar. Default: none.
   */
  onLoadProgress?: LoadProgress;
}

/** A model a {@linkcode Recommender} can serve: any model whose config has these two fields. */
export type ServableModel = SequentialModel & {
  config: { maxLength: number; numItems: number };
};

/**
 * Recommends items for histories given as the caller's item tokens.
 *
 * A history is scored as evaluation scores it (truncated to the model's newest
 * `maxLength` items and padded the same way), so the scores equal those that
 * `evaluateModel` ranks by. Items the model does not know are skipped and reported.
 * An empty history (or one of unknown items only) is scored as the model scores a history
 * of padding: the ranking it learned for "no context yet", a popularity-like prior.
 *
 * Owns its model: {@linkcode Recommender.dispose} (or `using`) frees the weights.
 *
 * @example Train on histories given in code, then recommend
 * ```ts
 * import {
 *   datasetFromSequences,
 *   leaveOneOut,
 *   Recommender,
 *   SasRec,
 *   selectBackend,
 *   train,
 * } from "../../train.ts";
 * await selectBackend("auto");
 * const data = datasetFromSequences({
 *   alice: ["Blue Mug", "Tea", "Kettle", "Tea"],
 *   bob: ["Tea", "Blue Mug", "Kettle"],
 *   carol: ["Kettle", "Tea", "Blue Mug", "Spoon"],
 * });
 * const model = new SasRec({ numItems: data.numItems, hidden: 8, heads: 1, layers: 1, inner: 8 });
 * await train(model, leaveOneOut(data).split, data.numItems, { epochs: 1 });
 * using recommender = new Recommender(model, data.vocab.items);
 * const { items, unknown } = await recommender.recommend(["Tea", "Teapot"], { k: 2 });
 * // items: two of "Blue Mug", "Kettle", "Spoon" with scores; unknown: ["Teapot"]
 * ```
 */
export class Recommender {
  /** The model, which this recommender owns. */
  readonly model: ServableModel;
  /** Item tokens by dense id; `items[0]` is padding. */
  readonly items: readonly string[];
  /**
   * What the model file says of where the model came from (its `info`: the trainer writes
   * the epoch, validation metrics and data it was trained on); `{}` when built in code.
   */
  info: Readonly<Record<string, unknown>> = {};
  /** The format version of the model file it was loaded from; undefined when built in code. */
  formatVersion: number | undefined = undefined;
  readonly #ids: VocabularyIndex; // token -> id, padding left out
  readonly #batchSize: number;
  readonly #blockItems: number;
  readonly #blockScores: number;
  #disposed = false;

  /**
   * Wraps a trained model and the vocabulary it was trained on (e.g.
   * `dataset.vocab.items`, whose index 0 is padding).
   *
   * @throws {RangeError} The vocabulary's size does not match the model's `numItems`, or a
   * token appears twice, or `batchSize`, `blockItems` or `blockScores` is not a positive
   * integer.
   */
  constructor(model: ServableModel, items: readonly string[], options: RecommenderOptions = {}) {
    if (items.length !== model.config.numItems + 1) {
      throw new RangeError(
        `the vocabulary has ${items.length} entries; the model scores numItems + 1 = ${
          model.config.numItems + 1
        } (index 0 is padding)`,
      );
    }
    this.#ids = new VocabularyIndex(items, 1, (token) => {
      throw new RangeError(`item ${JSON.stringify(token)} appears twice in the vocabulary`);
    });
    const batchSize = options.batchSize ?? 256;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
    }
    const blockItems = options.blockItems ?? BLOCK_ITEMS;
    const blockScores = options.blockScores ?? BLOCK_SCORES;
    for (const [name, value] of [["blockItems", blockItems], ["blockScores", blockScores]]) {
      if (!Number.isInteger(value) || (value as number) < 1) {
        throw new RangeError(`${name} must be a positive integer, got ${value}`);
      }
    }
    this.model = model;
    this.items = items;
    this.#batchSize = batchSize;
    this.#blockItems = blockItems;
    this.#blockScores = blockScores;
  }

  /**
   * Loads a model file (see `model_file.ts`) and builds its model on the active backend.
   *
   * @example Usage
   * ```ts ignore
   * using r = await Recommender.load("runs/sasrec/model.safetensors");
   * using remote = await Recommender.load(new URL("https://example.com/model.safetensors"));
   * ```
   *
   * @param source A path (under Deno), a URL, a `Response` or the file's bytes.
   * @param options See {@linkcode RecommenderOptions}.
   * @throws {ModelFileError} The file fails a check (named); no model is built then.
   * @throws {RangeError} An `inference` field the model does not have, or a bad value.
   */
  static async load(source: ModelSource, options: RecommenderOptions = {}): Promise<Recommender> {
    requireBackend();
    const reader = await openModelFile(
      source,
      options.maxFileBytes,
      options.fetchStallMs,
      options.onLoadProgress,
    );
    const name = reader.name;
    // A kept int8 table is filled in place as its codes are read: a path's file is then
    // never in memory whole beside the table. Freed here on a failure until a model owns it.
    const made: { table: Int8ItemTable | null; model: ServableModel | null } = {
      table: null,
      model: null,
    };
    try {
      let file: ModelFileContents;
      try {
        file = await decodeModelFileFrom(reader, {
          keepInt8Items: options.compactItems === true && hasInt8TopK(),
          // Anything but a table the kernel takes is read into memory and decoded below.
          int8Sink: (shape) =>
            made.table = shape.length === 2 && int8TableWidthOk(shape[1])
              ? Int8ItemTable.receiving(shape[0], shape[1])
              : null,
        });
      } finally {
        reader.close();
      }
      const config = checkedConfig(file, name, options.inference ?? {});
      made.model = buildFromFile(file, config, made.table, name);
      const recommender = new Recommender(made.model, file.items, options);
      recommender.info = file.info;
      recommender.formatVersion = file.formatVersion;
      return recommender;
    } catch (e) {
      if (made.model) made.model.params.dispose(); // its store owns the table
      else made.table?.dispose();
      throw e;
    }
  }

  /** Whether the item table is held int8 (`compactItems`), not as the model's float32 table. */
  get compactItems(): boolean {
    return this.#int8 !== null;
  }

  /**
   * The diversity methods {@linkcode RecommendOptions.diversityMethod} can name here: `mmr`
   * for every model, `interests` for SIGMA; none when the item table is kept int8 (no float32
   * item vectors to compare).
   */
  get diversityMethods(): DiversityMethod[] {
    if (this.#int8) return [];
    return (["mmr", "interests"] as const).filter((m) => {
      try {
        resolveDiversityMethod(this.model, m);
        return true;
      } catch {
        return false;
      }
    });
  }

  /** The int8 item table the model's store holds in place of `item` (`compactItems`). */
  get #int8(): Int8ItemTable | null {
    const table = this.model.params.external("item");
    return table instanceof Int8ItemTable ? table : null;
  }

  /** Number of real items the model ranks. */
  get numItems(): number {
    return this.items.length - 1;
  }

  /**
   * The model file of this recommender's model and vocabulary (see `model_file.ts`).
   *
   * @param info Where the model came from, stored as the file's `info`.
   * @param options How to store the item table: `{ itemDtype: "f16" | "i8" }` for a smaller
   * file (see `EncodeModelFileOptions`). Default float32, as trained.
   */
  async toBytes(
    info: Record<string, unknown> = {},
    options: EncodeModelFileOptions = {},
  ): Promise<Uint8Array<ArrayBuffer>> {
    this.#check();
    if (this.#int8) {
      throw new TypeError(
        "this recommender keeps its item table int8 (compactItems): save the file it was " +
          "loaded from instead",
      );
    }
    const { records, values } = await this.model.params.toArrays();
    return await encodeModelFile({
      model: this.model.name,
      config: this.model.config as unknown as Record<string, unknown>,
      items: [...this.items],
      params: records,
      values,
      info,
    }, options);
  }

  /**
   * The top items after one history, best first.
   *
   * @param history Item tokens in time order, oldest first.
   * @param options See {@linkcode RecommendOptions}.
   * @throws {RangeError} A bad `k`, an unknown item with `strict`, or a score that is not
   * finite.
   * @throws {TypeError} An option of the wrong type (`exclude` not a list of tokens,
   * `excludeSeen` or `strict` not a boolean).
   */
  async recommend(
    history: Iterable<string>,
    options: RecommendOptions = {},
  ): Promise<RecommendResult> {
    return (await this.recommendBatch([history], options))[0];
  }

  /**
   * The top items after each of many histories, in the caller's order. Histories are
   * scored together, `batchSize` at a time, grouped by length as evaluation groups them.
   *
   * @param histories Item tokens of each history, oldest first.
   * @param options One set of options for all, or one per history.
   * @throws {RangeError} A bad `k`, options of the wrong length, an unknown item with
   * `strict`, or a score that is not finite (the history's index is named).
   * @throws {TypeError} An option of the wrong type, as for {@linkcode Recommender.recommend}.
   */
  async recommendBatch(
    histories: readonly Iterable<string>[],
    options: RecommendOptions | readonly RecommendOptions[] = {},
  ): Promise<RecommendResult[]> {
    this.#check();
    if (Array.isArray(options) && options.length !== histories.length) {
      throw new RangeError(
        `${options.length} sets of options for ${histories.length} histories`,
      );
    }
    const rows = histories.map((h, i) =>
      this.#prepare(h, (Array.isArray(options) ? options[i] : options) as RecommendOptions, i)
    );
    const results: RecommendResult[] = new Array(rows.length);
    // Each forward pass ranks at most PASS_BUDGET (row, fetched item) pairs, and the event
    // loop runs between passes: 256 histories at k = 1000 held a server's loop for 7 s
    // (its /health waited) in one pass.
    let widest = 1;
    for (const r of rows) widest = Math.max(widest, r.want + r.excluded.size + 1);
    const batchSize = Math.max(
      1,
      Math.min(this.#batchSize, Math.floor(PASS_BUDGET / Math.min(widest, this.numItems + 1))),
    );
    const batches = historyBatches(rows.map((r) => r.ids), {
      batchSize,
      maxLength: this.model.config.maxLength,
    });
    for (const [pass, { batch, rows: members }] of batches.entries()) {
      if (pass > 0) await new Promise((resolve) => setTimeout(resolve, 0));
      // Over-fetch so that excluded items can be dropped on the host and k still remain.
      let fetch = 1;
      for (const m of members) fetch = Math.max(fetch, rows[m].want + rows[m].excluded.size + 1);
      fetch = Math.min(fetch, this.numItems + 1);
      const [values, indices] = tf.tidy(() => {
        const top = this.#topK(batch, fetch); // [b, fetch] each
        return [top.values, top.indices];
      });
      let v: Float32Array, ix: Int32Array;
      try {
        v = await values.data() as Float32Array;
        ix = await indices.data() as Int32Array;
      } finally {
        tf.dispose([values, indices]);
      }
      // The model's view of the fetched items, once per method any row of the pass asks for.
      const signals = new Map<DiversityMethod, PoolSignals>();
      for (const m of members) {
        const method = rows[m].method;
        if (method && !signals.has(method)) {
          signals.set(method, await poolSignals(this.model, method, batch, ix));
        }
      }
      // Re-ranking costs about k x pool x width per row (MMR at k = pool = 1,000 took 140 ms
      // a row): the event loop runs between rows once a slice of that work is done.
      let work = 0;
      for (const [r, m] of members.entries()) {
        const row = rows[m];
        const values = v.subarray(r * fetch, (r + 1) * fetch);
        const indices = ix.subarray(r * fetch, (r + 1) * fetch);
        if (!row.method) {
          results[m] = this.#pick(row, values, indices, m);
          continue;
        }
        const rowSignals = signals.get(row.method)!;
        results[m] = this.#pickDiverse(row, values, indices, m, rowSignals, r, fetch);
        work += row.k * row.want * rowSignals.width;
        if (work > RERANK_SLICE) {
          work = 0;
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
      }
    }
    return results;
  }

  /**
   * The model's score of every item after one history (index = dense item id; index 0,
   * padding, is not an item), as evaluation ranks by. For checks and custom ranking.
   *
   * @param history Item tokens in time order; unknown ones are skipped.
   */
  async scores(history: Iterable<string>): Promise<Float32Array> {
    this.#check();
    const { ids } = this.#prepare(history, {}, 0);
    const [{ batch }] = historyBatches([ids], {
      batchSize: 1,
      maxLength: this.model.config.maxLength,
    });
    const s = tf.tidy(() => this.model.scores(batch));
    try {
      return await s.data() as Float32Array;
    } finally {
      s.dispose();
    }
  }

  /** Frees the model's weights; later calls throw. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.model.params.dispose();
  }

  /** The same as {@linkcode Recommender.dispose}, for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  #check(): void {
    if (this.#disposed) throw new TypeError("this Recommender has been disposed");
  }

  /**
   * A pass's `fetch` best items: from the int8 table (`compactItems`), the full scores'
   * top-k, or in blocks past `blockItems`.
   */
  #topK(batch: EvalBatch, fetch: number): TopK {
    const { rankingQueries, itemVectors } = this.model;
    const int8 = this.#int8;
    if (int8 && rankingQueries) return int8.topK(rankingQueries.call(this.model, batch), fetch, 0);
    if (this.numItems + 1 > this.#blockItems && rankingQueries && itemVectors) {
      const queries = rankingQueries.call(this.model, batch); // [b, q, d]
      const rowsOfQueries = queries.shape[0] * queries.shape[1];
      const block = blockRows(rowsOfQueries, this.#blockItems, this.#blockScores);
      return blockedTopK(queries, itemVectors.call(this.model), fetch, block);
    }
    const top = tf.topk(this.model.scores(batch), fetch, true); // of [b, N + 1]
    return { values: top.values as Tensor2D, indices: top.indices as Tensor2D };
  }

  #prepare(history: Iterable<string>, o: RecommendOptions, index: number) {
    checkOptions(o, index);
    const k = o.k ?? 10;
    if (history === null || typeof history !== "object" || !(Symbol.iterator in history)) {
      throw new TypeError(`history ${index} is not a list of item tokens`);
    }
    const ids: number[] = [];
    const unknown = new Set<string>(); // in order of first appearance
    for (const token of history) {
      const id = this.#ids.get(token);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      if (o.strict) {
        throw new RangeError(
          `history ${index}: item ${JSON.stringify(token)} is not in the model's vocabulary`,
        );
      }
      unknown.add(token);
    }
    const excluded = new Set<number>([0]);
    if (o.excludeSeen ?? true) { for (const id of ids) excluded.add(id); }
    for (const token of o.exclude ?? []) {
      const id = this.#ids.get(token);
      if (id !== undefined) excluded.add(id);
    }
    const diversity = o.diversity ?? 0;
    // Only a positive weight re-ranks: 0 keeps the model's ranking, bit for bit.
    let method: DiversityMethod | undefined;
    try {
      method = diversity > 0
        ? resolveDiversityMethod(this.model, o.diversityMethod ?? "auto")
        : undefined;
    } catch (e) {
      throw new RangeError(`options of history ${index}: ${(e as Error).message}`);
    }
    if (method && this.#int8) {
      throw new RangeError(
        `options of history ${index}: diversity needs the float32 item table, and this ` +
          "recommender keeps it int8 (compactItems)",
      );
    }
    const want = method ? Math.max(k, o.diversityPool ?? DEFAULT_DIVERSITY_POOL) : k;
    return {
      ids: Int32Array.from(ids),
      unknown: [...unknown],
      excluded,
      k,
      diversity,
      method,
      want,
    };
  }

  /** The row's candidates in score order: fetched columns that are not excluded, checked. */
  #candidates(
    row: { excluded: Set<number> },
    values: Float32Array,
    indices: Int32Array,
    index: number,
    limit: number,
  ): number[] {
    const columns: number[] = [];
    for (let j = 0; j < indices.length && columns.length < limit; j++) {
      // NaN sorts anywhere in topk; an infinite score would reach JSON as null.
      if (Number.isNaN(values[j])) throw new RangeError(`history ${index}: the model scored NaN`);
      if (row.excluded.has(indices[j])) continue;
      if (!Number.isFinite(values[j])) {
        throw new RangeError(`history ${index}: the model scored ${values[j]}`);
      }
      columns.push(j);
    }
    return columns;
  }

  #pick(
    row: { excluded: Set<number>; k: number; unknown: string[] },
    values: Float32Array,
    indices: Int32Array,
    index: number,
  ): RecommendResult {
    const items = this.#candidates(row, values, indices, index, row.k).map((j) => ({
      item: this.items[indices[j]],
      score: values[j],
    }));
    return { items, unknown: row.unknown };
  }

  /** {@linkcode Recommender.#pick} re-ranked for variety (`diversity` above 0). */
  #pickDiverse(
    row: {
      excluded: Set<number>;
      k: number;
      unknown: string[];
      diversity: number;
      method?: DiversityMethod;
      want: number;
    },
    values: Float32Array,
    indices: Int32Array,
    index: number,
    signals: PoolSignals,
    passRow: number,
    fetch: number,
  ): RecommendResult {
    const columns = this.#candidates(row, values, indices, index, row.want);
    const scores = Float32Array.from(columns, (j) => values[j]);
    const order = diversifiedOrder(
      row.method!,
      signals,
      passRow,
      fetch,
      scores,
      row.k,
      row.diversity,
      (i) => columns[i],
    );
    const items = Array.from(order, (i) => ({
      item: this.items[indices[columns[i]]],
      score: scores[i],
    }));
    return { items, unknown: row.unknown };
  }
}

/**
 * The config of the model `file` holds, checked, with the caller's inference overrides.
 *
 * @throws {ModelFileError} The file's config does not describe a model (named).
 * @throws {RangeError} An override the model does not take (the caller's).
 */
function checkedConfig(
  file: ModelFileContents,
  name: string,
  overrides: Record<string, unknown>,
): Record<string, unknown> {
  try {
    modelEntry(file.model).validate({ ...file.config, numItems: file.items.length - 1 });
  } catch (e) {
    throw new ModelFileError(name, `its model cannot be built: ${(e as Error).message}`);
  }
  return withInferenceOverrides(file.model, file.config, overrides);
}

/**
 * The model of `file`, built from its values (views, no copy: no drawn initial values to
 * replace, so each tensor is allocated once, and the wasm heap never shrinks back), with
 * `table` (an int8 item table filled while reading) as its item table, or a kept int8 table
 * still in memory (a width the kernel does not take) decoded to float32.
 *
 * @throws {ModelFileError} A tensor the model needs that the file lacks or shapes otherwise,
 * or a model that cannot be built from it (named).
 */
function buildFromFile(
  file: ModelFileContents,
  config: Record<string, unknown>,
  table: Int8ItemTable | null,
  name: string,
): ServableModel {
  const numItems = file.items.length - 1;
  const create = () => modelEntry(file.model).create({ ...config, numItems });
  const kept = file.int8Items;
  try {
    // Sized against the file's tensors first: a config that asks for more (10 million
    // layers, a history of 1e9) is refused before anything is allocated.
    const planned = ParamStore.plan(create, {
      // Twice the file's, so that a tensor missing from it is named below instead.
      tensors: 2 * file.params.length + 10,
      values: 2 * (file.values.length + (kept ? kept.shape[0] * kept.shape[1] : 0)) + 4096,
    });
    // The kept int8 table goes last, so that the other tensors' offsets are unchanged.
    const stored = kept ? [...file.params, { name: kept.name, shape: kept.shape }] : file.params;
    const places = matchByName(planned, stored, name);
    const values = new Map<string, Float32Array | Int8ItemTable>();
    planned.forEach((r, i) => {
      if (r.name === kept?.name) return;
      values.set(r.name, file.values.subarray(places[i].offset, places[i].offset + places[i].size));
    });
    if (kept && table) {
      table.setScales(kept.scales);
      values.set(kept.name, table);
    } else if (kept) {
      values.set(kept.name, decodeInt8Rows(kept.codes!, kept.scales, kept.shape[1]));
    }
    return ParamStore.withValues(values, create);
  } catch (e) {
    if (e instanceof ModelFileError) throw e; // a tensor named already
    throw new ModelFileError(name, `its model cannot be built: ${(e as Error).message}`);
  }
}

/**
 * Checks one set of {@linkcode RecommendOptions} before any tensor exists: a wrong type
 * would otherwise be read loosely (a string `exclude` as its characters, `"false"` as true).
 */
function checkOptions(o: RecommendOptions, index: number): void {
  const at = `options of history ${index}`;
  if (o === null || typeof o !== "object") {
    throw new TypeError(`${at}: must be an object, got ${o === null ? "null" : typeof o}`);
  }
  const k = o.k ?? 10;
  if (!Number.isInteger(k) || k < 1) {
    throw new RangeError(`k must be a positive integer, got ${k}`);
  }
  if (o.diversity !== undefined) checkDiversityWeight(o.diversity, `${at}: diversity`);
  if (o.diversityMethod !== undefined && typeof o.diversityMethod !== "string") {
    throw new TypeError(
      `${at}: diversityMethod must be a string, got ${JSON.stringify(o.diversityMethod)}`,
    );
  }
  if (o.diversityMethod !== undefined && !DIVERSITY_METHODS.includes(o.diversityMethod)) {
    throw new RangeError(
      `${at}: diversityMethod must be one of ${DIVERSITY_METHODS.join(", ")}, got ${
        JSON.stringify(o.diversityMethod)
      }`,
    );
  }
  const pool = o.diversityPool;
  if (pool !== undefined && (!Number.isInteger(pool) || pool < 1 || pool > 100_000)) {
    throw new RangeError(
      `${at}: diversityPool must be an integer from 1 to 100000, got ${JSON.stringify(pool)}`,
    );
  }
  for (const flag of ["excludeSeen", "strict"] as const) {
    if (o[flag] !== undefined && typeof o[flag] !== "boolean") {
      throw new TypeError(`${at}: ${flag} must be true or false, got ${JSON.stringify(o[flag])}`);
    }
  }
  const exclude = o.exclude;
  if (exclude === undefined) return;
  if (exclude === null || typeof exclude !== "object" || !(Symbol.iterator in exclude)) {
    throw new TypeError(
      `${at}: exclude must be a list of item tokens, got ${JSON.stringify(exclude)}`,
    );
  }
}

/**
 * Where each of the model's parameters `mine` lies in a file's values, by name: the file's
 * tensors must be exactly the model's, name for name and shape for shape.
 *
 * @throws {ModelFileError} A tensor missing, of another shape, or not the model's.
 */
function matchByName(
  mine: { name: string; shape: number[] }[],
  params: { name: string; shape: number[] }[],
  source: string,
): { offset: number; size: number }[] {
  const byName = new Map<string, { shape: number[]; offset: number }>();
  let offset = 0;
  for (const p of params) {
    byName.set(p.name, { shape: p.shape, offset });
    offset += p.shape.reduce((a, b) => a * b, 1);
  }
  const places = mine.map((r) => {
    const found = byName.get(r.name);
    if (!found) throw new ModelFileError(source, `tensor "${r.name}" [${r.shape}] is missing`);
    if (found.shape.join(",") !== r.shape.join(",")) {
      throw new ModelFileError(
        source,
        `tensor "${r.name}" is [${found.shape}], the model's config gives [${r.shape}]`,
      );
    }
    byName.delete(r.name);
    return { offset: found.offset, size: r.shape.reduce((a, b) => a * b, 1) };
  });
  if (byName.size > 0) {
    throw new ModelFileError(
      source,
      `tensor "${[...byName.keys()][0]}" is not a parameter of the model`,
    );
  }
  return places;
}

/**
 * Throws when no tfjs backend has been started: tfjs would then pick one itself, and an
 * asynchronous one (WebGPU) fails deep inside the first model with "has not yet been
 * initialized", which reads like a broken model file.
 *
 * @throws {Error} Saying what to call first.
 */
function requireBackend(): void {
  const engine = tf.engine() as unknown as { backendInstance: unknown };
  if (engine.backendInstance == null) {
    throw new Error(
      'no tfjs backend is running: call `await selectBackend("auto")` (exported beside ' +
        "Recommender) before loading a model",
    );
  }
}
