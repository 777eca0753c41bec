// General matrix multiply, C = alpha * A B + beta * C, for float and double.
//
// Every convolution and linear layer of the engine (forward, input gradient, weight
// gradient and their tangents) ends up here, so this is where the FLOPs are.
// A and B are read through arbitrary row/column strides, so transposed operands need
// no copy: the packing step reads them in whatever order they lie.
//
// Layout follows the usual BLIS/GotoBLAS scheme: B is packed into KC x NR slivers,
// A into MR x KC slivers, and a register-blocked micro-kernel of MR x NR accumulators
// runs over them. Two tile shapes, both twelve vector accumulators: 6 x 2 vectors and
// 4 x 3 vectors; each call takes the one that wastes fewer padded rows and columns
// (the miniimagenet layers have 32 output channels: 6 rows would pad them to 36).
// A can be packed once and reused (pack_a_matrix + gemm_packed): a conv layer multiplies
// the same weights by every column chunk of a task.
// It is single-threaded on purpose: callers thread over examples, tasks and column
// chunks, which keeps every core busy on the small matrices conv nets have, without
// nested thread pools.
//
// Checked against the naive triple loop in tests/test_gemm.cpp; timed by bench_gemm.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "scratch.h"
#include "unroll.h"

namespace maml {

struct MatrixView {
  // element (i, j) is data[i * row_stride + j * col_stride]
  std::ptrdiff_t row_stride;
  std::ptrdiff_t col_stride;
};

namespace gemm_detail {

// One 32-byte vector of T and the five operations the micro-kernel needs.
#if defined(__AVX2__) && defined(__FMA__)
template <class T>
struct Simd;
template <>
struct Simd<float> {
  typedef __m256 V;
  static constexpr int lanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};
template <>
struct Simd<double> {
  typedef __m256d V;
  static constexpr int lanes = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
};
#else
// Portable: GCC vector extensions, which compile to whatever SIMD the target has.
template <class T>
struct Simd {
  static constexpr int lanes = 32 / sizeof(T);
  typedef T V __attribute__((vector_size(32)));
  static V zero() { return V{}; }
  static V load(const T* p) { V v; __builtin_memcpy(&v, p, sizeof(V)); return v; }
  static V broadcast(const T* p) { return V{} + *p; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static void store(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
};
#endif

// A register tile: MR rows x NV vectors of accumulators.
template <class T, int MR_, int NV_>
struct Tile {
  static constexpr int MR = MR_, NV = NV_, NR = NV_ * Simd<T>::lanes;
};

enum class TileShape { tall, wide };  // 6 x 2 vectors, 4 x 3 vectors

constexpr int KC_MAX = 256;  // depth per packed block (B sliver 16-24 KiB: stays in L1)
constexpr int MC = 96;       // rows of A per packed block (a multiple of both MR)
constexpr int NC = 2048;     // columns of B per packed block

// The depth is cut into equal blocks of at most KC_MAX (288 + 288, not 256 + 256 + 64).
inline int depth_blocks(int k) { return (k + KC_MAX - 1) / KC_MAX; }
inline int depth_begin(int block, int blocks, int k) { return int(int64_t(block) * k / blocks); }

// Packs rows [0, m) x depth [0, k) of A into MR-tall slivers, zero padded.
template <class T, int MR>
void pack_a(int m, int k, const T* a, MatrixView av, T* packed) {
  for (int i0 = 0; i0 < m; i0 += MR) {
    const int rows = std::min(MR, m - i0);
    if (rows == MR && av.row_stride == 1) {
      // A is transposed (W^T of the input gradient): each depth step is MR contiguous values
      for (int p = 0; p < k; ++p) {
        const T* src = a + i0 + p * av.col_stride;
        for (int r = 0; r < MR; ++r) packed[r] = src[r];
        packed += MR;
      }
      continue;
    }
    for (int p = 0; p < k; ++p) {
      for (int r = 0; r < rows; ++r) packed[r] = a[(i0 + r) * av.row_stride + p * av.col_stride];
      for (int r = rows; r < MR; ++r) packed[r] = T(0);
      packed += MR;
    }
  }
}

// packed[p * NR + c] = columns[c * stride + p] for p < k, c < NR: a full sliver of a
// transposed B. Returns false where no vector version exists (the caller loops instead).
template <class T>
inline bool transpose_columns(int k, const T* columns, std::ptrdiff_t stride, int NR, T* packed) {
  return false;
}
#if defined(__AVX2__)
// r[i][j] -> r[j][i] for an 8 x 8 block of floats held in registers (unpack, shuffle,
// permute).
inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// 8 x 8 blocks through registers: the scalar scatter it replaces made the weight
// gradient's GEMM the slowest of the three.
template <>
inline bool transpose_columns<float>(int k, const float* columns, std::ptrdiff_t stride, int NR, float* packed) {
  if (NR % 8 != 0) return false;
  const int k8 = k / 8 * 8;
  for (int c = 0; c < NR; c += 8) {
    const float* src = columns + c * stride;
    for (int p = 0; p < k8; p += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * stride + p);
      transpose8x8(r);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(packed + (p + i) * NR + c, r[i]);
    }
    for (int i = 0; i < 8; ++i)
      for (int p = k8; p < k; ++p) packed[p * NR + c + i] = src[i * stride + p];
  }
  return true;
}
#endif

// Packs depth [0, k) x columns [0, n) of B into NR-wide slivers, zero padded.
template <class T, int NR>
void pack_b(int k, int n, const T* b, MatrixView bv, T* packed) {
  for (int j0 = 0; j0 < n; j0 += NR) {
    const int cols = std::min(NR, n - j0);
    if (cols == NR && bv.col_stride == 1) {
      for (int p = 0; p < k; ++p) {
        const T* src = b + p * bv.row_stride + j0;
        for (int c = 0; c < NR; ++c) packed[c] = src[c];
        packed += NR;
      }
    } else if (bv.row_stride == 1) {
      // B is a transposed row-major matrix (conv weights W^T for the indirect tiles): read each
      // column as the contiguous run it is and scatter into the sliver, which sits in L1.
      if (cols == NR && transpose_columns(k, b + j0 * bv.col_stride, bv.col_stride, NR, packed)) {
        packed += k * NR;
        continue;
      }
      for (int c = 0; c < cols; ++c) {
        const T* src = b + (j0 + c) * bv.col_stride;
        for (int p = 0; p < k; ++p) packed[p * NR + c] = src[p];
      }
      for (int c = cols; c < NR; ++c)
        for (int p = 0; p < k; ++p) packed[p * NR + c] = T(0);
      packed += k * NR;
    } else {
      for (int p = 0; p < k; ++p) {
        for (int c = 0; c < cols; ++c) packed[c] = b[p * bv.row_stride + (j0 + c) * bv.col_stride];
        for (int c = cols; c < NR; ++c) packed[c] = T(0);
        packed += NR;
      }
    }
  }
}

// Writes an MR x NR tile of accumulators into C: C = alpha tile + beta C (beta 0 ignores C).
template <class T, int MR, int NR>
inline void store_tile(const T (&tile)[MR][NR], T* c, std::ptrdiff_t ldc, int rows, int cols, T alpha, T beta) {
  for (int r = 0; r < rows; ++r) {
    T* crow = c + r * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < cols; ++j) crow[j] = alpha * tile[r][j];
    } else {
      for (int j = 0; j < cols; ++j) crow[j] = alpha * tile[r][j] + beta * crow[j];
    }
  }
}

// acc(MR x NR) = sum_p a_sliver[p] (outer) b_sliver[p]; then C tile = alpha acc + beta C.
// Per step of k: NV loads of B, MR broadcasts of A, MR * NV = 12 FMAs, enough independent
// accumulators to keep both FMA ports of a Zen 3 / Skylake core busy. Never inlined:
// inside a large caller (the weight gradient's lambda) GCC spilled the B vectors to the
// stack on every step, 17% slower; a call per MR x NR tile costs nothing beside k steps.
template <class T, class S>
__attribute__((noinline)) void micro_kernel(int k, const T* __restrict a, const T* __restrict b, T* c,
                                            std::ptrdiff_t ldc, int rows, int cols, T alpha, T beta) {
  using V = typename Simd<T>::V;
  constexpr int MR = S::MR, NV = S::NV, L = Simd<T>::lanes;
  V acc[MR][NV];
MAML_UNROLL(8)
  for (int r = 0; r < MR; ++r)
MAML_UNROLL(4)
    for (int v = 0; v < NV; ++v) acc[r][v] = Simd<T>::zero();
  for (int p = 0; p < k; ++p) {
    V bv[NV];
MAML_UNROLL(4)
    for (int v = 0; v < NV; ++v) {
      bv[v] = Simd<T>::load(b + v * L);
      // keep each B vector in a register: folded into the FMAs, it would be loaded MR
      // times, and 256-bit loads (two per cycle) would then limit the kernel
      __asm__("" : "+x"(bv[v]));
    }
MAML_UNROLL(8)
    for (int r = 0; r < MR; ++r) {
      const V ar = Simd<T>::broadcast(a + r);
MAML_UNROLL(4)
      for (int v = 0; v < NV; ++v) acc[r][v] = Simd<T>::fma(ar, bv[v], acc[r][v]);
    }
    a += MR;
    b += NV * L;
  }
  if (rows == MR && cols == NV * L && alpha == T(1) && (beta == T(0) || beta == T(1))) {
    // full tile, plain store or accumulate: straight from the registers
MAML_UNROLL(8)
    for (int r = 0; r < MR; ++r)
MAML_UNROLL(4)
      for (int v = 0; v < NV; ++v) {
        T* out = c + r * ldc + v * L;
        Simd<T>::store(out, beta == T(1) ? Simd<T>::add(Simd<T>::load(out), acc[r][v]) : acc[r][v]);
      }
    return;
  }
  T tile[MR][NV * L];
MAML_UNROLL(8)
  for (int r = 0; r < MR; ++r)
MAML_UNROLL(4)
    for (int v = 0; v < NV; ++v) Simd<T>::store(&tile[r][v * L], acc[r][v]);
  store_tile<T, MR, NV * L>(tile, c, ldc, rows, cols, alpha, beta);
}

// Indirect tiles: tile[r * NR + c] = sum_{p < k} A(r, p) b[p * NR + c], with A not packed
// but read through pointers and offsets, and B one packed NR-wide sliver. The caller
// stores the tile wherever its output goes (cpu/conv_indirect.h scatters it into images).
//   indirect_tile_columns: A(r, p) = columns[p][at[r]]   (MR offsets: one per tile row)
//   indirect_tile_rows:    A(r, p) = rows[r][at[p]]      (k offsets: one per depth step)
// The offsets let a tile's rows be any positions of a strided, padded image, so nothing
// is computed twice or copied into a matrix first. add: the tile already holds a partial
// sum (an earlier depth block) to add to.
// The two ways A comes in: the tile kernel below asks each for the row pointers of one depth
// step (next) and then for A(r, p) (at).
template <class T, int MR>
struct ColumnSource {  // A(r, p) = columns[p][offset[r]]
  const T* const* __restrict columns;
  std::ptrdiff_t offset[MR];
  const T* current = nullptr;
  void next(int p) { current = columns[p]; }
  const T* at(int r) const { return current + offset[r]; }
};
template <class T, int MR>
struct RowSource {  // A(r, p) = rows[r][positions[p]]
  const T* rows[MR];
  const int32_t* __restrict positions;
  std::ptrdiff_t offset = 0;
  void next(int p) { offset = positions[p]; }
  const T* at(int r) const { return rows[r] + offset; }
};

template <class T, class S, class Source>
__attribute__((always_inline)) inline void indirect_tile(int k, Source source, const T* __restrict b, bool add,
                                                         T* __restrict tile) {
  using V = typename Simd<T>::V;
  constexpr int MR = S::MR, NV = S::NV, L = Simd<T>::lanes;
  V acc[MR][NV];
MAML_UNROLL(8)
  for (int r = 0; r < MR; ++r)
MAML_UNROLL(4)
    for (int v = 0; v < NV; ++v) acc[r][v] = add ? Simd<T>::load(tile + r * NV * L + v * L) : Simd<T>::zero();
  for (int p = 0; p < k; ++p) {
    source.next(p);
    V bv[NV];
MAML_UNROLL(4)
    for (int v = 0; v < NV; ++v) {
      bv[v] = Simd<T>::load(b + v * L);
      __asm__("" : "+x"(bv[v]));  // as in micro_kernel: one load per B vector
    }
MAML_UNROLL(8)
    for (int r = 0; r < MR; ++r) {
      const V ar = Simd<T>::broadcast(source.at(r));
MAML_UNROLL(4)
      for (int v = 0; v < NV; ++v) acc[r][v] = Simd<T>::fma(ar, bv[v], acc[r][v]);
    }
    b += NV * L;
  }
MAML_UNROLL(8)
  for (int r = 0; r < MR; ++r)
MAML_UNROLL(4)
    for (int v = 0; v < NV; ++v) Simd<T>::store(tile + r * NV * L + v * L, acc[r][v]);
}

template <class T, class S>
__attribute__((noinline)) void indirect_tile_columns(int k, const T* const* __restrict columns,
                                                     const int32_t* __restrict at, const T* __restrict b, bool add,
                                                     T* __restrict tile) {
  ColumnSource<T, S::MR> source{columns, {}};
MAML_UNROLL(8)
  for (int r = 0; r < S::MR; ++r) source.offset[r] = at[r];
  indirect_tile<T, S>(k, source, b, add, tile);
}

template <class T, class S>
__attribute__((noinline)) void indirect_tile_rows(int k, const T* const* __restrict rows, const int32_t* __restrict at,
                                                  const T* __restrict b, bool add, T* __restrict tile) {
  RowSource<T, S::MR> source{{}, at};
MAML_UNROLL(8)
  for (int r = 0; r < S::MR; ++r) source.rows[r] = rows[r];
  indirect_tile<T, S>(k, source, b, add, tile);
}

struct PackBuffers;  // owner tag of the two packing buffers (0: B, 1: A)
template <class T>
T* pack_buffer(int slot, size_t size) {
  return thread_scratch<T, PackBuffers, 2>(slot, size);
}

inline int round_up(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

// Packed A, whole matrix: for each depth block [p0, p0 + kc), all row slivers, so block
// (p0, i0) starts at p0 * round_up(m, MR) + i0 * kc.
template <class T, class S>
void pack_a_all(int m, int k, const T* a, MatrixView av, T* packed) {
  const int blocks = depth_blocks(k), m_padded = round_up(m, S::MR);
  for (int pb = 0; pb < blocks; ++pb) {
    const int p0 = depth_begin(pb, blocks, k), kc = depth_begin(pb + 1, blocks, k) - p0;
    pack_a<T, S::MR>(m, kc, a + p0 * av.col_stride, av, packed + size_t(p0) * m_padded);
  }
}

// packed_a: A already packed by pack_a_all (then a and av are unused), or null.
template <class T, class S>
void gemm_tiled(int m, int n, int k, T alpha, const T* a, MatrixView av, const T* packed_a, const T* b, MatrixView bv,
                T beta, T* c, std::ptrdiff_t ldc) {
  constexpr int MR = S::MR, NR = S::NR;
  const int blocks = depth_blocks(k), m_padded = round_up(m, MR);
  T* b_buffer = pack_buffer<T>(0, size_t(NC + NR) * KC_MAX);
  T* a_buffer = packed_a ? nullptr : pack_buffer<T>(1, size_t(MC + MR) * KC_MAX);
  for (int j0 = 0; j0 < n; j0 += NC) {
    const int nc = std::min(NC, n - j0);
    for (int pb = 0; pb < blocks; ++pb) {
      const int p0 = depth_begin(pb, blocks, k), kc = depth_begin(pb + 1, blocks, k) - p0;
      const T step_beta = pb == 0 ? beta : T(1);
      pack_b<T, NR>(kc, nc, b + p0 * bv.row_stride + j0 * bv.col_stride, bv, b_buffer);
      for (int i0 = 0; i0 < m; i0 += MC) {
        const int mc = std::min(MC, m - i0);
        const T* a_block;
        if (packed_a) {
          a_block = packed_a + size_t(p0) * m_padded + size_t(i0) * kc;
        } else {
          pack_a<T, MR>(mc, kc, a + i0 * av.row_stride + p0 * av.col_stride, av, a_buffer);
          a_block = a_buffer;
        }
        for (int jr = 0; jr < nc; jr += NR) {
          const int cols = std::min(NR, nc - jr);
          for (int ir = 0; ir < mc; ir += MR) {
            micro_kernel<T, S>(kc, a_block + ir * kc, b_buffer + jr * kc, c + (i0 + ir) * ldc + j0 + jr, ldc,
                               std::min(MR, mc - ir), cols, alpha, step_beta);
          }
        }
      }
    }
  }
}

template <class T>
using TallTile = Tile<T, 6, 2>;
template <class T>
using WideTile = Tile<T, 4, 3>;

}  // namespace gemm_detail

// The tile shape for an m x n product: the one with less padding (ties: tall).
template <class T>
gemm_detail::TileShape gemm_tile_shape(int m, int n) {
  using namespace gemm_detail;
  const auto padded = [&](int mr, int nr) { return int64_t(round_up(m, mr)) * round_up(n, nr); };
  return padded(WideTile<T>::MR, WideTile<T>::NR) < padded(TallTile<T>::MR, TallTile<T>::NR) ? TileShape::wide
                                                                                               : TileShape::tall;
}

// Elements pack_a_matrix writes for an m x k A.
template <class T>
size_t packed_a_size(gemm_detail::TileShape shape, int m, int k) {
  using namespace gemm_detail;
  return size_t(round_up(m, shape == TileShape::wide ? WideTile<T>::MR : TallTile<T>::MR)) * k;
}

template <class T>
void pack_a_matrix(gemm_detail::TileShape shape, int m, int k, const T* a, MatrixView av, T* packed) {
  using namespace gemm_detail;
  if (shape == TileShape::wide)
    pack_a_all<T, WideTile<T>>(m, k, a, av, packed);
  else
    pack_a_all<T, TallTile<T>>(m, k, a, av, packed);
}

// C = alpha * A B + beta * C with A packed by pack_a_matrix for the same shape, m and k.
template <class T>
void gemm_packed(gemm_detail::TileShape shape, int m, int n, int k, T alpha, const T* packed_a, const T* b,
                 MatrixView bv, T beta, T* c, std::ptrdiff_t ldc) {
  using namespace gemm_detail;
  if (m <= 0 || n <= 0 || k <= 0) return;  // callers of the packed form always have k > 0
  if (shape == TileShape::wide)
    gemm_tiled<T, WideTile<T>>(m, n, k, alpha, nullptr, {0, 0}, packed_a, b, bv, beta, c, ldc);
  else
    gemm_tiled<T, TallTile<T>>(m, n, k, alpha, nullptr, {0, 0}, packed_a, b, bv, beta, c, ldc);
}

// C[m x n] (row-major, leading dimension ldc) = alpha * A[m x k] B[k x n] + beta * C.
template <class T>
void gemm(int m, int n, int k, T alpha, const T* a, MatrixView av, const T* b, MatrixView bv, T beta, T* c,
          std::ptrdiff_t ldc) {
  using namespace gemm_detail;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  if (gemm_tile_shape<T>(m, n) == TileShape::wide)
    gemm_tiled<T, WideTile<T>>(m, n, k, alpha, a, av, nullptr, b, bv, beta, c, ldc);
  else
    gemm_tiled<T, TallTile<T>>(m, n, k, alpha, a, av, nullptr, b, bv, beta, c, ldc);
}

// The plain triple loop: the reference every fast path is checked against.
template <class T>
void gemm_reference(int m, int n, int k, T alpha, const T* a, MatrixView av, const T* b, MatrixView bv, T beta,
                    T* c, std::ptrdiff_t ldc) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      T sum = 0;
      for (int p = 0; p < k; ++p) sum += a[i * av.row_stride + p * av.col_stride] * b[p * bv.row_stride + j * bv.col_stride];
      c[i * ldc + j] = alpha * sum + (beta == T(0) ? T(0) : beta * c[i * ldc + j]);
    }
}

inline MatrixView row_major(std::ptrdiff_t ld) { return {ld, 1}; }
inline MatrixView transposed(std::ptrdiff_t ld) { return {1, ld}; }

}  // namespace maml
