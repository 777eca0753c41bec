// Times CUDA meta-iterations (CudaMetaLearner<float>::meta_gradient on indexed batches
// from a device-resident random image cache, results back on the host) for the paper's
// settings, both orders, and prints one JSON line per setting and order:
//   median and min ms per meta-iteration, achieved GFLOP/s, device memory, the target.
// FLOPs are counted from Architecture::forward_multiply_adds with this model per task:
//   inner steps K x support x 3 (forward + input grad + weight grad)
//   + support after (1) + query before (1) + query gradient (3) per example,
//   + second order: K x support x 9 (forward 1 + tangent forward 2 + reverse 2 + tangent reverse 4).
// Usage: maml_cuda_bench [--json PATH] [--iterations N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "cuda_network.h"
#include "device.h"
#include "meta_learner.h"

using namespace maml;

namespace {

struct Setting {
  std::string name;
  std::string dataset;
  int ways, shots, queries_per_class, tasks, steps;
  double step_size;
  double target_ms_second_order;  // 0: no target
};

std::string json_setting(const Setting& s, bool second, const Architecture& arch, int support, int query,
                         double median_ms, double min_ms, double gflops, size_t memory, size_t workspace,
                         int group, const std::string& device) {
  char line[1024];
  const bool has_target = second && s.target_ms_second_order > 0;
  std::snprintf(line, sizeof line,
                "{\"bench\":\"cuda_meta_iteration\",\"setting\":\"%s\",\"dataset\":\"%s\",\"order\":%d,"
                "\"ways\":%d,\"shots\":%d,\"tasks\":%d,\"steps\":%d,\"support\":%d,\"query\":%d,"
                "\"parameters\":%lld,\"median_ms\":%.4f,\"min_ms\":%.4f,\"gflops\":%.1f,"
                "\"device_memory_bytes\":%zu,\"workspace_bytes\":%zu,\"task_group\":%d,"
                "\"target_ms\":%s,\"meets_target\":%s,\"device\":\"%s\"}",
                s.name.c_str(), s.dataset.c_str(), second ? 2 : 1, s.ways, s.shots, s.tasks, s.steps, support, query,
                (long long)arch.parameter_count, median_ms, min_ms, gflops, memory, workspace, group,
                has_target ? std::to_string(s.target_ms_second_order).c_str() : "null",
                has_target ? (median_ms < s.target_ms_second_order ? "true" : "false") : "null", device.c_str());
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int iterations = 20;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--iterations") && i + 1 < argc) iterations = std::max(1, std::atoi(argv[++i]));
  }
  std::string why;
  if (cuda::cuda_device_count(&why) == 0) {
    std::printf("no CUDA device: skipped (%s)\n", why.c_str());
    return 0;
  }
  const std::string device = cuda::describe_device(0);
  std::printf("device: %s\n", device.c_str());
  FILE* json = json_path.empty() ? nullptr : std::fopen(json_path.c_str(), "w");
  if (!json_path.empty() && !json) {
    std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
    return 1;
  }

  // The paper's settings (Finn et al. 2017): Omniglot 5-way 1-shot, meta-batch 32, 1 step;
  // 20-way 1-shot, meta-batch 16, 5 steps; MiniImagenet 5-way 1-shot, meta-batch 4, 5 steps;
  // 5-way 5-shot, meta-batch 2, 5 steps; 15 queries per class for MiniImagenet.
  const std::vector<Setting> settings = {
      {"omniglot-5w1s", "omniglot", 5, 1, 1, 32, 1, 0.4, 10},
      {"miniimagenet-5w1s", "miniimagenet", 5, 1, 15, 4, 5, 0.01, 30},
      {"miniimagenet-5w5s", "miniimagenet", 5, 5, 15, 2, 5, 0.01, 0},
      {"omniglot-20w1s", "omniglot", 20, 1, 1, 16, 5, 0.1, 0},
  };
  int failures = 0;
  for (const Setting& s : settings) {
    ArchitectureOptions o;
    o.name = s.dataset;
    o.ways = s.ways;
    const Architecture arch = make_architecture(o);
    const int support = s.ways * s.shots, query = s.ways * s.queries_per_class;
    // a random cache of 1000 images of the right shape, resident on the device
    std::mt19937_64 rng(7);
    const int64_t images = 1000;
    std::vector<uint8_t> pixels(size_t(images * arch.input.size()));
    for (auto& p : pixels) p = uint8_t(rng() % 256);
    ImageCache cache;
    cache.pixels = pixels.data();
    cache.count = images;
    cache.channels = arch.input.channels;
    cache.height = arch.input.height;
    cache.width = arch.input.width;
    cache.invert = s.dataset == "omniglot";
    const std::vector<float> theta = initialize_parameters<float>(arch, 1);
    for (bool second : {false, true}) {
      try {
        const size_t memory_before = cuda::device_memory_used();
        cuda::CudaMetaLearner<float> learner(arch);
        learner.set_image_cache(cache);
        InnerLoop loop;
        loop.steps = s.steps;
        loop.step_sizes = {s.step_size};
        loop.second_order = second;
        std::vector<double> times;
        double timed_ms = 0;
        constexpr double kSettingBudgetMs = 6000;
        int group = 0;
        for (int it = 0; it < iterations + 3; ++it) {
          // a fresh episode each iteration: only indices, rotations and labels cross
          std::vector<int32_t> si, qi, sl, ql;
          std::vector<uint8_t> sr, qr;
          for (int i = 0; i < s.tasks * support; ++i) {
            si.push_back(int32_t(rng() % images));
            sr.push_back(uint8_t(s.dataset == "omniglot" ? rng() % 4 : 0));
            sl.push_back((i / s.shots) % s.ways);
          }
          for (int i = 0; i < s.tasks * query; ++i) {
            qi.push_back(int32_t(rng() % images));
            qr.push_back(uint8_t(s.dataset == "omniglot" ? rng() % 4 : 0));
            ql.push_back((i / s.queries_per_class) % s.ways);
          }
          cuda::IndexedTaskBatch<float> batch;
          batch.tasks = s.tasks;
          batch.support = {support, si.data(), sr.data(), sl.data(), 1.0f / support};
          batch.query = {query, qi.data(), qr.data(), ql.data(), 1.0f / query};
          const auto start = std::chrono::steady_clock::now();
          const MetaGradient<float> g = learner.meta_gradient(theta.data(), batch, loop);
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
          group = g.task_group;
          if (it >= 3) times.push_back(ms);  // the first iterations allocate and warm up
          timed_ms += ms;
          if (times.size() >= 5 && timed_ms > kSettingBudgetMs) break;  // keep the whole bench short
        }
        std::sort(times.begin(), times.end());
        const double median = times[times.size() / 2], fastest = times.front();
        const double examples = double(s.tasks) * (double(support) * (3.0 * s.steps + 1 + (second ? 9.0 * s.steps : 0)) +
                                                   4.0 * query);
        const double flops = 2.0 * arch.forward_multiply_adds() * examples;
        const double gflops = flops / (median * 1e-3) / 1e9;
        const size_t memory = cuda::device_memory_used() - memory_before;
        const std::string line = json_setting(s, second, arch, support, query, median, fastest, gflops, memory,
                                              learner.workspace_bytes(), group, device);
        std::printf("%s\n", line.c_str());
        if (json) std::fprintf(json, "%s\n", line.c_str());
      } catch (const std::exception& e) {
        ++failures;
        std::string message = e.what();
        std::replace(message.begin(), message.end(), '"', '\'');
        std::printf("{\"bench\":\"cuda_meta_iteration\",\"setting\":\"%s\",\"order\":%d,\"error\":\"%s\"}\n",
                    s.name.c_str(), second ? 2 : 1, message.c_str());
      }
      std::fflush(stdout);
    }
  }
  if (json) std::fclose(json);
  return failures ? 1 : 0;
}
