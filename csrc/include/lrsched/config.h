// Portability macros shared by the CPU (g++/clang++) and CUDA (nvcc) builds.
//
// Every function in these headers has internal linkage on the CPU (`static inline`): the CPU extension
// compiles the same headers into several translation units with different instruction sets (baseline
// x86-64, AVX2, AVX-512), and an external-linkage inline function would be merged by the linker into one
// copy of unknown ISA (an AVX-512 body could then run on a CPU without AVX-512).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LRS_HD __host__ __device__ __forceinline__
#else
#define LRS_HD static inline
#endif

#if defined(__CUDACC__) || defined(__GNUC__) || defined(__clang__)
#define LRS_RESTRICT __restrict__
#else
#define LRS_RESTRICT
#endif
