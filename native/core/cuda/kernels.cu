// CUDA kernels of the engine (declared and described in kernels.cuh). The reference
// for each is its CPU counterpart in native/core/cpu/*.h; tests/parity.cpp runs both on
// the same random data and compares them, kernel by kernel and for whole meta-gradients.
//
// Version 1, written to be right the first time it runs on a GPU it was not built on:
// - Convolutions and linear layers are one tiled shared-memory GEMM (tiled_gemm below)
//   whose operands are read through small "problem" structs. The im2col matrix is never
//   stored: each problem computes the element of the virtual matrix it is asked for,
//   with zero padding, from the activation tensor. blockIdx.z runs over tasks (and over
//   split-K slices for weight gradients), so one launch covers a whole meta-batch.
// - Weight gradients reduce over batch x positions (529,200 values per weight for the
//   MiniImagenet query set): the reduction is split over blocks that write partial sums,
//   then summed in a fixed order, so results are deterministic (no atomics anywhere).
// - Batch norm uses one block per (task, channel) and the same two-pass statistics as
//   the CPU (mean, then centred squares).
// Plain IEEE arithmetic: no --use_fast_math, because parity with the float64 CPU path
// at ~1e-4 is the point.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "gemm_problems.cuh"
#include "kernels.cuh"

namespace maml {
namespace cuda {

namespace {

constexpr int kThreads = 256;  // elementwise kernels and block reductions (a multiple of 32)

inline void check_launch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("launch of ") + what + " failed: " + cudaGetErrorName(status) + ": " +
                             cudaGetErrorString(status));
}

// Blocks for a grid-stride loop over count elements.
inline unsigned elementwise_blocks(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 20)));
}

__device__ inline float device_exp(float x) { return expf(x); }
__device__ inline double device_exp(double x) { return exp(x); }
__device__ inline float device_log(float x) { return logf(x); }
__device__ inline double device_log(double x) { return log(x); }
__device__ inline float device_sqrt(float x) { return sqrtf(x); }
__device__ inline double device_sqrt(double x) { return sqrt(x); }

// Sums N values over the block; every thread gets the totals. The order of the sum
// depends only on the block size, so a result never changes between runs.
// blockDim.x must be a multiple of 32 and at most 1024.
template <class T, int N>
__device__ void block_sum(T (&v)[N]) {
  __shared__ T partial[N][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int j = 0; j < N; ++j)
    for (int offset = 16; offset > 0; offset >>= 1) v[j] += __shfl_down_sync(0xffffffffu, v[j], offset);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0)
#pragma unroll
    for (int j = 0; j < N; ++j) partial[j][warp] = v[j];
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j) {
    T total = 0;
    for (int w = 0; w < warps; ++w) total += partial[j][w];
    v[j] = total;
  }
}

// ---------------------------------------------------------------------------------------
// The one GEMM: C[z](rows x cols) = A[z](rows x depth) B[z](depth x cols), for z over
// gridDim.z, each block a BM x BN tile of C, each thread a 4 x 4 sub-tile whose rows and
// columns are strided by BM/4 and BN/4 (so neighbouring threads touch neighbouring shared
// memory words and neighbouring output columns). The problem supplies:
//   rows, cols, a_at(z, m, k), b_at(z, k, n), depth_range(z, &begin, &end), store(z, m, n, v)
//   b_depth_fastest: whether consecutive depth indices of B lie closer in memory than
//   consecutive columns (decides the order threads load the B tile in, for coalescing).

template <class T, int BM, int BN, class Problem>
__global__ void __launch_bounds__((BM / 4) * (BN / 4)) tiled_gemm(const Problem p) {
  constexpr int TM = 4, TN = 4;
  constexpr int ROW_THREADS = BM / TM, COL_THREADS = BN / TN, THREADS = ROW_THREADS * COL_THREADS;
  constexpr int BK = kTileDepth;
  // +1 column: the transposed stores of the A tile would otherwise hit one bank
  __shared__ T a_tile[BK][BM + 1];
  __shared__ T b_tile[BK][BN + 1];

  const int z = blockIdx.z;
  const int m0 = blockIdx.y * BM;
  const int64_t n0 = int64_t(blockIdx.x) * BN;
  int64_t k_begin = 0, k_end = 0;
  p.depth_range(z, &k_begin, &k_end);
  const int tid = threadIdx.x;
  const int tx = tid % COL_THREADS, ty = tid / COL_THREADS;

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    for (int e = tid; e < BM * BK; e += THREADS) {
      const int kk = e % BK, mm = e / BK;
      const int m = m0 + mm;
      const int64_t k = k0 + kk;
      a_tile[kk][mm] = (m < p.rows && k < k_end) ? p.a_at(z, m, k) : T(0);
    }
    for (int e = tid; e < BN * BK; e += THREADS) {
      int kk, nn;
      if (Problem::b_depth_fastest) {
        kk = e % BK;
        nn = e / BK;
      } else {
        nn = e % BN;
        kk = e / BN;
      }
      const int64_t n = n0 + nn, k = k0 + kk;
      b_tile[kk][nn] = (n < p.cols && k < k_end) ? p.b_at(z, k, n) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = a_tile[kk][ty + i * ROW_THREADS];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = b_tile[kk][tx + j * COL_THREADS];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the tiles are overwritten by the next depth step
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty + i * ROW_THREADS;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx + j * COL_THREADS;
      if (m < p.rows && n < p.cols) p.store(z, m, n, acc[i][j]);
    }
  }
}

// Picks the tile height from the number of rows (32 filters would leave half of a
// 64-row tile idle) and launches over z = 0 .. batches - 1.
template <class T, class Problem>
void launch_gemm(const Problem& p, int batches, const char* what) {
  if (p.rows <= 0 || p.cols <= 0 || batches <= 0) return;
  constexpr int BN = 64;
  const int64_t col_blocks = (p.cols + BN - 1) / BN;
  if (col_blocks > 0x7fffffff || batches > 65535) throw std::invalid_argument(std::string(what) + ": problem too large");
  if (p.rows <= 32) {
    constexpr int BM = 32;
    const dim3 grid = dim3(unsigned(col_blocks), unsigned((p.rows + BM - 1) / BM), unsigned(batches));
    tiled_gemm<T, BM, BN, Problem><<<grid, (BM / 4) * (BN / 4)>>>(p);
  } else {
    constexpr int BM = 64;
    const int64_t row_blocks = (p.rows + BM - 1) / BM;
    if (row_blocks > 65535) throw std::invalid_argument(std::string(what) + ": too many rows");
    const dim3 grid = dim3(unsigned(col_blocks), unsigned(row_blocks), unsigned(batches));
    tiled_gemm<T, BM, BN, Problem><<<grid, (BM / 4) * (BN / 4)>>>(p);
  }
  check_launch(what);
}

// weight_grads[t][i] (+)= sum over slices of partial[t * splits + s][i], slices in order.
template <class T>
__global__ void sum_slices(int tasks, int splits, int64_t size, const T* partial, TaskTensor<T> weight_grads,
                           bool accumulate) {
  const int64_t total = int64_t(tasks) * size;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int task = int(e / size);
    const int64_t i = e % size;
    T sum = 0;
    for (int s = 0; s < splits; ++s) sum += partial[(int64_t(task) * splits + s) * size + i];
    T* out = weight_grads.at(task) + i;
    *out = accumulate ? *out + sum : sum;
  }
}

// bias_grads[t][co] (+)= sum over the batch and positions of y_grad: one block per (task, co).
template <class T>
__global__ void conv_bias_grad(ConvGeometry g, int batch, const T* y_grad, TaskTensor<T> bias_grads,
                               bool accumulate) {
  const int task = blockIdx.x / g.cout, co = blockIdx.x % g.cout;
  const int64_t positions = g.out_plane(), count = int64_t(batch) * positions;
  T v[1] = {T(0)};
  for (int64_t r = threadIdx.x; r < count; r += blockDim.x) {
    const int64_t nb = r / positions, p = r % positions;
    v[0] += y_grad[((int64_t(task) * batch + nb) * g.cout + co) * positions + p];
  }
  block_sum(v);
  if (threadIdx.x == 0) {
    T* out = bias_grads.at(task) + co;
    *out = accumulate ? *out + v[0] : v[0];
  }
}

// bias_grads[t][o] (+)= sum_n y_grad[t, n, o], examples in order as on the CPU.
template <class T>
__global__ void linear_bias_grad(LinearShape s, const T* y_grad, TaskTensor<T> bias_grads, bool accumulate) {
  const int64_t total = int64_t(s.tasks) * s.outputs;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int task = int(e / s.outputs), o = int(e % s.outputs);
    T* out = bias_grads.at(task) + o;
    T sum = accumulate ? *out : T(0);
    for (int n = 0; n < s.batch; ++n) sum += y_grad[(int64_t(task) * s.batch + n) * s.outputs + o];
    *out = sum;
  }
}

// ---------------------------------------------------------------------------------------
// Batch norm: one block per (task, channel) = blockIdx.x, over m = batch * plane positions.
__device__ inline int64_t bn_index(const BatchNormShape& s, int task, int c, int64_t r) {
  const int64_t nb = r / s.plane, i = r % s.plane;
  return ((int64_t(task) * s.batch + nb) * s.channels + c) * s.plane + i;
}

template <class T>
__global__ void batch_norm_forward_kernel(BatchNormShape s, T epsilon, const T* x, TaskTensor<const T> gamma,
                                          TaskTensor<const T> beta, T* y, BatchNormStatisticsView<T> stats,
                                          const T* x_tangent, TaskTensor<const T> gamma_tangent,
                                          TaskTensor<const T> beta_tangent, T* y_tangent) {
  const int unit = blockIdx.x;
  const int task = unit / s.channels, c = unit % s.channels;
  const int64_t m = int64_t(s.batch) * s.plane;  // s.positions() is host-only
  const T inv_m = T(1) / T(m);
  T sum[1] = {T(0)};
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) sum[0] += x[bn_index(s, task, c, r)];
  block_sum(sum);
  const T mean = sum[0] * inv_m;
  T squares[1] = {T(0)};
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    const T d = x[bn_index(s, task, c, r)] - mean;
    squares[0] += d * d;
  }
  block_sum(squares);
  const T inv_std = T(1) / device_sqrt(squares[0] * inv_m + epsilon);
  if (threadIdx.x == 0) {
    stats.mean[unit] = mean;
    stats.inv_std[unit] = inv_std;
  }
  const T g = gamma ? gamma.at(task)[c] : T(1);
  const T b = beta ? beta.at(task)[c] : T(0);
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    const int64_t o = bn_index(s, task, c, r);
    y[o] = g * (x[o] - mean) * inv_std + b;
  }
  if (!x_tangent) return;  // uniform over the block: no barrier is skipped by some threads only
  T sums[2] = {T(0), T(0)};  // sum(x_tangent), sum(x_hat x_tangent)
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    const int64_t o = bn_index(s, task, c, r);
    sums[0] += x_tangent[o];
    sums[1] += (x[o] - mean) * inv_std * x_tangent[o];
  }
  block_sum(sums);
  const T tangent_mean = sums[0] * inv_m, tangent_xhat_mean = sums[1] * inv_m;
  if (threadIdx.x == 0) {
    stats.tangent_mean[unit] = tangent_mean;
    stats.tangent_xhat_mean[unit] = tangent_xhat_mean;
  }
  const T g_dot = gamma_tangent ? gamma_tangent.at(task)[c] : T(0);
  const T b_dot = beta_tangent ? beta_tangent.at(task)[c] : T(0);
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    const int64_t o = bn_index(s, task, c, r);
    const T x_hat = (x[o] - mean) * inv_std;
    const T x_hat_tangent = inv_std * (x_tangent[o] - tangent_mean - x_hat * tangent_xhat_mean);
    y_tangent[o] = g_dot * x_hat + g * x_hat_tangent + b_dot;
  }
}

// The reverse rule and its tangent, term by term as cpu/batch_norm.h (MATH.md).
template <class T>
__global__ void batch_norm_backward_kernel(BatchNormShape s, const T* x, TaskTensor<const T> gamma,
                                           BatchNormStatisticsView<T> stats, const T* y_grad, T* x_grad,
                                           TaskTensor<T> gamma_grad, TaskTensor<T> beta_grad, const T* x_tangent,
                                           TaskTensor<const T> gamma_tangent, const T* y_grad_tangent,
                                           T* x_grad_tangent, TaskTensor<T> gamma_grad_tangent,
                                           TaskTensor<T> beta_grad_tangent) {
  const int unit = blockIdx.x;
  const int task = unit / s.channels, c = unit % s.channels;
  const int64_t m = int64_t(s.batch) * s.plane;  // s.positions() is host-only
  const T inv_m = T(1) / T(m);
  const bool tangent = x_tangent != nullptr;
  const T mean = stats.mean[unit], inv_std = stats.inv_std[unit];
  const T g = gamma ? gamma.at(task)[c] : T(1);
  const T g_dot = tangent && gamma_tangent ? gamma_tangent.at(task)[c] : T(0);
  const T t_mean = tangent ? stats.tangent_mean[unit] : T(0);
  const T t_xhat_mean = tangent ? stats.tangent_xhat_mean[unit] : T(0);
  // sum(y_grad), sum(y_grad x_hat), sum(y_grad'), sum(y_grad' x_hat), sum(y_grad x_hat')
  T sums[5] = {T(0), T(0), T(0), T(0), T(0)};
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    const int64_t o = bn_index(s, task, c, r);
    const T x_hat = (x[o] - mean) * inv_std;
    const T yg = y_grad[o];
    sums[0] += yg;
    sums[1] += yg * x_hat;
    if (tangent) {
      const T x_hat_t = inv_std * (x_tangent[o] - t_mean - x_hat * t_xhat_mean);
      const T ygt = y_grad_tangent[o];
      sums[2] += ygt;
      sums[3] += ygt * x_hat;
      sums[4] += yg * x_hat_t;
    }
  }
  block_sum(sums);
  const T sum_grad = sums[0], sum_grad_xhat = sums[1];
  const T sum_grad_t = sums[2], sum_grad_t_xhat = sums[3], sum_grad_xhat_t = sums[4];
  if (threadIdx.x == 0) {
    if (beta_grad) beta_grad.at(task)[c] = sum_grad;
    if (gamma_grad) gamma_grad.at(task)[c] = sum_grad_xhat;
    if (tangent) {
      if (beta_grad_tangent) beta_grad_tangent.at(task)[c] = sum_grad_t;
      if (gamma_grad_tangent) gamma_grad_tangent.at(task)[c] = sum_grad_t_xhat + sum_grad_xhat_t;
    }
  }
  if (!x_grad) return;
  const T a = g * sum_grad * inv_m, b = g * sum_grad_xhat * inv_m;
  const T a_t = (g_dot * sum_grad + g * sum_grad_t) * inv_m;
  const T b_t = (g_dot * sum_grad_xhat + g * sum_grad_t_xhat + g * sum_grad_xhat_t) * inv_m;
  const T s_t_over_s = -inv_std * t_xhat_mean;
  for (int64_t r = threadIdx.x; r < m; r += blockDim.x) {
    const int64_t o = bn_index(s, task, c, r);
    const T x_hat = (x[o] - mean) * inv_std;
    const T gi = g * y_grad[o];
    const T xg = inv_std * (gi - a - x_hat * b);
    x_grad[o] = xg;
    if (tangent) {
      const T x_hat_t = inv_std * (x_tangent[o] - t_mean - x_hat * t_xhat_mean);
      const T gi_t = g_dot * y_grad[o] + g * y_grad_tangent[o];
      x_grad_tangent[o] = s_t_over_s * xg + inv_std * (gi_t - a_t - x_hat_t * b - x_hat * b_t);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Elementwise and small kernels. Grid-stride loops over flat indices.
#define MAML_GRID_LOOP(e, count) \
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < (count); e += int64_t(gridDim.x) * blockDim.x)

template <class T>
__global__ void relu_forward_kernel(int64_t size, T* x) {
  MAML_GRID_LOOP(e, size) x[e] = x[e] > T(0) ? x[e] : T(0);
}
template <class T>
__global__ void relu_mask_kernel(int64_t size, const T* y, T* v) {
  MAML_GRID_LOOP(e, size) if (!(y[e] > T(0))) v[e] = T(0);
}

// One thread per output; the candidates in row-major window order and a strict '>' give
// ties to the first maximum, exactly as the CPU.
template <class T>
__global__ void max_pool_forward_kernel(int64_t planes, int h, int w, const T* x, T* y, int32_t* argmax) {
  const int oh = h / 2, ow = w / 2;
  const int64_t out_plane = int64_t(oh) * ow;
  MAML_GRID_LOOP(e, planes * out_plane) {
    const int64_t p = e / out_plane;
    const int q = int(e % out_plane), oy = q / ow, ox = q % ow;
    const T* in = x + p * h * w;
    int best = (2 * oy) * w + 2 * ox;
    const int candidates[3] = {best + 1, best + w, best + w + 1};
#pragma unroll
    for (int i = 0; i < 3; ++i)
      if (in[candidates[i]] > in[best]) best = candidates[i];
    y[e] = in[best];
    argmax[e] = best;
  }
}
template <class T>
__global__ void max_pool_gather_kernel(int64_t planes, int h, int w, const T* x, const int32_t* argmax, T* y) {
  const int64_t out_plane = int64_t(h / 2) * (w / 2);
  MAML_GRID_LOOP(e, planes * out_plane) y[e] = x[(e / out_plane) * h * w + argmax[e]];
}
// One thread per input position: windows do not overlap, so each position receives the
// gradient of its own window's output when it is that window's maximum, else 0
// (including the last row/column of an odd-sized plane, which no window covers).
template <class T>
__global__ void max_pool_scatter_kernel(int64_t planes, int h, int w, const T* y_grad, const int32_t* argmax,
                                        T* x_grad) {
  const int oh = h / 2, ow = w / 2;
  const int64_t plane = int64_t(h) * w, out_plane = int64_t(oh) * ow;
  MAML_GRID_LOOP(e, planes * plane) {
    const int64_t p = e / plane;
    const int q = int(e % plane), iy = q / w, ix = q % w;
    const int oy = iy / 2, ox = ix / 2;
    T value = T(0);
    if (oy < oh && ox < ow) {
      const int64_t window = p * out_plane + int64_t(oy) * ow + ox;
      if (argmax[window] == q) value = y_grad[window];
    }
    x_grad[e] = value;
  }
}

template <class T>
__global__ void spatial_mean_forward_kernel(int64_t planes, int64_t plane, const T* x, T* y) {
  MAML_GRID_LOOP(p, planes) {
    T sum = 0;
    for (int64_t i = 0; i < plane; ++i) sum += x[p * plane + i];
    y[p] = sum / T(plane);
  }
}
template <class T>
__global__ void spatial_mean_backward_kernel(int64_t planes, int64_t plane, const T* y_grad, T* x_grad) {
  MAML_GRID_LOOP(e, planes * plane) x_grad[e] = y_grad[e / plane] / T(plane);
}

// One thread per example: classes are few (5..20), so no shared memory is needed and
// the probabilities are recomputed instead of stored.
template <class T>
__global__ void softmax_cross_entropy_kernel(int examples, int classes, T weight, const T* z, const int32_t* labels,
                                             T* z_grad, const T* z_tangent, T* z_grad_tangent, T* example_loss,
                                             int32_t* example_correct) {
  MAML_GRID_LOOP(e, examples) {
    const T* zi = z + e * classes;
    const int label = labels[e];
    int best = 0;
    for (int c = 1; c < classes; ++c)
      if (zi[c] > zi[best]) best = c;
    example_correct[e] = best == label;
    const T top = zi[best];
    T sum = 0;
    for (int c = 0; c < classes; ++c) sum += device_exp(zi[c] - top);
    example_loss[e] = device_log(sum) + top - zi[label];
    if (z_grad)
      for (int c = 0; c < classes; ++c)
        z_grad[e * classes + c] = weight * (device_exp(zi[c] - top) / sum - T(c == label));
    if (z_tangent) {
      const T* zt = z_tangent + e * classes;
      T dot = 0;
      for (int c = 0; c < classes; ++c) dot += device_exp(zi[c] - top) / sum * zt[c];
      for (int c = 0; c < classes; ++c)
        z_grad_tangent[e * classes + c] = weight * (device_exp(zi[c] - top) / sum) * (zt[c] - dot);
    }
  }
}

template <class T>
__global__ void squared_error_kernel(int examples, int outputs, T weight, const T* z, const T* targets, T* z_grad,
                                     const T* z_tangent, T* z_grad_tangent, T* example_loss) {
  MAML_GRID_LOOP(e, examples) {
    T loss = 0;
    for (int o = 0; o < outputs; ++o) {
      const int64_t i = e * outputs + o;
      const T d = z[i] - targets[i];
      loss += d * d;
      if (z_grad) z_grad[i] = T(2) * weight * d;
      if (z_tangent) z_grad_tangent[i] = T(2) * weight * z_tangent[i];
    }
    example_loss[e] = loss;
  }
}

// losses[t] = w * sum of the task's example losses, in example order; accuracies[t] = hits / n.
template <class T>
__global__ void task_losses_kernel(int tasks, int n, T weight, const T* example_loss, const int32_t* example_correct,
                                   T* losses, T* accuracies) {
  MAML_GRID_LOOP(t, tasks) {
    T loss = 0;
    int hits = 0;
    for (int i = 0; i < n; ++i) {
      loss += example_loss[t * n + i];
      if (example_correct) hits += example_correct[t * n + i];
    }
    if (losses) losses[t] = weight * loss;
    if (accuracies) accuracies[t] = example_correct ? T(hits) / T(n) : T(0);
  }
}

template <class T>
__global__ void sgd_step_kernel(int tasks, int64_t size, TaskTensor<const T> theta, const T* alpha, const T* grad,
                                T* theta_next) {
  MAML_GRID_LOOP(e, int64_t(tasks) * size) {
    const int task = int(e / size);
    const int64_t i = e % size;
    theta_next[e] = theta.at(task)[i] - alpha[i] * grad[e];
  }
}
template <class T>
__global__ void scale_by_kernel(int tasks, int64_t size, const T* alpha, const T* v, T* out) {
  MAML_GRID_LOOP(e, int64_t(tasks) * size) out[e] = alpha[e % size] * v[e];
}
template <class T>
__global__ void subtract_kernel(int64_t count, T* v, const T* h) {
  MAML_GRID_LOOP(e, count) v[e] -= h[e];
}
template <class T>
__global__ void sum_over_tasks_kernel(int tasks, int64_t size, const T* v, T* accumulator) {
  MAML_GRID_LOOP(i, size) {
    T sum = accumulator[i];
    for (int t = 0; t < tasks; ++t) sum += v[int64_t(t) * size + i];
    accumulator[i] = sum;
  }
}
// grid (segments, tasks)
template <class T>
__global__ void segment_dots_kernel(int64_t size, int segments, const int64_t* offsets, const int64_t* sizes,
                                    const T* a, const T* b, T* out) {
  const int j = blockIdx.x, task = blockIdx.y;
  const int64_t begin = offsets[j], end = offsets[j] + sizes[j];
  const T* at = a + int64_t(task) * size;
  const T* bt = b + int64_t(task) * size;
  T v[1] = {T(0)};
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) v[0] += at[i] * bt[i];
  block_sum(v);
  if (threadIdx.x == 0) out[int64_t(task) * segments + j] = v[0];
}

template <class T>
__global__ void gather_images_kernel(const uint8_t* pixels, int channels, int h, int w, bool invert, int64_t examples,
                                     const int32_t* indices, const uint8_t* rotations, T* out) {
  const int64_t image = int64_t(channels) * h * w;
  const T scale = T(1) / T(255);
  MAML_GRID_LOOP(e, examples * image) {
    const int64_t example = e / image;
    const int64_t within = e % image;
    const int c = int(within / (int64_t(h) * w));
    const int y = int((within / w) % h), x = int(within % w);
    const int r = rotations ? rotations[example] : 0;
    // out(y, x) of a counter-clockwise turn reads in(x, w-1-y); applied r times
    int sy = y, sx = x;
    for (int i = 0; i < r; ++i) {
      const int ny = sx, nx = w - 1 - sy;
      sy = ny;
      sx = nx;
    }
    const T value = T(pixels[int64_t(indices[example]) * image + (int64_t(c) * h + sy) * w + sx]) * scale;
    out[e] = invert ? T(1) - value : value;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Launchers.

template <class T>
void conv_forward(const ConvGeometry& g, int tasks, int batch, const T* x, TaskTensor<const T> weights,
                  TaskTensor<const T> biases, T* y, bool accumulate) {
  ConvForwardProblem<T> p{g, batch, x, weights, biases, y, accumulate, g.cout, int64_t(batch) * g.out_plane()};
  launch_gemm<T>(p, tasks, "conv_forward");
}

template <class T>
void conv_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, TaskTensor<const T> weights,
                     T* x_grad, bool accumulate) {
  ConvInputGradProblem<T> p{g, batch, y_grad, weights, x_grad, accumulate, g.cin, int64_t(batch) * g.in_plane()};
  launch_gemm<T>(p, tasks, "conv_input_grad");
}

template <class T>
void conv_weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad,
                      TaskTensor<T> weight_grads, TaskTensor<T> bias_grads, bool accumulate,
                      DeviceBuffer<T>& scratch) {
  if (tasks <= 0 || batch <= 0) return;
  const int64_t reduction = int64_t(batch) * g.out_plane();
  const int64_t weight_size = int64_t(g.cout) * g.depth();
  int splits = 1;
  int64_t slice = 0;
  weight_grad_slices(reduction, tasks, &splits, &slice);
  T* partial = nullptr;
  if (splits > 1) {
    scratch.reserve(size_t(tasks) * splits * weight_size);
    partial = scratch.data();
  }
  ConvWeightGradProblem<T> p{g, batch, x, y_grad, splits, slice, weight_grads, partial, accumulate, g.cout,
                             int64_t(g.depth())};
  launch_gemm<T>(p, tasks * splits, "conv_weight_grad");
  if (splits > 1) {
    sum_slices<T><<<elementwise_blocks(int64_t(tasks) * weight_size), kThreads>>>(tasks, splits, weight_size, partial,
                                                                                 weight_grads, accumulate);
    check_launch("conv_weight_grad (sum of slices)");
  }
  if (bias_grads) {
    conv_bias_grad<T><<<unsigned(tasks * g.cout), kThreads>>>(g, batch, y_grad, bias_grads, accumulate);
    check_launch("conv_weight_grad (bias)");
  }
}

template <class T>
void batch_norm_forward(const BatchNormShape& s, T epsilon, const T* x, TaskTensor<const T> gamma,
                        TaskTensor<const T> beta, T* y, BatchNormStatisticsView<T> stats, const T* x_tangent,
                        TaskTensor<const T> gamma_tangent, TaskTensor<const T> beta_tangent, T* y_tangent) {
  const int64_t units = int64_t(s.tasks) * s.channels;
  if (units <= 0) return;
  batch_norm_forward_kernel<T><<<unsigned(units), kThreads>>>(s, epsilon, x, gamma, beta, y, stats, x_tangent,
                                                              gamma_tangent, beta_tangent, y_tangent);
  check_launch("batch_norm_forward");
}

template <class T>
void batch_norm_backward(const BatchNormShape& s, const T* x, TaskTensor<const T> gamma,
                         BatchNormStatisticsView<T> stats, const T* y_grad, T* x_grad, TaskTensor<T> gamma_grad,
                         TaskTensor<T> beta_grad, const T* x_tangent, TaskTensor<const T> gamma_tangent,
                         const T* y_grad_tangent, T* x_grad_tangent, TaskTensor<T> gamma_grad_tangent,
                         TaskTensor<T> beta_grad_tangent) {
  const int64_t units = int64_t(s.tasks) * s.channels;
  if (units <= 0) return;
  batch_norm_backward_kernel<T><<<unsigned(units), kThreads>>>(s, x, gamma, stats, y_grad, x_grad, gamma_grad,
                                                               beta_grad, x_tangent, gamma_tangent, y_grad_tangent,
                                                               x_grad_tangent, gamma_grad_tangent, beta_grad_tangent);
  check_launch("batch_norm_backward");
}

template <class T>
void relu_forward(int64_t size, T* x) {
  if (size <= 0) return;
  relu_forward_kernel<T><<<elementwise_blocks(size), kThreads>>>(size, x);
  check_launch("relu_forward");
}
template <class T>
void relu_mask(int64_t size, const T* y, T* v) {
  if (size <= 0) return;
  relu_mask_kernel<T><<<elementwise_blocks(size), kThreads>>>(size, y, v);
  check_launch("relu_mask");
}
template <class T>
void max_pool_forward(int64_t planes, int h, int w, const T* x, T* y, int32_t* argmax) {
  const int64_t count = planes * (h / 2) * (w / 2);
  if (count <= 0) return;
  max_pool_forward_kernel<T><<<elementwise_blocks(count), kThreads>>>(planes, h, w, x, y, argmax);
  check_launch("max_pool_forward");
}
template <class T>
void max_pool_gather(int64_t planes, int h, int w, const T* x, const int32_t* argmax, T* y) {
  const int64_t count = planes * (h / 2) * (w / 2);
  if (count <= 0) return;
  max_pool_gather_kernel<T><<<elementwise_blocks(count), kThreads>>>(planes, h, w, x, argmax, y);
  check_launch("max_pool_gather");
}
template <class T>
void max_pool_scatter(int64_t planes, int h, int w, const T* y_grad, const int32_t* argmax, T* x_grad) {
  const int64_t count = planes * h * w;
  if (count <= 0) return;
  max_pool_scatter_kernel<T><<<elementwise_blocks(count), kThreads>>>(planes, h, w, y_grad, argmax, x_grad);
  check_launch("max_pool_scatter");
}
template <class T>
void spatial_mean_forward(int64_t planes, int64_t plane, const T* x, T* y) {
  if (planes <= 0) return;
  spatial_mean_forward_kernel<T><<<elementwise_blocks(planes), kThreads>>>(planes, plane, x, y);
  check_launch("spatial_mean_forward");
}
template <class T>
void spatial_mean_backward(int64_t planes, int64_t plane, const T* y_grad, T* x_grad) {
  if (planes * plane <= 0) return;
  spatial_mean_backward_kernel<T><<<elementwise_blocks(planes * plane), kThreads>>>(planes, plane, y_grad, x_grad);
  check_launch("spatial_mean_backward");
}

template <class T>
void linear_forward(const LinearShape& s, const T* x, TaskTensor<const T> weights, TaskTensor<const T> biases, T* y,
                    bool accumulate) {
  LinearForwardProblem<T> p{s, x, weights, biases, y, accumulate, s.batch, s.outputs};
  launch_gemm<T>(p, s.tasks, "linear_forward");
}
template <class T>
void linear_input_grad(const LinearShape& s, const T* y_grad, TaskTensor<const T> weights, T* x_grad,
                       bool accumulate) {
  LinearInputGradProblem<T> p{s, y_grad, weights, x_grad, accumulate, s.batch, s.inputs};
  launch_gemm<T>(p, s.tasks, "linear_input_grad");
}
template <class T>
void linear_weight_grad(const LinearShape& s, const T* x, const T* y_grad, TaskTensor<T> weight_grads,
                        TaskTensor<T> bias_grads, bool accumulate) {
  LinearWeightGradProblem<T> p{s, x, y_grad, weight_grads, accumulate, s.outputs, s.inputs};
  launch_gemm<T>(p, s.tasks, "linear_weight_grad");
  if (bias_grads) {
    linear_bias_grad<T><<<elementwise_blocks(int64_t(s.tasks) * s.outputs), kThreads>>>(s, y_grad, bias_grads,
                                                                                     accumulate);
    check_launch("linear_weight_grad (bias)");
  }
}

template <class T>
void softmax_cross_entropy(int tasks, int n, int classes, T weight, const T* z, const int32_t* labels, T* z_grad,
                           const T* z_tangent, T* z_grad_tangent, T* example_loss, int32_t* example_correct,
                           T* losses, T* accuracies) {
  const int examples = tasks * n;
  if (examples <= 0) return;
  softmax_cross_entropy_kernel<T><<<elementwise_blocks(examples), kThreads>>>(
      examples, classes, weight, z, labels, z_grad, z_tangent, z_grad_tangent, example_loss, example_correct);
  check_launch("softmax_cross_entropy");
  task_losses_kernel<T><<<elementwise_blocks(tasks), kThreads>>>(tasks, n, weight, example_loss, example_correct,
                                                                 losses, accuracies);
  check_launch("softmax_cross_entropy (per task)");
}

template <class T>
void squared_error(int tasks, int n, int outputs, T weight, const T* z, const T* targets, T* z_grad,
                   const T* z_tangent, T* z_grad_tangent, T* example_loss, T* losses, T* accuracies) {
  const int examples = tasks * n;
  if (examples <= 0) return;
  squared_error_kernel<T><<<elementwise_blocks(examples), kThreads>>>(examples, outputs, weight, z, targets, z_grad,
                                                                      z_tangent, z_grad_tangent, example_loss);
  check_launch("squared_error");
  task_losses_kernel<T><<<elementwise_blocks(tasks), kThreads>>>(tasks, n, weight, example_loss, nullptr, losses,
                                                                 accuracies);
  check_launch("squared_error (per task)");
}

template <class T>
void sgd_step(int tasks, int64_t size, TaskTensor<const T> theta, const T* alpha, const T* grad, T* theta_next) {
  const int64_t count = int64_t(tasks) * size;
  if (count <= 0) return;
  sgd_step_kernel<T><<<elementwise_blocks(count), kThreads>>>(tasks, size, theta, alpha, grad, theta_next);
  check_launch("sgd_step");
}
template <class T>
void scale_by(int tasks, int64_t size, const T* alpha, const T* v, T* out) {
  const int64_t count = int64_t(tasks) * size;
  if (count <= 0) return;
  scale_by_kernel<T><<<elementwise_blocks(count), kThreads>>>(tasks, size, alpha, v, out);
  check_launch("scale_by");
}
template <class T>
void subtract_in_place(int64_t count, T* v, const T* h) {
  if (count <= 0) return;
  subtract_kernel<T><<<elementwise_blocks(count), kThreads>>>(count, v, h);
  check_launch("subtract_in_place");
}
template <class T>
void sum_over_tasks(int tasks, int64_t size, const T* v, T* accumulator) {
  if (size <= 0 || tasks <= 0) return;
  sum_over_tasks_kernel<T><<<elementwise_blocks(size), kThreads>>>(tasks, size, v, accumulator);
  check_launch("sum_over_tasks");
}
template <class T>
void segment_dots(int tasks, int64_t size, int segments, const int64_t* offsets, const int64_t* sizes, const T* a,
                  const T* b, T* out) {
  if (tasks <= 0 || segments <= 0) return;
  if (tasks > 65535) throw std::invalid_argument("segment_dots: more than 65535 tasks");
  segment_dots_kernel<T><<<dim3(unsigned(segments), unsigned(tasks)), kThreads>>>(size, segments, offsets, sizes, a,
                                                                                  b, out);
  check_launch("segment_dots");
}

template <class T>
void gather_images(const uint8_t* pixels, int channels, int height, int width, bool invert, int64_t examples,
                   const int32_t* indices, const uint8_t* rotations, T* out) {
  const int64_t count = examples * channels * height * width;
  if (count <= 0) return;
  gather_images_kernel<T><<<elementwise_blocks(count), kThreads>>>(pixels, channels, height, width, invert, examples,
                                                                   indices, rotations, out);
  check_launch("gather_images");
}

// ---------------------------------------------------------------------------------------
#define MAML_INSTANTIATE(T)                                                                                          \
  template void conv_forward<T>(const ConvGeometry&, int, int, const T*, TaskTensor<const T>, TaskTensor<const T>,  \
                                T*, bool);                                                                           \
  template void conv_input_grad<T>(const ConvGeometry&, int, int, const T*, TaskTensor<const T>, T*, bool);         \
  template void conv_weight_grad<T>(const ConvGeometry&, int, int, const T*, const T*, TaskTensor<T>, TaskTensor<T>, \
                                    bool, DeviceBuffer<T>&);                                                         \
  template void batch_norm_forward<T>(const BatchNormShape&, T, const T*, TaskTensor<const T>, TaskTensor<const T>,  \
                                      T*, BatchNormStatisticsView<T>, const T*, TaskTensor<const T>,                 \
                                      TaskTensor<const T>, T*);                                                      \
  template void batch_norm_backward<T>(const BatchNormShape&, const T*, TaskTensor<const T>,                         \
                                       BatchNormStatisticsView<T>, const T*, T*, TaskTensor<T>, TaskTensor<T>,       \
                                       const T*, TaskTensor<const T>, const T*, T*, TaskTensor<T>, TaskTensor<T>);   \
  template void relu_forward<T>(int64_t, T*);                                                                        \
  template void relu_mask<T>(int64_t, const T*, T*);                                                                 \
  template void max_pool_forward<T>(int64_t, int, int, const T*, T*, int32_t*);                                      \
  template void max_pool_gather<T>(int64_t, int, int, const T*, const int32_t*, T*);                                 \
  template void max_pool_scatter<T>(int64_t, int, int, const T*, const int32_t*, T*);                                \
  template void spatial_mean_forward<T>(int64_t, int64_t, const T*, T*);                                             \
  template void spatial_mean_backward<T>(int64_t, int64_t, const T*, T*);                                            \
  template void linear_forward<T>(const LinearShape&, const T*, TaskTensor<const T>, TaskTensor<const T>, T*, bool); \
  template void linear_input_grad<T>(const LinearShape&, const T*, TaskTensor<const T>, T*, bool);                  \
  template void linear_weight_grad<T>(const LinearShape&, const T*, const T*, TaskTensor<T>, TaskTensor<T>, bool);   \
  template void softmax_cross_entropy<T>(int, int, int, T, const T*, const int32_t*, T*, const T*, T*, T*, int32_t*, \
                                         T*, T*);                                                                    \
  template void squared_error<T>(int, int, int, T, const T*, const T*, T*, const T*, T*, T*, T*, T*);                \
  template void sgd_step<T>(int, int64_t, TaskTensor<const T>, const T*, const T*, T*);                              \
  template void scale_by<T>(int, int64_t, const T*, const T*, T*);                                                   \
  template void subtract_in_place<T>(int64_t, T*, const T*);                                                         \
  template void sum_over_tasks<T>(int, int64_t, const T*, T*);                                                       \
  template void segment_dots<T>(int, int64_t, int, const int64_t*, const int64_t*, const T*, const T*, T*);          \
  template void gather_images<T>(const uint8_t*, int, int, int, bool, int64_t, const int32_t*, const uint8_t*, T*);

MAML_INSTANTIATE(float)
MAML_INSTANTIATE(double)

}  // namespace cuda
}  // namespace maml
