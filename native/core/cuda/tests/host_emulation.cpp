// Host emulation of the CUDA runtime pieces (device.h) and of every launcher of
// kernels.cuh, built from the CPU kernels, so that the CUDA backend's host logic
// (CudaNetwork's buffers and call order, CudaMetaLearner's task groups, strides,
// theta_0 shared with stride 0, metric layouts, step-size gradients, the image cache
// path) and the parity harness itself run and are checked on a machine with no GPU.
//
// Convolution and linear layers go through the same GEMM problem structs as the GPU
// (gemm_problems.cuh: implicit im2col, the transposed convolution as a gather, split-K
// slices), executed by a host loop instead of the tiled kernel; the other launchers call
// the CPU kernels. Linked into maml_cuda_host_emulation with tests/parity.cpp and the
// backend's host files compiled as C++ (tests/emulated_backend.cpp). It proves nothing
// about the tiled kernel, the reductions or the other __global__ functions of
// kernels.cu: those are what maml_cuda_parity checks on a GPU.
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/batch_norm.h"
#include "cpu/conv.h"
#include "cpu/losses.h"
#include "cpu/simple_layers.h"
#include "device.h"
#include "gemm_problems.cuh"
#include "image_gather.h"
#include "kernels.cuh"

namespace maml {
namespace cuda {

// ---- device.h: host memory stands in for device memory ----
int cuda_device_count(std::string*) { return 1; }
std::string resolve_device(const std::string& requested) { return requested == "cpu" ? "cpu" : "cuda"; }
std::string describe_device(int) { return "host emulation of the CUDA launchers (CPU kernels, no GPU)"; }
void throw_on_error(int status, const char* call, const char* file, int line) {
  if (status) throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line));
}
size_t device_memory_used() { return 0; }
void* device_allocate(size_t bytes) {
  if (!bytes) return nullptr;
  void* p = std::calloc(1, bytes);
  if (!p) throw std::runtime_error("host emulation: out of memory");
  // poison, so reading memory nothing wrote shows up as a parity failure
  std::memset(p, 0xff, bytes);
  return p;
}
void device_free(void* pointer) noexcept { std::free(pointer); }
void copy_to_device(void* device, const void* host, size_t bytes) { std::memcpy(device, host, bytes); }
void copy_to_host(void* host, const void* device, size_t bytes) { std::memcpy(host, device, bytes); }
void copy_on_device(void* to, const void* from, size_t bytes) { std::memmove(to, from, bytes); }
void fill_zero(void* device, size_t bytes) { std::memset(device, 0, bytes); }
void synchronize() {}

namespace {

template <class T>
std::vector<T*> pointers(TaskTensor<T> t, int tasks) {
  std::vector<T*> out(tasks, nullptr);
  if (t)
    for (int i = 0; i < tasks; ++i) out[i] = t.at(i);
  return out;
}
template <class T>
T* const* or_null(const std::vector<T*>& v, bool present) {
  return present ? v.data() : nullptr;
}
maml::ConvGeometry cpu(const ConvGeometry& g) {
  return {g.cin, g.h, g.w, g.cout, g.oh, g.ow, g.stride, g.pad_top, g.pad_left};
}

}  // namespace

// Convolutions run the very problem structs of kernels.cu (gemm_problems.cuh) through a
// plain host loop in place of the tiled kernel, so their index arithmetic, padding and
// split-K slicing are checked here against the CPU kernels.
template <class T, class Problem>
void run_on_host(const Problem& p, int batches) {
  for (int z = 0; z < batches; ++z) {
    int64_t begin = 0, end = 0;
    p.depth_range(z, &begin, &end);
    for (int m = 0; m < p.rows; ++m)
      for (int64_t n = 0; n < p.cols; ++n) {
        T sum = 0;
        for (int64_t k = begin; k < end; ++k) sum += p.a_at(z, m, k) * p.b_at(z, k, n);
        p.store(z, m, n, sum);
      }
  }
}

template <class T>
void conv_forward(const ConvGeometry& g, int tasks, int batch, const T* x, TaskTensor<const T> weights,
                  TaskTensor<const T> biases, T* y, bool accumulate) {
  ConvForwardProblem<T> p{g, batch, x, weights, biases, y, accumulate, g.cout, int64_t(batch) * g.out_plane()};
  run_on_host<T>(p, tasks);
}
template <class T>
void conv_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, TaskTensor<const T> weights,
                     T* x_grad, bool accumulate) {
  ConvInputGradProblem<T> p{g, batch, y_grad, weights, x_grad, accumulate, g.cin, int64_t(batch) * g.in_plane()};
  run_on_host<T>(p, tasks);
}
template <class T>
void conv_weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad,
                      TaskTensor<T> weight_grads, TaskTensor<T> bias_grads, bool accumulate, DeviceBuffer<T>& scratch) {
  const int64_t reduction = int64_t(batch) * g.out_plane();
  const int64_t weight_size = int64_t(g.cout) * g.depth();
  int splits = 1;
  int64_t slice = 0;
  weight_grad_slices(reduction, tasks, &splits, &slice);
  T* partial = nullptr;
  if (splits > 1) {
    scratch.reserve(size_t(tasks) * splits * weight_size);
    partial = scratch.data();
  }
  ConvWeightGradProblem<T> p{g, batch, x, y_grad, splits, slice, weight_grads, partial, accumulate, g.cout,
                             int64_t(g.depth())};
  run_on_host<T>(p, tasks * splits);
  if (splits > 1)  // sum_slices
    for (int t = 0; t < tasks; ++t)
      for (int64_t i = 0; i < weight_size; ++i) {
        T sum = 0;
        for (int s = 0; s < splits; ++s) sum += partial[(int64_t(t) * splits + s) * weight_size + i];
        T* out = weight_grads.at(t) + i;
        *out = accumulate ? *out + sum : sum;
      }
  if (bias_grads)  // conv_bias_grad
    for (int t = 0; t < tasks; ++t)
      for (int co = 0; co < g.cout; ++co) {
        T sum = 0;
        for (int nb = 0; nb < batch; ++nb)
          for (int64_t q = 0; q < g.out_plane(); ++q)
            sum += y_grad[((int64_t(t) * batch + nb) * g.cout + co) * g.out_plane() + q];
        T* out = bias_grads.at(t) + co;
        *out = accumulate ? *out + sum : sum;
      }
}

template <class T>
void batch_norm_forward(const BatchNormShape& s, T epsilon, const T* x, TaskTensor<const T> gamma,
                        TaskTensor<const T> beta, T* y, BatchNormStatisticsView<T> stats, const T* x_tangent,
                        TaskTensor<const T> gamma_tangent, TaskTensor<const T> beta_tangent, T* y_tangent) {
  const int tasks = s.tasks;
  const auto g = pointers(gamma, tasks), b = pointers(beta, tasks);
  const auto gt = pointers(gamma_tangent, tasks), bt = pointers(beta_tangent, tasks);
  BatchNormStatistics<T> st;
  maml::batch_norm_forward<T>(s, epsilon, x, or_null(g, bool(gamma)), b.data(), y, st, x_tangent,
                              or_null(gt, bool(gamma_tangent)), or_null(bt, bool(beta_tangent)), y_tangent);
  std::copy(st.mean.begin(), st.mean.end(), stats.mean);
  std::copy(st.inv_std.begin(), st.inv_std.end(), stats.inv_std);
  if (x_tangent) {
    std::copy(st.tangent_mean.begin(), st.tangent_mean.end(), stats.tangent_mean);
    std::copy(st.tangent_xhat_mean.begin(), st.tangent_xhat_mean.end(), stats.tangent_xhat_mean);
  }
}
template <class T>
void batch_norm_backward(const BatchNormShape& s, const T* x, TaskTensor<const T> gamma,
                         BatchNormStatisticsView<T> stats, const T* y_grad, T* x_grad, TaskTensor<T> gamma_grad,
                         TaskTensor<T> beta_grad, const T* x_tangent, TaskTensor<const T> gamma_tangent,
                         const T* y_grad_tangent, T* x_grad_tangent, TaskTensor<T> gamma_grad_tangent,
                         TaskTensor<T> beta_grad_tangent) {
  const int tasks = s.tasks;
  const size_t units = size_t(tasks) * s.channels;
  BatchNormStatistics<T> st;
  st.mean.assign(stats.mean, stats.mean + units);
  st.inv_std.assign(stats.inv_std, stats.inv_std + units);
  if (x_tangent) {
    st.tangent_mean.assign(stats.tangent_mean, stats.tangent_mean + units);
    st.tangent_xhat_mean.assign(stats.tangent_xhat_mean, stats.tangent_xhat_mean + units);
  }
  const auto g = pointers(gamma, tasks), gt = pointers(gamma_tangent, tasks);
  const auto gg = pointers(gamma_grad, tasks), bg = pointers(beta_grad, tasks);
  const auto ggt = pointers(gamma_grad_tangent, tasks), bgt = pointers(beta_grad_tangent, tasks);
  maml::batch_norm_backward<T>(s, x, or_null(g, bool(gamma)), st, y_grad, x_grad, or_null(gg, bool(gamma_grad)),
                               or_null(bg, bool(beta_grad)), x_tangent, or_null(gt, bool(gamma_tangent)),
                               y_grad_tangent, x_grad_tangent, or_null(ggt, bool(gamma_grad_tangent)),
                               or_null(bgt, bool(beta_grad_tangent)));
}

template <class T>
void relu_forward(int64_t size, T* x) {
  maml::relu_forward<T>(size, x);
}
template <class T>
void relu_mask(int64_t size, const T* y, T* v) {
  maml::relu_mask<T>(size, y, v);
}
template <class T>
void max_pool_forward(int64_t planes, int h, int w, const T* x, T* y, int32_t* argmax) {
  maml::max_pool_forward<T>(planes, h, w, x, y, argmax);
}
template <class T>
void max_pool_gather(int64_t planes, int h, int w, const T* x, const int32_t* argmax, T* y) {
  maml::max_pool_gather<T>(planes, h, w, x, argmax, y);
}
template <class T>
void max_pool_scatter(int64_t planes, int h, int w, const T* y_grad, const int32_t* argmax, T* x_grad) {
  maml::max_pool_scatter<T>(planes, h, w, y_grad, argmax, x_grad);
}
template <class T>
void spatial_mean_forward(int64_t planes, int64_t plane, const T* x, T* y) {
  maml::spatial_mean_forward<T>(planes, plane, x, y);
}
template <class T>
void spatial_mean_backward(int64_t planes, int64_t plane, const T* y_grad, T* x_grad) {
  maml::spatial_mean_backward<T>(planes, plane, y_grad, x_grad);
}

template <class T>
void linear_forward(const LinearShape& s, const T* x, TaskTensor<const T> weights, TaskTensor<const T> biases, T* y,
                    bool accumulate) {
  LinearForwardProblem<T> p{s, x, weights, biases, y, accumulate, s.batch, s.outputs};
  run_on_host<T>(p, s.tasks);
}
template <class T>
void linear_input_grad(const LinearShape& s, const T* y_grad, TaskTensor<const T> weights, T* x_grad,
                       bool accumulate) {
  LinearInputGradProblem<T> p{s, y_grad, weights, x_grad, accumulate, s.batch, s.inputs};
  run_on_host<T>(p, s.tasks);
}
template <class T>
void linear_weight_grad(const LinearShape& s, const T* x, const T* y_grad, TaskTensor<T> weight_grads,
                        TaskTensor<T> bias_grads, bool accumulate) {
  LinearWeightGradProblem<T> p{s, x, y_grad, weight_grads, accumulate, s.outputs, s.inputs};
  run_on_host<T>(p, s.tasks);
  if (bias_grads)  // linear_bias_grad
    for (int t = 0; t < s.tasks; ++t)
      for (int o = 0; o < s.outputs; ++o) {
        T* out = bias_grads.at(t) + o;
        T sum = accumulate ? *out : T(0);
        for (int n = 0; n < s.batch; ++n) sum += y_grad[(int64_t(t) * s.batch + n) * s.outputs + o];
        *out = sum;
      }
}

template <class T>
void softmax_cross_entropy(int tasks, int n, int classes, T weight, const T* z, const int32_t* labels, T* z_grad,
                           const T* z_tangent, T* z_grad_tangent, T*, int32_t*, T* losses, T* accuracies) {
  for (int t = 0; t < tasks; ++t) {
    const int64_t o = int64_t(t) * n * classes;
    int correct = 0;
    const T loss = maml::softmax_cross_entropy<T>(n, classes, weight, z + o, labels + int64_t(t) * n,
                                                  z_grad ? z_grad + o : nullptr, z_tangent ? z_tangent + o : nullptr,
                                                  z_grad_tangent ? z_grad_tangent + o : nullptr, &correct);
    if (losses) losses[t] = loss;
    if (accuracies) accuracies[t] = T(correct) / T(n);
  }
}
template <class T>
void squared_error(int tasks, int n, int outputs, T weight, const T* z, const T* targets, T* z_grad,
                   const T* z_tangent, T* z_grad_tangent, T*, T* losses, T* accuracies) {
  for (int t = 0; t < tasks; ++t) {
    const int64_t o = int64_t(t) * n * outputs;
    const T loss = maml::squared_error<T>(n, outputs, weight, z + o, targets + o, z_grad ? z_grad + o : nullptr,
                                          z_tangent ? z_tangent + o : nullptr,
                                          z_grad_tangent ? z_grad_tangent + o : nullptr);
    if (losses) losses[t] = loss;
    if (accuracies) accuracies[t] = T(0);
  }
}

template <class T>
void sgd_step(int tasks, int64_t size, TaskTensor<const T> theta, const T* alpha, const T* grad, T* theta_next) {
  for (int t = 0; t < tasks; ++t)
    for (int64_t i = 0; i < size; ++i)
      theta_next[t * size + i] = theta.at(t)[i] - alpha[i] * grad[t * size + i];
}
template <class T>
void scale_by(int tasks, int64_t size, const T* alpha, const T* v, T* out) {
  for (int64_t e = 0; e < int64_t(tasks) * size; ++e) out[e] = alpha[e % size] * v[e];
}
template <class T>
void subtract_in_place(int64_t count, T* v, const T* h) {
  for (int64_t e = 0; e < count; ++e) v[e] -= h[e];
}
template <class T>
void sum_over_tasks(int tasks, int64_t size, const T* v, T* accumulator) {
  for (int64_t i = 0; i < size; ++i)
    for (int t = 0; t < tasks; ++t) accumulator[i] += v[t * size + i];
}
template <class T>
void segment_dots(int tasks, int64_t size, int segments, const int64_t* offsets, const int64_t* sizes, const T* a,
                  const T* b, T* out) {
  for (int t = 0; t < tasks; ++t)
    for (int j = 0; j < segments; ++j) {
      T dot = 0;
      for (int64_t i = offsets[j]; i < offsets[j] + sizes[j]; ++i) dot += a[t * size + i] * b[t * size + i];
      out[t * segments + j] = dot;
    }
}
template <class T>
void gather_images(const uint8_t* pixels, int channels, int height, int width, bool invert, int64_t examples,
                   const int32_t* indices, const uint8_t* rotations, T* out) {
  ImageCache cache;
  cache.pixels = pixels;
  cache.count = std::numeric_limits<int32_t>::max();  // indices were checked by the caller
  cache.channels = channels;
  cache.height = height;
  cache.width = width;
  cache.invert = invert;
  maml::gather_images<T>(cache, examples, indices, rotations, out);
}

#define MAML_INSTANTIATE(T)                                                                                          \
  template void conv_forward<T>(const ConvGeometry&, int, int, const T*, TaskTensor<const T>, TaskTensor<const T>,  \
                                T*, bool);                                                                           \
  template void conv_input_grad<T>(const ConvGeometry&, int, int, const T*, TaskTensor<const T>, T*, bool);         \
  template void conv_weight_grad<T>(const ConvGeometry&, int, int, const T*, const T*, TaskTensor<T>, TaskTensor<T>, \
                                    bool, DeviceBuffer<T>&);                                                         \
  template void batch_norm_forward<T>(const BatchNormShape&, T, const T*, TaskTensor<const T>, TaskTensor<const T>,  \
                                      T*, BatchNormStatisticsView<T>, const T*, TaskTensor<const T>,                 \
                                      TaskTensor<const T>, T*);                                                      \
  template void batch_norm_backward<T>(const BatchNormShape&, const T*, TaskTensor<const T>,                         \
                                       BatchNormStatisticsView<T>, const T*, T*, TaskTensor<T>, TaskTensor<T>,       \
                                       const T*, TaskTensor<const T>, const T*, T*, TaskTensor<T>, TaskTensor<T>);   \
  template void relu_forward<T>(int64_t, T*);                                                                        \
  template void relu_mask<T>(int64_t, const T*, T*);                                                                 \
  template void max_pool_forward<T>(int64_t, int, int, const T*, T*, int32_t*);                                      \
  template void max_pool_gather<T>(int64_t, int, int, const T*, const int32_t*, T*);                                 \
  template void max_pool_scatter<T>(int64_t, int, int, const T*, const int32_t*, T*);                                \
  template void spatial_mean_forward<T>(int64_t, int64_t, const T*, T*);                                             \
  template void spatial_mean_backward<T>(int64_t, int64_t, const T*, T*);                                            \
  template void linear_forward<T>(const LinearShape&, const T*, TaskTensor<const T>, TaskTensor<const T>, T*, bool); \
  template void linear_input_grad<T>(const LinearShape&, const T*, TaskTensor<const T>, T*, bool);                  \
  template void linear_weight_grad<T>(const LinearShape&, const T*, const T*, TaskTensor<T>, TaskTensor<T>, bool);   \
  template void softmax_cross_entropy<T>(int, int, int, T, const T*, const int32_t*, T*, const T*, T*, T*, int32_t*, \
                                         T*, T*);                                                                    \
  template void squared_error<T>(int, int, int, T, const T*, const T*, T*, const T*, T*, T*, T*, T*);                \
  template void sgd_step<T>(int, int64_t, TaskTensor<const T>, const T*, const T*, T*);                              \
  template void scale_by<T>(int, int64_t, const T*, const T*, T*);                                                   \
  template void subtract_in_place<T>(int64_t, T*, const T*);                                                         \
  template void sum_over_tasks<T>(int, int64_t, const T*, T*);                                                       \
  template void segment_dots<T>(int, int64_t, int, const int64_t*, const int64_t*, const T*, const T*, T*);          \
  template void gather_images<T>(const uint8_t*, int, int, int, bool, int64_t, const int32_t*, const uint8_t*, T*);

MAML_INSTANTIATE(float)
MAML_INSTANTIATE(double)

}  // namespace cuda
}  // namespace maml
