// Vectorised sums in a fixed order, shared by the layers that reduce over positions
// (batch-norm statistics, conv bias gradients, spatial means).
#pragma once
#include <cstdint>

namespace maml {

// Sums of per-position terms in interleaved partial sums, one vector wide: a single
// running sum is a chain of dependent adds the compiler may not reorder. The order is
// fixed, so results never depend on threads. term(load, sums) adds one position's terms
// into sums[0..S) (S sums at once, so one pass serves several statistics); load(p) reads
// p at that position. The term is a generic lambda run on vectors (GCC vector
// extensions, so "vector - scalar" works) and on scalars for the tail: the body is
// written once and the vector loop needs no shuffles to regroup lanes.
template <class T, int S, class Term>
inline void lane_sums(int64_t count, T (&out)[S], Term term) {
  constexpr int L = 32 / sizeof(T);  // one AVX register: 8 floats, 4 doubles
  typedef T V __attribute__((vector_size(32)));
  V lanes[S];
  for (int k = 0; k < S; ++k) lanes[k] = V{};
  int64_t i = 0;
  const auto load_vector = [&](const T* p) {
    V v;
    __builtin_memcpy(&v, p + i, sizeof(V));
    return v;
  };
  for (; i + L <= count; i += L) {
    V terms[S];
    term(load_vector, terms);
    for (int k = 0; k < S; ++k) lanes[k] += terms[k];
  }
  T tail[S] = {};
  const auto load_scalar = [&](const T* p) { return p[i]; };
  for (; i < count; ++i) {
    T terms[S];
    term(load_scalar, terms);
    for (int k = 0; k < S; ++k) tail[k] += terms[k];
  }
  for (int k = 0; k < S; ++k) {
    T lane[L];
    __builtin_memcpy(lane, &lanes[k], sizeof(V));
    for (int width = L / 2; width > 0; width /= 2)  // pairwise, in a fixed order
      for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
    out[k] += lane[0] + tail[k];
  }
}

// sum(p[0..count)) through lane_sums: a plain running sum is one dependent add per
// element (four cycles each), which made the conv bias gradient a visible cost.
template <class T>
inline T vector_sum(int64_t count, const T* p) {
  T sum[1] = {0};
  lane_sums<T, 1>(count, sum, [&](auto load, auto* t) { t[0] = load(p); });
  return sum[0];
}

}  // namespace maml
