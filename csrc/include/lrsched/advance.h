// The end of an optimizer step, shared by the CPU driver (one worker) and the CUDA advance kernel (the
// threads of one block): write each group's lr into lr_out, then, unless the step was skipped
// (found_inf): history[clock[STEPS] % capacity] = the summed gradient-norm partials (when a history is
// given), steps += 1, clock[CLOCK_STEPS] += 1, clock[CLOCK_TOKENS] += tokens.
//
// Two parts, because every lr must be read from the clock *before* it moves: a caller with several
// workers runs advance_lr on all of them, synchronizes (__syncthreads), then advance_counters. Worker
// ``part`` of ``parts`` handles the indices part, part + parts, ...; worker 0 moves the clock.
#pragma once

#include <cstdint>

#include "config.h"
#include "layout.h"
#include "schedule.h"
#include "step_tables.h"

namespace lrsched {

/// Whether this step is skipped: ``found_inf`` given and nonzero (nothing but telemetry is written).
LRS_HD bool step_skipped(const StepTables& st) { return st.found_inf != nullptr && *st.found_inf != 0.0f; }

/// The lr of param group ``g`` at the tables' clock (double).
LRS_HD double step_group_lr(const StepTables& st, int64_t g) {
  return group_lr(st.sched_ints, st.sched_floats, st.group_sched, st.hparams, st.clock, g);
}

/// Part 1: ``lr_out[g]`` (float32) = the lr group g used in this step, i.e. at ``clock`` before the advance,
/// for this worker's groups.
LRS_HD void advance_lr(const StepTables& st, const int64_t* clock, float* lr_out, int64_t part, int64_t parts) {
  for (int64_t g = part; g < st.groups; g += parts)
    lr_out[g] = static_cast<float>(group_lr(st.sched_ints, st.sched_floats, st.group_sched, st.hparams, clock, g));
}

/// The gradient-norm history of a step: every bucket's partial rows (float32 [rows, GN_COLS]) and the
/// ring (float32 [capacity, GN_COLS]); ``history`` null: none.
struct GnormHistory {
  const float* partials = nullptr;
  int64_t rows = 0;
  float* history = nullptr;
  int64_t capacity = 0;
};

/// ``history[clock % capacity] = sum of the partial rows`` (row order, float64, stored float32).
LRS_HD void record_gnorm(const GnormHistory& h, int64_t clock) {
  if (h.history == nullptr || h.capacity <= 0) return;
  double sums[layout::GN_COLS] = {};
  for (int64_t r = 0; r < h.rows; ++r)
    for (int64_t c = 0; c < layout::GN_COLS; ++c) sums[c] += static_cast<double>(h.partials[r * layout::GN_COLS + c]);
  const int64_t slot = clock % h.capacity;
  for (int64_t c = 0; c < layout::GN_COLS; ++c)
    h.history[slot * layout::GN_COLS + c] = static_cast<float>(sums[c]);
}

/// Part 2 (after every worker's part 1): unless skipped, ``steps[i] += 1`` for this worker's ``i`` of
/// [0, nsteps), and (worker 0) the gradient-norm history at the clock before the step (record_gnorm),
/// ``clock[CLOCK_STEPS] += 1``, ``clock[CLOCK_TOKENS] += *tokens`` (if given).
LRS_HD void advance_counters(const StepTables& st, float* steps, int64_t nsteps, int64_t* clock, const int64_t* tokens,
                             int64_t part, int64_t parts, const GnormHistory& gn = GnormHistory()) {
  if (step_skipped(st)) return;
  for (int64_t i = part; i < nsteps; i += parts) steps[i] += 1.0f;
  if (part == 0) {
    record_gnorm(gn, clock[layout::CLOCK_STEPS]);
    clock[layout::CLOCK_STEPS] += 1;
    if (tokens) clock[layout::CLOCK_TOKENS] += *tokens;
  }
}

/// Both parts by a single worker.
LRS_HD void advance_step(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock,
                         const int64_t* tokens, const GnormHistory& gn = GnormHistory()) {
  advance_lr(st, clock, lr_out, 0, 1);
  advance_counters(st, steps, nsteps, clock, tokens, 0, 1, gn);
}

}  // namespace lrsched
