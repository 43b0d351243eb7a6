// The CPU backend's C++ API (no Python, no torch): raw pointers to the tensors of one bucket and to the
// optimizer's tables. bindings.cpp exposes it to Python; csrc/tests use it directly.
#pragma once

#include <cstdint>

#include <lrsched/dtypes.h>
#include <lrsched/layout.h>
#include <lrsched/step_tables.h>

namespace lrsched {
namespace cpu {

/// The tensors of one bucket as parallel pointer arrays (length ``n``): the rows of the pointer table
/// (layout::PTR_*) that bindings.cpp receives from Python.
struct TensorTable {
  int64_t n = 0;
  int64_t pdtype = layout::DT_F32;          // parameter (and gradient) dtype, a layout::DT_* code
  int64_t sdtype = layout::DT_F32;          // moment dtype
  void* const* param = nullptr;
  const void* const* grad = nullptr;
  void* const* exp_avg = nullptr;
  void* const* exp_avg_sq = nullptr;
  void* const* max_exp_avg_sq = nullptr;    // AdamW amsgrad, else null
  float* const* master = nullptr;           // fp32 master weights of bf16/fp16 params, else null
  const int64_t* numel = nullptr;
};

using lrsched::StepTables;  // csrc/include/lrsched/step_tables.h
/// Whether (param dtype, state dtype, master weights) has kernels (csrc/include/lrsched/dtypes.h).
using lrsched::supported;

/// One AdamW update of every tensor (moments, params; not the steps).
void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, int threads);

/// One LAMB update with the per-tensor norms reduced locally (no sharding). ``norms_out`` float32 [n, 3];
/// ``clip_div`` scalar or null; ``scratch`` holds ``scratch_elems`` elements of the compute type (float,
/// double for fp64 params; threads * min(kLambHotElems, largest numel) is enough) where the first pass
/// keeps the update for the second, or is null (then the first pass writes nothing and the second
/// recomputes the moments and the update). The result has the same bits either way.
void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, void* scratch,
          int64_t scratch_elems, int threads);

/// Sharded LAMB, stage 1: the per-tensor partial sums of w^2 and u^2 into ``sums`` float32 [n, 2] (to be
/// summed across shards by the caller); writes nothing else.
void lamb_stage1(const TensorTable& tt, const StepTables& st, const float* clip_div, float* sums, int threads);

/// Sharded LAMB, stage 2: from the (all-reduced) ``sums``, the telemetry and (unless skipped) the moments
/// and the update.
void lamb_stage2(const TensorTable& tt, const StepTables& st, const float* clip_div, const float* sums,
                 float* norms_out, int threads);

/// Sum of squares of the gradients divided by grad_scale (float64 accumulation), written to ``*out``.
void grad_sumsq(const TensorTable& tt, const float* grad_scale, float* out, int threads);

/// Writes each group's lr into ``lr_out`` [groups]; unless found_inf: steps[0..nsteps) += 1,
/// clock[STEPS] += 1, clock[TOKENS] += *tokens (if given).
void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock,
             const int64_t* tokens);

/// Schedule (rows [first, first + rows) of the tables) at each clock value, rounded to float32.
void evaluate_schedule(const int64_t* ints, const double* floats, int64_t first, int64_t rows, const int64_t* t,
                       int64_t count, float* out);

// --- instruction-set dispatch ---------------------------------------------------------------------------
/// Names of the kernel builds this binary has and this CPU can run, best last ("baseline", "avx2", "avx512").
int available_isas(const char** names, int capacity);
const char* current_isa();
/// Selects a kernel build by name; returns false (and changes nothing) if unavailable.
bool set_isa(const char* name);

/// Elements per work chunk (the unit of the deterministic reductions).
constexpr int64_t kChunkElems = 65536;
/// LAMB keeps the update between its passes in the scratch buffer for tensors of at most this many
/// elements per thread (16 MiB of float scratch per thread); larger tensors recompute the moments and the
/// update in stage 2, which doubles the square roots and divisions (measured ~15% slower on one core).
constexpr int64_t kLambHotElems = int64_t(1) << 22;

}  // namespace cpu
}  // namespace lrsched
