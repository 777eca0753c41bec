// CUDA device discovery, error checking and an owning device buffer: the few runtime
// pieces every other file of the CUDA backend leans on.
//
// Plain C++ (no CUDA syntax), so host-only code (the addon, the parity test) can include
// it; the definitions live in device.cu.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace maml {
namespace cuda {

// Number of usable CUDA devices; 0 when the runtime or driver says there are none (for
// example error 35, "CUDA driver version is insufficient", on machines without a GPU),
// with the runtime's reason in *error when given.
int cuda_device_count(std::string* error = nullptr);

// --device auto|cpu|cuda -> "cpu" or "cuda". auto picks CUDA when a device answers;
// cuda with no device throws, naming the runtime's reason and what to do instead.
std::string resolve_device(const std::string& requested);

// One line about device 0: name, compute capability, memory.
std::string describe_device(int device = 0);

// Throws std::runtime_error("<call> failed at file:line: <CUDA error string>") when
// status (a cudaError_t, passed as int to keep this header free of CUDA types) is not 0.
void throw_on_error(int status, const char* call, const char* file, int line);

// Bytes of device memory in use right now (total - free, cudaMemGetInfo).
size_t device_memory_used();

void* device_allocate(size_t bytes);
void device_free(void* pointer) noexcept;
void copy_to_device(void* device, const void* host, size_t bytes);
void copy_to_host(void* host, const void* device, size_t bytes);
void copy_on_device(void* to, const void* from, size_t bytes);
void fill_zero(void* device, size_t bytes);
void synchronize();

// An owning, movable array of T in device memory; grows (never shrinks) with reserve.
// Contents are not kept across a reallocation: callers size buffers before filling them.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { reserve(count); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept { swap(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    swap(other);
    return *this;
  }
  ~DeviceBuffer() { device_free(data_); }

  void reserve(size_t count) {
    if (count <= capacity_) return;
    device_free(data_);
    data_ = nullptr;
    capacity_ = 0;
    data_ = static_cast<T*>(device_allocate(count * sizeof(T)));
    capacity_ = count;
  }
  void upload(const T* host, size_t count) {
    reserve(count);
    if (count) copy_to_device(data_, host, count * sizeof(T));
  }
  void download(T* host, size_t count) const {
    if (count > capacity_) throw std::logic_error("DeviceBuffer::download: more values asked than the buffer holds");
    if (count) copy_to_host(host, data_, count * sizeof(T));
  }
  void zero(size_t count) {
    reserve(count);
    if (count) fill_zero(data_, count * sizeof(T));
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t capacity() const { return capacity_; }
  size_t bytes() const { return capacity_ * sizeof(T); }

 private:
  void swap(DeviceBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(capacity_, other.capacity_);
  }
  T* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace cuda
}  // namespace maml

#define MAML_CUDA_CHECK(call) ::maml::cuda::throw_on_error(static_cast<int>(call), #call, __FILE__, __LINE__)
