/**
 * The shapes data takes between the readers, the split, the batches and the models.
 *
 * Item ids are dense: 1..numItems are real items, 0 is padding. User ids are dense
 * 0..numUsers-1. The vocabulary maps them back to the tokens of the source file.
 *
 * @module
 */

/** Tokens of the source file for each dense id. */
export interface Vocabulary {
  /** `users[u]` is the token of dense user `u`. */
  users: string[];
  /** `items[i]` is the token of dense item `i`; `items[0]` is the padding marker `"<pad>"`. */
  items: string[];
}

/** Counts of what a reader or filter dropped, so nothing is skipped silently. */
export interface DataReport {
  /** Lines or interactions read. */
  interactions: number;
  /** Users dropped because their history was empty or too short, by reason. */
  skippedUsers: number;
  /** Human-readable lines, one per kind of drop, e.g. "12 users with fewer than 3 items skipped". */
  notes: string[];
}

/** A set of user histories over a dense item vocabulary. */
export interface SequenceDataset {
  /** Where it came from: a file path, or "synthetic(seed=…)". */
  source: string;
  /** Dense id to token maps. */
  vocab: Vocabulary;
  /** Number of real items; ids run 1..numItems. */
  numItems: number;
  /** One history per dense user, item ids in time order. */
  sequences: Int32Array[];
  /**
   * Optional item categories: `categories[i]` lists the category ids of item `i`
   * (`categories[0]` is empty). Two items share a category when their lists intersect.
   */
  categories?: Int32Array[];
  /** Number of distinct category ids (ids run 0..numCategories-1), when categories exist. */
  numCategories?: number;
  /** What reading and filtering dropped. */
  report: DataReport;
}

/** One ranking query: rank the whole catalogue for `user` after `history`, expect `target`. */
export interface EvalExample {
  /** Dense user id. */
  user: number;
  /** The items the model sees, in time order (not truncated; the batcher truncates). */
  history: Int32Array;
  /** The held-out next item. */
  target: number;
}

/** Leave-one-out split of a {@linkcode SequenceDataset} (SIGMA.md, "Data and protocol"). */
export interface LeaveOneOutSplit {
  /** `s[:-2]` per user with at least 2 items in it; every position after the first is a target. */
  train: Int32Array[];
  /** History `s[:-2]`, target `s[-2]`. */
  valid: EvalExample[];
  /** History `s[:-1]`, target `s[-1]`. */
  test: EvalExample[];
}

/**
 * A training batch, left padded to `length` (the longest input in the batch, at most the
 * model's maximum length). Row-major `[batch, length]` arrays.
 */
export interface TrainBatch {
  /** Rows in the batch. */
  batch: number;
  /** Padded length of every row. */
  length: number;
  /** Input item ids `[batch, length]`, 0 = padding (on the left). */
  inputs: Int32Array;
  /** Next-item targets `[batch, length]`, 0 where a position has no target. */
  targets: Int32Array;
}

/**
 * An evaluation batch: histories left padded to `length`, one target per row.
 * `length` depends only on the histories' own lengths (see `evalPaddedLength`), never on
 * which other rows share the batch, so results do not depend on the batch size.
 */
export interface EvalBatch {
  /** Rows in the batch. */
  batch: number;
  /** Padded length of every row. */
  length: number;
  /** History item ids `[batch, length]`, 0 = padding (on the left), truncated to the most recent. */
  inputs: Int32Array;
  /** The target item of each row `[batch]`. */
  targets: Int32Array;
  /** Dense user id of each row `[batch]`. */
  users: Int32Array;
  /** Items to exclude from each row's ranking: the row's whole (untruncated) history. */
  exclude: Int32Array[];
}
