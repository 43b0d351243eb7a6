// The CPU backend's C++ API (no Python, no torch): raw pointers to the tensors of one bucket and to the
// optimizer's tables. bindings.cpp exposes it to Python; csrc/tests use it directly.
#pragma once

#include <cstdint>

#include <lrsched/advance.h>
#include <lrsched/dtypes.h>
#include <lrsched/layout.h>
#include <lrsched/step_tables.h>

namespace lrsched {
namespace cpu {

/// The tensors of one bucket as parallel pointer arrays (length ``n``): the rows of the pointer table
/// (layout::PTR_*) that bindings.cpp receives from Python, and the batch's options.
struct TensorTable {
  int64_t n = 0;
  int64_t pdtype = layout::DT_F32;          // parameter (and gradient) dtype, a layout::DT_* code
  int64_t sdtype = layout::DT_F32;          // moment dtype; DT_I8: int8 / uint8 codes with block scales
  int64_t master_mode = layout::MASTER_NONE;  // what ``master`` holds (layout::MASTER_*)
  void* const* param = nullptr;
  const void* const* grad = nullptr;
  void* const* exp_avg = nullptr;
  void* const* exp_avg_sq = nullptr;
  void* const* max_exp_avg_sq = nullptr;    // AdamW amsgrad, else null
  void* const* master = nullptr;            // fp32 masters or int8 / int16 corrections, else null
  float* const* exp_avg_scale = nullptr;    // int8 moments: float32 block scales, else null
  float* const* exp_avg_sq_scale = nullptr;
  const int64_t* numel = nullptr;
  const int64_t* last_dim = nullptr;        // blocks run along the last dimension (null: one row)
  const int64_t* elem_offset = nullptr;     // global index of each tensor's first element (null: 0)
  const int64_t* salt = nullptr;            // stochastic-rounding salt (null: the tensor's index)
  int64_t quant_block = layout::QUANT_BLOCK;  // a power of two, at most kMaxQuantBlock
  bool stochastic_rounding = false;         // bf16 moments and bf16 params without masters (quant.h)
};

// Accessors as free functions with internal linkage (inline member functions would be merged by the linker
// across the per-ISA translation units, see lrsched/config.h).
static inline bool quantized(const TensorTable& tt) { return tt.sdtype == layout::DT_I8; }
static inline int64_t last_dim_of(const TensorTable& tt, int64_t i) {
  return tt.last_dim ? tt.last_dim[i] : tt.numel[i];
}
static inline int64_t offset_of(const TensorTable& tt, int64_t i) { return tt.elem_offset ? tt.elem_offset[i] : 0; }
static inline int64_t salt_of(const TensorTable& tt, int64_t i) { return tt.salt ? tt.salt[i] : i; }

using lrsched::StepTables;  // csrc/include/lrsched/step_tables.h
/// Whether (param dtype, state dtype, master mode) has kernels (csrc/include/lrsched/dtypes.h).
using lrsched::supported;

/// ``gnorm_out`` (every update entry point): float32 [1, GN_COLS] or null: the sums of g^2 and |g| of the
/// gradients divided by grad_scale (before clipping), accumulated while the kernel reads them anyway, in
/// fixed chunks (float64 across chunks, chunks in order: the same bits for any thread count and ISA). A
/// skipped step (found_inf) still writes them (AdamW then reads the gradients for them alone).

/// One AdamW update of every tensor (moments, params; not the steps).
void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, int threads, float* gnorm_out = nullptr);

/// One LAMB update with the per-tensor norms reduced locally (no sharding). ``norms_out`` float32 [n, 3];
/// ``clip_div`` scalar or null; ``scratch`` holds ``scratch_elems`` elements of the compute type (float,
/// double for fp64 params; threads * min(kLambHotElems, largest numel) is enough) where the first pass
/// keeps the update for the second, or is null (then the first pass writes nothing and the second
/// recomputes the moments and the update). The result has the same bits either way.
void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, void* scratch,
          int64_t scratch_elems, int threads, float* gnorm_out = nullptr);

/// Sharded LAMB, stage 1: the per-tensor partial sums of w^2 and u^2 into ``sums`` float32 [n, 2] (to be
/// summed across shards by the caller); writes nothing else, except the codes and scales of int8 moments
/// (stage 2 decodes them: docs/compressed_state.md) unless the step is skipped.
void lamb_stage1(const TensorTable& tt, const StepTables& st, const float* clip_div, float* sums, int threads,
                 float* gnorm_out = nullptr);

/// Sharded LAMB, stage 2: from the (all-reduced) ``sums``, the telemetry and (unless skipped) the moments
/// and the update.
void lamb_stage2(const TensorTable& tt, const StepTables& st, const float* clip_div, const float* sums,
                 float* norms_out, int threads);

/// Sum of squares of the gradients divided by grad_scale (float64 accumulation), written to ``*out``.
void grad_sumsq(const TensorTable& tt, const float* grad_scale, float* out, int threads);

/// Writes each group's lr into ``lr_out`` [groups]; unless found_inf: the gradient-norm history (advance.h),
/// steps[0..nsteps) += 1, clock[STEPS] += 1, clock[TOKENS] += *tokens (if given).
void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock,
             const int64_t* tokens, const GnormHistory& gnorm = GnormHistory());

/// Schedule (rows [first, first + rows) of the tables) at each clock value, rounded to float32.
void evaluate_schedule(const int64_t* ints, const double* floats, int64_t first, int64_t rows, const int64_t* t,
                       int64_t count, float* out);

// --- instruction-set dispatch ---------------------------------------------------------------------------
/// Names of the kernel builds this binary has and this CPU can run, best last ("baseline", "avx2", "avx512").
int available_isas(const char** names, int capacity);
const char* current_isa();
/// Selects a kernel build by name; returns false (and changes nothing) if unavailable.
bool set_isa(const char* name);
/// Whether the int8 kernels prefetch ahead in software (default: not on AMD; LRSCHED_CPU_PREFETCH=0|1
/// overrides). It changes no result bit.
bool software_prefetch();
void set_software_prefetch(bool on);

/// Elements per work chunk (the unit of the deterministic reductions).
constexpr int64_t kChunkElems = 65536;
/// LAMB keeps the update between its passes in the scratch buffer for tensors of at most this many
/// elements per thread (16 MiB of float scratch per thread); larger tensors recompute the moments and the
/// update in stage 2, which doubles the square roots and divisions (measured ~15% slower on one core).
constexpr int64_t kLambHotElems = int64_t(1) << 22;
/// The same cap with int8 moments (fp32 parameters): stage 2 decodes the codes stage 1 stored, 2 bytes per
/// element against the update's 4 written and 4 read back, so the buffer only pays while p and u stay in
/// a core's L2 (1 MiB of each): on the Xeon's 2 MiB L2, tensors of 100-200K elements per thread were
/// 3-4% faster with it and of 400K 5% slower, and the mixed-size 20M/50 case 12% faster without it.
constexpr int64_t kLambHotElemsQ8 = int64_t(1) << 18;

}  // namespace cpu
}  // namespace lrsched
