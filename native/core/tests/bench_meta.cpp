// Seconds per meta-iteration of the paper's settings, both orders, with FLOPs and the
// engine's workspace. Prints one JSON line per measurement. The TypeScript bench
// (bench/order.ts, `maml-native bench order`) runs each setting through the addon in a
// fresh process; this binary is the same measurement without Node, for profiling.
// Each line also times the trainer's usual call (training_median_s): the same meta-gradient
// without the pre-adaptation query pass, which the trainer runs on every 10th iteration.
// Usage: maml_bench_meta [setting|all] [repeats] [order: 1 or 2, 0 both] [workspace budget MB, default 512]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flop_count.h"
#include "meta_learner.h"

using namespace maml;

struct Setting {
  const char* name;
  const char* arch;
  int ways, shots, queries, tasks, steps;
};

static const Setting settings[] = {
    {"omniglot-5w1s", "omniglot", 5, 1, 1, 32, 1},   {"omniglot-5w5s", "omniglot", 5, 5, 5, 32, 1},
    {"omniglot-20w1s", "omniglot", 20, 1, 1, 16, 5}, {"omniglot-20w5s", "omniglot", 20, 5, 5, 16, 5},
    {"miniimagenet-5w1s", "miniimagenet", 5, 1, 15, 4, 5}, {"miniimagenet-5w5s", "miniimagenet", 5, 5, 15, 2, 5},
};

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
  const int only_order = argc > 3 ? std::atoi(argv[3]) : 0;  // 1 or 2: just that order (for profiling)
  const double budget_mb = argc > 4 ? std::atof(argv[4]) : 512;  // workspace budget (sets the task group)
  for (const Setting& s : settings) {
    if (which != "all" && which != s.name) continue;
    ArchitectureOptions o;
    o.name = s.arch;
    o.ways = s.ways;
    const Architecture arch = make_architecture(o);
    MetaLearner<float> learner(arch, 1e-3f, budget_mb * 1e6);
    const int support = s.ways * s.shots, query = s.ways * s.queries;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> pixel(0, 1);
    std::vector<float> si(size_t(s.tasks) * support * arch.input.size()), qi(size_t(s.tasks) * query * arch.input.size());
    for (auto& v : si) v = pixel(rng);
    for (auto& v : qi) v = pixel(rng);
    std::vector<int32_t> sl(size_t(s.tasks) * support), ql(size_t(s.tasks) * query);
    for (size_t i = 0; i < sl.size(); ++i) sl[i] = int32_t(i % s.ways);
    for (size_t i = 0; i < ql.size(); ++i) ql[i] = int32_t(i % s.ways);
    TaskBatch<float> batch;
    batch.tasks = s.tasks;
    batch.support = {support, si.data(), sl.data(), nullptr, 1.0f / s.shots};
    batch.query = {query, qi.data(), ql.data(), nullptr, 1.0f / s.shots};
    const std::vector<float> theta = initialize_parameters<float>(arch, 1);
    for (int order = 1; order <= 2; ++order) {
      if (only_order && order != only_order) continue;
      InnerLoop loop;
      loop.steps = s.steps;
      loop.step_sizes = {0.01};
      loop.second_order = order == 2;
      // median seconds of `repeats` calls after one warm-up call (the first allocates)
      size_t workspace = 0;
      auto time_calls = [&](std::vector<double>& times) {
        times.clear();
        for (int r = 0; r < repeats + 1; ++r) {
          const auto start = std::chrono::steady_clock::now();
          const auto result = learner.meta_gradient(theta.data(), batch, loop);
          const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          if (r > 0) times.push_back(t);
          workspace = result.workspace_bytes;
        }
        std::sort(times.begin(), times.end());
        return times[times.size() / 2];
      };
      std::vector<double> times, training_times;
      const double median = time_calls(times);
      // what the trainer runs on 9 iterations of 10: no pre-adaptation query pass
      loop.measure_before = false;
      const double training_median = time_calls(training_times);
      const double flops = meta_gradient_flops(arch, s.tasks, support, query, s.steps, order == 2);
      const double training_flops = meta_gradient_flops(arch, s.tasks, support, query, s.steps, order == 2, false);
      std::printf("{\"setting\": \"%s\", \"order\": %d, \"median_s\": %.4f, \"min_s\": %.4f, \"max_s\": %.4f, \"gflop\": %.3f, \"gflops\": %.1f, "
                  "\"training_median_s\": %.4f, \"training_gflops\": %.1f, \"workspace_mib\": %.1f}\n",
                  s.name, order, median, times.front(), times.back(), flops / 1e9, flops / median / 1e9, training_median,
                  training_flops / training_median / 1e9, workspace / 1048576.0);
      std::fflush(stdout);
    }
  }
  return 0;
}
