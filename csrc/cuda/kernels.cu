// CUDA kernels of the "cuda" backend: multi-tensor AdamW and two-stage LAMB with the schedule evaluated
// in the kernel from the device clock (schedule.h), the same per-element math as the CPU backend
// (adamw.h, lamb.h). No torch headers: raw device pointers and a stream.
//
// Work: one thread block per (tensor, chunk of kChunkElems elements), from a block table built by the
// host once per bucket. LAMB reductions are deterministic: per block a fixed-shape shared-memory tree in
// double, per tensor its blocks' partials added in chunk order by one thread; no float atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include <lrsched/adamw.h>
#include <lrsched/advance.h>
#include <lrsched/convert.h>
#include <lrsched/dtypes.h>
#include <lrsched/lamb.h>
#include <lrsched/layout.h>
#include <lrsched/schedule.h>

#include "api.h"

namespace lrsched {
namespace cuda {
namespace {

constexpr int kThreads = 512;

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

struct Row {  // the pointers of tensor i
  void* p;
  const void* g;
  void* m;
  void* v;
  void* vmax;
  float* master;
  int64_t numel;
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
  r.master = reinterpret_cast<float*>(at(layout::PTR_MASTER));
  r.numel = at(layout::PTR_NUMEL);
  return r;
}

__device__ __forceinline__ double inv_scale(const StepTables& st, const float* clip_div) {
  double s = 1.0;
  if (st.grad_scale) s *= static_cast<double>(*st.grad_scale);
  if (clip_div) s *= static_cast<double>(*clip_div);
  return 1.0 / s;
}

// ---------------------------------------------------------------------------------------------------
// AdamW: one launch
// ---------------------------------------------------------------------------------------------------
template <class P, class S, bool MASTER, bool AMS>
__global__ void __launch_bounds__(kThreads) adamw_kernel(TensorTable tt, StepTables st) {
  using T = compute_t<P>;
  if (step_skipped(st)) return;
  const int64_t i = tt.blocks[blockIdx.x], chunk = tt.blocks[tt.nblocks + blockIdx.x];
  __shared__ AdamWCoeffs<T> c;
  if (threadIdx.x == 0) {
    const int64_t g = st.group_index[i];
    c = adamw_coeffs<T>(step_group_lr(st, g), st.hparams + g * layout::HP_COLS, static_cast<double>(st.steps[i]),
                        inv_scale(st, nullptr));
  }
  __syncthreads();
  const Row r = row(tt, i);
  P* p = static_cast<P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  S* m = static_cast<S*>(r.m);
  S* v = static_cast<S*>(r.v);
  S* vmax = static_cast<S*>(r.vmax);
  const int64_t b = chunk * kChunkElems, e = min(b + kChunkElems, r.numel);
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    T pj = MASTER ? static_cast<T>(r.master[x]) : load(p[x]);
    T mj = load(m[x]), vj = load(v[x]);
    T xj = AMS ? load(vmax[x]) : T(0);
    adamw_element<AMS>(pj, load(gr[x]), mj, vj, xj, c);
    store(&m[x], mj);
    store(&v[x], vj);
    if (AMS) store(&vmax[x], xj);
    if (MASTER) r.master[x] = static_cast<float>(pj);
    store(&p[x], pj);
  }
}

// ---------------------------------------------------------------------------------------------------
// LAMB: stage 1 (norm partials, writes nothing), per-tensor reduction, stage 2 (moments and update)
// ---------------------------------------------------------------------------------------------------
/// Deterministic block sum of two doubles per thread (fixed tree); result valid in thread 0.
__device__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kThreads], sb[kThreads];
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

template <class P>
__device__ __forceinline__ LambCoeffs<compute_t<P>> lamb_coeffs_for(const StepTables& st, int64_t i,
                                                                    const float* clip_div) {
  const int64_t g = st.group_index[i];
  return lamb_coeffs<compute_t<P>>(step_group_lr(st, g), st.hparams + g * layout::HP_COLS, static_cast<double>(st.steps[i]),
                                   inv_scale(st, clip_div));
}

template <class P, class S, bool MASTER>
__global__ void __launch_bounds__(kThreads) lamb_stage1_kernel(TensorTable tt, StepTables st, const float* clip_div,
                                                               double* partials) {
  using T = compute_t<P>;
  const int64_t i = tt.blocks[blockIdx.x], chunk = tt.blocks[tt.nblocks + blockIdx.x];
  __shared__ LambCoeffs<T> c;
  if (threadIdx.x == 0) c = lamb_coeffs_for<P>(st, i, clip_div);
  __syncthreads();
  const Row r = row(tt, i);
  const P* p = static_cast<const P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  const S* m = static_cast<const S*>(r.m);
  const S* v = static_cast<const S*>(r.v);
  const int64_t b = chunk * kChunkElems, e = min(b + kChunkElems, r.numel);
  double sw = 0.0, su = 0.0;
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    T mj = load(m[x]), vj = load(v[x]);
    lamb_moments_stored<S>(load(gr[x]), mj, vj, c);  // r from the moments as stored (lamb.h)
    const T pj = MASTER ? static_cast<T>(r.master[x]) : load(p[x]);
    T wj, uj;
    lamb_base_update(pj, lamb_direction(mj, vj, c), c, wj, uj);
    sw += static_cast<double>(wj) * static_cast<double>(wj);
    su += static_cast<double>(uj) * static_cast<double>(uj);
  }
  block_sum2(sw, su);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = sw;
    partials[2 * blockIdx.x + 1] = su;
  }
}

/// One thread per tensor: its blocks' partials in chunk order; writes sums (LAMB_STAGE1) or norms and the
/// ratio (LAMB_FUSED: from partials; LAMB_STAGE2: from the all-reduced float32 sums).
__global__ void lamb_reduce_kernel(TensorTable tt, StepTables st, const double* partials, float* sums, float* norms_out,
                                   double* ratio, int64_t phase) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= tt.n) return;
  double sw = 0.0, su = 0.0;
  if (phase == layout::LAMB_STAGE2) {
    sw = sums[2 * i];
    su = sums[2 * i + 1];
  } else {
    for (int64_t k = tt.first_block[i]; k < tt.first_block[i + 1]; ++k) {
      sw += partials[2 * k];
      su += partials[2 * k + 1];
    }
  }
  if (phase == layout::LAMB_STAGE1) {
    sums[2 * i] = static_cast<float>(sw);
    sums[2 * i + 1] = static_cast<float>(su);
    return;
  }
  const double* hp = st.hparams + st.group_index[i] * layout::HP_COLS;
  const double wn = sqrt(sw), un = sqrt(su);
  const double q = lamb_trust_ratio(wn, un, hp[layout::HP_ADAPT] != 0.0, hp[layout::HP_TRUST_MIN],
                                    hp[layout::HP_TRUST_MAX]);
  ratio[i] = q;
  norms_out[3 * i + layout::NORM_PARAM] = static_cast<float>(wn);
  norms_out[3 * i + layout::NORM_UPDATE] = static_cast<float>(un);
  norms_out[3 * i + layout::NORM_RATIO] = static_cast<float>(q);
}

template <class P, class S, bool MASTER>
__global__ void __launch_bounds__(kThreads) lamb_stage2_kernel(TensorTable tt, StepTables st, const float* clip_div,
                                                               const double* ratio) {
  using T = compute_t<P>;
  if (step_skipped(st)) return;
  const int64_t i = tt.blocks[blockIdx.x], chunk = tt.blocks[tt.nblocks + blockIdx.x];
  __shared__ LambCoeffs<T> c;
  __shared__ T lr_ratio;
  if (threadIdx.x == 0) {
    c = lamb_coeffs_for<P>(st, i, clip_div);
    lr_ratio = static_cast<T>(step_group_lr(st, st.group_index[i]) * ratio[i]);
  }
  __syncthreads();
  const Row r = row(tt, i);
  P* p = static_cast<P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  S* m = static_cast<S*>(r.m);
  S* v = static_cast<S*>(r.v);
  const int64_t b = chunk * kChunkElems, e = min(b + kChunkElems, r.numel);
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    T mj = load(m[x]), vj = load(v[x]);
    lamb_moments_stored<S>(load(gr[x]), mj, vj, c);  // the same bits as stage 1
    store(&m[x], mj);
    store(&v[x], vj);
    const T pj = MASTER ? static_cast<T>(r.master[x]) : load(p[x]);
    T wj, uj;
    lamb_base_update(pj, lamb_direction(mj, vj, c), c, wj, uj);
    const T pn = wj - lr_ratio * uj;
    if (MASTER) r.master[x] = static_cast<float>(pn);
    store(&p[x], pn);
  }
}

// ---------------------------------------------------------------------------------------------------
// grad_sumsq, advance, evaluate_schedule
// ---------------------------------------------------------------------------------------------------
template <class P>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(TensorTable tt, double* partials) {
  const int64_t i = tt.blocks[blockIdx.x], chunk = tt.blocks[tt.nblocks + blockIdx.x];
  const Row r = row(tt, i);
  const P* gr = static_cast<const P*>(r.g);
  const int64_t b = chunk * kChunkElems, e = min(b + kChunkElems, r.numel);
  double s = 0.0, unused = 0.0;
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    const double gx = static_cast<double>(load(gr[x]));
    s += gx * gx;
  }
  block_sum2(s, unused);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void sumsq_total_kernel(const double* partials, int64_t nblocks, const float* grad_scale, float* out) {
  double s = 0.0;
  for (int64_t k = 0; k < nblocks; ++k) s += partials[k];
  const double inv = grad_scale ? 1.0 / static_cast<double>(*grad_scale) : 1.0;
  *out = static_cast<float>(s * (inv * inv));
}

__global__ void advance_kernel(StepTables st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock,
                               const int64_t* tokens) {
  // one block (advance.h): every lr_out first (from the clock before the increment), then the counters
  advance_lr(st, clock, lr_out, threadIdx.x, blockDim.x);
  __syncthreads();
  advance_counters(st, steps, nsteps, clock, tokens, threadIdx.x, blockDim.x);
}

__global__ void evaluate_kernel(const int64_t* ints, const double* floats, int64_t first, int64_t rows,
                                const int64_t* t, int64_t count, float* out) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < count) out[j] = static_cast<float>(schedule_value(ints, floats, first, rows, t[j]));
}

// ---------------------------------------------------------------------------------------------------
// launches per dtype combination (dispatch_dtypes / dispatch_param_dtype: lrsched/dtypes.h)
// ---------------------------------------------------------------------------------------------------
template <class P, class S, bool MASTER>
struct AdamWOp {
  static void run(const TensorTable& tt, const StepTables& st, bool ams, cudaStream_t s) {
    if (ams) adamw_kernel<P, S, MASTER, true><<<static_cast<unsigned>(tt.nblocks), kThreads, 0, s>>>(tt, st);
    else adamw_kernel<P, S, MASTER, false><<<static_cast<unsigned>(tt.nblocks), kThreads, 0, s>>>(tt, st);
  }
};

template <class P, class S, bool MASTER>
struct LambStage1Op {
  static void run(const TensorTable& tt, const StepTables& st, const float* clip, double* partials, cudaStream_t s) {
    lamb_stage1_kernel<P, S, MASTER><<<static_cast<unsigned>(tt.nblocks), kThreads, 0, s>>>(tt, st, clip, partials);
  }
};

template <class P, class S, bool MASTER>
struct LambStage2Op {
  static void run(const TensorTable& tt, const StepTables& st, const float* clip, const double* ratio, cudaStream_t s) {
    lamb_stage2_kernel<P, S, MASTER><<<static_cast<unsigned>(tt.nblocks), kThreads, 0, s>>>(tt, st, clip, ratio);
  }
};

template <class P>
struct SumsqOp {
  static void run(const TensorTable& tt, double* partials, cudaStream_t s) {
    sumsq_kernel<P><<<static_cast<unsigned>(tt.nblocks), kThreads, 0, s>>>(tt, partials);
  }
};

thread_local cudaError_t g_last = cudaSuccess;
void note(cudaError_t e) {
  if (e != cudaSuccess) g_last = e;
}

}  // namespace

void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, void* stream) {
  if (tt.nblocks == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtypes<AdamWOp>(tt.pdtype, tt.sdtype, tt.has_master, tt, st, amsgrad, s);
  note(cudaGetLastError());
}

void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, double* partials,
          double* ratio, float* sums, int64_t phase, void* stream) {
  if (tt.n == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned reduce_blocks = static_cast<unsigned>((tt.n + 255) / 256);
  const bool master = tt.has_master;
  if (phase != layout::LAMB_STAGE2 && tt.nblocks > 0)
    dispatch_dtypes<LambStage1Op>(tt.pdtype, tt.sdtype, master, tt, st, clip_div, partials, s);
  lamb_reduce_kernel<<<reduce_blocks, 256, 0, s>>>(tt, st, partials, sums, norms_out, ratio, phase);
  if (phase != layout::LAMB_STAGE1 && tt.nblocks > 0) {
    const double* r = ratio;
    dispatch_dtypes<LambStage2Op>(tt.pdtype, tt.sdtype, master, tt, st, clip_div, r, s);
  }
  note(cudaGetLastError());
}

void grad_sumsq(const TensorTable& tt, const float* grad_scale, double* partials, float* out, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (tt.nblocks > 0) dispatch_param_dtype<SumsqOp>(tt.pdtype, tt, partials, s);
  sumsq_total_kernel<<<1, 1, 0, s>>>(partials, tt.nblocks, grad_scale, out);
  note(cudaGetLastError());
}

void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock, const int64_t* tokens,
             void* stream) {
  advance_kernel<<<1, 256, 0, static_cast<cudaStream_t>(stream)>>>(st, steps, nsteps, lr_out, clock, tokens);
  note(cudaGetLastError());
}

void evaluate_schedule(const int64_t* ints, const double* floats, int64_t first, int64_t rows, const int64_t* t,
                       int64_t count, float* out, void* stream) {
  if (count == 0) return;
  const unsigned nb = static_cast<unsigned>((count + 255) / 256);
  evaluate_kernel<<<nb, 256, 0, static_cast<cudaStream_t>(stream)>>>(ints, floats, first, rows, t, count, out);
  note(cudaGetLastError());
}

const char* last_error() {
  const cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

}  // namespace cuda
}  // namespace lrsched
