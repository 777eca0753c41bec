// FLOPs of the engine's passes, counted from the architecture: 2 per multiply-add of every
// conv and linear layer (the rest is a few percent and left out, so GFLOP/s is a slight
// underestimate). Forward 2m per example; reverse 2m (weight) + 2m (input, not for the
// first layer); the tangent forward adds 2m (x', W, not first) + 2m (x, W'); the tangent
// reverse adds twice the reverse (both products of each bilinear rule).
#pragma once
#include "architecture.h"
#include "meta_learner.h"

namespace maml {

inline double pass_flops(const Architecture& a, double examples, bool backward, bool tangent) {
  double total = 0;
  bool first = true;
  for (const Layer& l : a.layers) {
    double m = 0;
    if (l.kind == LayerKind::Conv3x3) m = double(l.out.size()) * l.in.channels * 9;
    else if (l.kind == LayerKind::Linear) m = double(l.in.size()) * l.out.channels;
    else continue;
    const double input_side = first ? 0 : 1;
    double f = 2 * m;
    if (backward) f += 2 * m + input_side * 2 * m;
    if (tangent) {
      f += 2 * m * (1 + input_side);
      if (backward) f += 2 * m * (1 + input_side) + input_side * 2 * m * 2;
    }
    total += f * examples;
    first = false;
  }
  return total;
}

// FLOPs of one meta_gradient call, as MetaLearner runs it.
inline double meta_gradient_flops(const Architecture& a, int tasks, int support, int query, int steps, bool second_order,
                                  bool measure_before = true) {
  double per_task = steps * pass_flops(a, support, true, false);   // inner loop
  per_task += pass_flops(a, support, false, false);                // support loss after
  if (measure_before) per_task += pass_flops(a, query, false, false);
  per_task += pass_flops(a, query, true, false);                   // query gradient
  if (second_order) per_task += steps * pass_flops(a, support, true, true);  // Hessian-vector products
  return per_task * tasks;
}

}  // namespace maml
