/**
 * `--model FILE|RUN_DIR|URL` for the commands that recommend: a model file, a URL to one,
 * or a run folder (its `model.safetensors`, or for runs made before that file existed,
 * its `checkpoint/`).
 *
 * @module
 */
import {
  Recommender,
  type RecommenderOptions,
  type ServableModel,
} from "../lib/inference/recommender.ts";
import { MODEL_FILE_NAME } from "../lib/inference/model_file.ts";
import { modelEntry, withInferenceOverrides } from "../lib/models/mod.ts";
import { type CheckpointMeta, readCheckpoint } from "../lib/train/checkpoint.ts";

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/**
 * The recommender `--model` names, on the active backend, and a description of where it
 * came from.
 *
 * @throws {Deno.errors.NotFound} Nothing at the path, or a folder with no model in it.
 * @throws {ModelFileError} The file fails its checks.
 */
export async function loadRecommender(
  source: string,
  options: RecommenderOptions = {},
): Promise<{ recommender: Recommender; from: string }> {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) {
    return { recommender: await Recommender.load(source, options), from: source };
  }
  const info = await statOrNull(source);
  if (info === null) throw new Deno.errors.NotFound(`--model: nothing at ${source}`);
  // Anything but a folder is read as a model file, which refuses devices and FIFOs by name.
  if (!info.isDirectory) {
    return { recommender: await Recommender.load(source, options), from: source };
  }
  const dir = source.replace(/\/+$/, "");
  const file = `${dir}/${MODEL_FILE_NAME}`;
  if (await statOrNull(file)) {
    return { recommender: await Recommender.load(file, options), from: file };
  }
  for (const checkpoint of [`${dir}/checkpoint`, dir]) {
    // Mid-swap, the checkpoint is briefly only at `.prev`: readCheckpoint takes it from
    // there, as `eval` does.
    const present = (await statOrNull(`${checkpoint}/model.json`)) ??
      (await statOrNull(`${checkpoint}.prev/model.json`));
    if (!present) continue;
    const { meta, values, path } = await readCheckpoint(checkpoint);
    if (meta.itemTokens.length < 2) {
      throw new RangeError(
        `${path}/model.json: field "itemTokens" is empty, so recommendations could not name items`,
      );
    }
    const model = modelFromCheckpoint(meta, values, path, options.inference);
    try {
      return {
        recommender: new Recommender(model, meta.itemTokens, options),
        from: `${path} (checkpoint)`,
      };
    } catch (e) {
      model.params.dispose();
      throw e;
    }
  }
  throw new Deno.errors.NotFound(
    `--model: ${source} is a folder without ${MODEL_FILE_NAME} or a checkpoint/`,
  );
}

/**
 * The model a checkpoint holds, built and loaded (disposed again if its weights do not fit).
 * `overrides` replace config fields that change how it ranks, not its parameters (an
 * evaluation ablation such as a shorter reverse chain; see `withInferenceOverrides`).
 *
 * @throws {RangeError} An override the model does not have, or a bad value.
 */
export function modelFromCheckpoint(
  meta: CheckpointMeta,
  values: Float32Array,
  path: string,
  overrides: Record<string, unknown> = {},
): ServableModel {
  const config = withInferenceOverrides(meta.model, meta.config, overrides);
  const model = modelEntry(meta.model).create({
    ...config,
    numItems: meta.itemTokens.length - 1,
  });
  try {
    model.params.assign(meta.params, values, `${path}/model.json`);
  } catch (e) {
    model.params.dispose();
    throw e;
  }
  return model;
}
