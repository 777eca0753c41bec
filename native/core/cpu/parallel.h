// One place that decides how work is spread over cores, so kernels stay readable and
// the build works with or without OpenMP.
#pragma once
#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace maml {

inline int thread_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// The thread count while one of these lives (tests of how the work is split).
class ScopedThreadCount {
 public:
  explicit ScopedThreadCount(int threads) : before_(thread_count()) { set(threads); }
  ~ScopedThreadCount() { set(before_); }

 private:
  static void set(int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  int before_;
};

// Runs body(i) for i in [0, count), spread over the threads; dynamic because units
// (a task's example, a column chunk) differ in cost at image borders and tails.
template <class Body>
void parallel_for(int64_t count, Body body) {
#ifdef _OPENMP
  if (count > 1 && thread_count() > 1) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) body(i);
    return;
  }
#endif
  for (int64_t i = 0; i < count; ++i) body(i);
}

// How many parts (at most `most`) to cut each of `units` like-sized units into, so that
// the dynamic schedule ends nearly even: four units a thread where the parts allow. One
// task's five support examples on two threads run 3 + 2 whole, but 5 + 5 halved.
inline int parts_for_balance(int64_t units, int most) {
  const int threads = thread_count();
  int parts = 1;
  while (threads > 1 && parts < most && units * parts < 4 * int64_t(threads)) ++parts;
  return parts;
}

// Runs body(begin, end) over [0, size) in blocks of `block` elements, spread over the
// threads: for the elementwise passes (ReLU, pooling) over whole activations, which
// left one core idle while they ran serially.
template <class Body>
void parallel_ranges(int64_t size, int64_t block, Body body) {
  const int64_t blocks = (size + block - 1) / block;
  parallel_for(blocks, [&](int64_t b) { body(b * block, std::min(size, (b + 1) * block)); });
}

}  // namespace maml
