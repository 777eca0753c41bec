// GEMM throughput of the engine's own kernel: the ceiling the bench compares layers to.
// Usage: maml_bench_gemm [size] [repeats]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/parallel.h"

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 1024, repeats = argc > 2 ? std::atoi(argv[2]) : 5;
  const int threads = maml::thread_count();
  std::vector<float> a(size_t(n) * n, 1.0f), b(size_t(n) * n, 0.5f), c(size_t(n) * n);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    // split columns across threads the way the conv kernels do
    const int chunk = (n + threads - 1) / threads;
    maml::parallel_for(threads, [&](int64_t t) {
      const int first = int(t) * chunk, cols = std::min(chunk, n - first);
      if (cols > 0)
        maml::gemm<float>(n, cols, n, 1.0f, a.data(), maml::row_major(n), b.data() + first, maml::row_major(n), 0.0f,
                          c.data() + first, n);
    });
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::printf("{\"size\": %d, \"threads\": %d, \"seconds\": %.6f, \"gflops\": %.2f}\n", n, threads, best,
              2.0 * n * n * double(n) / best / 1e9);
  return 0;
}
