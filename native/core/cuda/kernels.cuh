// The CUDA kernels of the engine, one launcher per CPU kernel of native/core/cpu/*.h,
// with the same names, shapes and rules (MATH.md), each over the task dimension so a
// meta-batch costs a handful of launches per layer, not one per task.
//
// All pointers are device pointers. Activations are [tasks, batch, C, H, W] as on the
// CPU. Parameters of task t are read through TaskTensor: data + t * task_stride, so a
// stride of 0 lets every task share theta_0 without copying it (DESIGN.md, "Batching").
// Launches go to the default stream; errors of the launch itself are thrown at once,
// errors inside a kernel surface at the next synchronising call.
//
// This header holds no CUDA syntax, so plain C++ (the parity test) can call the
// launchers; the kernels and their instantiations for float and double are in kernels.cu.
#pragma once
#include <cstdint>
#include <type_traits>

#include "cpu/batch_norm.h"  // BatchNormShape (plain C++)
#include "device.h"

#if defined(__CUDACC__)
#define MAML_HOST_DEVICE __host__ __device__
#else
#define MAML_HOST_DEVICE
#endif

namespace maml {
namespace cuda {

// One tensor per task: task t's copy starts at data + t * task_stride; data null: absent.
template <class T>
struct TaskTensor {
  T* data = nullptr;
  int64_t task_stride = 0;
  MAML_HOST_DEVICE T* at(int task) const { return data + int64_t(task) * task_stride; }
  MAML_HOST_DEVICE explicit operator bool() const { return data != nullptr; }
  // the tensor that starts `offset` values into each task's flat vector (absent stays absent)
  TaskTensor offset_by(int64_t offset) const {
    return data && offset >= 0 ? TaskTensor{data + offset, task_stride} : TaskTensor{};
  }
  // a writable tensor can be passed where a read-only one is expected
  template <class U = T, class = typename std::enable_if<!std::is_const<U>::value>::type>
  MAML_HOST_DEVICE operator TaskTensor<const U>() const {
    return {data, task_stride};
  }
};

// Same fields as maml::ConvGeometry (cpu/conv.h), which this header cannot include
// because cpu/gemm.h uses GCC vector extensions that nvcc's front end does not take.
struct ConvGeometry {
  int cin, h, w, cout, oh, ow, stride, pad_top, pad_left;
  MAML_HOST_DEVICE int depth() const { return cin * 9; }
  MAML_HOST_DEVICE int64_t in_plane() const { return int64_t(h) * w; }
  MAML_HOST_DEVICE int64_t out_plane() const { return int64_t(oh) * ow; }
  MAML_HOST_DEVICE int64_t in_size() const { return cin * in_plane(); }
  MAML_HOST_DEVICE int64_t out_size() const { return cout * out_plane(); }
};

struct LinearShape {
  int tasks, batch, inputs, outputs;
};

// Per (task, channel) statistics of one batch-norm call, [tasks * channels] each.
template <class T>
struct BatchNormStatisticsView {
  T* mean = nullptr;
  T* inv_std = nullptr;
  T* tangent_mean = nullptr;       // mean(x_tangent)
  T* tangent_xhat_mean = nullptr;  // mean(x_hat x_tangent)
};

// ---- 3x3 convolution: implicit GEMM, no im2col buffer in device memory ----
// y = conv(x, W) + b (+ y when accumulate)
template <class T>
void conv_forward(const ConvGeometry& g, int tasks, int batch, const T* x, TaskTensor<const T> weights,
                  TaskTensor<const T> biases, T* y, bool accumulate);
// x_grad = conv_transpose(y_grad, W) (+ x_grad when accumulate)
template <class T>
void conv_input_grad(const ConvGeometry& g, int tasks, int batch, const T* y_grad, TaskTensor<const T> weights,
                     T* x_grad, bool accumulate);
// W_grad = correlate(x, y_grad), b_grad = sum(y_grad) over the batch and positions (+= when
// accumulate; biases absent: weights only). scratch holds split-K partial sums.
template <class T>
void conv_weight_grad(const ConvGeometry& g, int tasks, int batch, const T* x, const T* y_grad,
                      TaskTensor<T> weight_grads, TaskTensor<T> bias_grads, bool accumulate, DeviceBuffer<T>& scratch);

// ---- batch norm with batch statistics (cpu/batch_norm.h) ----
template <class T>
void batch_norm_forward(const BatchNormShape& s, T epsilon, const T* x, TaskTensor<const T> gamma,
                        TaskTensor<const T> beta, T* y, BatchNormStatisticsView<T> stats, const T* x_tangent,
                        TaskTensor<const T> gamma_tangent, TaskTensor<const T> beta_tangent, T* y_tangent);
template <class T>
void batch_norm_backward(const BatchNormShape& s, const T* x, TaskTensor<const T> gamma,
                         BatchNormStatisticsView<T> stats, const T* y_grad, T* x_grad, TaskTensor<T> gamma_grad,
                         TaskTensor<T> beta_grad, const T* x_tangent, TaskTensor<const T> gamma_tangent,
                         const T* y_grad_tangent, T* x_grad_tangent, TaskTensor<T> gamma_grad_tangent,
                         TaskTensor<T> beta_grad_tangent);

// ---- ReLU, max pool, spatial mean, linear (cpu/simple_layers.h) ----
template <class T>
void relu_forward(int64_t size, T* x);
template <class T>
void relu_mask(int64_t size, const T* y, T* v);
template <class T>
void max_pool_forward(int64_t planes, int h, int w, const T* x, T* y, int32_t* argmax);
template <class T>
void max_pool_gather(int64_t planes, int h, int w, const T* x, const int32_t* argmax, T* y);
template <class T>
void max_pool_scatter(int64_t planes, int h, int w, const T* y_grad, const int32_t* argmax, T* x_grad);
template <class T>
void spatial_mean_forward(int64_t planes, int64_t plane, const T* x, T* y);
template <class T>
void spatial_mean_backward(int64_t planes, int64_t plane, const T* y_grad, T* x_grad);
template <class T>
void linear_forward(const LinearShape& s, const T* x, TaskTensor<const T> weights, TaskTensor<const T> biases, T* y,
                    bool accumulate);
template <class T>
void linear_input_grad(const LinearShape& s, const T* y_grad, TaskTensor<const T> weights, T* x_grad,
                       bool accumulate);
template <class T>
void linear_weight_grad(const LinearShape& s, const T* x, const T* y_grad, TaskTensor<T> weight_grads,
                        TaskTensor<T> bias_grads, bool accumulate);

// ---- losses (cpu/losses.h), per task of n examples ----
// Writes losses[t] = w sum_n loss_n and accuracies[t] = hits / n (either may be null);
// z_grad / z_grad_tangent may be null. example_loss [tasks * n] and example_correct
// [tasks * n] are scratch.
template <class T>
void softmax_cross_entropy(int tasks, int n, int classes, T weight, const T* z, const int32_t* labels, T* z_grad,
                           const T* z_tangent, T* z_grad_tangent, T* example_loss, int32_t* example_correct,
                           T* losses, T* accuracies);
template <class T>
void squared_error(int tasks, int n, int outputs, T weight, const T* z, const T* targets, T* z_grad,
                   const T* z_tangent, T* z_grad_tangent, T* example_loss, T* losses, T* accuracies);

// ---- the inner loop's vector algebra over [tasks, P] ----
// theta_next[t] = theta[t] - alpha * grad[t] (theta_next may be theta itself)
template <class T>
void sgd_step(int tasks, int64_t size, TaskTensor<const T> theta, const T* alpha, const T* grad, T* theta_next);
// out[t] = alpha * v[t]
template <class T>
void scale_by(int tasks, int64_t size, const T* alpha, const T* v, T* out);
// v -= h, elementwise over count values
template <class T>
void subtract_in_place(int64_t count, T* v, const T* h);
// accumulator[i] += sum_t v[t, i], tasks summed in order (as the CPU does)
template <class T>
void sum_over_tasks(int tasks, int64_t size, const T* v, T* accumulator);
// out[t * segments + j] = <a[t], b[t]> over [offsets[j], offsets[j] + sizes[j]) (offsets, sizes on the device)
template <class T>
void segment_dots(int tasks, int64_t size, int segments, const int64_t* offsets, const int64_t* sizes, const T* a,
                  const T* b, T* out);

// ---- inputs from the device-resident uint8 image cache (image_gather.h semantics) ----
// Indices and rotations must be valid (checked on the host before the call).
template <class T>
void gather_images(const uint8_t* pixels, int channels, int height, int width, bool invert, int64_t examples,
                   const int32_t* indices, const uint8_t* rotations, T* out);

}  // namespace cuda
}  // namespace maml
