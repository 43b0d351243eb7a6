// The CUDA backend's host API (plain C++: no CUDA or torch headers, so bindings.cpp builds with the host
// compiler). All pointers are device pointers except where noted; every call is asynchronous on ``stream``
// (a cudaStream_t passed as void*) and reads no device value on the host.
#pragma once

#include <cstdint>

#include <lrsched/advance.h>
#include <lrsched/dtypes.h>
#include <lrsched/layout.h>
#include <lrsched/step_tables.h>

namespace lrsched {
namespace cuda {

/// Elements per block-chunk; block b updates chunk blocks[nblocks + b] of tensor blocks[b].
constexpr int64_t kChunkElems = 65536;

struct TensorTable {
  const int64_t* table = nullptr;   // device int64 [layout::PTR_TABLE_ROWS, n]: the pointer table
                                    // (TensorBatch.pointer_table(): addresses, 0 where absent; numels)
  int64_t n = 0;
  int64_t pdtype = layout::DT_F32, sdtype = layout::DT_F32;  // layout::DT_* codes (DT_I8: int8 moments)
  bool has_max = false;
  int64_t master_mode = layout::MASTER_NONE;  // what row PTR_MASTER holds (layout::MASTER_*)
  int64_t quant_block = layout::QUANT_BLOCK;  // int8 moments: a power of two, at most kMaxQuantBlock
  bool stochastic_rounding = false;
  const int32_t* blocks = nullptr;  // device int32 [2, nblocks]: tensor index, chunk index (tensor-major order);
                                    // a chunk of int8 moments is kChunkElems / quant_block whole blocks
  int64_t nblocks = 0;
  const int64_t* first_block = nullptr;  // device int64 [n + 1]: first block of each tensor
};

using lrsched::StepTables;  // csrc/include/lrsched/step_tables.h
/// Whether (param dtype, state dtype, master mode) has kernels (csrc/include/lrsched/dtypes.h).
using lrsched::supported;

/// The gradient-norm partials of an update: ``partials`` double [nblocks, GN_COLS] (a workspace: one row
/// per thread block) reduced in a fixed tree by one more block into ``out`` (float32 [1, GN_COLS], sums of
/// g^2 and |g| of grad / grad_scale; null: none). No float atomics.
struct Gnorm {
  double* partials = nullptr;
  float* out = nullptr;
};

/// AdamW. A skipped step (found_inf) writes only the gradient-norm partials.
void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, const Gnorm& gn, void* stream);

/// LAMB. ``partials`` double [nblocks, 2] and ``ratio`` double [n] are workspaces. ``phase`` (layout::LAMB_*):
///   LAMB_FUSED: stage 1, per-tensor reduction (norms_out, ratio), stage 2;
///   LAMB_STAGE1 (sharded): per-tensor float32 sums into ``sums`` [n, 2];
///   LAMB_STAGE2 (sharded): norms_out and ratio from the all-reduced ``sums``, then stage 2.
/// Stage 1 writes the gradient-norm partials; with int8 moments it also stores the codes (unless skipped),
/// which stage 2 decodes.
void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, double* partials,
          double* ratio, float* sums, int64_t phase, const Gnorm& gn, void* stream);

/// Sum of squares of grads / grad_scale into ``out`` (float32 scalar); ``partials`` double [nblocks].
void grad_sumsq(const TensorTable& tt, const float* grad_scale, double* partials, float* out, void* stream);

/// lr_out, then unless found_inf: the gradient-norm history (advance.h), steps, clock.
void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock, const int64_t* tokens,
             const GnormHistory& gn, void* stream);

void evaluate_schedule(const int64_t* ints, const double* floats, int64_t first, int64_t rows, const int64_t* t,
                       int64_t count, float* out, void* stream);

/// The last CUDA error as text ("" if none); clears it.
const char* last_error();

}  // namespace cuda
}  // namespace lrsched
