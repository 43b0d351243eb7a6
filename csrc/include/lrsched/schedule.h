// The in-kernel learning-rate schedule: evaluates an encoded schedule table (see layout.h and
// lrsched_fused/schedules/_spec.py) at an int64 clock value, in double precision.
//
// The phase holding clock t is the last row (of the schedule's rows, sorted by start) with start <= t.
// Within it the progress is p = (t - start) / span, computed from the exact int64 offset t - start (so
// clocks of 2**40 and beyond keep full precision: only the offset inside the phase is rounded), and
//
//     value = v0 + (v1 - v0) * w(p)
//
// with the shape weights of _spec.py (exp: v0 * (v1/v0)^p; power: min(c, a * t^b) over the absolute t),
// clamped to [min(v0, v1), max(v0, v1)] except for power.
// The float64 Python reference (Schedule.__call__) evaluates the same expressions in the same order.
#pragma once

#include <cstdint>

#include "config.h"
#include "layout.h"

#if !defined(__CUDACC__)
#include <math.h>
#endif

namespace lrsched {

LRS_HD double sched_inf() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(0x7ff0000000000000LL);
#else
  return __builtin_huge_val();
#endif
}

/// Row index (absolute) of the phase that holds clock ``t`` among rows [first, first + rows).
LRS_HD int64_t schedule_row(const int64_t* ints, int64_t first, int64_t rows, int64_t t) {
  int64_t k = first;
  for (int64_t r = first; r < first + rows; ++r) {
    if (ints[r * layout::SCHED_INT_COLS + layout::SCHED_START] <= t) {
      k = r;
    } else {
      break;  // rows are sorted by start
    }
  }
  return k;
}

/// Progress weight w(p) of a shape (0 at p = 0, 1 at p = 1); not used by exp and power.
LRS_HD double shape_weight(int64_t shape, double p, double a) {
  switch (shape) {
    case layout::SHAPE_LINEAR:
      return p;
    case layout::SHAPE_COSINE:
      return 0.5 * (1.0 - ::cos(3.141592653589793 * p));
    case layout::SHAPE_ONE_SQRT:
      return ::sqrt(p);
    case layout::SHAPE_SQUARE:
      return p * p;
    case layout::SHAPE_REX:  // REX (Chen et al. 2022): 1 - (1-p) / ((1-beta) + beta (1-p)), simplified
      return p * (1.0 - a) / (1.0 - a * p);
    case layout::SHAPE_POLY:
      return 1.0 - ::pow(1.0 - p, a);
    case layout::SHAPE_INV_SQRT: {  // Ibrahim et al. 2024: g(p) / g(1), g(x) = 1/sqrt(1 + a x) - 1
      const double gp = 1.0 / ::sqrt(1.0 + a * p) - 1.0;
      const double g1 = 1.0 / ::sqrt(1.0 + a) - 1.0;
      return gp / g1;
    }
    default:
      return 0.0;
  }
}

/// Value of one encoded phase at absolute clock ``t`` (float64).
LRS_HD double phase_value(const int64_t* irow, const double* frow, int64_t t) {
  const int64_t start = irow[layout::SCHED_START];
  const int64_t span = irow[layout::SCHED_SPAN];
  const int64_t shape = irow[layout::SCHED_SHAPE];
  const double v0 = frow[layout::SCHED_V0], v1 = frow[layout::SCHED_V1];
  const double a = frow[layout::SCHED_A], b = frow[layout::SCHED_B], c = frow[layout::SCHED_C];
  if (shape == layout::SHAPE_POWER) {  // Shen et al. 2024: min(cap, coef * t^b) over the absolute clock
    double raw;
    if (t == 0) {
      raw = b < 0.0 ? sched_inf() : (b == 0.0 ? a : 0.0);
    } else {
      raw = a * ::exp(b * ::log(static_cast<double>(t)));
    }
    return raw < c ? raw : c;
  }
  if (shape == layout::SHAPE_CONSTANT || span == 0) return v0;
  // exact int64 offset inside the phase, then one correctly rounded division (as Python's int / int)
  const double p = static_cast<double>(t - start) / static_cast<double>(span);
  const double value =
      shape == layout::SHAPE_EXP ? v0 * ::exp(p * ::log(v1 / v0)) : v0 + (v1 - v0) * shape_weight(shape, p, a);
  // as the reference: clamp to the phase's endpoints (removes rounding just past v1; monotone, f(start) exact)
  const double lo = v0 < v1 ? v0 : v1, hi = v0 < v1 ? v1 : v0;
  return value < lo ? lo : (value > hi ? hi : value);
}

/// Value of the schedule stored in rows [first, first + rows) at clock ``t`` (float64).
LRS_HD double schedule_value(const int64_t* ints, const double* floats, int64_t first, int64_t rows, int64_t t) {
  const int64_t k = schedule_row(ints, first, rows, t);
  return phase_value(ints + k * layout::SCHED_INT_COLS, floats + k * layout::SCHED_FLOAT_COLS, t);
}

/// The learning rate of param group ``g``: hparams[g, HP_LR_SCALE] * schedule_g(clock[schedule's clock]).
LRS_HD double group_lr(const int64_t* ints, const double* floats, const int64_t* group_sched, const double* hparams,
                       const int64_t* clock, int64_t g) {
  const int64_t* gs = group_sched + g * layout::GROUP_SCHED_COLS;
  const int64_t t = clock[gs[layout::GS_CLOCK]];
  return hparams[g * layout::HP_COLS + layout::HP_LR_SCALE] *
         schedule_value(ints, floats, gs[layout::GS_FIRST_ROW], gs[layout::GS_ROWS], t);
}

}  // namespace lrsched
