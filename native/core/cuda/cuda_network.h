// The CUDA backend's network pass and meta-learner: the same passes, rules and results
// as Network<T> (network.h) and MetaLearner<T> (meta_learner.h), with activations,
// parameters and the image cache in device memory.
//
// CudaNetwork<T>::run is Network<T>::run over device pointers: PassData's inputs,
// labels and targets point to device memory, parameters of task t are params.at(t)
// (a task stride of 0 shares one vector between all tasks: theta_0), and the results
// land in device arrays. One run is one forward, loss and reverse pass (forward-over-
// reverse with a tangent) of all its tasks: every kernel launch covers every task.
//
// CudaMetaLearner<T> takes host inputs and returns host results, like MetaLearner<T>.
// Per meta-iteration it uploads the meta-parameters (and the step sizes when they
// changed) once, the examples once (or only indices, rotations and labels when the
// images come from the device-resident cache set by set_image_cache), and downloads the
// meta-gradient and the per-task metrics once, at the end.
//
// Plain C++ header (no CUDA syntax): the addon and the tests include it.
#pragma once
#include <cstdint>
#include <vector>

#include "architecture.h"
#include "image_gather.h"
#include "kernels.cuh"
#include "meta_learner.h"
#include "network.h"

namespace maml {
namespace cuda {

template <class T>
struct CudaPassResult {
  T* grads = nullptr;          // [tasks, P] device, null: forward only
  T* grad_tangents = nullptr;  // [tasks, P] device, the Hessian-vector products
  T* losses = nullptr;         // [tasks] device
  T* accuracies = nullptr;     // [tasks] device (classification)
  T* logits = nullptr;         // [tasks, batch, outputs] device, optional
};

template <class T>
class CudaNetwork {
 public:
  explicit CudaNetwork(const Architecture& architecture, T batch_norm_epsilon = T(1e-3));

  // tangents.data null: no tangent pass. Parameter gradients are [tasks, P] with stride P.
  void run(const PassData<T>& data, TaskTensor<const T> params, TaskTensor<const T> tangents,
           const CudaPassResult<T>& result);

  size_t workspace_bytes() const;

 private:
  void allocate(int tasks, int examples, bool tangent);
  const T* input_of(const PassData<T>& data, size_t layer) const;
  void forward(const PassData<T>& data, TaskTensor<const T> params, TaskTensor<const T> tangents);
  void backward(const PassData<T>& data, TaskTensor<const T> params, TaskTensor<const T> tangents,
                const CudaPassResult<T>& result);

  struct Statistics {
    DeviceBuffer<T> mean, inv_std, tangent_mean, tangent_xhat_mean;
    BatchNormStatisticsView<T> view() {
      return {mean.data(), inv_std.data(), tangent_mean.data(), tangent_xhat_mean.data()};
    }
  };

  const Architecture& arch_;
  T epsilon_;
  // buffer_of_[i]: the stored buffer that holds the input of layer i (i = layers: the
  // logits), as in Network<T>. Buffer 0 is never used: the input of layer 0 is read
  // straight from PassData::inputs, which saves a copy of the whole batch.
  std::vector<int> buffer_of_;
  std::vector<int64_t> buffer_width_;  // values per example
  std::vector<DeviceBuffer<T>> buffers_, buffer_tangents_;
  std::vector<DeviceBuffer<int32_t>> argmax_;
  std::vector<Statistics> statistics_;
  DeviceBuffer<T> grad_[2], grad_tangent_[2];
  DeviceBuffer<T> example_loss_, weight_grad_scratch_;
  DeviceBuffer<int32_t> example_correct_;
};

// A meta-batch whose images live in the device-resident cache: only indices, rotations
// (quarter turns, null: none) and labels cross from the host. Classification only.
template <class T>
struct IndexedExampleSet {
  int size = 0;                       // examples per task
  const int32_t* indices = nullptr;   // [tasks, size] into the image cache
  const uint8_t* rotations = nullptr; // [tasks, size] 0..3, or null
  const int32_t* labels = nullptr;    // [tasks, size]
  T loss_weight = 1;
};

template <class T>
struct IndexedTaskBatch {
  int tasks = 0;
  IndexedExampleSet<T> support, query;
};

template <class T>
class CudaMetaLearner {
 public:
  // The default budget keeps a whole paper-sized meta-batch in one task group on a
  // large GPU; smaller budgets split the meta-batch into groups, as on the CPU.
  explicit CudaMetaLearner(Architecture architecture, T batch_norm_epsilon = T(1e-3),
                           double workspace_budget_bytes = 16e9);

  const Architecture& architecture() const { return arch_; }
  MetaGradient<T> meta_gradient(const T* meta_parameters, const TaskBatch<T>& batch, const InnerLoop& loop);
  MetaGradient<T> meta_gradient(const T* meta_parameters, const IndexedTaskBatch<T>& batch, const InnerLoop& loop);
  Adaptation<T> adapt_and_evaluate(const T* meta_parameters, const TaskBatch<T>& batch, const InnerLoop& loop,
                                   bool keep_adapted, bool keep_logits);
  Adaptation<T> adapt_and_evaluate(const T* meta_parameters, const IndexedTaskBatch<T>& batch,
                                   const InnerLoop& loop, bool keep_adapted, bool keep_logits);
  std::vector<T> forward(const T* parameters, int examples, const T* inputs);

  // Uploads the cache's pixels once; later indexed batches gather from it on the device.
  void set_image_cache(const ImageCache& cache);
  bool has_image_cache() const { return cache_count_ > 0; }

  std::vector<T> step_size_vector(const InnerLoop& loop, int step) const;
  int task_group_size(int tasks, int support_size, int query_size, bool tangent) const;
  size_t workspace_bytes() const;

 private:
  // One set of examples of the whole meta-batch, on the device.
  struct DeviceSet {
    DeviceBuffer<T> inputs, targets;
    DeviceBuffer<int32_t> labels, indices;
    DeviceBuffer<uint8_t> rotations;
    int size = 0;
    T loss_weight = 1;
    PassData<T> group(const Architecture& a, int first, int count);
  };
  void upload(const TaskBatch<T>& batch);
  void upload(const IndexedTaskBatch<T>& batch);
  void upload_parameters(const T* meta_parameters, const InnerLoop& loop);
  MetaGradient<T> meta_gradient_on_device(int tasks, const InnerLoop& loop);
  Adaptation<T> adapt_on_device(int tasks, const InnerLoop& loop, bool keep_adapted, bool keep_logits);

  Architecture arch_;
  CudaNetwork<T> network_;
  double workspace_budget_;
  DeviceSet support_, query_;
  DeviceBuffer<uint8_t> cache_pixels_;
  int64_t cache_count_ = 0;
  int cache_channels_ = 0, cache_height_ = 0, cache_width_ = 0;
  bool cache_invert_ = false;
  // parameters, step sizes and the inner loop's vectors
  DeviceBuffer<T> meta_, alpha_;
  std::vector<T> alpha_host_;  // what alpha_ holds, so unchanged step sizes are not re-sent
  std::vector<DeviceBuffer<T>> theta_;
  DeviceBuffer<T> grad_, v_, direction_, hessian_vector_, gradient_sum_, metrics_, dots_, query_metrics_, logits_;
  DeviceBuffer<int64_t> segment_offsets_, segment_sizes_;
};

extern template class CudaNetwork<float>;
extern template class CudaNetwork<double>;
extern template class CudaMetaLearner<float>;
extern template class CudaMetaLearner<double>;

}  // namespace cuda
}  // namespace maml
