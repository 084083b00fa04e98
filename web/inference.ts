/**
 * The library's inference API as one ES module for browsers and edge runtimes, built by
 * `web/build.ts` into `inference.js`: load a model file (bytes, a `Response` or a URL),
 * choose a backend, recommend. tfjs takes its web platform there (standard `fetch`,
 * `TextEncoder`, `performance`) even where a `process` global exists (see `build.ts`).
 *
 * ```js
 * import { Recommender, selectBackend } from "./inference.js";
 * await selectBackend("auto");
 * const recommender = await Recommender.load("model.safetensors");
 * const { items } = await recommender.recommend(["Tea", "Teapot"], { k: 10 });
 * ```
 *
 * @module
 */
export { type ChosenBackend, Recommender, type RecommendResult, selectBackend } from "../mod.ts";
