// CUDA LAMB: stage 1 (norm partials and gradient-norm partials; int8 moments also store their codes unless
// the step is skipped), a per-tensor reduction in chunk order (deterministic, no float atomics), stage 2
// (floating moments: rebuilt from the gradient and the old moments, then written; int8 moments: the stored
// codes decoded). The same per-element math and storage policies as the CPU kernels (lamb.h, quant.h).
#include <cuda_runtime.h>

#include <cstdint>

#include <lrsched/advance.h>
#include <lrsched/dtypes.h>
#include <lrsched/lamb.h>
#include <lrsched/quant.h>
#include <lrsched/schedule.h>

#include "common.cuh"

namespace lrsched {
namespace cuda {
namespace {

template <class P>
__device__ __forceinline__ LambCoeffs<compute_t<P>> lamb_coeffs_for(const StepTables& st, int64_t i,
                                                                    const float* clip_div) {
  const int64_t g = st.group_index[i];
  return lamb_coeffs<compute_t<P>>(step_group_lr(st, g), st.hparams + g * layout::HP_COLS,
                                   static_cast<double>(st.steps[i]), inv_scale(st, clip_div));
}

template <class T>
__device__ __forceinline__ void add_sq(T w, T u, double& sw, double& su) {
  sw += static_cast<double>(w) * static_cast<double>(w);
  su += static_cast<double>(u) * static_cast<double>(u);
}

template <class T>
__device__ __forceinline__ void add_gnorm(T g, double& sq, double& ab) {
  const double x = static_cast<double>(g);
  sq += x * x;
  ab += x < 0.0 ? -x : x;
}

__device__ __forceinline__ void write_partials(double sw, double su, double* partials) {
  block_sum2(sw, su);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = sw;
    partials[2 * blockIdx.x + 1] = su;
  }
}

// ---------------------------------------------------------------------------------------------------
// floating moments
// ---------------------------------------------------------------------------------------------------
template <class P, class S, int64_t MODE, bool SR>
__global__ void __launch_bounds__(kThreads) lamb_stage1_kernel(TensorTable tt, StepTables st, const float* clip_div,
                                                               double* partials, double* gn) {
  using T = compute_t<P>;
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
  __shared__ LambCoeffs<T> c;
  if (threadIdx.x == 0) c = lamb_coeffs_for<P>(st, i, clip_div);
  __syncthreads();
  const Row r = row(tt, i);
  const P* p = static_cast<const P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  const S* m = static_cast<const S*>(r.m);
  const S* v = static_cast<const S*>(r.v);
  const master_t<MODE>* mst = static_cast<const master_t<MODE>*>(r.master);
  const Seeds sd = seeds_of(st, r);
  int64_t b, e;
  chunk_elems(tt, r, chunk, &b, &e);
  double sw = 0.0, su = 0.0, sq = 0.0, ab = 0.0;
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    const T gx = load(gr[x]);
    add_gnorm(gx, sq, ab);
    T mj = load(m[x]), vj = load(v[x]);
    lamb_moments_stored_at<S, SR>(gx, mj, vj, c, at(sd.m, sd, x), at(sd.v, sd, x));  // r as stored (lamb.h)
    T wj, uj;
    lamb_base_update(param_load<P, MODE, T>(p, mst, x), lamb_direction(mj, vj, c), c, wj, uj);
    add_sq(wj, uj, sw, su);
  }
  write_partials(sw, su, partials);
  write_gnorm(sq, ab, gn);
}

template <class P, class S, int64_t MODE, bool SR>
__global__ void __launch_bounds__(kThreads) lamb_stage2_kernel(TensorTable tt, StepTables st, const float* clip_div,
                                                               const double* ratio) {
  using T = compute_t<P>;
  if (step_skipped(st)) return;
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
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
  master_t<MODE>* mst = static_cast<master_t<MODE>*>(r.master);
  const Seeds sd = seeds_of(st, r);
  int64_t b, e;
  chunk_elems(tt, r, chunk, &b, &e);
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    T mj = load(m[x]), vj = load(v[x]);
    lamb_moments_stored_at<S, SR>(load(gr[x]), mj, vj, c, at(sd.m, sd, x), at(sd.v, sd, x));  // stage 1's bits
    store(&m[x], mj);
    store(&v[x], vj);
    T wj, uj;
    lamb_base_update(param_load<P, MODE, T>(p, mst, x), lamb_direction(mj, vj, c), c, wj, uj);
    param_store<P, MODE, SR>(p, mst, x, wj - lr_ratio * uj, at(sd.p, sd, x));
  }
}

// ---------------------------------------------------------------------------------------------------
// int8 moments
// ---------------------------------------------------------------------------------------------------
template <class P, int64_t MODE>
__global__ void __launch_bounds__(kThreads) lamb_q_stage1_kernel(TensorTable tt, StepTables st, const float* clip_div,
                                                                 double* partials, double* gn) {
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
  const bool store_codes = !step_skipped(st);
  __shared__ LambCoeffs<float> c;
  if (threadIdx.x == 0) c = lamb_coeffs_for<P>(st, i, clip_div);
  __syncthreads();
  const Row r = row(tt, i);
  const P* p = static_cast<const P*>(r.p);
  const P* gr = static_cast<const P*>(r.g);
  int8_t* cm = static_cast<int8_t*>(r.m);
  uint8_t* cv = static_cast<uint8_t*>(r.v);
  const master_t<MODE>* mst = static_cast<const master_t<MODE>*>(r.master);
  const QGroups G = q_groups(r, chunk, tt.quant_block);
  const int group = threadIdx.x / G.lanes, lane = threadIdx.x % G.lanes;
  double sw = 0.0, su = 0.0, sq = 0.0, ab = 0.0;
  for (int64_t base = G.j0; base < G.j1; base += G.groups) {
    const int64_t j = base + group;
    const bool active = j < G.j1;
    const int64_t s = active ? q_block_start(G.q, j) : 0, len = active ? q_block_length(G.q, j) : 0;
    float mreg[kQPer], rreg[kQPer];
    uint32_t xm = 0, xv = 0;
    const float dm0 = active ? q_step_m(r.sm[j]) : 0.0f, dv0 = active ? q_step_v(r.sv[j]) : 0.0f;
#pragma unroll
    for (int k = 0; k < kQPer; ++k) {
      const int64_t o = lane + static_cast<int64_t>(k) * G.lanes;
      mreg[k] = rreg[k] = 0.0f;
      if (k >= G.per || o >= len) continue;
      const int64_t x = s + o;
      const float gx = load(gr[x]);
      add_gnorm(gx, sq, ab);
      float mj = q_decode_m(cm[x], dm0), vj = q_decode_v(cv[x], dv0);
      lamb_moments(gx, mj, vj, c);
      mreg[k] = mj;
      rreg[k] = sqrt_rn(vj);
      xm = max_u32(xm, abs_bits(mj));
      xv = max_u32(xv, abs_bits(rreg[k]));
    }
    const float smax = f32_from_bits(group_max(xm, G.lanes)), vmax = f32_from_bits(group_max(xv, G.lanes));
    const float qm = q_recip_m(smax), qv = q_recip_v(vmax), dm = q_step_m(smax), dv = q_step_v(vmax);
#pragma unroll
    for (int k = 0; k < kQPer; ++k) {
      const int64_t o = lane + static_cast<int64_t>(k) * G.lanes;
      if (k >= G.per || o >= len) continue;
      const int64_t x = s + o;
      const int8_t km = static_cast<int8_t>(q_encode_m(mreg[k], qm));
      const uint8_t kv = static_cast<uint8_t>(q_encode_v(rreg[k], qv));
      if (store_codes) {
        cm[x] = km;
        cv[x] = kv;
      }
      float wj, uj;  // u from the decoded codes: the moments as stored
      const float dir = lamb_direction_root(q_decode_m(km, dm), q_decode_r(kv, dv), c);
      lamb_base_update(param_load<P, MODE, float>(p, mst, x), dir, c, wj, uj);
      add_sq(wj, uj, sw, su);
    }
    if (store_codes && active && lane == 0) {
      r.sm[j] = smax;
      r.sv[j] = vmax;
    }
  }
  write_partials(sw, su, partials);
  write_gnorm(sq, ab, gn);
}

template <class P, int64_t MODE, bool SR>
__global__ void __launch_bounds__(kThreads) lamb_q_stage2_kernel(TensorTable tt, StepTables st, const float* clip_div,
                                                                 const double* ratio) {
  if (step_skipped(st)) return;
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
  __shared__ LambCoeffs<float> c;
  __shared__ float lr_ratio;
  if (threadIdx.x == 0) {
    c = lamb_coeffs_for<P>(st, i, clip_div);
    lr_ratio = static_cast<float>(step_group_lr(st, st.group_index[i]) * ratio[i]);
  }
  __syncthreads();
  const Row r = row(tt, i);
  P* p = static_cast<P*>(r.p);
  const int8_t* cm = static_cast<const int8_t*>(r.m);
  const uint8_t* cv = static_cast<const uint8_t*>(r.v);
  master_t<MODE>* mst = static_cast<master_t<MODE>*>(r.master);
  const Seeds sd = seeds_of(st, r);
  const QuantGeometry q = quant_geometry(r.numel, r.last_dim, tt.quant_block);
  int64_t b, e;
  chunk_elems(tt, r, chunk, &b, &e);
  for (int64_t x = b + threadIdx.x; x < e; x += blockDim.x) {
    const int64_t j = (x / q.last_dim) * q.nb + (x % q.last_dim) / q.qb;
    float wj, uj;
    const float md = q_decode_m(cm[x], q_step_m(r.sm[j])), rd = q_decode_r(cv[x], q_step_v(r.sv[j]));
    lamb_base_update(param_load<P, MODE, float>(p, mst, x), lamb_direction_root(md, rd, c), c, wj, uj);
    param_store<P, MODE, SR>(p, mst, x, wj - lr_ratio * uj, at(sd.p, sd, x));
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

// ---------------------------------------------------------------------------------------------------
// launches per dtype combination (dispatch_dtypes: lrsched/dtypes.h)
// ---------------------------------------------------------------------------------------------------
template <class P, class S, int64_t MODE>
struct LambStage1Op {
  static void run(const TensorTable& tt, const StepTables& st, const float* clip, double* partials, double* gn,
                  cudaStream_t s) {
    const unsigned nb = static_cast<unsigned>(tt.nblocks);
    constexpr bool can_sr = sr_applies<P, S, MODE>();
    if constexpr (std::is_same<S, q8>::value) {
      lamb_q_stage1_kernel<P, MODE><<<nb, kThreads, 0, s>>>(tt, st, clip, partials, gn);
    } else if (can_sr && tt.stochastic_rounding) {
      lamb_stage1_kernel<P, S, MODE, can_sr><<<nb, kThreads, 0, s>>>(tt, st, clip, partials, gn);
    } else {
      lamb_stage1_kernel<P, S, MODE, false><<<nb, kThreads, 0, s>>>(tt, st, clip, partials, gn);
    }
  }
};

template <class P, class S, int64_t MODE>
struct LambStage2Op {
  static void run(const TensorTable& tt, const StepTables& st, const float* clip, const double* ratio, cudaStream_t s) {
    const unsigned nb = static_cast<unsigned>(tt.nblocks);
    constexpr bool can_sr = sr_applies<P, S, MODE>();
    const bool sr = can_sr && tt.stochastic_rounding;
    if constexpr (std::is_same<S, q8>::value) {
      if (sr) lamb_q_stage2_kernel<P, MODE, can_sr><<<nb, kThreads, 0, s>>>(tt, st, clip, ratio);
      else lamb_q_stage2_kernel<P, MODE, false><<<nb, kThreads, 0, s>>>(tt, st, clip, ratio);
    } else {
      if (sr) lamb_stage2_kernel<P, S, MODE, can_sr><<<nb, kThreads, 0, s>>>(tt, st, clip, ratio);
      else lamb_stage2_kernel<P, S, MODE, false><<<nb, kThreads, 0, s>>>(tt, st, clip, ratio);
    }
  }
};

}  // namespace

void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, double* partials,
          double* ratio, float* sums, int64_t phase, const Gnorm& gn, void* stream) {
  if (tt.n == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned reduce_blocks = static_cast<unsigned>((tt.n + 255) / 256);
  if (phase != layout::LAMB_STAGE2) {
    if (tt.nblocks > 0)
      dispatch_dtypes<LambStage1Op>(tt.pdtype, tt.sdtype, tt.master_mode, tt, st, clip_div, partials,
                                    gn.out ? gn.partials : nullptr, s);
    launch_gnorm_reduce(gn.partials, tt.nblocks, st.grad_scale, gn.out, s);
  }
  lamb_reduce_kernel<<<reduce_blocks, 256, 0, s>>>(tt, st, partials, sums, norms_out, ratio, phase);
  if (phase != layout::LAMB_STAGE1 && tt.nblocks > 0) {
    const double* r = ratio;
    dispatch_dtypes<LambStage2Op>(tt.pdtype, tt.sdtype, tt.master_mode, tt, st, clip_div, r, s);
  }
  note(cudaGetLastError());
}

}  // namespace cuda
}  // namespace lrsched
