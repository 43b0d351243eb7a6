// Part of the per-ISA kernels (kernels_impl.h): AdamW over floating moments and over int8 moments, with the
// gradient-norm partials accumulated while the gradient is in cache, and the gradient-norm pass alone
// (for a skipped step, which updates nothing).
#pragma once

#include <lrsched/adamw.h>
#include <lrsched/quant.h>

#include "kernel_common.h"
#include "kernel_param_vec.h"

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

// ====================================================================================================
// floating moments
// ====================================================================================================
template <class P, class S, int64_t MODE, bool AMS, bool SR>
void adamw_range(P* LRS_RESTRICT p, const P* LRS_RESTRICT g, S* LRS_RESTRICT m, S* LRS_RESTRICT v,
                 S* LRS_RESTRICT vmax, master_t<MODE>* LRS_RESTRICT mst, int64_t b, int64_t e,
                 const AdamWCoeffs<compute_t<P>> c, const Seeds sd) {
  using T = compute_t<P>;
  for (int64_t j = b; j < e; ++j) {
    T pj = param_load<P, MODE, T>(p, mst, j);
    T mj = load(m[j]), vj = load(v[j]);
    T xj = T(0);
    if constexpr (AMS) xj = load(vmax[j]);
    adamw_element<AMS>(pj, load(g[j]), mj, vj, xj, c);
    store_rounded<SR>(&m[j], mj, at(sd.m, sd, j));
    store_rounded<SR>(&v[j], vj, at(sd.v, sd, j));
    if constexpr (AMS) store(&vmax[j], xj);
    param_store<P, MODE, SR>(p, mst, j, pj, at(sd.p, sd, j));
  }
}

/// fp32 params and moments, no amsgrad, with the gradient-norm lanes: adamw_element's operations in the same
/// order on a native vector at a time (so the same bits), the lanes summing g^2 and |g| in registers, where
/// the divisions and square roots hide them (a pass of their own cost ~5% of the kernel).
inline void adamw_f32_gn(float* LRS_RESTRICT p, const float* LRS_RESTRICT g, float* LRS_RESTRICT m,
                         float* LRS_RESTRICT v, int64_t b, int64_t e, const AdamWCoeffs<float> c,
                         double* LRS_RESTRICT acc_sq, double* LRS_RESTRICT acc_abs) {
  for (int64_t s = b; s < e; s += kSub) {
    const int64_t end = min64(s + kSub, e);
    Lanes16 sq = {}, ab = {};
    int64_t j = s;
    for (; j + kLanes <= end; j += kLanes) {
      for (int q = 0; q < kParts; ++q) {
        const int64_t x = j + q * kVec;
        vf pj = load_vf(p + x), mj = load_vf(m + x), vj = load_vf(v + x);
        const vf gj = load_vf(g + x);
        sq.v[q] += gj * gj;
        ab.v[q] += abs_vf(gj);
        const vf gs = gj * c.gmul;
        pj = pj * c.decay;
        mj = mj + (gs - mj) * c.omb1;
        vj = vj * c.beta2 + c.omb2 * gs * gs;
        const vf denom = sqrt_vf(vj) / c.bc2_sqrt + c.eps;
        pj = pj - c.step_size * mj / denom;
        store_vf(m + x, mj);
        store_vf(v + x, vj);
        store_vf(p + x, pj);
      }
    }
    for (int l = 0; j < end; ++j, ++l) {
      const float gj = g[j];
      add_to_lane(sq, l, gj * gj);
      add_to_lane(ab, l, gj < 0.0f ? -gj : gj);
      float xj = 0.0f;
      adamw_element<false>(p[j], gj, m[j], v[j], xj, c);
    }
    fold_lanes(sq, acc_sq);
    fold_lanes(ab, acc_abs);
  }
}

template <class P, class S, int64_t MODE, bool AMS, bool SR>
void adamw_tensor(const Work& w, int64_t i, int64_t kb, int64_t kend, const AdamWCoeffs<compute_t<P>>& c) {
  const TensorPtrs<P, S, MODE> t(*w.tt, i);
  const Seeds sd = seeds_of(w, i);
  for_chunks(w, i, kb, kend, [&](int64_t k, int64_t cb, int64_t ce) {
    if (!w.gnorm) {
      adamw_range<P, S, MODE, AMS, SR>(t.p, t.g, t.m, t.v, t.vmax, t.mst, cb, ce, c, sd);
      return;
    }
    GnormAcc acc;
    if constexpr (std::is_same<P, float>::value && std::is_same<S, float>::value && !AMS) {
      adamw_f32_gn(t.p, t.g, t.m, t.v, cb, ce, c, acc.sq, acc.ab);
    } else {
      for (int64_t s = cb; s < ce; s += kGnormPiece) {  // the piece's gradient is still in cache
        const int64_t e = min64(s + kGnormPiece, ce);
        adamw_range<P, S, MODE, AMS, SR>(t.p, t.g, t.m, t.v, t.vmax, t.mst, s, e, c, sd);
        gnorm_range(t.g, s, e, acc.sq, acc.ab);
      }
    }
    acc.flush(w, k);
  });
}

// ====================================================================================================
// int8 moments: per block, decode, update (the parameter from the fresh moments), encode
// ====================================================================================================
/// One element of an int8 AdamW block's first pass, after decoding: the moments and the parameter step
/// (adamw_moments, sqrt, adamw_apply_q), m and r = sqrt(v) into the block's scratch, and the block maxima of
/// |m| and r as float bits.
LRS_VINLINE void adamw_q_element(float& p, float g, float m, float v, const AdamWCoeffs<float>& c, float& mb,
                                 float& rb, uint32_t& xm, uint32_t& xv) {
  adamw_moments(p, g, m, v, c);
  const float r = sqrt_rn(v);
  adamw_apply_q(p, m, r, c);
  mb = m;
  rb = r;
  xm = max_u32(xm, abs_bits(m));
  xv = max_u32(xv, abs_bits(r));
}

/// A block whose first pass is done and whose codes are still to be written: its fresh m and sqrt(v) in
/// scratch, its scales and encode multipliers, where its codes go.
struct EncodeJob {
  const float* mb = nullptr;
  const float* rb = nullptr;
  int8_t* cm = nullptr;
  uint8_t* cv = nullptr;
  int64_t len = -1;  // -1: none
  float sm = 0.0f, sv = 0.0f, qm = 0.0f, qv = 0.0f;
};

/// Writes the codes of ``job`` (if any) on their own and clears it.
LRS_VINLINE void flush_encode(EncodeJob& job) {
  if (job.len >= 0) encode_block(job.mb, job.rb, job.len, job.sm, job.sv, job.qm, job.qv, job.cm, job.cv);
  job.len = -1;
}

/// The first pass of adamw_q_block for the parameters of vector_params (fp32; bf16 with any master mode,
/// their gradients of the same type), a native vector at a time: the parameters loaded and stored by
/// kernel_param_vec.h, the same operations in the same order (the same bits), the codes widened straight to
/// float (GCC's vectorization of the scalar loop went through 16-bit halves, two loads and extracts per
/// code vector) and, with GN, the gradient-norm lanes summed from g as it is loaded (in the encoder's lanes
/// and folds: lane l of a kSub sub-block from the block start sums its elements j % 16 == l), so the encoder
/// does not read g again. Returns the block's absmax bits of m and sqrt(v) in xm / xv. Along the way: ENC,
/// the codes of ``prev`` (a block of the same length, a multiple of kCodeGroup, with finite scales) at the
/// same offsets, 64 at a time; and the prefetches of ``pf``, one group of 16 elements per iteration.
/// UNIT_GMUL: the gradient multiplier is 1 (no grad scale, not maximizing), whose product is left out
/// (x * 1 is x, signed zeros and NaN payloads included, a signalling NaN aside).
template <class P, int64_t MODE, bool GN, bool ENC, bool UNIT_GMUL, class PF>
void adamw_q_pass1_vec(P* LRS_RESTRICT p, const P* LRS_RESTRICT g, master_t<MODE>* LRS_RESTRICT mst,
                       const int8_t* LRS_RESTRICT cm, const uint8_t* LRS_RESTRICT cv, float* LRS_RESTRICT mb,
                       float* LRS_RESTRICT rb, int64_t s, int64_t len, float dm, float dv, const AdamWCoeffs<float> c,
                       double* LRS_RESTRICT acc_sq, double* LRS_RESTRICT acc_abs, uint32_t& xm_out,
                       uint32_t& xv_out, const EncodeJob& prev, const PF& pf) {
  vu xm = {}, xv = {};
  Lanes16 sq = {}, ab = {};
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    prefetch_group(pf, j);
    for (int q = 0; q < kParts; ++q) {
      const int64_t o = j + q * kVec, x = s + o;
      vf mj, vj, g0;
      load_moments_vf<GN>(cm, cv, g, x, dm, dv, q, mj, vj, g0, sq, ab);
      vf pj = param_load_vf<P, MODE>(p, mst, x);
      const vf gj = UNIT_GMUL ? g0 : g0 * c.gmul;  // adamw_moments
      pj = pj * c.decay;
      mj = mj + (gj - mj) * c.omb1;
      vj = vj * c.beta2 + c.omb2 * gj * gj;
      const vf rj = sqrt_vf(vj);
      const vf denom = rj * c.inv_bc2_sqrt + c.eps;  // adamw_apply_q
      pj = pj - c.step_size * mj / denom;
      store_vf(mb + o, mj);
      store_vf(rb + o, rj);
      max_bits_vf(mj, rj, xm, xv);
      param_store_vf<P, MODE>(p, mst, x, pj);
    }
    if constexpr (ENC) {  // the previous block's codes at the last 64 offsets
      const int64_t o = j + kLanes - kCodeGroup;
      if ((j + kLanes) % kCodeGroup == 0)
        encode64_absmax(prev.mb + o, prev.rb + o, prev.qm, prev.qv, prev.cm + o, prev.cv + o);
    }
    if constexpr (GN) {
      if ((j + kLanes) % kSub == 0) {
        fold_lanes(sq, acc_sq);
        fold_lanes(ab, acc_abs);
      }
    }
  }
  prefetch_rest(pf, j);
  uint32_t sm = max_lane(xm), sv = max_lane(xv);
  for (; j < len; ++j) {
    const int64_t x = s + j;
    float pj = param_load<P, MODE, float>(p, mst, x);
    float mj = q_decode_m(cm[x], dm), vj = q_decode_v(cv[x], dv);
    const float gj = load(g[x]);
    if constexpr (GN) {
      add_gnorm_lane(sq, ab, j, gj);
      if ((j + 1) % kSub == 0) {
        fold_lanes(sq, acc_sq);
        fold_lanes(ab, acc_abs);
      }
    }
    adamw_q_element(pj, gj, mj, vj, c, mb[j], rb[j], sm, sv);
    param_store<P, MODE, false>(p, mst, x, pj, SrAt{});
  }
  if constexpr (GN) {
    if (len % kSub != 0) {
      fold_lanes(sq, acc_sq);
      fold_lanes(ab, acc_abs);
    }
  }
  xm_out = sm;
  xv_out = sv;
}

/// One quantization block [s, s + len): mb / rb receive the fresh m and sqrt(v) (scratch of the caller).
/// GN: also the gradient-norm lanes, added while encoding (from g itself, or from gb for 16-bit gradients).
template <class P, int64_t MODE, bool SR, bool GN>
void adamw_q_block(P* LRS_RESTRICT p, const P* LRS_RESTRICT g, int8_t* LRS_RESTRICT cm, uint8_t* LRS_RESTRICT cv,
                   master_t<MODE>* LRS_RESTRICT mst, float* LRS_RESTRICT mb, float* LRS_RESTRICT rb,
                   float* LRS_RESTRICT gb, int64_t s, int64_t len, float* LRS_RESTRICT scale_m,
                   float* LRS_RESTRICT scale_v, const AdamWCoeffs<float> c, const Seeds sd, double* acc_sq,
                   double* acc_abs) {
  constexpr bool float_grads = std::is_same<P, float>::value;
  const float dm = q_step_m(*scale_m), dv = q_step_v(*scale_v);
  uint32_t xm = 0, xv = 0;
  for (int64_t j = 0; j < len; ++j) {
    const int64_t x = s + j;
    float pj = param_load<P, MODE, float>(p, mst, x);
    float mj = q_decode_m(cm[x], dm), vj = q_decode_v(cv[x], dv);
    const float gj = load(g[x]);
    if constexpr (GN && !float_grads) gb[j] = gj;
    adamw_q_element(pj, gj, mj, vj, c, mb[j], rb[j], xm, xv);
    param_store<P, MODE, SR>(p, mst, x, pj, at(sd.p, sd, x));
  }
  const float sm = f32_from_bits(xm), sv = f32_from_bits(xv);
  const float qm = q_recip_m(sm), qv = q_recip_v(sv);
  if constexpr (GN) {
    const float* gf;
    if constexpr (float_grads) gf = reinterpret_cast<const float*>(g) + s;
    else gf = gb;
    encode_block<true>(mb, rb, len, sm, sv, qm, qv, cm + s, cv + s, gf, acc_sq, acc_abs);
  } else {
    encode_block(mb, rb, len, sm, sv, qm, qv, cm + s, cv + s);
  }
  *scale_m = sm;
  *scale_v = sv;
}

/// adamw_q_tensor for the parameters of vector_params: block b's first pass runs together with the
/// encoding of block b - 1 (when both have the same length, a multiple of kCodeGroup, and b - 1 finite
/// scales; else b - 1 is encoded on its own first), so the block's loads keep streaming while the codes are
/// written, and the prefetches of the block kPrefetchElems ahead are spread over the pass (SpreadPrefetch).
/// The kernel is memory-bound per core on the Xeon: the separate encoding pass and the burst of prefetches
/// at each block's start left the memory system idle in between (bench/RESULTS.md, 2026-12-06). Each
/// block's codes and scales, and the parameters and masters stored, are exactly adamw_q_block's
/// (tests/test_cpu_int8_bits.py). bf16 parameters: 1.15-1.33x faster than adamw_q_block (bench/RESULTS.md).
template <class P, int64_t MODE, bool GN, bool UNIT_GMUL>
void adamw_q_tensor_vec(const Work& w, int64_t i, int64_t kb, int64_t kend, const AdamWCoeffs<float>& c) {
  const TensorPtrs<P, q8, MODE> t(*w.tt, i);
  alignas(64) float mb[2][kMaxQuantBlock];
  alignas(64) float rb[2][kMaxQuantBlock];
  for_chunks(w, i, kb, kend, [&](int64_t k, int64_t, int64_t) {
    GnormAcc acc;
    EncodeJob prev;
    int cur = 0;
    for_blocks(w, i, k, [&](int64_t j, int64_t s, int64_t len) {
      const auto pf = spread_prefetch(t, s, len, w.tt->numel[i], w.prefetch);
      const float dm = q_step_m(t.sm[j]), dv = q_step_v(t.sv[j]);
      uint32_t xm, xv;
      const bool fuse =
          prev.len == len && len % kCodeGroup == 0 && encodable(prev.sm, prev.sv, prev.qm, prev.qv);
      if (fuse) {
        adamw_q_pass1_vec<P, MODE, GN, true, UNIT_GMUL>(t.p, t.g, t.mst, t.m, t.v, mb[cur], rb[cur], s, len, dm, dv, c,
                                                        acc.sq, acc.ab, xm, xv, prev, pf);
      } else {
        flush_encode(prev);
        adamw_q_pass1_vec<P, MODE, GN, false, UNIT_GMUL>(t.p, t.g, t.mst, t.m, t.v, mb[cur], rb[cur], s, len, dm, dv,
                                                         c, acc.sq, acc.ab, xm, xv, prev, pf);
      }
      const float sm = f32_from_bits(xm), sv = f32_from_bits(xv);
      t.sm[j] = sm;
      t.sv[j] = sv;
      prev = EncodeJob{mb[cur], rb[cur], t.m + s, t.v + s, len, sm, sv, q_recip_m(sm), q_recip_v(sv)};
      cur ^= 1;
    });
    flush_encode(prev);
    acc.flush(w, k);
  });
}

template <class P, int64_t MODE, bool SR>
void adamw_q_tensor(const Work& w, int64_t i, int64_t kb, int64_t kend, const AdamWCoeffs<float>& c) {
  if constexpr (vector_params<P, MODE, SR>()) {
    const bool unit = c.gmul == 1.0f;  // no grad scale, not maximizing
    if (w.gnorm) {
      if (unit) adamw_q_tensor_vec<P, MODE, true, true>(w, i, kb, kend, c);
      else adamw_q_tensor_vec<P, MODE, true, false>(w, i, kb, kend, c);
    } else {
      if (unit) adamw_q_tensor_vec<P, MODE, false, true>(w, i, kb, kend, c);
      else adamw_q_tensor_vec<P, MODE, false, false>(w, i, kb, kend, c);
    }
    return;
  }
  const TensorPtrs<P, q8, MODE> t(*w.tt, i);
  const Seeds sd = seeds_of(w, i);
  alignas(64) float mb[kMaxQuantBlock];
  alignas(64) float rb[kMaxQuantBlock];
  alignas(64) float gb[std::is_same<P, float>::value ? 1 : kMaxQuantBlock];
  for_chunks(w, i, kb, kend, [&](int64_t k, int64_t, int64_t) {
    GnormAcc acc;
    for_blocks(w, i, k, [&](int64_t j, int64_t s, int64_t len) {
      prefetch_ahead(t, s, len, w.tt->numel[i], w.prefetch);
      if (w.gnorm)
        adamw_q_block<P, MODE, SR, true>(t.p, t.g, t.m, t.v, t.mst, mb, rb, gb, s, len, t.sm + j, t.sv + j, c, sd,
                                         acc.sq, acc.ab);
      else
        adamw_q_block<P, MODE, SR, false>(t.p, t.g, t.m, t.v, t.mst, mb, rb, gb, s, len, t.sm + j, t.sv + j, c, sd,
                                          nullptr, nullptr);
    });
    acc.flush(w, k);
  });
}

// ====================================================================================================
// the driver of one dtype combination
// ====================================================================================================
template <class P, class S, int64_t MODE, bool AMS, bool SR>
void adamw_typed(const Work& w, const void* coeffs_v) {
  using T = compute_t<P>;
  const TensorTable& tt = *w.tt;
  const AdamWCoeffs<T>* coeffs = static_cast<const AdamWCoeffs<T>*>(coeffs_v);
#pragma omp parallel num_threads(w.threads)
  {
    int64_t k0, k1;
    thread_chunks(w, 0, tt.n, omp_get_thread_num(), omp_get_num_threads(), &k0, &k1);
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t, int64_t, int64_t kb, int64_t kend) {
      if constexpr (is_q8<S>()) adamw_q_tensor<P, MODE, SR>(w, i, kb, kend, coeffs[i]);
      else adamw_tensor<P, S, MODE, AMS, SR>(w, i, kb, kend, coeffs[i]);
    });
  }
}

template <class P, class S, int64_t MODE>
void adamw_entry_typed(const Work& w, const void* coeffs, bool ams) {
  constexpr bool can_sr = sr_applies<P, S, MODE>();
  const bool sr = can_sr && w.tt->stochastic_rounding;
  if constexpr (is_q8<S>()) {  // no amsgrad for int8 moments (refused by the Python side)
    if (sr) adamw_typed<P, S, MODE, false, can_sr>(w, coeffs);
    else adamw_typed<P, S, MODE, false, false>(w, coeffs);
  } else {
    if (ams) {
      if (sr) adamw_typed<P, S, MODE, true, can_sr>(w, coeffs);
      else adamw_typed<P, S, MODE, true, false>(w, coeffs);
    } else {
      if (sr) adamw_typed<P, S, MODE, false, can_sr>(w, coeffs);
      else adamw_typed<P, S, MODE, false, false>(w, coeffs);
    }
  }
}

// ====================================================================================================
// the gradient-norm partials alone (a skipped AdamW step)
// ====================================================================================================
template <class P>
void gnorm_typed(const Work& w) {
  const TensorTable& tt = *w.tt;
#pragma omp parallel num_threads(w.threads)
  {
    int64_t k0, k1;
    thread_chunks(w, 0, tt.n, omp_get_thread_num(), omp_get_num_threads(), &k0, &k1);
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t, int64_t, int64_t kb, int64_t kend) {
      const P* g = static_cast<const P*>(tt.grad[i]);
      for_chunks(w, i, kb, kend, [&](int64_t k, int64_t cb, int64_t ce) {
        GnormAcc acc;
        gnorm_range(g, cb, ce, acc.sq, acc.ab);
        acc.flush(w, k);
      });
    });
  }
}

}  // namespace
}  // namespace LRS_ISA_NS
}  // namespace cpu
}  // namespace lrsched
