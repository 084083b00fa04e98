/**
 * Names for the tfjs tensor types that appear in this package's public signatures, so the
 * API documents them (they are tfjs-core's own types, not wrappers).
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";

/** A tfjs tensor of any rank. */
export type Tensor = tf.Tensor;
/** A tfjs rank-0 tensor (a loss). */
export type Scalar = tf.Scalar;
/** A tfjs rank-1 tensor, e.g. per-position losses `[P]`. */
export type Tensor1D = tf.Tensor1D;
/** A tfjs rank-2 tensor, e.g. scores `[B, N + 1]`. */
export type Tensor2D = tf.Tensor2D;
/** A tfjs rank-3 tensor, e.g. hidden states `[B, L, d]`. */
export type Tensor3D = tf.Tensor3D;
/** A trainable tfjs variable. */
export type Variable = tf.Variable;
/** A tfjs rank-4 tensor, e.g. attention masks `[B, 1, L, L]`. */
export type Tensor4D = tf.Tensor4D;
