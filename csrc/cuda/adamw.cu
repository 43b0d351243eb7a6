// CUDA AdamW: one launch over floating or int8 moments (the same per-element math and storage policies as
// the CPU kernels: adamw.h, quant.h), the gradient-norm partials accumulated while the gradient is read,
// then their reduction (common.cuh). A skipped step (found_inf) reads the gradients for the partials only.
#include <cuda_runtime.h>

#include <cstdint>

#include <lrsched/adamw.h>
#include <lrsched/advance.h>
#include <lrsched/dtypes.h>
#include <lrsched/quant.h>
#include <lrsched/schedule.h>

#include "common.cuh"

namespace lrsched {
namespace cuda {
namespace {

template <class T>
__device__ __forceinline__ void add_gnorm(T g, double& sq, double& ab) {
  const double x = static_cast<double>(g);
  sq += x * x;
  ab += x < 0.0 ? -x : x;
}

template <class P>
__device__ __forceinline__ AdamWCoeffs<compute_t<P>> adamw_coeffs_for(const StepTables& st, int64_t i) {
  const int64_t g = st.group_index[i];
  return adamw_coeffs<compute_t<P>>(step_group_lr(st, g), st.hparams + g * layout::HP_COLS,
                                    static_cast<double>(st.steps[i]), inv_scale(st, nullptr));
}

// ---------------------------------------------------------------------------------------------------
// floating moments
// ---------------------------------------------------------------------------------------------------
template <class P, class S, int64_t MODE, bool AMS, bool SR>
__global__ void __launch_bounds__(kThreads) adamw_kernel(TensorTable tt, StepTables st, double* gn) {
  using T = compute_t<P>;
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
  const bool skip = step_skipped(st);
  __shared__ AdamWCoeffs<T> c;
  if (threadIdx.x == 0 && !skip) c = adamw_coeffs_for<P>(st, i);
  __syncthreads();
  const Row r = row(tt, i);
  P* p = static_cast<P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  S* m = static_cast<S*>(r.m);
  S* v = static_cast<S*>(r.v);
  S* vmax = static_cast<S*>(r.vmax);
  master_t<MODE>* mst = static_cast<master_t<MODE>*>(r.master);
  const Seeds sd = seeds_of(st, r);
  int64_t b, e;
  chunk_elems(tt, r, chunk, &b, &e);
  double sq = 0.0, ab = 0.0;
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    const T gx = load(gr[x]);
    add_gnorm(gx, sq, ab);
    if (skip) continue;
    T pj = param_load<P, MODE, T>(p, mst, x);
    T mj = load(m[x]), vj = load(v[x]);
    T xj = AMS ? load(vmax[x]) : T(0);
    adamw_element<AMS>(pj, gx, mj, vj, xj, c);
    store_rounded<SR>(&m[x], mj, at(sd.m, sd, x));
    store_rounded<SR>(&v[x], vj, at(sd.v, sd, x));
    if (AMS) store(&vmax[x], xj);
    param_store<P, MODE, SR>(p, mst, x, pj, at(sd.p, sd, x));
  }
  write_gnorm(sq, ab, gn);
}

// ---------------------------------------------------------------------------------------------------
// int8 moments: the chunk's quantization blocks in groups (common.cuh QGroups)
// ---------------------------------------------------------------------------------------------------
template <class P, int64_t MODE, bool SR>
__global__ void __launch_bounds__(kThreads) adamw_q_kernel(TensorTable tt, StepTables st, double* gn) {
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
  const bool skip = step_skipped(st);
  __shared__ AdamWCoeffs<float> c;
  if (threadIdx.x == 0 && !skip) c = adamw_coeffs_for<P>(st, i);
  __syncthreads();
  const Row r = row(tt, i);
  P* p = static_cast<P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  int8_t* cm = static_cast<int8_t*>(r.m);
  uint8_t* cv = static_cast<uint8_t*>(r.v);
  master_t<MODE>* mst = static_cast<master_t<MODE>*>(r.master);
  const Seeds sd = seeds_of(st, r);
  const QGroups G = q_groups(r, chunk, tt.quant_block);
  const int group = threadIdx.x / G.lanes, lane = threadIdx.x % G.lanes;
  double sq = 0.0, ab = 0.0;
  for (int64_t base = G.j0; base < G.j1; base += G.groups) {
    const int64_t j = base + group;
    const bool active = j < G.j1;
    const int64_t s = active ? q_block_start(G.q, j) : 0, len = active ? q_block_length(G.q, j) : 0;
    float mreg[kQPer], rreg[kQPer];
    uint32_t xm = 0, xv = 0;
    const float dm = active ? q_step_m(r.sm[j]) : 0.0f, dv = active ? q_step_v(r.sv[j]) : 0.0f;
#pragma unroll
    for (int k = 0; k < kQPer; ++k) {
      const int64_t o = lane + static_cast<int64_t>(k) * G.lanes;
      mreg[k] = rreg[k] = 0.0f;
      if (k >= G.per || o >= len) continue;
      const int64_t x = s + o;
      const float gx = load(gr[x]);
      add_gnorm(gx, sq, ab);
      if (skip) continue;
      float pj = param_load<P, MODE, float>(p, mst, x);
      float mj = q_decode_m(cm[x], dm), vj = q_decode_v(cv[x], dv);
      adamw_moments(pj, gx, mj, vj, c);
      const float rj = sqrt_rn(vj);
      adamw_apply_q(pj, mj, rj, c);
      mreg[k] = mj;
      rreg[k] = rj;
      xm = max_u32(xm, abs_bits(mj));
      xv = max_u32(xv, abs_bits(rj));
      param_store<P, MODE, SR>(p, mst, x, pj, at(sd.p, sd, x));
    }
    if (skip) continue;  // block-uniform
    const float smax = f32_from_bits(group_max(xm, G.lanes)), vmax = f32_from_bits(group_max(xv, G.lanes));
    const float qm = q_recip_m(smax), qv = q_recip_v(vmax);
#pragma unroll
    for (int k = 0; k < kQPer; ++k) {
      const int64_t o = lane + static_cast<int64_t>(k) * G.lanes;
      if (k >= G.per || o >= len) continue;
      cm[s + o] = static_cast<int8_t>(q_encode_m(mreg[k], qm));
      cv[s + o] = static_cast<uint8_t>(q_encode_v(rreg[k], qv));
    }
    if (active && lane == 0) {
      r.sm[j] = smax;
      r.sv[j] = vmax;
    }
  }
  write_gnorm(sq, ab, gn);
}

// ---------------------------------------------------------------------------------------------------
// launches per dtype combination (dispatch_dtypes: lrsched/dtypes.h)
// ---------------------------------------------------------------------------------------------------
template <class P, class S, int64_t MODE, bool SR>
void launch(const TensorTable& tt, const StepTables& st, bool ams, double* gn, cudaStream_t s) {
  const unsigned nb = static_cast<unsigned>(tt.nblocks);
  if constexpr (std::is_same<S, q8>::value) {
    adamw_q_kernel<P, MODE, SR><<<nb, kThreads, 0, s>>>(tt, st, gn);
  } else {
    if (ams) adamw_kernel<P, S, MODE, true, SR><<<nb, kThreads, 0, s>>>(tt, st, gn);
    else adamw_kernel<P, S, MODE, false, SR><<<nb, kThreads, 0, s>>>(tt, st, gn);
  }
}

template <class P, class S, int64_t MODE>
struct AdamWOp {
  static void run(const TensorTable& tt, const StepTables& st, bool ams, double* gn, cudaStream_t s) {
    constexpr bool can_sr = sr_applies<P, S, MODE>();
    if (can_sr && tt.stochastic_rounding) launch<P, S, MODE, can_sr>(tt, st, ams, gn, s);
    else launch<P, S, MODE, false>(tt, st, ams, gn, s);
  }
};

}  // namespace

void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, const Gnorm& gn, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (tt.nblocks > 0) {
    dispatch_dtypes<AdamWOp>(tt.pdtype, tt.sdtype, tt.master_mode, tt, st, amsgrad, gn.out ? gn.partials : nullptr, s);
  }
  launch_gnorm_reduce(gn.partials, tt.nblocks, st.grad_scale, gn.out, s);
  note(cudaGetLastError());
}

}  // namespace cuda
}  // namespace lrsched
