// Batch norm followed by a 2x2 max pool (miniimagenet's conv -> bn -> relu -> pool; the
// ReLU runs on the pooled values, network.h), fused so that the full-size normalised
// activations are never stored.
//   forward   x itself is pooled (by its largest or smallest value, as gamma's sign makes
//             the normalisation rise or fall), by the conv while its output is in cache or
//             else here, and only the pooled values are normalised: the pooled values,
//             their argmax and x there are written (a quarter of the values), and the
//             tangent is evaluated at the argmax alone
//   reverse   the pool's y_grad is zero except at the argmax, so the batch-norm sums run
//             over the pooled gradient and x at the argmax (kept by the forward), x_grad is written as its dense part and the
//             argmax entries are added on top: the full-size y_grad is never cleared,
//             scattered or read
// Same rules and names as batch_norm.h and simple_layers.h's max pool (MATH.md);
// tests/test_layers.cpp checks both directions against the unfused layers.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "batch_norm.h"
#include "parallel.h"
#include "simple_layers.h"

namespace maml {

// s: the batch norm's shape over the h x w input planes; pooled, argmax and x_at_argmax
// (x there, for the reverse rule) are [tasks, batch, channels, h/2, w/2], argmax indexing
// the input plane; x_sums as in batch_norm_forward. pooled_by_conv: argmax and x_at_argmax
// hold the pool already (conv.h's PoolByScale), so x is not read again.
template <class T>
void batch_norm_pool_forward(const BatchNormShape& s, int h, int w, T epsilon, const T* x, const T* const* gamma,
                             const T* const* beta, T* pooled, int32_t* argmax, T* x_at_argmax,
                             BatchNormStatistics<T>& stats,
                             const T* x_tangent, const T* const* gamma_tangent, const T* const* beta_tangent,
                             T* pooled_tangent, const double* x_sums = nullptr, bool pooled_by_conv = false) {
  const int64_t count = int64_t(s.tasks) * s.channels;
  const int oh = h / 2, ow = w / 2;
  const int64_t out_plane = int64_t(oh) * ow;
  stats.prepare(count, x_tangent != nullptr);
  parallel_for(count, [&](int64_t unit) {
    const int task = int(unit / s.channels), c = int(unit % s.channels);
    store_moments(s, epsilon, x, x_sums, task, c, unit, stats);
    const T mean = stats.mean[unit], inv_std = stats.inv_std[unit];
    const T g = gamma && gamma[task] ? gamma[task][c] : T(1);
    const T b = beta[task][c];
    // pool x where y is largest (simple_layers.h), unless the conv did as it stored x;
    // then normalise the pooled quarter
    for (int n = 0; n < s.batch; ++n) {
      const int64_t out = ((int64_t(task) * s.batch + n) * s.channels + c) * out_plane;
      if (!pooled_by_conv) pool_plane_by_sign(x + s.at(task, n, c), h, w, g, x_at_argmax + out, argmax + out);
      for (int64_t i = 0; i < out_plane; ++i) pooled[out + i] = g * (x_at_argmax[out + i] - mean) * inv_std + b;  // batch_norm_forward's y
    }
    if (!x_tangent) return;
    store_tangent_moments(s, x, x_tangent, task, c, unit, stats);
    const T t_mean = stats.tangent_mean[unit], t_xhat_mean = stats.tangent_xhat_mean[unit];
    const T g_dot = gamma_tangent && gamma_tangent[task] ? gamma_tangent[task][c] : T(0);
    const T b_dot = beta_tangent && beta_tangent[task] ? beta_tangent[task][c] : T(0);
    for (int n = 0; n < s.batch; ++n) {
      const T* t = x_tangent + s.at(task, n, c);
      const int64_t out = ((int64_t(task) * s.batch + n) * s.channels + c) * out_plane;
      for (int64_t i = 0; i < out_plane; ++i) {
        const int32_t a = argmax[out + i];
        const T x_hat = (x_at_argmax[out + i] - mean) * inv_std;
        const T x_hat_tangent = inv_std * (t[a] - t_mean - x_hat * t_xhat_mean);
        pooled_tangent[out + i] = g_dot * x_hat + g * x_hat_tangent + b_dot;
      }
    }
  });
}

template <class T>
inline void prefetch_plane(const T* p, int64_t size) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t at = 0; at < size * int64_t(sizeof(T)); at += 64) __builtin_prefetch(bytes + at, 0, 2);
}

// Reverse rule (and its tangent) from the pooled gradient: batch_norm_backward with
// y_grad = scatter(pooled_grad, argmax), written without that scatter.
template <class T>
void batch_norm_pool_backward(const BatchNormShape& s, int h, int w, const T* x, const T* const* gamma,
                              const BatchNormStatistics<T>& stats, const T* pooled_grad, const int32_t* argmax,
                              const T* x_at_argmax, T* x_grad, T* const* gamma_grad, T* const* beta_grad, const T* x_tangent,
                              const T* const* gamma_tangent, const T* pooled_grad_tangent, T* x_grad_tangent,
                              T* const* gamma_grad_tangent, T* const* beta_grad_tangent) {
  const int64_t count = int64_t(s.tasks) * s.channels;
  const int64_t out_plane = int64_t(h / 2) * (w / 2);
  const T inv_m = T(1) / T(s.positions());
  const bool tangent = x_tangent != nullptr;
  parallel_for(count, [&](int64_t unit) {
    const int task = int(unit / s.channels), c = int(unit % s.channels);
    ChannelReverse<T> k(stats, unit, gamma, gamma_tangent, tangent, task, c);
    const T mean = k.mean, inv_std = k.inv_std, t_mean = k.t_mean, t_xhat_mean = k.t_xhat_mean;
    const auto pooled_at = [&](int n) { return ((int64_t(task) * s.batch + n) * s.channels + c) * out_plane; };
    // the sums, over the argmax positions only (y_grad is zero elsewhere), in 8 interleaved
    // partial sums: one running sum is a chain of dependent adds (fixed order: no
    // dependence on threads)
    constexpr int L = 8;
    T sums[5][L] = {};  // y_grad, y_grad x_hat, y_grad', y_grad' x_hat, y_grad x_hat'
    for (int n = 0; n < s.batch; ++n) {
      const T* xt = tangent ? x_tangent + s.at(task, n, c) : nullptr;
      const int64_t o = pooled_at(n);
      // the tangent's argmax reads are gathers, which the hardware prefetcher does not
      // follow: fetch the next example's plane while this one is summed
      if (tangent && n + 1 < s.batch) prefetch_plane(x_tangent + s.at(task, n + 1, c), s.plane);
      for (int64_t i0 = 0; i0 < out_plane; i0 += L) {
        const int lanes = int(std::min<int64_t>(L, out_plane - i0));
        for (int l = 0; l < lanes; ++l) {
          const int64_t i = o + i0 + l;
          const T yg = pooled_grad[i], x_hat = (x_at_argmax[i] - mean) * inv_std;
          sums[0][l] += yg;
          sums[1][l] += yg * x_hat;
          if (!tangent) continue;
          const T ygt = pooled_grad_tangent[i];
          sums[2][l] += ygt;
          sums[3][l] += ygt * x_hat;
          sums[4][l] += yg * inv_std * (xt[argmax[i]] - t_mean - x_hat * t_xhat_mean);
        }
      }
    }
    T total[5];
    for (int k = 0; k < 5; ++k) {
      for (int width = L / 2; width > 0; width /= 2)
        for (int l = 0; l < width; ++l) sums[k][l] += sums[k][l + width];
      total[k] = sums[k][0];
    }
    k.finish(total, inv_m, tangent, task, c, gamma_grad, beta_grad, gamma_grad_tangent, beta_grad_tangent);
    if (!x_grad) return;
    const T g = k.g, g_dot = k.g_dot, a = k.a, b = k.b, a_t = k.a_t, b_t = k.b_t, s_t_over_s = k.s_t_over_s;
    for (int n = 0; n < s.batch; ++n) {
      const int64_t o = s.at(task, n, c), po = pooled_at(n);
      const T* __restrict xs = x + o;
      T* __restrict xg = x_grad + o;
      // the dense part (y_grad = 0), then the argmax entries on top
      if (!tangent) {
        for (int64_t i = 0; i < s.plane; ++i) xg[i] = inv_std * (-a - (xs[i] - mean) * inv_std * b);
        for (int64_t i = 0; i < out_plane; ++i) xg[argmax[po + i]] += inv_std * g * pooled_grad[po + i];
        continue;
      }
      const T* __restrict xt = x_tangent + o;
      T* __restrict xgt = x_grad_tangent + o;
      for (int64_t i = 0; i < s.plane; ++i) {
        const T x_hat = (xs[i] - mean) * inv_std;
        const T grad = inv_std * (-a - x_hat * b);
        const T x_hat_t = inv_std * (xt[i] - t_mean - x_hat * t_xhat_mean);
        xg[i] = grad;
        xgt[i] = s_t_over_s * grad + inv_std * (-a_t - x_hat_t * b - x_hat * b_t);
      }
      for (int64_t i = 0; i < out_plane; ++i) {
        const int32_t at = argmax[po + i];
        const T yg = pooled_grad[po + i], ygt = pooled_grad_tangent[po + i];
        const T grad = inv_std * g * yg;
        xg[at] += grad;
        xgt[at] += s_t_over_s * grad + inv_std * (g_dot * yg + g * ygt);
      }
    }
  });
}

}  // namespace maml
