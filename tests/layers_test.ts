import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { causalPaddingMask, createTransformer, transformer } from "../lib/nn/layers.ts";
import { ParamStore } from "../lib/nn/params.ts";
import { maxAbsDiff } from "./_model_checks.ts";
import { assert, assertEquals } from "./_assert.ts";

Deno.test("transformer() with lastOnly equals the newest row of the full pass", async () => {
  await selectBackend("cpu");
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 3 }), // layers
      fc.integer({ min: 1, max: 4 }), // batch
      fc.integer({ min: 1, max: 7 }), // length
      fc.integer({ min: 0, max: 1000 }), // seed
      async (layers, batch, length, seed) => {
        const settings = {
          hidden: 8,
          heads: 2,
          inner: 16,
          dropout: 0,
          layers,
          layerNormEps: 1e-12,
        };
        const p = new ParamStore(seed, 0.3);
        createTransformer(p, "t", settings);
        // Padding scattered through each row; the newest item is always real.
        const inputs = Int32Array.from(
          { length: batch * length },
          (_, i) => (i % length) >= length - 1 - ((i * 7 + seed) % length) ? 1 + (i % 5) : 0,
        );
        const [full, last] = tf.tidy(() => {
          const x = tf.randomNormal([batch, length, 8], 0, 1, "float32", seed) as tf.Tensor3D;
          const mask = causalPaddingMask(inputs, batch, length);
          const all = transformer(p, "t", x, mask, settings, null); // [B, L, d]
          const newest = tf.slice(all, [0, length - 1, 0], [-1, 1, -1]); // [B, 1, d]
          return [newest, transformer(p, "t", x, mask, settings, null, true)];
        });
        assertEquals(last.shape, [batch, 1, 8]);
        const diff = maxAbsDiff(
          await full.data() as Float32Array,
          await last.data() as Float32Array,
        );
        tf.dispose([full, last]);
        p.dispose();
        assert(diff <= 1e-5, `lastOnly differs from the full pass by ${diff}`);
      },
    ),
    { numRuns: 100 },
  );
});
