// Part of the per-ISA kernels (kernels_impl.h): LAMB's two stages, per element range (floating moments) and
// per quantization block (int8 moments), and their driver (Lamb: fused, sharded stage 1, stage 2).
//
// Stage 1 forms u from the moments as stored (lamb.h): floating moments rounded to S, int8 moments encoded
// and decoded. Stage 2 applies p = w - lr * ratio * u with u read back from the scratch buffer, or rebuilt:
// floating moments from the gradient and the old moments (stage 1 then wrote nothing), int8 moments by
// decoding the codes stage 1 stored. Every path gives the same bits.
#pragma once

#include <lrsched/lamb.h>
#include <lrsched/quant.h>

#include "kernel_common.h"
#include "kernel_param_vec.h"

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

/// Adds the squares of w and u of one sub-block (len <= kSub values in wbuf / ubuf) to the lanes.
template <class T>
inline void add_wu(T* wbuf, T* ubuf, int64_t len, double* acc_w, double* acc_u) {
  const int64_t len16 = (len + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = len; j < len16; ++j) wbuf[j] = ubuf[j] = T(0);
  add_squares2(wbuf, ubuf, len16, acc_w, acc_u);
}

// ====================================================================================================
// floating moments
// ====================================================================================================
/// Stage 1 over elements [b, e) of one tensor: the new moments as stored, w and u, the sums of w^2 and u^2
/// (and of the gradient-norm lanes) added into 16 double lanes each. STORE: also write the moments and u
/// (into u_out); otherwise nothing is written (stage 2 then recomputes everything).
template <class P, class S, int64_t MODE, bool SR, bool STORE>
void lamb_pass1(const P* LRS_RESTRICT p, const P* LRS_RESTRICT g, S* LRS_RESTRICT m, S* LRS_RESTRICT v,
                const master_t<MODE>* LRS_RESTRICT mst, compute_t<P>* LRS_RESTRICT u_out, int64_t b, int64_t e,
                const LambCoeffs<compute_t<P>> c, const Seeds sd, double* LRS_RESTRICT acc_w,
                double* LRS_RESTRICT acc_u, GnormAcc* gn) {
  using T = compute_t<P>;
  alignas(64) T wbuf[kSub];
  alignas(64) T ubuf[kSub];
  for (int64_t s = b; s < e; s += kSub) {
    const int64_t len = min64(kSub, e - s);
    for (int64_t j = 0; j < len; ++j) {
      const int64_t x = s + j;
      T mj = load(m[x]), vj = load(v[x]);
      lamb_moments_stored_at<S, SR>(load(g[x]), mj, vj, c, at(sd.m, sd, x), at(sd.v, sd, x));
      if constexpr (STORE) {  // the rounded values: storing them is exact
        store(&m[x], mj);
        store(&v[x], vj);
      }
      const T pj = param_load<P, MODE, T>(p, mst, x);
      T wj, uj;
      lamb_base_update(pj, lamb_direction(mj, vj, c), c, wj, uj);
      wbuf[j] = wj;
      ubuf[j] = uj;
      if constexpr (STORE) u_out[x] = uj;
    }
    add_wu(wbuf, ubuf, len, acc_w, acc_u);
    if (gn) gnorm_range(g, s, s + len, gn->sq, gn->ab);
  }
}

/// Stage 2 over elements [b, e): p = w - lr_ratio * u, with u rebuilt from the gradient and the old moments
/// (rounded as in stage 1: the same bits), which are then written (so stage 1 wrote nothing).
template <class P, class S, int64_t MODE, bool SR>
void lamb_pass2(P* LRS_RESTRICT p, const P* LRS_RESTRICT g, S* LRS_RESTRICT m, S* LRS_RESTRICT v,
                master_t<MODE>* LRS_RESTRICT mst, int64_t b, int64_t e, const LambCoeffs<compute_t<P>> c,
                const compute_t<P> lr_ratio, const Seeds sd) {
  using T = compute_t<P>;
  for (int64_t x = b; x < e; ++x) {
    const T pj = param_load<P, MODE, T>(p, mst, x);
    T mj = load(m[x]), vj = load(v[x]);
    lamb_moments_stored_at<S, SR>(load(g[x]), mj, vj, c, at(sd.m, sd, x), at(sd.v, sd, x));
    store(&m[x], mj);
    store(&v[x], vj);
    T wj, uj;
    lamb_base_update(pj, lamb_direction(mj, vj, c), c, wj, uj);
    param_store<P, MODE, SR>(p, mst, x, wj - lr_ratio * uj, at(sd.p, sd, x));
  }
}

/// Stage 2 from u kept by stage 1 (any moments): p = p * w_scale - lr_ratio * u.
template <class P, int64_t MODE, bool SR>
void lamb_apply_u(P* LRS_RESTRICT p, master_t<MODE>* LRS_RESTRICT mst, const compute_t<P>* LRS_RESTRICT u_in,
                  int64_t b, int64_t e, const LambCoeffs<compute_t<P>> c, const compute_t<P> lr_ratio,
                  const Seeds sd) {
  using T = compute_t<P>;
  for (int64_t x = b; x < e; ++x) {
    const T wj = param_load<P, MODE, T>(p, mst, x) * c.w_scale;
    param_store<P, MODE, SR>(p, mst, x, wj - lr_ratio * u_in[x], at(sd.p, sd, x));
  }
}

// ====================================================================================================
// int8 moments
// ====================================================================================================
/// Scratch of one thread for a quantization block: the fresh m and sqrt(v), the new codes.
struct QBlockBuf {
  alignas(64) float m[kMaxQuantBlock];
  alignas(64) float r[kMaxQuantBlock];
  alignas(64) int8_t cm[kMaxQuantBlock];
  alignas(64) uint8_t cv[kMaxQuantBlock];
  alignas(64) float g[kMaxQuantBlock];  // 16-bit gradients as float, for the gradient-norm lanes
  alignas(64) float pd[kMaxQuantBlock];  // vector parameters: u_decay * p (lamb_q_moments_vec)
};

/// w and u of element x from the stored codes (cm, cv: the block's codes, indexed by j = x - s).
template <class P, int64_t MODE>
inline void lamb_q_wu(const P* LRS_RESTRICT p, const master_t<MODE>* LRS_RESTRICT mst, int8_t cm, uint8_t cv,
                      int64_t x, float dm, float dv, const LambCoeffs<float>& c, float& w, float& u) {
  const float md = q_decode_m(cm, dm), rd = q_decode_r(cv, dv);
  lamb_base_update(param_load<P, MODE, float>(p, mst, x), lamb_direction_root(md, rd, c), c, w, u);
}

/// Vector parameters (vector_params): encode_block and the u loop of lamb_q_pass1 in one pass over the block,
/// u from the fresh integer codes instead of the stored bytes (the same values: a code converts to float
/// exactly) and from pd = u_decay * p, which lamb_q_moments_vec left in the buffer (with the w^2 lanes, so
/// this loop reads nothing from memory but the block's scratch). Every operation, lane and fold is the one
/// the two passes do, so the bits are the same: the codes as encode_block's (the scales are the absmax of mb
/// / rb, so encode_vf_absmax gives encode_vf's codes) and the u^2 lanes (lane j % 16 of each kSub sub-block
/// from the block's start, folded into acc_u at its end) as add_wu's, whose zero padding adds nothing.
/// Returns false, doing nothing, for a block with a non-finite scale or reciprocal (the caller then takes the
/// scalar path).
/// It issues the prefetches of ``pf`` (SpreadPrefetch): the one loop of the step that reads no memory.
template <bool STORE_U, class PF>
inline bool lamb_q_encode_u(const float* LRS_RESTRICT pd, const float* LRS_RESTRICT mb,
                                const float* LRS_RESTRICT rb, int64_t len, float sm, float sv, float qm, float qv,
                                int8_t* LRS_RESTRICT bm, uint8_t* LRS_RESTRICT bv, float* LRS_RESTRICT u_out,
                                const LambCoeffs<float>& c, double* LRS_RESTRICT acc_u, const PF& pf) {
  if (!encodable(sm, sv, qm, qv)) return false;
  const float dm = q_step_m(sm), dv = q_step_v(sv);
  Lanes16 lu = {};
  int64_t j = 0;
  const int64_t whole = len / kLanes * kLanes;
  while (j < whole) {
    // up to the next fold point, on a copy of the lanes: the scalar tail below indexes the lanes at run
    // time, which kept them in memory, and their adds then waited on a store and a reload every iteration
    const int64_t stop = min64(whole, (j / kSub + 1) * kSub);
    Lanes16 rlu = lu;
    for (; j < stop; j += kLanes) {
      prefetch_group(pf, j);
      for (int q = 0; q < kParts; ++q) {
        const int64_t x = j + q * kVec;
        vi km, kv;
        encode_vf_absmax(load_vf(mb + x), load_vf(rb + x), qm, qv, km, kv);
        store_codes(bm + x, km);
        store_codes(bv + x, kv);
        // lamb_q_wu: decode, lamb_direction_root, lamb_base_update's u
        const vf md = __builtin_convertvector(km, vf) * dm, rd = __builtin_convertvector(kv, vf) * dv;
        const vf dir = (md * c.inv_bc1) / (rd * c.inv_bc2_sqrt + c.eps);
        const vf u = dir + load_vf(pd + x);
        if constexpr (STORE_U) store_vf(u_out + x, u);
        rlu.v[q] += u * u;
      }
    }
    lu = rlu;
    if (j % kSub == 0) fold_lanes(lu, acc_u);
  }
  prefetch_rest(pf, j);
  for (; j < len; ++j) {  // the rest of the last 16 (inside the last kSub sub-block: folded below)
    bm[j] = static_cast<int8_t>(q_encode_m(mb[j], qm));
    bv[j] = static_cast<uint8_t>(q_encode_v(rb[j], qv));
    const float u = lamb_direction_root(q_decode_m(bm[j], dm), q_decode_r(bv[j], dv), c) + pd[j];
    if constexpr (STORE_U) u_out[j] = u;
    add_to_lane(lu, static_cast<int>(j % kLanes), u * u);
  }
  if (len % kSub != 0) fold_lanes(lu, acc_u);
  return true;
}

/// The moment loop of lamb_q_pass1 for vector parameters (vector_params: fp32, or bf16 in any master mode,
/// gradients of the same type), a native vector at a time: lamb_moments' operations in its order (the same
/// bits), the codes widened in registers (load_codes_vf), the block's absmax bits of m and sqrt(v) into xm /
/// xv and, with GN, the gradient-norm lanes of g as it is loaded, in the encoder's lanes and folds (lane l of
/// a kSub sub-block from the block's start sums its elements j % 16 == l). It also reads the parameters p
/// (kernel_param_vec.h; so every stream of the block is read in this one loop): lamb_base_update's w = p *
/// w_scale, whose squares go into the w lanes (add_wu's lanes and folds, into acc_w), and u_decay * p into
/// pd for lamb_q_encode_u.
template <class P, int64_t MODE, bool GN>
inline void lamb_q_moments_vec(const P* LRS_RESTRICT g, const P* LRS_RESTRICT p,
                               const master_t<MODE>* LRS_RESTRICT mst, const int8_t* LRS_RESTRICT cm,
                               const uint8_t* LRS_RESTRICT cv, float* LRS_RESTRICT mb,
                               float* LRS_RESTRICT rb, float* LRS_RESTRICT pd, int64_t s, int64_t len, float dm,
                               float dv, const LambCoeffs<float>& c, GnormAcc* gn, double* LRS_RESTRICT acc_w,
                               uint32_t& xm_out, uint32_t& xv_out) {
  vu xm = {}, xv = {};
  Lanes16 sq = {}, ab = {}, lw = {};
  auto fold = [&]() {
    if constexpr (GN) {
      fold_lanes(sq, gn->sq);
      fold_lanes(ab, gn->ab);
    }
    fold_lanes(lw, acc_w);
  };
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes) {
    for (int q = 0; q < kParts; ++q) {
      const int64_t o = j + q * kVec, x = s + o;
      vf mj, vj, g0;
      load_moments_vf<GN>(cm, cv, g, x, dm, dv, q, mj, vj, g0, sq, ab);
      const vf gj = g0 * c.gmul;  // lamb_moments
      mj = c.beta1 * mj + c.beta3 * gj;
      vj = c.beta2 * vj + c.omb2 * gj * gj;
      const vf rj = sqrt_vf(vj);
      store_vf(mb + o, mj);
      store_vf(rb + o, rj);
      const vf pj = param_load_vf<P, MODE>(p, mst, x), w = pj * c.w_scale;  // lamb_base_update
      lw.v[q] += w * w;
      store_vf(pd + o, c.u_decay * pj);
      max_bits_vf(mj, rj, xm, xv);
    }
    if ((j + kLanes) % kSub == 0) fold();
  }
  uint32_t sm = max_lane(xm), sv = max_lane(xv);
  for (; j < len; ++j) {
    const int64_t x = s + j;
    float mj = q_decode_m(cm[x], dm), vj = q_decode_v(cv[x], dv);
    const float gj = load(g[x]);
    if constexpr (GN) {
      add_gnorm_lane(sq, ab, j, gj);
    }
    lamb_moments(gj, mj, vj, c);
    const float rj = sqrt_rn(vj);
    mb[j] = mj;
    rb[j] = rj;
    const float pj = param_load<P, MODE, float>(p, mst, x), w = pj * c.w_scale;
    add_to_lane(lw, static_cast<int>(j % kLanes), w * w);
    pd[j] = c.u_decay * pj;
    sm = max_u32(sm, abs_bits(mj));
    sv = max_u32(sv, abs_bits(rj));
    if ((j + 1) % kSub == 0) fold();
  }
  if (len % kSub != 0) fold();
  xm_out = sm;
  xv_out = sv;
}

/// Stage 1 over one quantization block [s, s + len): update, encode (and, STORE, write codes and scales),
/// then w and u from the decoded codes (and, STORE_U, u into u_out) and their squares into the lanes; with
/// gn, the gradient-norm lanes while encoding (as AdamW's). ``pf``: the prefetches to spread over the block
/// (vector parameters; otherwise empty, the caller prefetching with prefetch_ahead).
template <class P, int64_t MODE, bool STORE, bool STORE_U, class PF>
void lamb_q_pass1(const P* LRS_RESTRICT p, const P* LRS_RESTRICT g, int8_t* LRS_RESTRICT cm,
                  uint8_t* LRS_RESTRICT cv, const master_t<MODE>* LRS_RESTRICT mst, float* LRS_RESTRICT u_out,
                  int64_t s, int64_t len, float* LRS_RESTRICT scale_m, float* LRS_RESTRICT scale_v,
                  const LambCoeffs<float> c, QBlockBuf* LRS_RESTRICT buf, double* LRS_RESTRICT acc_w,
                  double* LRS_RESTRICT acc_u, GnormAcc* gn, const PF& pf) {
  constexpr bool vec = vector_params<P, MODE, false>();  // (stage 1 stores no parameter)
  float* LRS_RESTRICT mb = buf->m;
  float* LRS_RESTRICT rb = buf->r;
  // the codes: written in place when they are stored, else kept in the buffer
  int8_t* bm = STORE ? cm + s : buf->cm;
  uint8_t* bv = STORE ? cv + s : buf->cv;
  const float dm0 = q_step_m(*scale_m), dv0 = q_step_v(*scale_v);
  uint32_t xm = 0, xv = 0;
  // vector parameters (vector_params): the moment loop also sums the gradient-norm and the w lanes
  if constexpr (vec) {
    if (gn)
      lamb_q_moments_vec<P, MODE, true>(g, p, mst, cm, cv, mb, rb, buf->pd, s, len, dm0, dv0, c, gn, acc_w, xm, xv);
    else
      lamb_q_moments_vec<P, MODE, false>(g, p, mst, cm, cv, mb, rb, buf->pd, s, len, dm0, dv0, c, gn, acc_w, xm, xv);
  } else {
    for (int64_t j = 0; j < len; ++j) {
      const int64_t x = s + j;
      float mj = q_decode_m(cm[x], dm0), vj = q_decode_v(cv[x], dv0);
      const float gj = load(g[x]);
      buf->g[j] = gj;
      lamb_moments(gj, mj, vj, c);
      const float rj = sqrt_rn(vj);
      mb[j] = mj;
      rb[j] = rj;
      xm = max_u32(xm, abs_bits(mj));
      xv = max_u32(xv, abs_bits(rj));
    }
  }
  const float sm = f32_from_bits(xm), sv = f32_from_bits(xv);
  const float qm = q_recip_m(sm), qv = q_recip_v(sv);
  if constexpr (vec) {
    float* uo = STORE_U ? u_out + s : nullptr;
    const bool done = lamb_q_encode_u<STORE_U>(buf->pd, mb, rb, len, sm, sv, qm, qv, bm, bv, uo, c, acc_u, pf);
    if (done) {
      if constexpr (STORE) {
        *scale_m = sm;
        *scale_v = sv;
      }
      return;
    }
  }
  prefetch_rest(pf, 0);  // (none issued on this path yet)
  if (gn && !vec) {
    encode_block<true>(mb, rb, len, sm, sv, qm, qv, bm, bv, buf->g, gn->sq, gn->ab);
  } else {
    encode_block(mb, rb, len, sm, sv, qm, qv, bm, bv);
  }
  if constexpr (STORE) {
    *scale_m = sm;
    *scale_v = sv;
  }
  const float dm = q_step_m(sm), dv = q_step_v(sv);
  alignas(64) float wbuf[kSub];
  alignas(64) float ubuf[kSub];
  for (int64_t o = 0; o < len; o += kSub) {
    const int64_t sub = min64(kSub, len - o);
    for (int64_t j = 0; j < sub; ++j) {
      float wj, uj;
      lamb_q_wu<P, MODE>(p, mst, bm[o + j], bv[o + j], s + o + j, dm, dv, c, wj, uj);
      wbuf[j] = wj;
      ubuf[j] = uj;
      if constexpr (STORE_U) u_out[s + o + j] = uj;
    }
    if constexpr (vec) {  // the w lanes are the moment loop's
      const int64_t len16 = (sub + kLanes - 1) / kLanes * kLanes;
      for (int64_t j = sub; j < len16; ++j) ubuf[j] = 0.0f;
      add_squares(ubuf, len16, acc_u);
    } else {
      add_wu(wbuf, ubuf, sub, acc_w, acc_u);
    }
  }
}

/// Stage 2 over one quantization block from the codes stage 1 stored. Vector parameters (vector_params): a
/// native vector at a time, loaded and stored by kernel_param_vec.h (lamb_q_wu's operations in its order: the
/// same bits), with the prefetches of ``pf`` spread over it.
template <class P, int64_t MODE, bool SR, class PF>
void lamb_q_pass2(P* LRS_RESTRICT p, const int8_t* LRS_RESTRICT cm, const uint8_t* LRS_RESTRICT cv,
                  master_t<MODE>* LRS_RESTRICT mst, int64_t s, int64_t len, float scale_m, float scale_v,
                  const LambCoeffs<float> c, const float lr_ratio, const Seeds sd, const PF& pf) {
  const float dm = q_step_m(scale_m), dv = q_step_v(scale_v);
  int64_t j = 0;
  if constexpr (vector_params<P, MODE, SR>()) {
    for (; j + kLanes <= len; j += kLanes) {
      prefetch_group(pf, j);
      for (int q = 0; q < kParts; ++q) {
        const int64_t x = s + j + q * kVec;
        const vf md = load_codes_vf(cm + x) * dm, rd = load_codes_vf(cv + x) * dv;
        const vf dir = (md * c.inv_bc1) / (rd * c.inv_bc2_sqrt + c.eps);
        const vf pj = param_load_vf<P, MODE>(p, mst, x);
        const vf w = pj * c.w_scale, u = dir + c.u_decay * pj;
        param_store_vf<P, MODE>(p, mst, x, w - lr_ratio * u);
      }
    }
    prefetch_rest(pf, j);
  }
  for (int64_t x = s + j; x < s + len; ++x) {
    float wj, uj;
    lamb_q_wu<P, MODE>(p, mst, cm[x], cv[x], x, dm, dv, c, wj, uj);
    param_store<P, MODE, SR>(p, mst, x, wj - lr_ratio * uj, at(sd.p, sd, x));
  }
}

}  // namespace
}  // namespace LRS_ISA_NS
}  // namespace cpu
}  // namespace lrsched
