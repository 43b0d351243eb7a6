// The optimizer's tables (see kernels/layout.py) and per-tensor step data, as the CPU and CUDA backends
// receive them: raw pointers (host pointers on the CPU backend, device pointers on the CUDA one).
#pragma once

#include <array>
#include <cstdint>

namespace lrsched {

struct StepTables {
  const int64_t* sched_ints = nullptr;      // [rows, SCHED_INT_COLS]
  const double* sched_floats = nullptr;     // [rows, SCHED_FLOAT_COLS]
  const int64_t* group_sched = nullptr;     // [groups, GROUP_SCHED_COLS]
  const double* hparams = nullptr;          // [groups, HP_COLS]
  int64_t groups = 0;                       // a count (host value)
  const int64_t* clock = nullptr;           // [NUM_CLOCKS]
  const int64_t* group_index = nullptr;     // [n] group row of each tensor
  const float* steps = nullptr;             // [n] update count of each tensor before this step
  const float* found_inf = nullptr;         // scalar or null: nonzero skips the step
  const float* grad_scale = nullptr;        // scalar or null: gradients are divided by it
};

/// ``StepTables`` from the addresses the Python adapters pass, in this order: sched_ints, sched_floats,
/// group_sched, hparams, groups (a count, not an address), clock, group_index, steps, found_inf or 0,
/// grad_scale or 0.
inline StepTables step_tables_from_addresses(const std::array<int64_t, 10>& c) {
  auto at = [](int64_t address) { return reinterpret_cast<const void*>(static_cast<intptr_t>(address)); };
  StepTables st;
  st.sched_ints = static_cast<const int64_t*>(at(c[0]));
  st.sched_floats = static_cast<const double*>(at(c[1]));
  st.group_sched = static_cast<const int64_t*>(at(c[2]));
  st.hparams = static_cast<const double*>(at(c[3]));
  st.groups = c[4];
  st.clock = static_cast<const int64_t*>(at(c[5]));
  st.group_index = static_cast<const int64_t*>(at(c[6]));
  st.steps = static_cast<const float*>(at(c[7]));
  st.found_inf = static_cast<const float*>(at(c[8]));
  st.grad_scale = static_cast<const float*>(at(c[9]));
  return st;
}

}  // namespace lrsched
