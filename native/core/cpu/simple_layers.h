// ReLU, 2x2 max pool, mean over space and the linear layer, over [tasks, batch, ...]
// activations. Each op: forward, reverse (x_grad from y_grad) and the tangents, which for
// these piecewise-linear or linear maps are the same map applied to the tangent
// (MATH.md, "ReLU", "2x2 max pool", "Mean over space", "Convolution and linear").
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

// One output row of a 2x2 max pool from input rows top and top + w; `row` is top's offset in
// its plane. Ties go to the first maximum in row-major window order.
template <class T>
inline void max_pool_row_scalar(const T* top, int32_t row, int w, int ox0, int ow, T* value, int32_t* at) {
  for (int ox = ox0; ox < ow; ++ox) {
    int best = 2 * ox;
    const int candidates[3] = {best + 1, best + w, best + w + 1};
    for (int c : candidates)
      if (top[c] > top[best]) best = c;
    value[ox] = top[best];
    at[ox] = row + best;
  }
}
template <class T>
inline void max_pool_row(const T* top, int32_t row, int w, int ow, T* value, int32_t* at) {
  max_pool_row_scalar(top, row, w, 0, ow, value, at);
}
#if defined(__AVX2__)
// Eight outputs at a time: even/odd input columns split by shuffles, then three
// compare-and-blend steps in the scalar order (strictly greater wins, so ties match).
template <>
inline void max_pool_row<float>(const float* top, int32_t row, int w, int ow, float* value, int32_t* at) {
  const auto split = [](const float* p, __m256& even, __m256& odd) {
    const __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  };
  const __m256i lane_offsets = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  int ox = 0;
  for (; ox + 8 <= ow; ox += 8) {
    __m256 a, b, c, d;
    split(top + 2 * ox, a, b);
    split(top + w + 2 * ox, c, d);
    const __m256i base = _mm256_add_epi32(_mm256_set1_epi32(row + 2 * ox), lane_offsets);
    __m256 best = a;
    __m256i best_at = base;
    const auto take = [&](__m256 candidate, int shift) {
      const __m256 greater = _mm256_cmp_ps(candidate, best, _CMP_GT_OQ);
      best = _mm256_blendv_ps(best, candidate, greater);
      best_at = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best_at),
                                                     _mm256_castsi256_ps(_mm256_add_epi32(base, _mm256_set1_epi32(shift))),
                                                     greater));
    };
    take(b, 1);
    take(c, w);
    take(d, w + 1);
    _mm256_storeu_ps(value + ox, best);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + ox), best_at);
  }
  max_pool_row_scalar(top, row, w, ox, ow, value, at);
}
#endif

// One plane's 2x2 pool taken where g x is largest: with g the scale of a batch norm
// before the pool, whose y = g (x - mean) s + b is monotone in x in every rounded step
// (rising for g > 0, falling for g < 0), that is where y is largest, first of equals as
// max_pool_row. g = 0 (or NaN) makes every y equal: the first candidate. Writes x there
// and its index in the plane (batch_norm_pool.h normalises just these values).
template <class T>
void pool_plane_by_sign(const T* x, int h, int w, T g, T* x_at, int32_t* at) {
  const int oh = h / 2, ow = w / 2;
  thread_local std::vector<T> negated;
  negated.resize(size_t(2) * w);
  for (int oy = 0; oy < oh; ++oy) {
    const T* in = x + int64_t(2 * oy) * w;
    T* value = x_at + oy * ow;
    int32_t* index = at + oy * ow;
    if (g > T(0)) {
      max_pool_row(in, 2 * oy * w, w, ow, value, index);
    } else if (g < T(0)) {
      for (int i = 0; i < 2 * w; ++i) negated[i] = -in[i];
      max_pool_row(negated.data(), 2 * oy * w, w, ow, value, index);
      for (int ox = 0; ox < ow; ++ox) value[ox] = -value[ox];
    } else {
      for (int ox = 0; ox < ow; ++ox) {
        index[ox] = 2 * oy * w + 2 * ox;
        value[ox] = in[2 * ox];
      }
    }
  }
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
      max_pool_row(in + (2 * oy) * w, (2 * oy) * w, w, ow, out + oy * ow, index + oy * ow);
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
