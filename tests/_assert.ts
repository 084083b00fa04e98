/**
 * The assertions the tests use, with @std/assert's names and signatures.
 *
 * @std/assert lives on JSR, which the project's build machines cannot reach, so these are
 * thin wrappers over Deno's built-in `node:assert`. To return to @std/assert, replace this
 * file's body with the single line `export * from "@std/assert";`.
 *
 * @module
 */
import nodeAssert from "node:assert";

/** Asserts that `cond` is truthy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

/** Asserts deep equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

/** Asserts deep inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, msg);
}

/** Asserts that `actual` and `expected` differ by at most `tolerance` (default 1e-7). */
export function assertAlmostEquals(
  actual: number,
  expected: number,
  tolerance = 1e-7,
  msg?: string,
): void {
  const ok = actual === expected || Math.abs(actual - expected) <= tolerance;
  nodeAssert.ok(
    ok,
    msg ??
      `Expected ${actual} to be within ${tolerance} of ${expected} (off by ${
        Math.abs(actual - expected)
      })`,
  );
}

/** Asserts that `fn` throws an instance of `ErrorClass` whose message includes `msgIncludes`. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  ErrorClass?: new (...args: any[]) => E,
  msgIncludes?: string,
): E {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  nodeAssert.ok(caught !== undefined, "Expected function to throw");
  if (ErrorClass) {
    nodeAssert.ok(
      caught instanceof ErrorClass,
      `Expected ${ErrorClass.name}, got ${(caught as Error)?.constructor?.name}: ${caught}`,
    );
  }
  if (msgIncludes !== undefined) {
    const m = (caught as Error).message;
    nodeAssert.ok(m.includes(msgIncludes), `Expected message to include "${msgIncludes}": "${m}"`);
  }
  return caught as E;
}

/** Async version of {@linkcode assertThrows}. */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  ErrorClass?: new (...args: any[]) => E,
  msgIncludes?: string,
): Promise<E> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  nodeAssert.ok(caught !== undefined, "Expected promise to reject");
  if (ErrorClass) {
    nodeAssert.ok(
      caught instanceof ErrorClass,
      `Expected ${ErrorClass.name}, got ${(caught as Error)?.constructor?.name}: ${caught}`,
    );
  }
  if (msgIncludes !== undefined) {
    const m = (caught as Error).message;
    nodeAssert.ok(m.includes(msgIncludes), `Expected message to include "${msgIncludes}": "${m}"`);
  }
  return caught as E;
}
