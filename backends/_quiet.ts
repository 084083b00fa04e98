// Imported first by backends/mod.ts: tfjs-backend-cpu prints a "you are running in Node.js,
// install tfjs-node" banner on load unless production mode is already on. Deno users cannot
// act on that advice, so production mode (which only drops that banner and debug checks
// this project does not use) is switched on before any backend module loads.
import * as tf from "@tensorflow/tfjs-core";
tf.env().set("PROD", true);
