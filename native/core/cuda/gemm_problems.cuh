// The operands of every convolution and linear layer as virtual matrices for one tiled
// GEMM (kernels.cu): each problem says how many rows and columns C has, which depth
// range task z sums over, what A(z, m, k) and B(z, k, n) are (computed on the fly from
// activations and weights: the im2col matrix is never stored) and where C(z, m, n)
// goes. Host and device code alike, so tests/host_emulation.cpp runs the same index
// arithmetic on the CPU against the CPU kernels.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels.cuh"

namespace maml {
namespace cuda {

constexpr int kTileDepth = 16;  // depth of the shared-memory tiles of the GEMM

// Split-K for weight gradients: the reduction over batch x positions (529,200 values
// per weight for the MiniImagenet query set) is cut into `splits` slices of `slice`
// values (a multiple of the tile depth), about 2048 each and at most 128 of them, so
// the partial sums (tasks x splits x weight size) stay bounded; no slice is empty.
inline void weight_grad_slices(int64_t reduction, int tasks, int* splits_out, int64_t* slice_out) {
  constexpr int64_t kSliceTarget = 2048;
  int splits = int(std::min<int64_t>(128, (reduction + kSliceTarget - 1) / kSliceTarget));
  splits = std::max(1, std::min(splits, 65535 / std::max(tasks, 1)));
  int64_t slice = (reduction + splits - 1) / splits;
  slice = (slice + kTileDepth - 1) / kTileDepth * kTileDepth;
  *splits_out = int((reduction + slice - 1) / slice);
  *slice_out = slice;
}

// ---------------------------------------------------------------------------------------
// Convolution problems. Shared notation: task z, example nb of the task's batch, output
// position p = oy * ow + ox, input position q = iy * w + ix, depth index k = ci * 9 + ky * 3 + kx
// (the row-major order of a [cout, cin, 3, 3] weight), iy = oy * stride + ky - pad_top.

// The value of the virtual im2col matrix at (k, column = nb * out_plane + p) of task z.
template <class T>
MAML_HOST_DEVICE inline T im2col_value(const ConvGeometry& g, int batch, const T* x, int z, int64_t k, int64_t column) {
  const int ci = int(k / 9), r = int(k % 9), ky = r / 3, kx = r % 3;
  const int64_t positions = g.out_plane();
  const int64_t nb = column / positions;
  const int p = int(column % positions);
  const int oy = p / g.ow, ox = p % g.ow;
  const int iy = oy * g.stride + ky - g.pad_top, ix = ox * g.stride + kx - g.pad_left;
  if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return T(0);
  return x[((int64_t(z) * batch + nb) * g.cin + ci) * g.in_plane() + int64_t(iy) * g.w + ix];
}

// y[cout, batch * out_plane] = W[cout, cin*9] im2col(x)[cin*9, batch * out_plane] + b
template <class T>
struct ConvForwardProblem {
  ConvGeometry g;
  int batch;
  const T* x;
  TaskTensor<const T> weights, biases;
  T* y;
  bool accumulate;
  int rows;      // cout
  int64_t cols;  // batch * out_plane
  static constexpr bool b_depth_fastest = false;  // columns are output positions, contiguous in x

  MAML_HOST_DEVICE void depth_range(int, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = g.depth();
  }
  MAML_HOST_DEVICE T a_at(int z, int m, int64_t k) const { return weights.at(z)[int64_t(m) * g.depth() + k]; }
  MAML_HOST_DEVICE T b_at(int z, int64_t k, int64_t n) const { return im2col_value(g, batch, x, z, k, n); }
  MAML_HOST_DEVICE void store(int z, int m, int64_t n, T value) const {
    const int64_t positions = g.out_plane();
    const int64_t nb = n / positions, p = n % positions;
    T* out = y + ((int64_t(z) * batch + nb) * g.cout + m) * positions + p;
    if (biases) value += biases.at(z)[m];
    *out = accumulate ? *out + value : value;
  }
};

// x_grad[cin, batch * in_plane] = sum over (co, ky, kx) of W[co, ci, ky, kx] y_grad[co, oy, ox]
// where oy * stride = iy + pad_top - ky: the transposed convolution written as a gather
// (each x_grad element is owned by one thread: no scatter, no atomics).
template <class T>
struct ConvInputGradProblem {
  ConvGeometry g;
  int batch;
  const T* y_grad;
  TaskTensor<const T> weights;
  T* x_grad;
  bool accumulate;
  int rows;      // cin
  int64_t cols;  // batch * in_plane
  static constexpr bool b_depth_fastest = false;

  MAML_HOST_DEVICE void depth_range(int, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = int64_t(g.cout) * 9;
  }
  // depth index k = co * 9 + ky * 3 + kx
  MAML_HOST_DEVICE T a_at(int z, int ci, int64_t k) const {
    const int64_t co = k / 9, r = k % 9;
    return weights.at(z)[co * g.depth() + int64_t(ci) * 9 + r];
  }
  MAML_HOST_DEVICE T b_at(int z, int64_t k, int64_t n) const {
    const int co = int(k / 9), r = int(k % 9), ky = r / 3, kx = r % 3;
    const int64_t in_plane = g.in_plane();
    const int64_t nb = n / in_plane;
    const int q = int(n % in_plane);
    const int iy = q / g.w, ix = q % g.w;
    const int sy = iy + g.pad_top - ky, sx = ix + g.pad_left - kx;
    if (sy < 0 || sx < 0 || sy % g.stride != 0 || sx % g.stride != 0) return T(0);
    const int oy = sy / g.stride, ox = sx / g.stride;
    if (oy >= g.oh || ox >= g.ow) return T(0);
    return y_grad[((int64_t(z) * batch + nb) * g.cout + co) * g.out_plane() + int64_t(oy) * g.ow + ox];
  }
  MAML_HOST_DEVICE void store(int z, int ci, int64_t n, T value) const {
    const int64_t in_plane = g.in_plane();
    const int64_t nb = n / in_plane, q = n % in_plane;
    T* out = x_grad + ((int64_t(z) * batch + nb) * g.cin + ci) * in_plane + q;
    *out = accumulate ? *out + value : value;
  }
};

// W_grad[cout, cin*9] = y_grad[cout, R] im2col(x)[cin*9, R]^T over R = batch * out_plane,
// with R split into `splits` slices: z = task * splits + slice.
template <class T>
struct ConvWeightGradProblem {
  ConvGeometry g;
  int batch;
  const T* x;
  const T* y_grad;
  int splits;
  int64_t slice;  // reduction values per slice (a multiple of the tile depth)
  // splits == 1: written to weight_grads directly; otherwise partial[z][cout][cin*9]
  TaskTensor<T> weight_grads;
  T* partial;
  bool accumulate;
  int rows;      // cout
  int64_t cols;  // cin * 9
  static constexpr bool b_depth_fastest = true;  // depth = output positions, contiguous in x

  MAML_HOST_DEVICE void depth_range(int z, int64_t* begin, int64_t* end) const {
    const int64_t reduction = int64_t(batch) * g.out_plane();
    *begin = int64_t(z % splits) * slice;
    *end = *begin + slice < reduction ? *begin + slice : reduction;
  }
  MAML_HOST_DEVICE T a_at(int z, int co, int64_t r) const {
    const int task = z / splits;
    const int64_t positions = g.out_plane();
    const int64_t nb = r / positions, p = r % positions;
    return y_grad[((int64_t(task) * batch + nb) * g.cout + co) * positions + p];
  }
  MAML_HOST_DEVICE T b_at(int z, int64_t r, int64_t k) const { return im2col_value(g, batch, x, z / splits, k, r); }
  MAML_HOST_DEVICE void store(int z, int co, int64_t k, T value) const {
    if (splits == 1) {
      T* out = weight_grads.at(z) + int64_t(co) * g.depth() + k;
      *out = accumulate ? *out + value : value;
    } else {
      partial[(int64_t(z) * g.cout + co) * g.depth() + k] = value;
    }
  }
};


// ---------------------------------------------------------------------------------------
// Linear problems: y[n, out] = x[n, in] W^T + b with W [out, in] per task.
template <class T>
struct LinearForwardProblem {
  LinearShape s;
  const T* x;
  TaskTensor<const T> weights, biases;
  T* y;
  bool accumulate;
  int rows;      // batch
  int64_t cols;  // outputs
  static constexpr bool b_depth_fastest = true;  // B = W^T: depth (inputs) contiguous

  MAML_HOST_DEVICE void depth_range(int, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = s.inputs;
  }
  MAML_HOST_DEVICE T a_at(int z, int n, int64_t i) const { return x[(int64_t(z) * s.batch + n) * s.inputs + i]; }
  MAML_HOST_DEVICE T b_at(int z, int64_t i, int64_t o) const { return weights.at(z)[o * s.inputs + i]; }
  MAML_HOST_DEVICE void store(int z, int n, int64_t o, T value) const {
    T* out = y + (int64_t(z) * s.batch + n) * s.outputs + o;
    if (biases) value += biases.at(z)[o];
    *out = accumulate ? *out + value : value;
  }
};

// x_grad[n, in] = y_grad[n, out] W[out, in]
template <class T>
struct LinearInputGradProblem {
  LinearShape s;
  const T* y_grad;
  TaskTensor<const T> weights;
  T* x_grad;
  bool accumulate;
  int rows;      // batch
  int64_t cols;  // inputs
  static constexpr bool b_depth_fastest = false;

  MAML_HOST_DEVICE void depth_range(int, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = s.outputs;
  }
  MAML_HOST_DEVICE T a_at(int z, int n, int64_t o) const { return y_grad[(int64_t(z) * s.batch + n) * s.outputs + o]; }
  MAML_HOST_DEVICE T b_at(int z, int64_t o, int64_t i) const { return weights.at(z)[o * s.inputs + i]; }
  MAML_HOST_DEVICE void store(int z, int n, int64_t i, T value) const {
    T* out = x_grad + (int64_t(z) * s.batch + n) * s.inputs + i;
    *out = accumulate ? *out + value : value;
  }
};

// W_grad[out, in] = y_grad[n, out]^T x[n, in]
template <class T>
struct LinearWeightGradProblem {
  LinearShape s;
  const T* x;
  const T* y_grad;
  TaskTensor<T> weight_grads;
  bool accumulate;
  int rows;      // outputs
  int64_t cols;  // inputs
  static constexpr bool b_depth_fastest = false;

  MAML_HOST_DEVICE void depth_range(int, int64_t* begin, int64_t* end) const {
    *begin = 0;
    *end = s.batch;
  }
  MAML_HOST_DEVICE T a_at(int z, int o, int64_t n) const { return y_grad[(int64_t(z) * s.batch + n) * s.outputs + o]; }
  MAML_HOST_DEVICE T b_at(int z, int64_t n, int64_t i) const { return x[(int64_t(z) * s.batch + n) * s.inputs + i]; }
  MAML_HOST_DEVICE void store(int z, int o, int64_t i, T value) const {
    T* out = weight_grads.at(z) + int64_t(o) * s.inputs + i;
    *out = accumulate ? *out + value : value;
  }
};


}  // namespace cuda
}  // namespace maml
