// CudaMetaLearner<T>: MetaLearner<T>::meta_gradient and adapt_and_evaluate
// (meta_learner.cpp) with every vector of the inner loop on the device. Host traffic per
// call: the meta-parameters and (when changed) the step sizes up, the examples (or just
// indices and labels) up, and the results down once at the end.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "cuda_network.h"

namespace maml {
namespace cuda {

namespace {

// Metrics of meta_gradient, [kMetrics x tasks] on the device, in MetaGradient's order.
enum Metric {
  kSupportLossBefore,
  kSupportAccuracyBefore,
  kSupportLossAfter,
  kSupportAccuracyAfter,
  kQueryLossBefore,
  kQueryAccuracyBefore,
  kQueryLossAfter,
  kQueryAccuracyAfter,
  kMetrics
};

void check_labels(const Architecture& a, const char* name, const int32_t* labels, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (labels[i] < 0 || labels[i] >= a.outputs)
      throw std::invalid_argument(std::string(name) + " label " + std::to_string(labels[i]) + " at example " +
                                  std::to_string(i) + " is outside 0.." + std::to_string(a.outputs - 1) +
                                  " (the network has " + std::to_string(a.outputs) + " ways)");
}

// The same checks, with the same messages, as meta_learner.cpp's check_batch.
template <class T>
void check_batch(const Architecture& a, const TaskBatch<T>& batch) {
  if (batch.tasks <= 0)
    throw std::invalid_argument("a meta-batch needs at least one task, got " + std::to_string(batch.tasks));
  const bool classification = a.loss == LossKind::SoftmaxCrossEntropy;
  for (const auto* set : {&batch.support, &batch.query}) {
    const char* name = set == &batch.support ? "support" : "query";
    if (set->size <= 0) throw std::invalid_argument(std::string(name) + " set: need at least one example per task");
    if (!set->inputs) throw std::invalid_argument(std::string(name) + " set: no inputs given");
    if (classification && !set->labels) throw std::invalid_argument(std::string(name) + " set: no labels given");
    if (!classification && !set->targets) throw std::invalid_argument(std::string(name) + " set: no targets given");
    if (classification) check_labels(a, name, set->labels, int64_t(batch.tasks) * set->size);
  }
}

}  // namespace

template <class T>
PassData<T> CudaMetaLearner<T>::DeviceSet::group(const Architecture& a, int first, int count) {
  PassData<T> d;
  d.tasks = count;
  d.batch = size;
  d.inputs = inputs.data() + int64_t(first) * size * a.input.size();
  d.labels = a.loss == LossKind::SoftmaxCrossEntropy ? labels.data() + int64_t(first) * size : nullptr;
  d.targets = a.loss == LossKind::SquaredError ? targets.data() + int64_t(first) * size * a.outputs : nullptr;
  d.loss_weight = loss_weight;
  return d;
}

template <class T>
CudaMetaLearner<T>::CudaMetaLearner(Architecture architecture, T batch_norm_epsilon, double workspace_budget_bytes)
    : arch_(std::move(architecture)), network_(arch_, batch_norm_epsilon), workspace_budget_(workspace_budget_bytes) {
  // the parameter tensors, for the per-tensor step-size gradients
  std::vector<int64_t> offsets, sizes;
  for (const ParameterInfo& p : arch_.parameters) {
    offsets.push_back(p.offset);
    sizes.push_back(p.size);
  }
  segment_offsets_.upload(offsets.data(), offsets.size());
  segment_sizes_.upload(sizes.data(), sizes.size());
}

template <class T>
std::vector<T> CudaMetaLearner<T>::step_size_vector(const InnerLoop& loop, int step) const {
  return step_sizes_of_step<T>(arch_, loop, step);
}

// Network<T>::bytes_per_example's estimate (network.cpp), so groups are sized alike.
template <class T>
int CudaMetaLearner<T>::task_group_size(int tasks, int support_size, int query_size, bool tangent) const {
  double values = arch_.input.size(), widest = arch_.input.size(), indices = 0;
  for (const Layer& l : arch_.layers) {
    if (l.kind != LayerKind::ReLU) values += l.out.size();
    if (l.kind == LayerKind::MaxPool2) indices += l.out.size();
    widest = std::max<double>(widest, l.in.size());
  }
  const double copies = tangent ? 2 : 1;
  const double per_example = copies * (values + 2 * widest) * sizeof(T) + indices * sizeof(int32_t);
  const double per_task = std::max(support_size, query_size) * per_example;
  const int group = int(std::floor(workspace_budget_ / std::max(per_task, 1.0)));
  return std::clamp(group, 1, std::max(tasks, 1));
}

template <class T>
size_t CudaMetaLearner<T>::workspace_bytes() const {
  size_t bytes = network_.workspace_bytes();
  for (const auto* set : {&support_, &query_})
    bytes += set->inputs.bytes() + set->targets.bytes() + set->labels.bytes() + set->indices.bytes() +
             set->rotations.bytes();
  for (auto& t : theta_) bytes += t.bytes();
  for (const auto* b : {&meta_, &alpha_, &grad_, &v_, &direction_, &hessian_vector_, &gradient_sum_, &metrics_, &dots_,
                        &query_metrics_, &logits_})
    bytes += b->bytes();
  return bytes + cache_pixels_.bytes();
}

template <class T>
void CudaMetaLearner<T>::set_image_cache(const ImageCache& cache) {
  if (cache.count <= 0) throw std::invalid_argument("image cache: no images given");
  if (!cache.pixels)
    throw std::invalid_argument("image cache: the CUDA engine uploads the whole cache and needs it in memory (setImageCache), not a pixel file");
  if (cache.channels != arch_.input.channels || cache.height != arch_.input.height ||
      cache.width != arch_.input.width)
    throw std::invalid_argument("image cache: images are " + std::to_string(cache.channels) + "x" +
                                std::to_string(cache.height) + "x" + std::to_string(cache.width) +
                                ", the network takes " + std::to_string(arch_.input.channels) + "x" +
                                std::to_string(arch_.input.height) + "x" + std::to_string(arch_.input.width));
  cache_pixels_ = DeviceBuffer<uint8_t>();  // free the old cache before taking room for the new one
  cache_pixels_.upload(cache.pixels, size_t(cache.count * cache.image_size()));
  cache_count_ = cache.count;
  cache_channels_ = cache.channels;
  cache_height_ = cache.height;
  cache_width_ = cache.width;
  cache_invert_ = cache.invert;
}

template <class T>
void CudaMetaLearner<T>::upload(const TaskBatch<T>& batch) {
  check_batch(arch_, batch);
  const bool classification = arch_.loss == LossKind::SoftmaxCrossEntropy;
  for (auto [set, device] : {std::pair{&batch.support, &support_}, std::pair{&batch.query, &query_}}) {
    const int64_t examples = int64_t(batch.tasks) * set->size;
    device->size = set->size;
    device->loss_weight = set->loss_weight;
    device->inputs.upload(set->inputs, size_t(examples * arch_.input.size()));
    if (classification)
      device->labels.upload(set->labels, size_t(examples));
    else
      device->targets.upload(set->targets, size_t(examples * arch_.outputs));
  }
}

template <class T>
void CudaMetaLearner<T>::upload(const IndexedTaskBatch<T>& batch) {
  if (batch.tasks <= 0)
    throw std::invalid_argument("a meta-batch needs at least one task, got " + std::to_string(batch.tasks));
  if (arch_.loss != LossKind::SoftmaxCrossEntropy)
    throw std::invalid_argument("indexed meta-batches are for classification; pass inputs and targets instead");
  if (!has_image_cache()) throw std::invalid_argument("indexed meta-batch: no image cache set (set_image_cache)");
  for (auto [set, device] : {std::pair{&batch.support, &support_}, std::pair{&batch.query, &query_}}) {
    const char* name = set == &batch.support ? "support" : "query";
    if (set->size <= 0) throw std::invalid_argument(std::string(name) + " set: need at least one example per task");
    if (!set->indices) throw std::invalid_argument(std::string(name) + " set: no image indices given");
    if (!set->labels) throw std::invalid_argument(std::string(name) + " set: no labels given");
    const int64_t examples = int64_t(batch.tasks) * set->size;
    check_labels(arch_, name, set->labels, examples);
    // the checks of gather_images (image_gather.h), before anything reaches the device
    for (int64_t e = 0; e < examples; ++e) {
      if (set->indices[e] < 0 || set->indices[e] >= cache_count_)
        throw std::invalid_argument("image index " + std::to_string(set->indices[e]) + " is outside the cache (0.." +
                                    std::to_string(cache_count_ - 1) + ")");
      if (set->rotations && set->rotations[e] > 3)
        throw std::invalid_argument("rotation " + std::to_string(set->rotations[e]) + " must be 0..3 quarter turns");
      if (set->rotations && set->rotations[e] && cache_height_ != cache_width_)
        throw std::invalid_argument("rotations need square images");
    }
    device->size = set->size;
    device->loss_weight = set->loss_weight;
    device->indices.upload(set->indices, size_t(examples));
    device->labels.upload(set->labels, size_t(examples));
    if (set->rotations) device->rotations.upload(set->rotations, size_t(examples));
    device->inputs.reserve(size_t(examples * arch_.input.size()));
    gather_images<T>(cache_pixels_.data(), cache_channels_, cache_height_, cache_width_, cache_invert_, examples,
                     device->indices.data(), set->rotations ? device->rotations.data() : nullptr,
                     device->inputs.data());
  }
}

// Meta-parameters once, and the step sizes of all steps ([K, P]) when they changed.
template <class T>
void CudaMetaLearner<T>::upload_parameters(const T* meta_parameters, const InnerLoop& loop) {
  const int64_t P = arch_.parameter_count;
  meta_.upload(meta_parameters, size_t(P));
  std::vector<T> alpha;
  alpha.reserve(size_t(loop.steps) * P);
  for (int k = 0; k < loop.steps; ++k) {
    const std::vector<T> a = step_size_vector(loop, k);
    alpha.insert(alpha.end(), a.begin(), a.end());
  }
  if (alpha != alpha_host_ || alpha_.capacity() < alpha.size()) {
    alpha_.upload(alpha.data(), alpha.size());
    alpha_host_ = std::move(alpha);
  }
}

template <class T>
MetaGradient<T> CudaMetaLearner<T>::meta_gradient(const T* meta_parameters, const TaskBatch<T>& batch,
                                                  const InnerLoop& loop) {
  if (loop.steps < 0) throw std::invalid_argument("inner steps must be >= 0, got " + std::to_string(loop.steps));
  upload(batch);
  upload_parameters(meta_parameters, loop);
  return meta_gradient_on_device(batch.tasks, loop);
}

template <class T>
MetaGradient<T> CudaMetaLearner<T>::meta_gradient(const T* meta_parameters, const IndexedTaskBatch<T>& batch,
                                                  const InnerLoop& loop) {
  if (loop.steps < 0) throw std::invalid_argument("inner steps must be >= 0, got " + std::to_string(loop.steps));
  upload(batch);
  upload_parameters(meta_parameters, loop);
  return meta_gradient_on_device(batch.tasks, loop);
}

template <class T>
MetaGradient<T> CudaMetaLearner<T>::meta_gradient_on_device(int tasks, const InnerLoop& loop) {
  const int64_t P = arch_.parameter_count;
  const int K = loop.steps;
  const int tensors = int(arch_.parameters.size());
  const int group = task_group_size(tasks, support_.size, query_.size, loop.second_order);

  theta_.resize(size_t(K) + 1);
  for (int k = 1; k <= K; ++k) theta_[k].reserve(size_t(group) * P);
  grad_.reserve(size_t(group) * P);
  v_.reserve(size_t(group) * P);
  if (loop.second_order && K > 0) {
    direction_.reserve(size_t(group) * P);
    hessian_vector_.reserve(size_t(group) * P);
    dots_.zero(size_t(K) * tasks * tensors);
  }
  gradient_sum_.zero(size_t(P));
  metrics_.zero(size_t(kMetrics) * tasks);
  auto metric = [&](Metric m, int first) { return metrics_.data() + int64_t(m) * tasks + first; };
  const T* alpha = alpha_.data();

  for (int first = 0; first < tasks; first += group) {
    const int count = std::min(group, tasks - first);
    const PassData<T> support = support_.group(arch_, first, count);
    const PassData<T> query = query_.group(arch_, first, count);
    // theta_0 is the meta-parameter vector itself, shared by every task (stride 0)
    auto theta = [&](int k) {
      return k == 0 ? TaskTensor<const T>{meta_.data(), 0} : TaskTensor<const T>{theta_[k].data(), P};
    };
    const TaskTensor<const T> no_tangent{};

    // inner loop: theta_{k+1} = theta_k - alpha_k grad L_support(theta_k)
    for (int k = 0; k < K; ++k) {
      CudaPassResult<T> r;
      r.grads = grad_.data();
      if (k == 0) {
        r.losses = metric(kSupportLossBefore, first);
        r.accuracies = metric(kSupportAccuracyBefore, first);
      }
      network_.run(support, theta(k), no_tangent, r);
      sgd_step<T>(count, P, theta(k), alpha + int64_t(k) * P, grad_.data(), theta_[k + 1].data());
    }
    {
      CudaPassResult<T> r;
      r.losses = metric(kSupportLossAfter, first);
      r.accuracies = metric(kSupportAccuracyAfter, first);
      network_.run(support, theta(K), no_tangent, r);
    }
    if (loop.measure_before) {
      CudaPassResult<T> r;
      r.losses = metric(kQueryLossBefore, first);
      r.accuracies = metric(kQueryAccuracyBefore, first);
      network_.run(query, theta(0), no_tangent, r);
    }
    // v = grad L_query(theta_K): the first-order meta-gradient
    {
      CudaPassResult<T> r;
      r.grads = v_.data();
      r.losses = metric(kQueryLossAfter, first);
      r.accuracies = metric(kQueryAccuracyAfter, first);
      network_.run(query, theta(K), no_tangent, r);
    }
    // second order: v <- v - H_k (alpha_k v), k = K-1 .. 0
    if (loop.second_order && K > 0) {
      for (int k = K - 1; k >= 0; --k) {
        scale_by<T>(count, P, alpha + int64_t(k) * P, v_.data(), direction_.data());
        CudaPassResult<T> r;
        r.grads = grad_.data();
        r.grad_tangents = hessian_vector_.data();
        network_.run(support, theta(k), TaskTensor<const T>{direction_.data(), P}, r);
        // d meta-loss / d alpha_k = -<v_{k+1}, g_k> per tensor: the dots, summed on the host
        segment_dots<T>(count, P, tensors, segment_offsets_.data(), segment_sizes_.data(), v_.data(), grad_.data(),
                        dots_.data() + (int64_t(k) * tasks + first) * tensors);
        subtract_in_place<T>(int64_t(count) * P, v_.data(), hessian_vector_.data());
      }
    }
    sum_over_tasks<T>(count, P, v_.data(), gradient_sum_.data());
  }

  // results down, once
  MetaGradient<T> out;
  out.task_group = group;
  out.gradient.resize(size_t(P));
  gradient_sum_.download(out.gradient.data(), size_t(P));
  for (T& g : out.gradient) g /= T(tasks);
  std::vector<T> metrics(size_t(kMetrics) * tasks);
  metrics_.download(metrics.data(), metrics.size());
  std::vector<T>* targets[kMetrics] = {&out.support_loss_before, &out.support_accuracy_before,
                                       &out.support_loss_after,  &out.support_accuracy_after,
                                       &out.query_loss_before,   &out.query_accuracy_before,
                                       &out.query_loss_after,    &out.query_accuracy_after};
  for (int m = 0; m < kMetrics; ++m)
    targets[m]->assign(metrics.begin() + int64_t(m) * tasks, metrics.begin() + int64_t(m + 1) * tasks);
  if (K == 0) {
    out.support_loss_before = out.support_loss_after;
    out.support_accuracy_before = out.support_accuracy_after;
  }
  if (!loop.measure_before) {
    std::fill(out.query_loss_before.begin(), out.query_loss_before.end(), T(std::nan("")));
    std::fill(out.query_accuracy_before.begin(), out.query_accuracy_before.end(), T(std::nan("")));
  }
  out.step_size_gradient.assign(size_t(K) * tensors, T(0));
  if (loop.second_order && K > 0) {
    std::vector<T> dots(size_t(K) * tasks * tensors);
    dots_.download(dots.data(), dots.size());
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < tensors; ++j) {
        if (!arch_.parameters[j].adapted) continue;
        T sum = 0;
        for (int t = 0; t < tasks; ++t) sum -= dots[(size_t(k) * tasks + t) * tensors + j];
        out.step_size_gradient[size_t(k) * tensors + j] = sum / T(tasks);
      }
  }
  out.workspace_bytes = workspace_bytes();
  return out;
}

template <class T>
Adaptation<T> CudaMetaLearner<T>::adapt_and_evaluate(const T* meta_parameters, const TaskBatch<T>& batch,
                                                     const InnerLoop& loop, bool keep_adapted, bool keep_logits) {
  upload(batch);
  upload_parameters(meta_parameters, loop);
  return adapt_on_device(batch.tasks, loop, keep_adapted, keep_logits);
}

template <class T>
Adaptation<T> CudaMetaLearner<T>::adapt_and_evaluate(const T* meta_parameters, const IndexedTaskBatch<T>& batch,
                                                     const InnerLoop& loop, bool keep_adapted, bool keep_logits) {
  upload(batch);
  upload_parameters(meta_parameters, loop);
  return adapt_on_device(batch.tasks, loop, keep_adapted, keep_logits);
}

template <class T>
Adaptation<T> CudaMetaLearner<T>::adapt_on_device(int tasks, const InnerLoop& loop, bool keep_adapted,
                                                  bool keep_logits) {
  if (loop.steps < 0) throw std::invalid_argument("inner steps must be >= 0, got " + std::to_string(loop.steps));
  const int64_t P = arch_.parameter_count;
  const int K = loop.steps;
  const int group = task_group_size(tasks, support_.size, query_.size, false);
  const int64_t logits_per_task = int64_t(query_.size) * arch_.outputs;
  theta_.resize(std::max<size_t>(theta_.size(), 2));
  theta_[1].reserve(size_t(group) * P);  // theta_k of the group, updated in place
  grad_.reserve(size_t(group) * P);
  query_metrics_.zero(size_t(2) * (K + 1) * tasks);  // [loss | accuracy][k][task]
  if (keep_logits) logits_.reserve(size_t(tasks * logits_per_task));
  Adaptation<T> out;
  if (keep_adapted) out.adapted.resize(size_t(tasks) * P);
  const T* alpha = alpha_.data();

  for (int first = 0; first < tasks; first += group) {
    const int count = std::min(group, tasks - first);
    const PassData<T> support = support_.group(arch_, first, count);
    const PassData<T> query = query_.group(arch_, first, count);
    TaskTensor<const T> theta{meta_.data(), 0};
    for (int k = 0; k <= K; ++k) {
      CudaPassResult<T> q;
      q.losses = query_metrics_.data() + int64_t(k) * tasks + first;
      q.accuracies = query_metrics_.data() + int64_t(K + 1 + k) * tasks + first;
      if (k == K && keep_logits) q.logits = logits_.data() + first * logits_per_task;
      network_.run(query, theta, TaskTensor<const T>{}, q);
      if (k == K) break;
      CudaPassResult<T> s;
      s.grads = grad_.data();
      network_.run(support, theta, TaskTensor<const T>{}, s);
      // elementwise, so updating theta_[1] in place (k > 0) is safe
      sgd_step<T>(count, P, theta, alpha + int64_t(k) * P, grad_.data(), theta_[1].data());
      theta = TaskTensor<const T>{theta_[1].data(), P};
    }
    if (keep_adapted) {
      T* dst = out.adapted.data() + int64_t(first) * P;
      if (K == 0) {
        std::vector<T> meta(static_cast<size_t>(P));
        meta_.download(meta.data(), size_t(P));
        for (int t = 0; t < count; ++t) std::copy(meta.begin(), meta.end(), dst + int64_t(t) * P);
      } else {
        theta_[1].download(dst, size_t(count) * P);
      }
    }
  }
  std::vector<T> metrics(size_t(2) * (K + 1) * tasks);
  query_metrics_.download(metrics.data(), metrics.size());
  out.query_loss.assign(size_t(tasks) * (K + 1), T(0));
  out.query_accuracy.assign(size_t(tasks) * (K + 1), T(0));
  for (int t = 0; t < tasks; ++t)
    for (int k = 0; k <= K; ++k) {
      out.query_loss[size_t(t) * (K + 1) + k] = metrics[size_t(k) * tasks + t];
      out.query_accuracy[size_t(t) * (K + 1) + k] = metrics[size_t(K + 1 + k) * tasks + t];
    }
  if (keep_logits) {
    out.logits.resize(size_t(tasks * logits_per_task));
    logits_.download(out.logits.data(), out.logits.size());
  }
  return out;
}

template <class T>
std::vector<T> CudaMetaLearner<T>::forward(const T* parameters, int examples, const T* inputs) {
  if (examples <= 0) throw std::invalid_argument("forward: need at least one example");
  DeviceBuffer<T> params(size_t(arch_.parameter_count)), x, targets, logits(size_t(examples) * arch_.outputs);
  DeviceBuffer<int32_t> labels;
  params.upload(parameters, size_t(arch_.parameter_count));
  x.upload(inputs, size_t(examples) * arch_.input.size());
  labels.zero(size_t(examples));
  targets.zero(size_t(examples) * arch_.outputs);
  PassData<T> d;
  d.tasks = 1;
  d.batch = examples;
  d.inputs = x.data();
  d.labels = labels.data();
  d.targets = targets.data();
  CudaPassResult<T> r;
  r.logits = logits.data();
  network_.run(d, TaskTensor<const T>{params.data(), 0}, TaskTensor<const T>{}, r);
  std::vector<T> out(size_t(examples) * arch_.outputs);
  logits.download(out.data(), out.size());
  return out;
}

template class CudaMetaLearner<float>;
template class CudaMetaLearner<double>;

}  // namespace cuda
}  // namespace maml
