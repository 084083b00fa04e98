/**
 * Registers tfjs's gradient functions.
 *
 * Why this file exists: `@tensorflow/tfjs-core` registers no gradients when it is loaded
 * from npm under Deno (Deno resolves its CommonJS bundle, which leaves them out), and its
 * own `dist/register_all_gradients.js` uses extensionless relative imports that Deno's npm
 * resolver rejects. The `@tensorflow/tfjs` union package's CommonJS bundle contains the
 * same gradient definitions compiled in and registers them into the shared global
 * registry on load. It also loads layers, converter and data (about 0.3 s, no side effects
 * on the backends this project uses): that cost is accepted in exchange for gradients
 * written and tested upstream rather than re-derived here.
 *
 * @module
 */
import "@tensorflow/tfjs";
