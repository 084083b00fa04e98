// The project's gradients first, then tfjs's own from the umbrella package, which registers
// later and so replaces them in the registry: tf.getGradient() below is tfjs's reference.
import { GRADIENTS, type GradientSpec } from "../backends/_gradients.ts";
import "@tensorflow/tfjs";
import * as tf from "@tensorflow/tfjs-core";
import fc from "fast-check";
import { selectBackend } from "../backends/mod.ts";
import { assert, assertEquals } from "./_assert.ts";

const spec = (kernel: string): GradientSpec => GRADIENTS.find((g) => g.kernel === kernel)!;

interface Case {
  kernel: string;
  /** The kernel's inputs by name, in the order its gradient saves them. */
  inputs: Record<string, tf.Tensor>;
  /** The forward op, for the saved output and dy's shape. */
  forward: (inputs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
  attrs?: Record<string, unknown>;
}

let seed = 1;
const normal = (shape: number[]) => tf.randomNormal(shape, 0, 1, "float32", seed++);
const positive = (shape: number[]) => tf.add(tf.abs(normal(shape)), 0.5);

/** Our gradient and tfjs's for one case, input by input: [name, ours, theirs]. */
function compare(c: Case): [string, Float32Array, Float32Array, number[], number[]][] {
  return tf.tidy(() => {
    const mine = spec(c.kernel);
    const reference = tf.getGradient(c.kernel);
    assert(reference, `tfjs has no gradient for ${c.kernel}`);
    const list = Object.values(c.inputs);
    const out = c.forward(list);
    const dy = Array.isArray(out) ? out.map((o) => normal(o.shape)) : normal(out.shape);
    const saved = [
      ...(mine.allInputs ? list : (mine.inputs ?? []).map((n) => c.inputs[n])),
      ...(mine.output ? [out as tf.Tensor] : []),
    ];
    const attrs = (c.attrs ?? {}) as tf.NamedAttrMap;
    const ours = mine.grad(dy, saved, attrs);
    const theirs = reference.gradFunc(dy, saved, attrs);
    const keys = Object.keys(theirs);
    assertEquals(Object.keys(ours).sort(), [...keys].sort(), `${c.kernel}: gradient inputs`);
    return keys.map((k) => {
      const a = (ours as Record<string, () => tf.Tensor>)[k]();
      const b = theirs[k]();
      return [k, a.dataSync() as Float32Array, b.dataSync() as Float32Array, a.shape, b.shape];
    });
  });
}

function assertClose(c: Case): void {
  for (const [k, a, b, sa, sb] of compare(c)) {
    assertEquals(sa, sb, `${c.kernel} d${k}: shape`);
    for (let i = 0; i < a.length; i++) {
      const tol = 1e-5 * Math.max(1, Math.abs(b[i]));
      assert(Math.abs(a[i] - b[i]) <= tol, `${c.kernel} d${k}[${i}]: ${a[i]} vs tfjs ${b[i]}`);
    }
  }
}

const unary = (kernel: string, op: (x: tf.Tensor) => tf.Tensor, x = normal([3, 4])): Case => ({
  kernel,
  inputs: { x },
  forward: ([t]) => op(t),
});

function cases(): Case[] {
  const matmuls: Case[] = [];
  for (const ta of [false, true]) {
    for (const tb of [false, true]) {
      matmuls.push({
        kernel: "BatchMatMul",
        inputs: { a: normal(ta ? [2, 4, 3] : [2, 3, 4]), b: normal(tb ? [2, 5, 4] : [2, 4, 5]) },
        forward: ([a, b]) => tf.matMul(a, b, ta, tb),
        attrs: { transposeA: ta, transposeB: tb },
      });
    }
  }
  const x234 = normal([2, 3, 4]);
  return [
    ...matmuls,
    unary("Abs", tf.abs),
    unary("Neg", tf.neg),
    unary("Log", tf.log, positive([3, 4])),
    unary("Sqrt", tf.sqrt, positive([3, 4])),
    unary("Rsqrt", tf.rsqrt, positive([3, 4])),
    unary("Square", tf.square),
    unary("Softplus", tf.softplus),
    unary("Erf", tf.erf),
    unary("Exp", tf.exp),
    unary("Sigmoid", tf.sigmoid),
    unary("Tanh", tf.tanh),
    unary("Cast", (x) => tf.cast(x, "float32")),
    unary("ArgMax", (x) => tf.argMax(x, 1)),
    unary("Relu", tf.relu),
    {
      kernel: "Tile",
      inputs: { x: normal([2, 3]) },
      forward: ([x]) => tf.tile(x, [3, 2]),
      attrs: { reps: [3, 2] },
    },
    {
      kernel: "PadV2",
      inputs: { x: normal([2, 3]) },
      forward: ([x]) => tf.pad(x, [[1, 2], [0, 3]]),
      attrs: { paddings: [[1, 2], [0, 3]], constantValue: 0 },
    },
    {
      kernel: "Softmax",
      inputs: { logits: normal([3, 5]) },
      forward: ([x]) => tf.softmax(x),
      attrs: { dim: -1 },
    },
    {
      kernel: "Reshape",
      inputs: { x: normal([2, 6]) },
      forward: ([x]) => tf.reshape(x, [3, 4]),
      attrs: { shape: [3, 4] },
    },
    {
      kernel: "ExpandDims",
      inputs: { input: normal([3, 4]) },
      forward: ([x]) => tf.expandDims(x, 1),
      attrs: { dim: 1 },
    },
    {
      kernel: "Transpose",
      inputs: { x: x234 },
      forward: ([x]) => tf.transpose(x, [2, 0, 1]),
      attrs: { perm: [2, 0, 1] },
    },
    {
      kernel: "Slice",
      inputs: { x: normal([4, 5]) },
      forward: ([x]) => tf.slice(x, [1, 0], [2, -1]),
      attrs: { begin: [1, 0], size: [2, -1] },
    },
    {
      kernel: "SplitV",
      inputs: { x: normal([2, 5]) },
      forward: ([x]) => tf.split(x, [3, 2], 1),
      attrs: { numOrSizeSplits: [3, 2], axis: 1 },
    },
    {
      kernel: "Concat",
      inputs: { a: normal([2, 3]), b: normal([2, 2]) },
      forward: (ts) => tf.concat(ts, 1),
      attrs: { axis: 1 },
    },
    {
      kernel: "Pack",
      inputs: { a: normal([2, 3]), b: normal([2, 3]), c: normal([2, 3]) },
      forward: (ts) => tf.stack(ts, 1),
      attrs: { axis: 1 },
    },
    ...[false, true].flatMap((keepDims) => [
      {
        kernel: "Sum",
        inputs: { x: x234 },
        forward: ([x]: tf.Tensor[]) => tf.sum(x, 1, keepDims),
        attrs: { axis: [1], keepDims },
      },
      {
        kernel: "Mean",
        inputs: { x: x234 },
        forward: ([x]: tf.Tensor[]) => tf.mean(x, [0, 2], keepDims),
        attrs: { axis: [0, 2], keepDims },
      },
      {
        kernel: "Max",
        inputs: { x: x234 },
        forward: ([x]: tf.Tensor[]) => tf.max(x, 2, keepDims),
        attrs: { reductionIndices: [2], keepDims },
      },
    ]),
    ...([["Add", tf.add], ["Sub", tf.sub], ["Multiply", tf.mul], ["RealDiv", tf.div]] as const).map(
      (
        [kernel, op],
      ) => ({
        kernel,
        inputs: { a: normal([2, 3, 4]), b: positive([3, 1]) },
        forward: ([a, b]: tf.Tensor[]) => op(a, b),
      }),
    ),
    {
      kernel: "Maximum",
      inputs: { a: normal([3, 4]), b: normal([3, 4]) },
      forward: ([a, b]) => tf.maximum(a, b),
    },
    {
      kernel: "Minimum",
      inputs: { a: normal([3, 4]), b: normal([3, 4]) },
      forward: ([a, b]) => tf.minimum(a, b),
    },
  ];
}

Deno.test("every registered gradient equals tfjs's own, kernel by kernel", async () => {
  await selectBackend("cpu");
  const covered = new Set<string>();
  const all = cases();
  for (const c of all) {
    assertClose(c);
    covered.add(c.kernel);
  }
  tf.dispose(all.flatMap((c) => Object.values(c.inputs)));
  // The rest: Identity passes dy through; comparisons and rounding have a zero gradient.
  for (const g of GRADIENTS.filter((g) => !covered.has(g.kernel))) {
    tf.tidy(() => {
      const dy = normal([2, 3]);
      const saved = (g.inputs ?? []).map(() => normal([2, 3]));
      const grads = g.grad(dy, saved, {}) as Record<string, () => tf.Tensor>;
      for (const [name, f] of Object.entries(grads)) {
        const want = g.kernel === "Identity" ? dy : tf.zeros([2, 3]);
        assertEquals(f().arraySync(), want.arraySync(), `${g.kernel} d${name}`);
      }
      assert(Object.keys(grads).length > 0, `${g.kernel}: no gradient`);
    });
    covered.add(g.kernel);
  }
  const untested = GRADIENTS.map((g) => g.kernel).filter((k) => !covered.has(k));
  assertEquals(untested, [], "gradients without a comparison case");
});

Deno.test("broadcasting gradients equal tfjs's for random shapes (property)", async () => {
  await selectBackend("cpu");
  // A shape and a second shape that broadcasts against it: some axes 1, some dropped.
  const shapes = fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 4 }).chain(
    (shape) =>
      fc.tuple(
        fc.constant(shape),
        fc.array(fc.boolean(), { minLength: shape.length, maxLength: shape.length }),
        fc.integer({ min: 0, max: shape.length - 1 }),
        fc.constantFrom("Add", "Sub", "Multiply", "RealDiv"),
        fc.boolean(),
      ),
  );
  fc.assert(
    fc.property(shapes, ([shape, ones, drop, kernel, swap]) => {
      const other = shape.map((d, i) => (ones[i] ? 1 : d)).slice(drop);
      const [sa, sb] = swap ? [other, shape] : [shape, other];
      const ops: Record<string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor> = {
        Add: tf.add,
        Sub: tf.sub,
        Multiply: tf.mul,
        RealDiv: tf.div,
      };
      const a = normal(sa);
      const b = kernel === "RealDiv" ? positive(sb) : normal(sb);
      assertClose({ kernel, inputs: { a, b }, forward: ([x, y]) => ops[kernel](x, y) });
      tf.dispose([a, b]);
    }),
    { numRuns: 200 },
  );
});
