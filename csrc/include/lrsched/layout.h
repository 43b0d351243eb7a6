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
constexpr int64_t DT_I8 = 4;
constexpr int64_t DT_U8 = 5;
constexpr int64_t DT_I16 = 6;
constexpr int64_t NUM_DTYPES = 7;

// --- pointer table: int64 [PTR_TABLE_ROWS, n], addresses (0 where a list is absent) and element counts
constexpr int64_t PTR_PARAM = 0;
constexpr int64_t PTR_GRAD = 1;
constexpr int64_t PTR_EXP_AVG = 2;
constexpr int64_t PTR_EXP_AVG_SQ = 3;
constexpr int64_t PTR_MAX_EXP_AVG_SQ = 4;
constexpr int64_t PTR_MASTER = 5;
constexpr int64_t PTR_EXP_AVG_SCALE = 6;
constexpr int64_t PTR_EXP_AVG_SQ_SCALE = 7;
constexpr int64_t PTR_NUMEL = 8;
constexpr int64_t PTR_LAST_DIM = 9;
constexpr int64_t PTR_ELEM_OFFSET = 10;
constexpr int64_t PTR_SALT = 11;
constexpr int64_t PTR_TABLE_ROWS = 12;

// --- master weights: what row PTR_MASTER holds
constexpr int64_t MASTER_NONE = 0;
constexpr int64_t MASTER_FP32 = 1;
constexpr int64_t MASTER_CORR8 = 2;
constexpr int64_t MASTER_CORR16 = 3;
constexpr int64_t MASTER_SHIFT8_BF16 = 8;
constexpr int64_t MASTER_SHIFT8_F16 = 5;

// --- compressed moments (docs/compressed_state.md)
constexpr int64_t Q_M_LEVELS = 127;
constexpr int64_t Q_V_LEVELS = 255;
constexpr int64_t QUANT_BLOCK = 256;

// --- stochastic rounding seed hash
constexpr int64_t SR_K_INDEX = 0x9E3779B1;
constexpr int64_t SR_K_CLOCK = 0x85EBCA77;
constexpr int64_t SR_K_SALT = 0xC2B2AE3D;
constexpr int64_t SR_K_STREAM = 0x27D4EB2F;
constexpr int64_t SR_HASH_M1 = 0x7FEB352D;
constexpr int64_t SR_HASH_M2 = 0x846CA68B;
constexpr int64_t SR_STREAM_PARAM = 0;
constexpr int64_t SR_STREAM_EXP_AVG = 1;
constexpr int64_t SR_STREAM_EXP_AVG_SQ = 2;

// --- gradient-norm telemetry
constexpr int64_t GN_SUMSQ = 0;
constexpr int64_t GN_SUMABS = 1;
constexpr int64_t GN_COLS = 2;

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
