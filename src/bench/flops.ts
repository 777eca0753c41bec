// FLOPs of the engine's passes, counted from the architecture (engine.layers()): the same
// rule as native/core/flop_count.h (pass_flops, meta_gradient_flops), kept in step with it.
// 2 FLOPs per multiply-add of every conv and linear layer; batch norm, ReLU, pooling, the
// loss and the parameter updates are left out (a few percent), so GFLOP/s is a slight
// underestimate.
import type { LayerEntry } from '../native/engine.js';

export const FLOP_RULE =
  'FLOPs counted from the architecture as native/core/flop_count.h does: 2 per multiply-add of each conv3x3 ' +
  '(m = out C*H*W * in C * 9) and linear layer (m = in C*H*W * outputs), nothing for batch norm, ReLU, pooling or the loss. ' +
  'Per example: forward 2m; forward+reverse adds 2m (weight gradient) + 2m (input gradient, not for the first layer); ' +
  'the tangent forward adds 2m (x\', W; not first) + 2m (x, W\'), the tangent reverse twice the reverse. ' +
  'Per task: steps x support forward+reverse (inner loop) + support forward (loss after) + query forward (loss before) ' +
  '+ query forward+reverse (meta-gradient) + [second order] steps x support forward+reverse with tangents (Hessian-vector products); ' +
  'times tasks.';

/** Multiply-adds of one example through one conv3x3 or linear layer; 0 for the others. */
export function layerMultiplyAdds(l: LayerEntry): number {
  const size = (s: [number, number, number]) => s[0] * s[1] * s[2];
  if (l.kind === 'conv3x3') return size(l.out) * l.in[0] * 9;
  if (l.kind === 'linear') return size(l.in) * l.out[0];
  return 0;
}

/** FLOPs of one pass over `examples` examples: forward, plus reverse, plus tangents (pass_flops). */
export function passFlops(layers: LayerEntry[], examples: number, backward: boolean, tangent: boolean): number {
  let total = 0;
  let first = true;
  for (const l of layers) {
    if (l.kind !== 'conv3x3' && l.kind !== 'linear') continue;
    const m = layerMultiplyAdds(l);
    const inputSide = first ? 0 : 1;
    let f = 2 * m;
    if (backward) f += 2 * m + inputSide * 2 * m;
    if (tangent) {
      f += 2 * m * (1 + inputSide);
      if (backward) f += 2 * m * (1 + inputSide) + inputSide * 2 * m * 2;
    }
    total += f * examples;
    first = false;
  }
  return total;
}

/** FLOPs of one engine.metaGradient call (meta_gradient_flops). */
export function metaGradientFlops(layers: LayerEntry[], tasks: number, support: number, query: number, steps: number,
                                  secondOrder: boolean, measureBefore = true): number {
  let perTask = steps * passFlops(layers, support, true, false);
  perTask += passFlops(layers, support, false, false);
  if (measureBefore) perTask += passFlops(layers, query, false, false);
  perTask += passFlops(layers, query, true, false);
  if (secondOrder) perTask += steps * passFlops(layers, support, true, true);
  return perTask * tasks;
}
