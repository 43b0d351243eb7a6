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

/// The same lanes for sum |x| (float lanes folded into double, or double lanes).
inline void add_abs(const float* x, int64_t len16, double* acc) {
  v16f s = {};
  for (int64_t j = 0; j < len16; j += kLanes) {
    v16f v;
    __builtin_memcpy(&v, x + j, sizeof v);
    s += v < 0.0f ? -v : v;
  }
  for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(s[l]);
}

inline void add_abs(const double* x, int64_t len16, double* acc) {
  v16d s;
  __builtin_memcpy(&s, acc, sizeof s);
  for (int64_t j = 0; j < len16; j += kLanes) {
    v16d v;
    __builtin_memcpy(&v, x + j, sizeof v);
    s += v < 0.0 ? -v : v;
  }
  __builtin_memcpy(acc, &s, sizeof s);
}

/// Gradient-norm lanes of one sub-block g[0, len), len <= kSub: sums of g^2 and |g| of the raw gradient in
/// the compute type (the driver scales the totals by 1 / grad_scale in double).
template <class P>
inline void gnorm_lanes(const P* LRS_RESTRICT g, int64_t len, double* LRS_RESTRICT acc_sq,
                        double* LRS_RESTRICT acc_abs) {
  using T = compute_t<P>;
  alignas(64) T buf[kSub];
  for (int64_t j = 0; j < len; ++j) buf[j] = load(g[j]);
  const int64_t len16 = (len + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = len; j < len16; ++j) buf[j] = T(0);
  add_squares(buf, len16, acc_sq);
  add_abs(buf, len16, acc_abs);
}

/// Gradient-norm lanes of g[b, e) in sub-blocks of kSub from b.
template <class P>
inline void gnorm_range(const P* g, int64_t b, int64_t e, double* acc_sq, double* acc_abs) {
  for (int64_t s = b; s < e; s += kSub) gnorm_lanes(g + s, min64(kSub, e - s), acc_sq, acc_abs);
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
               sr_seed(w.clock32, salt, layout::SR_STREAM_EXP_AVG), sr_seed(w.clock32, salt, layout::SR_STREAM_EXP_AVG_SQ)};
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

template <class S>
constexpr bool is_q8() {
  return std::is_same<S, q8>::value;
}

}  // namespace
}  // namespace LRS_ISA_NS
}  // namespace cpu
}  // namespace lrsched
