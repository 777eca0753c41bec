// Batch norm with the statistics of the current call, per task and channel, over the
// m = batch * height * width positions (biased variance), as the original MAML uses it
// at training and at test time. Rules and names follow MATH.md, "Batch norm":
//   forward   x_hat = (x - mean) s,  s = (var + eps)^(-1/2),  y = gamma x_hat + beta
//   reverse   g = gamma y_grad;  x_grad = s (g - mean(g) - x_hat mean(g x_hat))
//   tangent   s_tangent = -s^2 mean(x_hat x_tangent)
//             x_hat_tangent = s (x_tangent - mean(x_tangent) - x_hat mean(x_hat x_tangent))
// Checked against finite differences in tests/test_layers.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"
#include "reduce.h"

namespace maml {

template <class T>
struct BatchNormStatistics {
  // per (task, channel)
  std::vector<T> mean, inv_std;
  std::vector<T> tangent_mean, tangent_xhat_mean;  // mean(x_tangent), mean(x_hat x_tangent)
  void prepare(int64_t count, bool tangent) {
    mean.resize(count);
    inv_std.resize(count);
    if (!tangent) return;
    tangent_mean.resize(count);
    tangent_xhat_mean.resize(count);
  }
};

struct BatchNormShape {
  int tasks, batch, channels;
  int64_t plane;  // height * width
  int64_t positions() const { return batch * plane; }
  // offset of (task, n, channel)'s plane
  int64_t at(int task, int n, int c) const { return ((int64_t(task) * batch + n) * channels + c) * plane; }
};

// Mean and (var + eps)^(-1/2) of channel c of a task, in two passes (the variance about
// the mean: one pass of sum and sum of squares cancels badly in float, see DESIGN.md).
template <class T>
void batch_norm_moments(const BatchNormShape& s, T epsilon, const T* x, int task, int c, T* mean, T* inv_std) {
  const T inv_m = T(1) / T(s.positions());
  T sum[1] = {0};
  for (int n = 0; n < s.batch; ++n) {
    const T* p = x + s.at(task, n, c);
    lane_sums<T, 1>(s.plane, sum, [&](auto load, auto* t) { t[0] = load(p); });
  }
  const T m = sum[0] * inv_m;
  T squares[1] = {0};
  for (int n = 0; n < s.batch; ++n) {
    const T* p = x + s.at(task, n, c);
    lane_sums<T, 1>(s.plane, squares, [&](auto load, auto* t) { t[0] = (load(p) - m) * (load(p) - m); });
  }
  *mean = m;
  *inv_std = T(1) / std::sqrt(squares[0] * inv_m + epsilon);
}

// The same from sums of x and x^2 per example and channel ([tasks * batch][channels][2],
// double: the conv before the batch norm adds them up as it stores its output, so the two
// passes above are saved). In double the variance E[x^2] - E[x]^2 of float values keeps
// about 10 more digits than float's two-pass result.
template <class T>
void batch_norm_moments_from_sums(const BatchNormShape& s, T epsilon, const double* sums, int task, int c, T* mean,
                                  T* inv_std) {
  double sum = 0, squares = 0;
  for (int n = 0; n < s.batch; ++n) {
    const double* m = sums + ((int64_t(task) * s.batch + n) * s.channels + c) * 2;
    sum += m[0];
    squares += m[1];
  }
  const double count = double(s.positions()), mu = sum / count;
  const double variance = std::max(0.0, squares / count - mu * mu);
  *mean = T(mu);
  *inv_std = T(1 / std::sqrt(variance + double(epsilon)));
}

// mean(x') and mean(x_hat x') of channel c of a task.
template <class T>
void batch_norm_tangent_moments(const BatchNormShape& s, const T* x, const T* x_tangent, int task, int c, T mean,
                                T inv_std, T* tangent_mean, T* tangent_xhat_mean) {
  const T inv_m = T(1) / T(s.positions());
  T sums[2] = {0, 0};  // sum(x'), sum(x_hat x')
  for (int n = 0; n < s.batch; ++n) {
    const T* p = x + s.at(task, n, c);
    const T* t = x_tangent + s.at(task, n, c);
    lane_sums<T, 2>(s.plane, sums, [&](auto load, auto* out) {
      out[0] = load(t);
      out[1] = (load(p) - mean) * inv_std * load(t);
    });
  }
  *tangent_mean = sums[0] * inv_m;
  *tangent_xhat_mean = sums[1] * inv_m;
}

// The statistics of unit (task, c) into stats: from the conv's sums where given
// (batch_norm_moments_from_sums), else in two passes; with x_tangent, its tangent part too.
template <class T>
void store_moments(const BatchNormShape& s, T epsilon, const T* x, const double* x_sums, int task, int c, int64_t unit,
                   BatchNormStatistics<T>& stats) {
  if (x_sums)
    batch_norm_moments_from_sums(s, epsilon, x_sums, task, c, &stats.mean[unit], &stats.inv_std[unit]);
  else
    batch_norm_moments(s, epsilon, x, task, c, &stats.mean[unit], &stats.inv_std[unit]);
}
template <class T>
void store_tangent_moments(const BatchNormShape& s, const T* x, const T* x_tangent, int task, int c, int64_t unit,
                           BatchNormStatistics<T>& stats) {
  batch_norm_tangent_moments(s, x, x_tangent, task, c, stats.mean[unit], stats.inv_std[unit], &stats.tangent_mean[unit],
                             &stats.tangent_xhat_mean[unit]);
}

// What both reverse rules (batch_norm_backward here, batch_norm_pool_backward) need of one
// (task, channel): its statistics and scale, and, from the five sums over y_grad, the
// parameter gradients (written) and the coefficients of
//   x_grad = s (gamma y_grad - a - x_hat b),   x_grad' = (s'/s) x_grad + s (g' - a' - x_hat' b - x_hat b').
template <class T>
struct ChannelReverse {
  T mean, inv_std, g, g_dot, t_mean, t_xhat_mean;
  T a = 0, b = 0, a_t = 0, b_t = 0, s_t_over_s = 0;
  ChannelReverse(const BatchNormStatistics<T>& stats, int64_t unit, const T* const* gamma,
                 const T* const* gamma_tangent, bool tangent, int task, int c)
      : mean(stats.mean[unit]),
        inv_std(stats.inv_std[unit]),
        g(gamma && gamma[task] ? gamma[task][c] : T(1)),
        g_dot(tangent && gamma_tangent && gamma_tangent[task] ? gamma_tangent[task][c] : T(0)),
        t_mean(tangent ? stats.tangent_mean[unit] : T(0)),
        t_xhat_mean(tangent ? stats.tangent_xhat_mean[unit] : T(0)) {}
  // sums: y_grad, y_grad x_hat, y_grad', y_grad' x_hat, y_grad x_hat' (the last three with tangents)
  void finish(const T (&sums)[5], T inv_m, bool tangent, int task, int c, T* const* gamma_grad, T* const* beta_grad,
              T* const* gamma_grad_tangent, T* const* beta_grad_tangent) {
    if (beta_grad && beta_grad[task]) beta_grad[task][c] = sums[0];
    if (gamma_grad && gamma_grad[task]) gamma_grad[task][c] = sums[1];
    if (tangent) {
      if (beta_grad_tangent && beta_grad_tangent[task]) beta_grad_tangent[task][c] = sums[2];
      if (gamma_grad_tangent && gamma_grad_tangent[task]) gamma_grad_tangent[task][c] = sums[3] + sums[4];
    }
    // with g = gamma y_grad: a = mean(g), b = mean(g x_hat); g' = gamma' y_grad + gamma y_grad'
    a = g * sums[0] * inv_m;
    b = g * sums[1] * inv_m;
    a_t = (g_dot * sums[0] + g * sums[2]) * inv_m;
    b_t = (g_dot * sums[1] + g * sums[3] + g * sums[4]) * inv_m;
    s_t_over_s = -inv_std * t_xhat_mean;  // s' / s = -s mean(x_hat x')
  }
};

// gamma/beta: per task pointers (gamma may be null: scale 1). Tangents of x, gamma and beta
// are optional (null: no tangent pass). x_sums (or null): the conv's sums of x and x^2
// (batch_norm_moments_from_sums).
template <class T>
void batch_norm_forward(const BatchNormShape& s, T epsilon, const T* x, const T* const* gamma, const T* const* beta,
                        T* y, BatchNormStatistics<T>& stats, const T* x_tangent, const T* const* gamma_tangent,
                        const T* const* beta_tangent, T* y_tangent, const double* x_sums = nullptr) {
  const int64_t count = int64_t(s.tasks) * s.channels;
  stats.prepare(count, x_tangent != nullptr);
  parallel_for(count, [&](int64_t unit) {
    const int task = int(unit / s.channels), c = int(unit % s.channels);
    store_moments(s, epsilon, x, x_sums, task, c, unit, stats);
    const T mean = stats.mean[unit], inv_std = stats.inv_std[unit];
    const T g = gamma && gamma[task] ? gamma[task][c] : T(1);
    const T b = beta[task][c];
    // restrict: no overlap check per plane (Omniglot's hold 4 to 196 values)
    for (int n = 0; n < s.batch; ++n) {
      const T* __restrict p = x + s.at(task, n, c);
      T* __restrict q = y + s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) q[i] = g * (p[i] - mean) * inv_std + b;
    }
    if (!x_tangent) return;
    store_tangent_moments(s, x, x_tangent, task, c, unit, stats);
    const T tangent_mean = stats.tangent_mean[unit], tangent_xhat_mean = stats.tangent_xhat_mean[unit];
    const T g_dot = gamma_tangent && gamma_tangent[task] ? gamma_tangent[task][c] : T(0);
    const T b_dot = beta_tangent && beta_tangent[task] ? beta_tangent[task][c] : T(0);
    for (int n = 0; n < s.batch; ++n) {
      const T* __restrict p = x + s.at(task, n, c);
      const T* __restrict t = x_tangent + s.at(task, n, c);
      T* __restrict q = y_tangent + s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) {
        const T x_hat = (p[i] - mean) * inv_std;
        const T x_hat_tangent = inv_std * (t[i] - tangent_mean - x_hat * tangent_xhat_mean);
        q[i] = g_dot * x_hat + g * x_hat_tangent + b_dot;
      }
    }
  });
}

// Reverse rule and, when the *_tangent pointers are given, its tangent (MATH.md):
//   g' = gamma' y_grad + gamma y_grad';  a' = mean(g');  b' = mean(g' x_hat + g x_hat')
//   x_grad' = (s'/s) x_grad + s (g' - a' - x_hat' b - x_hat b')
//   beta_grad' = sum(y_grad');  gamma_grad' = sum(y_grad' x_hat + y_grad x_hat')
// x_grad may be null (first layer). Parameter gradients are written, not accumulated.
template <class T>
void batch_norm_backward(const BatchNormShape& s, const T* x, const T* const* gamma, const BatchNormStatistics<T>& stats,
                         const T* y_grad, T* x_grad, T* const* gamma_grad, T* const* beta_grad, const T* x_tangent,
                         const T* const* gamma_tangent, const T* y_grad_tangent, T* x_grad_tangent,
                         T* const* gamma_grad_tangent, T* const* beta_grad_tangent) {
  const int64_t count = int64_t(s.tasks) * s.channels;
  const T inv_m = T(1) / T(s.positions());
  const bool tangent = x_tangent != nullptr;
  parallel_for(count, [&](int64_t unit) {
    const int task = int(unit / s.channels), c = int(unit % s.channels);
    ChannelReverse<T> k(stats, unit, gamma, gamma_tangent, tangent, task, c);
    const T mean = k.mean, inv_std = k.inv_std, t_mean = k.t_mean, t_xhat_mean = k.t_xhat_mean;
    // pass 1: the sums every rule needs
    T sums[2] = {0, 0};            // sum(y_grad), sum(y_grad x_hat)
    T tangent_sums[3] = {0, 0, 0};  // sum(y_grad'), sum(y_grad' x_hat), sum(y_grad x_hat')
    for (int n = 0; n < s.batch; ++n) {
      const int64_t o = s.at(task, n, c);
      const T *xs = x + o, *yg = y_grad + o;
      lane_sums<T, 2>(s.plane, sums, [&](auto load, auto* out) {
        out[0] = load(yg);
        out[1] = load(yg) * (load(xs) - mean) * inv_std;
      });
      if (!tangent) continue;
      const T *xt = x_tangent + o, *ygt = y_grad_tangent + o;
      lane_sums<T, 3>(s.plane, tangent_sums, [&](auto load, auto* out) {
        const auto x_hat = (load(xs) - mean) * inv_std;
        const auto x_hat_t = inv_std * (load(xt) - t_mean - x_hat * t_xhat_mean);
        out[0] = load(ygt);
        out[1] = load(ygt) * x_hat;
        out[2] = load(yg) * x_hat_t;
      });
    }
    const T all[5] = {sums[0], sums[1], tangent_sums[0], tangent_sums[1], tangent_sums[2]};
    k.finish(all, inv_m, tangent, task, c, gamma_grad, beta_grad, gamma_grad_tangent, beta_grad_tangent);
    if (!x_grad) return;
    const T g = k.g, g_dot = k.g_dot, a = k.a, b = k.b, a_t = k.a_t, b_t = k.b_t, s_t_over_s = k.s_t_over_s;
    // two loops, not one with a branch inside, so that each vectorises
    for (int n = 0; n < s.batch; ++n) {
      const int64_t o = s.at(task, n, c);
      const T* __restrict xs = x + o;
      const T* __restrict yg = y_grad + o;
      T* __restrict xg = x_grad + o;
      if (!tangent) {
        for (int64_t i = 0; i < s.plane; ++i) xg[i] = inv_std * (g * yg[i] - a - (xs[i] - mean) * inv_std * b);
        continue;
      }
      const T* __restrict xt = x_tangent + o;
      const T* __restrict ygt = y_grad_tangent + o;
      T* __restrict xgt = x_grad_tangent + o;
      for (int64_t i = 0; i < s.plane; ++i) {
        const T x_hat = (xs[i] - mean) * inv_std;
        const T grad = inv_std * (g * yg[i] - a - x_hat * b);
        const T x_hat_t = inv_std * (xt[i] - t_mean - x_hat * t_xhat_mean);
        const T gi_t = g_dot * yg[i] + g * ygt[i];
        xg[i] = grad;
        xgt[i] = s_t_over_s * grad + inv_std * (gi_t - a_t - x_hat_t * b - x_hat * b_t);
      }
    }
  });
}

}  // namespace maml
