// Stride-1 'same' 3x3 convolution with the im2col matrix never written.
//
// Copy each input plane into a zero-bordered plane of width w + 2, and let the output
// rows run over that width too: output position q = oy * (w + 2) + ox, ox < w + 2. Then
// the im2col row of (ci, ky, kx) at q is bordered_ci[q + ky * (w + 2) + kx], a plain
// shifted view of the bordered plane. The register tiles read those views in place
// through a table of pointers (gemm.h's indirect tiles, as in XNNPACK's indirect
// convolution), so the 9x larger im2col matrix is neither written nor packed. The two
// border columns of every extended row are computed and dropped: 5% more FLOPs at
// w = 42, 10% at 21, far less than the im2col traffic they replace.
//
// The same views serve the three rules of conv.h:
//   forward      y = W * views: tiles of 6 positions x 16 output channels (float)
//   input grad   the forward conv of y_grad with W flipped in space and transposed in
//                channels (stride 1, pad 1: the adjoint is a conv again), so no col2im
//   weight grad  dw^T = views * y_grad^T: tiles of 6 taps x 16 output channels, summed
//                over the extended positions (y_grad zero in the border columns)
// Used by conv.h where applies(g) (all miniimagenet layers but the direct first one);
// checked by tests/test_layers.cpp against the definition and exact adjoints.
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

// Extended positions per block: a whole number of 6-position tiles, few enough that a
// block's output tiles (forward) or y_grad^T sliver (weight gradient) stay in L1.
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

struct Scratch;  // owner tag: 0 bordered planes, 1 y_grad block or output tiles, 2 y_grad^T packed,
                 // 3 flipped weights, 4 weight-gradient tiles
template <class T>
T* scratch(int slot, size_t size) {
  return thread_scratch<T, Scratch, 5>(slot, size);
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
      // plain loops: runs of 10 to 42 values, where a memcpy call costs more than the copy
      for (int64_t j = 0; j < valid; ++j) d[j] = s[j];
      for (int64_t j = valid; j < length; ++j) d[j] = T(0);
    }
  });
}

// The register tile: 6 output positions x 2 vectors of output channels (16 in float).
template <class T>
using Tile = gemm_detail::TallTile<T>;

// Weights [cout, cin * 9] as the B of the tiles: slivers of NR output channels, each
// [cin * 9][NR], zero padded past cout.
template <class T>
size_t packed_weights_size(int cout, int depth) {
  return size_t(gemm_detail::round_up(cout, Tile<T>::NR)) * depth;
}
template <class T>
void pack_weights(int cout, int depth, const T* w, T* packed) {
  gemm_detail::pack_b<T, Tile<T>::NR>(depth, cout, w, transposed(depth), packed);
}

// One example: y (+)= W x (+ b), with W packed by pack_weights. Tiles of 6 extended
// positions read their A straight from the shifted views; the border columns of each
// tile are dropped when it is stored. The depth is cut into blocks of at most 160 so
// that a block's weight sliver and the view lines it meets fit in L1 together.
template <class T>
void forward_example(const Geometry& g, const T* packed_weights, const T* x_example, const T* bias, bool accumulate,
                     T* y_example) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR, tiles_per_chunk = chunk_columns / MR;
  const Layout layout(g);
  const int depth = g.cin * 9, blocks = (depth + 159) / 160;
  const int64_t plane = int64_t(g.h) * g.w;
  const T* const* views = bordered_views(g, layout, x_example);
  T* tiles = scratch<T>(1, size_t(tiles_per_chunk) * MR * NR);
  for (int64_t first = 0; first < layout.extended; first += chunk_columns) {
    const int64_t last = std::min<int64_t>(layout.extended, first + chunk_columns);
    for (int c0 = 0; c0 < g.cout; c0 += NR) {
      const int channels = std::min(NR, g.cout - c0);
      for (int block = 0; block < blocks; ++block) {
        const int p0 = block * depth / blocks, p1 = (block + 1) * depth / blocks;
        const T* b = packed_weights + int64_t(c0) * depth + int64_t(p0) * NR;
        for (int64_t q0 = first; q0 < last; q0 += MR)
          gemm_detail::indirect_tile_columns<T, Tile<T>>(p1 - p0, views + p0, q0, b, block > 0,
                                                         tiles + (q0 - first) * NR);
      }
      for (int64_t q = first; q < last; ++q) {
        const int64_t oy = q / layout.cols, ox = q - oy * layout.cols;
        if (ox >= g.w) continue;  // a border column
        T* out = y_example + int64_t(c0) * plane + oy * g.w + ox;
        const T* row = tiles + (q - first) * NR;
        for (int c = 0; c < channels; ++c) {
          const T v = row[c] + (bias ? bias[c0 + c] : T(0));
          out[c * plane] = accumulate ? out[c * plane] + v : v;
        }
      }
    }
  }
}

// dw[cout, cin * 9] += y_grad x^T over one example: tiles of 6 rows of the views
// (depth) x NR output channels, summed over blocks of extended positions in the
// registers' own layout, and added into dw once at the end.
template <class T>
void weight_grad_example(const Geometry& g, const T* x_example, const T* y_grad_example, T* dw) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const Layout layout(g);
  const int depth = g.cin * 9, tap_tiles = (depth + MR - 1) / MR;
  const int slivers = (g.cout + NR - 1) / NR;
  const T* const* views = bordered_views(g, layout, x_example);
  T* dense = scratch<T>(1, size_t(g.cout) * chunk_columns);
  T* packed = scratch<T>(2, size_t(slivers) * NR * chunk_columns);
  T* tiles = scratch<T>(4, size_t(slivers) * tap_tiles * MR * NR);
  const T* rows[MR];
  for (int64_t first = 0; first < layout.extended; first += chunk_columns) {
    const int count = int(std::min<int64_t>(chunk_columns, layout.extended - first));
    // y_grad^T [count][cout] in slivers of NR channels, zero in the border columns
    gather_extended(g, layout, y_grad_example, first, count, dense);
    gemm_detail::pack_b<T, NR>(count, g.cout, dense, transposed(count), packed);
    for (int sliver = 0; sliver < slivers; ++sliver)
      for (int tap = 0; tap < tap_tiles; ++tap) {
        for (int r = 0; r < MR; ++r) rows[r] = views[std::min(tap * MR + r, depth - 1)] + first;
        gemm_detail::indirect_tile_rows<T, Tile<T>>(count, rows, packed + int64_t(sliver) * NR * count, first > 0,
                                                    tiles + (int64_t(sliver) * tap_tiles + tap) * MR * NR);
      }
  }
  for (int sliver = 0; sliver < slivers; ++sliver)
    for (int tap = 0; tap < tap_tiles; ++tap) {
      const T* tile = tiles + (int64_t(sliver) * tap_tiles + tap) * MR * NR;
      const int k0 = tap * MR, taps = std::min(MR, depth - k0);
      for (int c = 0; c < std::min(NR, g.cout - sliver * NR); ++c) {
        T* out = dw + int64_t(sliver * NR + c) * depth + k0;
        for (int r = 0; r < taps; ++r) out[r] += tile[r * NR + c];
      }
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
