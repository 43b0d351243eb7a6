// Part of the per-ISA kernels (kernels_impl.h): a native vector of parameters loaded and stored by storage
// mode (quant.h param_load / param_store, round to nearest even), so the int8-moment loops run on vectors for
// bf16 parameters too: without master weights, with fp32 masters, and with int8 / int16 compact corrections.
// Every lane does quant.h's scalar bit arithmetic, so the values and the bits stored are the scalar path's.
#pragma once

#include "kernel_common.h"

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

/// convert.h f32_to_bf16 lane by lane, as 32-bit lanes: round to nearest even by bits, NaN -> 0x7FC0.
LRS_VINLINE vu bf16_bits_rne(vf x) {
  const vu u = reinterpret_cast<vu>(x);
  const vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return x != x ? vu{} + 0x7FC0u : rounded;
}

/// Stores kVec 32-bit lanes, each in the range of the 16-bit type H, as H (signed: int16; else bf16 bits
/// < 2**16). AVX2 narrows with a saturating pack (exact in range); AVX-512 and the rest convert.
template <class H>
LRS_VINLINE void store_narrow16(H* LRS_RESTRICT dst, vi x) {
  static_assert(sizeof(H) == 2, "16-bit storage");
#if defined(__AVX2__) && !defined(__AVX512F__)
  const __m256i w = reinterpret_cast<__m256i>(x);
  const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                   std::is_signed<H>::value ? _mm_packs_epi32(lo, hi) : _mm_packus_epi32(lo, hi));
#else
  const vh h = __builtin_convertvector(reinterpret_cast<vu>(x), vh);
  __builtin_memcpy(dst, &h, sizeof h);
#endif
}

/// Finite lanes of x (exponent not all ones), as a lane mask.
LRS_VINLINE vi finite_mask(vf x) { return (reinterpret_cast<vi>(x) & 0x7F800000) != 0x7F800000; }

/// quant.h compact_decode for bf16: from_bits(bits(p) + c * 2**k), c the correction widened to int32.
template <int K>
LRS_VINLINE vf compact_decode_vf(const bf16* LRS_RESTRICT p, vi c) {
  return reinterpret_cast<vf>(reinterpret_cast<vu>(load_vf(p)) + reinterpret_cast<vu>(c * (1 << K)));
}

/// kVec int8 / int16 corrections widened to int32 (one sign-extending load on AVX-512 and AVX2: GCC 12
/// lowers the generic int8 conversion an element at a time).
template <class C>
LRS_VINLINE vi load_corr(const C* LRS_RESTRICT src) {
  static_assert(std::is_same<C, int8_t>::value || std::is_same<C, int16_t>::value, "int8 / int16 corrections");
  constexpr bool is8 = std::is_same<C, int8_t>::value;
#if defined(__AVX512F__)
  if constexpr (is8)
    return reinterpret_cast<vi>(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
  else
    return reinterpret_cast<vi>(_mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))));
#elif defined(__AVX2__)
  if constexpr (is8)
    return reinterpret_cast<vi>(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src))));
  else
    return reinterpret_cast<vi>(_mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
#else
  typedef C vc __attribute__((vector_size(kVec * sizeof(C))));
  vc c;
  __builtin_memcpy(&c, src, sizeof c);
  return __builtin_convertvector(c, vi);
#endif
}

/// quant.h compact_encode for bf16, lane by lane: the parameter's bits (rne16 of the master, low halves) and
/// the correction (0 where the master is not finite).
template <int64_t MODE>
LRS_VINLINE void compact_encode_vf(vf master, vu& pbits, vi& code) {
  pbits = bf16_bits_rne(master);
  const vu u = reinterpret_cast<vu>(master);
  if constexpr (MODE == layout::MASTER_CORR8) {
    // rne_shift<k>(d) for d = u - (pbits << 16): pbits << 16 is a multiple of 2**(k+1), so d's low k + 1
    // bits (the remainder and the parity of the quotient) are u's, and the quotient drops by pbits << (16 -
    // k): rne(u / 2**k) by the bias trick of f32_to_bf16, minus pbits << (16 - k). (|d| <= 2**15, so the
    // code is in [-128, 128]; a finite u leaves room for the bias.)
    constexpr int k = static_cast<int>(layout::MASTER_SHIFT8_BF16);
    const vu q = (u + ((1u << (k - 1)) - 1u) + ((u >> k) & 1u)) >> k;
    code = reinterpret_cast<vi>(q - (pbits << (16 - k)));
    code = code < 127 ? code : vi{} + 127;
  } else {
    const vi d = reinterpret_cast<vi>(u - (pbits << 16));
    const vi tie_down = d == 32768;  // (quant.h: the neighbour up in magnitude, so c = -2**15 fits)
    pbits = pbits - reinterpret_cast<vu>(tie_down);
    code = tie_down ? vi{} - 32768 : d;
  }
  code = finite_mask(master) ? code : vi{};
}

/// Stores kVec int8 / int16 corrections (in range).
template <class C>
LRS_VINLINE void store_corr(C* LRS_RESTRICT dst, vi c) {
  if constexpr (std::is_same<C, int8_t>::value) store_codes(dst, c);
  else store_narrow16(dst, c);
}

/// param_load of elements [x, x + kVec): fp32 parameters, or bf16 ones by master mode.
template <class P, int64_t MODE>
LRS_VINLINE vf param_load_vf(const P* LRS_RESTRICT p, const master_t<MODE>* LRS_RESTRICT mst, int64_t x) {
  if constexpr (std::is_same<P, float>::value) {
    static_assert(MODE == layout::MASTER_NONE, "fp32 parameters have no master weights");
    return load_vf(p + x);
  } else {
    static_assert(std::is_same<P, bf16>::value, "fp32 or bf16 parameters");
    if constexpr (MODE == layout::MASTER_NONE) return load_vf(p + x);
    else if constexpr (MODE == layout::MASTER_FP32) return load_vf(mst + x);
    else if constexpr (MODE == layout::MASTER_CORR8)
      return compact_decode_vf<static_cast<int>(layout::MASTER_SHIFT8_BF16)>(p + x, load_corr(mst + x));
    else return compact_decode_vf<0>(p + x, load_corr(mst + x));
  }
}

/// param_store of elements [x, x + kVec), round to nearest even (no stochastic rounding).
template <class P, int64_t MODE>
LRS_VINLINE void param_store_vf(P* LRS_RESTRICT p, master_t<MODE>* LRS_RESTRICT mst, int64_t x, vf value) {
  if constexpr (std::is_same<P, float>::value) {
    store_vf(p + x, value);
  } else if constexpr (MODE == layout::MASTER_NONE) {
    store_narrow16(p + x, reinterpret_cast<vi>(bf16_bits_rne(value)));
  } else if constexpr (MODE == layout::MASTER_FP32) {
    store_vf(mst + x, value);
    store_narrow16(p + x, reinterpret_cast<vi>(bf16_bits_rne(value)));
  } else {
    vu pbits;
    vi code;
    compact_encode_vf<MODE>(value, pbits, code);
    store_narrow16(p + x, reinterpret_cast<vi>(pbits));
    store_corr(mst + x, code);
  }
}

/// Whether the int8-moment kernels' loops on native vectors of parameters take (P, master mode) without
/// stochastic rounding: fp32 parameters, and bf16 ones in every master mode on AVX2 and AVX-512 (on the
/// SSE2 baseline, whose 16-bit lanes GCC narrows and widens an element at a time, they made the bf16 int8
/// AdamW step 20% slower than the per-element loop; Xeon, 2026-12-07). (LAMB's update from a stored u stays
/// per element: GCC vectorizes that loop itself, and a vector version was 3-7% slower.)
template <class P, int64_t MODE, bool SR>
constexpr bool vector_params() {
  if constexpr (SR) return false;
  else if constexpr (std::is_same<P, float>::value) return MODE == layout::MASTER_NONE;
  else return std::is_same<P, bf16>::value && kVec >= 8;
}

}  // namespace
}  // namespace LRS_ISA_NS
}  // namespace cpu
}  // namespace lrsched
