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
    } else {
      for (int p = 0; p < k; ++p) {
        for (int c = 0; c < cols; ++c) packed[c] = b[p * bv.row_stride + (j0 + c) * bv.col_stride];
        for (int c = cols; c < NR; ++c) packed[c] = T(0);
        packed += NR;
      }
    }
  }
}

// All lanes set to one value; written lane by lane, which GCC turns into one vbroadcast.
template <class V, class T>
inline V broadcast(T value) {
  V v;
  for (size_t i = 0; i < sizeof(V) / sizeof(T); ++i) v[i] = value;
  return v;
}

// acc(MR x NR) = sum_p a_sliver[p] (outer) b_sliver[p]; then C tile = alpha acc + beta C.
template <class T>
inline void micro_kernel(int k, const T* __restrict a, const T* __restrict b, T* c, std::ptrdiff_t ldc,
                         int rows, int cols, T alpha, T beta) {
  using K = Kernel<T>;
  using V = typename K::Vector;
  constexpr int MR = K::MR, L = K::lanes;
  V acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V{} ;
  for (int p = 0; p < k; ++p) {
    V b0, b1;
    __builtin_memcpy(&b0, b, sizeof(V));
    __builtin_memcpy(&b1, b + L, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      const V ar = broadcast<V>(a[r]);
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
  for (int r = 0; r < rows; ++r) {
    T* crow = c + r * ldc;
    if (beta == T(0)) {
      for (int j = 0; j < cols; ++j) crow[j] = alpha * tile[r][j];
    } else {
      for (int j = 0; j < cols; ++j) crow[j] = alpha * tile[r][j] + beta * crow[j];
    }
  }
}

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
