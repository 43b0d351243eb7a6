// Device helpers shared by the CUDA translation units (adamw.cu, lamb.cu, kernels.cu): the pointer-table
// row of a tensor, the chunk of a thread block, deterministic block reductions, the quantization-block
// groups of the int8 kernels, and the host-side error note.
//
// Work: one thread block per (tensor, chunk) from a block table built by the host once per bucket. A chunk
// is kChunkElems elements, or, for int8 moments, kChunkElems / quant_block whole quantization blocks
// (lrsched/quant.h QuantGeometry), exactly as on the CPU.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include <lrsched/convert.h>
#include <lrsched/layout.h>
#include <lrsched/quant.h>
#include <lrsched/step_tables.h>

#include "api.h"

namespace lrsched {
namespace cuda {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
/// Elements of one quantization block per thread, at most (kMaxQuantBlock / kThreads).
constexpr int kQPer = static_cast<int>(kMaxQuantBlock / kThreads);

template <class P>
struct Compute {
  using type = float;
};
template <>
struct Compute<double> {
  using type = double;
};
template <class P>
using compute_t = typename Compute<P>::type;

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

struct Row {  // column i of the pointer table
  void* p;
  const void* g;
  void* m;
  void* v;
  void* vmax;
  void* master;
  float* sm;
  float* sv;
  int64_t numel, last_dim, offset, salt;
};

/// Column i of the pointer table (rows layout::PTR_*).
__device__ __forceinline__ Row row(const TensorTable& tt, int64_t i) {
  const int64_t n = tt.n;
  auto at = [&](int64_t r) { return tt.table[r * n + i]; };
  Row r;
  r.p = reinterpret_cast<void*>(at(layout::PTR_PARAM));
  r.g = reinterpret_cast<const void*>(at(layout::PTR_GRAD));
  r.m = reinterpret_cast<void*>(at(layout::PTR_EXP_AVG));
  r.v = reinterpret_cast<void*>(at(layout::PTR_EXP_AVG_SQ));
  r.vmax = reinterpret_cast<void*>(at(layout::PTR_MAX_EXP_AVG_SQ));
  r.master = reinterpret_cast<void*>(at(layout::PTR_MASTER));
  r.sm = reinterpret_cast<float*>(at(layout::PTR_EXP_AVG_SCALE));
  r.sv = reinterpret_cast<float*>(at(layout::PTR_EXP_AVG_SQ_SCALE));
  r.numel = at(layout::PTR_NUMEL);
  r.last_dim = at(layout::PTR_LAST_DIM);
  r.offset = at(layout::PTR_ELEM_OFFSET);
  r.salt = at(layout::PTR_SALT);
  return r;
}

/// Tensor and chunk of this thread block.
__device__ __forceinline__ void block_chunk(const TensorTable& tt, int64_t* i, int64_t* chunk) {
  *i = tt.blocks[blockIdx.x];
  *chunk = tt.blocks[tt.nblocks + blockIdx.x];
}

/// Element range [b, e) of a chunk (whole quantization blocks for int8 moments).
__device__ __forceinline__ void chunk_elems(const TensorTable& tt, const Row& r, int64_t chunk, int64_t* b,
                                            int64_t* e) {
  if (tt.sdtype != layout::DT_I8) {
    *b = chunk * kChunkElems;
    *e = min(*b + kChunkElems, r.numel);
    return;
  }
  const QuantGeometry q = quant_geometry(r.numel, r.last_dim, tt.quant_block);
  const int64_t per = kChunkElems / tt.quant_block, j0 = chunk * per, j1 = j0 + per;
  *b = j0 < q.blocks ? q_block_start(q, j0) : r.numel;
  *e = j1 < q.blocks ? q_block_start(q, j1) : r.numel;
}

__device__ __forceinline__ double inv_scale(const StepTables& st, const float* clip_div) {
  double s = 1.0;
  if (st.grad_scale) s *= static_cast<double>(*st.grad_scale);
  if (clip_div) s *= static_cast<double>(*clip_div);
  return 1.0 / s;
}

/// The stochastic-rounding seeds of a tensor (quant.h), from the device clock before the step.
struct Seeds {
  uint32_t off, p, m, v;
};

__device__ __forceinline__ Seeds seeds_of(const StepTables& st, const Row& r) {
  const int64_t clock = st.clock[layout::CLOCK_STEPS];
  return Seeds{static_cast<uint32_t>(r.offset), sr_seed(clock, r.salt, layout::SR_STREAM_PARAM),
               sr_seed(clock, r.salt, layout::SR_STREAM_EXP_AVG), sr_seed(clock, r.salt, layout::SR_STREAM_EXP_AVG_SQ)};
}

__device__ __forceinline__ SrAt at(uint32_t seed, const Seeds& sd, int64_t x) {
  return SrAt{sd.off + static_cast<uint32_t>(x), seed};
}

/// Deterministic block sum of two doubles per thread (fixed tree); the result is valid in every thread.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kThreads], sb[kThreads];
  __syncthreads();  // the buffers may still be read by a previous call
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      sa[threadIdx.x] += sa[threadIdx.x + s];
      sb[threadIdx.x] += sb[threadIdx.x + s];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
}

/// This block's gradient-norm partials (sums of g^2 and |g| of the raw gradient) into gn[2 * blockIdx].
__device__ __forceinline__ void write_gnorm(double sq, double ab, double* gn) {
  block_sum2(sq, ab);
  if (gn != nullptr && threadIdx.x == 0) {
    gn[layout::GN_COLS * blockIdx.x + layout::GN_SUMSQ] = sq;
    gn[layout::GN_COLS * blockIdx.x + layout::GN_SUMABS] = ab;
  }
}

// --- int8 moments: the quantization blocks of a chunk, in groups -------------------------------------
/// A chunk's quantization blocks are processed ``groups`` at a time: thread t serves block
/// ``first + pass * groups + t / lanes`` (its group) at elements ``t % lanes + e * lanes`` (e < per).
struct QGroups {
  QuantGeometry q;
  int64_t j0, j1;  // the chunk's blocks
  int lanes, groups, per;
};

__device__ __forceinline__ QGroups q_groups(const Row& r, int64_t chunk, int64_t qb) {
  QGroups G;
  G.q = quant_geometry(r.numel, r.last_dim, qb);
  const int64_t k = kChunkElems / qb;
  G.j0 = chunk * k;
  G.j1 = min(G.j0 + k, G.q.blocks);
  G.lanes = static_cast<int>(qb < kThreads ? qb : kThreads);
  G.groups = kThreads / G.lanes;
  G.per = static_cast<int>(qb / G.lanes);
  return G;
}

/// Maximum of ``x`` over the threads of this thread's group (every thread of the block must call it).
__device__ __forceinline__ uint32_t group_max(uint32_t x, int lanes) {
  for (int o = (lanes < 32 ? lanes : 32) / 2; o > 0; o >>= 1) x = max_u32(x, __shfl_xor_sync(0xFFFFFFFFu, x, o));
  if (lanes <= 32) return x;
  __shared__ uint32_t warp_max[kWarps];
  __syncthreads();  // previous readers are done
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = x;
  __syncthreads();
  const int wpg = lanes / 32, first = (threadIdx.x / lanes) * wpg;
  uint32_t m = 0;
  for (int w = 0; w < wpg; ++w) m = max_u32(m, warp_max[first + w]);
  return m;
}

/// Records a CUDA error for last_error() (host).
void note(cudaError_t e);

/// Reduces the per-block gradient-norm partials (double [nblocks, GN_COLS]) into gnorm_out (float32
/// [1, GN_COLS]) scaled by 1 / grad_scale (host launch; nothing when gnorm_out is null).
void launch_gnorm_reduce(const double* partials, int64_t nblocks, const float* grad_scale, float* gnorm_out,
                         cudaStream_t s);

}  // namespace cuda
}  // namespace lrsched
