/**
 * Command-line argument parsing.
 *
 * @std/cli lives on JSR, which the project's build machines cannot reach; Deno's built-in
 * `node:util` `parseArgs` stands in. This is the only module that imports it, so returning
 * to @std/cli's `parseArgs` touches this file alone.
 *
 * @module
 */
export { parseArgs } from "node:util";
