// 3x3 convolution over a batch of tasks, each with its own weights, by im2col + GEMM.
// Two kinds of layer skip im2col: stride-1 'same' layers read shifted views of bordered
// planes through indirect tiles (conv_shifted.h), and float layers with few input
// channels use direct kernels (conv_direct.h). What remains here is the stride-2 path.
//
// Shapes: x [tasks, batch, cin, h, w], y [tasks, batch, cout, oh, ow], weights per task
// [cout, cin, 3, 3] (a row-major [cout, cin*9] matrix, which is why no reshaping is
// needed), biases per task [cout]. Padding is given as rows/columns of zeros before the
// image (TensorFlow's 'SAME' pads unevenly for stride 2: see architecture.cpp).
//
// The three rules (MATH.md, "Convolution and linear"):
//   forward        y  = conv(x, W) + b
//   input grad     x_grad = conv_transpose(y_grad, W)
//   weight grad    W_grad = correlate(x, y_grad),  b_grad = sum(y_grad)
// Tangents reuse the same three functions with accumulate = true, because the layer is
// bilinear in (x, W). Reference: conv_reference.h; checked in tests/test_conv.cpp.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "bordered_plane.h"
#include "conv_direct.h"
#include "conv_shifted.h"
#include "gemm.h"
#include "parallel.h"
#include "reduce.h"
#include "scratch.h"

namespace maml {

struct ConvGeometry {
  int cin, h, w, cout, oh, ow, stride, pad_top, pad_left;
  int depth() const { return cin * 9; }
  int64_t in_plane() const { return int64_t(h) * w; }
  int64_t out_plane() const { return int64_t(oh) * ow; }
  int64_t in_size() const { return cin * in_plane(); }
  int64_t out_size() const { return cout * out_plane(); }
};

// A layer input's im2col matrix kept from the forward pass, laid out per task as the
// column chunks the kernels use ([depth, cols] each), so the tangent's W' x and the weight
// gradients read it instead of rebuilding it. data null: nothing kept (it did not fit the
// budget) and every user rebuilds its chunks, as before.
template <class T>
struct ColumnStore {
  T* data = nullptr;
  bool filled = false;
  T* chunk(const ConvGeometry& g, int task, int64_t columns, int64_t first) const {
    return data + (int64_t(task) * columns + first) * g.depth();
  }
};

// Whether a layer reads an im2col matrix at all: direct layers (conv_direct.h) and
// shifted ones (conv_shifted.h) never build one, so nothing should be kept for them.
template <class T>
bool conv_uses_columns(const ConvGeometry& g) {
  return !conv_is_direct<T>(g) && !shifted_conv::applies(g);
}

namespace conv_detail {

// Columns per GEMM call: enough to amortise packing the weights, small enough that the
// im2col block stays in cache. Columns run over all examples of a task (n * oh * ow), so
// the small late layers (4 or 16 positions) still make wide matrices.
inline int column_chunk(const ConvGeometry& g) {
  int chunk = (65536 / std::max(1, g.depth()) + 15) / 16 * 16;
  return std::clamp(chunk, 64, 1024);
}

// Visits the columns [first, first + count) of a task as runs inside one example:
// visit(example, position_in_example, length, offset_in_chunk).
template <class Visit>
void for_each_run(const ConvGeometry& g, int64_t first, int64_t count, Visit visit) {
  const int64_t plane = g.out_plane();
  int64_t p = first;
  const int64_t end = first + count;
  while (p < end) {
    const int64_t example = p / plane, position = p % plane;
    const int64_t length = std::min(end - p, plane - position);
    visit(example, position, length, p - first);
    p += length;
  }
}

// Small planes (omniglot's stride-2 layers have output rows of 14, 7, 4 and 2) spend more
// time on the row-segment bounds below than on copying. There each input plane is copied
// once into a zero-bordered buffer, and the nine shifted views of it are read (im2col) or
// added into (col2im) through a table of offsets: no bounds at all in the inner loops.
struct BorderedPlanes {
  ConvGeometry g{};
  int rows = 0, cols = 0;        // of the bordered plane: rows r <-> input row r - pad_top
  std::vector<int32_t> offsets;  // [9][out_plane]: (oy*s + ky) * cols + ox*s + kx
};

inline bool use_bordered_planes(const ConvGeometry& g) { return g.ow <= 16; }

inline bool same_geometry(const ConvGeometry& a, const ConvGeometry& b) {
  return a.cin == b.cin && a.h == b.h && a.w == b.w && a.cout == b.cout && a.oh == b.oh && a.ow == b.ow &&
         a.stride == b.stride && a.pad_top == b.pad_top && a.pad_left == b.pad_left;
}

// The calling thread's table for g, rebuilt when the layer changes (9 * out_plane ints).
inline const BorderedPlanes& bordered_planes(const ConvGeometry& g) {
  thread_local BorderedPlanes b;
  if (!b.offsets.empty() && same_geometry(b.g, g)) return b;
  b.g = g;
  b.rows = (g.oh - 1) * g.stride + 3;
  b.cols = (g.ow - 1) * g.stride + 3;
  b.offsets.resize(size_t(9) * g.out_plane());
  for (int k = 0; k < 9; ++k)
    for (int oy = 0; oy < g.oh; ++oy)
      for (int ox = 0; ox < g.ow; ++ox)
        b.offsets[k * g.out_plane() + oy * g.ow + ox] = (oy * g.stride + k / 3) * b.cols + ox * g.stride + k % 3;
  return b;
}

// The bordered copy of one input plane, in the calling thread's scratch (slot 0: im2col, 1: col2im).
template <class T>
T* bordered_scratch(const BorderedPlanes& b, int slot) {
  return thread_scratch<T, BorderedPlanes, 2>(slot, size_t(b.rows) * b.cols);
}

template <class T>
void im2col_bordered(const ConvGeometry& g, const T* x, int64_t first, int64_t count, T* col, int64_t ld) {
  const BorderedPlanes& b = bordered_planes(g);
  T* bordered = bordered_scratch<T>(b, 0);
  for (int ci = 0; ci < g.cin; ++ci) {
    copy_with_border(x + ci * g.in_plane(), g.h, g.w, g.pad_top, g.pad_left, b.rows, b.cols, bordered);
    for (int k = 0; k < 9; ++k) {
      const int32_t* offset = b.offsets.data() + k * g.out_plane() + first;
      T* row = col + int64_t(ci * 9 + k) * ld;
      for (int64_t j = 0; j < count; ++j) row[j] = bordered[offset[j]];
    }
  }
}

template <class T>
void col2im_bordered(const ConvGeometry& g, const T* col, int64_t ld, int c0, int c1, int64_t first, int64_t count,
                     T* x) {
  const BorderedPlanes& b = bordered_planes(g);
  T* bordered = bordered_scratch<T>(b, 1);
  for (int ci = c0; ci < c1; ++ci) {
    std::fill(bordered, bordered + size_t(b.rows) * b.cols, T(0));
    for (int k = 0; k < 9; ++k) {
      const int32_t* offset = b.offsets.data() + k * g.out_plane() + first;
      const T* row = col + int64_t((ci - c0) * 9 + k) * ld;
      for (int64_t j = 0; j < count; ++j) bordered[offset[j]] += row[j];
    }
    // the border collected what fell on padding: only the plane itself goes back
    T* plane = x + ci * g.in_plane();
    for (int iy = 0; iy < g.h; ++iy) {
      const int r = iy + g.pad_top;
      if (r >= b.rows) break;
      const int hi = std::min(g.w, b.cols - g.pad_left);
      const T* in = bordered + r * b.cols + g.pad_left;
      for (int ix = 0; ix < hi; ++ix) plane[iy * g.w + ix] += in[ix];
    }
  }
}

// col[(ci*9 + ky*3 + kx) * ld + offset + j] = x[ci, oy*s + ky - pt, ox*s + kx - pl] for the
// output positions [first, first + count) of one example (row-major over oy, ox).
template <class T>
void im2col(const ConvGeometry& g, const T* x, int64_t first, int64_t count, T* col, int64_t ld) {
  if (use_bordered_planes(g)) return im2col_bordered(g, x, first, count, col, ld);
  for (int ci = 0; ci < g.cin; ++ci) {
    const T* plane = x + ci * g.in_plane();
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx) {
        T* row = col + int64_t((ci * 3 + ky) * 3 + kx) * ld;
        // walk output-row segments (no division inside: late layers have rows of 2 to 7):
        // the valid ox range is computed once per segment
        int64_t position = first;
        const int64_t end = first + count;
        const int shift = kx - g.pad_left;
        const int valid_lo = shift >= 0 ? 0 : (-shift + g.stride - 1) / g.stride;
        const int valid_hi = (g.w - 1 - shift) >= 0 ? (g.w - 1 - shift) / g.stride + 1 : 0;
        int oy = int(first / g.ow), ox0 = int(first % g.ow);
        for (; position < end; ++oy, ox0 = 0) {
          const int ox1 = int(std::min<int64_t>(g.ow, ox0 + (end - position)));
          const int iy = oy * g.stride + ky - g.pad_top;
          T* out = row + (position - first) - ox0;
          if (iy < 0 || iy >= g.h) {
            for (int ox = ox0; ox < ox1; ++ox) out[ox] = T(0);
          } else {
            const T* in = plane + int64_t(iy) * g.w + shift;
            const int lo = std::clamp(valid_lo, ox0, ox1), hi = std::clamp(valid_hi, lo, ox1);
            for (int ox = ox0; ox < lo; ++ox) out[ox] = T(0);
            if (g.stride == 1) {
              for (int ox = lo; ox < hi; ++ox) out[ox] = in[ox];
            } else {
              for (int ox = lo; ox < hi; ++ox) out[ox] = in[ox * g.stride];
            }
            for (int ox = hi; ox < ox1; ++ox) out[ox] = T(0);
          }
          position += ox1 - ox0;
        }
      }
  }
}

// The adjoint of im2col for input channels [c0, c1): x[...] += col[...] for the output
// positions [first, first + count) of one example (same row-segment walk as im2col).
template <class T>
void col2im_add(const ConvGeometry& g, const T* col, int64_t ld, int c0, int c1, int64_t first, int64_t count, T* x) {
  if (use_bordered_planes(g)) return col2im_bordered(g, col, ld, c0, c1, first, count, x);
  for (int ci = c0; ci < c1; ++ci) {
    T* plane = x + ci * g.in_plane();
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx) {
        const T* row = col + int64_t(((ci - c0) * 3 + ky) * 3 + kx) * ld;
        const int shift = kx - g.pad_left;
        const int valid_lo = shift >= 0 ? 0 : (-shift + g.stride - 1) / g.stride;
        const int valid_hi = (g.w - 1 - shift) >= 0 ? (g.w - 1 - shift) / g.stride + 1 : 0;
        int64_t position = first;
        const int64_t end = first + count;
        int oy = int(first / g.ow), ox0 = int(first % g.ow);
        for (; position < end; ++oy, ox0 = 0) {
          const int ox1 = int(std::min<int64_t>(g.ow, ox0 + (end - position)));
          const int iy = oy * g.stride + ky - g.pad_top;
          if (iy >= 0 && iy < g.h) {
            const T* in = row + (position - first) - ox0;
            T* out = plane + int64_t(iy) * g.w + shift;
            const int lo = std::clamp(valid_lo, ox0, ox1), hi = std::clamp(valid_hi, lo, ox1);
            if (g.stride == 1) {
              for (int ox = lo; ox < hi; ++ox) out[ox] += in[ox];
            } else {
              for (int ox = lo; ox < hi; ++ox) out[ox * g.stride] += in[ox];
            }
          }
          position += ox1 - ox0;
        }
      }
  }
}

// [cout, count] block of a task's y (layout [batch, cout, plane]) <-> a dense matrix.
template <class T>
void gather_columns(const ConvGeometry& g, const T* y_task, int64_t first, int64_t count, T* dense) {
  for_each_run(g, first, count, [&](int64_t example, int64_t position, int64_t length, int64_t offset) {
    const T* src = y_task + example * g.out_size() + position;
    for (int co = 0; co < g.cout; ++co) std::copy(src + co * g.out_plane(), src + co * g.out_plane() + length, dense + co * count + offset);
  });
}

template <class T>
void scatter_columns(const ConvGeometry& g, const T* dense, int64_t first, int64_t count, const T* bias, bool accumulate,
                     T* y_task) {
  for_each_run(g, first, count, [&](int64_t example, int64_t position, int64_t length, int64_t offset) {
    T* dst = y_task + example * g.out_size() + position;
    for (int co = 0; co < g.cout; ++co) {
      const T* src = dense + co * count + offset;
      T* out = dst + co * g.out_plane();
      const T b = bias ? bias[co] : T(0);
      if (accumulate) {
        for (int64_t j = 0; j < length; ++j) out[j] += src[j] + b;
      } else {
        for (int64_t j = 0; j < length; ++j) out[j] = src[j] + b;
      }
    }
  });
}

template <class T>
void im2col_columns(const ConvGeometry& g, const T* x_task, int64_t first, int64_t count, T* col) {
  for_each_run(g, first, count, [&](int64_t example, int64_t position, int64_t length, int64_t offset) {
    im2col(g, x_task + example * g.in_size(), position, length, col + offset, count);
  });
}

struct ConvScratch;  // owner tag: 0 im2col block, 1 dense output/gradient block, 2 col2im block, 3 packed weights
template <class T>
T* scratch(int slot, size_t size) {
  return thread_scratch<T, ConvScratch, 4>(slot, size);
}

// Every task's weights [cout, depth] packed once for the GEMM micro-kernel: each is
// multiplied by all column chunks of its task, so packing per chunk repeated the work
// hundreds of times. Lives in the calling thread's storage until its next layer.
struct PackedForwardWeights;  // owner tag of that storage
template <class T>
const T* pack_forward_weights(const ConvGeometry& g, int tasks, const T* const* weights, gemm_detail::TileShape shape) {
  const size_t size = packed_a_size<T>(shape, g.cout, g.depth());
  T* data = thread_scratch<T, PackedForwardWeights, 1>(0, size * tasks);
  parallel_for(tasks, [&](int64_t task) {
    pack_a_matrix<T>(shape, g.cout, g.depth(), weights[task], row_major(g.depth()), data + task * size);
  });
  return data;
}

inline shifted_conv::Geometry shifted_geometry(const ConvGeometry& g) { return {g.cin, g.h, g.w, g.cout}; }

// Every task's weights packed for the shifted kernels, in the calling thread's storage
// until its next layer; flip: pack the input gradient's flipped weights instead.
template <class T>
const T* pack_shifted_weights(const ConvGeometry& g, int tasks, const T* const* weights, bool flip) {
  const int rows = flip ? g.cin : g.cout, depth = (flip ? g.cout : g.cin) * 9;
  const size_t size = shifted_conv::packed_weights_size<T>(rows, depth);
  T* data = thread_scratch<T, PackedForwardWeights, 1>(0, size * tasks);
  parallel_for(tasks, [&](int64_t task) {
    const T* w = weights[task];
    if (flip) {
      T* flipped = shifted_conv::scratch<T>(3, size_t(rows) * depth);
      shifted_conv::flip_weights(g.cin, g.cout, w, flipped);
      w = flipped;
    }
    shifted_conv::pack_weights<T>(rows, depth, w, data + task * size);
  });
  return data;
}

// The input gradient of a shifted layer as the forward conv of y_grad with the flipped
// weights: y_grad's planes are the input, x_grad's the output.
template <class T>
void shifted_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, const T* const* weights,
                        T* x_grad, bool accumulate) {
  const shifted_conv::Geometry adjoint{g.cout, g.h, g.w, g.cin};
  const size_t size = shifted_conv::packed_weights_size<T>(g.cin, g.cout * 9);
  const T* packed = pack_shifted_weights(g, tasks, weights, true);
  parallel_for(int64_t(tasks) * batch, [&](int64_t unit) {
    shifted_conv::forward_example(adjoint, packed + (unit / batch) * size, y_grad + unit * g.out_size(),
                                  static_cast<const T*>(nullptr), accumulate, x_grad + unit * g.in_size());
  });
}

}  // namespace conv_detail

// columns (optional): filled with im2col(x) on first use, read back afterwards; unused
// by direct layers (conv_is_direct).
template <class T>
void conv_forward(const ConvGeometry& g, int tasks, int batch, const T* x, const T* const* weights,
                  const T* const* biases, T* y, bool accumulate, ColumnStore<T>* columns_store = nullptr) {
  using namespace conv_detail;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same<T, float>::value) {
    if (conv_is_direct<T>(g)) {
      parallel_for(int64_t(tasks) * batch, [&](int64_t unit) {
        const int task = int(unit / batch);
        thread_local direct_conv::Bordered bordered;
        direct_conv::forward_example(g, x + unit * g.in_size(), weights[task], biases ? biases[task] : nullptr,
                                     accumulate, y + unit * g.out_size(), bordered);
      });
      return;
    }
  }
#endif
  if (shifted_conv::applies(g)) {
    const size_t packed_size = shifted_conv::packed_weights_size<T>(g.cout, g.depth());
    const T* packed_weights = pack_shifted_weights(g, tasks, weights, false);
    parallel_for(int64_t(tasks) * batch, [&](int64_t unit) {
      const int task = int(unit / batch);
      shifted_conv::forward_example(shifted_geometry(g), packed_weights + task * packed_size,
                                    x + unit * g.in_size(), biases && biases[task] ? biases[task] : nullptr,
                                    accumulate, y + unit * g.out_size());
    });
    return;
  }
  const int chunk = column_chunk(g);
  const int64_t columns = int64_t(batch) * g.out_plane();
  const int64_t chunks = (columns + chunk - 1) / chunk;
  const bool stored = columns_store && columns_store->data;
  const bool reuse = stored && columns_store->filled;
  const auto shape = gemm_tile_shape<T>(g.cout, chunk);
  const size_t packed_size = packed_a_size<T>(shape, g.cout, g.depth());
  const T* packed_weights = pack_forward_weights(g, tasks, weights, shape);
  parallel_for(int64_t(tasks) * chunks, [&](int64_t unit) {
    const int task = int(unit / chunks);
    const int64_t first = (unit % chunks) * chunk;
    const int cols = int(std::min<int64_t>(chunk, columns - first));
    T* col = stored ? columns_store->chunk(g, task, columns, first) : scratch<T>(0, size_t(g.depth()) * chunk);
    T* out = scratch<T>(1, size_t(g.cout) * chunk);
    const T* x_task = x + int64_t(task) * batch * g.in_size();
    if (!reuse) im2col_columns(g, x_task, first, cols, col);
    gemm_packed<T>(shape, g.cout, cols, g.depth(), T(1), packed_weights + task * packed_size, col, row_major(cols), T(0),
                   out, cols);
    scatter_columns(g, out, first, cols, biases && biases[task] ? biases[task] : nullptr, accumulate,
                    y + int64_t(task) * batch * g.out_size());
  });
  if (stored) columns_store->filled = true;
}

// With a second pair (y_grad2, weights2) the result is convT(y_grad, W) + convT(y_grad2, W2),
// summed before the col2im scatter (the tangent rule needs exactly that sum).
template <class T>
void conv_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, const T* const* weights, T* x_grad,
                     bool accumulate, const T* y_grad2 = nullptr, const T* const* weights2 = nullptr) {
  using namespace conv_detail;
  if (shifted_conv::applies(g)) {
    shifted_input_grad(g, tasks, batch, y_grad, weights, x_grad, accumulate);
    if (y_grad2) shifted_input_grad(g, tasks, batch, y_grad2, weights2, x_grad, true);
    return;
  }
  // Split by blocks of input channels: each unit owns its slice of x_grad, so the
  // overlapping 3x3 scatter of col2im never races. With tasks enough to keep every
  // thread busy, one block per task: each block gathers and packs y_grad again.
  const int channel_block = tasks >= 2 * thread_count() ? g.cin : std::min(g.cin, 8);
  const int blocks = (g.cin + channel_block - 1) / channel_block;
  const int chunk = column_chunk(g);
  const int64_t columns = int64_t(batch) * g.out_plane();
  parallel_for(int64_t(tasks) * blocks, [&](int64_t unit) {
    const int task = int(unit / blocks);
    const int c0 = int(unit % blocks) * channel_block, c1 = std::min(g.cin, c0 + channel_block);
    const int rows = (c1 - c0) * 9;
    T* dx_task = x_grad + int64_t(task) * batch * g.in_size();
    if (!accumulate)
      for (int n = 0; n < batch; ++n)
        std::fill(dx_task + n * g.in_size() + c0 * g.in_plane(), dx_task + n * g.in_size() + c1 * g.in_plane(), T(0));
    T* dense = scratch<T>(1, size_t(g.cout) * chunk);
    T* col = scratch<T>(2, size_t(rows) * chunk);
    // W[:, c0*9 .. c1*9]^T (and W2's) packed once for all column chunks of the unit
    const auto shape = gemm_tile_shape<T>(rows, chunk);
    const size_t packed_size = packed_a_size<T>(shape, rows, g.cout);
    T* packed = scratch<T>(3, packed_size * (y_grad2 ? 2 : 1));
    pack_a_matrix<T>(shape, rows, g.cout, weights[task] + c0 * 9, transposed(g.depth()), packed);
    if (y_grad2) pack_a_matrix<T>(shape, rows, g.cout, weights2[task] + c0 * 9, transposed(g.depth()), packed + packed_size);
    const T* dy_task = y_grad + int64_t(task) * batch * g.out_size();
    for (int64_t first = 0; first < columns; first += chunk) {
      const int cols = int(std::min<int64_t>(chunk, columns - first));
      gather_columns(g, dy_task, first, cols, dense);
      // col[rows, cols] = W[:, c0*9 .. c1*9]^T  y_grad[cout, cols]
      gemm_packed<T>(shape, rows, cols, g.cout, T(1), packed, dense, row_major(cols), T(0), col, cols);
      if (y_grad2) {
        gather_columns(g, y_grad2 + int64_t(task) * batch * g.out_size(), first, cols, dense);
        gemm_packed<T>(shape, rows, cols, g.cout, T(1), packed + packed_size, dense, row_major(cols), T(1), col, cols);
      }
      for_each_run(g, first, cols, [&](int64_t example, int64_t position, int64_t length, int64_t offset) {
        col2im_add(g, col + offset, cols, c0, c1, position, length, dx_task + example * g.in_size());
      });
    }
  });
}

// b_grad[task][co] (+)= sum of y_grad over the task's examples and positions.
template <class T>
void conv_bias_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, T* const* bias_grads, bool accumulate) {
  if (bias_grads) {
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
}

// columns (optional): im2col(x) kept by conv_forward; used when filled.
template <class T>
void conv_weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad, T* const* weight_grads,
                      T* const* bias_grads, bool accumulate, const ColumnStore<T>* columns_store = nullptr) {
  using namespace conv_detail;
  const int chunk = column_chunk(g);
  const int64_t columns = int64_t(batch) * g.out_plane();
  const int64_t chunks = (columns + chunk - 1) / chunk;
  const int64_t weight_size = int64_t(g.cout) * g.depth();
  const int threads = thread_count();
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same<T, float>::value) {
    if (conv_is_direct<T>(g)) {
      // units own four output channels of one task: their rows of dw, no races
      const int blocks = g.cout / 4;
      parallel_for(int64_t(tasks) * blocks, [&](int64_t unit) {
        const int task = int(unit / blocks), co = int(unit % blocks) * 4;
        T* dw = weight_grads[task];
        if (!accumulate) std::fill(dw + int64_t(co) * g.depth(), dw + int64_t(co + 4) * g.depth(), T(0));
        thread_local direct_conv::Bordered bordered;
        for (int n = 0; n < batch; ++n) {
          const int64_t example = int64_t(task) * batch + n;
          bordered.fill(g, x + example * g.in_size());
          direct_conv::weight_grad_example(g, bordered, y_grad + example * g.out_size(), co, dw);
        }
      });
      conv_bias_grad(g, tasks, batch, y_grad, bias_grads, accumulate);
      return;
    }
  }
#endif
  const bool shifted = shifted_conv::applies(g);
  // dw[cout, depth] += y_grad[cout, cols] col[depth, cols]^T over the column chunks of a task
  // (shifted layers: over the examples of a task, one unit per example)
  auto accumulate_chunk = [&](int task, int64_t unit, T* dw) {
    if (shifted) {
      const int64_t example = int64_t(task) * batch + unit;
      shifted_conv::weight_grad_example(shifted_geometry(g), x + example * g.in_size(), y_grad + example * g.out_size(), dw);
      return;
    }
    const int64_t first = unit * chunk;
    const int cols = int(std::min<int64_t>(chunk, columns - first));
    T* dense = scratch<T>(1, size_t(g.cout) * chunk);
    const T* col;
    if (columns_store && columns_store->filled) {
      col = columns_store->chunk(g, task, columns, first);
    } else {
      T* built = scratch<T>(0, size_t(g.depth()) * chunk);
      im2col_columns(g, x + int64_t(task) * batch * g.in_size(), first, cols, built);
      col = built;
    }
    gather_columns(g, y_grad + int64_t(task) * batch * g.out_size(), first, cols, dense);
    gemm<T>(g.cout, g.depth(), cols, T(1), dense, row_major(cols), col, transposed(cols), T(1), dw, g.depth());
  };
  const int64_t units_per_task = shifted ? batch : chunks;
  if (tasks >= threads || units_per_task == 1) {
    // each thread owns whole tasks
    parallel_for(tasks, [&](int64_t task) {
      T* dw = weight_grads[task];
      if (!accumulate) std::fill(dw, dw + weight_size, T(0));
      for (int64_t u = 0; u < units_per_task; ++u) accumulate_chunk(int(task), u, dw);
    });
  } else {
    // Slot s sums chunks s, s + threads, ... in a fixed order: the result does not depend
    // on thread timing, so a resumed run reproduces an uninterrupted one bit for bit.
    thread_local std::vector<T> partial_storage;
    std::vector<T>& partial = partial_storage;
    partial.assign(size_t(threads) * tasks * weight_size, T(0));
    const int64_t units = int64_t(tasks) * units_per_task;
    parallel_for(threads, [&](int64_t slot) {
      for (int64_t unit = slot; unit < units; unit += threads) {
        const int task = int(unit / units_per_task);
        accumulate_chunk(task, unit % units_per_task, partial.data() + (size_t(slot) * tasks + task) * weight_size);
      }
    });
    for (int task = 0; task < tasks; ++task) {
      T* dw = weight_grads[task];
      for (int64_t i = 0; i < weight_size; ++i) {
        T sum = accumulate ? dw[i] : T(0);
        for (int t = 0; t < threads; ++t) sum += partial[(size_t(t) * tasks + task) * weight_size + i];
        dw[i] = sum;
      }
    }
  }
  conv_bias_grad(g, tasks, batch, y_grad, bias_grads, accumulate);
}

}  // namespace maml
