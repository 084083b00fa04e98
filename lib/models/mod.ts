/**
 * The models, by name, behind one interface.
 *
 * @module
 */
import type { SequentialModel } from "./_model.ts";
import type { TrainExamples } from "../data/batches.ts";
import {
  DiffuRecSys,
  DIFFURECSYS_DEFAULTS,
  DIFFURECSYS_HELP,
  type DiffuRecSysConfig,
  validateDiffuRecSysConfig,
} from "./diffurecsys.ts";
import {
  DiffuRec,
  DIFFUREC_DEFAULTS,
  DIFFUREC_HELP,
  type DiffuRecConfig,
  validateDiffuRecConfig,
} from "./diffurec.ts";
import {
  SasRec,
  SASREC_DEFAULTS,
  SASREC_HELP,
  type SasRecConfig,
  validateSasRecConfig,
} from "./sasrec.ts";
import {
  Sigma,
  SIGMA_DEFAULT_PRESET,
  SIGMA_DEFAULTS,
  SIGMA_HELP,
  SIGMA_PRESETS,
  type SigmaConfig,
  upgradeSigmaConfig,
  validateSigmaConfig,
} from "./sigma.ts";

export type { SequentialModel } from "./_model.ts";
export {
  SEQUENCE_ENCODER_DEFAULTS,
  SEQUENCE_ENCODER_HELP,
  type SequenceEncoderConfig,
  stepSeeds,
} from "./_model.ts";
export {
  DiffuRecSys,
  DIFFURECSYS_DEFAULTS,
  DIFFURECSYS_HELP,
  type DiffuRecSysConfig,
  validateDiffuRecSysConfig,
} from "./diffurecsys.ts";
export {
  DiffuRec,
  DIFFUREC_DEFAULTS,
  DIFFUREC_HELP,
  type DiffuRecConfig,
  validateDiffuRecConfig,
} from "./diffurec.ts";
export {
  SasRec,
  SASREC_DEFAULTS,
  SASREC_HELP,
  type SasRecConfig,
  validateSasRecConfig,
} from "./sasrec.ts";
export {
  Sigma,
  SIGMA_DEFAULT_PRESET,
  SIGMA_DEFAULTS,
  SIGMA_HELP,
  SIGMA_PRESETS,
  type SigmaConfig,
  validateSigmaConfig,
} from "./sigma.ts";

/** How to build a model by name: its defaults, their help text, and a constructor. */
export interface ModelEntry {
  /** Defaults of every config field except `numItems`. */
  defaults: Record<string, number | string | boolean>;
  /**
   * Config fields that change how a trained model ranks but none of its parameters, so
   * evaluation may override them (ablations without retraining). Default: none.
   */
  inferenceFields?: readonly string[];
  /** One line of help per config field. */
  help: Record<string, string>;
  /**
   * Named bundles of config values (`--preset NAME`), e.g. SIGMA's `authors`: the values
   * of the authors' released code. Default: none.
   */
  presets?: Record<string, Record<string, number | string | boolean>>;
  /**
   * The preset `deno task train` applies when `--preset` is not given (SIGMA's
   * `authors-bounded`, the mode that wins); `--preset paper` then gives the defaults as they
   * are. Default: none, the defaults as they are.
   */
  defaultPreset?: string;
  /**
   * Training settings of the model's own code that differ from the trainer's defaults;
   * `deno task train` applies them, and its flags override them. Default: none.
   */
  trainDefaults?: ModelTrainDefaults;
  /**
   * Checks a full or partial config (defaults fill the rest) without building the model.
   *
   * @throws {RangeError} A field out of its domain, naming the field and the value.
   */
  validate(config: Record<string, unknown> & { numItems: number }): void;
  /** Builds the model from a full or partial config. */
  create(config: Record<string, unknown> & { numItems: number }): SequentialModel & {
    config: { maxLength: number; numItems: number };
  };
}

/** The training settings a model may set for itself (fields of the trainer's options). */
export interface ModelTrainDefaults {
  /** What a training row is: `"prefixes"` for one row per target position. */
  examples?: TrainExamples;
  /** Rows per training batch. */
  batchSize?: number;
  /** StepLR: multiply the learning rate by 0.1 every this many epochs. */
  lrDecayEvery?: number;
  /** L2 penalty added to the gradients before Adam. */
  weightDecay?: number;
  /** Most epochs a run trains (its code's cap; patience may stop it earlier). */
  epochs?: number;
}

/** What a diffusion model's evaluation may change: its reverse chain and draws. */
const DIFFUSION_INFERENCE_FIELDS = ["reverseSteps", "sampling", "evalSeed", "lambda"] as const;

/** Every model the CLI and checkpoints know, by `--model` name; the first is the default. */
export const MODELS: Record<string, ModelEntry> = {
  sigma: {
    defaults: SIGMA_DEFAULTS as unknown as Record<string, number | string | boolean>,
    help: SIGMA_HELP,
    presets: SIGMA_PRESETS as Record<string, Record<string, number | string | boolean>>,
    defaultPreset: SIGMA_DEFAULT_PRESET,
    validate: (config) =>
      validateSigmaConfig({ ...SIGMA_DEFAULTS, ...upgradeSigmaConfig(config) } as SigmaConfig),
    create: (config) => new Sigma(config),
  },
  diffurec: {
    defaults: DIFFUREC_DEFAULTS as unknown as Record<string, number | string | boolean>,
    help: DIFFUREC_HELP,
    inferenceFields: DIFFUSION_INFERENCE_FIELDS,
    // DIFFUREC.md §1.2 and §4: 512 one-target examples a batch, StepLR x0.1 every 100 epochs,
    // at most 500 epochs.
    trainDefaults: { examples: "prefixes", batchSize: 512, lrDecayEvery: 100, epochs: 500 },
    validate: (config) =>
      validateDiffuRecConfig({ ...DIFFUREC_DEFAULTS, ...config } as DiffuRecConfig),
    create: (config) => new DiffuRec(config),
  },
  diffurecsys: {
    defaults: DIFFURECSYS_DEFAULTS as unknown as Record<string, number | string | boolean>,
    help: DIFFURECSYS_HELP,
    inferenceFields: DIFFUSION_INFERENCE_FIELDS,
    // DIFFUREC.md §4: as DiffuRec, with StepLR every 30 epochs, weight decay 1e-4 and at most
    // 41 epochs.
    trainDefaults: {
      examples: "prefixes",
      batchSize: 512,
      lrDecayEvery: 30,
      weightDecay: 1e-4,
      epochs: 41,
    },
    validate: (config) =>
      validateDiffuRecSysConfig({ ...DIFFURECSYS_DEFAULTS, ...config } as DiffuRecSysConfig),
    create: (config) => new DiffuRecSys(config),
  },
  sasrec: {
    defaults: SASREC_DEFAULTS as unknown as Record<string, number | string | boolean>,
    help: SASREC_HELP,
    validate: (config) => validateSasRecConfig({ ...SASREC_DEFAULTS, ...config } as SasRecConfig),
    create: (config) => new SasRec(config),
  },
};

/** The model called `name`; throws a `RangeError` listing the known names otherwise. */
export function modelEntry(name: string): ModelEntry {
  // Own keys only: "constructor" or "toString" must be unknown models, not Object's members.
  const entry = Object.hasOwn(MODELS, name) ? MODELS[name] : undefined;
  if (!entry) {
    throw new RangeError(
      `Unknown model "${name}": expected one of ${Object.keys(MODELS).join(", ")}`,
    );
  }
  return entry;
}

/**
 * The config values of the preset called `preset` of the model called `model` (`--preset
 * NAME`); none when `preset` is undefined, or is `paper` for a model without presets (every
 * model's defaults are its paper's or its code's, so `--preset paper` may be given to a
 * `reproduce` of several models).
 *
 * @throws {RangeError} An unknown model, or a preset the model does not have (the known
 * ones are listed).
 */
export function modelPreset(
  model: string,
  preset: string | undefined,
): Record<string, number | string | boolean> {
  if (preset === undefined) return {};
  const presets = modelEntry(model).presets ?? {};
  // Every model knows "paper": its defaults as they are (SIGMA names it among its presets).
  if (preset === "paper" && !Object.hasOwn(presets, preset)) return {};
  if (!Object.hasOwn(presets, preset)) {
    const known = Object.keys(presets);
    throw new RangeError(
      `--preset ${preset} is not a preset of model ${model}` +
        (known.length > 0 ? ` (known: ${known.join(", ")})` : " (it has none)"),
    );
  }
  return presets[preset];
}

/**
 * `config` with `overrides` of fields that change only how the model ranks (its entry's
 * `inferenceFields`: the diffusion models' `reverseSteps`, `sampling`, `evalSeed` and
 * `lambda`), checked: one trained model can then rank another way, e.g. DiffuRec with
 * `{ sampling: "one" }` (one Approximator call instead of its reverse chain).
 *
 * @example Usage
 * ```ts
 * import { withInferenceOverrides } from "./mod.ts";
 * const config = withInferenceOverrides("diffurec", { steps: 32 }, { reverseSteps: 4 });
 * // config.reverseSteps === 4; the parameters' fields are as they were
 * ```
 *
 * @param model The model's name (see {@linkcode MODELS}).
 * @param config The trained model's config.
 * @param overrides New values of inference fields; empty: `config` unchanged.
 * @returns A new config object.
 * @throws {RangeError} A field the model does not declare, with its value, a value out of
 * its domain (the field named), or a `reverseSteps` other than 0 (all) given for a model
 * that ranks with `sampling: "one"` (it would be ignored).
 */
export function withInferenceOverrides(
  model: string,
  config: Record<string, unknown>,
  overrides: Record<string, unknown>,
): Record<string, unknown> {
  const entry = modelEntry(model);
  const allowed = entry.inferenceFields ?? [];
  for (const [field, value] of Object.entries(overrides)) {
    if (!allowed.includes(field)) {
      throw new RangeError(
        `${field} (${JSON.stringify(value)}) is not an inference option of model ${model}` +
          ` (${allowed.length > 0 ? `it has ${allowed.join(", ")}` : "it has none"})`,
      );
    }
  }
  const merged = { ...config, ...overrides };
  // One Approximator call runs no chain: a number of chain steps asked for would be ignored.
  if (
    overrides.reverseSteps !== undefined && overrides.reverseSteps !== 0 &&
    merged.sampling === "one"
  ) {
    throw new RangeError(
      `reverseSteps (${JSON.stringify(overrides.reverseSteps)}) has no effect with sampling "one"`,
    );
  }
  if (Object.keys(overrides).length > 0) entry.validate({ ...merged, numItems: 1 });
  return merged;
}
