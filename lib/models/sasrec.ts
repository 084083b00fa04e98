/**
 * SASRec: self-attentive sequential recommendation (Kang and McAuley, 2018), trained by
 * default with full softmax cross-entropy over the catalogue (the loss of the SIGMA paper's
 * Eq. 13, so both models of its Table 2 learn from the same objective); `loss: "bce"` is
 * the original SASRec's one sampled negative per position.
 *
 * Reads top to bottom: config with defaults, parameters, encoder, loss, scores.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Scalar, Tensor2D, Tensor3D } from "../nn/tensor_types.ts";
import type { EvalBatch, TrainBatch } from "../data/types.ts";
import {
  causalPaddingMask,
  createLayerNorm,
  createTransformer,
  dropout,
  embeddingLookup,
  itemRows,
  layerNorm,
  queryScores,
  type SeedSource,
  transformer,
  type TransformerSettings,
} from "../nn/layers.ts";
import { ITEM_LOSS_KINDS, itemLoss, type ItemLossKind } from "../nn/item_losses.ts";
import { addLeadingBroadcast } from "../nn/fused.ts";
import { ParamStore } from "../nn/params.ts";
import {
  SEQUENCE_ENCODER_DEFAULTS,
  SEQUENCE_ENCODER_HELP,
  type SequenceEncoderConfig,
  type SequentialModel,
  validateSequenceEncoderConfig,
} from "./_model.ts";

/** SASRec's configuration. Defaults follow the SIGMA paper's shared settings (§4.1). */
export interface SasRecConfig extends SequenceEncoderConfig {
  /** Transformer blocks. RecBole's SASRec default: 2 (range 1-4). */
  layers: number;
  /**
   * Training loss: `softmax` (full catalogue, default), `bce` (one uniform negative per
   * position, binary cross-entropy: the original SASRec's and the SIGMA authors' code's),
   * `sampled` (softmax over the target and `negatives` uniform negatives).
   */
  loss: ItemLossKind;
  /** Negatives per position for `loss: "sampled"`. Default 100. */
  negatives: number;
}

/** Defaults for every {@linkcode SasRecConfig} field except `numItems`. */
export const SASREC_DEFAULTS: Omit<SasRecConfig, "numItems"> = {
  ...SEQUENCE_ENCODER_DEFAULTS,
  layers: 2,
  loss: "softmax",
  negatives: 100,
};

/** One line per {@linkcode SasRecConfig} field, for `--help`. */
export const SASREC_HELP: Record<keyof typeof SASREC_DEFAULTS, string> = {
  ...SEQUENCE_ENCODER_HELP,
  layers: "Transformer blocks (RecBole default 2; 1-4)",
  loss: "softmax (full, default) | bce (1 negative, original SASRec) | sampled (--negatives n)",
  negatives: "negatives per position for --loss sampled",
};

/** SASRec behind the {@linkcode SequentialModel} interface. */
export class SasRec implements SequentialModel<SasRecConfig> {
  /** Always `"sasrec"`. */
  readonly name = "sasrec";
  /** The full configuration. */
  readonly config: SasRecConfig;
  /** Trainable parameters. */
  readonly params: ParamStore;
  readonly #block: TransformerSettings;

  /**
   * Creates SASRec with fresh, seeded parameters.
   *
   * @throws {RangeError} A config field out of its domain (the field is named).
   */
  constructor(config: Partial<SasRecConfig> & { numItems: number }) {
    this.config = { ...SASREC_DEFAULTS, ...config };
    const c = this.config;
    validateSasRecConfig(c);
    this.#block = {
      hidden: c.hidden,
      heads: c.heads,
      inner: c.inner,
      dropout: c.dropout,
      layers: c.layers,
      layerNormEps: c.layerNormEps,
    };
    const p = new ParamStore(c.seed, c.initStd);
    p.create("item", [c.numItems + 1, c.hidden]); // row 0 = padding
    p.create("position", [c.maxLength, c.hidden]);
    createLayerNorm(p, "embed.ln", c.hidden);
    createTransformer(p, "enc", this.#block);
    this.params = p;
  }

  /**
   * Hidden states `[B, L, d]` of left-padded `inputs`. Positions are counted from the
   * right (the newest item always sits at position maxLength-1), so a row's result does
   * not depend on how far the batch is padded. With `lastOnly`, only the newest position
   * is computed: `[B, 1, d]`.
   */
  encode(
    inputs: Int32Array,
    batch: number,
    length: number,
    seeds: SeedSource,
    lastOnly = false,
  ): Tensor3D {
    const c = this.config;
    const ids = tf.tensor2d(inputs, [batch, length], "int32");
    const items = itemRows(this.params, "item", ids); // [B, L, d]
    const posIds = tf.range(c.maxLength - length, c.maxLength, 1, "int32"); // [L]
    const pos = embeddingLookup(this.params.get("position") as tf.Tensor2D, posIds); // [L, d]
    // items + pos; on webgpu pos's gradient (the sum over the batch) is one dispatch.
    let x = layerNorm(this.params, "embed.ln", addLeadingBroadcast(items, pos), c.layerNormEps);
    x = dropout(x, c.dropout, seeds ? seeds() : null); // [B, L, d]
    const mask = causalPaddingMask(inputs, batch, length); // [B, 1, L, L]
    return transformer(this.params, "enc", x as tf.Tensor3D, mask, this.#block, seeds, lastOnly);
  }

  /** Mean loss (`config.loss`, full softmax by default) over every position with a target. */
  loss(batch: TrainBatch, seeds: () => number): {
    loss: Scalar;
    parts: Record<string, Scalar>;
  } {
    const { rows, targets } = targetPositions(batch);
    const h = this.encode(batch.inputs, batch.batch, batch.length, seeds);
    const flat = tf.reshape(h, [-1, this.config.hidden]) as tf.Tensor2D; // [B*L, d]
    const queries = embeddingLookup(flat, tf.tensor1d(rows, "int32")) as tf.Tensor2D; // [P, d]
    const perPosition = itemLoss(
      tf.expandDims(queries, 1) as tf.Tensor3D, // [P, 1, d]: one interest
      this.params.get("item") as tf.Tensor2D,
      targets,
      { kind: this.config.loss, negatives: this.config.negatives, temperature: 1, seed: seeds() },
    ); // [P]
    const loss = tf.mean(perPosition);
    return { loss: loss as tf.Scalar, parts: { recon: loss as tf.Scalar } };
  }

  /** Scores `[B, N + 1]` of every item after each history, from the newest position. */
  scores(batch: EvalBatch): Tensor2D {
    return queryScores(this.rankingQueries(batch), this.params.transposed("item") as Tensor2D);
  }

  /** The newest position's hidden state `[B, 1, d]`, which {@linkcode SasRec.scores} ranks by. */
  rankingQueries(batch: EvalBatch): Tensor3D {
    return this.encode(batch.inputs, batch.batch, batch.length, null, true) as Tensor3D; // [B, 1, d]
  }

  /** The item embedding table `[N + 1, d]` (not a copy), for MMR-diversified lists. */
  itemVectors(): Tensor2D {
    return this.params.get("item") as Tensor2D;
  }
}

/** Flat row indices (into `[B*L]`) and target ids of every position that has a target. */
export function targetPositions(batch: TrainBatch): { rows: Int32Array; targets: Int32Array } {
  let count = 0;
  for (const t of batch.targets) if (t !== 0) count++;
  const rows = new Int32Array(count);
  const targets = new Int32Array(count);
  let j = 0;
  for (let i = 0; i < batch.targets.length; i++) {
    if (batch.targets[i] !== 0) {
      rows[j] = i;
      targets[j++] = batch.targets[i];
    }
  }
  if (count === 0) throw new RangeError("Training batch has no position with a target");
  return { rows, targets };
}

/** Checks every field of a full SASRec config, naming the first bad one. */
export function validateSasRecConfig(c: SasRecConfig): void {
  validateSequenceEncoderConfig(c);
  if (!Number.isInteger(c.negatives) || c.negatives < 1) {
    throw new RangeError(`negatives must be a positive integer, got ${c.negatives}`);
  }
  if (!ITEM_LOSS_KINDS.includes(c.loss)) {
    throw new RangeError(`loss must be one of ${ITEM_LOSS_KINDS.join(", ")}, got ${c.loss}`);
  }
}
