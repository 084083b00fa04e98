// SIGMA's authors'-code options (`SIGMA_PRESETS.authors`): each changes what it says and
// nothing else, and the paper's mode (every option at its default) is what it was before
// they existed.
import * as tf from "@tensorflow/tfjs-core";
import { Adam } from "../lib/train/adam.ts";
import { selectBackend } from "../backends/mod.ts";
import {
  Sigma,
  SIGMA_DEFAULT_PRESET,
  SIGMA_PRESETS,
  type SigmaConfig,
} from "../lib/models/sigma.ts";
import { stepSeeds } from "../lib/models/_model.ts";
import { trainStep } from "../lib/train/trainer.ts";
import { tinyEvalBatch, tinyTrainBatch } from "./_fixtures.ts";
import { maxAbsDiff } from "./_model_checks.ts";
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "./_assert.ts";
import { modelPreset, MODELS } from "../lib/models/mod.ts";

await selectBackend("cpu");

const TINY = {
  numItems: 30,
  hidden: 16,
  heads: 2,
  inner: 32,
  maxLength: 8,
  interests: 3,
  seed: 11,
};
const BATCH = tinyTrainBatch(4, 6, 30);
const EVAL = tinyEvalBatch(3, 5, 30);

type Options = Partial<SigmaConfig>;

/** Loss and parts of one forward pass as numbers; `run` picks the seed stream. */
function lossOf(options: Options, epoch?: number, run = 5, step = 7) {
  const model = new Sigma({ ...TINY, ...options });
  const out = partsOf(model, epoch, run, step);
  model.params.dispose();
  return out;
}

/** `model`'s loss and parts on the tiny batch as numbers. */
function partsOf(model: Sigma, epoch?: number, run = 5, step = 7) {
  return tf.tidy(() => {
    const { loss, parts } = model.loss(BATCH, stepSeeds(run, 3), step, epoch);
    const values: Record<string, number> = { loss: loss.dataSync()[0] };
    for (const [k, v] of Object.entries(parts)) values[k] = v.dataSync()[0];
    return values;
  });
}

/**
 * Whether the training loss at `epoch` depends on the parameters whose names start with
 * `prefix`: the loss before and after moving each of them by 0.5.
 */
function dependsOn(options: Options, epoch: number, prefix: string): boolean {
  const model = new Sigma({ ...TINY, ...options });
  const loss = () => tf.tidy(() => model.loss(BATCH, stepSeeds(5, 3), 7, epoch).loss.dataSync()[0]);
  const before = loss();
  const records = model.params.records();
  const moved = records.filter((r) => r.name.startsWith(prefix));
  assert(moved.length > 0, `no parameter starts with ${prefix}`);
  for (const r of moved) {
    const v = model.params.get(r.name);
    v.assign(tf.tidy(() => tf.add(v, 0.5)));
  }
  const after = loss();
  model.params.dispose();
  return Math.abs(after - before) > 1e-6;
}

function scoresOf(options: Options): Float32Array {
  const model = new Sigma({ ...TINY, ...options });
  const s = tf.tidy(() => model.scores(EVAL).dataSync() as Float32Array);
  model.params.dispose();
  return s;
}

Deno.test("SIGMA's paper mode is untouched by the authors'-code options: the loss, parts and scores of commit c2351b6", () => {
  // Printed by this file's TINY model, BATCH, seeds (5, 3), step 7 at c2351b6, the commit
  // before any of the options (and before attention dropout) existed; loss, recon and kl
  // re-printed when dropout's masks moved to Philox (commit 375b4e6): feb4409 with only
  // lib/nn/dropout.ts swapped in prints exactly these (the others have no dropout).
  const before = {
    loss: 3.4558050632476807,
    recon: 3.412461757659912,
    kl: 15.489131927490234,
    recon_mie: 3.4011213779449463,
    kl_mie: 0.0009907688945531845,
    orth: 0.7773264050483704,
  };
  const now = lossOf({});
  for (const [k, v] of Object.entries(before)) assertAlmostEquals(now[k], v, 1e-6 * v, k);
  assertEquals(lossOf({}, 1), now, "the paper's loss has no schedule by epoch");
  const scores = Array.from(scoresOf({}).slice(0, 6));
  const scoresBefore = [
    -0.014495654962956905,
    0.06665793061256409,
    -0.012991472147405148,
    -0.028808966279029846,
    0.1662536859512329,
    0.0355975404381752,
  ];
  assert(maxAbsDiff(Float32Array.from(scores), Float32Array.from(scoresBefore)) < 1e-7);
  // No parameter is added either.
  const model = new Sigma(TINY);
  assert(!model.params.records().some((r) => r.name.startsWith("interest.ln")));
  model.params.dispose();
});

Deno.test("mieInput normed: MIE reads LayerNorm-scaled items, so interest means start ~50x larger", () => {
  const size = (options: Options) => {
    const model = new Sigma({ ...TINY, ...options });
    const n = tf.tidy(() => {
      const { mean } = model.interestsOf(EVAL.inputs, EVAL.batch, EVAL.length);
      return tf.max(tf.norm(mean, "euclidean", -1)).dataSync()[0];
    });
    model.params.dispose();
    return n;
  };
  const raw = size({});
  const normed = size({ mieInput: "normed" });
  // d = 16: an item's LayerNorm output has norm 4, a raw N(0, 0.02) embedding ~0.08.
  assert(raw < 0.1 && normed > 20 * raw, `largest interest mean: raw ${raw}, normed ${normed}`);
  assert(lossOf({ mieInput: "normed" }).recon_mie !== lossOf({}).recon_mie);
});

Deno.test("interestLayerNorm: each interest mean is standardised over d at initialisation, with a LayerNorm of its own", () => {
  const model = new Sigma({ ...TINY, interestLayerNorm: true });
  assert(model.params.records().some((r) => r.name.startsWith("interest.ln")));
  const [means, variances] = tf.tidy(() => {
    const { mean } = model.interestsOf(EVAL.inputs, EVAL.batch, EVAL.length);
    const newest = tf.slice(mean, [0, EVAL.length - 1], [-1, 1]); // a real position
    const m = tf.mean(newest, -1);
    return [m.dataSync(), tf.mean(tf.square(tf.sub(newest, tf.expandDims(m, -1))), -1).dataSync()];
  });
  model.params.dispose();
  for (const m of means) assertAlmostEquals(m, 0, 1e-5);
  for (const v of variances) assertAlmostEquals(v, 1, 1e-3);
});

Deno.test("mieRecon mean: MIE's reconstruction uses the interest mean, no sample and no decoder", () => {
  // Soft interests only (hardInterestsFrom beyond the epoch) and no dropout: nothing
  // random is left in recon_mie but the sample.
  const quiet: Options = { dropout: 0, hardInterestsFrom: 5 };
  const [a, b] = [1, 2].map((run) => lossOf({ ...quiet, mieRecon: "mean" }, 1, run).recon_mie);
  assertEquals(a, b);
  const [c, d] = [1, 2].map((run) => lossOf({ ...quiet }, 1, run).recon_mie);
  assert(c !== d, "the paper's sampled reconstruction depends on the draw");
  assert(!dependsOn({ mieRecon: "mean" }, 1, "interest.l"), "the interest decoder is used");
  assert(dependsOn({}, 1, "interest.l"), "the paper's interest decoder is not used");
});

Deno.test("mieKlReduce mean: KL_MIE is the sum over the k interests divided by k", () => {
  const sum = lossOf({});
  const mean = lossOf({ mieKlReduce: "mean" });
  assertAlmostEquals(mean.kl_mie * TINY.interests, sum.kl_mie, 1e-6 * sum.kl_mie);
  assertEquals(mean.recon_mie, sum.recon_mie);
});

Deno.test("mieBoostEpochs: MIE's ELBO and L_orth weigh max(1, E0 - epoch + 1) times more", () => {
  const options: Options = { mieBoostEpochs: 20, mieKlWeight: 0.5, beta1: 0.01, beta2: 0.02 };
  for (const epoch of [1, 7, 19]) {
    const boosted = lossOf(options, epoch);
    const plain = lossOf(options, 25);
    const mie = 0.01 * (boosted.recon_mie + 0.5 * boosted.kl_mie) + 0.02 * boosted.orth;
    const factor = Math.max(1, 20 - epoch + 1);
    assertAlmostEquals(boosted.loss - plain.loss, (factor - 1) * mie, 1e-4, `epoch ${epoch}`);
  }
  assertEquals(lossOf(options, 20).loss, lossOf(options, 25).loss); // x1 from epoch E0 on
  assertEquals(lossOf(options).loss, lossOf(options, 25).loss); // no epoch: after it
});

Deno.test("hardInterestsFrom: the GRU is left out before that epoch, and used from it on", () => {
  const options: Options = { hardInterestsFrom: 4 };
  assert(!dependsOn(options, 3, "gru."), "epoch 3 used the GRU");
  assert(dependsOn(options, 4, "gru."), "epoch 4 did not use the GRU");
  assert(dependsOn({}, 1, "gru."), "the paper's GRU is used from the start");
});

Deno.test("scoreAt mu+sigma: ranks at mu + sigma, which is mu when sigma vanishes", () => {
  assert(maxAbsDiff(scoresOf({ scoreAt: "mu+sigma" }), scoresOf({})) > 1e-3);
  // logVarInit -40 starts sigma at e^-20: mu + sigma is mu to float precision.
  const tiny = { logVarInit: -40 };
  assert(maxAbsDiff(scoresOf({ ...tiny, scoreAt: "mu+sigma" }), scoresOf(tiny)) < 1e-6);
});

/**
 * Loss parts with the omega MLP's output set to `logVar` everywhere (last layer's weights
 * 0, bias `logVar`), so each interest's log-variance before any bound is that constant.
 */
function partsWithOmegaOutput(options: Options, logVar: number) {
  const model = new Sigma({ ...TINY, ...options });
  const w = model.params.get("omega.l2.w");
  w.assign(tf.zerosLike(w));
  const b = model.params.get("omega.l2.b");
  b.assign(tf.fill(b.shape, logVar));
  const out = partsOf(model);
  model.params.dispose();
  return out;
}

Deno.test("interestLogVarBound: log omega^2 = B tanh(raw / B), so KL_MIE stays bounded however large the raw output", () => {
  const bound = 10;
  for (const raw of [-50, -3, 0.3, 4, 60]) {
    const bounded = partsWithOmegaOutput({ interestLogVarBound: bound }, raw);
    // The same model, unbounded, with its MLP giving the bounded value directly.
    const twin = partsWithOmegaOutput({}, bound * Math.tanh(raw / bound));
    for (const part of ["loss", "kl_mie", "kl", "recon_mie"]) {
      assertAlmostEquals(
        bounded[part],
        twin[part],
        1e-5 * Math.abs(twin[part]) + 1e-5,
        `${part} at ${raw}`,
      );
    }
  }
  // Unbounded, e^60 per dimension: KL_MIE is over 1e25; bounded, under e^10 per dimension.
  const perPosition = TINY.interests * TINY.hidden;
  assert(partsWithOmegaOutput({}, 60).kl_mie > 1e25);
  const bounded = partsWithOmegaOutput({ interestLogVarBound: bound }, 60).kl_mie;
  assert(bounded < perPosition * 0.5 * Math.exp(bound) * 1.01 + 1e3, `KL_MIE ${bounded}`);
  // Off by default, and not in the authors' preset: the authors' code has no bound.
  assertEquals(
    partsWithOmegaOutput({}, 4).kl_mie,
    partsWithOmegaOutput({ interestLogVarBound: 0 }, 4).kl_mie,
  );
  assertEquals(SIGMA_PRESETS.authors.interestLogVarBound, undefined);
});

Deno.test("the authors preset trains: finite loss, every part of MIE reached, flat tensor count, early and late epochs", () => {
  const model = new Sigma({ ...TINY, ...SIGMA_PRESETS.authors });
  const optimizer = new Adam(1e-3);
  const vars = model.params.list();
  const counts: number[] = [];
  for (const [i, epoch] of [1, 2, 40, 41].entries()) {
    const { values } = trainStep(model, BATCH, stepSeeds(3, i), optimizer, vars, 2048, {
      step: i,
      epoch,
    });
    const v = values.dataSync();
    values.dispose();
    assert(Array.from(v).every(Number.isFinite), `epoch ${epoch}: ${v}`);
    counts.push(tf.memory().numTensors);
  }
  // Flat within each phase; the GRU joining at epoch 32 adds Adam's two moments for each of
  // its variables, and nothing else.
  const gruVariables = model.params.records().filter((r) => r.name.startsWith("gru.")).length;
  assertEquals(
    [counts[1] - counts[0], counts[2] - counts[1], counts[3] - counts[2]],
    [0, 2 * gruVariables, 0],
    `tensor counts ${counts}`,
  );
  for (const family of ["gru.", "category", "omega.", "interest.ln", "enc_sigma."]) {
    assert(dependsOn(SIGMA_PRESETS.authors, 40, family), `${family} is not used at epoch 40`);
  }
  optimizer.dispose();
  model.params.dispose();
});

Deno.test("modelPreset: the preset's values, none without a name, a RangeError naming the known ones", () => {
  assertEquals(modelPreset("sigma", "authors"), SIGMA_PRESETS.authors);
  assertEquals(modelPreset("sigma", undefined), {});
  assertEquals(modelPreset("sasrec", undefined), {});
  assertThrows(
    () => modelPreset("sigma", "nope"),
    RangeError,
    "--preset nope is not a preset of model sigma (known: authors-bounded, paper, authors)",
  );
  assertThrows(
    () => modelPreset("sasrec", "authors"),
    RangeError,
    "--preset authors is not a preset of model sasrec (it has none)",
  );
  assertThrows(() => modelPreset("gru4rec", "authors"), RangeError, 'Unknown model "gru4rec"');
  // "paper" is every model's defaults as they are, so one reproduce can name it for all.
  assertEquals(modelPreset("sigma", "paper"), {});
  assertEquals(modelPreset("sasrec", "paper"), {});
  assertEquals(modelPreset("diffurec", "paper"), {});
});

Deno.test("SIGMA's default preset is the bounded authors' mode: authors' values with the log-variance bound 10", () => {
  assertEquals(MODELS.sigma.defaultPreset, SIGMA_DEFAULT_PRESET);
  assertEquals(SIGMA_DEFAULT_PRESET, "authors-bounded");
  assertEquals(SIGMA_PRESETS["authors-bounded"], {
    ...SIGMA_PRESETS.authors,
    interestLogVarBound: 10,
  });
  assertEquals(MODELS.sasrec.defaultPreset, undefined);
});
