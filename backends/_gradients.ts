/**
 * The gradients of the tfjs kernels that training this project's models records, registered
 * here rather than by importing the `@tensorflow/tfjs` umbrella package.
 *
 * Why this file exists: `@tensorflow/tfjs-core` registers no gradients when Deno loads it
 * from npm (Deno resolves its CommonJS bundle, which leaves them out), and its
 * `dist/register_all_gradients.js` uses extensionless relative imports that Deno's npm
 * resolver rejects. The umbrella package's CommonJS bundle registers them, but it also
 * loads layers, converter, data and webgl (about 0.3 s, and 1.4 MB in a bundle). So the
 * gradients the models need are written out here, each the textbook derivative of its
 * kernel, and `tests/gradients_test.ts` checks every one against tfjs's own (loaded there
 * from the umbrella, as a reference only) on random inputs, broadcasting included.
 *
 * Binary element-wise kernels broadcast, so each input's gradient is summed back over the
 * axes its shape was broadcast along ({@linkcode unbroadcast}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";

type Tensor = tf.Tensor;
type Grads = Record<string, () => Tensor>;
type Attrs = Record<string, unknown>;

/** `dy` summed over the axes along which `shape` was broadcast to `dy`'s shape. */
export function unbroadcast(dy: Tensor, shape: number[]): Tensor {
  const axes = tf.backend_util.getReductionAxes(shape, dy.shape);
  const summed = axes.length > 0 ? tf.sum(dy, axes) : dy;
  return tf.reshape(summed, shape);
}

/**
 * A reduction's `dy` (or output) reshaped to broadcast against its input: the reduced axes
 * kept as 1, whether or not the reduction kept them.
 */
function keepReducedAxes(dy: Tensor, xShape: number[], axis: unknown): Tensor {
  const axes = tf.util.parseAxisParam(axis as number | number[], xShape);
  return tf.reshape(dy, xShape.map((d, i) => (axes.includes(i) ? 1 : d)));
}

const float = (t: Tensor) => tf.cast(t, "float32");

/** One gradient: the kernel, what the forward pass must save, and the derivative. */
export interface GradientSpec {
  /** The tfjs kernel name. */
  kernel: string;
  /** Input names the gradient reads, saved in this order. */
  inputs?: string[];
  /** Save every input (kernels with a list of inputs: Concat, Pack). */
  allInputs?: boolean;
  /** Save the output (it follows the saved inputs). */
  output?: boolean;
  /** Gradients by input name (or index, for list inputs) from the output's gradient. */
  grad: (dy: Tensor | Tensor[], saved: Tensor[], attrs: Attrs) => Grads | (() => Tensor)[];
}

const elementwise = (
  kernel: string,
  derivative: (x: Tensor) => Tensor,
): GradientSpec => ({
  kernel,
  inputs: ["x"],
  grad: (dy, [x]) => ({ x: () => tf.mul(dy as Tensor, derivative(x)) }),
});

const fromOutput = (kernel: string, derivative: (y: Tensor) => Tensor): GradientSpec => ({
  kernel,
  output: true,
  grad: (dy, [y]) => ({ x: () => tf.mul(dy as Tensor, derivative(y)) }),
});

const zero = (kernel: string, inputs: string[]): GradientSpec => ({
  kernel,
  inputs,
  grad: (_dy, saved) => Object.fromEntries(inputs.map((n, i) => [n, () => tf.zerosLike(saved[i])])),
});

/** Every gradient this file registers. */
export const GRADIENTS: readonly GradientSpec[] = [
  // ---- binary, broadcasting
  {
    kernel: "Add",
    inputs: ["a", "b"],
    grad: (dy, [a, b]) => ({
      a: () => unbroadcast(dy as Tensor, a.shape),
      b: () => unbroadcast(dy as Tensor, b.shape),
    }),
  },
  {
    kernel: "Sub",
    inputs: ["a", "b"],
    grad: (dy, [a, b]) => ({
      a: () => unbroadcast(dy as Tensor, a.shape),
      b: () => unbroadcast(tf.neg(dy as Tensor), b.shape),
    }),
  },
  {
    kernel: "Multiply",
    inputs: ["a", "b"],
    grad: (dy, [a, b]) => ({
      a: () => unbroadcast(tf.mul(dy as Tensor, float(b)), a.shape),
      b: () => unbroadcast(tf.mul(dy as Tensor, float(a)), b.shape),
    }),
  },
  {
    kernel: "RealDiv",
    inputs: ["a", "b"],
    grad: (dy, [a, b]) => ({
      a: () => unbroadcast(tf.div(dy as Tensor, float(b)), a.shape),
      // d(a/b)/db = -a / b^2
      b: () => unbroadcast(tf.neg(tf.div(tf.mul(dy as Tensor, a), tf.square(b))), b.shape),
    }),
  },
  {
    kernel: "Maximum",
    inputs: ["a", "b"],
    // Ties go to a, as tfjs's forward kernels pick a.
    grad: (dy, [a, b]) => ({
      a: () => unbroadcast(tf.mul(dy as Tensor, float(tf.greaterEqual(a, b))), a.shape),
      b: () => unbroadcast(tf.mul(dy as Tensor, float(tf.less(a, b))), b.shape),
    }),
  },
  {
    kernel: "Minimum",
    inputs: ["a", "b"],
    grad: (dy, [a, b]) => ({
      a: () => unbroadcast(tf.mul(dy as Tensor, float(tf.lessEqual(a, b))), a.shape),
      b: () => unbroadcast(tf.mul(dy as Tensor, float(tf.greater(a, b))), b.shape),
    }),
  },
  {
    kernel: "BatchMatMul",
    inputs: ["a", "b"],
    grad: (dy, [a, b], attrs) => {
      const g = dy as Tensor;
      const { transposeA: ta, transposeB: tb } = attrs as {
        transposeA: boolean;
        transposeB: boolean;
      };
      // C = op(A) op(B); dOp(A) = dC B'^T, dOp(B) = A'^T dC, then undo each op.
      const da = ta ? tf.matMul(b, g, tb, true) : tf.matMul(g, b, false, !tb);
      const db = tb ? tf.matMul(g, a, true, ta) : tf.matMul(a, g, !ta, false);
      return { a: () => unbroadcast(da, a.shape), b: () => unbroadcast(db, b.shape) };
    },
  },
  // ---- unary
  elementwise("Abs", (x) => tf.sign(x)),
  { kernel: "Neg", grad: (dy) => ({ x: () => tf.neg(dy as Tensor) }) },
  elementwise("Log", (x) => tf.reciprocal(x)),
  elementwise("Sqrt", (x) => tf.div(0.5, tf.sqrt(x))),
  elementwise("Rsqrt", (x) => tf.mul(-0.5, tf.pow(x, -1.5))),
  elementwise("Square", (x) => tf.mul(x, 2)),
  elementwise("Softplus", (x) => tf.sigmoid(x)),
  // d erf(x)/dx = 2 / sqrt(pi) * exp(-x^2)
  elementwise("Erf", (x) => tf.mul(2 / Math.sqrt(Math.PI), tf.exp(tf.neg(tf.square(x))))),
  fromOutput("Exp", (y) => y),
  fromOutput("Sigmoid", (y) => tf.mul(y, tf.sub(1, y))),
  fromOutput("Tanh", (y) => tf.sub(1, tf.square(y))),
  {
    kernel: "Softmax",
    output: true,
    grad: (dy, [y], attrs) => {
      const dim = attrs.dim as number;
      const g = dy as Tensor;
      // dx = y * (dy - sum(dy * y))
      return { logits: () => tf.mul(y, tf.sub(g, tf.sum(tf.mul(g, y), dim, true))) };
    },
  },
  { kernel: "Cast", grad: (dy) => ({ x: () => tf.clone(dy as Tensor) }) },
  { kernel: "Identity", grad: (dy) => ({ x: () => tf.clone(dy as Tensor) }) },
  // ---- shape and layout
  {
    kernel: "Reshape",
    inputs: ["x"],
    grad: (dy, [x]) => ({ x: () => tf.reshape(dy as Tensor, x.shape) }),
  },
  {
    kernel: "ExpandDims",
    inputs: ["input"],
    grad: (dy, [x]) => ({ input: () => tf.reshape(dy as Tensor, x.shape) }),
  },
  {
    kernel: "Transpose",
    grad: (dy, _saved, attrs) => {
      const perm = attrs.perm as number[];
      const inverse = perm.map((_, i) => perm.indexOf(i));
      return { x: () => tf.transpose(dy as Tensor, inverse) };
    },
  },
  {
    kernel: "Slice",
    inputs: ["x"],
    grad: (dy, [x], attrs) => {
      const [begin, size] = tf.slice_util.parseSliceParams(
        x,
        attrs.begin as number[],
        attrs.size as number[],
      );
      const pads = x.shape.map((d, i) => [begin[i], d - begin[i] - size[i]] as [number, number]);
      return { x: () => tf.pad(dy as Tensor, pads) };
    },
  },
  {
    kernel: "SplitV",
    grad: (dy, _saved, attrs) => ({ x: () => tf.concat(dy as Tensor[], attrs.axis as number) }),
  },
  {
    kernel: "Concat",
    allInputs: true,
    grad: (dy, saved, attrs) => {
      const axis = tf.util.parseAxisParam(attrs.axis as number, saved[0].shape)[0];
      const parts = tf.split(dy as Tensor, saved.map((t) => t.shape[axis]), axis);
      return parts.map((p) => () => p);
    },
  },
  {
    kernel: "Pack",
    allInputs: true,
    grad: (dy, _saved, attrs) => tf.unstack(dy as Tensor, attrs.axis as number).map((p) => () => p),
  },
  {
    kernel: "Tile",
    inputs: ["x"],
    grad: (dy, [x], attrs) => {
      const reps = attrs.reps as number[];
      // dy viewed as [reps0, x0, reps1, x1, ...], summed over the repetitions.
      const view = x.shape.flatMap((d, i) => [reps[i], d]);
      const repAxes = x.shape.map((_, i) => 2 * i);
      return { x: () => tf.reshape(tf.sum(tf.reshape(dy as Tensor, view), repAxes), x.shape) };
    },
  },
  {
    kernel: "PadV2",
    inputs: ["x"],
    grad: (dy, [x], attrs) => {
      const before = (attrs.paddings as [number, number][]).map(([b]) => b);
      return { x: () => tf.slice(dy as Tensor, before, x.shape) };
    },
  },
  elementwise("Relu", (x) => float(tf.greater(x, 0))),
  // ---- reductions
  {
    kernel: "Sum",
    inputs: ["x"],
    grad: (dy, [x], attrs) => ({
      x: () => tf.mul(keepReducedAxes(dy as Tensor, x.shape, attrs.axis), tf.ones(x.shape)),
    }),
  },
  {
    kernel: "Mean",
    inputs: ["x"],
    grad: (dy, [x], attrs) => {
      const axes = tf.util.parseAxisParam(attrs.axis as number | number[], x.shape);
      const count = axes.reduce((n, a) => n * x.shape[a], 1);
      return {
        x: () =>
          tf.div(
            tf.mul(keepReducedAxes(dy as Tensor, x.shape, attrs.axis), tf.ones(x.shape)),
            count,
          ),
      };
    },
  },
  {
    kernel: "Max",
    inputs: ["x"],
    output: true,
    // Every entry equal to the maximum gets the gradient, as in tfjs.
    grad: (dy, [x, y], attrs) => {
      const axes = attrs.reductionIndices;
      const yKept = keepReducedAxes(y, x.shape, axes);
      const dyKept = keepReducedAxes(dy as Tensor, x.shape, axes);
      return { x: () => tf.mul(dyKept, float(tf.equal(x, yKept))) };
    },
  },
  // ---- piecewise constant: zero gradient
  zero("ArgMax", ["x"]),
  zero("ArgMin", ["x"]),
  zero("Sign", ["x"]),
  zero("Floor", ["x"]),
  zero("Round", ["x"]),
  zero("OnesLike", ["x"]),
  zero("ZerosLike", ["x"]),
  zero("Equal", ["a", "b"]),
  zero("NotEqual", ["a", "b"]),
  zero("Greater", ["a", "b"]),
  zero("GreaterEqual", ["a", "b"]),
  zero("Less", ["a", "b"]),
  zero("LessEqual", ["a", "b"]),
];

/** Registers every gradient of {@linkcode GRADIENTS} with tfjs (once per process). */
export function registerGradients(): void {
  for (const spec of GRADIENTS) {
    tf.registerGradient({
      kernelName: spec.kernel,
      inputsToSave: spec.inputs,
      saveAllInputs: spec.allInputs,
      outputsToSave: spec.output ? [true] : undefined,
      gradFunc: (dy, saved, attrs) => {
        const grads = spec.grad(dy, saved, attrs as unknown as Attrs);
        // tfjs takes list inputs' gradients as an object keyed by position.
        return Array.isArray(grads) ? Object.fromEntries(grads.map((g, i) => [i, g])) : grads;
      },
    } as tf.GradConfig);
  }
}

registerGradients();
