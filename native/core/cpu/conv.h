// 3x3 convolution over a batch of tasks, each with its own weights, by im2col + GEMM.
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

#include "gemm.h"
#include "parallel.h"

namespace maml {

struct ConvGeometry {
  int cin, h, w, cout, oh, ow, stride, pad_top, pad_left;
  int depth() const { return cin * 9; }
  int64_t in_plane() const { return int64_t(h) * w; }
  int64_t out_plane() const { return int64_t(oh) * ow; }
  int64_t in_size() const { return cin * in_plane(); }
  int64_t out_size() const { return cout * out_plane(); }
};

namespace conv_detail {

// Columns per GEMM call: enough to amortise packing the weights, small enough that the
// im2col block stays in cache.
inline int column_chunk(const ConvGeometry& g) {
  int chunk = (65536 / std::max(1, g.depth()) + 15) / 16 * 16;
  return std::clamp(chunk, 64, 1024);
}

// col[(ci*9 + ky*3 + kx) * cols + j] = x[ci, oy*s + ky - pt, ox*s + kx - pl] for the output
// positions j in [first, first + cols) of one example (row-major over oy, ox).
template <class T>
void im2col(const ConvGeometry& g, const T* x, int64_t first, int cols, T* col) {
  // Walk the chunk row segment by row segment, so the inner loop is a strided copy with
  // the padded border handled by computing the valid ox range once per segment.
  for (int ci = 0; ci < g.cin; ++ci) {
    const T* plane = x + ci * g.in_plane();
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx) {
        T* row = col + int64_t((ci * 3 + ky) * 3 + kx) * cols;
        int64_t position = first;
        const int64_t end = first + cols;
        while (position < end) {
          const int oy = int(position / g.ow), ox0 = int(position % g.ow);
          const int ox1 = int(std::min<int64_t>(g.ow, ox0 + (end - position)));
          const int iy = oy * g.stride + ky - g.pad_top;
          T* out = row + (position - first);
          if (iy < 0 || iy >= g.h) {
            std::fill(out, out + (ox1 - ox0), T(0));
          } else {
            const T* in = plane + int64_t(iy) * g.w;
            // valid ox: 0 <= ox*s + kx - pl < w
            const int shift = kx - g.pad_left;
            int lo = shift >= 0 ? 0 : (-shift + g.stride - 1) / g.stride;
            int hi = (g.w - 1 - shift) >= 0 ? (g.w - 1 - shift) / g.stride + 1 : 0;
            lo = std::max(lo, ox0);
            hi = std::min(hi, ox1);
            int ox = ox0;
            for (; ox < std::min(lo, ox1); ++ox) out[ox - ox0] = T(0);
            if (g.stride == 1) {
              for (; ox < hi; ++ox) out[ox - ox0] = in[ox + shift];
            } else {
              for (; ox < hi; ++ox) out[ox - ox0] = in[ox * g.stride + shift];
            }
            for (ox = std::max(ox, ox0); ox < ox1; ++ox) out[ox - ox0] = T(0);
          }
          position += ox1 - ox0;
        }
      }
  }
}

// The adjoint of im2col for input channels [c0, c1): x[...] += col[...] over all output positions.
template <class T>
void col2im_add(const ConvGeometry& g, const T* col, int c0, int c1, T* x) {
  const int64_t cols = g.out_plane();
  for (int ci = c0; ci < c1; ++ci) {
    T* plane = x + ci * g.in_plane();
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx) {
        const T* row = col + int64_t(((ci - c0) * 3 + ky) * 3 + kx) * cols;
        for (int oy = 0; oy < g.oh; ++oy) {
          const int iy = oy * g.stride + ky - g.pad_top;
          if (iy < 0 || iy >= g.h) continue;
          for (int ox = 0; ox < g.ow; ++ox) {
            const int ix = ox * g.stride + kx - g.pad_left;
            if (ix >= 0 && ix < g.w) plane[iy * g.w + ix] += row[oy * g.ow + ox];
          }
        }
      }
  }
}

template <class T>
std::vector<T>& thread_scratch(int slot) {
  thread_local std::vector<T> scratch[3];
  return scratch[slot];
}

}  // namespace conv_detail

template <class T>
void conv_forward(const ConvGeometry& g, int tasks, int batch, const T* x, const T* const* weights,
                  const T* const* biases, T* y, bool accumulate) {
  using namespace conv_detail;
  const int chunk = column_chunk(g);
  const int64_t positions = g.out_plane();
  const int64_t chunks = (positions + chunk - 1) / chunk;
  parallel_for(int64_t(tasks) * batch * chunks, [&](int64_t unit) {
    const int64_t example = unit / chunks;  // task * batch + n
    const int task = int(example / batch);
    const int64_t first = (unit % chunks) * chunk;
    const int cols = int(std::min<int64_t>(chunk, positions - first));
    std::vector<T>& col = thread_scratch<T>(0);
    col.resize(size_t(g.depth()) * chunk);
    im2col(g, x + example * g.in_size(), first, cols, col.data());
    T* out = y + example * g.out_size() + first;
    gemm<T>(g.cout, cols, g.depth(), T(1), weights[task], row_major(g.depth()), col.data(), row_major(cols),
            accumulate ? T(1) : T(0), out, positions);
    if (biases && biases[task]) {
      const T* b = biases[task];
      for (int co = 0; co < g.cout; ++co)
        for (int j = 0; j < cols; ++j) out[co * positions + j] += b[co];
    }
  });
}

template <class T>
void conv_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, const T* const* weights, T* x_grad,
                     bool accumulate) {
  using namespace conv_detail;
  // Split by blocks of input channels: each unit owns its slice of x_grad, so the
  // overlapping 3x3 scatter of col2im never races.
  const int channel_block = std::min(g.cin, 8);
  const int blocks = (g.cin + channel_block - 1) / channel_block;
  const int64_t positions = g.out_plane();
  parallel_for(int64_t(tasks) * batch * blocks, [&](int64_t unit) {
    const int64_t example = unit / blocks;
    const int task = int(example / batch);
    const int c0 = int(unit % blocks) * channel_block, c1 = std::min(g.cin, c0 + channel_block);
    const int rows = (c1 - c0) * 9;
    T* dx = x_grad + example * g.in_size();
    if (!accumulate) std::fill(dx + c0 * g.in_plane(), dx + c1 * g.in_plane(), T(0));
    std::vector<T>& col = thread_scratch<T>(1);
    col.resize(size_t(rows) * positions);
    // col[rows, positions] = W[:, c0*9 .. c1*9]^T  y_grad[cout, positions]
    gemm<T>(rows, int(positions), g.cout, T(1), weights[task] + c0 * 9, transposed(g.depth()),
            y_grad + example * g.out_size(), row_major(positions), T(0), col.data(), positions);
    col2im_add(g, col.data(), c0, c1, dx);
  });
}

template <class T>
void conv_weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad, T* const* weight_grads,
                      T* const* bias_grads, bool accumulate) {
  using namespace conv_detail;
  const int chunk = column_chunk(g);
  const int64_t positions = g.out_plane();
  const int64_t chunks = (positions + chunk - 1) / chunk;
  const int64_t weight_size = int64_t(g.cout) * g.depth();
  // One task's examples and chunks all add into the same weight gradient. With enough
  // tasks, each thread owns whole tasks; with few, threads split the examples and sum
  // private copies at the end.
  const int threads = thread_count();
  const bool split_tasks = tasks >= threads;
  auto accumulate_unit = [&](int task, int64_t example, int64_t first, T* dw) {
    const int cols = int(std::min<int64_t>(chunk, positions - first));
    std::vector<T>& col = thread_scratch<T>(2);
    col.resize(size_t(g.depth()) * chunk);
    im2col(g, x + example * g.in_size(), first, cols, col.data());
    // dw[cout, depth] += y_grad[cout, cols] col[depth, cols]^T
    gemm<T>(g.cout, g.depth(), cols, T(1), y_grad + example * g.out_size() + first, row_major(positions), col.data(),
            transposed(cols), T(1), dw, g.depth());
    (void)task;
  };
  if (split_tasks) {
    parallel_for(tasks, [&](int64_t task) {
      T* dw = weight_grads[task];
      if (!accumulate) std::fill(dw, dw + weight_size, T(0));
      for (int n = 0; n < batch; ++n)
        for (int64_t c = 0; c < chunks; ++c) accumulate_unit(int(task), task * batch + n, c * chunk, dw);
    });
  } else {
    // Slot s sums units s, s + threads, ... in a fixed order: the result does not depend
    // on thread timing, so a resumed run reproduces an uninterrupted one bit for bit.
    std::vector<T> partial(size_t(threads) * tasks * weight_size, T(0));
    const int64_t units = int64_t(tasks) * batch * chunks;
    parallel_for(threads, [&](int64_t slot) {
      for (int64_t unit = slot; unit < units; unit += threads) {
        const int64_t example = unit / chunks;
        const int task = int(example / batch);
        T* dw = partial.data() + (size_t(slot) * tasks + task) * weight_size;
        accumulate_unit(task, example, (unit % chunks) * chunk, dw);
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
  if (bias_grads) {
    parallel_for(tasks, [&](int64_t task) {
      T* db = bias_grads[task];
      if (!db) return;
      for (int co = 0; co < g.cout; ++co) {
        T sum = accumulate ? db[co] : T(0);
        for (int n = 0; n < batch; ++n) {
          const T* plane = y_grad + (task * batch + n) * g.out_size() + co * positions;
          for (int64_t j = 0; j < positions; ++j) sum += plane[j];
        }
        db[co] = sum;
      }
    });
  }
}

}  // namespace maml
