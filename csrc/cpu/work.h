// Internal interface between the scalar driver (ops.cpp, baseline ISA) and the per-ISA kernels
// (kernels_impl.h compiled once per instruction set). Plain data only.
#pragma once

#include <cstdint>

#include <lrsched/layout.h>
#include <lrsched/quant.h>

#include "api.h"

namespace lrsched {
namespace cpu {

/// How work is cut: fixed chunks per tensor (independent of the thread count), numbered globally: chunk k
/// of the bucket belongs to tensor i with chunk_off[i] <= k < chunk_off[i+1]. A chunk is kChunkElems
/// elements, or, for int8 moments, kChunkElems / quant_block whole quantization blocks (row-major over
/// the rows and the blocks of each row: quant.h QuantGeometry), so no block straddles two chunks.
struct Work {
  const TensorTable* tt;
  const int64_t* elem_off;   // [n + 1] prefix sums of numel
  const int64_t* chunk_off;  // [n + 1] prefix sums of chunk counts
  int threads;
  uint32_t clock32;          // clock[STEPS] (low 32 bits): the stochastic-rounding seeds' clock
  double* gnorm;             // [chunks, GN_COLS] per-chunk sums of g^2 and |g| of the raw gradients, or null
  bool prefetch;             // the int8 kernels prefetch the next blocks (kernel_common.h prefetch_ahead)
};

/// Chunks of tensor i.
static inline int64_t chunk_count(const TensorTable& tt, int64_t i) {
  if (!quantized(tt)) return (tt.numel[i] + kChunkElems - 1) / kChunkElems;
  const QuantGeometry q = quant_geometry(tt.numel[i], last_dim_of(tt, i), tt.quant_block);
  const int64_t per = kChunkElems / q.qb;
  return (q.blocks + per - 1) / per;
}

/// First element of local chunk c of tensor i (numel for c = its chunk count).
static inline int64_t chunk_begin(const TensorTable& tt, int64_t i, int64_t c) {
  const int64_t numel = tt.numel[i];
  if (!quantized(tt)) return c * kChunkElems < numel ? c * kChunkElems : numel;
  const QuantGeometry q = quant_geometry(numel, last_dim_of(tt, i), tt.quant_block);
  const int64_t j = c * (kChunkElems / q.qb);
  return j < q.blocks ? q_block_start(q, j) : numel;
}

/// First local chunk of tensor i that starts at or after its element x.
static inline int64_t chunk_at_local(const TensorTable& tt, int64_t i, int64_t x) {
  if (!quantized(tt)) return (x + kChunkElems - 1) / kChunkElems;
  const QuantGeometry q = quant_geometry(tt.numel[i], last_dim_of(tt, i), tt.quant_block);
  const int64_t per = kChunkElems / q.qb;
  return (q_block_at(q, x) + per - 1) / per;
}

/// Per-tensor LAMB data for the ratio (double, computed by the driver).
struct LambTensorInfo {
  double lr;
  double trust_min;
  double trust_max;
  int adapt;
};

struct LambArgs {
  const void* coeffs;             // LambCoeffs<T>[n]
  const LambTensorInfo* info;     // [n]
  bool skip;                      // found_inf: telemetry only
  int64_t phase;                  // layout::LAMB_FUSED (stage 1, per-tensor reduction, stage 2 right after
                                  // each tensor's stage 1, cache-hot), LAMB_STAGE1 (sharded: per-tensor
                                  // float32 sums only, writes nothing else) or LAMB_STAGE2 (sharded: from
                                  // the given sums, telemetry, moments and update)
  const int64_t* coop;            // LAMB_FUSED: large tensors, each updated by all threads together
  int64_t ncoop;
  const int64_t* rest;            // LAMB_FUSED: the others, largest first, one thread per tensor
  int64_t nrest;
  void* scratch;                  // scratch_elems elements of T, or null
  int64_t scratch_elems;
  int64_t hot_elems;              // keep u in the scratch for tensors of at most this many elements per thread
  double* partials;               // [chunks, 2]: sums of w^2, u^2
  float* sums;                    // [n, 2] out (stage 1) / in (stage 2)
  float* norms_out;               // [n, 3] (fused, stage 2)
};

/// The kernels of one instruction set.
struct IsaKernels {
  const char* name;
  void (*adamw)(const Work&, const void* coeffs, bool amsgrad);
  void (*lamb)(const Work&, const LambArgs&);
  void (*sumsq)(const Work&, double* partials);
  void (*gnorm)(const Work&);  // the gradient-norm partials alone (into Work::gnorm)
};

extern const IsaKernels kKernelsBaseline;
#if defined(LRS_HAVE_AVX2)
extern const IsaKernels kKernelsAvx2;
#endif
#if defined(LRS_HAVE_AVX512)
extern const IsaKernels kKernelsAvx512;
#endif

/// First global chunk that starts at or after element ``e`` of the tensor range [tb, te) (e relative to the
/// whole bucket); chunk_off[te] if e is at or past the range's end.
static inline int64_t chunk_at_element(const Work& w, int64_t tb, int64_t te, int64_t e) {
  if (e >= w.elem_off[te]) return w.chunk_off[te];
  if (e <= w.elem_off[tb]) return w.chunk_off[tb];
  int64_t lo = tb, hi = te;  // elem_off[lo] <= e < elem_off[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (w.elem_off[mid] <= e) lo = mid; else hi = mid;
  }
  return w.chunk_off[lo] + chunk_at_local(*w.tt, lo, e - w.elem_off[lo]);
}

/// Thread ``tid`` of ``nth``: its chunks of the tensor range [tb, te), balanced by elements.
static inline void thread_chunks(const Work& w, int64_t tb, int64_t te, int tid, int nth, int64_t* k0, int64_t* k1) {
  const int64_t base = w.elem_off[tb], total = w.elem_off[te] - base;
  const int64_t e0 = base + (total / nth) * tid + (total % nth) * tid / nth;
  const int64_t e1 = base + (total / nth) * (tid + 1) + (total % nth) * (tid + 1) / nth;
  *k0 = chunk_at_element(w, tb, te, e0);
  *k1 = tid + 1 == nth ? w.chunk_off[te] : chunk_at_element(w, tb, te, e1);
}

/// Tensor that owns global chunk ``k`` (first tensor i >= 0 with chunk_off[i+1] > k).
static inline int64_t tensor_of_chunk(const Work& w, int64_t k) {
  int64_t lo = 0, hi = w.tt->n;  // find smallest i with chunk_off[i+1] > k
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (w.chunk_off[mid + 1] > k) hi = mid; else lo = mid + 1;
  }
  return lo;
}

}  // namespace cpu
}  // namespace lrsched
