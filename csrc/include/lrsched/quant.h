// Compressed optimizer state (docs/compressed_state.md), per element, shared by the CPU and CUDA kernels:
//
//   * the int8 / uint8 moment codec (blockwise absmax scales, float32 arithmetic as specified);
//   * compact master weights: a bf16 / fp16 parameter plus an int8 / int16 correction (bit arithmetic);
//   * stochastic rounding of float32 to bf16 from the lowbias32 hash of (index, clock, salt, stream);
//   * param_load / param_store and moment_store / moment_round: the storage policies the kernels call, so
//     a kernel is written once for every (parameter, master, rounding) combination.
//
// Everything here is branch-free per element (selects), so the CPU loops vectorize.
#pragma once

#include <cstdint>
#include <type_traits>

#include "config.h"
#include "convert.h"
#include "layout.h"

namespace lrsched {

/// Marker storage type of int8 first / uint8 second moments with float32 block scales (dtype code DT_I8).
struct q8 {};

// ====================================================================================================
// int8 moments
// ====================================================================================================
/// Largest supported quantization block (the CPU kernels keep one block of float32 values on the stack).
constexpr int64_t kMaxQuantBlock = 4096;

/// Round half to even (rint under the default rounding mode: one instruction on AVX / AVX-512 and on the
/// GPU; the baseline x86-64 build calls the C library, with the same result).
LRS_HD float q_rne(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return __builtin_rintf(x);
#endif
}

/// |x| as float32 bits (an integer whose order is the order of |x|, NaN above inf): block maxima are integer
/// maxima, exact and independent of the reduction order.
LRS_HD uint32_t abs_bits(float x) { return f32_bits(x) & 0x7FFFFFFFu; }
LRS_HD uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

/// Decode multipliers: m = code * (s_m / 127), sqrt(v) = code * (s_v / 255) (one float32 division each).
LRS_HD float q_step_m(float s) { return s / static_cast<float>(layout::Q_M_LEVELS); }
LRS_HD float q_step_v(float s) { return s / static_cast<float>(layout::Q_V_LEVELS); }

/// Encode multipliers 127 / s_m and 255 / s_v (one float32 division per block); 0 for an all-zero block
/// (every code 0) and for a non-finite scale (the block then decodes to NaN from its scale).
LRS_HD float q_recip_m(float s) { return s > 0.0f ? static_cast<float>(layout::Q_M_LEVELS) / s : 0.0f; }
LRS_HD float q_recip_v(float s) { return s > 0.0f ? static_cast<float>(layout::Q_V_LEVELS) / s : 0.0f; }

/// code_m = rne(m * q) in [-127, 127] (NaN, possible only for a block scale too small for 127 / s to be
/// finite, gives 0).
LRS_HD int32_t q_encode_m(float m, float q) {
  float y = q_rne(m * q);
  y = (y == y) ? y : 0.0f;
  y = y < 127.0f ? y : 127.0f;
  y = y > -127.0f ? y : -127.0f;
  return static_cast<int32_t>(y);
}

/// code_v = 0 where r = sqrt(v) == 0, else max(1, rne(r * q)) in [1, 255]: a nonzero v never becomes 0.
/// (Every select in float, one conversion at the end: the CPU loops stay in vector registers.)
LRS_HD int32_t q_encode_v(float r, float q) {
  float y = q_rne(r * q);
  y = (y == y) ? y : 0.0f;
  y = y < 255.0f ? y : 255.0f;
  y = y > 1.0f ? y : 1.0f;
  y = r != 0.0f ? y : 0.0f;
  return static_cast<int32_t>(y);
}

LRS_HD float q_decode_m(int8_t code, float step) { return static_cast<float>(code) * step; }
/// sqrt(v) of a second-moment code; v itself is its square (q_decode_v).
LRS_HD float q_decode_r(uint8_t code, float step) { return static_cast<float>(code) * step; }
/// v of a second-moment code (its square root, where a kernel needs it, is q_decode_r itself).
LRS_HD float q_decode_v(uint8_t code, float step) {
  const float r = q_decode_r(code, step);
  return r * r;
}

/// Block geometry of a tensor of ``numel`` elements with last dimension ``last_dim`` and blocks of ``qb``
/// elements: ``nb`` blocks per row, block j (row-major over rows and blocks) starting at
/// ``(j / nb) * last_dim + (j % nb) * qb`` with ``min(qb, last_dim - (j % nb) * qb)`` elements.
/// (A plain struct with free functions: member functions would have external linkage on the CPU, see
/// config.h.)
struct QuantGeometry {
  int64_t last_dim, qb, nb, blocks;
};

LRS_HD QuantGeometry quant_geometry(int64_t numel, int64_t last_dim, int64_t qb) {
  QuantGeometry q;
  q.last_dim = last_dim > 0 ? last_dim : 1;
  q.qb = qb;
  q.nb = (q.last_dim + qb - 1) / qb;
  q.blocks = numel > 0 ? (numel / q.last_dim) * q.nb : 0;
  return q;
}
LRS_HD int64_t q_block_start(const QuantGeometry& q, int64_t j) { return (j / q.nb) * q.last_dim + (j % q.nb) * q.qb; }
LRS_HD int64_t q_block_length(const QuantGeometry& q, int64_t j) {
  const int64_t rest = q.last_dim - (j % q.nb) * q.qb;
  return rest < q.qb ? rest : q.qb;
}
/// First block starting at or after element ``e`` (``blocks`` if none).
LRS_HD int64_t q_block_at(const QuantGeometry& q, int64_t e) {
  const int64_t j = (e / q.last_dim) * q.nb + (e % q.last_dim + q.qb - 1) / q.qb;
  return j < q.blocks ? j : q.blocks;
}

// ====================================================================================================
// stochastic rounding to bf16
// ====================================================================================================
LRS_HD uint32_t sr_hash(uint32_t x) {
  x ^= x >> 16;
  x *= static_cast<uint32_t>(layout::SR_HASH_M1);
  x ^= x >> 15;
  x *= static_cast<uint32_t>(layout::SR_HASH_M2);
  x ^= x >> 16;
  return x;
}

/// The per-(tensor, stream) part of the seed: clock * K_CLOCK ^ salt * K_SALT ^ stream * K_STREAM (mod 2**32,
/// the clock's and salt's low 32 bits).
LRS_HD uint32_t sr_seed(int64_t clock, int64_t salt, int64_t stream) {
  return (static_cast<uint32_t>(clock) * static_cast<uint32_t>(layout::SR_K_CLOCK)) ^
         (static_cast<uint32_t>(salt) * static_cast<uint32_t>(layout::SR_K_SALT)) ^
         (static_cast<uint32_t>(stream) * static_cast<uint32_t>(layout::SR_K_STREAM));
}

/// The 16 random bits of global element ``index`` (mod 2**32) under ``seed``.
LRS_HD uint32_t sr_bits(uint32_t index, uint32_t seed) {
  return sr_hash((index * static_cast<uint32_t>(layout::SR_K_INDEX)) ^ seed) & 0xFFFFu;
}

/// (bits(x) + r) >> 16, NaN -> the quiet NaN 0x7FC0.
LRS_HD uint16_t f32_to_bf16_sr(float x, uint32_t r) {
  const uint32_t rounded = (f32_bits(x) + r) >> 16;
  return (x != x) ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

/// Where a store rounds stochastically: the element's global index and its stream's seed.
struct SrAt {
  uint32_t index, seed;
};

/// Stores ``x`` as S: stochastically when SR and S is bf16, else to nearest even.
template <bool SR, class S, class T>
LRS_HD void store_rounded(S* dst, T x, SrAt at) {
  if constexpr (SR && std::is_same<S, bf16>::value) {
    dst->bits = f32_to_bf16_sr(x, sr_bits(at.index, at.seed));
  } else {
    (void)at;
    store(dst, x);
  }
}

/// What a later load of ``store_rounded<SR, S>(x)`` gives.
template <bool SR, class S, class T>
LRS_HD T round_stored(T x, SrAt at) {
  S s;
  store_rounded<SR>(&s, x, at);
  return load(s);
}

/// Whether stochastic rounding changes anything for (P, S, master mode): bf16 moments, or bf16 parameters
/// stored without master weights.
template <class P, class S, int64_t MASTER>
LRS_HD constexpr bool sr_applies() {
  return std::is_same<S, bf16>::value || (std::is_same<P, bf16>::value && MASTER == layout::MASTER_NONE);
}

// ====================================================================================================
// compact master weights
// ====================================================================================================
template <int64_t MODE>
struct MasterStorage {
  using type = float;  // MASTER_NONE (unused), MASTER_FP32
};
template <>
struct MasterStorage<layout::MASTER_CORR8> {
  using type = int8_t;
};
template <>
struct MasterStorage<layout::MASTER_CORR16> {
  using type = int16_t;
};
/// Element type of the PTR_MASTER row for a master mode.
template <int64_t MODE>
using master_t = typename MasterStorage<MODE>::type;

/// k of M = from_bits(bits(P) + c * 2**k).
template <class P, int64_t MODE>
LRS_HD constexpr int compact_shift() {
  return MODE == layout::MASTER_CORR16 ? 0
         : std::is_same<P, bf16>::value ? static_cast<int>(layout::MASTER_SHIFT8_BF16)
                                        : static_cast<int>(layout::MASTER_SHIFT8_F16);
}

/// The float32 master weight of a compact pair (uint32 arithmetic on the bit pattern).
template <class P, int64_t MODE>
LRS_HD float compact_decode(P p, master_t<MODE> c) {
  constexpr int k = compact_shift<P, MODE>();
  const uint32_t step = static_cast<uint32_t>(1) << k;
  return f32_from_bits(f32_bits(load(p)) + static_cast<uint32_t>(static_cast<int32_t>(c)) * step);
}

/// rne(d / 2**k) for an integer d (k >= 1), by integer arithmetic.
template <int K>
LRS_HD int32_t rne_shift(int32_t d) {
  const int32_t q = d >> K;  // floor (arithmetic shift)
  const int32_t rem = d & ((1 << K) - 1), half = 1 << (K - 1);
  return q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
}

/// The parameter p = rne16(M) and its correction c (c = 0 for a non-finite M).
template <class P, int64_t MODE>
LRS_HD void compact_encode(float master, P* p, master_t<MODE>* c) {
  P pv;
  store(&pv, master);
  int32_t d = static_cast<int32_t>(f32_bits(master) - f32_bits(load(pv)));
  const bool finite = (f32_bits(master) & 0x7F800000u) != 0x7F800000u;
  int32_t code;
  if constexpr (MODE == layout::MASTER_CORR8) {
    constexpr int k = compact_shift<P, MODE>();
    code = rne_shift<k>(d);
    code = code < 127 ? code : 127;
    code = code > -128 ? code : -128;
  } else if constexpr (std::is_same<P, bf16>::value) {
    // |d| <= 2**15; d = +2**15 only where a tie was rounded down to the even neighbour: take the
    // neighbour up in magnitude instead, so that c = -2**15 fits
    const bool tie_down = d == 32768;
    pv.bits = static_cast<uint16_t>(pv.bits + (tie_down ? 1 : 0));
    code = tie_down ? -32768 : d;
  } else {
    code = d < 32767 ? d : 32767;
    code = code > -32768 ? code : -32768;
  }
  *p = pv;
  *c = static_cast<master_t<MODE>>(finite ? code : 0);
}

// ====================================================================================================
// storage policies
// ====================================================================================================
/// The compute value of element x of a parameter: the parameter itself, its fp32 master, or the compact
/// (parameter, correction) pair, by master mode.
template <class P, int64_t MODE, class T>
LRS_HD T param_load(const P* LRS_RESTRICT p, const master_t<MODE>* LRS_RESTRICT mst, int64_t x) {
  if constexpr (MODE == layout::MASTER_NONE) {
    (void)mst;
    return load(p[x]);
  } else if constexpr (MODE == layout::MASTER_FP32) {
    (void)p;
    return static_cast<T>(mst[x]);
  } else {
    return compact_decode<P, MODE>(p[x], mst[x]);
  }
}

/// Stores the new compute value of element x: the parameter (stochastically rounded when SR applies), or
/// the fp32 master and the parameter rounded to nearest even, or the compact pair.
template <class P, int64_t MODE, bool SR, class T>
LRS_HD void param_store(P* LRS_RESTRICT p, master_t<MODE>* LRS_RESTRICT mst, int64_t x, T value, SrAt at) {
  if constexpr (MODE == layout::MASTER_NONE) {
    (void)mst;
    store_rounded<SR>(&p[x], value, at);
  } else if constexpr (MODE == layout::MASTER_FP32) {
    (void)at;
    mst[x] = static_cast<float>(value);
    store(&p[x], value);
  } else {
    (void)at;
    compact_encode<P, MODE>(value, &p[x], &mst[x]);
  }
}

}  // namespace lrsched
