/**
 * Loads the data set named on the command line (or the embedded synthetic one) and maps it
 * onto a checkpoint's vocabulary when evaluating.
 *
 * @module
 */
import { formatFromPath, syntheticDataset } from "../lib/data/mod.ts";
import { readDataset } from "../lib/data/files.ts";
import type { SequenceDataset } from "../lib/data/types.ts";
import { withFlagNames } from "./_flags.ts";

/** How a data set was obtained; stored in checkpoints so `eval` can rebuild it. */
export type DataSpec =
  | { kind: "synthetic"; seed: number }
  | {
    kind: "file";
    path: string;
    format?: "lines" | "recbole" | "movielens";
    kCore?: number;
    categories?: string;
    /** Categories of that file left out (`--drop-category`). */
    dropCategories?: string[];
    minRating?: number;
  };

/**
 * `spec` without a `minRating` that cannot apply: the file is not MovieLens ratings. Such a
 * value is stored by runs from before `--min-rating` was refused there, or inherited by
 * `eval --data` from a MovieLens run; given on the command line, it is refused instead.
 */
export function withoutStrayMinRating<S extends DataSpec>(spec: S): S {
  if (spec.kind !== "file" || spec.minRating === undefined) return spec;
  let format: string | undefined = spec.format;
  try {
    format ??= formatFromPath(spec.path);
  } catch {
    return spec; // an unknown extension: reading it says so
  }
  if (format === "movielens") return spec;
  const { minRating: _, ...rest } = spec;
  return rest as S;
}

/** Reads or generates the data set a {@linkcode DataSpec} describes. */
export async function loadData(spec: DataSpec): Promise<SequenceDataset> {
  if (spec.kind === "synthetic") return syntheticDataset({ seed: spec.seed });
  const { path, ...options } = spec;
  return await withFlagNames(
    () => readDataset(path, options),
    { minRating: "min-rating", kCore: "k-core" },
  );
}

/**
 * Re-expresses `dataset` in a checkpoint's item vocabulary (`itemTokens[i]` is the token of
 * dense id i). Files are remapped by token, so a reordered file still evaluates
 * correctly; an item the checkpoint never saw is a `RangeError` naming it and the user.
 */
export function alignToVocabulary(
  dataset: SequenceDataset,
  itemTokens: string[],
  source: string,
): SequenceDataset {
  const same = dataset.vocab.items.length === itemTokens.length &&
    dataset.vocab.items.every((t, i) => t === itemTokens[i]);
  if (same) return dataset;
  const index = new Map(itemTokens.map((t, i) => [t, i]));
  const sequences = dataset.sequences.map((seq, u) =>
    Int32Array.from(seq, (id) => {
      const token = dataset.vocab.items[id];
      const mapped = index.get(token);
      if (mapped === undefined || mapped === 0) {
        throw new RangeError(
          `${source}: item "${token}" of user "${
            dataset.vocab.users[u]
          }" is not in the checkpoint's vocabulary of ${itemTokens.length - 1} items`,
        );
      }
      return mapped;
    })
  );
  let categories: Int32Array[] | undefined;
  if (dataset.categories) {
    const own = new Map(dataset.vocab.items.map((t, i) => [t, i]));
    categories = itemTokens.map((t) => {
      const id = own.get(t) ?? 0;
      return id > 0 ? dataset.categories![id] : new Int32Array(0);
    });
  }
  return {
    ...dataset,
    vocab: { users: dataset.vocab.users, items: itemTokens },
    numItems: itemTokens.length - 1,
    sequences,
    categories,
  };
}
