// Part of the per-ISA kernels (kernels_impl.h): the fixed-lane reductions, the gradient-norm lanes, the
// iteration over chunks and the per-tensor pointers and seeds. Everything has internal linkage inside the
// ISA's namespace (LRS_ISA_NS, defined by kernels_<isa>.cpp).
//
// Reductions use GCC/Clang vector extensions with a fixed 16-lane layout, so their order of operations -
// and with -ffp-contract=off every result bit - is the same for every ISA and every thread count:
//   * work is cut into fixed chunks (work.h: kChunkElems elements, or whole quantization blocks);
//   * inside a chunk, lane l of a sub-block of at most kSub elements sums the elements j with j % 16 == l
//     (float), each sub-block's lanes are added into 16 double accumulators, which are summed in lane order;
//     with int8 moments the sub-blocks start at each quantization block;
//   * a tensor's (or the bucket's) sum adds its chunks' partial sums in chunk order (double).
#pragma once

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <type_traits>

#include <lrsched/convert.h>
#include <lrsched/layout.h>
#include <lrsched/quant.h>

#include "work.h"

#if !defined(LRS_ISA_NS)
#error "define LRS_ISA_NS before including the kernel headers"
#endif

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

template <class P>
using compute_t = typename std::conditional<std::is_same<P, double>::value, double, float>::type;

constexpr int kLanes = 16;
constexpr int64_t kSub = 512;

// The 16 float lanes are kParts native vectors of kVec lanes (AVX-512: one zmm; AVX2: two ymm; baseline
// x86-64: four xmm), lane q * kVec + l of the 16 being lane l of part q: every lane adds the same elements
// in the same order on every ISA. (A 64-byte vector type on AVX2 is what GCC lowers through the stack,
// with store-forwarding stalls on every element: the AVX2 build of the fp32 AdamW kernel ran 5x slower
// than the AVX-512 one, and slower than the SSE2 baseline; measured 2026-12-06 on AMD Zen 4.)
#if defined(__AVX512F__)
constexpr int kVec = 16;
#elif defined(__AVX2__)
constexpr int kVec = 8;
#else
constexpr int kVec = 4;
#endif
constexpr int kParts = kLanes / kVec;
static_assert(kParts * kVec == kLanes, "the native vector must divide the 16 lanes");

typedef float vf __attribute__((vector_size(kVec * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kVec * sizeof(int32_t))));
/// Double lanes: the same register width, half the lanes (kVecD), twice the parts.
constexpr int kVecD = kVec / 2;
constexpr int kPartsD = kLanes / kVecD;
typedef double vd __attribute__((vector_size(kVecD * sizeof(double))));
typedef int64_t vl __attribute__((vector_size(kVecD * sizeof(int64_t))));

#define LRS_VINLINE __attribute__((always_inline)) inline

LRS_VINLINE vf load_vf(const float* x) {
  vf v;
  __builtin_memcpy(&v, x, sizeof v);
  return v;
}
LRS_VINLINE void store_vf(float* x, vf v) { __builtin_memcpy(x, &v, sizeof v); }
LRS_VINLINE vf abs_vf(vf v) { return reinterpret_cast<vf>(reinterpret_cast<vi>(v) & 0x7FFFFFFF); }
LRS_VINLINE vf splat_vf(float x) { return vf{} + x; }

/// sqrt on the lanes of a native vector (IEEE: the same bits on every instruction set).
LRS_VINLINE vf sqrt_vf(vf x) {
#if defined(__AVX512F__)  // (the zero-masked form: GCC 12's _mm512_sqrt_ps warns of an uninitialized operand)
  return reinterpret_cast<vf>(_mm512_maskz_sqrt_ps(static_cast<__mmask16>(0xFFFF), reinterpret_cast<__m512>(x)));
#elif defined(__AVX2__)
  return reinterpret_cast<vf>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#elif defined(__SSE2__)
  return reinterpret_cast<vf>(_mm_sqrt_ps(reinterpret_cast<__m128>(x)));
#else
  for (int l = 0; l < kVec; ++l) x[l] = __builtin_sqrtf(x[l]);
  return x;
#endif
}

/// Stores the kVec codes of ``k`` as bytes: int8 (``k`` in [-127, 127]) or uint8 (``k`` in [0, 255]). AVX2
/// and SSE2 have no 32-to-8-bit narrowing (GCC lowers the generic conversion to a byte at a time), so they
/// pack with saturation, which the ranges make exact.
template <class B>
LRS_VINLINE void store_codes(B* LRS_RESTRICT dst, vi k) {
  static_assert(std::is_same<B, int8_t>::value || std::is_same<B, uint8_t>::value, "codes are bytes");
#if defined(__AVX512F__) || !defined(__SSE2__)
  typedef B vb __attribute__((vector_size(kVec)));
  const vb bytes = __builtin_convertvector(k, vb);
  __builtin_memcpy(dst, &bytes, sizeof bytes);
#elif defined(__AVX2__)
  const __m256i w = reinterpret_cast<__m256i>(k);
  const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
  const __m128i b = std::is_same<B, int8_t>::value ? _mm_packs_epi16(h, h) : _mm_packus_epi16(h, h);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), b);
#else
  const __m128i w = reinterpret_cast<__m128i>(k);
  const __m128i h = _mm_packs_epi32(w, w);
  const __m128i b = std::is_same<B, int8_t>::value ? _mm_packs_epi16(h, h) : _mm_packus_epi16(h, h);
  const int32_t four = _mm_cvtsi128_si32(b);
  __builtin_memcpy(dst, &four, sizeof four);
#endif
}

/// 16 float lanes (kParts native vectors).
struct Lanes16 {
  vf v[kParts];
};

/// lanes[l] += x for the lane l of an element outside the vector loops (l = its index % 16).
LRS_VINLINE void add_to_lane(Lanes16& lanes, int l, float x) { lanes.v[l / kVec][l % kVec] += x; }

/// The gradient-norm lanes of element j outside the vector loops: g^2 and |g| into lane j % 16.
LRS_VINLINE void add_gnorm_lane(Lanes16& sq, Lanes16& ab, int64_t j, float g) {
  const int l = static_cast<int>(j % kLanes);
  add_to_lane(sq, l, g * g);
  add_to_lane(ab, l, g < 0.0f ? -g : g);
}

/// acc[l] += lanes[l] in double, l = 0..15, and the lanes cleared.
LRS_VINLINE void fold_lanes(Lanes16& x, double* LRS_RESTRICT acc) {
  for (int q = 0; q < kParts; ++q) {
    for (int l = 0; l < kVec; ++l) acc[q * kVec + l] += static_cast<double>(x.v[q][l]);
    x.v[q] = vf{};
  }
}

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/// Sum of lanes in a fixed order (pairwise over lane indices).
inline double lane_total(const double* lanes) {
  double l8[8], l4[4];
  for (int i = 0; i < 8; ++i) l8[i] = lanes[i] + lanes[i + 8];
  for (int i = 0; i < 4; ++i) l4[i] = l8[i] + l8[i + 4];
  return (l4[0] + l4[2]) + (l4[1] + l4[3]);
}

/// acc[l] += sum of x[j]^2 over j % 16 == l, j < len16 (len16 a multiple of 16; x 16-float blocks).
inline void add_squares(const float* x, int64_t len16, double* acc) {
  Lanes16 s = {};
  for (int64_t j = 0; j < len16; j += kLanes) {
    for (int q = 0; q < kParts; ++q) {
      const vf v = load_vf(x + j + q * kVec);
      s.v[q] += v * v;
    }
  }
  fold_lanes(s, acc);
}

inline void add_squares(const double* x, int64_t len16, double* acc) {
  vd sq[kPartsD];
  __builtin_memcpy(sq, acc, sizeof sq);
  for (int64_t j = 0; j < len16; j += kLanes) {
    for (int q = 0; q < kPartsD; ++q) {
      vd v;
      __builtin_memcpy(&v, x + j + q * kVecD, sizeof v);
      sq[q] += v * v;
    }
  }
  __builtin_memcpy(acc, sq, sizeof sq);
}

/// add_squares of two arrays in one pass (the same lanes, the same bits).
inline void add_squares2(const float* x, const float* y, int64_t len16, double* acc_x, double* acc_y) {
  Lanes16 sx = {}, sy = {};
  for (int64_t j = 0; j < len16; j += kLanes) {
    for (int q = 0; q < kParts; ++q) {
      const vf a = load_vf(x + j + q * kVec), b = load_vf(y + j + q * kVec);
      sx.v[q] += a * a;
      sy.v[q] += b * b;
    }
  }
  fold_lanes(sx, acc_x);
  fold_lanes(sy, acc_y);
}

inline void add_squares2(const double* x, const double* y, int64_t len16, double* acc_x, double* acc_y) {
  add_squares(x, len16, acc_x);
  add_squares(y, len16, acc_y);
}

/// The same lanes for the sums of x^2 and |x| in one pass (float lanes folded into double, or double lanes).
inline void add_sq_abs(const float* x, int64_t len16, double* acc_sq, double* acc_abs) {
  Lanes16 sq = {}, ab = {};
  for (int64_t j = 0; j < len16; j += kLanes) {
    for (int q = 0; q < kParts; ++q) {
      const vf v = load_vf(x + j + q * kVec);
      sq.v[q] += v * v;
      ab.v[q] += abs_vf(v);
    }
  }
  fold_lanes(sq, acc_sq);
  fold_lanes(ab, acc_abs);
}

inline void add_sq_abs(const double* x, int64_t len16, double* acc_sq, double* acc_abs) {
  vd sq[kPartsD], ab[kPartsD];
  __builtin_memcpy(sq, acc_sq, sizeof sq);
  __builtin_memcpy(ab, acc_abs, sizeof ab);
  for (int64_t j = 0; j < len16; j += kLanes) {
    for (int q = 0; q < kPartsD; ++q) {
      vd v;
      __builtin_memcpy(&v, x + j + q * kVecD, sizeof v);
      sq[q] += v * v;
      ab[q] += reinterpret_cast<vd>(reinterpret_cast<vl>(v) & 0x7FFFFFFFFFFFFFFFll);
    }
  }
  __builtin_memcpy(acc_sq, sq, sizeof sq);
  __builtin_memcpy(acc_abs, ab, sizeof ab);
}

/// Elements an update kernel processes before it adds their gradient-norm lanes (then g is read again from
/// L1/L2; a whole chunk would have left L2).
constexpr int64_t kGnormPiece = 8 * kSub;

/// Gradient-norm lanes of g[b, e) in sub-blocks of kSub from b: sums of g^2 and |g| of the raw gradient in
/// the compute type (the driver scales the totals by 1 / grad_scale in double). Float gradients are read in
/// place.
template <class P>
inline void gnorm_range(const P* LRS_RESTRICT g, int64_t b, int64_t e, double* LRS_RESTRICT acc_sq,
                        double* LRS_RESTRICT acc_abs) {
  using T = compute_t<P>;
  alignas(64) T buf[kSub];
  for (int64_t s = b; s < e; s += kSub) {
    const int64_t len = min64(kSub, e - s), len16 = (len + kLanes - 1) / kLanes * kLanes;
    const T* src = buf;
    if (std::is_same<P, T>::value && len == len16) {
      src = reinterpret_cast<const T*>(g + s);
    } else {
      for (int64_t j = 0; j < len; ++j) buf[j] = load(g[s + j]);
      for (int64_t j = len; j < len16; ++j) buf[j] = T(0);
    }
    add_sq_abs(src, len16, acc_sq, acc_abs);
  }
}

typedef uint32_t vu __attribute__((vector_size(kVec * sizeof(uint32_t))));

/// |x| as float32 bits, lane by lane (abs_bits).
LRS_VINLINE vu abs_bits_vf(vf x) { return reinterpret_cast<vu>(x) & 0x7FFFFFFFu; }

/// kVec codes widened to float: int8 first-moment codes (sign-extended) or uint8 second-moment codes. (One
/// widening load on AVX-512 and AVX2; GCC 12 lowers the generic byte-to-int conversion a byte at a time.)
template <class B>
LRS_VINLINE vf load_codes_vf(const B* LRS_RESTRICT src) {
  constexpr bool is_signed = std::is_same<B, int8_t>::value;
  static_assert(is_signed || std::is_same<B, uint8_t>::value, "codes are bytes");
#if defined(__AVX512F__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  const __m512i k = is_signed ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
  return reinterpret_cast<vf>(_mm512_cvtepi32_ps(k));
#elif defined(__AVX2__)
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
  const __m256i k = is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
  return reinterpret_cast<vf>(_mm256_cvtepi32_ps(k));
#else
  vf out;
  for (int l = 0; l < kVec; ++l) out[l] = static_cast<float>(src[l]);
  return out;
#endif
}

typedef uint16_t vh __attribute__((vector_size(kVec * sizeof(uint16_t))));

/// kVec bf16 values widened to float (bits << 16).
LRS_VINLINE vf load_vf(const bf16* x) {
  vh h;
  __builtin_memcpy(&h, x, sizeof h);
  return reinterpret_cast<vf>(__builtin_convertvector(h, vu) << 16);
}

/// The first steps of an int8 moment loop at elements [x, x + kVec), part q of the 16 lanes: m and v decoded
/// from their codes (quant.h q_decode_m / q_decode_v, widened in registers) and the gradient g0 loaded; with
/// GN, its square and magnitude added to lane part q of the gradient-norm lanes.
template <bool GN, class G>
LRS_VINLINE void load_moments_vf(const int8_t* LRS_RESTRICT cm, const uint8_t* LRS_RESTRICT cv,
                                 const G* LRS_RESTRICT g, int64_t x, float dm, float dv, int q, vf& m, vf& v,
                                 vf& g0, Lanes16& sq, Lanes16& ab) {
  m = load_codes_vf(cm + x) * dm;
  const vf r0 = load_codes_vf(cv + x) * dv;
  v = r0 * r0;
  g0 = load_vf(g + x);
  if constexpr (GN) {
    sq.v[q] += g0 * g0;
    ab.v[q] += abs_vf(g0);
  }
}

/// The block maxima so far: xm / xv take the lane-wise maxima of |m| and r as float bits (abs_bits).
LRS_VINLINE void max_bits_vf(vf m, vf r, vu& xm, vu& xv) {
  const vu am = abs_bits_vf(m), av = abs_bits_vf(r);
  xm = am > xm ? am : xm;
  xv = av > xv ? av : xv;
}

/// The largest lane of x.
LRS_VINLINE uint32_t max_lane(vu x) {
  uint32_t out = 0;
  for (int l = 0; l < kVec; ++l) out = max_u32(out, x[l]);
  return out;
}

/// The int32 codes of a native vector of fresh m and r = sqrt(v) of a block with finite scales and finite
/// reciprocals qm = 127 / s_m, qv = 255 / s_v (quant.h q_encode_m / q_encode_v, bit for bit; see
/// encode_block).
LRS_VINLINE void encode_vf(vf m, vf r, float qm, float qv, vi& km, vi& kv) {
  const vf magic = splat_vf(12582912.0f);
  const vi magic_bits = reinterpret_cast<vi>(magic);
  vf y = m * qm;
  y = y < splat_vf(127.0f) ? y : splat_vf(127.0f);
  y = y > splat_vf(-127.0f) ? y : splat_vf(-127.0f);
  km = reinterpret_cast<vi>(y + magic) - magic_bits;
  vf z = r * qv;
  z = z < splat_vf(255.0f) ? z : splat_vf(255.0f);
  z = z > splat_vf(1.0f) ? z : splat_vf(1.0f);
  kv = reinterpret_cast<vi>(z + magic) - magic_bits;
  kv = r != vf{} ? kv : vi{};
}

/// encode_vf for a block whose scales are the absmax of exactly the values encoded (s_m = max |m|, s_v =
/// max r over the block, both finite, and finite reciprocals): then |m * qm| <= 127 * (1 + 2^-24)^2 and
/// r * qv <= 255 * (1 + 2^-24)^2, which round to nearest even to at most 127 and 255, so the upper clamps
/// (and m's lower one) cannot change a code and are left out. The same codes as encode_vf.
LRS_VINLINE void encode_vf_absmax(vf m, vf r, float qm, float qv, vi& km, vi& kv) {
  const vf magic = splat_vf(12582912.0f);
  const vi magic_bits = reinterpret_cast<vi>(magic);
  km = reinterpret_cast<vi>(m * qm + magic) - magic_bits;
  vf z = r * qv;
#if defined(__AVX512F__)  // vmaxps is exactly z > 1 ? z : 1 (GCC 12 emits a compare and a blend)
  z = reinterpret_cast<vf>(_mm512_max_ps(reinterpret_cast<__m512>(z), _mm512_set1_ps(1.0f)));
#else
  z = z > splat_vf(1.0f) ? z : splat_vf(1.0f);
#endif
  kv = reinterpret_cast<vi>(z + magic) - magic_bits;
  kv = r != vf{} ? kv : vi{};
}

constexpr int64_t kCodeGroup = 64;

/// Codes of 64 consecutive elements (encode_vf_absmax) into cm / cv. AVX-512 narrows the four vectors of each
/// with two saturating packs and one permutation (4 shuffles where vpmovdb takes 8; the ranges make the
/// saturation exact); other ISAs store_codes a vector at a time.
LRS_VINLINE void encode64_absmax(const float* LRS_RESTRICT mb, const float* LRS_RESTRICT rb, float qm, float qv,
                                 int8_t* LRS_RESTRICT cm, uint8_t* LRS_RESTRICT cv) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  static_assert(kVec == 16, "AVX-512 vectors");
  vi km[4], kv[4];
  for (int q = 0; q < 4; ++q) encode_vf_absmax(load_vf(mb + 16 * q), load_vf(rb + 16 * q), qm, qv, km[q], kv[q]);
  // packs work within 128-bit lanes: lane L of the packed bytes holds k0[4L..4L+3], k1[..], k2[..], k3[..];
  // dword d of the output (elements 4d..4d+3, from k_{d/4}[4(d%4)..]) is dword 4 * (d % 4) + d / 4 of it
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  auto as_i = [](vi x) { return reinterpret_cast<__m512i>(x); };
  const __m512i m_lo = _mm512_packs_epi32(as_i(km[0]), as_i(km[1]));
  const __m512i m_hi = _mm512_packs_epi32(as_i(km[2]), as_i(km[3]));
  const __m512i v_lo = _mm512_packs_epi32(as_i(kv[0]), as_i(kv[1]));
  const __m512i v_hi = _mm512_packs_epi32(as_i(kv[2]), as_i(kv[3]));
  _mm512_storeu_si512(cm, _mm512_permutexvar_epi32(order, _mm512_packs_epi16(m_lo, m_hi)));
  _mm512_storeu_si512(cv, _mm512_permutexvar_epi32(order, _mm512_packus_epi16(v_lo, v_hi)));
#else
  for (int64_t o = 0; o < kCodeGroup; o += kVec) {
    vi km, kv;
    encode_vf_absmax(load_vf(mb + o), load_vf(rb + o), qm, qv, km, kv);
    store_codes(cm + o, km);
    store_codes(cv + o, kv);
  }
#endif
}

/// Part q (elements [x, x + kVec) of a block) of the vector encoder: the codes into cm / cv and, as int32, into
/// km / kv; with GN the gradient gf's squares and magnitudes into the gradient-norm lanes q of sq / ab.
template <bool GN>
LRS_VINLINE void encode_part(const float* LRS_RESTRICT mb, const float* LRS_RESTRICT rb, int64_t x, float qm,
                             float qv, int8_t* LRS_RESTRICT cm, uint8_t* LRS_RESTRICT cv,
                             const float* LRS_RESTRICT gf, Lanes16& sq, Lanes16& ab, int q, vi& km, vi& kv) {
  encode_vf(load_vf(mb + x), load_vf(rb + x), qm, qv, km, kv);
  store_codes(cm + x, km);
  store_codes(cv + x, kv);
  if constexpr (GN) {
    const vf gv = load_vf(gf + x);
    sq.v[q] += gv * gv;
    ab.v[q] += abs_vf(gv);
  }
}

/// The scalar encoder's element j (outside the vector loop, or of a block whose scale is not finite): its
/// codes into cm / cv and, with GN, the gradient gf's square and magnitude into lane j % 16 of sq / ab.
template <bool GN>
LRS_VINLINE void encode_one(const float* LRS_RESTRICT mb, const float* LRS_RESTRICT rb, int64_t j, float qm, float qv,
                            int8_t* LRS_RESTRICT cm, uint8_t* LRS_RESTRICT cv, const float* LRS_RESTRICT gf,
                            Lanes16& sq, Lanes16& ab) {
  cm[j] = static_cast<int8_t>(q_encode_m(mb[j], qm));
  cv[j] = static_cast<uint8_t>(q_encode_v(rb[j], qv));
  if constexpr (GN) add_gnorm_lane(sq, ab, j, gf[j]);
}

/// Whether a block's scales and reciprocals are finite (the vector encoder's condition; else the scalar
/// q_encode_m / q_encode_v).
inline bool encodable(float sm, float sv, float qm, float qv) {
  const float big = 3.0e38f;  // finite: |x| <= big excludes inf and NaN
  return sm <= big && sv <= big && qm <= big && qv <= big;
}

/// The codes of one quantization block from its fresh m and sqrt(v) (quant.h q_encode_m / q_encode_v, bit
/// for bit), a native vector at a time (the compiler's own vectorization of the selects and the narrowing
/// to bytes spent most of its time moving masks). With a finite scale and a finite 127 / s no product is
/// NaN, so the codes are clamped first and then rounded to nearest even by adding 1.5 * 2**23: the integer
/// is the difference of the bit patterns (clamping before rounding gives the same codes). Blocks with a
/// non-finite scale or reciprocal take the scalar path.
template <bool GN = false>
inline void encode_block(const float* LRS_RESTRICT mb, const float* LRS_RESTRICT rb, int64_t len, float sm, float sv,
                         float qm, float qv, int8_t* LRS_RESTRICT cm, uint8_t* LRS_RESTRICT cv,
                         const float* LRS_RESTRICT gf = nullptr, double* LRS_RESTRICT acc_sq = nullptr,
                         double* LRS_RESTRICT acc_abs = nullptr) {
  // GN: the gradient-norm lanes of the block's gradient gf (lane l: elements j % 16 == l, folded into the
  // double lanes after every kSub elements and at the end), in this loop rather than a pass of their own
  Lanes16 sq = {}, ab = {};
  auto fold = [&]() {
    fold_lanes(sq, acc_sq);
    fold_lanes(ab, acc_abs);
  };
  int64_t j = 0;
  if (encodable(sm, sv, qm, qv)) {
    for (; j + kLanes <= len; j += kLanes) {
      for (int q = 0; q < kParts; ++q) {
        vi km, kv;
        encode_part<GN>(mb, rb, j + q * kVec, qm, qv, cm, cv, gf, sq, ab, q, km, kv);
      }
      if constexpr (GN) {
        if ((j + kLanes) % kSub == 0) fold();
      }
    }
  }
  for (; j < len; ++j) {
    encode_one<GN>(mb, rb, j, qm, qv, cm, cv, gf, sq, ab);
    if constexpr (GN) {
      if ((j + 1) % kSub == 0) fold();
    }
  }
  if constexpr (GN) {
    if (len % kSub != 0) fold();
  }
}

/// Per-chunk gradient-norm accumulators; ``flush`` writes chunk k's partials (if the work wants them).
struct GnormAcc {
  double sq[kLanes] = {}, ab[kLanes] = {};
  void flush(const Work& w, int64_t k) const {
    if (!w.gnorm) return;
    w.gnorm[layout::GN_COLS * k + layout::GN_SUMSQ] = lane_total(sq);
    w.gnorm[layout::GN_COLS * k + layout::GN_SUMABS] = lane_total(ab);
  }
};

/// Calls fn(i, b, e, kb, kend) for each tensor i touched by global chunks [k0, k1), with [b, e) the element
/// range of those chunks inside tensor i (consecutive chunks of one tensor are merged) and [kb, kend) the
/// chunks.
template <class Fn>
inline void for_tensor_ranges(const Work& w, int64_t k0, int64_t k1, Fn&& fn) {
  if (k0 >= k1) return;
  int64_t i = tensor_of_chunk(w, k0);
  int64_t k = k0;
  while (k < k1) {
    while (w.chunk_off[i + 1] <= k) ++i;
    const int64_t kend = min64(k1, w.chunk_off[i + 1]);
    fn(i, chunk_begin(*w.tt, i, k - w.chunk_off[i]), chunk_begin(*w.tt, i, kend - w.chunk_off[i]), k, kend);
    k = kend;
  }
}

/// for_tensor_ranges in reverse: the tensors of chunks [k0, k1) last first, each with the same arguments.
template <class Fn>
inline void for_tensor_ranges_last_first(const Work& w, int64_t k0, int64_t k1, Fn&& fn) {
  if (k0 >= k1) return;
  int64_t i = tensor_of_chunk(w, k1 - 1);
  int64_t k = k1;
  while (k > k0) {
    while (w.chunk_off[i] >= k) --i;  // the tensor of chunk k - 1 (empty tensors own no chunk)
    const int64_t kb = w.chunk_off[i] > k0 ? w.chunk_off[i] : k0;
    fn(i, chunk_begin(*w.tt, i, kb - w.chunk_off[i]), chunk_begin(*w.tt, i, k - w.chunk_off[i]), kb, k);
    k = kb;
  }
}

/// Calls fn(k, cb, ce) for the global chunks k in [kb, kend) of tensor i, [cb, ce) the chunk's elements.
template <class Fn>
inline void for_chunks(const Work& w, int64_t i, int64_t kb, int64_t kend, Fn&& fn) {
  int64_t cb = chunk_begin(*w.tt, i, kb - w.chunk_off[i]);
  for (int64_t k = kb; k < kend; ++k) {
    const int64_t ce = chunk_begin(*w.tt, i, k + 1 - w.chunk_off[i]);
    fn(k, cb, ce);
    cb = ce;
  }
}

/// Calls fn(j, s, len) for the quantization blocks of global chunk k of tensor i: block j of the tensor
/// (its scale index) at elements [s, s + len).
template <class Fn>
inline void for_blocks(const Work& w, int64_t i, int64_t k, Fn&& fn) {
  const QuantGeometry q = quant_geometry(w.tt->numel[i], last_dim_of(*w.tt, i), w.tt->quant_block);
  const int64_t per = kChunkElems / q.qb;
  const int64_t j0 = (k - w.chunk_off[i]) * per, j1 = min64(j0 + per, q.blocks);
  for (int64_t j = j0; j < j1; ++j) fn(j, q_block_start(q, j), q_block_length(q, j));
}

/// The stochastic-rounding seeds of tensor i (quant.h): its global offset and one seed per stream.
struct Seeds {
  uint32_t off, p, m, v;
};

inline Seeds seeds_of(const Work& w, int64_t i) {
  const int64_t salt = salt_of(*w.tt, i);
  return Seeds{static_cast<uint32_t>(offset_of(*w.tt, i)), sr_seed(w.clock32, salt, layout::SR_STREAM_PARAM),
               sr_seed(w.clock32, salt, layout::SR_STREAM_EXP_AVG),
               sr_seed(w.clock32, salt, layout::SR_STREAM_EXP_AVG_SQ)};
}

inline SrAt at(uint32_t seed, const Seeds& sd, int64_t x) { return SrAt{sd.off + static_cast<uint32_t>(x), seed}; }

/// Element types of the moments: S for floating states, int8 / uint8 codes for q8.
template <class S>
struct MomentTypes {
  using M = S;
  using V = S;
};
template <>
struct MomentTypes<q8> {
  using M = int8_t;
  using V = uint8_t;
};

/// Tensor i's pointers, typed.
template <class P, class S, int64_t MODE>
struct TensorPtrs {
  using M = typename MomentTypes<S>::M;
  using V = typename MomentTypes<S>::V;
  P* p;
  const P* g;
  M* m;
  V* v;
  M* vmax;
  master_t<MODE>* mst;
  float* sm;
  float* sv;

  TensorPtrs(const TensorTable& tt, int64_t i)
      : p(static_cast<P*>(tt.param[i])), g(static_cast<const P*>(tt.grad[i])), m(static_cast<M*>(tt.exp_avg[i])),
        v(static_cast<V*>(tt.exp_avg_sq[i])),
        vmax(tt.max_exp_avg_sq ? static_cast<M*>(tt.max_exp_avg_sq[i]) : nullptr),
        mst(MODE != layout::MASTER_NONE ? static_cast<master_t<MODE>*>(tt.master[i]) : nullptr),
        sm(tt.exp_avg_scale ? tt.exp_avg_scale[i] : nullptr),
        sv(tt.exp_avg_sq_scale ? tt.exp_avg_sq_scale[i] : nullptr) {}
};

/// Elements ahead of the current quantization block whose cache lines the int8 kernels prefetch: their loops
/// alternate between streaming a block and encoding it from L1, and on Intel the hardware prefetchers alone
/// left ~8% of the time waiting (Xeon, 20M and 60M params, 2 threads). On AMD Zen 4 the same prefetches made
/// the int8 AdamW step 11-13% and the int8 LAMB step 15% slower, as did every subset of the streams tried
/// (read hints only, the fp32 streams only, the code streams only, twice the distance), so the driver turns
/// them off there (Work::prefetch; bench/RESULTS.md).
constexpr int64_t kPrefetchElems = 1024;

template <class T>
inline void prefetch_lines(const T* base, int64_t b, int64_t e, bool write) {
  constexpr int64_t step = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t x = b; x < e; x += step) {
    if (write) __builtin_prefetch(base + x, 1, 3);
    else __builtin_prefetch(base + x, 0, 3);
  }
}

/// Prefetches tensor t's elements [s + kPrefetchElems, s + kPrefetchElems + len) (clamped to its numel)
/// when ``on``.
template <class P, class S, int64_t MODE>
inline void prefetch_ahead(const TensorPtrs<P, S, MODE>& t, int64_t s, int64_t len, int64_t numel, bool on) {
  if (!on) return;
  const int64_t b = s + kPrefetchElems, e = min64(b + len, numel);
  prefetch_lines(t.p, b, e, true);
  prefetch_lines(t.g, b, e, false);
  prefetch_lines(t.m, b, e, true);
  prefetch_lines(t.v, b, e, true);
  if constexpr (MODE != layout::MASTER_NONE) prefetch_lines(t.mst, b, e, true);
  // a function of prefetches alone looks side-effect free to GCC's IPA, which then drops its calls
  __asm__ __volatile__("");
}

/// The prefetches of prefetch_ahead for int8 / uint8 codes with parameters and gradients of type P (and
/// master weights of type M when HAS_M), spread over a loop of the block, one group of 16 elements at a time,
/// instead of issued in one burst at its start: the burst filled the line-fill buffers and stalled at the
/// block's start, and the memory system then idled while the block was encoded from L1 (the kernels are
/// memory-bound per core on the Xeon). Issued from the loop that reads no memory (LAMB's encoder) or along
/// the block's one pass (AdamW), they keep the loads in flight: int8 AdamW ~14% and int8 LAMB ~9% faster on
/// the Xeon (bench/RESULTS.md).
template <class P, class M = float, bool HAS_M = false>
struct SpreadPrefetchT {
  const P* p = nullptr;
  const P* g = nullptr;  // (null: no gradient stream)
  const int8_t* m = nullptr;
  const uint8_t* v = nullptr;
  const M* mst = nullptr;
  int64_t n = 0;  // elements to prefetch from each stream (0: none)
};
/// fp32 parameters, no master weights.
using SpreadPrefetch = SpreadPrefetchT<float>;

/// The spread prefetches of the block [s, s + len) of tensor t: the block kPrefetchElems ahead (clamped to
/// numel), or none when ``on`` is false.
template <class P, int64_t MODE>
inline SpreadPrefetchT<P, master_t<MODE>, MODE != layout::MASTER_NONE> spread_prefetch(
    const TensorPtrs<P, q8, MODE>& t, int64_t s, int64_t len, int64_t numel, bool on) {
  SpreadPrefetchT<P, master_t<MODE>, MODE != layout::MASTER_NONE> pf;
  const int64_t b = s + kPrefetchElems, e = min64(b + len, numel);
  if (!on || e <= b) return pf;
  pf.p = t.p + b;
  pf.g = t.g + b;
  pf.m = t.m + b;
  pf.v = t.v + b;
  if constexpr (MODE != layout::MASTER_NONE) pf.mst = t.mst + b;
  pf.n = e - b;
  return pf;
}

/// The prefetches of elements [j, j + 16) of the plan (j a multiple of 16): the lines of each stream that
/// start there (one line of a 4-byte stream per group, of a 2-byte stream every 32 elements, of a code
/// stream every 64).
template <class P, class M, bool HAS_M>
LRS_VINLINE void prefetch_group(const SpreadPrefetchT<P, M, HAS_M>& pf, int64_t j) {
  if (j >= pf.n) return;
  constexpr int64_t line_p = 64 / static_cast<int64_t>(sizeof(P));
  if (line_p <= kLanes || j % line_p == 0) {
    __builtin_prefetch(pf.p + j, 1, 3);
    if (pf.g) __builtin_prefetch(pf.g + j, 0, 3);
  }
  if (j % 64 == 0) {
    __builtin_prefetch(pf.m + j, 1, 3);
    __builtin_prefetch(pf.v + j, 1, 3);
  }
  if constexpr (HAS_M) {
    constexpr int64_t line_m = 64 / static_cast<int64_t>(sizeof(M));
    if (line_m <= kLanes || j % line_m == 0) __builtin_prefetch(pf.mst + j, 1, 3);
  }
}

/// The plan's prefetches from element j on (after a loop that stopped short of the block's end, or on a
/// path that issued none).
template <class P, class M, bool HAS_M>
inline void prefetch_rest(const SpreadPrefetchT<P, M, HAS_M>& pf, int64_t j) {
  for (j = j / kLanes * kLanes; j < pf.n; j += kLanes) prefetch_group(pf, j);
  __asm__ __volatile__("");  // (as prefetch_ahead's)
}

template <class S>
constexpr bool is_q8() {
  return std::is_same<S, q8>::value;
}

}  // namespace
}  // namespace LRS_ISA_NS
}  // namespace cpu
}  // namespace lrsched
