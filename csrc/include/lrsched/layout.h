// Binary layout of the schedule, group and telemetry tables: the same numbers as kernels/layout.py
// (tests/test_layout.py checks that they agree, both against this file and against the compiled
// extension's lrsched_fused._cpu.layout()).
#pragma once

#include <cstdint>

namespace lrsched {
namespace layout {

// --- schedule table columns: ints int64 [rows, SCHED_INT_COLS], floats float64 [rows, SCHED_FLOAT_COLS]
constexpr int64_t SCHED_START = 0;
constexpr int64_t SCHED_LENGTH = 1;
constexpr int64_t SCHED_SPAN = 2;
constexpr int64_t SCHED_SHAPE = 3;
constexpr int64_t SCHED_INT_COLS = 4;
constexpr int64_t SCHED_V0 = 0;
constexpr int64_t SCHED_V1 = 1;
constexpr int64_t SCHED_A = 2;
constexpr int64_t SCHED_B = 3;
constexpr int64_t SCHED_C = 4;
constexpr int64_t SCHED_FLOAT_COLS = 5;
constexpr int64_t INFINITE_LENGTH = int64_t(1) << 62;

// --- phase shapes
constexpr int64_t SHAPE_CONSTANT = 0;
constexpr int64_t SHAPE_LINEAR = 1;
constexpr int64_t SHAPE_COSINE = 2;
constexpr int64_t SHAPE_ONE_SQRT = 3;
constexpr int64_t SHAPE_SQUARE = 4;
constexpr int64_t SHAPE_EXP = 5;
constexpr int64_t SHAPE_REX = 6;
constexpr int64_t SHAPE_POLY = 7;
constexpr int64_t SHAPE_INV_SQRT = 8;
constexpr int64_t SHAPE_POWER = 9;
constexpr int64_t NUM_SHAPES = 10;

// --- clocks
constexpr int64_t CLOCK_STEPS = 0;
constexpr int64_t CLOCK_TOKENS = 1;
constexpr int64_t NUM_CLOCKS = 2;

// --- dtype codes (kernels/layout.py DTYPE_CODES)
constexpr int64_t DT_F32 = 0;
constexpr int64_t DT_BF16 = 1;
constexpr int64_t DT_F16 = 2;
constexpr int64_t DT_F64 = 3;
constexpr int64_t NUM_DTYPES = 4;

// --- pointer table: int64 [PTR_TABLE_ROWS, n], addresses (0 where a list is absent) and element counts
constexpr int64_t PTR_PARAM = 0;
constexpr int64_t PTR_GRAD = 1;
constexpr int64_t PTR_EXP_AVG = 2;
constexpr int64_t PTR_EXP_AVG_SQ = 3;
constexpr int64_t PTR_MAX_EXP_AVG_SQ = 4;
constexpr int64_t PTR_MASTER = 5;
constexpr int64_t PTR_NUMEL = 6;
constexpr int64_t PTR_TABLE_ROWS = 7;

// --- LAMB phases
constexpr int64_t LAMB_FUSED = 0;
constexpr int64_t LAMB_STAGE1 = 1;
constexpr int64_t LAMB_STAGE2 = 2;

// --- group tables: group_sched int64 [groups, GROUP_SCHED_COLS], hparams float64 [groups, HP_COLS]
constexpr int64_t GS_FIRST_ROW = 0;
constexpr int64_t GS_ROWS = 1;
constexpr int64_t GS_CLOCK = 2;
constexpr int64_t GROUP_SCHED_COLS = 3;

constexpr int64_t HP_LR_SCALE = 0;
constexpr int64_t HP_BETA1 = 1;
constexpr int64_t HP_BETA2 = 2;
constexpr int64_t HP_EPS = 3;
constexpr int64_t HP_WEIGHT_DECAY = 4;
constexpr int64_t HP_MAXIMIZE = 5;
constexpr int64_t HP_BIAS_CORRECTION = 6;
constexpr int64_t HP_GRAD_AVERAGING = 7;
constexpr int64_t HP_ADAPT = 8;
constexpr int64_t HP_TRUST_MIN = 9;
constexpr int64_t HP_TRUST_MAX = 10;
constexpr int64_t HP_DECOUPLED = 11;
constexpr int64_t HP_COLS = 12;

// --- per-tensor LAMB telemetry: float32 [tensors, NORM_COLS]
constexpr int64_t NORM_PARAM = 0;
constexpr int64_t NORM_UPDATE = 1;
constexpr int64_t NORM_RATIO = 2;
constexpr int64_t NORM_COLS = 3;

}  // namespace layout
}  // namespace lrsched
