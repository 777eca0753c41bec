// 3x3 convolution over a batch of tasks, each with its own weights: which kernel runs.
//
// Shapes: x [tasks, batch, cin, h, w], y [tasks, batch, cout, oh, ow], weights per task
// [cout, cin, 3, 3] (a row-major [cout, cin*9] matrix), biases per task [cout]. Padding
// is given as rows/columns of zeros before the image (conv_geometry.h).
//
// The three rules (MATH.md, "Convolution and linear"):
//   forward        y  = conv(x, W) + b
//   input grad     x_grad = conv_transpose(y_grad, W)
//   weight grad    W_grad = correlate(x, y_grad),  b_grad = sum(y_grad)
// Tangents reuse the same functions with accumulate = true, because the layer is
// bilinear in (x, W). Float layers with few input channels at stride 1 (miniimagenet's
// input layer) use the direct kernels of conv_direct.h; every other layer reads shifted,
// strided views of bordered planes through indirect GEMM tiles (conv_indirect.h), with
// no im2col matrix. Checked against the definition in tests/test_layers.cpp.
#pragma once
#include <algorithm>
#include <type_traits>

#include "conv_direct.h"
#include "conv_geometry.h"
#include "conv_indirect.h"
#include "conv_pool.h"
#include "parallel.h"
#include "reduce.h"

namespace maml {

// moments (or null, accumulate false): [tasks * batch][cout][2] = sums of y and y^2 over
// each example's output planes, in double (some slots of a task may hold 0 and another
// the whole group's sums: only their sum over the task's examples is meaningful).
// pool (or null, accumulate false): pool every output plane as it is stored (conv_pool.h).
// kept (or null): x's bordered planes, filled by the first call that gets them and read
// by the later ones of the same x (indirect layers; the direct kernel borders its own).
template <class T>
void conv_forward(const ConvGeometry& g, int tasks, int batch, const T* x, const T* const* weights,
                  const T* const* biases, T* y, bool accumulate, double* moments = nullptr,
                  const PoolByScale<T>* pool = nullptr, indirect_conv::KeptPlanes<T>* kept = nullptr) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same<T, float>::value) {
    if (conv_is_direct<T>(g)) {
      // few examples (one task's support set): units of some output channels of an example
      const int blocks = g.cout / 4, parts = parts_for_balance(int64_t(tasks) * batch, blocks);
      parallel_for(int64_t(tasks) * batch * parts, [&](int64_t unit) {
        const int64_t example = unit / parts;
        const int task = int(example / batch), part = int(unit % parts);
        thread_local direct_conv::Bordered bordered;
        direct_conv::forward_example(g, x + example * g.in_size(), weights[task], biases ? biases[task] : nullptr,
                                     accumulate, y + example * g.out_size(), bordered,
                                     moments ? moments + example * g.cout * 2 : nullptr, part * blocks / parts * 4,
                                     (part + 1) * blocks / parts * 4, pool, task, example);
      });
      return;
    }
  }
#endif
  indirect_conv::forward(g, tasks, batch, x, weights, biases, y, accumulate, moments, pool, kept);
}

// With a second pair (y_grad2, weights2) the result is convT(y_grad, W) + convT(y_grad2, W2)
// (the tangent rule needs exactly that sum).
template <class T>
void conv_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, const T* const* weights, T* x_grad,
                     bool accumulate, const T* y_grad2 = nullptr, const T* const* weights2 = nullptr) {
  indirect_conv::input_grad(g, tasks, batch, y_grad, weights, x_grad, accumulate);
  if (y_grad2) indirect_conv::input_grad(g, tasks, batch, y_grad2, weights2, x_grad, true);
}

// b_grad[task][co] (+)= sum of y_grad over the task's examples and positions.
template <class T>
void conv_bias_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, T* const* bias_grads, bool accumulate) {
  if (!bias_grads) return;
  parallel_for(int64_t(tasks) * g.cout, [&](int64_t unit) {
    const int task = int(unit / g.cout), co = int(unit % g.cout);
    T* db = bias_grads[task];
    if (!db) return;
    T sum = accumulate ? db[co] : T(0);
    for (int n = 0; n < batch; ++n)
      sum += vector_sum(g.out_plane(), y_grad + (int64_t(task) * batch + n) * g.out_size() + co * g.out_plane());
    db[co] = sum;
  });
}

template <class T>
void conv_weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad, T* const* weight_grads,
                      T* const* bias_grads, bool accumulate, const indirect_conv::KeptPlanes<T>* kept = nullptr) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same<T, float>::value) {
    if (conv_is_direct<T>(g)) {
      // Units own whole tasks where there are enough of them (each image is bordered once
      // for all output channels), else four output channels of one task (each unit borders
      // every image again): either way a unit owns its rows of dw, so nothing races.
      const int blocks = tasks >= thread_count() ? 1 : g.cout / 4, channels = g.cout / blocks;
      parallel_for(int64_t(tasks) * blocks, [&](int64_t unit) {
        const int task = int(unit / blocks), c0 = int(unit % blocks) * channels;
        T* dw = weight_grads[task];
        if (!accumulate) std::fill(dw + int64_t(c0) * g.depth(), dw + int64_t(c0 + channels) * g.depth(), T(0));
        thread_local direct_conv::Bordered bordered;
        for (int n = 0; n < batch; ++n) {
          const int64_t example = int64_t(task) * batch + n;
          bordered.fill(g, x + example * g.in_size());
          for (int co = c0; co < c0 + channels; co += 4)
            direct_conv::weight_grad_example(g, bordered, y_grad + example * g.out_size(), co, dw);
        }
      });
      conv_bias_grad(g, tasks, batch, y_grad, bias_grads, accumulate);
      return;
    }
  }
#endif
  indirect_conv::weight_grad(g, tasks, batch, x, y_grad, weight_grads, accumulate, kept);
  conv_bias_grad(g, tasks, batch, y_grad, bias_grads, accumulate);
}

}  // namespace maml
