// Batch norm with the statistics of the current call, per task and channel, over the
// m = batch * height * width positions (biased variance), as the original MAML uses it
// at training and at test time. Rules and names follow MATH.md, "Batch norm":
//   forward   x_hat = (x - mean) s,  s = (var + eps)^(-1/2),  y = gamma x_hat + beta
//   reverse   g = gamma y_grad;  x_grad = s (g - mean(g) - x_hat mean(g x_hat))
//   tangent   s_tangent = -s^2 mean(x_hat x_tangent)
//             x_hat_tangent = s (x_tangent - mean(x_tangent) - x_hat mean(x_hat x_tangent))
// Checked against finite differences in tests/test_layers.cpp.
#pragma once
#include <cmath>
#include <vector>

#include "parallel.h"

namespace maml {

template <class T>
struct BatchNormStatistics {
  // per (task, channel)
  std::vector<T> mean, inv_std;
  std::vector<T> tangent_mean, tangent_xhat_mean;  // mean(x_tangent), mean(x_hat x_tangent)
};

struct BatchNormShape {
  int tasks, batch, channels;
  int64_t plane;  // height * width
  int64_t positions() const { return batch * plane; }
  // offset of (task, n, channel)'s plane
  int64_t at(int task, int n, int c) const { return ((int64_t(task) * batch + n) * channels + c) * plane; }
};

// gamma/beta: per task pointers (gamma may be null: scale 1). Tangents of x, gamma and beta
// are optional (null: no tangent pass).
template <class T>
void batch_norm_forward(const BatchNormShape& s, T epsilon, const T* x, const T* const* gamma, const T* const* beta,
                        T* y, BatchNormStatistics<T>& stats, const T* x_tangent, const T* const* gamma_tangent,
                        const T* const* beta_tangent, T* y_tangent) {
  const int64_t count = int64_t(s.tasks) * s.channels;
  stats.mean.resize(count);
  stats.inv_std.resize(count);
  if (x_tangent) {
    stats.tangent_mean.resize(count);
    stats.tangent_xhat_mean.resize(count);
  }
  const T inv_m = T(1) / T(s.positions());
  parallel_for(count, [&](int64_t unit) {
    const int task = int(unit / s.channels), c = int(unit % s.channels);
    T sum = 0;
    for (int n = 0; n < s.batch; ++n) {
      const T* p = x + s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) sum += p[i];
    }
    const T mean = sum * inv_m;
    T squares = 0;
    for (int n = 0; n < s.batch; ++n) {
      const T* p = x + s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) squares += (p[i] - mean) * (p[i] - mean);
    }
    const T inv_std = T(1) / std::sqrt(squares * inv_m + epsilon);
    stats.mean[unit] = mean;
    stats.inv_std[unit] = inv_std;
    const T g = gamma && gamma[task] ? gamma[task][c] : T(1);
    const T b = beta[task][c];
    for (int n = 0; n < s.batch; ++n) {
      const T* p = x + s.at(task, n, c);
      T* q = y + s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) q[i] = g * (p[i] - mean) * inv_std + b;
    }
    if (!x_tangent) return;
    T tangent_sum = 0, tangent_xhat_sum = 0;
    for (int n = 0; n < s.batch; ++n) {
      const T* p = x + s.at(task, n, c);
      const T* t = x_tangent + s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) {
        tangent_sum += t[i];
        tangent_xhat_sum += (p[i] - mean) * inv_std * t[i];
      }
    }
    const T tangent_mean = tangent_sum * inv_m, tangent_xhat_mean = tangent_xhat_sum * inv_m;
    stats.tangent_mean[unit] = tangent_mean;
    stats.tangent_xhat_mean[unit] = tangent_xhat_mean;
    const T g_dot = gamma_tangent && gamma_tangent[task] ? gamma_tangent[task][c] : T(0);
    const T b_dot = beta_tangent && beta_tangent[task] ? beta_tangent[task][c] : T(0);
    for (int n = 0; n < s.batch; ++n) {
      const T* p = x + s.at(task, n, c);
      const T* t = x_tangent + s.at(task, n, c);
      T* q = y_tangent + s.at(task, n, c);
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
    const T mean = stats.mean[unit], inv_std = stats.inv_std[unit];
    const T g = gamma && gamma[task] ? gamma[task][c] : T(1);
    const T g_dot = tangent && gamma_tangent && gamma_tangent[task] ? gamma_tangent[task][c] : T(0);
    const T t_mean = tangent ? stats.tangent_mean[unit] : T(0);
    const T t_xhat_mean = tangent ? stats.tangent_xhat_mean[unit] : T(0);
    // pass 1: the sums every rule needs
    T sum_grad = 0, sum_grad_xhat = 0;                          // sum(y_grad), sum(y_grad x_hat)
    T sum_grad_t = 0, sum_grad_t_xhat = 0, sum_grad_xhat_t = 0;  // sum(y_grad'), sum(y_grad' x_hat), sum(y_grad x_hat')
    for (int n = 0; n < s.batch; ++n) {
      const int64_t o = s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) {
        const T x_hat = (x[o + i] - mean) * inv_std;
        const T yg = y_grad[o + i];
        sum_grad += yg;
        sum_grad_xhat += yg * x_hat;
        if (tangent) {
          const T x_hat_t = inv_std * (x_tangent[o + i] - t_mean - x_hat * t_xhat_mean);
          const T ygt = y_grad_tangent[o + i];
          sum_grad_t += ygt;
          sum_grad_t_xhat += ygt * x_hat;
          sum_grad_xhat_t += yg * x_hat_t;
        }
      }
    }
    if (beta_grad && beta_grad[task]) beta_grad[task][c] = sum_grad;
    if (gamma_grad && gamma_grad[task]) gamma_grad[task][c] = sum_grad_xhat;
    if (tangent) {
      if (beta_grad_tangent && beta_grad_tangent[task]) beta_grad_tangent[task][c] = sum_grad_t;
      if (gamma_grad_tangent && gamma_grad_tangent[task]) gamma_grad_tangent[task][c] = sum_grad_t_xhat + sum_grad_xhat_t;
    }
    if (!x_grad) return;
    // with g = gamma y_grad: a = mean(g), b = mean(g x_hat)
    const T a = g * sum_grad * inv_m, b = g * sum_grad_xhat * inv_m;
    // g' = gamma' y_grad + gamma y_grad'
    const T a_t = (g_dot * sum_grad + g * sum_grad_t) * inv_m;
    const T b_t = (g_dot * sum_grad_xhat + g * sum_grad_t_xhat + g * sum_grad_xhat_t) * inv_m;
    const T s_t_over_s = -inv_std * t_xhat_mean;  // s' / s = -s mean(x_hat x')
    for (int n = 0; n < s.batch; ++n) {
      const int64_t o = s.at(task, n, c);
      for (int64_t i = 0; i < s.plane; ++i) {
        const T x_hat = (x[o + i] - mean) * inv_std;
        const T gi = g * y_grad[o + i];
        const T xg = inv_std * (gi - a - x_hat * b);
        x_grad[o + i] = xg;
        if (tangent) {
          const T x_hat_t = inv_std * (x_tangent[o + i] - t_mean - x_hat * t_xhat_mean);
          const T gi_t = g_dot * y_grad[o + i] + g * y_grad_tangent[o + i];
          x_grad_tangent[o + i] = s_t_over_s * xg + inv_std * (gi_t - a_t - x_hat_t * b - x_hat * b_t);
        }
      }
    }
  });
}

}  // namespace maml
