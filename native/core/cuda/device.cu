#include "device.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <string>

namespace maml {
namespace cuda {

void throw_on_error(int status, const char* call, const char* file, int line) {
  if (status == 0) return;
  const cudaError_t error = static_cast<cudaError_t>(status);
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                           cudaGetErrorName(error) + " (" + std::to_string(status) + "): " +
                           cudaGetErrorString(error));
}

int cuda_device_count(std::string* error) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (error)
      *error = std::string(cudaGetErrorName(status)) + " (" + std::to_string(int(status)) + "): " +
               cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (count == 0 && error) *error = "the CUDA runtime found no device";
  return count;
}

std::string resolve_device(const std::string& requested) {
  if (requested == "cpu") return "cpu";
  if (requested != "auto" && requested != "cuda")
    throw std::invalid_argument("device '" + requested + "': expected auto, cpu or cuda");
  std::string why;
  const int count = cuda_device_count(&why);
  if (count > 0) return "cuda";
  if (requested == "auto") return "cpu";
  throw std::runtime_error("--device cuda was asked for, but no CUDA device answers (" + why +
                           "); use --device cpu, or --device auto to fall back to the CPU");
}

std::string describe_device(int device) {
  cudaDeviceProp p;
  MAML_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  char line[512];
  std::snprintf(line, sizeof line, "%s (compute capability %d.%d, %d multiprocessors, %.1f GiB)", p.name, p.major,
                p.minor, p.multiProcessorCount, double(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return line;
}

size_t device_memory_used() {
  size_t free_bytes = 0, total_bytes = 0;
  MAML_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return total_bytes - free_bytes;
}

void* device_allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("cudaMalloc of " + std::to_string(bytes) + " bytes failed: " +
                             cudaGetErrorString(status) + " (use fewer tasks per meta-batch or a smaller workspace)");
  }
  return p;
}

void device_free(void* pointer) noexcept {
  if (pointer) cudaFree(pointer);
}

void copy_to_device(void* device, const void* host, size_t bytes) {
  MAML_CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* host, const void* device, size_t bytes) {
  MAML_CUDA_CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
}
void copy_on_device(void* to, const void* from, size_t bytes) {
  MAML_CUDA_CHECK(cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToDevice, 0));
}
void fill_zero(void* device, size_t bytes) { MAML_CUDA_CHECK(cudaMemsetAsync(device, 0, bytes, 0)); }
void synchronize() { MAML_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace cuda
}  // namespace maml
