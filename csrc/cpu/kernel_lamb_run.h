// Part of the per-ISA kernels (kernels_impl.h): the LAMB driver of one dtype combination - the work split
// (cooperative large tensors, one thread per small tensor, the sharded stages), the per-chunk partial sums,
// the trust ratio and its telemetry.
#pragma once

#include <lrsched/lamb.h>

#include "kernel_lamb.h"

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

template <class P, class S, int64_t MODE, bool SR>
struct Lamb {
  using T = compute_t<P>;
  static constexpr bool Q = is_q8<S>();
  const Work& w;
  const LambArgs& a;
  const TensorTable& tt;
  const LambCoeffs<T>* coeffs;

  /// Stage 1 over chunks [k0, k1); partial sums per chunk. u_base: scratch for the tensors from tb on
  /// (floating moments: then the moments and u are stored; else nothing is written), or null. int8
  /// moments store their codes unless the step is skipped, with or without the scratch.
  void pass1(int64_t k0, int64_t k1, T* u_base, int64_t tb) const {
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t, int64_t, int64_t kb, int64_t kend) {
      const TensorPtrs<P, S, MODE> t(tt, i);
      const Seeds sd = seeds_of(w, i);
      T* u_out = u_base ? u_base + (w.elem_off[i] - w.elem_off[tb]) : nullptr;
      for_chunks(w, i, kb, kend, [&](int64_t k, int64_t cb, int64_t ce) {
        double acc_w[kLanes] = {}, acc_u[kLanes] = {};
        GnormAcc gn;
        GnormAcc* gp = w.gnorm ? &gn : nullptr;
        if constexpr (Q) {
          QBlockBuf buf;
          for_blocks(w, i, k, [&](int64_t j, int64_t s, int64_t len) {
            // vector parameters: spread over the block (lamb_q_pass1); else all at once
            decltype(spread_prefetch(t, s, len, tt.numel[i], false)) pf;
            if constexpr (vector_params<P, MODE, false>()) pf = spread_prefetch(t, s, len, tt.numel[i], w.prefetch);
            else prefetch_ahead(t, s, len, tt.numel[i], w.prefetch);
            float* sm = t.sm + j;
            float* sv = t.sv + j;
            if (a.skip)
              lamb_q_pass1<P, MODE, false, false>(t.p, t.g, t.m, t.v, t.mst, nullptr, s, len, sm, sv, coeffs[i], &buf,
                                                  acc_w, acc_u, gp, pf);
            else if (u_out)
              lamb_q_pass1<P, MODE, true, true>(t.p, t.g, t.m, t.v, t.mst, u_out, s, len, sm, sv, coeffs[i], &buf,
                                                acc_w, acc_u, gp, pf);
            else
              lamb_q_pass1<P, MODE, true, false>(t.p, t.g, t.m, t.v, t.mst, nullptr, s, len, sm, sv, coeffs[i], &buf,
                                                 acc_w, acc_u, gp, pf);
          });
        } else if (u_out) {
          lamb_pass1<P, S, MODE, SR, true>(t.p, t.g, t.m, t.v, t.mst, u_out, cb, ce, coeffs[i], sd, acc_w, acc_u, gp);
        } else {
          lamb_pass1<P, S, MODE, SR, false>(t.p, t.g, t.m, t.v, t.mst, nullptr, cb, ce, coeffs[i], sd, acc_w, acc_u,
                                            gp);
        }
        a.partials[2 * k] = lane_total(acc_w);
        a.partials[2 * k + 1] = lane_total(acc_u);
        gn.flush(w, k);
      });
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

  /// Stage 2 of tensor i over its chunks [kb, kend), last chunk first: stage 1 went first to last, so the
  /// chunks it touched last are the ones still in cache (their parameters, codes or moments, and u), and
  /// taking them first uses them before this pass's own traffic evicts them. The bits do not depend on the order (each
  /// element's update is its own); on a 32 MiB L3 it made the fp32 LAMB step ~7% faster.
  void apply_last_first(int64_t i, int64_t kb, int64_t kend, T lr_ratio, const T* u_in) const {
    for (int64_t k = kend - 1; k >= kb; --k)
      apply(i, chunk_begin(tt, i, k - w.chunk_off[i]), chunk_begin(tt, i, k + 1 - w.chunk_off[i]), k, k + 1,
            lr_ratio, u_in);
  }

  /// Stage 2 of tensor i over elements [b, e) (chunks [kb, kend)).
  void apply(int64_t i, int64_t b, int64_t e, int64_t kb, int64_t kend, T lr_ratio, const T* u_in) const {
    const TensorPtrs<P, S, MODE> t(tt, i);
    const Seeds sd = seeds_of(w, i);
    if (u_in) {
      lamb_apply_u<P, MODE, SR>(t.p, t.mst, u_in, b, e, coeffs[i], lr_ratio, sd);
    } else if constexpr (Q) {
      for (int64_t k = kb; k < kend; ++k)
        for_blocks(w, i, k, [&](int64_t j, int64_t s, int64_t len) {
          decltype(spread_prefetch(t, s, len, e, false)) pf;  // vector loops: p and the codes ahead, within this chunk
          if constexpr (vector_params<P, MODE, SR>()) {
            pf = spread_prefetch(t, s, len, e, w.prefetch);
            pf.g = nullptr;
          }
          lamb_q_pass2<P, MODE, SR>(t.p, t.m, t.v, t.mst, s, len, t.sm[j], t.sv[j], coeffs[i], lr_ratio, sd, pf);
        });
    } else {
      lamb_pass2<P, S, MODE, SR>(t.p, t.g, t.m, t.v, t.mst, b, e, coeffs[i], lr_ratio, sd);
    }
  }

  /// Telemetry (and stage-2 update unless skipped) for the tensors of chunks [k0, k1), last chunk first
  /// (apply_last_first). Sums come from the partials (fused) or from a.sums (stage 2). The thread holding a
  /// tensor's first chunk writes its telemetry.
  void finish(int64_t k0, int64_t k1, bool from_sums, T* u_base, int64_t tb) const {
    for_tensor_ranges_last_first(w, k0, k1, [&](int64_t i, int64_t b, int64_t e, int64_t kb, int64_t kend) {
      double sw, su;
      if (from_sums) {
        sw = a.sums[2 * i];
        su = a.sums[2 * i + 1];
      } else {
        tensor_sums(i, &sw, &su);
      }
      const double ratio = ratio_and_telemetry(i, sw, su, kb == w.chunk_off[i]);
      if (a.skip) return;
      const T* u_in = u_base ? u_base + (w.elem_off[i] - w.elem_off[tb]) : nullptr;
      apply_last_first(i, kb, kend, static_cast<T>(a.info[i].lr * ratio), u_in);
    });
  }

  /// The empty tensors in [tb, te) own no chunk: stage 1 writes zero sums for them; otherwise their
  /// telemetry comes from zero sums (fused) or from the all-reduced sums (stage 2: a rank's shard of a
  /// tensor may be empty while other ranks hold its elements).
  void empty_tensors(int64_t tb, int64_t te, int64_t phase) const {
    for (int64_t i = tb; i < te; ++i) {
      if (w.chunk_off[i + 1] != w.chunk_off[i]) continue;
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
          if (w.chunk_off[i + 1] == w.chunk_off[i]) continue;
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

template <class P, class S, int64_t MODE>
void lamb_entry_typed(const Work& w, const LambArgs& a) {
  constexpr bool can_sr = sr_applies<P, S, MODE>();
  const auto* coeffs = static_cast<const LambCoeffs<compute_t<P>>*>(a.coeffs);
  if (can_sr && w.tt->stochastic_rounding) {
    Lamb<P, S, MODE, can_sr> run{w, a, *w.tt, coeffs};
    run.run();
  } else {
    Lamb<P, S, MODE, false> run{w, a, *w.tt, coeffs};
    run.run();
  }
}

}  // namespace
}  // namespace LRS_ISA_NS
}  // namespace cpu
}  // namespace lrsched
