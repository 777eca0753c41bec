// Adam as TensorFlow's AdamOptimizer computes it (the original trains with it): the bias
// correction folded into the step size, epsilon added to sqrt(v) uncorrected.
//   lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t);  theta -= lr_t m / (sqrt(v) + epsilon)
// The state is plain arrays, saved in checkpoints, so a resumed run continues exactly.
export interface AdamState {
  step: number;
  m: Float64Array;
  v: Float64Array;
}

export interface AdamOptions {
  learningRate: number;
  beta1?: number;
  beta2?: number;
  epsilon?: number;
}

export function createAdamState(size: number): AdamState {
  return { step: 0, m: new Float64Array(size), v: new Float64Array(size) };
}

/** Updates parameters in place and advances the state. */
export function adamStep(parameters: Float32Array | Float64Array, gradient: ArrayLike<number>, state: AdamState, options: AdamOptions): void {
  const { learningRate, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 } = options;
  if (gradient.length !== parameters.length) throw new Error(`Adam: gradient has ${gradient.length} values for ${parameters.length} parameters`);
  state.step += 1;
  const t = state.step;
  const rate = (learningRate * Math.sqrt(1 - beta2 ** t)) / (1 - beta1 ** t);
  const { m, v } = state;
  for (let i = 0; i < parameters.length; i++) {
    const g = gradient[i];
    m[i] = beta1 * m[i] + (1 - beta1) * g;
    v[i] = beta2 * v[i] + (1 - beta2) * g * g;
    parameters[i] -= (rate * m[i]) / (Math.sqrt(v[i]) + epsilon);
  }
}

/** Elementwise clipping to [-limit, limit], as the original does for MiniImagenet. */
export function clipElementwise(gradient: Float32Array | Float64Array, limit: number): Float32Array | Float64Array {
  const out = gradient.slice();
  for (let i = 0; i < out.length; i++) out[i] = Math.min(limit, Math.max(-limit, out[i]));
  return out;
}
