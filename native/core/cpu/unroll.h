// MAML_UNROLL(n): GCC's "#pragma GCC unroll n", which the register-tiled kernels need so
// that their accumulator arrays become registers. nvcc compiles these headers too (the
// CUDA backend's host code) and warns on the pragma, so it expands to nothing there.
#pragma once

#define MAML_PRAGMA(text) _Pragma(#text)
#if defined(__CUDACC__)
#define MAML_UNROLL(n)
#else
#define MAML_UNROLL(n) MAML_PRAGMA(GCC unroll n)
#endif
