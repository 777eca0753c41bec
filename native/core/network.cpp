#include "network.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>

#include "cpu/batch_norm_pool.h"
#include "cpu/conv.h"
#include "cpu/losses.h"
#include "cpu/simple_layers.h"

namespace maml {

namespace {

// Per-task pointers to one parameter tensor (null where the vector or tensor is absent).
template <class Pointer>
std::vector<Pointer> slice(const Pointer* vectors, int tasks, int64_t offset) {
  std::vector<Pointer> out(tasks, nullptr);
  if (vectors && offset >= 0)
    for (int t = 0; t < tasks; ++t) out[t] = vectors[t] ? vectors[t] + offset : nullptr;
  return out;
}

ConvGeometry geometry(const Layer& l) {
  return {l.in.channels, l.in.height, l.in.width, l.out.channels, l.out.height, l.out.width,
          l.stride, l.pad_top, l.pad_left};
}

// Batch norm i feeds only a ReLU and a 2x2 max pool: the fused kernels apply.
bool pools_batch_norm(const Architecture& a, size_t i) {
  return i + 2 < a.layers.size() && a.layers[i].kind == LayerKind::BatchNorm &&
         a.layers[i + 1].kind == LayerKind::ReLU && a.layers[i + 2].kind == LayerKind::MaxPool2;
}

// Layer i's reverse rule leaves the gradient in the buffer it found it in: the ReLU (in
// place), and a max pool feeding a fused batch norm (which reads the pooled gradient).
// Every other layer writes its input gradient into the other buffer of backward()'s two.
bool gradient_in_place(const Architecture& a, int i) {
  const LayerKind kind = a.layers[i].kind;
  return kind == LayerKind::ReLU || (kind == LayerKind::MaxPool2 && i > 1 && pools_batch_norm(a, i - 2));
}

// Values per example that the two reverse-pass gradient buffers hold at most, each sized
// by the layers that write it, not both by the widest.
std::array<int64_t, 2> gradient_widths(const Architecture& a) {
  // the logits' gradient starts in buffer 0; every other gradient is some layer's input gradient
  std::array<int64_t, 2> width{a.layers.empty() ? 0 : a.layers.back().out.size(), 0};
  int current = 0;  // as in backward(): the buffer holding the current layer's output gradient
  for (int i = int(a.layers.size()) - 1; i >= 0; --i) {
    if (gradient_in_place(a, i)) continue;
    if (i > 0) width[1 - current] = std::max<int64_t>(width[1 - current], a.layers[i].in.size());
    current = 1 - current;
  }
  return width;
}

}  // namespace

template <class T>
Network<T>::Network(const Architecture& architecture, T batch_norm_epsilon)
    : arch_(architecture), epsilon_(batch_norm_epsilon) {
  const size_t layers = arch_.layers.size();
  buffer_of_.resize(layers + 1);
  buffer_of_[0] = 0;
  buffer_width_.push_back(arch_.input.size());
  for (size_t i = 0; i < layers; ++i) {
    const Layer& l = arch_.layers[i];
    if (l.kind == LayerKind::ReLU) {
      buffer_of_[i + 1] = buffer_of_[i];  // in place
    } else {
      buffer_of_[i + 1] = int(buffer_width_.size());
      buffer_width_.push_back(pools_batch_norm(arch_, i) ? 0 : l.out.size());
    }
  }
  buffers_.resize(buffer_width_.size());
  buffer_tangents_.resize(buffer_width_.size());
  argmax_.resize(layers);
  pooled_input_.resize(layers);
  statistics_.resize(layers);
  relu_after_pool_.assign(layers, false);
  for (size_t i = 0; i + 1 < layers; ++i)
    relu_after_pool_[i] = arch_.layers[i].kind == LayerKind::ReLU && arch_.layers[i + 1].kind == LayerKind::MaxPool2;
  pool_after_batch_norm_.assign(layers, false);
  for (size_t i = 0; i < layers; ++i) pool_after_batch_norm_[i] = pools_batch_norm(arch_, i);
  conv_pools_.assign(layers, false);
  for (size_t i = 0; i + 1 < layers; ++i)
    conv_pools_[i] = arch_.layers[i].kind == LayerKind::Conv3x3 && pool_after_batch_norm_[i + 1];
  kept_planes_.resize(layers);
}

template <class T>
double Network<T>::bytes_per_example(const Architecture& a, bool tangent) {
  double values = a.input.size(), indices = 0;
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const Layer& l = a.layers[i];
    if (l.kind != LayerKind::ReLU && !pools_batch_norm(a, i)) values += l.out.size();
    if (l.kind == LayerKind::MaxPool2) indices += l.out.size();
    if (i > 1 && pools_batch_norm(a, i - 2)) values += l.out.size();  // the batch norm input at the argmax
    if (l.kind == LayerKind::Conv3x3 && !conv_is_direct<T>(geometry(l)))
      // its kept bordered planes (conv_indirect.h), about the input's size
      values += double(l.in.channels) * ((l.out.height - 1) * l.stride + 3) * ((l.out.width - 1) * l.stride + 3);
  }
  const auto gradients = gradient_widths(a);
  const double copies = tangent ? 2 : 1;
  return copies * (values + gradients[0] + gradients[1]) * sizeof(T) + indices * sizeof(int32_t);
}

template <class T>
size_t Network<T>::workspace_bytes() const {
  size_t bytes = 0;
  for (auto& b : buffers_) bytes += b.capacity() * sizeof(T);
  for (auto& b : buffer_tangents_) bytes += b.capacity() * sizeof(T);
  for (auto& b : argmax_) bytes += b.capacity() * sizeof(int32_t);
  for (auto& b : pooled_input_) bytes += b.capacity() * sizeof(T);
  for (int i = 0; i < 2; ++i) bytes += (grad_[i].capacity() + grad_tangent_[i].capacity()) * sizeof(T);
  for (auto& layer : kept_planes_)
    for (auto& kept : layer) bytes += kept.data.capacity() * sizeof(T);
  return bytes;
}

template <class T>
std::vector<typename Network<T>::Moments> Network<T>::batch_norm_moments(int task) const {
  std::vector<Moments> out;
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const Layer& l = arch_.layers[i];
    if (l.kind != LayerKind::BatchNorm) continue;
    Moments m{int(i), {}, {}};
    for (int c = 0; c < l.in.channels; ++c) {
      const size_t at = size_t(task) * l.in.channels + c;
      const double s = statistics_[i].inv_std[at];
      m.mean.push_back(statistics_[i].mean[at]);
      m.variance.push_back(1.0 / (s * s) - double(epsilon_));
    }
    out.push_back(std::move(m));
  }
  return out;
}

template <class T>
void Network<T>::allocate(int examples, bool tangent) {
  // Tangent buffers are sized by the tangent passes alone (the support set), so a large
  // query batch does not double the workspace of second order.
  const bool grow_primal = examples > allocated_examples_;
  const bool grow_tangent = tangent && examples > allocated_tangent_examples_;
  if (!grow_primal && !grow_tangent) return;
  allocated_examples_ = std::max(examples, allocated_examples_);
  if (tangent) allocated_tangent_examples_ = std::max(examples, allocated_tangent_examples_);
  for (size_t b = 0; b < buffers_.size(); ++b) {
    if (grow_primal) buffers_[b].resize(size_t(buffer_width_[b]) * allocated_examples_);
    if (grow_tangent) buffer_tangents_[b].resize(size_t(buffer_width_[b]) * allocated_tangent_examples_);
  }
  if (grow_primal)
    for (size_t i = 0; i < arch_.layers.size(); ++i)
      if (arch_.layers[i].kind == LayerKind::MaxPool2) {
        argmax_[i].resize(size_t(arch_.layers[i].out.size()) * allocated_examples_);
        if (i > 1 && pool_after_batch_norm_[i - 2])
          pooled_input_[i].resize(size_t(arch_.layers[i].out.size()) * allocated_examples_);
      }
  const auto widths = gradient_widths(arch_);
  for (int i = 0; i < 2; ++i) {
    if (grow_primal) grad_[i].resize(size_t(widths[i]) * allocated_examples_);
    if (grow_tangent) grad_tangent_[i].resize(size_t(widths[i]) * allocated_tangent_examples_);
  }
}

template <class T>
void Network<T>::run(const PassData<T>& data, const T* const* params, const T* const* tangents,
                     const PassResult<T>& result) {
  if (data.tasks <= 0 || data.batch <= 0) throw std::invalid_argument("a pass needs at least one task and one example");
  allocate(data.tasks * data.batch, tangents != nullptr);
  forward(data, params, tangents, result.grads != nullptr);

  // loss per task, gradient of the logits into grad_[0]
  const int outputs = arch_.outputs;
  const T* logits = buffers_[buffer_of_.back()].data();
  const T* logits_tangent = tangents ? buffer_tangents_[buffer_of_.back()].data() : nullptr;
  const bool backward_wanted = result.grads != nullptr;
  for (int t = 0; t < data.tasks; ++t) {
    const int64_t o = int64_t(t) * data.batch * outputs;
    T* zg = backward_wanted ? grad_[0].data() + o : nullptr;
    T* zgt = backward_wanted && tangents ? grad_tangent_[0].data() + o : nullptr;
    const T* zt = zgt ? logits_tangent + o : nullptr;
    T loss;
    if (arch_.loss == LossKind::SoftmaxCrossEntropy) {
      int correct = 0;
      loss = softmax_cross_entropy<T>(data.batch, outputs, data.loss_weight, logits + o, data.labels + t * data.batch,
                                      zg, zt, zgt, &correct);
      if (result.accuracies) result.accuracies[t] = T(correct) / T(data.batch);
    } else {
      loss = squared_error<T>(data.batch, outputs, data.loss_weight, logits + o, data.targets + o, zg, zt, zgt);
      if (result.accuracies) result.accuracies[t] = T(0);
    }
    if (result.losses) result.losses[t] = loss;
  }
  if (result.logits) std::copy(logits, logits + int64_t(data.tasks) * data.batch * outputs, result.logits);
  if (backward_wanted) backward(data, params, tangents, result);
}

template <class T>
void Network<T>::forward(const PassData<T>& data, const T* const* params, const T* const* tangents, bool keep_planes) {
  const int tasks = data.tasks, batch = data.batch;
  const int64_t examples = int64_t(tasks) * batch;
  std::copy(data.inputs, data.inputs + examples * arch_.input.size(), buffers_[0].begin());
  for (size_t i = 0; i < arch_.layers.size(); ++i) {
    const Layer& l = arch_.layers[i];
    T* x = buffers_[buffer_of_[i]].data();
    T* y = buffers_[buffer_of_[i + 1]].data();
    // the input image has no tangent
    T* xt = tangents && i > 0 ? buffer_tangents_[buffer_of_[i]].data() : nullptr;
    T* yt = tangents ? buffer_tangents_[buffer_of_[i + 1]].data() : nullptr;
    const auto w = slice(params, tasks, l.weight), b = slice(params, tasks, l.bias);
    const auto wt = slice(tangents, tasks, l.weight), bt = slice(tangents, tasks, l.bias);
    switch (l.kind) {
      case LayerKind::Conv3x3: {
        const ConvGeometry g = geometry(l);
        double* sums = nullptr;
        if (size_t(i + 1) < arch_.layers.size() && arch_.layers[i + 1].kind == LayerKind::BatchNorm) {
          conv_sums_.resize(size_t(examples) * g.cout * 2);
          sums = conv_sums_.data();
        }
        // conv -> batch norm -> ReLU -> pool fused: the conv pools its planes while they are
        // in cache, by the sign of the batch norm's scale (conv_pool.h)
        PoolByScale<T> pool;
        const bool pools = conv_pools_[i];
        std::vector<const T*> scale;
        if (pools) {
          const Layer& norm = arch_.layers[i + 1];
          if (norm.weight >= 0) scale = slice(params, tasks, norm.weight);
          pool = {norm.weight >= 0 ? scale.data() : nullptr, argmax_[i + 3].data(), pooled_input_[i + 3].data()};
        }
        // with a backward to come, x and x' are bordered once for all the calls that read them
        kept_planes_[i][0].filled = kept_planes_[i][1].filled = false;  // x has changed
        auto* kept = keep_planes ? &kept_planes_[i][0] : nullptr;
        auto* kept_tangent = keep_planes ? &kept_planes_[i][1] : nullptr;
        conv_forward<T>(g, tasks, batch, x, w.data(), b.data(), y, false, sums, pools ? &pool : nullptr, kept);
        if (tangents) {
          if (xt) conv_forward<T>(g, tasks, batch, xt, w.data(), bt.data(), yt, false, nullptr, nullptr, kept_tangent);
          conv_forward<T>(g, tasks, batch, x, wt.data(), xt ? nullptr : bt.data(), yt, xt != nullptr, nullptr, nullptr,
                          kept);
        }
        break;
      }
      case LayerKind::Linear: {
        const LinearShape s{tasks, batch, int(l.in.size()), l.out.channels};
        linear_forward<T>(s, x, w.data(), b.data(), y, false);
        if (tangents) {
          if (xt) linear_forward<T>(s, xt, w.data(), bt.data(), yt, false);
          linear_forward<T>(s, x, wt.data(), xt ? nullptr : bt.data(), yt, xt != nullptr);
        }
        break;
      }
      case LayerKind::BatchNorm: {
        const BatchNormShape s{tasks, batch, l.in.channels, int64_t(l.in.height) * l.in.width};
        const T* const* gamma = l.weight >= 0 ? w.data() : nullptr;
        // the conv below summed x and x^2 while storing it (see its case)
        const double* conv_sums = i > 0 && arch_.layers[i - 1].kind == LayerKind::Conv3x3 ? conv_sums_.data() : nullptr;
        const T* const* gamma_tangent = l.weight >= 0 && tangents ? wt.data() : nullptr;
        if (pool_after_batch_norm_[i]) {
          const int pooled = buffer_of_[i + 3];
          batch_norm_pool_forward<T>(s, l.in.height, l.in.width, epsilon_, x, gamma, b.data(), buffers_[pooled].data(),
                                     argmax_[i + 2].data(), pooled_input_[i + 2].data(), statistics_[i], xt,
                                     gamma_tangent,
                                     tangents ? bt.data() : nullptr,
                                     tangents ? buffer_tangents_[pooled].data() : nullptr, conv_sums,
                                     i > 0 && conv_pools_[i - 1]);
          break;
        }
        batch_norm_forward<T>(s, epsilon_, x, gamma, b.data(), y, statistics_[i], xt, gamma_tangent,
                              tangents ? bt.data() : nullptr, yt, conv_sums);
        break;
      }
      case LayerKind::ReLU: {
        if (relu_after_pool_[i]) break;  // applied to the pooled values below
        const int64_t size = examples * l.in.size();
        relu_forward<T>(size, y);
        if (yt) relu_mask<T>(size, y, yt);
        break;
      }
      case LayerKind::MaxPool2: {
        // pool(relu(x)) = relu(pool(x)); where the window's max is <= 0 both give 0 and the
        // mask [y > 0] stops every gradient and tangent, so the argmax taken on x is as good
        const int64_t planes = examples * l.in.channels;
        if (!(i > 1 && pool_after_batch_norm_[i - 2])) {  // else the batch norm pooled already
          max_pool_forward<T>(planes, l.in.height, l.in.width, x, y, argmax_[i].data());
          if (yt) max_pool_gather<T>(planes, l.in.height, l.in.width, xt, argmax_[i].data(), yt);
        }
        if (i > 0 && relu_after_pool_[i - 1]) {
          relu_forward<T>(examples * l.out.size(), y);
          if (yt) relu_mask<T>(examples * l.out.size(), y, yt);
        }
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
void Network<T>::backward(const PassData<T>& data, const T* const* params, const T* const* tangents,
                          const PassResult<T>& result) {
  const int tasks = data.tasks, batch = data.batch;
  const int64_t examples = int64_t(tasks) * batch;
  const bool tangent = tangents != nullptr;
  int current = 0;  // grad_[current] holds the gradient of the current layer's output
  for (int i = int(arch_.layers.size()) - 1; i >= 0; --i) {
    const Layer& l = arch_.layers[i];
    const bool first = i == 0;
    T* x = buffers_[buffer_of_[i]].data();
    T* y = buffers_[buffer_of_[i + 1]].data();
    T* xt = tangent && !first ? buffer_tangents_[buffer_of_[i]].data() : nullptr;
    T* yg = grad_[current].data();
    T* ygt = tangent ? grad_tangent_[current].data() : nullptr;
    T* xg = first ? nullptr : grad_[1 - current].data();
    T* xgt = first || !tangent ? nullptr : grad_tangent_[1 - current].data();
    const auto w = slice(params, tasks, l.weight), wt = slice(tangents, tasks, l.weight);
    const auto wg = slice(result.grads, tasks, l.weight), bg = slice(result.grads, tasks, l.bias);
    const auto wgt = slice(result.grad_tangents, tasks, l.weight), bgt = slice(result.grad_tangents, tasks, l.bias);
    switch (l.kind) {
      case LayerKind::Conv3x3: {
        const ConvGeometry g = geometry(l);
        // A bias feeding a batch norm (batch statistics) cancels in its mean: the bias
        // gradient and its tangent are exactly zero, written rather than summed.
        const bool bias_cancels = size_t(i + 1) < arch_.layers.size() && arch_.layers[i + 1].kind == LayerKind::BatchNorm;
        if (bias_cancels) {
          for (T* const* grads : {bg.data(), bgt.data()})
            for (int t = 0; t < tasks && grads; ++t)
              if (grads[t]) std::fill(grads[t], grads[t] + l.out.channels, T(0));
        }
        const auto& kept = kept_planes_[i];
        conv_weight_grad<T>(g, tasks, batch, x, yg, wg.data(), bias_cancels ? nullptr : bg.data(), false, &kept[0]);
        if (xg) conv_input_grad<T>(g, tasks, batch, yg, w.data(), xg, false);
        if (tangent) {
          // W_grad' = correlate(x', y_grad) + correlate(x, y_grad');  x_grad' = convT(y_grad', W) + convT(y_grad, W')
          conv_weight_grad<T>(g, tasks, batch, x, ygt, wgt.data(), bias_cancels ? nullptr : bgt.data(), false,
                              &kept[0]);
          if (xt) conv_weight_grad<T>(g, tasks, batch, xt, yg, wgt.data(), nullptr, true, &kept[1]);
          if (xgt) conv_input_grad<T>(g, tasks, batch, ygt, w.data(), xgt, false, yg, wt.data());
        }
        break;
      }
      case LayerKind::Linear: {
        const LinearShape s{tasks, batch, int(l.in.size()), l.out.channels};
        linear_weight_grad<T>(s, x, yg, wg.data(), bg.data(), false);
        if (xg) linear_input_grad<T>(s, yg, w.data(), xg, false);
        if (tangent) {
          linear_weight_grad<T>(s, x, ygt, wgt.data(), bgt.data(), false);
          if (xt) linear_weight_grad<T>(s, xt, yg, wgt.data(), nullptr, true);
          if (xgt) {
            linear_input_grad<T>(s, ygt, w.data(), xgt, false);
            linear_input_grad<T>(s, yg, wt.data(), xgt, true);
          }
        }
        break;
      }
      case LayerKind::BatchNorm: {
        const BatchNormShape s{tasks, batch, l.in.channels, int64_t(l.in.height) * l.in.width};
        const bool scale = l.weight >= 0;
        if (pool_after_batch_norm_[i]) {  // yg, ygt: the pooled gradients (the pool above left them)
          batch_norm_pool_backward<T>(s, l.in.height, l.in.width, x, scale ? w.data() : nullptr, statistics_[i], yg,
                                      argmax_[i + 2].data(), pooled_input_[i + 2].data(), xg,
                                      scale ? wg.data() : nullptr, bg.data(), xt,
                                      scale && tangent ? wt.data() : nullptr, ygt, xgt,
                                      scale && tangent ? wgt.data() : nullptr, tangent ? bgt.data() : nullptr);
          break;
        }
        batch_norm_backward<T>(s, x, scale ? w.data() : nullptr, statistics_[i], yg, xg, scale ? wg.data() : nullptr,
                               bg.data(), xt, scale && tangent ? wt.data() : nullptr, ygt, xgt,
                               scale && tangent ? wgt.data() : nullptr, tangent ? bgt.data() : nullptr);
        break;
      }
      case LayerKind::ReLU: {
        if (relu_after_pool_[i]) break;  // the max pool above applied the mask
        const int64_t size = examples * l.in.size();
        relu_mask<T>(size, y, yg);
        if (ygt) relu_mask<T>(size, y, ygt);
        break;
      }
      case LayerKind::MaxPool2: {
        const int64_t planes = examples * l.in.channels;
        if (i > 0 && relu_after_pool_[i - 1]) {
          // the ReLU's reverse rule on the pooled gradient: only the argmax positions carry one
          relu_mask<T>(examples * l.out.size(), y, yg);
          if (ygt) relu_mask<T>(examples * l.out.size(), y, ygt);
        }
        if (i > 1 && pool_after_batch_norm_[i - 2]) break;  // the batch norm below reads the pooled gradients
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
    if (!gradient_in_place(arch_, i)) current = 1 - current;
  }
}

template class Network<float>;
template class Network<double>;

}  // namespace maml
