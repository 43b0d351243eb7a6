// Storage types and conversions to the compute type (float, or double for float64 parameters).
//
// bf16 -> f32 is exact (shift); f32 -> bf16 rounds to nearest even by bits, as torch does (NaN -> 0x7FC0).
// fp16 uses the compiler's _Float16 on the CPU (F16C instructions where the ISA has them) and cuda_fp16
// intrinsics on the GPU; both round to nearest even.
#pragma once

#include <cstdint>

#include "config.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace lrsched {

/// bfloat16 storage (the raw 16 bits).
struct bf16 {
  uint16_t bits;
};
/// IEEE half storage (the raw 16 bits).
struct f16 {
  uint16_t bits;
};

LRS_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  return u;
#endif
}

LRS_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
#endif
}

LRS_HD float bf16_to_f32(uint16_t b) { return f32_from_bits(static_cast<uint32_t>(b) << 16); }

/// Round to nearest even by bits (torch's c10::BFloat16 rule; NaN becomes the quiet NaN 0x7FC0).
LRS_HD uint16_t f32_to_bf16(float x) {
  const uint32_t u = f32_bits(x);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (x != x) ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

#if defined(__CUDACC__)
LRS_HD float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
LRS_HD uint16_t f32_to_f16(float x) { return __half_as_ushort(__float2half_rn(x)); }
#else
LRS_HD float f16_to_f32(uint16_t h) {
  _Float16 v;
  __builtin_memcpy(&v, &h, sizeof v);
  return static_cast<float>(v);
}
LRS_HD uint16_t f32_to_f16(float x) {
  const _Float16 v = static_cast<_Float16>(x);
  uint16_t h;
  __builtin_memcpy(&h, &v, sizeof h);
  return h;
}
#endif

// --- load: storage -> compute ------------------------------------------------------------------------
LRS_HD float load(float x) { return x; }
LRS_HD double load(double x) { return x; }
LRS_HD float load(bf16 x) { return bf16_to_f32(x.bits); }
LRS_HD float load(f16 x) { return f16_to_f32(x.bits); }

// --- store: compute -> storage (round to nearest even) -----------------------------------------------
LRS_HD void store(float* dst, float x) { *dst = x; }
LRS_HD void store(double* dst, double x) { *dst = x; }
LRS_HD void store(bf16* dst, float x) { dst->bits = f32_to_bf16(x); }
LRS_HD void store(f16* dst, float x) { dst->bits = f32_to_f16(x); }

/// ``x`` rounded to the storage type ``S`` and read back (what a later load of the stored value gives).
template <class S, class T>
LRS_HD T round_trip(T x) {
  S s;
  store(&s, x);
  return load(s);
}

LRS_HD float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return __builtin_sqrtf(x);
#endif
}
LRS_HD double sqrt_rn(double x) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(x);
#else
  return __builtin_sqrt(x);
#endif
}

}  // namespace lrsched
