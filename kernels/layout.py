"""Binary layout shared by every evaluator: Python, Triton (this package) and C++ (``csrc/include/lrsched/layout.h``).

This module has no imports on purpose: the optimizers, the reference backend and the kernels all read
it, and it must be importable where Triton is not installed. ``tests/test_layout.py`` checks that the
C++ header declares the same numbers.

Schedule tables
---------------
A schedule encodes to two row-aligned tensors (one row per phase, phases sorted by start, the first
starting at clock 0, the last a constant phase of length ``INFINITE_LENGTH`` holding the final value):

* ``ints``   int64   ``[rows, SCHED_INT_COLS]``   = (start, length, span, shape)
* ``floats`` float64 ``[rows, SCHED_FLOAT_COLS]`` = (v0, v1, a, b, c)

The phase that holds clock ``t`` is the *last* row with ``start <= t`` (zero-length rows are never
chosen because the next row has the same start). Its progress is ``p = (t - start) / span``.

Pointer tables
--------------
A bucket's tensors reach every backend (Triton, C++, CUDA) through one int64 table
``[PTR_TABLE_ROWS, n]``: row ``PTR_PARAM`` .. ``PTR_MASTER`` hold the ``data_ptr`` of tensor ``i`` of each
list (0 where a list is absent: no amsgrad maxima, no master weights), row ``PTR_NUMEL`` its element
count. ``lrsched_fused.backends.TensorBatch.pointer_table()`` is the one builder of it.

Dtype codes
-----------
A tensor's element type reaches a kernel as ``DT_*`` (a ``tl.constexpr`` in Triton, an ``int`` in C++).
``DTYPE_CODES`` maps torch's dtype names to them.

Group tables
------------
``group_sched`` int64 ``[groups, GROUP_SCHED_COLS]`` = (first row, row count, clock index) locates each
param group's schedule inside the concatenated schedule tables; ``group_hparams`` float64
``[groups, HP_COLS]`` holds its hyperparameters in the column order below.
"""

# --- schedule table columns -------------------------------------------------------------------------
SCHED_START, SCHED_LENGTH, SCHED_SPAN, SCHED_SHAPE = 0, 1, 2, 3
SCHED_INT_COLS = 4
SCHED_V0, SCHED_V1, SCHED_A, SCHED_B, SCHED_C = 0, 1, 2, 3, 4
SCHED_FLOAT_COLS = 5

#: Length of the terminal constant phase: "forever" for an int64 clock (2**62 leaves headroom so that
#: ``start + length`` never overflows).
INFINITE_LENGTH = 2**62

# --- phase shapes ------------------------------------------------------------------------------------
# value(p) for p in [0, 1), v0 = start value, v1 = end value, w(p) the shape's progress weight:
#   value = v0 + (v1 - v0) * w(p)          (exact at p = 0 because w(0) == 0)
SHAPE_CONSTANT = 0  # v0
SHAPE_LINEAR = 1  # w = p
SHAPE_COSINE = 2  # w = (1 - cos(pi p)) / 2
SHAPE_ONE_SQRT = 3  # w = sqrt(p)                                   (Haegele et al. "1-sqrt" cooldown)
SHAPE_SQUARE = 4  # w = p^2                                         (Haegele et al. "square" cooldown)
SHAPE_EXP = 5  # value = v0 * (v1 / v0)^p                           (geometric; v0, v1 > 0)
SHAPE_REX = 6  # w = p (1 - a) / (1 - a p),  a = beta in [0, 1)     (REX, Chen et al. 2022)
SHAPE_POLY = 7  # w = 1 - (1 - p)^a,  a = power > 0
SHAPE_INV_SQRT = 8  # w = g(p) / g(1),  g(p) = 1/sqrt(1 + a p) - 1,  a = timescale > 0  (Ibrahim et al.)
SHAPE_POWER = 9  # value = min(c, a * t^b), t the absolute clock     (power scheduler, Shen et al. 2024)
NUM_SHAPES = 10

SHAPE_NAMES = {
    SHAPE_CONSTANT: "constant",
    SHAPE_LINEAR: "linear",
    SHAPE_COSINE: "cosine",
    SHAPE_ONE_SQRT: "1-sqrt",
    SHAPE_SQUARE: "square",
    SHAPE_EXP: "exp",
    SHAPE_REX: "rex",
    SHAPE_POLY: "poly",
    SHAPE_INV_SQRT: "inv-sqrt",
    SHAPE_POWER: "power",
}
SHAPE_CODES = {name: code for code, name in SHAPE_NAMES.items()}

# --- clocks ------------------------------------------------------------------------------------------
CLOCK_STEPS, CLOCK_TOKENS = 0, 1
NUM_CLOCKS = 2
CLOCK_NAMES = {CLOCK_STEPS: "steps", CLOCK_TOKENS: "tokens"}

# --- dtype codes -------------------------------------------------------------------------------------
# floating storage types, then the integer codes of compressed state (docs/compressed_state.md): int8
# first-moment codes, uint8 second-moment codes, int8 / int16 master-weight corrections
DT_F32, DT_BF16, DT_F16, DT_F64, DT_I8, DT_U8, DT_I16 = 0, 1, 2, 3, 4, 5, 6
NUM_DTYPES = 7
DTYPE_CODES = {"float32": DT_F32, "bfloat16": DT_BF16, "float16": DT_F16, "float64": DT_F64, "int8": DT_I8,
               "uint8": DT_U8, "int16": DT_I16}
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}


def dtype_code(dtype) -> int:
    """The ``DT_*`` code of a torch dtype (or its name, e.g. ``"bfloat16"``); ``ValueError`` for a dtype no
    kernel stores. (``str(torch.float32)`` is ``"torch.float32"``: no torch import needed here.)"""
    code = DTYPE_CODES.get(str(dtype).removeprefix("torch."))
    if code is None:
        raise ValueError(f"dtype must be float32, bfloat16, float16, float64, int8, uint8 or int16; got {dtype}")
    return code

# --- pointer table rows (int64 [PTR_TABLE_ROWS, n]) ------------------------------------------------------
PTR_PARAM = 0  # parameters (the local shards under FSDP2)
PTR_GRAD = 1  # gradients (refreshed every step)
PTR_EXP_AVG = 2  # first moments
PTR_EXP_AVG_SQ = 3  # second moments
PTR_MAX_EXP_AVG_SQ = 4  # AdamW amsgrad running maxima, or 0
PTR_MASTER = 5  # fp32 master weights of bf16/fp16 params, or their int8/int16 corrections (MASTER_*), or 0
PTR_EXP_AVG_SCALE = 6  # float32 block scales of int8 first moments, or 0
PTR_EXP_AVG_SQ_SCALE = 7  # float32 block scales of uint8 second moments, or 0
PTR_NUMEL = 8  # element counts (not addresses)
PTR_LAST_DIM = 9  # length of the last dimension: quantization blocks run along it, within a row
PTR_ELEM_OFFSET = 10  # global index of the tensor's first element (a DTensor shard's offset), for rounding seeds
PTR_SALT = 11  # the parameter's position in its optimizer (stochastic-rounding seed)
PTR_TABLE_ROWS = 12

# --- master weights: what row PTR_MASTER holds ----------------------------------------------------------
MASTER_NONE = 0  # nothing: the parameter itself is updated
MASTER_FP32 = 1  # an fp32 copy
MASTER_CORR8 = 2  # an int8 correction: master = bits(fp32(p)) + c << MASTER_SHIFT8_{BF16,F16}
MASTER_CORR16 = 3  # an int16 correction: master = bits(fp32(p)) + c (exact for bf16)
MASTER_SHIFT8_BF16 = 8  # fp32 steps per int8 correction step under a bf16 parameter (2**15 / 2**7)
MASTER_SHIFT8_F16 = 5  # ... under an fp16 parameter (2**12 / 2**7)

# --- compressed moments (docs/compressed_state.md) -------------------------------------------------------
Q_M_LEVELS = 127  # int8 first moment: m = code * (scale / 127), scale = block max |m|
Q_V_LEVELS = 255  # uint8 second moment: sqrt(v) = code * (scale / 255), scale = block max sqrt(v)
QUANT_BLOCK = 256  # default elements per block (along the last dimension, within a row)

# --- stochastic rounding: r = lowbias32(index*K_INDEX ^ clock*K_CLOCK ^ salt*K_SALT ^ stream*K_STREAM) & 0xFFFF
SR_K_INDEX = 0x9E3779B1
SR_K_CLOCK = 0x85EBCA77
SR_K_SALT = 0xC2B2AE3D
SR_K_STREAM = 0x27D4EB2F
SR_HASH_M1 = 0x7FEB352D  # lowbias32: x ^= x >> 16; x *= M1; x ^= x >> 15; x *= M2; x ^= x >> 16
SR_HASH_M2 = 0x846CA68B
SR_STREAM_PARAM, SR_STREAM_EXP_AVG, SR_STREAM_EXP_AVG_SQ = 0, 1, 2

# --- gradient-norm telemetry: per-step (sum g^2, sum |g|) partials and the history ring --------------------
GN_SUMSQ, GN_SUMABS = 0, 1
GN_COLS = 2

# --- LAMB phases (one launch sequence, or two halves around a cross-shard all-reduce) -------------------
LAMB_FUSED = 0  # stage 1, per-tensor reduction, stage 2
LAMB_STAGE1 = 1  # sharded: per-tensor sums of w^2 and u^2 only (the caller all-reduces them)
LAMB_STAGE2 = 2  # sharded: from the all-reduced sums, the ratio, telemetry and the update

# --- group tables ------------------------------------------------------------------------------------
GS_FIRST_ROW, GS_ROWS, GS_CLOCK = 0, 1, 2
GROUP_SCHED_COLS = 3

# Hyperparameter columns (float64). AdamW uses the first block; LAMB uses all of it.
HP_LR_SCALE = 0  # multiplies the schedule's value
HP_BETA1 = 1
HP_BETA2 = 2
HP_EPS = 3
HP_WEIGHT_DECAY = 4
HP_MAXIMIZE = 5  # 1.0: ascend (AdamW only)
HP_BIAS_CORRECTION = 6  # 1.0: divide moments by (1 - beta^t) (LAMB option; AdamW always 1.0)
HP_GRAD_AVERAGING = 7  # 1.0: m = b1 m + (1 - b1) g;  0.0: m = b1 m + g   (LAMB)
HP_ADAPT = 8  # 1.0: apply the trust ratio to this group (LAMB)
HP_TRUST_MIN = 9  # lower clamp of the trust ratio (0 = none)
HP_TRUST_MAX = 10  # upper clamp of the trust ratio (inf = none)
HP_DECOUPLED = 11  # 1.0: p *= 1 - lr*wd before the update, decay kept out of the ratio (LAMB)
HP_COLS = 12

# Per-tensor LAMB telemetry columns (float32 [tensors, NORM_COLS]).
NORM_PARAM, NORM_UPDATE, NORM_RATIO = 0, 1, 2
NORM_COLS = 3
