#include "meta_learner.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace maml {

namespace {

template <class T>
std::vector<T*> task_pointers(std::vector<T>& flat, int tasks, int64_t stride) {
  std::vector<T*> out(tasks);
  for (int t = 0; t < tasks; ++t) out[t] = flat.data() + t * stride;
  return out;
}

template <class T>
std::vector<const T*> const_pointers(const std::vector<T*>& pointers) {
  return std::vector<const T*>(pointers.begin(), pointers.end());
}

// The examples of tasks [first, first + count) of a set.
template <class T>
PassData<T> group_of(const ExampleSet<T>& set, const Architecture& a, int first, int count) {
  PassData<T> d;
  d.tasks = count;
  d.batch = set.size;
  d.inputs = set.inputs + int64_t(first) * set.size * a.input.size();
  d.labels = set.labels ? set.labels + int64_t(first) * set.size : nullptr;
  d.targets = set.targets ? set.targets + int64_t(first) * set.size * a.outputs : nullptr;
  d.loss_weight = set.loss_weight;
  return d;
}

template <class T>
void check_batch(const Architecture& a, const TaskBatch<T>& batch) {
  if (batch.tasks <= 0) throw std::invalid_argument("a meta-batch needs at least one task, got " + std::to_string(batch.tasks));
  const bool classification = a.loss == LossKind::SoftmaxCrossEntropy;
  for (const auto* set : {&batch.support, &batch.query}) {
    const char* name = set == &batch.support ? "support" : "query";
    if (set->size <= 0) throw std::invalid_argument(std::string(name) + " set: need at least one example per task");
    if (!set->inputs) throw std::invalid_argument(std::string(name) + " set: no inputs given");
    if (classification && !set->labels) throw std::invalid_argument(std::string(name) + " set: no labels given");
    if (!classification && !set->targets) throw std::invalid_argument(std::string(name) + " set: no targets given");
    if (classification)
      for (int64_t i = 0; i < int64_t(batch.tasks) * set->size; ++i)
        if (set->labels[i] < 0 || set->labels[i] >= a.outputs)
          throw std::invalid_argument(std::string(name) + " label " + std::to_string(set->labels[i]) + " at example " +
                                      std::to_string(i) + " is outside 0.." + std::to_string(a.outputs - 1) +
                                      " (the network has " + std::to_string(a.outputs) + " ways)");
  }
}

}  // namespace

template <class T>
MetaLearner<T>::MetaLearner(Architecture architecture, T batch_norm_epsilon, double workspace_budget_bytes)
    : arch_(std::move(architecture)), network_(arch_, batch_norm_epsilon), workspace_budget_(workspace_budget_bytes) {}

template <class T>
std::vector<T> MetaLearner<T>::step_size_vector(const InnerLoop& loop, int step) const {
  return step_sizes_of_step<T>(arch_, loop, step);
}

template <class T>
int MetaLearner<T>::task_group_size(const TaskBatch<T>& batch, bool tangent) const {
  // primal buffers hold the larger set; tangent buffers only the support set
  const int widest = std::max(batch.support.size, batch.query.size);
  const double primal = Network<T>::bytes_per_example(arch_, false);
  const double per_task = widest * primal + (tangent ? batch.support.size * primal : 0.0);
  const int most = std::clamp(int(std::floor(workspace_budget_ / std::max(per_task, 1.0))), 1, batch.tasks);
  // as few groups as the budget allows, of equal size: 4 tasks with room for 3 run as 2 + 2,
  // not 3 + 1 (a group of one leaves the task-parallel kernels short of work)
  const int groups = (batch.tasks + most - 1) / most;
  return (batch.tasks + groups - 1) / groups;
}

template <class T>
MetaGradient<T> MetaLearner<T>::meta_gradient(const T* meta_parameters, const TaskBatch<T>& batch,
                                              const InnerLoop& loop) {
  check_batch(arch_, batch);
  if (loop.steps < 0) throw std::invalid_argument("inner steps must be >= 0, got " + std::to_string(loop.steps));
  const int64_t P = arch_.parameter_count;
  const int K = loop.steps, tasks = batch.tasks;
  const size_t tensors = arch_.parameters.size();
  std::vector<std::vector<T>> alpha(K);
  for (int k = 0; k < K; ++k) alpha[k] = step_size_vector(loop, k);

  MetaGradient<T> out;
  out.gradient.assign(P, T(0));
  out.step_size_gradient.assign(size_t(K) * tensors, T(0));
  for (auto* v : {&out.support_loss_before, &out.support_accuracy_before, &out.support_loss_after,
                  &out.support_accuracy_after, &out.query_loss_before, &out.query_accuracy_before,
                  &out.query_loss_after, &out.query_accuracy_after})
    v->assign(tasks, T(0));
  const int group = task_group_size(batch, loop.second_order);
  out.task_group = group;

  // buffers kept across calls: fresh allocations every meta-batch cost page faults
  std::vector<std::vector<T>>& theta = theta_;
  if (int(theta.size()) < K + 1) theta.resize(K + 1);
  std::vector<T>& grad = grad_;
  std::vector<T>& direction = direction_;
  std::vector<T>& hessian_vector = hessian_vector_;
  std::vector<T>& v = v_;
  for (int first = 0; first < tasks; first += group) {
    const int count = std::min(group, tasks - first);
    const PassData<T> support = group_of(batch.support, arch_, first, count);
    const PassData<T> query = group_of(batch.query, arch_, first, count);
    for (int k = 0; k <= K; ++k) theta[k].resize(size_t(count) * P);
    grad.resize(size_t(count) * P);
    for (int t = 0; t < count; ++t) std::copy(meta_parameters, meta_parameters + P, theta[0].begin() + t * P);
    auto grads = task_pointers(grad, count, P);

    // inner loop: theta_{k+1} = theta_k - alpha_k grad L_support(theta_k)
    for (int k = 0; k < K; ++k) {
      PassResult<T> r;
      r.grads = grads.data();
      if (k == 0) {
        r.losses = out.support_loss_before.data() + first;
        r.accuracies = out.support_accuracy_before.data() + first;
      }
      network_.run(support, const_pointers(task_pointers(theta[k], count, P)).data(), nullptr, r);
      for (int t = 0; t < count; ++t)
        for (int64_t i = 0; i < P; ++i) theta[k + 1][t * P + i] = theta[k][t * P + i] - alpha[k][i] * grad[t * P + i];
    }
    {
      PassResult<T> r;
      r.losses = out.support_loss_after.data() + first;
      r.accuracies = out.support_accuracy_after.data() + first;
      network_.run(support, const_pointers(task_pointers(theta[K], count, P)).data(), nullptr, r);
      if (K == 0) {
        std::copy(r.losses, r.losses + count, out.support_loss_before.begin() + first);
        std::copy(r.accuracies, r.accuracies + count, out.support_accuracy_before.begin() + first);
      }
    }
    if (loop.measure_before) {
      PassResult<T> r;
      r.losses = out.query_loss_before.data() + first;
      r.accuracies = out.query_accuracy_before.data() + first;
      network_.run(query, const_pointers(task_pointers(theta[0], count, P)).data(), nullptr, r);
    }
    // v = grad L_query(theta_K): the first-order meta-gradient
    v.resize(size_t(count) * P);
    {
      PassResult<T> r;
      auto vs = task_pointers(v, count, P);
      r.grads = vs.data();
      r.losses = out.query_loss_after.data() + first;
      r.accuracies = out.query_accuracy_after.data() + first;
      network_.run(query, const_pointers(task_pointers(theta[K], count, P)).data(), nullptr, r);
    }
    if (!loop.measure_before)
      for (int t = 0; t < count; ++t) {
        out.query_loss_before[first + t] = std::nan("");
        out.query_accuracy_before[first + t] = std::nan("");
      }
    // second order: v <- v - H_k (alpha_k v), k = K-1 .. 0
    if (loop.second_order && K > 0) {
      direction.resize(size_t(count) * P);
      hessian_vector.resize(size_t(count) * P);
      auto directions = task_pointers(direction, count, P);
      auto hvps = task_pointers(hessian_vector, count, P);
      for (int k = K - 1; k >= 0; --k) {
        for (int t = 0; t < count; ++t)
          for (int64_t i = 0; i < P; ++i) direction[t * P + i] = alpha[k][i] * v[t * P + i];
        PassResult<T> r;
        r.grads = grads.data();
        r.grad_tangents = hvps.data();
        network_.run(support, const_pointers(task_pointers(theta[k], count, P)).data(),
                     const_pointers(directions).data(), r);
        // d meta-loss / d alpha_k = -<v_{k+1}, g_k>, per tensor
        for (int t = 0; t < count; ++t)
          for (size_t j = 0; j < tensors; ++j) {
            const ParameterInfo& p = arch_.parameters[j];
            if (!p.adapted) continue;
            T dot = 0;
            for (int64_t i = p.offset; i < p.offset + p.size; ++i) dot += v[t * P + i] * grad[t * P + i];
            out.step_size_gradient[k * tensors + j] -= dot;
          }
        for (size_t i = 0; i < v.size(); ++i) v[i] -= hessian_vector[i];
      }
    }
    for (int t = 0; t < count; ++t)
      for (int64_t i = 0; i < P; ++i) out.gradient[i] += v[t * P + i];
  }
  for (T& g : out.gradient) g /= T(tasks);
  for (T& g : out.step_size_gradient) g /= T(tasks);
  out.workspace_bytes = network_.workspace_bytes();
  return out;
}

template <class T>
Adaptation<T> MetaLearner<T>::adapt_and_evaluate(const T* meta_parameters, const TaskBatch<T>& batch,
                                                 const InnerLoop& loop, bool keep_adapted, bool keep_logits) {
  check_batch(arch_, batch);
  const int64_t P = arch_.parameter_count;
  const int K = loop.steps, tasks = batch.tasks;
  Adaptation<T> out;
  out.query_loss.assign(size_t(tasks) * (K + 1), T(0));
  out.query_accuracy.assign(size_t(tasks) * (K + 1), T(0));
  if (keep_adapted) out.adapted.resize(size_t(tasks) * P);
  if (keep_logits) out.logits.resize(size_t(tasks) * batch.query.size * arch_.outputs);
  const int group = task_group_size(batch, false);
  std::vector<T> theta, grad, losses(group), accuracies(group);
  for (int first = 0; first < tasks; first += group) {
    const int count = std::min(group, tasks - first);
    const PassData<T> support = group_of(batch.support, arch_, first, count);
    const PassData<T> query = group_of(batch.query, arch_, first, count);
    theta.resize(size_t(count) * P);
    grad.resize(size_t(count) * P);
    for (int t = 0; t < count; ++t) std::copy(meta_parameters, meta_parameters + P, theta.begin() + t * P);
    auto thetas = const_pointers(task_pointers(theta, count, P));
    auto grads = task_pointers(grad, count, P);
    for (int k = 0; k <= K; ++k) {
      PassResult<T> q;
      q.losses = losses.data();
      q.accuracies = accuracies.data();
      if (k == K && keep_logits) q.logits = out.logits.data() + int64_t(first) * batch.query.size * arch_.outputs;
      network_.run(query, thetas.data(), nullptr, q);
      for (int t = 0; t < count; ++t) {
        out.query_loss[size_t(first + t) * (K + 1) + k] = losses[t];
        out.query_accuracy[size_t(first + t) * (K + 1) + k] = accuracies[t];
      }
      if (k == K) break;
      const std::vector<T> alpha = step_size_vector(loop, k);
      PassResult<T> s;
      s.grads = grads.data();
      network_.run(support, thetas.data(), nullptr, s);
      for (int t = 0; t < count; ++t)
        for (int64_t i = 0; i < P; ++i) theta[t * P + i] -= alpha[i] * grad[t * P + i];
    }
    if (keep_adapted) std::copy(theta.begin(), theta.end(), out.adapted.begin() + int64_t(first) * P);
  }
  return out;
}

template <class T>
std::vector<T> MetaLearner<T>::forward(const T* parameters, int examples, const T* inputs,
                                       std::vector<typename Network<T>::Moments>* moments) {
  PassData<T> d;
  d.tasks = 1;
  d.batch = examples;
  d.inputs = inputs;
  std::vector<int32_t> labels(examples, 0);
  std::vector<T> targets(size_t(examples) * arch_.outputs, T(0));
  d.labels = labels.data();
  d.targets = targets.data();
  std::vector<T> logits(size_t(examples) * arch_.outputs);
  PassResult<T> r;
  r.logits = logits.data();
  network_.run(d, &parameters, nullptr, r);
  if (moments) *moments = network_.batch_norm_moments(0);
  return logits;
}

namespace {
// splitmix64: a portable generator, so a seed gives the same weights on every platform.
struct SeededRandom {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};
}  // namespace

template <class T>
std::vector<T> initialize_parameters(const Architecture& a, uint64_t seed) {
  std::vector<T> params(a.parameter_count, T(0));
  SeededRandom random{seed};
  for (const ParameterInfo& p : a.parameters) {
    T* out = params.data() + p.offset;
    switch (p.init) {
      case ParameterInfo::Init::GlorotUniform: {
        const double limit = std::sqrt(6.0 / (p.fan_in + p.fan_out));
        for (int64_t i = 0; i < p.size; ++i) out[i] = T((2 * random.uniform() - 1) * limit);
        break;
      }
      case ParameterInfo::Init::Normal:
        for (int64_t i = 0; i < p.size; ++i) out[i] = T(random.normal() * p.init_std);
        break;
      case ParameterInfo::Init::One:
        std::fill(out, out + p.size, T(1));
        break;
      case ParameterInfo::Init::Zero:
        break;
    }
  }
  return params;
}

template class MetaLearner<float>;
template class MetaLearner<double>;
template std::vector<float> initialize_parameters<float>(const Architecture&, uint64_t);
template std::vector<double> initialize_parameters<double>(const Architecture&, uint64_t);

}  // namespace maml
