// The CPU kernels, compiled once per instruction set: kernels_<isa>.cpp defines LRS_ISA_NS (a namespace
// name) and LRS_ISA_NAME, then includes this file. Everything here has internal linkage except the one
// IsaKernels table per ISA, so no code compiled for one ISA can be picked by the linker for another.
//
// Loops are written for the auto-vectorizer (contiguous, restrict, no calls but sqrt); reductions use
// GCC/Clang vector extensions with a fixed 16-lane layout, so their order of operations - and with
// -ffp-contract=off every result bit - is the same for every ISA and every thread count:
//   * work is cut into fixed chunks of kChunkElems elements per tensor;
//   * inside a chunk, lane l of a sub-block of kSub elements sums the elements j with j % 16 == l (float),
//     each sub-block's lanes are added into 16 double accumulators, which are summed in lane order;
//   * a tensor's sum adds its chunks' partial sums in chunk order (double).
#pragma once

#include <omp.h>

#include <cstdint>
#include <type_traits>

#include <lrsched/adamw.h>
#include <lrsched/convert.h>
#include <lrsched/dtypes.h>
#include <lrsched/lamb.h>
#include <lrsched/layout.h>

#include "work.h"

#if !defined(LRS_ISA_NS) || !defined(LRS_ISA_NAME)
#error "define LRS_ISA_NS and LRS_ISA_NAME before including kernels_impl.h"
#endif

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

template <class P>
using compute_t = typename std::conditional<std::is_same<P, double>::value, double, float>::type;

constexpr int kLanes = 16;
constexpr int64_t kSub = 512;

typedef float v16f __attribute__((vector_size(16 * sizeof(float))));
typedef double v16d __attribute__((vector_size(16 * sizeof(double))));

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
  v16f s = {};
  for (int64_t j = 0; j < len16; j += kLanes) {
    v16f v;
    __builtin_memcpy(&v, x + j, sizeof v);
    s += v * v;
  }
  for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(s[l]);
}

inline void add_squares(const double* x, int64_t len16, double* acc) {
  v16d s;
  __builtin_memcpy(&s, acc, sizeof s);
  for (int64_t j = 0; j < len16; j += kLanes) {
    v16d v;
    __builtin_memcpy(&v, x + j, sizeof v);
    s += v * v;
  }
  __builtin_memcpy(acc, &s, sizeof s);
}

/// Calls fn(i, b, e) for each tensor i touched by global chunks [k0, k1), with [b, e) the element range of
/// those chunks inside tensor i (consecutive chunks of one tensor are merged).
template <class Fn>
inline void for_tensor_ranges(const Work& w, int64_t k0, int64_t k1, Fn&& fn) {
  if (k0 >= k1) return;
  int64_t i = tensor_of_chunk(w, k0);
  int64_t k = k0;
  while (k < k1) {
    while (w.chunk_off[i + 1] <= k) ++i;
    const int64_t kend = min64(k1, w.chunk_off[i + 1]);
    const int64_t b = (k - w.chunk_off[i]) * kChunkElems;
    const int64_t e = min64((kend - w.chunk_off[i]) * kChunkElems, w.tt->numel[i]);
    fn(i, b, e, k, kend);
    k = kend;
  }
}

// ====================================================================================================
// AdamW
// ====================================================================================================
template <class P, class S, bool MASTER, bool AMS>
void adamw_range(P* LRS_RESTRICT p, const P* LRS_RESTRICT g, S* LRS_RESTRICT m, S* LRS_RESTRICT v,
                 S* LRS_RESTRICT vmax, float* LRS_RESTRICT master, int64_t b, int64_t e,
                 const AdamWCoeffs<compute_t<P>> c) {
  using T = compute_t<P>;
  for (int64_t j = b; j < e; ++j) {
    T pj;
    if constexpr (MASTER) pj = master[j]; else pj = load(p[j]);
    T mj = load(m[j]), vj = load(v[j]);
    T xj = T(0);
    if constexpr (AMS) xj = load(vmax[j]);
    adamw_element<AMS>(pj, load(g[j]), mj, vj, xj, c);
    store(&m[j], mj);
    store(&v[j], vj);
    if constexpr (AMS) store(&vmax[j], xj);
    if constexpr (MASTER) master[j] = pj;
    store(&p[j], pj);
  }
}

template <class P, class S, bool MASTER, bool AMS>
void adamw_typed(const Work& w, const void* coeffs_v) {
  using T = compute_t<P>;
  const TensorTable& tt = *w.tt;
  const AdamWCoeffs<T>* coeffs = static_cast<const AdamWCoeffs<T>*>(coeffs_v);
#pragma omp parallel num_threads(w.threads)
  {
    int64_t k0, k1;
    thread_chunks(w, 0, tt.n, omp_get_thread_num(), omp_get_num_threads(), &k0, &k1);
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t b, int64_t e, int64_t, int64_t) {
      adamw_range<P, S, MASTER, AMS>(static_cast<P*>(tt.param[i]), static_cast<const P*>(tt.grad[i]),
                                     static_cast<S*>(tt.exp_avg[i]), static_cast<S*>(tt.exp_avg_sq[i]),
                                     AMS ? static_cast<S*>(tt.max_exp_avg_sq[i]) : nullptr,
                                     MASTER ? tt.master[i] : nullptr, b, e, coeffs[i]);
    });
  }
}

template <class P, class S, bool MASTER>
void adamw_ams(const Work& w, const void* coeffs, bool ams) {
  if (ams) adamw_typed<P, S, MASTER, true>(w, coeffs); else adamw_typed<P, S, MASTER, false>(w, coeffs);
}

// ====================================================================================================
// LAMB
// ====================================================================================================
/// Stage 1 over elements [b, e) of one tensor: the new moments rounded to S (as stored: lamb.h), w and u,
/// and the sums of w^2 and u^2 added into 16 double lanes each. STORE: also write the moments and u (into
/// u_out), so that stage 2 reads u back; otherwise nothing is written (stage 2 then recomputes everything).
template <class P, class S, bool MASTER, bool STORE>
void lamb_pass1(const P* LRS_RESTRICT p, const P* LRS_RESTRICT g, S* LRS_RESTRICT m, S* LRS_RESTRICT v,
                const float* LRS_RESTRICT master, compute_t<P>* LRS_RESTRICT u_out, int64_t b, int64_t e,
                const LambCoeffs<compute_t<P>> c, double* LRS_RESTRICT acc_w, double* LRS_RESTRICT acc_u) {
  using T = compute_t<P>;
  alignas(64) T wbuf[kSub];
  alignas(64) T ubuf[kSub];
  for (int64_t s = b; s < e; s += kSub) {
    const int64_t len = min64(kSub, e - s);
    for (int64_t j = 0; j < len; ++j) {
      const int64_t x = s + j;
      T mj = load(m[x]), vj = load(v[x]);
      lamb_moments_stored<S>(load(g[x]), mj, vj, c);
      if constexpr (STORE) {
        store(&m[x], mj);
        store(&v[x], vj);
      }
      T pj;
      if constexpr (MASTER) pj = master[x]; else pj = load(p[x]);
      T wj, uj;
      lamb_base_update(pj, lamb_direction(mj, vj, c), c, wj, uj);
      wbuf[j] = wj;
      ubuf[j] = uj;
      if constexpr (STORE) u_out[x] = uj;
    }
    const int64_t len16 = (len + kLanes - 1) / kLanes * kLanes;
    for (int64_t j = len; j < len16; ++j) wbuf[j] = ubuf[j] = T(0);
    add_squares(wbuf, len16, acc_w);
    add_squares(ubuf, len16, acc_u);
  }
}

/// Stage 2 over elements [b, e): p = w - lr_ratio * u, with u read back (FROM_U) or recomputed from the
/// gradient and the old moments (rounded to S as in stage 1: the same bits), which are then written (so
/// stage 1 wrote nothing).
template <class P, class S, bool MASTER, bool FROM_U>
void lamb_pass2(P* LRS_RESTRICT p, const P* LRS_RESTRICT g, S* LRS_RESTRICT m, S* LRS_RESTRICT v,
                float* LRS_RESTRICT master, const compute_t<P>* LRS_RESTRICT u_in, int64_t b, int64_t e,
                const LambCoeffs<compute_t<P>> c, const compute_t<P> lr_ratio) {
  using T = compute_t<P>;
  for (int64_t x = b; x < e; ++x) {
    T pj;
    if constexpr (MASTER) pj = master[x]; else pj = load(p[x]);
    T wj, uj;
    if constexpr (FROM_U) {
      wj = pj * c.w_scale;
      uj = u_in[x];
    } else {
      T mj = load(m[x]), vj = load(v[x]);
      lamb_moments_stored<S>(load(g[x]), mj, vj, c);
      store(&m[x], mj);
      store(&v[x], vj);
      lamb_base_update(pj, lamb_direction(mj, vj, c), c, wj, uj);
    }
    const T pn = wj - lr_ratio * uj;
    if constexpr (MASTER) master[x] = pn;
    store(&p[x], pn);
  }
}

template <class P, class S, bool MASTER>
struct Lamb {
  using T = compute_t<P>;
  const Work& w;
  const LambArgs& a;
  const TensorTable& tt;
  const LambCoeffs<T>* coeffs;

  P* param(int64_t i) const { return static_cast<P*>(tt.param[i]); }
  const P* grad(int64_t i) const { return static_cast<const P*>(tt.grad[i]); }
  S* m(int64_t i) const { return static_cast<S*>(tt.exp_avg[i]); }
  S* v(int64_t i) const { return static_cast<S*>(tt.exp_avg_sq[i]); }
  float* master(int64_t i) const { return MASTER ? tt.master[i] : nullptr; }

  /// Stage 1 over chunks [k0, k1); partial sums per chunk. u_base: scratch for the tensors from tb on
  /// (then moments and u are stored), or null (nothing is written).
  void pass1(int64_t k0, int64_t k1, T* u_base, int64_t tb) const {
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t b, int64_t e, int64_t kb, int64_t) {
      T* u_out = u_base ? u_base + (w.elem_off[i] - w.elem_off[tb]) : nullptr;
      for (int64_t cb = b, k = kb; cb < e; cb += kChunkElems, ++k) {
        const int64_t ce = min64(cb + kChunkElems, e);
        double acc_w[kLanes] = {}, acc_u[kLanes] = {};
        if (u_out) {
          lamb_pass1<P, S, MASTER, true>(param(i), grad(i), m(i), v(i), master(i), u_out, cb, ce, coeffs[i],
                                         acc_w, acc_u);
        } else {
          lamb_pass1<P, S, MASTER, false>(param(i), grad(i), m(i), v(i), master(i), nullptr, cb, ce, coeffs[i],
                                          acc_w, acc_u);
        }
        a.partials[2 * k] = lane_total(acc_w);
        a.partials[2 * k + 1] = lane_total(acc_u);
      }
    });
  }

  /// Per-tensor sums of squares from the chunk partials (chunk order).
  void tensor_sums(int64_t i, double* sw, double* su) const {
    double x = 0.0, y = 0.0;
    for (int64_t k = w.chunk_off[i]; k < w.chunk_off[i + 1]; ++k) {
      x += a.partials[2 * k];
      y += a.partials[2 * k + 1];
    }
    *sw = x;
    *su = y;
  }

  double ratio_and_telemetry(int64_t i, double sw, double su, bool write) const {
    const double wn = sqrt_rn(sw), un = sqrt_rn(su);
    const LambTensorInfo& inf = a.info[i];
    const double ratio = lamb_trust_ratio(wn, un, inf.adapt != 0, inf.trust_min, inf.trust_max);
    if (write && a.norms_out) {
      a.norms_out[3 * i + layout::NORM_PARAM] = static_cast<float>(wn);
      a.norms_out[3 * i + layout::NORM_UPDATE] = static_cast<float>(un);
      a.norms_out[3 * i + layout::NORM_RATIO] = static_cast<float>(ratio);
    }
    return ratio;
  }

  /// Telemetry (and stage-2 update unless skipped) for the tensors of chunks [k0, k1). Sums come from
  /// the partials (fused) or from a.sums (stage 2). The thread holding a tensor's first chunk writes its
  /// telemetry.
  void finish(int64_t k0, int64_t k1, bool from_sums, T* u_base, int64_t tb) const {
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t b, int64_t e, int64_t kb, int64_t) {
      double sw, su;
      if (from_sums) {
        sw = a.sums[2 * i];
        su = a.sums[2 * i + 1];
      } else {
        tensor_sums(i, &sw, &su);
      }
      const double ratio = ratio_and_telemetry(i, sw, su, kb == w.chunk_off[i]);
      if (a.skip) return;
      const T lr_ratio = static_cast<T>(a.info[i].lr * ratio);
      if (u_base) {
        const T* u_in = u_base + (w.elem_off[i] - w.elem_off[tb]);
        lamb_pass2<P, S, MASTER, true>(param(i), grad(i), m(i), v(i), master(i), u_in, b, e, coeffs[i], lr_ratio);
      } else {
        lamb_pass2<P, S, MASTER, false>(param(i), grad(i), m(i), v(i), master(i), nullptr, b, e, coeffs[i],
                                        lr_ratio);
      }
    });
  }

  /// The empty tensors in [tb, te) own no chunk: stage 1 writes zero sums for them; otherwise their
  /// telemetry comes from zero sums (fused) or from the all-reduced sums (stage 2: a rank's shard of a
  /// tensor may be empty while other ranks hold its elements).
  void empty_tensors(int64_t tb, int64_t te, int64_t phase) const {
    for (int64_t i = tb; i < te; ++i) {
      if (tt.numel[i] != 0) continue;
      if (phase == layout::LAMB_STAGE1) {
        a.sums[2 * i] = 0.0f;
        a.sums[2 * i + 1] = 0.0f;
      } else if (phase == layout::LAMB_STAGE2) {
        ratio_and_telemetry(i, a.sums[2 * i], a.sums[2 * i + 1], true);
      } else {
        ratio_and_telemetry(i, 0.0, 0.0, true);
      }
    }
  }

  void run() const {
    const int64_t n = tt.n;
#pragma omp parallel num_threads(w.threads)
    {
      const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
      if (a.phase == layout::LAMB_FUSED) {
        // 1. large tensors: all threads on one tensor at a time (stage 1, barrier, stage 2). The scratch
        // halves alternate, so no barrier is needed after stage 2: the tensor after next reuses this half
        // only after the next tensor's barrier, which every thread reaches after finishing this one.
        const int64_t half = a.scratch ? a.scratch_elems / 2 : 0;
        for (int64_t q = 0; q < a.ncoop; ++q) {
          const int64_t tb = a.coop[q], te = tb + 1;
          const bool use_u = !a.skip && tt.numel[tb] <= half && tt.numel[tb] <= nth * a.hot_elems;
          T* u_base = use_u ? static_cast<T*>(a.scratch) + (q & 1) * half : nullptr;
          int64_t k0, k1;
          thread_chunks(w, tb, te, tid, nth, &k0, &k1);
          pass1(k0, k1, u_base, tb);
#pragma omp barrier
          finish(k0, k1, false, u_base, tb);
        }
        if (a.ncoop > 0) {
#pragma omp barrier
        }
        if (tid == 0) empty_tensors(0, n, layout::LAMB_FUSED);
        // 2. the other tensors, largest first, each by one thread (stage 2 right after its stage 1, from
        // that thread's cache); no barrier, so a busy core delays nobody else.
        const int64_t mine = a.scratch ? a.scratch_elems / nth : 0;
        T* my_scratch = mine > 0 ? static_cast<T*>(a.scratch) + tid * mine : nullptr;
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t q = 0; q < a.nrest; ++q) {
          const int64_t i = a.rest[q];
          if (tt.numel[i] == 0) continue;
          T* u_base = (!a.skip && tt.numel[i] <= mine && tt.numel[i] <= a.hot_elems) ? my_scratch : nullptr;
          pass1(w.chunk_off[i], w.chunk_off[i + 1], u_base, i);
          finish(w.chunk_off[i], w.chunk_off[i + 1], false, u_base, i);
        }
      } else if (a.phase == layout::LAMB_STAGE1) {
        int64_t k0, k1;
        thread_chunks(w, 0, n, tid, nth, &k0, &k1);
        pass1(k0, k1, nullptr, 0);
#pragma omp barrier
        if (tid == 0) empty_tensors(0, n, layout::LAMB_STAGE1);
        for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t, int64_t, int64_t kb, int64_t) {
          if (kb != w.chunk_off[i]) return;
          double sw, su;
          tensor_sums(i, &sw, &su);
          a.sums[2 * i] = static_cast<float>(sw);
          a.sums[2 * i + 1] = static_cast<float>(su);
        });
      } else {
        int64_t k0, k1;
        thread_chunks(w, 0, n, tid, nth, &k0, &k1);
        if (tid == 0) empty_tensors(0, n, layout::LAMB_STAGE2);
        finish(k0, k1, true, nullptr, 0);
      }
    }
  }
};

template <class P, class S, bool MASTER>
void lamb_typed(const Work& w, const LambArgs& a) {
  Lamb<P, S, MASTER> run{w, a, *w.tt, static_cast<const LambCoeffs<compute_t<P>>*>(a.coeffs)};
  run.run();
}

// ====================================================================================================
// Sum of squares of the gradients (float64 lanes), one partial per chunk
// ====================================================================================================
template <class P>
void sumsq_range(const P* LRS_RESTRICT g, int64_t b, int64_t e, double* acc) {
  alignas(64) double buf[kSub];
  for (int64_t s = b; s < e; s += kSub) {
    const int64_t len = min64(kSub, e - s);
    for (int64_t j = 0; j < len; ++j) buf[j] = static_cast<double>(load(g[s + j]));
    const int64_t len16 = (len + kLanes - 1) / kLanes * kLanes;
    for (int64_t j = len; j < len16; ++j) buf[j] = 0.0;
    add_squares(buf, len16, acc);
  }
}

template <class P>
void sumsq_typed(const Work& w, double* partials) {
  const TensorTable& tt = *w.tt;
#pragma omp parallel num_threads(w.threads)
  {
    int64_t k0, k1;
    thread_chunks(w, 0, tt.n, omp_get_thread_num(), omp_get_num_threads(), &k0, &k1);
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t b, int64_t e, int64_t kb, int64_t) {
      const P* g = static_cast<const P*>(tt.grad[i]);
      for (int64_t cb = b, k = kb; cb < e; cb += kChunkElems, ++k) {
        double acc[kLanes] = {};
        sumsq_range(g, cb, min64(cb + kChunkElems, e), acc);
        partials[k] = lane_total(acc);
      }
    });
  }
}

// ====================================================================================================
// dtype dispatch: the combinations and the runtime -> template mapping are lrsched/dtypes.h's
// ====================================================================================================
template <class P, class S, bool MASTER>
struct AdamWOp {
  static void run(const Work& w, const void* coeffs, bool ams) { adamw_ams<P, S, MASTER>(w, coeffs, ams); }
};
template <class P, class S, bool MASTER>
struct LambOp {
  static void run(const Work& w, const LambArgs& a) { lamb_typed<P, S, MASTER>(w, a); }
};
template <class P>
struct SumsqOp {
  static void run(const Work& w, double* partials) { sumsq_typed<P>(w, partials); }
};

void adamw_entry(const Work& w, const void* coeffs, bool ams) {
  dispatch_dtypes<AdamWOp>(w.tt->pdtype, w.tt->sdtype, w.tt->master != nullptr, w, coeffs, ams);
}
void lamb_entry(const Work& w, const LambArgs& a) {
  dispatch_dtypes<LambOp>(w.tt->pdtype, w.tt->sdtype, w.tt->master != nullptr, w, a);
}
void sumsq_entry(const Work& w, double* partials) { dispatch_param_dtype<SumsqOp>(w.tt->pdtype, w, partials); }

}  // namespace
}  // namespace LRS_ISA_NS

extern const IsaKernels LRS_ISA_TABLE;
const IsaKernels LRS_ISA_TABLE = {LRS_ISA_NAME, &LRS_ISA_NS::adamw_entry, &LRS_ISA_NS::lamb_entry,
                                  &LRS_ISA_NS::sumsq_entry};

}  // namespace cpu
}  // namespace lrsched
