// The CUDA backend's host files (no CUDA syntax in them: they only call the launchers
// of kernels.cuh and DeviceBuffer) compiled as C++ for maml_cuda_host_emulation; see
// host_emulation.cpp for what that checks and what it cannot.
#include "../cuda_network.cu"
#include "../cuda_meta_learner.cu"
