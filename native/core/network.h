// One pass of an architecture over a group of tasks: forward, loss and reverse, and, when
// a parameter tangent is given, the same pass carried forward-over-reverse so that the
// tangent of the parameter gradient is a Hessian-vector product of the loss.
//
// Activations are [tasks, batch, C, H, W]; every task has its own flat parameter vector.
// Only what the reverse pass needs is stored: each layer's input (ReLU works in place and
// reads its mask back from its output), batch-norm statistics and max-pool indices.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "architecture.h"
#include "cpu/batch_norm.h"
#include "cpu/conv.h"

namespace maml {

template <class T>
struct PassData {
  int tasks = 0, batch = 0;
  const T* inputs = nullptr;         // [tasks, batch, C, H, W]
  const int32_t* labels = nullptr;   // [tasks, batch] (classification)
  const T* targets = nullptr;        // [tasks, batch, outputs] (regression)
  T loss_weight = 1;                 // w of MATH.md: 1/batch for 'mean', 1/shots for 'sum-over-shots'
};

template <class T>
struct PassResult {
  T* const* grads = nullptr;          // per task [P], null: forward only
  T* const* grad_tangents = nullptr;  // per task [P], the Hessian-vector product
  T* losses = nullptr;                // [tasks]
  T* accuracies = nullptr;            // [tasks] (classification)
  T* logits = nullptr;                // [tasks, batch, outputs], optional
};

template <class T>
class Network {
 public:
  explicit Network(const Architecture& architecture, T batch_norm_epsilon = T(1e-3));

  // params[t] / tangents[t]: flat vectors of task t (tangents null: no tangent pass).
  void run(const PassData<T>& data, const T* const* params, const T* const* tangents, const PassResult<T>& result);

  // Workspace bytes one example needs in a pass (the engine sizes task groups from it).
  static double bytes_per_example(const Architecture& architecture, bool tangent);
  size_t workspace_bytes() const;
  // Batch-norm statistics of task `task` in the last run: (layer index, mean, biased variance).
  struct Moments {
    int layer;
    std::vector<double> mean, variance;
  };
  std::vector<Moments> batch_norm_moments(int task) const;

 private:
  void allocate(int examples, bool tangent);
  // keep_planes: keep each conv layer's bordered inputs for the backward (kept_planes_)
  void forward(const PassData<T>& data, const T* const* params, const T* const* tangents, bool keep_planes);
  void backward(const PassData<T>& data, const T* const* params, const T* const* tangents, const PassResult<T>& result);

  const Architecture& arch_;
  T epsilon_;
  // buffer_of_[i]: which stored buffer holds the input of layer i (i = layers: the logits)
  std::vector<int> buffer_of_;
  std::vector<int64_t> buffer_width_;  // values per example
  std::vector<std::vector<T>> buffers_, buffer_tangents_;
  std::vector<std::vector<int32_t>> argmax_;
  // relu_after_pool_[i]: layer i is a ReLU feeding a 2x2 max pool. ReLU and max commute,
  // so the ReLU runs on the pooled values (a quarter of them) and the full-size ReLU pass
  // and its reverse mask are skipped; see forward() and backward().
  std::vector<bool> relu_after_pool_;
  // pool_after_batch_norm_[i]: layer i is a batch norm whose output only feeds that ReLU and
  // pool (i + 1, i + 2). The two run fused (cpu/batch_norm_pool.h): the batch norm writes
  // the pooled values, the pool layer only applies the ReLU, and the full-size output of
  // the batch norm is never stored (its buffer stays empty).
  std::vector<bool> pool_after_batch_norm_;
  // pooled_input_[i] (pool i fused with batch norm i - 2): the batch norm's input at each
  // argmax, so that its reverse rule sums over pooled values without gathering them.
  std::vector<std::vector<T>> pooled_input_;
  std::vector<BatchNormStatistics<T>> statistics_;
  std::vector<T> grad_[2], grad_tangent_[2];
  // conv_pools_[i]: conv i feeds a fused batch norm + pool and pools its planes itself
  // (cpu/conv_pool.h), so that batch norm reads only the pooled values
  std::vector<bool> conv_pools_;
  // kept_planes_[i][0], [1]: conv layer i's bordered x and x' of the current pass
  std::vector<std::array<indirect_conv::KeptPlanes<T>, 2>> kept_planes_;
  // Sums of a conv's output and its square per example and channel, added up by the conv
  // as it stores, for the batch norm right after it (cpu/batch_norm.h).
  std::vector<double> conv_sums_;
  int allocated_examples_ = 0, allocated_tangent_examples_ = 0;
};

extern template class Network<float>;
extern template class Network<double>;

}  // namespace maml
