// 3x3 convolution at any stride and padding with the im2col matrix never written.
//
// Copy each input plane into a zero-bordered plane (the padding made explicit, rows
// (oh - 1) * stride + 3, columns (ow - 1) * stride + 3). The im2col entry of tap
// (ci, ky, kx) at output position m is then
//     view[ci, ky, kx][read[m]],  view = bordered_ci + ky * cols + kx,
//                                 read[m] = oy * stride * cols + ox * stride,
// one pointer per tap and one offset per position. gemm.h's indirect tiles take both
// (as XNNPACK's indirect convolution does), so the 9x larger im2col matrix is neither
// written nor packed, and no position is computed twice. Late layers with few positions
// per example (omniglot: 4 or 16) put several examples of a task into one group, with
// planes laid out [ci][example][rows * cols], so that the tiles of 6 positions stay full.
//
//   forward      y = W views: tiles of 6 positions x NR output channels, the depth cut
//                into blocks of at most 160 so that a block's B sliver stays in L1
//   input grad   the adjoint, split by the phase (r + pad) mod stride of the input row
//                and column: each phase is a forward conv of the bordered y_grad with
//                the taps of that phase (at stride 1, one phase: all nine taps
//                flipped), written straight to its own positions, so there is no col2im
//                and no race between overlapping windows
//   weight grad  dw^T = views y_grad^T: tiles of 6 taps x NR output channels, summed over
//                blocks of positions in the registers' own layout
// Used by conv.h for every layer but the direct float input layer of miniimagenet;
// checked against the definition and exact adjoints in tests/test_layers.cpp.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "bordered_plane.h"
#include "conv_geometry.h"
#include "conv_pool.h"
#include "gemm.h"
#include "parallel.h"
#include "scratch.h"

namespace maml {
namespace indirect_conv {

// The register tile: 6 positions (or taps) x 2 vectors of output channels (16 in float).
template <class T>
using Tile = gemm_detail::TallTile<T>;

// Positions per block of the forward's tile buffer and of the weight gradient's packed
// y_grad^T: a whole number of tiles, small enough to stay in L1 with a B sliver.
constexpr int block_positions = 240;
constexpr int max_block_depth = 160;

struct Scratch;  // owner tag: 0 bordered planes, 1 output tiles, 2 y_grad^T packed, 3 weights, 4 dw tiles
template <class T>
T* scratch(int slot, size_t size) {
  return thread_scratch<T, Scratch, 5>(slot, size);
}

// Examples per group: about 128 output positions, at most the batch.
inline int group_size(const ConvGeometry& g, int batch) {
  return int(std::clamp<int64_t>((128 + g.out_plane() - 1) / g.out_plane(), 1, batch));
}

// Planes of `channels` images of one group, laid out [channel][example][rows * cols].
struct Planes {
  int rows = 0, cols = 0;
  int64_t plane = 0;
  int group = 0;
  size_t size(int channels) const { return size_t(channels) * group * plane; }
  int64_t at(int channel, int example) const { return (int64_t(channel) * group + example) * plane; }
};

// A layer's bordered input planes kept from its forward for the passes of the same call
// that read the same x again (the tangent's conv(x, W'), the weight gradients), so each
// x is bordered once per pass: [task][group] blocks of Planes::size(cin). The network
// owns one per conv layer and input (x, x'), and clears `filled` when x changes.
template <class T>
struct KeptPlanes {
  std::vector<T> data;
  bool filled = false;
};

// What a group's indirect product reads and where it writes, per position m:
// read[m] into the views, write[m] into the output (channel c adds c * its plane).
struct Positions {
  std::vector<int32_t> read, write;
  int64_t per_example = 0;  // positions of one example; a group of n examples has n times as many
};

// The forward's planes and positions: the padded input, read at the output positions.
struct ForwardPlan {
  Planes planes;
  Positions positions;
  ForwardPlan(const ConvGeometry& g, int group) {
    const int s = g.stride;
    planes = {(g.oh - 1) * s + 3, (g.ow - 1) * s + 3, 0, group};
    planes.plane = int64_t(planes.rows) * planes.cols;
    positions.per_example = g.out_plane();
    for (int n = 0; n < group; ++n)
      for (int oy = 0; oy < g.oh; ++oy)
        for (int ox = 0; ox < g.ow; ++ox) {
          positions.read.push_back(int32_t(n * planes.plane + int64_t(oy) * s * planes.cols + ox * s));
          positions.write.push_back(int32_t(n * g.out_size() + oy * g.ow + ox));
        }
  }
};

// The adjoint's planes (y_grad with `border` zeros before) and, per phase (a, b), its taps
// (ky, kx with ky = a, kx = b mod stride) and input positions (r, c with r + pad_top = a,
// c + pad_left = b mod stride). Tap ky of input row r reads output row (r + pad_top - ky) /
// stride = i - ky / stride with i = (r + pad_top) / stride: the bordered row
// i + border - ky / stride, so border = 2 / stride keeps every read inside the planes.
struct AdjointPlan {
  struct Phase {
    std::vector<int> taps;              // ky * 3 + kx
    std::vector<int64_t> view_offsets;  // per (tap, output channel), in the order of the depth
    Positions positions;
  };
  int border = 0;
  Planes planes;
  std::vector<Phase> phases;
  AdjointPlan(const ConvGeometry& g, int group) {
    const int s = g.stride;
    border = 2 / s;
    planes = {(g.h - 1 + g.pad_top) / s + border + 1, (g.w - 1 + g.pad_left) / s + border + 1, 0, group};
    planes.plane = int64_t(planes.rows) * planes.cols;
    for (int a = 0; a < s; ++a)
      for (int b = 0; b < s; ++b) {
        Phase phase;
        for (int k = 0; k < 9; ++k)
          if (k / 3 % s == a && k % 3 % s == b) phase.taps.push_back(k);
        // tap ky of channel co reads the bordered row i + border - ky / stride (see above)
        for (int k : phase.taps)
          for (int co = 0; co < g.cout; ++co)
            phase.view_offsets.push_back(planes.at(co, 0) + int64_t(border - k / 3 / s) * planes.cols + (border - k % 3 / s));
        for (int n = 0; n < group; ++n) {
          int64_t count = 0;
          for (int r = 0; r < g.h; ++r)
            for (int c = 0; c < g.w; ++c) {
              if ((r + g.pad_top) % s != a || (c + g.pad_left) % s != b) continue;
              phase.positions.read.push_back(
                  int32_t(n * planes.plane + int64_t((r + g.pad_top) / s) * planes.cols + (c + g.pad_left) / s));
              phase.positions.write.push_back(int32_t(n * g.in_size() + r * g.w + c));
              ++count;
            }
          phase.positions.per_example = count;
        }
        phases.push_back(std::move(phase));
      }
  }
};

// out[0..n) = in[0..n), the two never overlapping: a row of 7 to 28 values, for which an
// overlap check (GCC's, without the restrict) or a memmove call costs more than the copy
template <class T>
inline void copy_row(const T* __restrict in, T* __restrict out, int n) {
#if defined(__AVX2__)
  if constexpr (std::is_same<T, float>::value) {
    int x = 0;
    for (; x + 8 <= n; x += 8) _mm256_storeu_ps(out + x, _mm256_loadu_ps(in + x));
    if (x + 4 <= n) _mm_storeu_ps(out + x, _mm_loadu_ps(in + x)), x += 4;
    switch (n - x) {  // no loop left for GCC to turn into a memmove call
      case 3: out[x + 2] = in[x + 2]; [[fallthrough]];
      case 2: out[x + 1] = in[x + 1]; [[fallthrough]];
      case 1: out[x] = in[x];
    }
    return;
  }
#endif
  for (int x = 0; x < n; ++x) out[x] = in[x];
}

// Copies `examples` images [channels, h, w] (consecutive, `size` apart) into the planes:
// one zero fill, then the rows (omniglot's are 4 to 28 values: writing each row's border
// values as well was slower than the one fill).
template <class T>
void fill_planes(const Planes& planes, int channels, int h, int w, int pad_top, int pad_left, int examples,
                 const T* images, int64_t size, T* data) {
  const int rows = std::min(h, planes.rows - pad_top), cols = std::min(w, planes.cols - pad_left);
  const int64_t pitch = planes.cols;
  for (int c = 0; c < channels; ++c) {
    T* block = data + planes.at(c, 0);
    std::fill(block, block + examples * planes.plane, T(0));
    for (int n = 0; n < examples; ++n) {
      const T* in = images + n * size + int64_t(c) * h * w;
      T* out = block + n * planes.plane + int64_t(pad_top) * pitch + pad_left;
      for (int r = 0; r < rows; ++r) copy_row(in + int64_t(r) * w, out + r * pitch, cols);
    }
  }
}

// The plan of a layer and group size, built once per calling thread and kept (a run
// meets a handful of layer shapes, over and over).
template <class Plan>
const Plan& cached_plan(const ConvGeometry& g, int group) {
  struct Entry {
    ConvGeometry g;
    int group;
    std::unique_ptr<Plan> plan;
  };
  thread_local std::vector<Entry> cache;
  for (const Entry& e : cache)
    if (e.group == group && e.g == g) return *e.plan;
  if (cache.size() >= 64) cache.clear();
  cache.push_back({g, group, std::make_unique<Plan>(g, group)});
  return *cache.back().plan;
}

// Weights [rows, depth] (row-major, rows = output channels of the product) as the B of
// the tiles: slivers of NR rows, each [depth][NR], zero padded past `rows`.
template <class T>
size_t packed_size(int rows, int depth) {
  return size_t(gemm_detail::round_up(rows, Tile<T>::NR)) * depth;
}
template <class T>
void pack_weights(int rows, int depth, const T* w, T* packed) {
  gemm_detail::pack_b<T, Tile<T>::NR>(depth, rows, w, transposed(depth), packed);
}

// moments[c][2] += the sums of (tile row + bias) and of its square over `count` tile rows,
// for the output channels c < n: in T over a block of rows (two rows at a time, to halve
// the chain of dependent adds), then in double.
template <class T>
void add_moments(const T* tiles, int64_t count, int n, const T* bias, double* moments) {
  constexpr int NR = Tile<T>::NR;
  T b[NR], sum[2][NR] = {}, squares[2][NR] = {};
  for (int c = 0; c < NR; ++c) b[c] = bias && c < n ? bias[c] : T(0);
  int64_t q = 0;
  for (; q + 1 < count; q += 2)
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < NR; ++c) {
        const T v = tiles[(q + r) * NR + c] + b[c];
        sum[r][c] += v;
        squares[r][c] += v * v;
      }
  for (; q < count; ++q)
    for (int c = 0; c < NR; ++c) {
      const T v = tiles[q * NR + c] + b[c];
      sum[0][c] += v;
      squares[0][c] += v * v;
    }
  for (int c = 0; c < n; ++c) {
    moments[c * 2] += double(sum[0][c]) + double(sum[1][c]);
    moments[c * 2 + 1] += double(squares[0][c]) + double(squares[1][c]);
  }
}

// out[write[q] + c * channel_stride] (+)= tiles[q][c] (+ bias[c]) for q < count, c < n: the
// tiles' [position][channel] layout turned into output planes.
template <class T>
void store_tiles(const T* tiles, int64_t count, const int32_t* write, int n, const T* bias, bool accumulate, T* out,
                 int64_t channel_stride) {
  constexpr int NR = Tile<T>::NR;
  const auto store_one = [&](int64_t q) {
    T* o = out + write[q];
    const T* row = tiles + q * NR;
    for (int c = 0; c < n; ++c) {
      const T v = row[c] + (bias ? bias[c] : T(0));
      o[c * channel_stride] = accumulate ? o[c * channel_stride] + v : v;
    }
  };
  int64_t q = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same<T, float>::value) {
    // eight positions with consecutive outputs: 8 x 8 register transposes (gemm.h), one
    // vector store per channel instead of eight scattered ones
    const auto consecutive = [&](int64_t q0) {
      for (int i = 1; i < 8; ++i)
        if (write[q0 + i] != write[q0] + i) return false;
      return true;
    };
    while (n == NR && q + 8 <= count) {
      if (!consecutive(q)) {  // a run that crosses into the next example, or a strided phase
        store_one(q++);
        continue;
      }
      for (int h = 0; h < NR; h += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(tiles + (q + i) * NR + h);
        gemm_detail::transpose8x8(r);
        for (int c = 0; c < 8; ++c) {
          float* o = out + write[q] + (h + c) * channel_stride;
          __m256 v = bias ? _mm256_add_ps(r[c], _mm256_set1_ps(bias[h + c])) : r[c];
          if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(o));
          _mm256_storeu_ps(o, v);
        }
      }
      q += 8;
    }
  }
#endif
  for (; q < count; ++q) store_one(q);
}

// out[write[m] + c * channel_stride] (+)= sum_p views[p][read[m]] B[p][c] (+ bias[c]) for
// the positions m < count and the output channels c < channels, B packed by pack_weights.
// moments (or null, accumulate false): [channels][2] += sum and sum of squares of what is
// stored (add_moments).
template <class T>
void multiply(int depth, const T* const* views, int64_t count, const int32_t* read, const int32_t* write,
              int channels, int64_t channel_stride, const T* packed, const T* bias, bool accumulate, T* out,
              double* moments = nullptr) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int blocks = (depth + max_block_depth - 1) / max_block_depth;
  T* tiles = scratch<T>(1, size_t(block_positions) * NR);
  for (int64_t first = 0; first < count; first += block_positions) {
    const int64_t last = std::min<int64_t>(count, first + block_positions);
    for (int c0 = 0; c0 < channels; c0 += NR) {
      for (int block = 0; block < blocks; ++block) {
        const int p0 = block * depth / blocks, p1 = (block + 1) * depth / blocks;
        const T* b = packed + int64_t(c0) * depth + int64_t(p0) * NR;
        for (int64_t q0 = first; q0 < last; q0 += MR) {
          const int32_t* at = read + q0;
          int32_t tail[MR];
          if (q0 + MR > last) {  // the last tile: repeat the last position, store none of the copies
            for (int r = 0; r < MR; ++r) tail[r] = read[std::min(q0 + r, last - 1)];
            at = tail;
          }
          gemm_detail::indirect_tile_columns<T, Tile<T>>(p1 - p0, views + p0, at, b, block > 0,
                                                         tiles + (q0 - first) * NR);
        }
      }
      const int n = std::min(NR, channels - c0);
      store_tiles(tiles, last - first, write + first, n, bias ? bias + c0 : nullptr, accumulate,
                  out + c0 * channel_stride, channel_stride);
      if (moments) add_moments(tiles, last - first, n, bias ? bias + c0 : nullptr, moments + c0 * 2);
    }
  }
}

// dw[co, p] += sum_{m < count} views[p][read[m]] y[write[m] + co * channel_stride]: tiles of
// 6 taps x NR output channels against y^T, packed per block of positions.
template <class T>
void correlate(int depth, const T* const* views, int64_t count, const int32_t* read, const int32_t* write, int cout,
               int64_t channel_stride, const T* y, T* dw) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  const int tap_tiles = (depth + MR - 1) / MR, slivers = (cout + NR - 1) / NR;
  T* packed = scratch<T>(2, size_t(slivers) * NR * block_positions);
  T* tiles = scratch<T>(4, size_t(slivers) * tap_tiles * MR * NR);
  const T* rows[MR];
  for (int64_t first = 0; first < count; first += block_positions) {
    const int n = int(std::min<int64_t>(block_positions, count - first));
    // y^T [n][cout] in slivers of NR channels, zero past cout; a full sliver's runs of
    // consecutive positions (an example's, within the block) through 8 x 8 register
    // transposes (gemm.h)
    for (int s = 0; s < slivers; ++s) {
      if ((s + 1) * NR <= cout) {
        const T* src = y + int64_t(s) * NR * channel_stride;
        const int32_t* at = write + first;
        T* d = packed + int64_t(s) * n * NR;
        for (int j = 0; j < n;) {
          int run = 1;
          while (j + run < n && at[j + run] == at[j] + run) ++run;
          if (!gemm_detail::transpose_columns(run, src + at[j], channel_stride, NR, d + int64_t(j) * NR))
            for (int r = 0; r < run; ++r)
              for (int c = 0; c < NR; ++c) d[(j + r) * NR + c] = src[c * channel_stride + at[j] + r];
          j += run;
        }
        continue;
      }
      for (int c = 0; c < NR; ++c) {
        const int co = s * NR + c;
        T* d = packed + int64_t(s) * n * NR + c;
        if (co >= cout) {
          for (int j = 0; j < n; ++j) d[j * NR] = T(0);
          continue;
        }
        const T* src = y + co * channel_stride;
        const int32_t* at = write + first;
        for (int j = 0; j < n; ++j) d[j * NR] = src[at[j]];
      }
    }
    for (int s = 0; s < slivers; ++s)
      for (int tap = 0; tap < tap_tiles; ++tap) {
        for (int r = 0; r < MR; ++r) rows[r] = views[std::min(tap * MR + r, depth - 1)];
        gemm_detail::indirect_tile_rows<T, Tile<T>>(n, rows, read + first, packed + int64_t(s) * NR * n, first > 0,
                                                    tiles + (int64_t(s) * tap_tiles + tap) * MR * NR);
      }
  }
  if (count == 0) return;
  for (int s = 0; s < slivers; ++s)
    for (int tap = 0; tap < tap_tiles; ++tap) {
      const T* tile = tiles + (int64_t(s) * tap_tiles + tap) * MR * NR;
      const int k0 = tap * MR, taps = std::min(MR, depth - k0);
      for (int c = 0; c < std::min(NR, cout - s * NR); ++c) {
        T* out = dw + int64_t(s * NR + c) * depth + k0;
        for (int r = 0; r < taps; ++r) out[r] += tile[r * NR + c];
      }
    }
}

template <class T>
int slivers_of(int channels) {
  return (channels + Tile<T>::NR - 1) / Tile<T>::NR;
}

// Channels [begin, end) of part `part` of `parts` (at most one part a sliver): whole
// slivers of NR channels, the last one maybe short.
struct ChannelRange {
  int begin, end;
  template <class T>
  static ChannelRange of(int channels, int part, int parts) {
    constexpr int NR = Tile<T>::NR;
    const int slivers = slivers_of<T>(channels);
    return {part * slivers / parts * NR, std::min(channels, (part + 1) * slivers / parts * NR)};
  }
  int size() const { return end - begin; }
};

// The cin * 9 views of a group's forward planes.
template <class T>
const T* const* forward_views(const ConvGeometry& g, const Planes& planes, const T* data) {
  thread_local std::vector<const T*> views;
  views.resize(size_t(g.depth()));
  for (int ci = 0; ci < g.cin; ++ci)
    for (int k = 0; k < 9; ++k) views[ci * 9 + k] = data + planes.at(ci, 0) + (k / 3) * planes.cols + k % 3;
  return views.data();
}

// Every task's weights are packed once per layer call, in the calling thread's storage
// until its next layer, and read by all threads.
struct PackedWeights;  // owner tag of that storage

// y (+)= conv(x, W) + b for every task (weights and biases per task; biases may be null).
// moments (or null): [tasks * batch][cout][2], sums of y and y^2 per output plane (a
// group's sums go to its first example, zeros to the others). pool (or null): each unit
// pools its output planes while they are in cache (conv_pool.h).
// kept (or null): x's planes, filled here if not yet (KeptPlanes).
template <class T>
void forward(const ConvGeometry& g, int tasks, int batch, const T* x, const T* const* weights,
             const T* const* biases, T* y, bool accumulate, double* moments, const PoolByScale<T>* pool = nullptr,
             KeptPlanes<T>* kept = nullptr) {
  const int group = group_size(g, batch), groups = (batch + group - 1) / group;
  const ForwardPlan& plan = cached_plan<ForwardPlan>(g, group);
  const size_t planes_size = plan.planes.size(g.cin);
  const bool fill_kept = kept && !kept->filled;
  if (fill_kept) kept->data.resize(planes_size * tasks * groups);
  const size_t size = packed_size<T>(g.cout, g.depth());
  T* packed = thread_scratch<T, PackedWeights, 1>(0, size * tasks);
  parallel_for(tasks, [&](int64_t t) { pack_weights<T>(g.cout, g.depth(), weights[t], packed + t * size); });
  // few groups (one task's support set): each also cut into parts of output channels,
  // every part filling the group's planes again
  const int parts = parts_for_balance(int64_t(tasks) * groups, slivers_of<T>(g.cout));
  parallel_for(int64_t(tasks) * groups * parts, [&](int64_t unit) {
    const int task = int(unit / (groups * parts)), index = int(unit / parts % groups);
    const ChannelRange c = ChannelRange::of<T>(g.cout, int(unit % parts), parts);
    const int n0 = index * group, n = std::min(group, batch - n0);
    const int64_t example = int64_t(task) * batch + n0;
    const T* planes = kept && !fill_kept ? kept->data.data() + (int64_t(task) * groups + index) * planes_size : nullptr;
    if (!planes) {  // the first part of a group fills the kept planes; the others fill their own
      T* filled = fill_kept && unit % parts == 0 ? kept->data.data() + (int64_t(task) * groups + index) * planes_size
                                                 : scratch<T>(0, planes_size);
      fill_planes(plan.planes, g.cin, g.h, g.w, g.pad_top, g.pad_left, n, x + example * g.in_size(), g.in_size(), filled);
      planes = filled;
    }
    double* m = moments ? moments + example * g.cout * 2 + c.begin * 2 : nullptr;
    if (m)
      for (int i = 0; i < n; ++i) std::fill(m + i * g.cout * 2, m + i * g.cout * 2 + c.size() * 2, 0.0);
    const T* bias = biases && biases[task] ? biases[task] + c.begin : static_cast<const T*>(nullptr);
    multiply(g.depth(), forward_views(g, plan.planes, planes), n * plan.positions.per_example,
             plan.positions.read.data(), plan.positions.write.data(), c.size(), g.out_plane(),
             packed + task * size + int64_t(c.begin) * g.depth(), bias, accumulate,
             y + example * g.out_size() + int64_t(c.begin) * g.out_plane(), m);
    if (pool)
      for (int i = 0; i < n; ++i) pool->pool(g, task, example + i, c.begin, c.end, y + (example + i) * g.out_size());
  });
  if (kept) kept->filled = true;
}

// x_grad (+)= conv_transpose(y_grad, W) for every task, phase by phase (AdjointPlan).
template <class T>
void input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, const T* const* weights, T* x_grad,
                bool accumulate) {
  const int group = group_size(g, batch), groups = (batch + group - 1) / group;
  const AdjointPlan& plan = cached_plan<AdjointPlan>(g, group);
  // per task, per phase: B[(tap, co)][ci] = W[co, ci, tap] in slivers of NR input channels
  constexpr int NR = Tile<T>::NR;
  std::vector<size_t> phase_offset;
  size_t size = 0;
  for (auto& phase : plan.phases) {
    phase_offset.push_back(size);
    size += packed_size<T>(g.cin, g.cout * int(phase.taps.size()));
  }
  T* packed = thread_scratch<T, PackedWeights, 1>(0, size * tasks);
  parallel_for(tasks, [&](int64_t t) {
    for (size_t ph = 0; ph < plan.phases.size(); ++ph) {
      const std::vector<int>& taps = plan.phases[ph].taps;
      T* out = packed + t * size + phase_offset[ph];
      for (int c0 = 0; c0 < g.cin; c0 += NR)
        for (int tap : taps)
          for (int co = 0; co < g.cout; ++co, out += NR) {
            const T* src = weights[t] + (int64_t(co) * g.cin + c0) * 9 + tap;
            const int n = std::min(NR, g.cin - c0);
            if (n == NR) {  // a fixed count: unrolled, no per-element compare
              for (int c = 0; c < NR; ++c) out[c] = src[c * 9];
              continue;
            }
            for (int c = 0; c < n; ++c) out[c] = src[c * 9];
            for (int c = n; c < NR; ++c) out[c] = T(0);
          }
    }
  });
  // few groups: cut into parts of input channels too, as the forward
  const int parts = parts_for_balance(int64_t(tasks) * groups, slivers_of<T>(g.cin));
  parallel_for(int64_t(tasks) * groups * parts, [&](int64_t unit) {
    const int task = int(unit / (groups * parts)), index = int(unit / parts % groups);
    const ChannelRange c = ChannelRange::of<T>(g.cin, int(unit % parts), parts);
    const int n0 = index * group, n = std::min(group, batch - n0);
    const int64_t example = int64_t(task) * batch + n0;
    T* planes = scratch<T>(0, plan.planes.size(g.cout));
    fill_planes(plan.planes, g.cout, g.oh, g.ow, plan.border, plan.border, n, y_grad + example * g.out_size(),
                g.out_size(), planes);
    thread_local std::vector<const T*> views;
    for (size_t ph = 0; ph < plan.phases.size(); ++ph) {
      const auto& phase = plan.phases[ph];
      const int64_t count = n * phase.positions.per_example;
      T* out = x_grad + example * g.in_size() + int64_t(c.begin) * g.in_plane();
      if (phase.taps.empty()) {  // strides over 3 only: positions no tap reaches
        if (!accumulate)
          for (int64_t m = 0; m < count; ++m)
            for (int ci = 0; ci < c.size(); ++ci) out[phase.positions.write[m] + ci * g.in_plane()] = T(0);
        continue;
      }
      views.resize(phase.view_offsets.size());
      for (size_t p = 0; p < views.size(); ++p) views[p] = planes + phase.view_offsets[p];
      const int depth = int(views.size());
      multiply(depth, views.data(), count, phase.positions.read.data(), phase.positions.write.data(), c.size(),
               g.in_plane(), packed + task * size + phase_offset[ph] + int64_t(c.begin) * depth,
               static_cast<const T*>(nullptr), accumulate, out);
    }
  });
}

// dw (+)= correlate(x, y_grad) for every task. A unit owns a task's dw, or with fewer tasks
// than threads the rows of some of its output channels, and sums the groups of examples
// in order: the result is the same for any thread count (a resumed run reproduces an
// uninterrupted one bit for bit). Only where that leaves threads idle (one task of at
// most NR channels) each thread sums its groups into its own slot, added up in a fixed
// order.
// kept (or null): x's planes from the forward, if filled (KeptPlanes).
template <class T>
void weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad, T* const* weight_grads,
                 bool accumulate, const KeptPlanes<T>* kept = nullptr) {
  const int group = group_size(g, batch), groups = (batch + group - 1) / group;
  const ForwardPlan& plan = cached_plan<ForwardPlan>(g, group);
  const int64_t weight_size = int64_t(g.cout) * g.depth();
  const size_t planes_size = plan.planes.size(g.cin);
  const bool use_kept = kept && kept->filled && kept->data.size() >= planes_size * tasks * groups;
  // dw rows c of a task (dw pointing at row c.begin) += one group's products
  const auto add_group = [&](int task, int index, ChannelRange c, T* dw) {
    const int n0 = index * group, n = std::min(group, batch - n0);
    const int64_t example = int64_t(task) * batch + n0;
    const T* planes = use_kept ? kept->data.data() + (int64_t(task) * groups + index) * planes_size : nullptr;
    if (!planes) {
      T* filled = scratch<T>(0, planes_size);
      fill_planes(plan.planes, g.cin, g.h, g.w, g.pad_top, g.pad_left, n, x + example * g.in_size(), g.in_size(), filled);
      planes = filled;
    }
    correlate(g.depth(), forward_views(g, plan.planes, planes), n * plan.positions.per_example,
              plan.positions.read.data(), plan.positions.write.data(), c.size(), g.out_plane(),
              y_grad + example * g.out_size() + int64_t(c.begin) * g.out_plane(), dw);
  };
  const int threads = thread_count();
  const int parts = tasks >= threads ? 1 : std::min(slivers_of<T>(g.cout), (threads + tasks - 1) / tasks);
  if (int64_t(tasks) * parts >= threads || groups == 1) {
    parallel_for(int64_t(tasks) * parts, [&](int64_t unit) {
      const int task = int(unit / parts);
      const ChannelRange c = ChannelRange::of<T>(g.cout, int(unit % parts), parts);
      T* dw = weight_grads[task] + int64_t(c.begin) * g.depth();
      if (!accumulate) std::fill(dw, dw + int64_t(c.size()) * g.depth(), T(0));
      for (int i = 0; i < groups; ++i) add_group(int(task), i, c, dw);
    });
    return;
  }
  thread_local std::vector<T> partial_storage;
  std::vector<T>& partial = partial_storage;
  partial.assign(size_t(threads) * tasks * weight_size, T(0));
  const int64_t units = int64_t(tasks) * groups;
  parallel_for(threads, [&](int64_t slot) {
    for (int64_t unit = slot; unit < units; unit += threads) {
      const int task = int(unit / groups);
      add_group(task, int(unit % groups), ChannelRange{0, g.cout},
                partial.data() + (size_t(slot) * tasks + task) * weight_size);
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

}  // namespace indirect_conv
}  // namespace maml
