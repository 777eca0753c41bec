// General matrix multiply, C = alpha * A B + beta * C, for float and double.
//
// Every convolution and linear layer of the engine (forward, input gradient, weight
// gradient and their tangents) ends up here, so this is where the FLOPs are.
// A and B are read through arbitrary row/column strides, so transposed operands need
// no copy: the packing step reads them in whatever order they lie.
//
// Layout follows the usual BLIS/GotoBLAS scheme: B is packed into KC x NR slivers,
// A into MR x KC slivers, and a register-blocked micro-kernel of MR x NR accumulators
// (GCC vector extensions, so it compiles to AVX2/FMA with -march=native and to plain
// scalar code elsewhere) runs over them. It is single-threaded on purpose: callers
// thread over examples, tasks and column chunks, which keeps every core busy on the
// small matrices conv nets have, without nested thread pools.
//
// Checked against the naive triple loop in tests/test_gemm.cpp; timed by bench_gemm.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace maml {

struct MatrixView {
  // element (i, j) is data[i * row_stride + j * col_stride]
  std::ptrdiff_t row_stride;
  std::ptrdiff_t col_stride;
};

namespace gemm_detail {

template <class T>
struct Kernel {
  static constexpr int vector_bytes = 32;
  static constexpr int lanes = vector_bytes / sizeof(T);
  typedef T Vector __attribute__((vector_size(vector_bytes)));
  static constexpr int MR = 6;
  static constexpr int NR = 2 * lanes;  // two vectors wide
  static constexpr int KC = 256;
  static constexpr int MC = 96;
  static constexpr int NC = 2048;
};

// Packs rows [0, m) x depth [0, k) of A into MR-tall slivers, zero padded.
template <class T>
void pack_a(int m, int k, const T* a, MatrixView av, T* packed) {
  constexpr int MR = Kernel<T>::MR;
  for (int i0 = 0; i0 < m; i0 += MR) {
    const int rows = std::min(MR, m - i0);
    for (int p = 0; p < k; ++p) {
      for (int r = 0; r < rows; ++r) packed[r] = a[(i0 + r) * av.row_stride + p * av.col_stride];
      for (int r = rows; r < MR; ++r) packed[r] = T(0);
      packed += MR;
    }
  }
}

// Packs depth [0, k) x columns [0, n) of B into NR-wide slivers, zero padded.
template <class T>
void pack_b(int k, int n, const T* b, MatrixView bv, T* packed) {
  constexpr int NR = Kernel<T>::NR;
  for (int j0 = 0; j0 < n; j0 += NR) {
    const int cols = std::min(NR, n - j0);
    if (cols == NR && bv.col_stride == 1) {
      for (int p = 0; p < k; ++p) {
        const T* src = b + p * bv.row_stride + j0;
        for (int c = 0; c < NR; ++c) packed[c] = src[c];
        packed += NR;
      }
    } else if (bv.row_stride == 1) {
      // B is a transposed row-major matrix (the weight gradient's im2col^T): read each
      // column as the contiguous run it is and scatter into the sliver, which sits in L1.
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
// Portable version (GCC vector extensions); AVX2/FMA builds use the intrinsics below.
template <class T>
inline void micro_kernel(int k, const T* __restrict a, const T* __restrict b, T* c, std::ptrdiff_t ldc,
                         int rows, int cols, T alpha, T beta) {
  using K = Kernel<T>;
  using V = typename K::Vector;
  constexpr int MR = K::MR, L = K::lanes;
  V acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V{};
  for (int p = 0; p < k; ++p) {
    V b0, b1;
    __builtin_memcpy(&b0, b, sizeof(V));
    __builtin_memcpy(&b1, b + L, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      V ar;
      for (int i = 0; i < L; ++i) ar[i] = a[r];
      acc[r][0] += ar * b0;
      acc[r][1] += ar * b1;
    }
    a += MR;
    b += 2 * L;
  }
  T tile[MR][2 * L];
  for (int r = 0; r < MR; ++r) {
    __builtin_memcpy(&tile[r][0], &acc[r][0], sizeof(V));
    __builtin_memcpy(&tile[r][L], &acc[r][1], sizeof(V));
  }
  store_tile<T, MR, 2 * L>(tile, c, ldc, rows, cols, alpha, beta);
}

#if defined(__AVX2__) && defined(__FMA__)
// 6 x 16 floats / 6 x 8 doubles in 12 ymm accumulators: two B loads and six broadcasts
// feed twelve FMAs per step of k, which keeps both FMA ports of a Zen 3 / Skylake core busy.
#define MAML_MICRO_KERNEL(T, VEC, LOAD, BROADCAST, FMA, STORE, ZERO, LANES, ADD, STOREU)                                        \
  template <>                                                                                                        \
  inline void micro_kernel<T>(int k, const T* __restrict a, const T* __restrict b, T* c, std::ptrdiff_t ldc,        \
                              int rows, int cols, T alpha, T beta) {                                                 \
    VEC c00 = ZERO(), c01 = ZERO(), c10 = ZERO(), c11 = ZERO(), c20 = ZERO(), c21 = ZERO();                          \
    VEC c30 = ZERO(), c31 = ZERO(), c40 = ZERO(), c41 = ZERO(), c50 = ZERO(), c51 = ZERO();                          \
    for (int p = 0; p < k; ++p) {                                                                                    \
      const VEC b0 = LOAD(b), b1 = LOAD(b + LANES);                                                                  \
      VEC ar = BROADCAST(a + 0);                                                                                     \
      c00 = FMA(ar, b0, c00); c01 = FMA(ar, b1, c01);                                                                \
      ar = BROADCAST(a + 1); c10 = FMA(ar, b0, c10); c11 = FMA(ar, b1, c11);                                         \
      ar = BROADCAST(a + 2); c20 = FMA(ar, b0, c20); c21 = FMA(ar, b1, c21);                                         \
      ar = BROADCAST(a + 3); c30 = FMA(ar, b0, c30); c31 = FMA(ar, b1, c31);                                         \
      ar = BROADCAST(a + 4); c40 = FMA(ar, b0, c40); c41 = FMA(ar, b1, c41);                                         \
      ar = BROADCAST(a + 5); c50 = FMA(ar, b0, c50); c51 = FMA(ar, b1, c51);                                         \
      a += 6;                                                                                                        \
      b += 2 * LANES;                                                                                                \
    }                                                                                                                \
    if (rows == 6 && cols == 2 * LANES && alpha == T(1) && (beta == T(0) || beta == T(1))) {                          \
      /* full tile, plain store or accumulate: straight from the registers */                                      \
      VEC* acc[12] = {&c00, &c01, &c10, &c11, &c20, &c21, &c30, &c31, &c40, &c41, &c50, &c51};                       \
      for (int r = 0; r < 6; ++r)                                                                                    \
        for (int h = 0; h < 2; ++h) {                                                                                \
          T* out = c + r * ldc + h * LANES;                                                                          \
          VEC value = *acc[2 * r + h];                                                                               \
          if (beta == T(1)) value = ADD(LOAD(out), value);                                                           \
          STOREU(out, value);                                                                                        \
        }                                                                                                            \
      return;                                                                                                        \
    }                                                                                                                \
    alignas(32) T tile[6][2 * LANES];                                                                                \
    STORE(tile[0], c00); STORE(tile[0] + LANES, c01); STORE(tile[1], c10); STORE(tile[1] + LANES, c11);              \
    STORE(tile[2], c20); STORE(tile[2] + LANES, c21); STORE(tile[3], c30); STORE(tile[3] + LANES, c31);              \
    STORE(tile[4], c40); STORE(tile[4] + LANES, c41); STORE(tile[5], c50); STORE(tile[5] + LANES, c51);              \
    store_tile<T, 6, 2 * LANES>(tile, c, ldc, rows, cols, alpha, beta);                                              \
  }
MAML_MICRO_KERNEL(float, __m256, _mm256_loadu_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_store_ps, _mm256_setzero_ps, 8,
                  _mm256_add_ps, _mm256_storeu_ps)
MAML_MICRO_KERNEL(double, __m256d, _mm256_loadu_pd, _mm256_broadcast_sd, _mm256_fmadd_pd, _mm256_store_pd, _mm256_setzero_pd, 4,
                  _mm256_add_pd, _mm256_storeu_pd)
#undef MAML_MICRO_KERNEL
#endif

template <class T>
struct PackBuffers {
  std::vector<T> a, b;
};

template <class T>
PackBuffers<T>& thread_pack_buffers() {
  thread_local PackBuffers<T> buffers;
  return buffers;
}

}  // namespace gemm_detail

// C[m x n] (row-major, leading dimension ldc) = alpha * A[m x k] B[k x n] + beta * C.
template <class T>
void gemm(int m, int n, int k, T alpha, const T* a, MatrixView av, const T* b, MatrixView bv, T beta, T* c,
          std::ptrdiff_t ldc) {
  using namespace gemm_detail;
  using K = Kernel<T>;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  PackBuffers<T>& buf = thread_pack_buffers<T>();
  buf.a.resize(static_cast<size_t>(K::MC + K::MR) * K::KC);
  buf.b.resize(static_cast<size_t>(K::NC + K::NR) * K::KC);
  for (int j0 = 0; j0 < n; j0 += K::NC) {
    const int nc = std::min(K::NC, n - j0);
    for (int p0 = 0; p0 < k; p0 += K::KC) {
      const int kc = std::min(K::KC, k - p0);
      const T step_beta = p0 == 0 ? beta : T(1);
      pack_b(kc, nc, b + p0 * bv.row_stride + j0 * bv.col_stride, bv, buf.b.data());
      for (int i0 = 0; i0 < m; i0 += K::MC) {
        const int mc = std::min(K::MC, m - i0);
        pack_a(mc, kc, a + i0 * av.row_stride + p0 * av.col_stride, av, buf.a.data());
        for (int jr = 0; jr < nc; jr += K::NR) {
          const int cols = std::min(K::NR, nc - jr);
          for (int ir = 0; ir < mc; ir += K::MR) {
            const int rows = std::min(K::MR, mc - ir);
            micro_kernel<T>(kc, buf.a.data() + ir * kc, buf.b.data() + jr * kc, c + (i0 + ir) * ldc + j0 + jr, ldc,
                            rows, cols, alpha, step_beta);
          }
        }
      }
    }
  }
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
