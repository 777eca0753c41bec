// CudaNetwork<T>: Network<T>::run (network.cpp) step for step, over device memory.
// The order of the calls, the accumulate flags and which tangents are absent follow
// the CPU file line by line, so the two can be read side by side.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_network.h"

namespace maml {
namespace cuda {

namespace {

ConvGeometry geometry(const Layer& l) {
  return {l.in.channels, l.in.height, l.in.width, l.out.channels, l.out.height, l.out.width,
          l.stride,      l.pad_top,   l.pad_left};
}

}  // namespace

template <class T>
CudaNetwork<T>::CudaNetwork(const Architecture& architecture, T batch_norm_epsilon)
    : arch_(architecture), epsilon_(batch_norm_epsilon) {
  const size_t layers = arch_.layers.size();
  if (layers == 0) throw std::invalid_argument("CudaNetwork: the architecture has no layers");
  if (arch_.layers[0].kind == LayerKind::ReLU)
    throw std::invalid_argument("CudaNetwork: a ReLU cannot be the first layer (it would work in place on the inputs)");
  buffer_of_.resize(layers + 1);
  buffer_of_[0] = 0;
  buffer_width_.push_back(arch_.input.size());
  for (size_t i = 0; i < layers; ++i) {
    const Layer& l = arch_.layers[i];
    if (l.kind == LayerKind::ReLU) {
      buffer_of_[i + 1] = buffer_of_[i];  // in place
    } else {
      buffer_of_[i + 1] = int(buffer_width_.size());
      buffer_width_.push_back(l.out.size());
    }
  }
  buffers_.resize(buffer_width_.size());
  buffer_tangents_.resize(buffer_width_.size());
  argmax_.resize(layers);
  statistics_.resize(layers);
}

template <class T>
size_t CudaNetwork<T>::workspace_bytes() const {
  size_t bytes = 0;
  for (auto& b : buffers_) bytes += b.bytes();
  for (auto& b : buffer_tangents_) bytes += b.bytes();
  for (auto& b : argmax_) bytes += b.bytes();
  for (auto& s : statistics_)
    bytes += s.mean.bytes() + s.inv_std.bytes() + s.tangent_mean.bytes() + s.tangent_xhat_mean.bytes();
  for (int i = 0; i < 2; ++i) bytes += grad_[i].bytes() + grad_tangent_[i].bytes();
  bytes += example_loss_.bytes() + example_correct_.bytes() + weight_grad_scratch_.bytes();
  return bytes;
}

// Grow-only: a buffer keeps its size across runs, so steady-state iterations allocate nothing.
template <class T>
void CudaNetwork<T>::allocate(int tasks, int examples, bool tangent) {
  int64_t widest = 0;
  for (size_t b = 1; b < buffers_.size(); ++b) {
    buffers_[b].reserve(size_t(buffer_width_[b]) * examples);
    if (tangent) buffer_tangents_[b].reserve(size_t(buffer_width_[b]) * examples);
  }
  for (size_t b = 0; b < buffers_.size(); ++b) widest = std::max(widest, buffer_width_[b]);
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const Layer& l = arch_.layers[i];
    if (l.kind == LayerKind::MaxPool2) argmax_[i].reserve(size_t(l.out.size()) * examples);
    if (l.kind == LayerKind::BatchNorm) {
      const size_t units = size_t(tasks) * l.in.channels;
      statistics_[i].mean.reserve(units);
      statistics_[i].inv_std.reserve(units);
      if (tangent) {
        statistics_[i].tangent_mean.reserve(units);
        statistics_[i].tangent_xhat_mean.reserve(units);
      }
    }
  }
  for (int i = 0; i < 2; ++i) {
    grad_[i].reserve(size_t(widest) * examples);
    if (tangent) grad_tangent_[i].reserve(size_t(widest) * examples);
  }
  example_loss_.reserve(size_t(examples));
  example_correct_.reserve(size_t(examples));
}

template <class T>
const T* CudaNetwork<T>::input_of(const PassData<T>& data, size_t layer) const {
  return buffer_of_[layer] == 0 ? data.inputs : buffers_[buffer_of_[layer]].data();
}

template <class T>
void CudaNetwork<T>::run(const PassData<T>& data, TaskTensor<const T> params, TaskTensor<const T> tangents,
                         const CudaPassResult<T>& result) {
  if (data.tasks <= 0 || data.batch <= 0) throw std::invalid_argument("a pass needs at least one task and one example");
  if (!params) throw std::invalid_argument("CudaNetwork::run: no parameters given");
  const bool tangent = bool(tangents);
  if (tangent && result.grads && !result.grad_tangents)
    throw std::invalid_argument("CudaNetwork::run: a tangent pass with gradients needs grad_tangents");
  allocate(data.tasks, data.tasks * data.batch, tangent);
  forward(data, params, tangents);

  // loss per task, gradient of the logits into grad_[0]
  const int outputs = arch_.outputs;
  const T* logits = input_of(data, arch_.layers.size());
  const T* logits_tangent = tangent ? buffer_tangents_[buffer_of_.back()].data() : nullptr;
  const bool backward_wanted = result.grads != nullptr;
  T* zg = backward_wanted ? grad_[0].data() : nullptr;
  T* zgt = backward_wanted && tangent ? grad_tangent_[0].data() : nullptr;
  const T* zt = zgt ? logits_tangent : nullptr;
  if (arch_.loss == LossKind::SoftmaxCrossEntropy) {
    softmax_cross_entropy<T>(data.tasks, data.batch, outputs, data.loss_weight, logits, data.labels, zg, zt, zgt,
                             example_loss_.data(), example_correct_.data(), result.losses, result.accuracies);
  } else {
    squared_error<T>(data.tasks, data.batch, outputs, data.loss_weight, logits, data.targets, zg, zt, zgt,
                     example_loss_.data(), result.losses, result.accuracies);
  }
  if (result.logits) copy_on_device(result.logits, logits, sizeof(T) * size_t(data.tasks) * data.batch * outputs);
  if (backward_wanted) backward(data, params, tangents, result);
}

template <class T>
void CudaNetwork<T>::forward(const PassData<T>& data, TaskTensor<const T> params, TaskTensor<const T> tangents) {
  const int tasks = data.tasks, batch = data.batch;
  const int64_t examples = int64_t(tasks) * batch;
  const bool tangent = bool(tangents);
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const Layer& l = arch_.layers[i];
    const T* x = input_of(data, i);
    T* y = buffers_[buffer_of_[i + 1]].data();
    // the input image has no tangent
    const T* xt = tangent && i > 0 ? buffer_tangents_[buffer_of_[i]].data() : nullptr;
    T* yt = tangent ? buffer_tangents_[buffer_of_[i + 1]].data() : nullptr;
    const auto w = params.offset_by(l.weight), b = params.offset_by(l.bias);
    const auto wt = tangents.offset_by(l.weight), bt = tangents.offset_by(l.bias);
    switch (l.kind) {
      case LayerKind::Conv3x3: {
        const ConvGeometry g = geometry(l);
        conv_forward<T>(g, tasks, batch, x, w, b, y, false);
        if (tangent) {
          // y' = conv(x', W) + conv(x, W') + b'
          if (xt) conv_forward<T>(g, tasks, batch, xt, w, bt, yt, false);
          conv_forward<T>(g, tasks, batch, x, wt, xt ? TaskTensor<const T>{} : bt, yt, xt != nullptr);
        }
        break;
      }
      case LayerKind::Linear: {
        const LinearShape s{tasks, batch, int(l.in.size()), l.out.channels};
        linear_forward<T>(s, x, w, b, y, false);
        if (tangent) {
          if (xt) linear_forward<T>(s, xt, w, bt, yt, false);
          linear_forward<T>(s, x, wt, xt ? TaskTensor<const T>{} : bt, yt, xt != nullptr);
        }
        break;
      }
      case LayerKind::BatchNorm: {
        const BatchNormShape s{tasks, batch, l.in.channels, int64_t(l.in.height) * l.in.width};
        const bool scale = l.weight >= 0;
        batch_norm_forward<T>(s, epsilon_, x, scale ? w : TaskTensor<const T>{}, b, y, statistics_[i].view(), xt,
                              scale && tangent ? wt : TaskTensor<const T>{}, tangent ? bt : TaskTensor<const T>{}, yt);
        break;
      }
      case LayerKind::ReLU: {
        const int64_t size = examples * l.in.size();
        relu_forward<T>(size, y);  // y is x: in place
        if (yt) relu_mask<T>(size, y, yt);
        break;
      }
      case LayerKind::MaxPool2: {
        const int64_t planes = examples * l.in.channels;
        max_pool_forward<T>(planes, l.in.height, l.in.width, x, y, argmax_[i].data());
        if (yt) max_pool_gather<T>(planes, l.in.height, l.in.width, xt, argmax_[i].data(), yt);
        break;
      }
      case LayerKind::SpatialMean: {
        const int64_t planes = examples * l.in.channels, plane = int64_t(l.in.height) * l.in.width;
        spatial_mean_forward<T>(planes, plane, x, y);
        if (yt) spatial_mean_forward<T>(planes, plane, xt, yt);
        break;
      }
    }
  }
}

template <class T>
void CudaNetwork<T>::backward(const PassData<T>& data, TaskTensor<const T> params, TaskTensor<const T> tangents,
                              const CudaPassResult<T>& result) {
  const int tasks = data.tasks, batch = data.batch;
  const int64_t examples = int64_t(tasks) * batch;
  const bool tangent = bool(tangents);
  const int64_t P = arch_.parameter_count;
  const TaskTensor<T> grads{result.grads, P};
  const TaskTensor<T> grad_tangents{result.grad_tangents, P};
  int current = 0;  // grad_[current] holds the gradient of the current layer's output
  for (int i = int(arch_.layers.size()) - 1; i >= 0; --i) {
    const Layer& l = arch_.layers[i];
    const bool first = i == 0;
    const T* x = input_of(data, size_t(i));
    const T* y = buffers_[buffer_of_[i + 1]].data();
    const T* xt = tangent && !first ? buffer_tangents_[buffer_of_[i]].data() : nullptr;
    T* yg = grad_[current].data();
    T* ygt = tangent ? grad_tangent_[current].data() : nullptr;
    T* xg = first ? nullptr : grad_[1 - current].data();
    T* xgt = first || !tangent ? nullptr : grad_tangent_[1 - current].data();
    const auto w = params.offset_by(l.weight), wt = tangents.offset_by(l.weight);
    const auto wg = grads.offset_by(l.weight), bg = grads.offset_by(l.bias);
    const auto wgt = grad_tangents.offset_by(l.weight), bgt = grad_tangents.offset_by(l.bias);
    bool swapped = true;
    switch (l.kind) {
      case LayerKind::Conv3x3: {
        const ConvGeometry g = geometry(l);
        conv_weight_grad<T>(g, tasks, batch, x, yg, wg, bg, false, weight_grad_scratch_);
        if (xg) conv_input_grad<T>(g, tasks, batch, yg, w, xg, false);
        if (tangent) {
          // W_grad' = correlate(x', y_grad) + correlate(x, y_grad');  x_grad' = convT(y_grad', W) + convT(y_grad, W')
          conv_weight_grad<T>(g, tasks, batch, x, ygt, wgt, bgt, false, weight_grad_scratch_);
          if (xt) conv_weight_grad<T>(g, tasks, batch, xt, yg, wgt, TaskTensor<T>{}, true, weight_grad_scratch_);
          if (xgt) {
            conv_input_grad<T>(g, tasks, batch, ygt, w, xgt, false);
            conv_input_grad<T>(g, tasks, batch, yg, wt, xgt, true);
          }
        }
        break;
      }
      case LayerKind::Linear: {
        const LinearShape s{tasks, batch, int(l.in.size()), l.out.channels};
        linear_weight_grad<T>(s, x, yg, wg, bg, false);
        if (xg) linear_input_grad<T>(s, yg, w, xg, false);
        if (tangent) {
          linear_weight_grad<T>(s, x, ygt, wgt, bgt, false);
          if (xt) linear_weight_grad<T>(s, xt, yg, wgt, TaskTensor<T>{}, true);
          if (xgt) {
            linear_input_grad<T>(s, ygt, w, xgt, false);
            linear_input_grad<T>(s, yg, wt, xgt, true);
          }
        }
        break;
      }
      case LayerKind::BatchNorm: {
        const BatchNormShape s{tasks, batch, l.in.channels, int64_t(l.in.height) * l.in.width};
        const bool scale = l.weight >= 0;
        batch_norm_backward<T>(s, x, scale ? w : TaskTensor<const T>{}, statistics_[i].view(), yg, xg,
                               scale ? wg : TaskTensor<T>{}, bg, xt, scale && tangent ? wt : TaskTensor<const T>{},
                               ygt, xgt, scale && tangent ? wgt : TaskTensor<T>{},
                               tangent ? bgt : TaskTensor<T>{});
        break;
      }
      case LayerKind::ReLU: {
        const int64_t size = examples * l.in.size();
        relu_mask<T>(size, y, yg);
        if (ygt) relu_mask<T>(size, y, ygt);
        swapped = false;
        break;
      }
      case LayerKind::MaxPool2: {
        const int64_t planes = examples * l.in.channels;
        if (xg) max_pool_scatter<T>(planes, l.in.height, l.in.width, yg, argmax_[i].data(), xg);
        if (xgt) max_pool_scatter<T>(planes, l.in.height, l.in.width, ygt, argmax_[i].data(), xgt);
        break;
      }
      case LayerKind::SpatialMean: {
        const int64_t planes = examples * l.in.channels, plane = int64_t(l.in.height) * l.in.width;
        if (xg) spatial_mean_backward<T>(planes, plane, yg, xg);
        if (xgt) spatial_mean_backward<T>(planes, plane, ygt, xgt);
        break;
      }
    }
    if (swapped) current = 1 - current;
  }
}

template class CudaNetwork<float>;
template class CudaNetwork<double>;

}  // namespace cuda
}  // namespace maml
