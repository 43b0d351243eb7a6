// The CPU kernels, compiled once per instruction set: kernels_<isa>.cpp defines LRS_ISA_NS (a namespace
// name), LRS_ISA_NAME and LRS_ISA_TABLE, then includes this file. Everything here has internal linkage
// except the one IsaKernels table per ISA, so no code compiled for one ISA can be picked by the linker for
// another.
//
// Loops are written for the auto-vectorizer (contiguous, restrict, no calls but sqrt; per-element storage
// policies from lrsched/quant.h are selects and integer arithmetic). The parts:
//   kernel_common.h    fixed-lane reductions, gradient-norm lanes, chunk / block iteration, pointers, seeds
//   kernel_adamw.h     AdamW (floating and int8 moments) and the gradient-norm pass alone
//   kernel_lamb.h      LAMB's stage 1 and stage 2 per element range / quantization block
//   kernel_lamb_run.h  the LAMB driver (work split, partial sums, trust ratio, telemetry)
#pragma once

#include "kernel_adamw.h"
#include "kernel_common.h"
#include "kernel_lamb_run.h"

#include <lrsched/dtypes.h>

#if !defined(LRS_ISA_NAME) || !defined(LRS_ISA_TABLE)
#error "define LRS_ISA_NS, LRS_ISA_NAME and LRS_ISA_TABLE before including kernels_impl.h"
#endif

namespace lrsched {
namespace cpu {
namespace LRS_ISA_NS {
namespace {

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
    for_tensor_ranges(w, k0, k1, [&](int64_t i, int64_t, int64_t, int64_t kb, int64_t kend) {
      const P* g = static_cast<const P*>(tt.grad[i]);
      for_chunks(w, i, kb, kend, [&](int64_t k, int64_t cb, int64_t ce) {
        double acc[kLanes] = {};
        sumsq_range(g, cb, ce, acc);
        partials[k] = lane_total(acc);
      });
    });
  }
}

// ====================================================================================================
// dtype dispatch: the combinations and the runtime -> template mapping are lrsched/dtypes.h's
// ====================================================================================================
template <class P, class S, int64_t MASTER>
struct AdamWOp {
  static void run(const Work& w, const void* coeffs, bool ams) { adamw_entry_typed<P, S, MASTER>(w, coeffs, ams); }
};
template <class P, class S, int64_t MASTER>
struct LambOp {
  static void run(const Work& w, const LambArgs& a) { lamb_entry_typed<P, S, MASTER>(w, a); }
};
template <class P>
struct SumsqOp {
  static void run(const Work& w, double* partials) { sumsq_typed<P>(w, partials); }
};
template <class P>
struct GnormOp {
  static void run(const Work& w) { gnorm_typed<P>(w); }
};

void adamw_entry(const Work& w, const void* coeffs, bool ams) {
  dispatch_dtypes<AdamWOp>(w.tt->pdtype, w.tt->sdtype, w.tt->master_mode, w, coeffs, ams);
}
void lamb_entry(const Work& w, const LambArgs& a) {
  dispatch_dtypes<LambOp>(w.tt->pdtype, w.tt->sdtype, w.tt->master_mode, w, a);
}
void sumsq_entry(const Work& w, double* partials) { dispatch_param_dtype<SumsqOp>(w.tt->pdtype, w, partials); }
void gnorm_entry(const Work& w) { dispatch_param_dtype<GnormOp>(w.tt->pdtype, w); }

}  // namespace
}  // namespace LRS_ISA_NS

extern const IsaKernels LRS_ISA_TABLE;
const IsaKernels LRS_ISA_TABLE = {LRS_ISA_NAME, &LRS_ISA_NS::adamw_entry, &LRS_ISA_NS::lamb_entry,
                                  &LRS_ISA_NS::sumsq_entry, &LRS_ISA_NS::gnorm_entry};

}  // namespace cpu
}  // namespace lrsched
