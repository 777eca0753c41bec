// Stride-1 'same' 3x3 convolution with the im2col matrix never written.
//
// Copy each input plane into a zero-bordered plane of width w + 2, and let the output
// rows run over that width too: output position q = oy * (w + 2) + ox, ox < w + 2. Then
// the im2col row of (ci, ky, kx) at q is bordered_ci[q + ky * (w + 2) + kx], a plain
// shifted view of the bordered plane. The GEMM packs its B slivers straight from those
// views (gemm_packed_rows), so the 9x larger im2col matrix is neither written nor read
// back. The two border columns of every extended row are computed and dropped: 5% more
// FLOPs at w = 42, 10% at 21, far less than the im2col traffic they replace.
//
// The same views serve the three rules of conv.h:
//   forward      y = W * shifted views                                 (M cout, K cin*9)
//   input grad   x_grad = the forward conv of y_grad with W flipped in space and
//                transposed in channels (stride 1, pad 1: the adjoint is a conv again)
//   weight grad  W_grad += y_grad (extended, zeros in the border columns) * views^T
// Used by conv.h for layers where applies(g); checked by tests/test_layers.cpp against
// the definition and finite differences.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "bordered_plane.h"
#include "gemm.h"
#include "scratch.h"

namespace maml {
namespace shifted_conv {

struct Geometry {
  int cin, h, w, cout;
};

// Stride 1 with one row and column of padding on every side (TensorFlow's 'SAME' and
// PyTorch's padding=1 agree there).
template <class G>
bool applies(const G& g) {
  return g.stride == 1 && g.oh == g.h && g.ow == g.w && g.pad_top == 1 && g.pad_left == 1;
}

// Extended columns per GEMM call: a multiple of both sliver widths (16, 24), small
// enough that the packed B block stays in L2.
constexpr int chunk_columns = 240;

struct Layout {
  int cols = 0;           // w + 2
  int64_t plane = 0;      // (h + 2) * (w + 2)
  int64_t extended = 0;   // h * (w + 2): output positions including the border columns
  size_t size = 0;        // cin bordered planes and slack for the last views' overrun
  explicit Layout(const Geometry& g)
      : cols(g.w + 2), plane(int64_t(g.h + 2) * (g.w + 2)), extended(int64_t(g.h) * (g.w + 2)),
        size(size_t(g.cin) * plane + 8) {}
};

struct Scratch;  // owner tag: 0 bordered planes, 1 dense output block, 2 flipped weights
template <class T>
T* scratch(int slot, size_t size) {
  return thread_scratch<T, Scratch, 3>(slot, size);
}

// The bordered planes of one example, and the cin * 9 row views into them.
template <class T>
const T* const* bordered_views(const Geometry& g, const Layout& layout, const T* x_example) {
  T* bordered = scratch<T>(0, layout.size);
  for (int ci = 0; ci < g.cin; ++ci)
    copy_with_border(x_example + int64_t(ci) * g.h * g.w, g.h, g.w, 1, 1, g.h + 2, layout.cols,
                     bordered + ci * layout.plane);
  // the last views of the last plane read up to 2 values past it (border columns only)
  std::fill(bordered + size_t(g.cin) * layout.plane, bordered + layout.size, T(0));
  thread_local std::vector<const T*> views;
  views.resize(size_t(g.cin) * 9);
  for (int ci = 0; ci < g.cin; ++ci)
    for (int k = 0; k < 9; ++k) views[ci * 9 + k] = bordered + ci * layout.plane + (k / 3) * layout.cols + k % 3;
  return views.data();
}

// Visits the extended positions [first, first + count) as runs within one output row:
// visit(row, ox0, length, offset from first); the runs include the border columns.
template <class Visit>
void for_each_row_run(const Layout& layout, int64_t first, int64_t count, Visit visit) {
  for (int64_t q = first; q < first + count;) {
    const int64_t row = q / layout.cols, ox0 = q % layout.cols;
    const int64_t end = std::min(first + count, (row + 1) * layout.cols);
    visit(row, ox0, end - q, q - first);
    q = end;
  }
}

// y_example[co, oy, ox] (+)= dense[co, q - first] (+ bias[co]) for the extended positions
// [first, first + count) that are not border columns.
template <class T>
void scatter_extended(const Geometry& g, const Layout& layout, const T* dense, int64_t first, int64_t count,
                      const T* bias, bool accumulate, T* y_example) {
  const int64_t plane = int64_t(g.h) * g.w;
  for_each_row_run(layout, first, count, [&](int64_t row, int64_t ox0, int64_t length, int64_t offset) {
    const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(g.w - ox0, length));
    for (int co = 0; co < g.cout; ++co) {
      const T* s = dense + co * count + offset;
      T* o = y_example + co * plane + row * g.w + ox0;
      const T b = bias ? bias[co] : T(0);
      if (accumulate) {
        for (int64_t j = 0; j < valid; ++j) o[j] += s[j] + b;
      } else {
        for (int64_t j = 0; j < valid; ++j) o[j] = s[j] + b;
      }
    }
  });
}

// dense[co, q - first] = y_grad_example[co, oy, ox], zero in the border columns.
template <class T>
void gather_extended(const Geometry& g, const Layout& layout, const T* y_grad_example, int64_t first, int64_t count,
                     T* dense) {
  const int64_t plane = int64_t(g.h) * g.w;
  for_each_row_run(layout, first, count, [&](int64_t row, int64_t ox0, int64_t length, int64_t offset) {
    const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(g.w - ox0, length));
    for (int co = 0; co < g.cout; ++co) {
      T* d = dense + co * count + offset;
      const T* s = y_grad_example + co * plane + row * g.w + ox0;
      std::copy(s, s + valid, d);
      std::fill(d + valid, d + length, T(0));
    }
  });
}

// One example: y (+)= W x (+ b), W packed by pack_a_matrix for (shape, cout, cin * 9).
template <class T>
void forward_example(const Geometry& g, gemm_detail::TileShape shape, const T* packed_weights, const T* x_example,
                     const T* bias, bool accumulate, T* y_example) {
  const Layout layout(g);
  const T* const* views = bordered_views(g, layout, x_example);
  T* dense = scratch<T>(1, size_t(g.cout) * chunk_columns);
  for (int64_t first = 0; first < layout.extended; first += chunk_columns) {
    const int count = int(std::min<int64_t>(chunk_columns, layout.extended - first));
    gemm_packed_rows<T>(shape, g.cout, count, g.cin * 9, T(1), packed_weights, views, first, T(0), dense, count);
    scatter_extended(g, layout, dense, first, count, bias, accumulate, y_example);
  }
}

// dw[cout, cin * 9] += y_grad x^T over one example.
template <class T>
void weight_grad_example(const Geometry& g, const T* x_example, const T* y_grad_example, T* dw) {
  const Layout layout(g);
  const T* const* views = bordered_views(g, layout, x_example);
  T* dense = scratch<T>(1, size_t(g.cout) * chunk_columns);
  for (int64_t first = 0; first < layout.extended; first += chunk_columns) {
    const int count = int(std::min<int64_t>(chunk_columns, layout.extended - first));
    gather_extended(g, layout, y_grad_example, first, count, dense);
    gemm_rows_transposed<T>(g.cout, g.cin * 9, count, T(1), dense, row_major(count), views, first, T(1), dw,
                            g.cin * 9);
  }
}

// The input gradient's weights: flipped[ci, co, ky, kx] = w[co, ci, 2 - ky, 2 - kx], the
// forward weights of the adjoint conv (cin <-> cout).
template <class T>
void flip_weights(int cin, int cout, const T* w, T* flipped) {
  for (int ci = 0; ci < cin; ++ci)
    for (int co = 0; co < cout; ++co)
      for (int k = 0; k < 9; ++k) flipped[(int64_t(ci) * cout + co) * 9 + k] = w[(int64_t(co) * cin + ci) * 9 + 8 - k];
}

}  // namespace shifted_conv
}  // namespace maml
