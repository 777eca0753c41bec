// Small versions of every architecture and random tasks for them, for tests that
// compare exact derivatives with finite differences in float64.
#pragma once
#include <functional>
#include <optional>

#include "architecture.h"
#include "check.h"
#include "meta_learner.h"

namespace maml_test {

inline std::vector<maml::ArchitectureOptions> small_architectures() {
  std::vector<maml::ArchitectureOptions> all;
  maml::ArchitectureOptions omniglot;
  omniglot.name = "omniglot";
  omniglot.ways = 3;
  omniglot.image_size = 8;
  omniglot.filters = 4;
  all.push_back(omniglot);
  maml::ArchitectureOptions omniglot_symmetric = omniglot;
  omniglot_symmetric.padding = maml::Padding::Symmetric;
  omniglot_symmetric.batch_norm_scale = true;
  omniglot_symmetric.glorot_head = true;
  all.push_back(omniglot_symmetric);
  maml::ArchitectureOptions mini;
  mini.name = "miniimagenet";
  mini.ways = 3;
  mini.image_size = 16;
  mini.filters = 3;
  all.push_back(mini);
  maml::ArchitectureOptions mlp;
  mlp.name = "mlp";
  mlp.ways = 3;
  mlp.image_size = 4;
  mlp.hidden = {6, 5};
  mlp.hidden_given = true;
  all.push_back(mlp);
  maml::ArchitectureOptions sinusoid;
  sinusoid.name = "sinusoid";
  sinusoid.ways = 1;
  sinusoid.hidden = {8, 8};
  sinusoid.hidden_given = true;
  all.push_back(sinusoid);
  return all;
}

inline std::string describe(const maml::ArchitectureOptions& o) {
  return o.name + (o.padding == maml::Padding::Symmetric ? "(symmetric, scale)" : "");
}

// Owns the arrays a TaskBatch points into.
template <class T>
struct RandomTasks {
  std::vector<T> support_inputs, query_inputs, support_targets, query_targets;
  std::vector<int32_t> support_labels, query_labels;
  maml::TaskBatch<T> batch;

  RandomTasks(const maml::Architecture& a, int tasks, int support, int query, uint64_t seed, double weight_support,
              double weight_query) {
    std::mt19937_64 rng(seed);
    auto fill = [&](std::vector<T>& v, size_t n) {
      auto r = random_vector(n, rng);
      v.assign(r.begin(), r.end());
    };
    fill(support_inputs, size_t(tasks) * support * a.input.size());
    fill(query_inputs, size_t(tasks) * query * a.input.size());
    if (a.name == "sinusoid") {
      for (auto& x : support_inputs) x *= 3;
      for (auto& x : query_inputs) x *= 3;
    }
    fill(support_targets, size_t(tasks) * support * a.outputs);
    fill(query_targets, size_t(tasks) * query * a.outputs);
    for (int i = 0; i < tasks * support; ++i) support_labels.push_back(int32_t(i % a.outputs));
    for (int i = 0; i < tasks * query; ++i) query_labels.push_back(int32_t((i * 7 + 1) % a.outputs));
    batch.tasks = tasks;
    batch.support = {support, support_inputs.data(), support_labels.data(), support_targets.data(), T(weight_support)};
    batch.query = {query, query_inputs.data(), query_labels.data(), query_targets.data(), T(weight_query)};
  }
};

// The central difference of f along a direction, trusted only when the two one-sided
// quotients agree (a step that crosses a ReLU or max-pool kink makes them differ).
inline std::optional<double> trusted_derivative(const std::function<double(double)>& f, double eps) {
  const double f0 = f(0), plus = f(eps), minus = f(-eps);
  const double forward = (plus - f0) / eps, backward = (f0 - minus) / eps, central = (plus - minus) / (2 * eps);
  if (std::abs(forward - backward) > 1e-4 * std::max(1.0, std::abs(central))) return std::nullopt;
  return central;
}

}  // namespace maml_test
