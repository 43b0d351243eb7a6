// CUDA kernels of the "cuda" backend outside the optimizers' updates (adamw.cu, lamb.cu): the sum of squares
// of the gradients, the reduction of the gradient-norm partials, the step advance, the schedule evaluator,
// and the error note. No torch headers: raw device pointers and a stream.
//
// The schedule is evaluated in the kernels from the device clock (schedule.h); every reduction is
// deterministic: per block a fixed-shape shared-memory tree in double, across blocks a fixed order, no float
// atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include <lrsched/advance.h>
#include <lrsched/convert.h>
#include <lrsched/dtypes.h>
#include <lrsched/layout.h>
#include <lrsched/schedule.h>

#include "api.h"
#include "common.cuh"

namespace lrsched {
namespace cuda {
namespace {

template <class P>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(TensorTable tt, double* partials) {
  int64_t i, chunk;
  block_chunk(tt, &i, &chunk);
  const Row r = row(tt, i);
  const P* gr = static_cast<const P*>(r.g);
  int64_t b, e;
  chunk_elems(tt, r, chunk, &b, &e);
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

/// One block: thread t adds rows t, t + kThreads, ... in order, then a fixed tree.
__global__ void __launch_bounds__(kThreads) gnorm_reduce_kernel(const double* partials, int64_t nblocks,
                                                                const float* grad_scale, float* out) {
  double sq = 0.0, ab = 0.0;
  for (int64_t k = threadIdx.x; k < nblocks; k += kThreads) {
    sq += partials[layout::GN_COLS * k + layout::GN_SUMSQ];
    ab += partials[layout::GN_COLS * k + layout::GN_SUMABS];
  }
  block_sum2(sq, ab);
  if (threadIdx.x == 0) {
    const double inv = grad_scale ? 1.0 / static_cast<double>(*grad_scale) : 1.0;
    out[layout::GN_SUMSQ] = static_cast<float>(sq * (inv * inv));
    out[layout::GN_SUMABS] = static_cast<float>(ab * inv);
  }
}

__global__ void advance_kernel(StepTables st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock,
                               const int64_t* tokens, GnormHistory gn) {
  // one block (advance.h): every lr_out first (from the clock before the increment), then the counters and
  // the gradient-norm history
  advance_lr(st, clock, lr_out, threadIdx.x, blockDim.x);
  __syncthreads();
  advance_counters(st, steps, nsteps, clock, tokens, threadIdx.x, blockDim.x, gn);
}

__global__ void evaluate_kernel(const int64_t* ints, const double* floats, int64_t first, int64_t rows,
                                const int64_t* t, int64_t count, float* out) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < count) out[j] = static_cast<float>(schedule_value(ints, floats, first, rows, t[j]));
}

template <class P>
struct SumsqOp {
  static void run(const TensorTable& tt, double* partials, cudaStream_t s) {
    sumsq_kernel<P><<<static_cast<unsigned>(tt.nblocks), kThreads, 0, s>>>(tt, partials);
  }
};

thread_local cudaError_t g_last = cudaSuccess;

}  // namespace

void note(cudaError_t e) {
  if (e != cudaSuccess) g_last = e;
}

void launch_gnorm_reduce(const double* partials, int64_t nblocks, const float* grad_scale, float* gnorm_out,
                         cudaStream_t s) {
  if (gnorm_out == nullptr) return;
  gnorm_reduce_kernel<<<1, kThreads, 0, s>>>(partials, nblocks, grad_scale, gnorm_out);
}

void grad_sumsq(const TensorTable& tt, const float* grad_scale, double* partials, float* out, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (tt.nblocks > 0) dispatch_param_dtype<SumsqOp>(tt.pdtype, tt, partials, s);
  sumsq_total_kernel<<<1, 1, 0, s>>>(partials, tt.nblocks, grad_scale, out);
  note(cudaGetLastError());
}

void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock, const int64_t* tokens,
             const GnormHistory& gn, void* stream) {
  advance_kernel<<<1, 256, 0, static_cast<cudaStream_t>(stream)>>>(st, steps, nsteps, lr_out, clock, tokens, gn);
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
