// Direct 3x3 convolution (no im2col) for stride-1 layers with few input channels: the
// miniimagenet input layer (3 -> 32 channels at 84 x 84). Its im2col matrix has only 27
// rows, so the GEMM runs short and the column matrix (as large as 9 copies of the image)
// costs more to build than to multiply. Here each image is copied once into a
// zero-bordered plane and the nine taps are read as shifted rows of it.
//
// Register tile: 4 output channels (cout a multiple of 4) x 3 vectors of 8 positions = 12 accumulators; per tap
// 3 loads of the image, 4 weight broadcasts, 12 FMAs (forward); the weight gradient
// holds 4 channels x 3 horizontal taps and reads 3 shifted image rows + 4 gradient rows.
// Float and AVX2 only; everything else takes the indirect tiles (conv_indirect.h), which
// the same tests compare this one against (tests/test_layers.cpp).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "bordered_plane.h"
#include "conv_pool.h"
#include "parallel.h"
#include "unroll.h"

namespace maml {
namespace direct_conv {

constexpr int kMaxInputChannels = 4;

#if defined(__AVX2__) && defined(__FMA__)
constexpr bool available = true;

// Mask of the first `count` (0..8) lanes.
inline __m256i first_lanes(int count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), index);
}

// The image's planes with pad_top/pad_left zeros before each row and column, and zeros
// after, wide enough that a vector starting at any output column stays inside.
struct Bordered {
  int rows, cols;
  std::vector<float> data;
  template <class G>
  void fill(const G& g, const float* image) {
    rows = g.oh + 2;
    cols = (g.ow + 7) / 8 * 8 + 8 + 2;
    data.resize(size_t(g.cin) * rows * cols);
    for (int ci = 0; ci < g.cin; ++ci)
      copy_with_border(image + int64_t(ci) * g.h * g.w, g.h, g.w, g.pad_top, g.pad_left, rows, cols,
                       data.data() + size_t(ci) * rows * cols);
  }
  const float* row(int ci, int r) const { return data.data() + (size_t(ci) * rows + r) * cols; }
};

// y[co0..co0+4, oy, ox0..ox0+8*V) (+)= sum over taps; `valid` columns of the last vector.
// Moments: add the tile's sums of y and y^2 to moments (per channel 4 lanes of each, in
// double). A template flag, so that the plain kernel keeps its registers to itself.
// CIN > 0: the input channel count known at compile time, so that the 9 * CIN taps unroll
// with constant weight offsets; looped, GCC spilled accumulators to the stack in the tap
// loop (MiniImagenet's input layer: 17.1 -> 13.6 ms for 75 images, one thread).
template <int V, bool Moments, int CIN>
inline void forward_tile(const Bordered& in, int cin_runtime, const float* w, int oy, bool last_row, int ox0,
                         int valid_last, const float* bias, bool accumulate, float* y, int64_t out_plane, int ow,
                         double* moments) {
  __m256 acc[4][V];
  const int cin = CIN > 0 ? CIN : cin_runtime;
MAML_UNROLL(4)
  for (int c = 0; c < 4; ++c)
MAML_UNROLL(3)
    for (int v = 0; v < V; ++v) acc[c][v] = _mm256_setzero_ps();
  const int depth = cin * 9;
  const float* weight_rows[4];
  for (int c = 0; c < 4; ++c) weight_rows[c] = w + c * depth;
MAML_UNROLL(4)
  for (int ci = 0; ci < cin; ++ci)
MAML_UNROLL(3)
    for (int ky = 0; ky < 3; ++ky) {
      const float* row = in.row(ci, oy + ky) + ox0;
MAML_UNROLL(3)
      for (int kx = 0; kx < 3; ++kx) {
        __m256 x[V];
MAML_UNROLL(3)
        for (int v = 0; v < V; ++v) {
          x[v] = _mm256_loadu_ps(row + kx + 8 * v);
          __asm__("" : "+x"(x[v]));  // one load per vector, not one per FMA (as in gemm.h)
        }
        const int tap = (ci * 3 + ky) * 3 + kx;
MAML_UNROLL(4)
        for (int c = 0; c < 4; ++c) {
          const __m256 weight = _mm256_broadcast_ss(weight_rows[c] + tap);
MAML_UNROLL(3)
          for (int v = 0; v < V; ++v) acc[c][v] = _mm256_fmadd_ps(weight, x[v], acc[c][v]);
        }
      }
    }
  const __m256i last = first_lanes(valid_last);
  // constant indices only (unrolled): a variable index into acc would keep the
  // accumulators in memory for the whole tap loop
MAML_UNROLL(4)
  for (int c = 0; c < 4; ++c) {
    float* out = y + c * out_plane + int64_t(oy) * ow + ox0;
    __m256 sum = _mm256_setzero_ps(), squares = _mm256_setzero_ps();
    const __m256 b = _mm256_set1_ps(bias ? bias[c] : 0.0f);
MAML_UNROLL(3)
    for (int v = 0; v < V; ++v) {
      __m256 value = _mm256_add_ps(acc[c][v], b);
      if (v == V - 1 && valid_last < 8 && last_row) {  // past the plane: another unit's values
        if (accumulate) value = _mm256_add_ps(value, _mm256_maskload_ps(out + 8 * v, last));
        _mm256_maskstore_ps(out + 8 * v, last, value);
      } else if (v == V - 1 && valid_last < 8) {
        // past the row end lies this plane's next row: written back as it was, with one
        // full store (masked stores are slow on AMD Zen)
        const __m256 old = _mm256_loadu_ps(out + 8 * v);
        if (accumulate) value = _mm256_add_ps(value, old);
        _mm256_storeu_ps(out + 8 * v, _mm256_blendv_ps(old, value, _mm256_castsi256_ps(last)));
      } else {
        if (accumulate) value = _mm256_add_ps(value, _mm256_loadu_ps(out + 8 * v));
        _mm256_storeu_ps(out + 8 * v, value);
      }
      if constexpr (Moments) {  // the lanes past the row end hold no output: masked out
        const __m256 counted = v == V - 1 && valid_last < 8 ? _mm256_and_ps(value, _mm256_castsi256_ps(last)) : value;
        sum = _mm256_add_ps(sum, counted);
        squares = _mm256_fmadd_ps(counted, counted, squares);
      }
    }
    if constexpr (Moments) {  // the tile's partial sums (at most 3 values a lane) go on in double
      double* m = moments + c * 8;
      const __m256d s = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(sum)), _mm256_cvtps_pd(_mm256_extractf128_ps(sum, 1)));
      const __m256d q = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(squares)),
                                      _mm256_cvtps_pd(_mm256_extractf128_ps(squares, 1)));
      _mm256_storeu_pd(m, _mm256_add_pd(_mm256_loadu_pd(m), s));
      _mm256_storeu_pd(m + 4, _mm256_add_pd(_mm256_loadu_pd(m + 4), q));
    }
  }
}

// Every output row of four channels, in tiles of three vectors and one shorter tail tile.
template <bool Moments, int CIN, class G>
void output_row_tiles_of(const G& g, const Bordered& in, const float* wc, const float* bc, bool accumulate, float* yc,
                      int64_t out_plane, double* lanes) {
  for (int oy = 0; oy < g.oh; ++oy) {
    const bool last_row = oy == g.oh - 1;
    int ox = 0;
    for (; ox + 24 <= g.ow; ox += 24)
      forward_tile<3, Moments, CIN>(in, g.cin, wc, oy, last_row, ox, 8, bc, accumulate, yc, out_plane, g.ow, lanes);
    const int rest = g.ow - ox;
    if (rest > 16)
      forward_tile<3, Moments, CIN>(in, g.cin, wc, oy, last_row, ox, rest - 16, bc, accumulate, yc, out_plane, g.ow,
                                     lanes);
    else if (rest > 8)
      forward_tile<2, Moments, CIN>(in, g.cin, wc, oy, last_row, ox, rest - 8, bc, accumulate, yc, out_plane, g.ow,
                                     lanes);
    else if (rest > 0)
      forward_tile<1, Moments, CIN>(in, g.cin, wc, oy, last_row, ox, rest, bc, accumulate, yc, out_plane, g.ow, lanes);
  }
}

template <bool Moments, class G>
void output_row_tiles(const G& g, const Bordered& in, const float* wc, const float* bc, bool accumulate, float* yc,
                      int64_t out_plane, double* lanes) {
  switch (g.cin) {
    case 1: return output_row_tiles_of<Moments, 1>(g, in, wc, bc, accumulate, yc, out_plane, lanes);
    case 3: return output_row_tiles_of<Moments, 3>(g, in, wc, bc, accumulate, yc, out_plane, lanes);
    default: return output_row_tiles_of<Moments, 0>(g, in, wc, bc, accumulate, yc, out_plane, lanes);
  }
}

// One example: y (+)= conv(x, w) + bias over the output channels [c0, c1) (multiples of 4).
// moments (or null, and only with accumulate false): [cout][2] = sum(y), sum(y^2) of each
// output plane, summed in double for the batch norm that follows (network.cpp), which
// then skips its own passes. pool (or null): each four channels' planes are pooled while
// in L2 (conv_pool.h); task and example locate them.
template <class G>
void forward_example(const G& g, const float* x, const float* w, const float* bias, bool accumulate, float* y,
                     Bordered& in, double* moments, int c0, int c1, const PoolByScale<float>* pool, int task,
                     int64_t example) {
  in.fill(g, x);
  const int64_t out_plane = int64_t(g.oh) * g.ow;
  for (int co = c0; co < c1; co += 4) {
    const float* wc = w + int64_t(co) * g.cin * 9;
    const float* bc = bias ? bias + co : nullptr;
    float* yc = y + co * out_plane;
    alignas(32) double lanes[4 * 8] = {};
    if (moments)
      output_row_tiles<true>(g, in, wc, bc, accumulate, yc, out_plane, lanes);
    else
      output_row_tiles<false>(g, in, wc, bc, accumulate, yc, out_plane, lanes);
    if (pool) pool->pool(g, task, example, co, co + 4, y);
    if (!moments) continue;
    for (int c = 0; c < 4; ++c) {
      const double* l = lanes + c * 8;
      moments[(co + c) * 2] = (l[0] + l[2]) + (l[1] + l[3]);
      moments[(co + c) * 2 + 1] = (l[4] + l[6]) + (l[5] + l[7]);
    }
  }
}

// dw[co..co+4, ci, ky, 0..3] += sum over the example of y_grad * shifted image rows.
template <class G>
void weight_grad_example(const G& g, const Bordered& in, const float* y_grad, int co, float* dw) {
  const int64_t out_plane = int64_t(g.oh) * g.ow;
  const int depth = g.cin * 9;
  for (int ci = 0; ci < g.cin; ++ci)
    for (int ky = 0; ky < 3; ++ky) {
      __m256 acc[4][3];
MAML_UNROLL(4)
      for (int c = 0; c < 4; ++c)
MAML_UNROLL(3)
        for (int k = 0; k < 3; ++k) acc[c][k] = _mm256_setzero_ps();
      const float* grad_rows[4];
      for (int c = 0; c < 4; ++c) grad_rows[c] = y_grad + (co + c) * out_plane;
      // d[c] = y_grad[co + c] at 8 positions; x = the image row shifted by each tap
      // the three shifted image vectors stay in registers and each channel's y_grad vector is
      // loaded once for its three FMAs: 12 accumulators + 3 + 1 = all 16 registers
      const auto accumulate = [&](const float* row, int64_t at, int ox, bool full, __m256i lanes) {
        __m256 x[3];
MAML_UNROLL(3)
        for (int k = 0; k < 3; ++k) {
          x[k] = _mm256_loadu_ps(row + ox + k);
          __asm__("" : "+x"(x[k]));
        }
MAML_UNROLL(4)
        for (int c = 0; c < 4; ++c) {
          __m256 d = full ? _mm256_loadu_ps(grad_rows[c] + at) : _mm256_maskload_ps(grad_rows[c] + at, lanes);
          __asm__("" : "+x"(d));  // one load for its three FMAs, not a memory operand in each
MAML_UNROLL(3)
          for (int k = 0; k < 3; ++k) acc[c][k] = _mm256_fmadd_ps(d, x[k], acc[c][k]);
        }
      };
      const int full_end = g.ow / 8 * 8;
      // lanes past the row end read zeros of y_grad, so they add nothing
      const __m256i tail = first_lanes(g.ow - full_end);
      for (int oy = 0; oy < g.oh; ++oy) {
        const float* row = in.row(ci, oy + ky);
        const int64_t at = int64_t(oy) * g.ow;
        for (int ox = 0; ox < full_end; ox += 8) accumulate(row, at + ox, ox, true, tail);
        if (full_end < g.ow) accumulate(row, at + full_end, full_end, false, tail);
      }
MAML_UNROLL(4)
      for (int c = 0; c < 4; ++c)
MAML_UNROLL(3)
        for (int k = 0; k < 3; ++k) {
          alignas(32) float lane[8];
          _mm256_store_ps(lane, acc[c][k]);
          // pairwise, in a fixed order: results do not depend on threads
          const float sum = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
          dw[int64_t(co + c) * depth + (ci * 3 + ky) * 3 + k] += sum;
        }
    }
}
#else
constexpr bool available = false;
#endif

}  // namespace direct_conv

// Whether conv_forward / conv_weight_grad take the direct path for this layer and type.
template <class T, class G>
bool conv_is_direct(const G& g) {
  return std::is_same<T, float>::value && direct_conv::available && g.stride == 1 &&
         g.cin <= direct_conv::kMaxInputChannels && g.cout % 4 == 0 && g.ow >= 8 && g.oh == g.h && g.ow == g.w;
}

}  // namespace maml
