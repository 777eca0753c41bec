// ReLU, 2x2 max pool, mean over space and the linear layer, over [tasks, batch, ...]
// activations. Each op: forward, reverse (x_grad from y_grad) and the tangents, which for
// these piecewise-linear or linear maps are the same map applied to the tangent
// (MATH.md, "ReLU", "2x2 max pool", "Mean over space", "Convolution and linear").
#pragma once
#include <algorithm>
#include <cstdint>

#include "gemm.h"
#include "parallel.h"
#include "reduce.h"

namespace maml {

// ReLU works in place: the mask is read back from the output (y > 0 exactly where x > 0).
constexpr int64_t kElementwiseBlock = 1 << 16;  // elements per thread unit: ~256 KiB of floats

template <class T>
void relu_forward(int64_t size, T* x) {
  parallel_ranges(size, kElementwiseBlock, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) x[i] = x[i] > T(0) ? x[i] : T(0);
  });
}
// Tangent and reverse rule alike: v <- [y > 0] v.
template <class T>
void relu_mask(int64_t size, const T* y, T* v) {
  parallel_ranges(size, kElementwiseBlock, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) v[i] = y[i] > T(0) ? v[i] : T(0);
  });
}

// 2x2 windows, stride 2, no padding ('VALID'); ties go to the first maximum in
// row-major window order, and the same index serves the tangent and reverse passes.
template <class T>
void max_pool_forward(int64_t planes, int h, int w, const T* x, T* y, int32_t* argmax) {
  const int oh = h / 2, ow = w / 2;
  parallel_for(planes, [&](int64_t p) {
    const T* in = x + p * h * w;
    T* out = y + p * oh * ow;
    int32_t* index = argmax + p * oh * ow;
    for (int oy = 0; oy < oh; ++oy)
      for (int ox = 0; ox < ow; ++ox) {
        int best = (2 * oy) * w + 2 * ox;
        const int candidates[3] = {best + 1, best + w, best + w + 1};
        for (int c : candidates)
          if (in[c] > in[best]) best = c;
        out[oy * ow + ox] = in[best];
        index[oy * ow + ox] = best;
      }
  });
}
template <class T>
void max_pool_gather(int64_t planes, int h, int w, const T* x, const int32_t* argmax, T* y) {
  const int64_t out_plane = int64_t(h / 2) * (w / 2);
  parallel_for(planes, [&](int64_t p) {
    for (int64_t i = 0; i < out_plane; ++i) y[p * out_plane + i] = x[p * h * w + argmax[p * out_plane + i]];
  });
}
template <class T>
void max_pool_scatter(int64_t planes, int h, int w, const T* y_grad, const int32_t* argmax, T* x_grad) {
  const int64_t out_plane = int64_t(h / 2) * (w / 2);
  parallel_for(planes, [&](int64_t p) {
    T* plane = x_grad + p * h * w;
    std::fill(plane, plane + h * w, T(0));
    for (int64_t i = 0; i < out_plane; ++i) plane[argmax[p * out_plane + i]] += y_grad[p * out_plane + i];
  });
}

template <class T>
void spatial_mean_forward(int64_t planes, int64_t plane, const T* x, T* y) {
  parallel_for(planes, [&](int64_t p) { y[p] = vector_sum(plane, x + p * plane) / T(plane); });
}
template <class T>
void spatial_mean_backward(int64_t planes, int64_t plane, const T* y_grad, T* x_grad) {
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t i = 0; i < plane; ++i) x_grad[p * plane + i] = y_grad[p] / T(plane);
}

// Linear: y[n, out] = x[n, in] W^T + b, with W [out, in] per task.
struct LinearShape {
  int tasks, batch, inputs, outputs;
};

template <class T>
void linear_forward(const LinearShape& s, const T* x, const T* const* weights, const T* const* biases, T* y,
                    bool accumulate) {
  parallel_for(s.tasks, [&](int64_t task) {
    T* out = y + task * s.batch * s.outputs;
    gemm<T>(s.batch, s.outputs, s.inputs, T(1), x + task * s.batch * s.inputs, row_major(s.inputs), weights[task],
            transposed(s.inputs), accumulate ? T(1) : T(0), out, s.outputs);
    if (biases && biases[task])
      for (int n = 0; n < s.batch; ++n)
        for (int o = 0; o < s.outputs; ++o) out[n * s.outputs + o] += biases[task][o];
  });
}
template <class T>
void linear_input_grad(const LinearShape& s, const T* y_grad, const T* const* weights, T* x_grad, bool accumulate) {
  parallel_for(s.tasks, [&](int64_t task) {
    gemm<T>(s.batch, s.inputs, s.outputs, T(1), y_grad + task * s.batch * s.outputs, row_major(s.outputs),
            weights[task], row_major(s.inputs), accumulate ? T(1) : T(0), x_grad + task * s.batch * s.inputs,
            s.inputs);
  });
}
template <class T>
void linear_weight_grad(const LinearShape& s, const T* x, const T* y_grad, T* const* weight_grads, T* const* bias_grads,
                        bool accumulate) {
  parallel_for(s.tasks, [&](int64_t task) {
    const T* yg = y_grad + task * s.batch * s.outputs;
    gemm<T>(s.outputs, s.inputs, s.batch, T(1), yg, transposed(s.outputs), x + task * s.batch * s.inputs,
            row_major(s.inputs), accumulate ? T(1) : T(0), weight_grads[task], s.inputs);
    if (bias_grads && bias_grads[task])
      for (int o = 0; o < s.outputs; ++o) {
        T sum = accumulate ? bias_grads[task][o] : T(0);
        for (int n = 0; n < s.batch; ++n) sum += yg[n * s.outputs + o];
        bias_grads[task][o] = sum;
      }
  });
}

}  // namespace maml
