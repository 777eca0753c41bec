// Losses with a reduction weight w per task (MATH.md, "Softmax cross-entropy" and
// "Mean squared error"): w = 1/n for 'mean', w = 1/K for the original's 'sum-over-shots'.
// Each returns the loss and writes the logits' gradient and, given the logits' tangent,
// the gradient's tangent.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace maml {

// z [n, classes], labels [n]. Returns the weighted loss; correct counts argmax hits.
template <class T>
T softmax_cross_entropy(int n, int classes, T weight, const T* z, const int32_t* labels, T* z_grad, const T* z_tangent,
                        T* z_grad_tangent, int* correct) {
  T loss = 0;
  int hits = 0;
  std::vector<T> p(classes);
  for (int i = 0; i < n; ++i) {
    const T* zi = z + int64_t(i) * classes;
    int best = 0;
    for (int c = 1; c < classes; ++c)
      if (zi[c] > zi[best]) best = c;
    hits += best == labels[i];
    const T top = zi[best];
    T sum = 0;
    for (int c = 0; c < classes; ++c) sum += (p[c] = std::exp(zi[c] - top));
    for (int c = 0; c < classes; ++c) p[c] /= sum;
    loss += std::log(sum) + top - zi[labels[i]];
    if (z_grad)
      for (int c = 0; c < classes; ++c) z_grad[int64_t(i) * classes + c] = weight * (p[c] - T(c == labels[i]));
    if (z_tangent) {
      const T* zt = z_tangent + int64_t(i) * classes;
      T dot = 0;
      for (int c = 0; c < classes; ++c) dot += p[c] * zt[c];
      for (int c = 0; c < classes; ++c) z_grad_tangent[int64_t(i) * classes + c] = weight * p[c] * (zt[c] - dot);
    }
  }
  if (correct) *correct = hits;
  return weight * loss;
}

// z, targets [n, outputs]: L = w sum ||z - t||^2.
template <class T>
T squared_error(int n, int outputs, T weight, const T* z, const T* targets, T* z_grad, const T* z_tangent,
                T* z_grad_tangent) {
  T loss = 0;
  const int64_t size = int64_t(n) * outputs;
  for (int64_t i = 0; i < size; ++i) {
    const T d = z[i] - targets[i];
    loss += d * d;
    if (z_grad) z_grad[i] = T(2) * weight * d;
    if (z_tangent) z_grad_tangent[i] = T(2) * weight * z_tangent[i];
  }
  return weight * loss;
}

}  // namespace maml
