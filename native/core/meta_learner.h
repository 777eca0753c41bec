// MAML's inner loop and meta-gradient for a whole meta-batch in one call (DESIGN.md,
// "Meta-gradients, exactly"; MATH.md, "The meta-gradient").
//
//   theta_{k+1} = theta_k - alpha_k * mask * grad L_support(theta_k)        k < K
//   first order:  g = grad L_query(theta_K)
//   second order: g = grad L_query(theta_K); for k = K-1..0: g -= H_support(theta_k) (alpha_k * mask * g)
//
// Hessian-vector products run forward-over-reverse (Network with a tangent), with the
// activations recomputed at each stored theta_k: memory holds theta_0..theta_K and one
// pass's activations, so it is flat in K. Tasks are processed in groups whose size is
// chosen from a workspace budget; within a group every kernel runs all tasks at once.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "architecture.h"
#include "network.h"

namespace maml {

template <class T>
struct ExampleSet {
  int size = 0;                       // examples per task
  const T* inputs = nullptr;          // [tasks, size, C, H, W]
  const int32_t* labels = nullptr;    // [tasks, size]
  const T* targets = nullptr;         // [tasks, size, outputs]
  T loss_weight = 1;                  // 1/size for 'mean', 1/shots for 'sum-over-shots'
};

template <class T>
struct TaskBatch {
  int tasks = 0;
  ExampleSet<T> support, query;
};

struct InnerLoop {
  int steps = 1;
  // One value for every step and tensor, or steps x tensors values (row per step, one per
  // parameter tensor in table order; entries of non-adapted tensors are ignored).
  std::vector<double> step_sizes{0.4};
  bool second_order = true;
  bool measure_before = true;  // query loss/accuracy at theta_0 (costs one forward pass)
};

// Per-element step sizes of inner step `step` (0 where a tensor is not adapted), from one
// value or steps x tensors values. Shared by the CPU and CUDA learners.
template <class T>
std::vector<T> step_sizes_of_step(const Architecture& a, const InnerLoop& loop, int step) {
  const size_t tensors = a.parameters.size();
  const bool per_tensor = loop.step_sizes.size() == size_t(loop.steps) * tensors && loop.step_sizes.size() > 1;
  if (!per_tensor && loop.step_sizes.size() != 1)
    throw std::invalid_argument("step sizes: expected 1 value or steps x tensors = " + std::to_string(loop.steps) +
                                " x " + std::to_string(tensors) + " values, got " +
                                std::to_string(loop.step_sizes.size()));
  std::vector<T> alpha(a.parameter_count, T(0));
  for (size_t i = 0; i < tensors; ++i) {
    const ParameterInfo& p = a.parameters[i];
    if (!p.adapted) continue;
    const T value = T(per_tensor ? loop.step_sizes[step * tensors + i] : loop.step_sizes[0]);
    std::fill(alpha.begin() + p.offset, alpha.begin() + p.offset + p.size, value);
  }
  return alpha;
}

template <class T>
struct MetaGradient {
  std::vector<T> gradient;             // [P], mean over tasks
  std::vector<T> step_size_gradient;   // [steps x tensors], mean over tasks (second order)
  // per task
  std::vector<T> support_loss_before, support_accuracy_before, support_loss_after, support_accuracy_after;
  std::vector<T> query_loss_before, query_accuracy_before, query_loss_after, query_accuracy_after;
  int task_group = 0;
  size_t workspace_bytes = 0;
};

template <class T>
struct Adaptation {
  // [tasks x (steps + 1)]: query loss and accuracy after 0..K steps
  std::vector<T> query_loss, query_accuracy;
  std::vector<T> adapted;  // [tasks x P] theta_K, when asked for
  std::vector<T> logits;   // [tasks x query x outputs] at theta_K, when asked for
};

template <class T>
class MetaLearner {
 public:
  MetaLearner(Architecture architecture, T batch_norm_epsilon = T(1e-3), double workspace_budget_bytes = 512e6);

  const Architecture& architecture() const { return arch_; }
  MetaGradient<T> meta_gradient(const T* meta_parameters, const TaskBatch<T>& batch, const InnerLoop& loop);
  Adaptation<T> adapt_and_evaluate(const T* meta_parameters, const TaskBatch<T>& batch, const InnerLoop& loop,
                                   bool keep_adapted, bool keep_logits);
  // Logits of one set of parameters on [examples] inputs (one task), and optionally the
  // batch-norm statistics of that batch (what ONNX export freezes into the graph).
  std::vector<T> forward(const T* parameters, int examples, const T* inputs,
                         std::vector<typename Network<T>::Moments>* moments = nullptr);

  // Per-element step sizes of step k (0 where not adapted).
  std::vector<T> step_size_vector(const InnerLoop& loop, int step) const;
  int task_group_size(const TaskBatch<T>& batch, bool tangent) const;

 private:
  Architecture arch_;
  Network<T> network_;
  double workspace_budget_;
  std::vector<std::vector<T>> theta_;  // theta_0..theta_K of the current task group
  std::vector<T> grad_, direction_, hessian_vector_, v_;
};

// Seeded initialisation as the original: Glorot-uniform weights, zero biases, the
// Omniglot head normal(0, 1) unless Glorot was asked for. Same seed, same numbers.
template <class T>
std::vector<T> initialize_parameters(const Architecture& architecture, uint64_t seed);

extern template class MetaLearner<float>;
extern template class MetaLearner<double>;

}  // namespace maml
