/**
 * SIGMA: a sequential-recommendation VAE whose prior is a Gaussian mixture built from the
 * user's own interests (paper: `SIGMA.md` and `papers/sigma-paper.md`).
 *
 * Two VAEs share the item embeddings and train jointly:
 *
 * - **MIE-VAE** (§3.2) splits a history into k interests. k category embeddings G score
 *   every item (`a_i^j`); soft interests are a-weighted sums of item embeddings, hard
 *   interests a GRU over the items each category wins by a straight-through
 *   Gumbel-softmax. Their mean is the interest mean `m_t^j`, an MLP gives its variance
 *   `omega_t^j`, the interest intensities `alpha_t^j` are the running mean of `a`. Its own
 *   ELBO decodes sampled interests with a max-over-interests score (Eq. 9).
 * - **SGM-VAE** (§3.3) encodes the history with two Transformers into `mu_t` and
 *   `log sigma_t^2`, samples `z_t`, and decodes it with a third Transformer to score the
 *   next item. Its KL is against the mixture `sum_j alpha_t^j N(m_t^j, omega_t^j)`,
 *   estimated with one sample (Eq. 12).
 *
 * Loss (§3.4), averaged over positions with a target:
 * `-(recon_SGM - lambda KL_SGM) - beta1 (recon_MIE - gamma KL_MIE) + beta2 L_orth`
 * (gamma = `mieKlWeight`, 1 in the paper).
 * Inference ranks by the decoder's output at `z = mu` (or, with `ranking: "mie"`, by
 * MIE-VAE's max-over-interests score at the interest means).
 *
 * Reads top to bottom: config, parameters, shared embedding, MIE-VAE, SGM-VAE, loss,
 * scores.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import type { Scalar, Tensor, Tensor2D, Tensor3D } from "../nn/tensor_types.ts";
import type { EvalBatch, TrainBatch } from "../data/types.ts";
import {
  causalPaddingMask,
  createLayerNorm,
  createLinear,
  createTransformer,
  cumulativeSum,
  dropout,
  embeddingLookup,
  gelu,
  itemRows,
  layerNorm,
  linear,
  matmul,
  queryScores,
  type SeedSource,
  stopGradient,
  transformer,
  type TransformerSettings,
} from "../nn/layers.ts";
import {
  gumbelSoftmax,
  l2Normalise,
  mixturePriorKl,
  orthogonalityLoss,
  reparameterise,
  standardNormalKl,
  straightThroughOneHot,
} from "../prob/distributions.ts";
import { createGru, gatedCategoryGru } from "../nn/gru.ts";
import { ITEM_LOSS_KINDS, itemLoss, type ItemLossKind } from "../nn/item_losses.ts";
import { ParamStore } from "../nn/params.ts";
import {
  checkChoices,
  SEQUENCE_ENCODER_DEFAULTS,
  SEQUENCE_ENCODER_HELP,
  type SequenceEncoderConfig,
  type SequentialModel,
  validateSequenceEncoderConfig,
} from "./_model.ts";
import { targetPositions } from "./sasrec.ts";

/** SIGMA's configuration. Defaults are the paper's (§4.1) or SIGMA.md's decisions. */
export interface SigmaConfig extends SequenceEncoderConfig {
  /** Blocks in each of Enc_mu, Enc_sigma and the decoder. Reference code: 1 (1-3). */
  layers: number;
  /**
   * Number of interests k (the paper's interest categories). Paper: 4 (Amazon), 8
   * (MovieLens); 2-16. Named `interests` so that the CLI's `--categories FILE` (item
   * categories of the data, for diversity) stays the data's; configs saved as `categories`
   * still load.
   */
  interests: number;
  /** Temperature tau of the item-to-category softmax. Authors' code: 0.1 (0.05-1). */
  categoryTemperature: number;
  /** Temperature of the Gumbel-softmax that assigns hard categories. SIGMA.md: 1. */
  gumbelTemperature: number;
  /** Stacked GRU layers of the hard interests. Authors' code: 2. */
  gruLayers: number;
  /** Weight lambda of the mixture-prior KL of SGM-VAE. Paper: 1e-4 (1e-5-1e-2). */
  lambda: number;
  /** Weight beta1 of MIE-VAE's ELBO. Paper: 0.01 (1e-5-1e-2). */
  beta1: number;
  /** Weight beta2 of the orthogonality loss. Paper: 0.01 (1e-5-1e-2). */
  beta2: number;
  /**
   * Weight gamma of KL_MIE inside MIE-VAE's ELBO: `-beta1 (recon_MIE - gamma KL_MIE)`.
   * Paper: 1. Below 1 is a beta-VAE for the interests (ContrastVAE caps its KL weight at
   * 0.2), a remedy for the posterior collapse where omega = 1 and m = 0 carry no
   * interest. Range 0-1.
   */
  mieKlWeight: number;
  /**
   * Adam steps over which KL_MIE's weight rises linearly from 0 to `mieKlWeight` (KL
   * warm-up, Bowman et al. 2016: the usual remedy for a posterior that collapses to its
   * prior before the decoder learns to read it). Paper: 0, no warm-up. Range 0-10,000.
   */
  mieKlWarmup: number;
  /**
   * Whether SGM-VAE's KL trains the mixture prior's parameters (m, omega, alpha, and
   * through them MIE-VAE) as well as the posterior of z. Paper: silent; default true (one
   * joint loss, plain autodiff). False treats the prior as a fixed target for z, so
   * MIE-VAE learns from its own ELBO alone (a prior far from z otherwise gets a gradient
   * that widens omega).
   */
  priorGradient: boolean;
  /**
   * Standardise each interest mean over its d entries (zero mean, unit variance, no
   * learned gain: a parameter-free LayerNorm) after Eq. 5. Not in the paper: default
   * false. Why offered: the raw means are sums of item embeddings initialised at
   * N(0, 0.02), far smaller than the noise omega and than z (a LayerNorm output), and
   * MIE-VAE collapses before they grow (README).
   */
  interestNorm: boolean;
  /**
   * Prior of SGM-VAE: `mixture` (SIGMA) or `standard`, N(0, I) with closed-form KL
   * weighted by `lambdaUni` (the paper's SIGMA_uni, Table 3).
   */
  prior: "mixture" | "standard";
  /** KL weight lambda' with the standard prior. Paper's Table 3: 1 and 1e-4. Default 1. */
  lambdaUni: number;
  /** Whether the orthogonality loss is on. Off = the "without L_orth" variant (Table 5). */
  orthogonality: boolean;
  /**
   * What ranks items at inference: `sgm` (the decoder at z = mu, the paper's) or `mie`
   * (MIE-VAE alone, max over interests; for K <= 40 this ranks exactly as merging each
   * interest's top 40 by score, the paper's Table 4 protocol).
   */
  ranking: "sgm" | "mie";
  /** Reconstruction loss: `softmax` (full catalogue, paper), `bce` (1 negative), `sampled`. */
  loss: ItemLossKind;
  /** Negatives per position for `--loss sampled`. Default 100. */
  negatives: number;
  /** Temperature tau of SGM-VAE's softmax (Eq. 13). SIGMA.md: 1. */
  reconTemperature: number;
  /** Temperature epsilon of MIE-VAE's max-over-interests softmax (Eq. 9). Default 1. */
  interestTemperature: number;
  /**
   * Where both log-variances start: the initial bias of Enc_sigma's last LayerNorm
   * (log sigma^2) and of the omega MLP's last layer (log omega^2). Decision: 0, the
   * reference code's zero bias, gives sigma and omega near 1 at the start, as large as
   * the means they perturb; a negative value (e.g. -6) starts both posteriors nearly
   * deterministic and lets the KL terms widen them. Range -8 to 0.
   */
  logVarInit: number;
  /**
   * Dropout on the attention probabilities of the three Transformers. Paper: silent;
   * default 0. The authors' run scripts: 0.3.
   */
  attentionDropout: number;
  // ---- The authors' code's MIE-VAE (`SIGMA_PRESETS.authors`; docs/sigma-notes.md).
  /**
   * What MIE-VAE reads as item vectors v_i: `raw` item embeddings (paper) or `normed`,
   * `dropout(LayerNorm(item))` with the Transformer input's LayerNorm and no position (the
   * authors' code). Raw embeddings start at norm ~0.2, far below the interest noise (norm
   * ~11 at omega = 1), so the interest decoder first sees noise; normed ones have norm ~11.
   */
  mieInput: "raw" | "normed";
  /**
   * Pass each interest mean through a LayerNorm of its own and dropout, after its
   * log-variance is computed from the mean before it (the authors' code's order).
   * Paper: false.
   */
  interestLayerNorm: boolean;
  /**
   * What MIE-VAE reconstructs the next item from: `sample`, the interest decoder applied
   * to a sampled interest (paper, Eq. 9), or `mean`, the interest mean itself (the
   * authors' code, where the decoder's output is never used).
   */
  mieRecon: "sample" | "mean";
  /** KL_MIE over the k interests: `sum` (paper, Eq. 7) or `mean` (the authors' code). */
  mieKlReduce: "sum" | "mean";
  /**
   * Multiply MIE-VAE's ELBO and the orthogonality loss by `max(1, E0 - (epoch - 1))`, E0
   * this value: x E0 at epoch 1, falling to x1 from epoch E0 on (the authors' trainer:
   * E0 = 200 with beta1 = 0.001). 0: off (paper).
   */
  mieBoostEpochs: number;
  /**
   * First epoch (1-based) whose interest means include the hard (GRU) interests; before
   * it they are the soft interests alone. The authors' code: 32 (its 0-based `epoch >
   * 30`). 0: from the start (paper). Ranking and `interestsOf` always use both.
   */
  hardInterestsFrom: number;
  /**
   * The latent that SGM-VAE ranks at: `mu` (paper) or `mu+sigma` (the authors'
   * ContrastVAE base, whose evaluation-time "sample" is mu + std).
   */
  scoreAt: "mu" | "mu+sigma";
  /**
   * A bound B on each interest's log-variance: `log omega^2 = B tanh(raw / B)`, within
   * (-B, B), the identity to within 1% for |raw| < B / 6, and with a gradient everywhere.
   * 0: unbounded (paper and authors' code). Why: MIE reads interest means that are sums
   * of item vectors, so with `mieInput: "normed"` (norm ~sqrt(d) each) a long history
   * gives the omega MLP a large input; on Beauty its output reached ~40 in epoch 1, and
   * the e^40 in KL_MIE's gradient left Adam second moments of ~1e23 on the input
   * LayerNorm, the categories and ~2,200 item rows, freezing them (docs/results.md).
   */
  interestLogVarBound: number;
}

/** The authors' code's MIE-VAE settings: the `authors` preset (documented there). */
const AUTHORS: Partial<Omit<SigmaConfig, "numItems">> = {
  mieInput: "normed",
  interestLayerNorm: true,
  mieRecon: "mean",
  interestTemperature: 0.1,
  mieKlReduce: "mean",
  mieKlWeight: 0.002,
  mieKlWarmup: 4000,
  beta1: 0.001,
  beta2: 1e-5,
  mieBoostEpochs: 200,
  hardInterestsFrom: 32,
  attentionDropout: 0.3,
  scoreAt: "mu+sigma",
};

/**
 * Named bundles of config values (`deno task train --model sigma --preset NAME`; flags
 * given beside it win), over {@linkcode SIGMA_DEFAULTS} (the paper's text).
 *
 * `authors-bounded` is what `deno task train --model sigma` trains when no preset is named
 * ({@linkcode SIGMA_DEFAULT_PRESET}): `authors` with the interests' log-variance bounded at
 * 10. It is the mode that beats SASRec (Office and Beauty, 3 seeds each; docs/results.md);
 * unbounded, `authors` froze a third of the model on Beauty in its first epoch.
 *
 * `paper`: nothing over the defaults, the paper's text (ties SASRec here).
 *
 * `authors`: MIE-VAE as the authors' released code trains it (read
 * at libeibei95/SIGMA 6396a9c; `docs/sigma-notes.md` lists each difference and what the
 * code leaves out), with its Office run script's values:
 * - MIE reads `dropout(LayerNorm(item))`, and each interest mean gets a LayerNorm and
 *   dropout; the next item is scored from the mean, at temperature 0.1;
 * - KL_MIE is averaged over the interests, weighted `0.01 * min(0.2, step / 20000)`:
 *   gamma 0.002 reached after 4,000 steps;
 * - MIE's loss and L_orth are weighted `max(1, 200 - epoch) * 0.001` (beta1 0.001; the
 *   code's 0.01 on L_orth inside the same factor gives beta2 1e-5);
 * - the GRU (hard) interests join from epoch 32; attention dropout 0.3;
 * - ranking at mu + sigma.
 */
export const SIGMA_PRESETS: Record<string, Partial<Omit<SigmaConfig, "numItems">>> = {
  "authors-bounded": { ...AUTHORS, interestLogVarBound: 10 },
  paper: {},
  authors: AUTHORS,
};

/** The preset `deno task train --model sigma` applies when none is named. */
export const SIGMA_DEFAULT_PRESET = "authors-bounded";

/**
 * Defaults for every {@linkcode SigmaConfig} field except `numItems`: the paper's text, what
 * `new Sigma({ numItems })` builds. The command line trains {@linkcode SIGMA_DEFAULT_PRESET}
 * over them unless told `--preset paper`; in code, spread `SIGMA_PRESETS["authors-bounded"]`
 * into the config for the same model.
 */
export const SIGMA_DEFAULTS: Omit<SigmaConfig, "numItems"> = {
  ...SEQUENCE_ENCODER_DEFAULTS,
  layers: 1,
  interests: 4,
  categoryTemperature: 0.1,
  gumbelTemperature: 1,
  gruLayers: 2,
  lambda: 1e-4,
  beta1: 0.01,
  beta2: 0.01,
  mieKlWeight: 1,
  mieKlWarmup: 0,
  priorGradient: true,
  interestNorm: false,
  prior: "mixture",
  lambdaUni: 1,
  orthogonality: true,
  ranking: "sgm",
  loss: "softmax",
  negatives: 100,
  reconTemperature: 1,
  interestTemperature: 1,
  logVarInit: 0,
  attentionDropout: 0,
  mieInput: "raw",
  interestLayerNorm: false,
  mieRecon: "sample",
  mieKlReduce: "sum",
  mieBoostEpochs: 0,
  hardInterestsFrom: 0,
  scoreAt: "mu",
  interestLogVarBound: 0,
};

/** One line per {@linkcode SigmaConfig} field, for `--help`. */
export const SIGMA_HELP: Record<keyof typeof SIGMA_DEFAULTS, string> = {
  ...SEQUENCE_ENCODER_HELP,
  layers: "blocks per Transformer: Enc_mu, Enc_sigma, decoder (reference code 1; 1-3)",
  inner: "feed-forward width (as SASRec: 256)",
  interests: "number of interests k (paper 4 Amazon, 8 MovieLens; 2-16)",
  categoryTemperature: "temperature tau of item-to-category softmax (authors' code 0.1)",
  gumbelTemperature: "Gumbel-softmax temperature of the hard assignment (1)",
  gruLayers: "GRU layers of the hard interests (authors' code 2)",
  lambda: "weight of the mixture-prior KL (paper 1e-4)",
  beta1: "weight of MIE-VAE's ELBO (paper 0.01)",
  beta2: "weight of the orthogonality loss (paper 0.01)",
  mieKlWeight: "weight gamma of KL_MIE in MIE-VAE's ELBO (paper 1; 0-1, beta-VAE below 1)",
  mieKlWarmup: "Adam steps over which KL_MIE's weight rises from 0 to gamma (paper 0: none)",
  priorGradient: "true | false: SGM's KL also trains the mixture prior (m, omega, alpha)",
  interestNorm: "true | false: standardise each interest mean over d (not in the paper; false)",
  prior: "mixture (SIGMA) | standard (SIGMA_uni, KL weight --lambda-uni)",
  lambdaUni: "KL weight with --prior standard (paper Table 3: 1, 1e-4)",
  orthogonality: "true | false: use the orthogonality loss (Table 5 ablation: false)",
  ranking: "sgm (paper) | mie: rank by MIE-VAE's max-over-interests score (Table 4)",
  loss: "softmax (full, paper) | bce (1 negative) | sampled (--negatives n)",
  negatives: "negatives per position for --loss sampled",
  reconTemperature: "temperature tau of SGM-VAE's softmax (Eq. 13)",
  interestTemperature: "temperature epsilon of MIE-VAE's softmax (Eq. 9)",
  logVarInit: "initial bias of both log-variance outputs, log sigma^2 and log omega^2 (0; -8-0)",
  attentionDropout: "dropout on attention probabilities (0; authors' run scripts 0.3)",
  mieInput: "raw (paper) | normed: MIE reads dropout(LayerNorm(item)) (authors' code)",
  interestLayerNorm: "true | false: LayerNorm + dropout on each interest mean (authors' code)",
  mieRecon: "sample (paper) | mean: MIE reconstructs from the interest mean (authors' code)",
  mieKlReduce: "sum (paper) | mean: KL_MIE over the k interests (authors' code: mean)",
  mieBoostEpochs: "E0: MIE and L_orth weights x max(1, E0 - epoch + 1); 0 = off (authors' 200)",
  hardInterestsFrom: "first epoch with the GRU (hard) interests; 0 = always (authors' 32)",
  scoreAt: "mu (paper) | mu+sigma: the latent ranked at (authors' ContrastVAE base)",
  interestLogVarBound: "bound B on log omega^2: B tanh(raw / B); 0 = unbounded (paper, authors)",
};

/** Everything MIE-VAE derives from a history, at every position. */
interface Interests {
  /** Item-to-category probabilities a `[B, L, k]` (0 at padding). */
  assignment: tf.Tensor3D;
  /** Interest intensities alpha `[B, L, k]`: rows sum to 1 at real positions. */
  intensity: tf.Tensor3D;
  /** Interest means m = (soft + hard) / 2, `[B, L, k, d]`. */
  mean: tf.Tensor4D;
}

/** SIGMA behind the {@linkcode SequentialModel} interface. */
export class Sigma implements SequentialModel<SigmaConfig> {
  /** Always `"sigma"`. */
  readonly name = "sigma";
  /** The full configuration. */
  readonly config: SigmaConfig;
  /** Trainable parameters. */
  readonly params: ParamStore;
  readonly #block: TransformerSettings;

  /**
   * Creates SIGMA with fresh, seeded parameters.
   *
   * @throws {RangeError} A config field out of its domain (the field is named).
   */
  constructor(config: Partial<SigmaConfig> & { numItems: number }) {
    this.config = { ...SIGMA_DEFAULTS, ...upgradeSigmaConfig(config) };
    const c = this.config;
    validateSigmaConfig(c);
    this.#block = {
      hidden: c.hidden,
      heads: c.heads,
      inner: c.inner,
      dropout: c.dropout,
      layers: c.layers,
      layerNormEps: c.layerNormEps,
      attentionDropout: c.attentionDropout,
    };
    const d = c.hidden;
    const p = new ParamStore(c.seed, c.initStd);
    p.create("item", [c.numItems + 1, d]); // row 0 = padding
    p.create("position", [c.maxLength, d]);
    createLayerNorm(p, "embed.ln", d);
    // MIE-VAE
    p.create("category", [c.interests, d]); // G, rows L2-normalised before use
    createGru(p, "gru", d, c.gruLayers);
    createLinear(p, "omega.l1", 2 * d, d); // log omega^2 = MLP([g || m])
    createLinear(p, "omega.l2", d, d, c.logVarInit);
    createLinear(p, "interest.l1", d, d); // u = MLP(x)
    createLinear(p, "interest.l2", d, d);
    // SGM-VAE
    createTransformer(p, "enc_mu", this.#block);
    createTransformer(p, "enc_sigma", this.#block, c.logVarInit);
    createTransformer(p, "dec", this.#block);
    // Created last, so that every other parameter draws the same initial values either way.
    if (c.interestLayerNorm) createLayerNorm(p, "interest.ln", d);
    this.params = p;
  }

  // ---------------------------------------------------------------- shared embedding

  /**
   * Raw item embeddings `[B, L, d]` with padding rows zeroed (MIE-VAE's v_i), and the
   * Transformer input: LayerNorm(item + position), with dropout when training. Positions
   * count from the right, so a row's result does not depend on how far it is padded.
   */
  #embed(inputs: Int32Array, batch: number, length: number, seeds: SeedSource) {
    const c = this.config;
    const ids = tf.tensor2d(inputs, [batch, length], "int32");
    // Built on the host: on tfjs-backend-webgpu 4.22 a transpose of cast(notEqual(ids, 0))
    // came back all zeros.
    const realMask = tf.tensor3d(
      inputs.map((id) => id === 0 ? 0 : 1),
      [batch, length, 1],
      "float32",
    ); // [B, L, 1]
    const items = itemRows(this.params, "item", ids); // [B, L, d]
    const posIds = tf.range(c.maxLength - length, c.maxLength, 1, "int32"); // [L]
    const pos = embeddingLookup(this.params.get("position") as tf.Tensor2D, posIds); // [L, d]
    const x = layerNorm(this.params, "embed.ln", tf.add(items, pos), c.layerNormEps);
    const input = dropout(x, c.dropout, seeds ? seeds() : null) as tf.Tensor3D; // [B, L, d]
    // MIE-VAE's v_i: the raw embeddings, or (authors' code) the same LayerNorm without
    // positions, and dropout. Padding stays 0 either way.
    const mieItems = c.mieInput === "raw" ? items : dropout(
      layerNorm(this.params, "embed.ln", items, c.layerNormEps),
      c.dropout,
      seeds ? seeds() : null,
    );
    return {
      realMask: realMask as tf.Tensor3D,
      items: tf.mul(mieItems, realMask) as tf.Tensor3D, // [B, L, d]
      input,
      mask: causalPaddingMask(inputs, batch, length), // [B, 1, L, L]
    };
  }

  // ---------------------------------------------------------------- MIE-VAE

  /** The k category embeddings, L2-normalised: `[k, d]`. */
  #categories(): tf.Tensor2D {
    return l2Normalise(this.params.get("category")) as tf.Tensor2D;
  }

  /**
   * Soft and hard interests, their means and intensities at every position. When
   * training (`seeds` given) each item's hard category is a straight-through
   * Gumbel-softmax sample over `log a`; at inference it is the argmax of `a`. Without
   * `withHard` the means are the soft interests alone (`hardInterestsFrom`).
   */
  #interests(
    items: tf.Tensor3D,
    realMask: tf.Tensor3D,
    seeds: SeedSource,
    withHard = true,
  ): Interests {
    const c = this.config;
    const [batch, length, d] = items.shape;
    const k = c.interests;
    const flat = tf.reshape(l2Normalise(items), [batch * length, d]) as tf.Tensor2D; // [B*L, d]
    const gT = tf.transpose(this.#categories()) as tf.Tensor2D; // [d, k]
    const logits = tf.reshape(
      tf.div(matmul(flat, gT), c.categoryTemperature),
      [batch, length, k],
    ); // [B, L, k]
    const assignment = tf.mul(tf.softmax(logits), realMask) as tf.Tensor3D; // a, [B, L, k]
    // Soft interests h_t^j = sum_{i<=t} a_i^j v_i.
    const weighted = tf.mul(tf.expandDims(assignment, 3), tf.expandDims(items, 2)); // [B, L, k, d]
    const soft = cumulativeSum(weighted, 1); // [B, L, k, d]
    // Intensities alpha_t^j = mean_{i<=t} a_i^j (0 before the first real item).
    const seen = tf.maximum(cumulativeSum(realMask, 1), 1); // [B, L, 1]
    const intensity = tf.div(cumulativeSum(assignment, 1), seen) as tf.Tensor3D; // [B, L, k]
    // Eq. 5: m = (soft + hard) / 2; the soft interests alone before `hardInterestsFrom`.
    const raw = withHard
      ? tf.div(tf.add(soft, this.#hardInterests(logits as tf.Tensor3D, items, realMask, seeds)), 2)
      : soft; // [B, L, k, d]
    const mean = (c.interestNorm ? standardise(raw) : raw) as tf.Tensor4D;
    return { assignment, intensity, mean };
  }

  /** Hard interests `[B, L, k, d]`: one category per item, then a gated GRU per category. */
  #hardInterests(
    logits: tf.Tensor3D,
    items: tf.Tensor3D,
    realMask: tf.Tensor3D,
    seeds: SeedSource,
  ): tf.Tensor4D {
    const c = this.config;
    const logA = tf.logSoftmax(logits); // log a, stable
    const hardOneHot = seeds
      ? gumbelSoftmax(logA, c.gumbelTemperature, seeds(), true)
      : straightThroughOneHot(logA);
    const gates = tf.mul(hardOneHot, realMask) as tf.Tensor3D; // [B, L, k]
    return gatedCategoryGru(this.params, "gru", items, gates, c.gruLayers) as tf.Tensor4D;
  }

  /** log omega^2 = MLP([g_j || m^j]) (Eq. 6), bounded if `interestLogVarBound`, for means `[P, k, d]`. */
  #interestLogVar(mean: tf.Tensor3D): tf.Tensor3D {
    const [positions, k, d] = mean.shape;
    // [g || m] W1 = g W1[:d] + m W1[d:]: the category half is computed once for all
    // positions and broadcast, instead of tiling G to [P, k, d] and concatenating.
    const w1 = this.params.get("omega.l1.w") as tf.Tensor2D; // [2d, d]
    const fromCategory = matmul(this.#categories(), tf.slice(w1, [0, 0], [d, -1]) as tf.Tensor2D); // [k, d]
    const fromMean = matmul(
      tf.reshape(mean, [positions * k, d]) as tf.Tensor2D,
      tf.slice(w1, [d, 0], [d, -1]) as tf.Tensor2D,
    ); // [P*k, d]
    const pre = tf.add(
      tf.add(tf.reshape(fromMean, [positions, k, d]), fromCategory),
      this.params.get("omega.l1.b"),
    ); // [P, k, d]
    const raw = linear(this.params, "omega.l2", gelu(pre)) as tf.Tensor3D; // [P, k, d]
    const bound = this.config.interestLogVarBound;
    return bound > 0 ? tf.mul(tf.tanh(tf.div(raw, bound)), bound) as tf.Tensor3D : raw;
  }

  /** Interest means as MIE-VAE uses them at inference: after its LayerNorm, if any. */
  #shownMean<T extends tf.Tensor>(mean: T): T {
    return (this.config.interestLayerNorm ? this.#interestLayerNorm(mean) : mean) as T;
  }

  /** The authors' LayerNorm of interest means `[..., d]` (`interestLayerNorm`). */
  #interestLayerNorm(mean: tf.Tensor): tf.Tensor {
    return layerNorm(this.params, "interest.ln", mean, this.config.layerNormEps);
  }

  /** u^j = MLP(x^j): interest vectors in item space, `[P, k, d]`. */
  #interestDecoder(x: tf.Tensor3D): tf.Tensor3D {
    const h = linear(this.params, "interest.l1", x, { activation: "gelu" });
    return linear(this.params, "interest.l2", h) as tf.Tensor3D;
  }

  // ---------------------------------------------------------------- SGM-VAE

  /** Posterior mean and log-variance of z, `[B, L, d]` each. */
  #posterior(input: tf.Tensor3D, mask: tf.Tensor4D, seeds: SeedSource) {
    return {
      mu: transformer(this.params, "enc_mu", input, mask, this.#block, seeds),
      logVar: transformer(this.params, "enc_sigma", input, mask, this.#block, seeds),
    };
  }

  /** Decoder output u_hat `[B, L, d]` from latent codes z `[B, L, d]`. */
  #decode(z: tf.Tensor3D, mask: tf.Tensor4D, seeds: SeedSource): tf.Tensor3D {
    return transformer(this.params, "dec", z, mask, this.#block, seeds);
  }

  // ---------------------------------------------------------------- loss

  /**
   * The joint loss of a batch (§3.4), averaged over positions with a target, and its
   * parts: `recon` (SGM reconstruction), `kl` (SGM KL, mixture or standard prior),
   * `recon_mie`, `kl_mie`, `orth` (each a mean over positions, before weighting).
   */
  loss(batch: TrainBatch, seeds: () => number, step = Infinity, epoch = Infinity): {
    loss: Scalar;
    parts: Record<string, Scalar>;
  } {
    const c = this.config;
    const { batch: b, length, inputs } = batch;
    const d = c.hidden;
    const k = c.interests;
    const { rows, targets } = targetPositions(batch);
    const positions = rows.length;
    const rowIds = tf.tensor1d(rows, "int32");
    // Rows of `[B, L, ...]` at the P positions with a target: [P, ...].
    const atTargets = (t: tf.Tensor, tail: number[]) =>
      tf.reshape(
        embeddingLookup(tf.reshape(t, [b * length, -1]) as tf.Tensor2D, rowIds),
        [positions, ...tail],
      );
    const itemTable = this.params.get("item") as tf.Tensor2D;
    const e = this.#embed(inputs, b, length, seeds);

    // SGM-VAE: z = mu + sigma * eps, decoded at every position (the decoder is causal).
    const { mu, logVar } = this.#posterior(e.input, e.mask, seeds);
    const z = reparameterise(mu, logVar, seeds()) as tf.Tensor3D; // [B, L, d]
    const decoded = atTargets(this.#decode(z, e.mask, seeds), [1, d]) as tf.Tensor3D; // [P, 1, d]
    const reconSgm = itemLoss(decoded, itemTable, targets, {
      kind: c.loss,
      negatives: c.negatives,
      temperature: c.reconTemperature,
      seed: seeds(),
    }); // [P]

    // MIE-VAE: interests at the P positions, sampled, decoded with max over interests.
    const withHard = epoch >= c.hardInterestsFrom;
    const interests = this.#interests(e.items, e.realMask, seeds, withHard);
    const rawMean = atTargets(interests.mean, [k, d]) as tf.Tensor3D; // [P, k, d]
    const intensity = atTargets(interests.intensity, [k]) as tf.Tensor2D; // [P, k]
    const interestLogVar = this.#interestLogVar(rawMean); // [P, k, d]
    const mean = c.interestLayerNorm
      ? dropout(this.#interestLayerNorm(rawMean), c.dropout, seeds()) as tf.Tensor3D
      : rawMean; // [P, k, d]
    const reconFrom = c.mieRecon === "mean"
      ? mean // the authors' code: the mean itself, no decoder
      : this.#interestDecoder(reparameterise(mean, interestLogVar, seeds()) as tf.Tensor3D);
    const reconMie = itemLoss(reconFrom, itemTable, targets, {
      kind: c.loss,
      negatives: c.negatives,
      temperature: c.interestTemperature,
      seed: seeds(),
    }); // [P]
    const klPerInterest = standardNormalKl(mean, interestLogVar); // [P, k]
    const klMie = c.mieKlReduce === "sum" ? tf.sum(klPerInterest, 1) : tf.mean(klPerInterest, 1); // [P], Eq. 7

    // KL of SGM-VAE at the same positions.
    const zP = atTargets(z, [d]);
    const muP = atTargets(mu, [d]);
    const logVarP = atTargets(logVar, [d]);
    const prior = c.priorGradient ? (t: tf.Tensor) => t : stopGradient;
    const klSgm = c.prior === "mixture"
      // alpha rows sum to 1 by construction at real positions: no host check needed.
      ? mixturePriorKl(zP, muP, logVarP, prior(intensity), prior(mean), prior(interestLogVar), {
        checkWeights: false,
      })
      : standardNormalKl(muP, logVarP); // [P]
    const klWeight = c.prior === "mixture" ? c.lambda : c.lambdaUni;

    // gamma, ramped from 0 over the warm-up steps.
    const klMieWeight = c.mieKlWeight * Math.min(1, c.mieKlWarmup > 0 ? step / c.mieKlWarmup : 1);
    // The authors' boost of everything MIE: x max(1, E0 - epoch + 1), 1 once it has ended.
    const boost = c.mieBoostEpochs > 0 ? Math.max(1, c.mieBoostEpochs - (epoch - 1)) : 1;
    const orth = orthogonalityLoss(this.params.get("category") as tf.Tensor2D);
    const perPosition = tf.add(
      tf.add(reconSgm, tf.mul(klSgm, klWeight)),
      tf.mul(
        tf.add(reconMie, klMieWeight === 1 ? klMie : tf.mul(klMie, klMieWeight)),
        c.beta1 * boost,
      ),
    ); // [P]
    let loss = tf.mean(perPosition) as tf.Scalar;
    if (c.orthogonality) loss = tf.add(loss, tf.mul(orth, c.beta2 * boost)) as tf.Scalar;
    return {
      loss,
      parts: {
        recon: tf.mean(reconSgm) as tf.Scalar,
        kl: tf.mean(klSgm) as tf.Scalar,
        recon_mie: tf.mean(reconMie) as tf.Scalar,
        kl_mie: tf.mean(klMie) as tf.Scalar,
        orth,
      },
    };
  }

  /**
   * The usual cause of a frozen Adam state here is MIE's unbounded log-variance, whose exp
   * in KL_MIE can reach 1e16 (measured in `docs/results.md`); a bound keeps it in range.
   */
  frozenOptimizerHint(): string | undefined {
    if (this.config.interestLogVarBound > 0) return undefined;
    return "an unbounded interest log-variance is the usual cause here: " +
      "interestLogVarBound (--interest-log-var-bound 10) bounds it";
  }

  // ---------------------------------------------------------------- scores

  /**
   * Scores `[B, N + 1]` of every item after each history, at the newest position:
   * the decoder at z = mu (`ranking: "sgm"`), or MIE-VAE's max over interest vectors at
   * the interest means (`ranking: "mie"`).
   */
  scores(batch: EvalBatch): Tensor2D {
    // [B, q, d] queries; with q interests an item's score is the max over them.
    return queryScores(this.rankingQueries(batch), this.params.transposed("item") as Tensor2D);
  }

  /**
   * What {@linkcode Sigma.scores} ranks by, `[B, q, d]`: the decoder's output at the newest
   * position (q = 1), or with `ranking: "mie"` the k interests' vectors (q = k, an item's
   * score the max over them, Eq. 9).
   */
  rankingQueries(batch: EvalBatch): Tensor3D {
    const c = this.config;
    const { batch: b, length, inputs } = batch;
    const d = c.hidden;
    const e = this.#embed(inputs, b, length, null);
    const last = (t: tf.Tensor, tail: number[]) =>
      tf.reshape(tf.slice(t, [0, length - 1], [-1, 1]), [b, ...tail]);
    if (c.ranking === "mie") {
      const interests = this.#interests(e.items, e.realMask, null);
      const mean = this.#shownMean(last(interests.mean, [c.interests, d]) as tf.Tensor3D);
      return (c.mieRecon === "mean" ? mean : this.#interestDecoder(mean)) as Tensor3D; // [B, k, d]
    }
    // Inference uses z = mu (Enc_sigma is not run), or mu + sigma as the authors' code.
    let z = transformer(this.params, "enc_mu", e.input, e.mask, this.#block, null); // [B, L, d]
    if (c.scoreAt === "mu+sigma") {
      const logVar = transformer(this.params, "enc_sigma", e.input, e.mask, this.#block, null);
      z = tf.add(z, tf.exp(tf.mul(logVar, 0.5))) as tf.Tensor3D;
    }
    // Only the newest position is ranked: the decoder's last block computes that one.
    return transformer(this.params, "dec", z, e.mask, this.#block, null, true) as Tensor3D; // [B, 1, d]
  }

  /** The item embedding table `[N + 1, d]` (not a copy), for MMR-diversified lists. */
  itemVectors(): Tensor2D {
    return this.params.get("item") as Tensor2D;
  }

  /**
   * SIGMA's interests after each history, for interest-aware diversified lists: the
   * intensities alpha `[B, k]` at the newest position (how much of the history each
   * interest holds; uniform for a history with no known item) and
   * {@linkcode Sigma.itemCategories} `[N + 1, k]`. The soft interests alone give the
   * intensities, so the GRU is not run.
   */
  interestsForRanking(batch: EvalBatch): { profile: Tensor2D; items: Tensor2D } {
    return tf.tidy(() => {
      const { batch: b, length, inputs } = batch;
      const e = this.#embed(inputs, b, length, null);
      const { intensity } = this.#interests(e.items, e.realMask, null, false); // [B, L, k]
      const k = this.config.interests;
      const newest = tf.reshape(tf.slice(intensity, [0, length - 1, 0], [-1, 1, -1]), [b, k]);
      // A history with no known item has no intensities: every interest weighs the same.
      const known = tf.greater(tf.sum(newest, 1, true), 0); // [B, 1]
      const profile = tf.where(known, newest, tf.fill([b, k], 1 / k)) as Tensor2D; // [B, k]
      return { profile, items: this.itemCategories() };
    });
  }

  /**
   * MIE-VAE's view of left-padded histories at inference (hard interests by argmax):
   * item-to-category probabilities `[B, L, k]`, intensities `[B, L, k]` (rows sum to 1 at
   * real positions) and interest means `[B, L, k, d]`. For inspection and tests; the
   * caller disposes the tensors.
   */
  interestsOf(
    inputs: Int32Array,
    batch: number,
    length: number,
  ): { assignment: Tensor; intensity: Tensor; mean: Tensor } {
    return tf.tidy(() => {
      const e = this.#embed(inputs, batch, length, null);
      const interests = this.#interests(e.items, e.realMask, null);
      return { ...interests, mean: this.#shownMean(interests.mean) };
    });
  }

  /**
   * Item-to-category probabilities `[N + 1, k]` of every item (row 0, padding, included),
   * as MIE-VAE assigns them: `softmax_j(g_j . normalize(v_i) / tau)`.
   */
  itemCategories(): Tensor2D {
    return tf.tidy(() => {
      const v = l2Normalise(this.params.get("item")) as tf.Tensor2D; // [N+1, d]
      const gT = tf.transpose(this.#categories()) as tf.Tensor2D; // [d, k]
      return tf.softmax(tf.div(matmul(v, gT), this.config.categoryTemperature)) as tf.Tensor2D;
    });
  }
}

/** `x` standardised over its last axis: zero mean, unit variance (0 stays 0). */
function standardise(x: tf.Tensor): tf.Tensor {
  const centred = tf.sub(x, tf.mean(x, -1, true));
  return tf.mul(centred, tf.rsqrt(tf.add(tf.mean(tf.square(centred), -1, true), 1e-6)));
}

/**
 * A SIGMA config with fields of earlier versions renamed: `categories` (the number of
 * interests, before it was named `interests`). Other fields pass through unchanged.
 */
export function upgradeSigmaConfig<T extends Record<string, unknown>>(config: T): T {
  if (config.categories === undefined || config.interests !== undefined) return config;
  const { categories, ...rest } = config;
  return { ...rest, interests: categories } as unknown as T;
}

/** Checks every field of a full SIGMA config, naming the first bad one. */
export function validateSigmaConfig(c: SigmaConfig): void {
  validateSequenceEncoderConfig(c);
  const positiveInts = ["interests", "gruLayers", "negatives"] as const;
  if (!Number.isInteger(c.mieKlWarmup) || c.mieKlWarmup < 0) {
    throw new RangeError(`mieKlWarmup must be an integer >= 0, got ${c.mieKlWarmup}`);
  }
  for (const f of positiveInts) {
    if (!Number.isInteger(c[f]) || c[f] < 1) {
      throw new RangeError(`${f} must be a positive integer, got ${c[f]}`);
    }
  }
  const positive = [
    "categoryTemperature",
    "gumbelTemperature",
    "reconTemperature",
    "interestTemperature",
  ] as const;
  for (const f of positive) {
    if (!(c[f] > 0)) throw new RangeError(`${f} must be positive, got ${c[f]}`);
  }
  if (!(c.attentionDropout >= 0 && c.attentionDropout < 1)) {
    throw new RangeError(`attentionDropout must be in [0, 1), got ${c.attentionDropout}`);
  }
  if (!(c.interestLogVarBound >= 0) || !Number.isFinite(c.interestLogVarBound)) {
    throw new RangeError(
      `interestLogVarBound must be a finite number >= 0, got ${c.interestLogVarBound}`,
    );
  }
  if (!Number.isFinite(c.logVarInit)) {
    throw new RangeError(`logVarInit must be a finite number, got ${c.logVarInit}`);
  }
  for (const f of ["lambda", "beta1", "beta2", "lambdaUni", "mieKlWeight"] as const) {
    if (!(c[f] >= 0) || !Number.isFinite(c[f])) {
      throw new RangeError(`${f} must be a finite number >= 0, got ${c[f]}`);
    }
  }
  for (const f of ["mieBoostEpochs", "hardInterestsFrom"] as const) {
    if (!Number.isInteger(c[f]) || c[f] < 0) {
      throw new RangeError(`${f} must be an integer >= 0, got ${c[f]}`);
    }
  }
  const choices: [keyof SigmaConfig & string, readonly unknown[]][] = [
    ["mieInput", ["raw", "normed"]],
    ["interestLayerNorm", [true, false]],
    ["mieRecon", ["sample", "mean"]],
    ["mieKlReduce", ["sum", "mean"]],
    ["scoreAt", ["mu", "mu+sigma"]],
    ["prior", ["mixture", "standard"]],
    ["ranking", ["sgm", "mie"]],
    ["loss", ITEM_LOSS_KINDS],
    ["orthogonality", [true, false]],
    ["priorGradient", [true, false]],
    ["interestNorm", [true, false]],
  ];
  checkChoices(c, choices);
}
