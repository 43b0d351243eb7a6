// The CUDA backend's host API (plain C++: no CUDA or torch headers, so bindings.cpp builds with the host
// compiler). All pointers are device pointers except where noted; every call is asynchronous on ``stream``
// (a cudaStream_t passed as void*) and reads no device value on the host.
#pragma once

#include <cstdint>

#include <lrsched/step_tables.h>

namespace lrsched {
namespace cuda {

enum DType : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3 };

/// Elements per block-chunk; block b updates chunk blocks[nblocks + b] of tensor blocks[b].
constexpr int64_t kChunkElems = 65536;

struct TensorTable {
  const int64_t* table = nullptr;   // device int64 [7, n]: params, grads, exp_avgs, exp_avg_sqs, max (or 0),
                                    // master (or 0), numels
  int64_t n = 0;
  int pdtype = kF32, sdtype = kF32;
  bool has_max = false, has_master = false;
  const int32_t* blocks = nullptr;  // device int32 [2, nblocks]: tensor index, chunk index (tensor-major order)
  int64_t nblocks = 0;
  const int64_t* first_block = nullptr;  // device int64 [n + 1]: first block of each tensor
};

using lrsched::StepTables;  // csrc/include/lrsched/step_tables.h

bool supported(int pdtype, int sdtype, bool master);

void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, void* stream);

/// LAMB. ``partials`` double [nblocks, 2] and ``ratio`` double [n] are workspaces.
///   phase 0 (fused): stage 1, per-tensor reduction (norms_out, ratio), stage 2;
///   phase 1 (sharded stage 1): per-tensor float32 sums into ``sums`` [n, 2];
///   phase 2 (sharded stage 2): norms_out and ratio from ``sums``, then stage 2.
void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, double* partials,
          double* ratio, float* sums, int phase, void* stream);

/// Sum of squares of grads / grad_scale into ``out`` (float32 scalar); ``partials`` double [nblocks].
void grad_sumsq(const TensorTable& tt, const float* grad_scale, double* partials, float* out, void* stream);

void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock, const int64_t* tokens,
             void* stream);

void evaluate_schedule(const int64_t* ints, const double* floats, int64_t first, int64_t rows, const int64_t* t,
                       int64_t count, float* out, void* stream);

/// The last CUDA error as text ("" if none); clears it.
const char* last_error();

}  // namespace cuda
}  // namespace lrsched
