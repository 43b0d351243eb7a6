// Element types and the (parameter, state, master weights) combinations that have kernels, shared by the
// CPU and CUDA backends: one list (KernelCombos) from which both supported() and the dtype dispatch are
// derived, so the two can never disagree. Dtype codes are layout::DT_* (kernels/layout.py DTYPE_CODES).
//
//   supported(pdtype, sdtype, master)                       host and device
//   dispatch_dtypes<Op>(pdtype, sdtype, master, args...)    calls Op<P, S, MASTER>::run(args...) (host)
//   dispatch_param_dtype<Op>(pdtype, args...)               calls Op<P>::run(args...) (host)
//
// P is the parameter (and gradient) storage type, S the moment storage type: float, double, bf16, f16
// (convert.h), or q8 (quant.h: int8 / uint8 codes with float32 block scales; its code is DT_I8, the dtype of
// exp_avg). MASTER is a layout::MASTER_* mode: none, fp32 master weights, or an int8 / int16 compact
// correction of bf16/fp16 parameters (``false`` / ``true`` convert to MASTER_NONE / MASTER_FP32).
#pragma once

#include <cstdint>

#include "config.h"
#include "convert.h"
#include "layout.h"
#include "quant.h"

namespace lrsched {

/// The layout::DT_* code of a storage type.
template <class T>
struct DtypeCode;
template <>
struct DtypeCode<float> {
  static constexpr int64_t value = layout::DT_F32;
};
template <>
struct DtypeCode<bf16> {
  static constexpr int64_t value = layout::DT_BF16;
};
template <>
struct DtypeCode<f16> {
  static constexpr int64_t value = layout::DT_F16;
};
template <>
struct DtypeCode<double> {
  static constexpr int64_t value = layout::DT_F64;
};
template <>
struct DtypeCode<q8> {
  static constexpr int64_t value = layout::DT_I8;
};

/// One (parameter type, state type, master mode) combination.
template <class P_, class S_, int64_t MASTER_>
struct DtypeCombo {
  using P = P_;
  using S = S_;
  static constexpr int64_t MASTER = MASTER_;
  static constexpr int64_t pdtype = DtypeCode<P_>::value;
  static constexpr int64_t sdtype = DtypeCode<S_>::value;
};

template <class... T>
struct TypeList {};

constexpr int64_t kNone = layout::MASTER_NONE, kFp32 = layout::MASTER_FP32, kCorr8 = layout::MASTER_CORR8,
                  kCorr16 = layout::MASTER_CORR16;

/// Every combination with kernels (the one list): fp32 params with fp32 or bf16 states, fp64 with fp64,
/// bf16 params with fp32 or bf16 states and fp16 params with fp32 or fp16 states, each low-precision pair
/// with no master weights, fp32 masters or an int8 / int16 compact correction; and int8 moments (q8) for
/// fp32 params and for bf16 / fp16 params with every master mode.
using KernelCombos = TypeList<
    DtypeCombo<float, float, kNone>, DtypeCombo<float, bf16, kNone>, DtypeCombo<double, double, kNone>,
    DtypeCombo<bf16, float, kNone>, DtypeCombo<bf16, float, kFp32>, DtypeCombo<bf16, bf16, kNone>,
    DtypeCombo<bf16, bf16, kFp32>, DtypeCombo<f16, float, kNone>, DtypeCombo<f16, float, kFp32>,
    DtypeCombo<f16, f16, kNone>, DtypeCombo<f16, f16, kFp32>,
    // compact master weights
    DtypeCombo<bf16, float, kCorr8>, DtypeCombo<bf16, float, kCorr16>, DtypeCombo<bf16, bf16, kCorr8>,
    DtypeCombo<bf16, bf16, kCorr16>, DtypeCombo<f16, float, kCorr8>, DtypeCombo<f16, float, kCorr16>,
    DtypeCombo<f16, f16, kCorr8>, DtypeCombo<f16, f16, kCorr16>,
    // int8 moments
    DtypeCombo<float, q8, kNone>, DtypeCombo<bf16, q8, kNone>, DtypeCombo<bf16, q8, kFp32>,
    DtypeCombo<bf16, q8, kCorr8>, DtypeCombo<bf16, q8, kCorr16>, DtypeCombo<f16, q8, kNone>,
    DtypeCombo<f16, q8, kFp32>, DtypeCombo<f16, q8, kCorr8>, DtypeCombo<f16, q8, kCorr16>>;

/// Every parameter (and gradient) storage type.
using ParamTypes = TypeList<float, bf16, f16, double>;

template <class... Cs>
LRS_HD bool combo_listed(TypeList<Cs...>, int64_t pdtype, int64_t sdtype, int64_t master) {
  return ((Cs::pdtype == pdtype && Cs::sdtype == sdtype && Cs::MASTER == master) || ...);
}

/// Whether (param dtype, state dtype, master mode) has kernels (layout::DT_* codes, layout::MASTER_* mode).
LRS_HD bool supported(int64_t pdtype, int64_t sdtype, int64_t master) {
  return combo_listed(KernelCombos{}, pdtype, sdtype, master);
}

template <template <class, class, int64_t> class Op, class... Cs, class... Args>
static inline bool dispatch_combos(TypeList<Cs...>, int64_t pdtype, int64_t sdtype, int64_t master, Args&... args) {
  return ((Cs::pdtype == pdtype && Cs::sdtype == sdtype && Cs::MASTER == master &&
           (Op<typename Cs::P, typename Cs::S, Cs::MASTER>::run(args...), true)) ||
          ...);
}

/// ``Op<P, S, MASTER>::run(args...)`` for the runtime (pdtype, sdtype, master mode); false (and no call) for a
/// combination without kernels (see supported()).
template <template <class, class, int64_t> class Op, class... Args>
static inline bool dispatch_dtypes(int64_t pdtype, int64_t sdtype, int64_t master, Args&&... args) {
  return dispatch_combos<Op>(KernelCombos{}, pdtype, sdtype, master, args...);
}

template <template <class> class Op, class... Ps, class... Args>
static inline bool dispatch_params(TypeList<Ps...>, int64_t pdtype, Args&... args) {
  return ((DtypeCode<Ps>::value == pdtype && (Op<Ps>::run(args...), true)) || ...);
}

/// ``Op<P>::run(args...)`` for the runtime parameter dtype; false (and no call) for an unknown code.
template <template <class> class Op, class... Args>
static inline bool dispatch_param_dtype(int64_t pdtype, Args&&... args) {
  return dispatch_params<Op>(ParamTypes{}, pdtype, args...);
}

}  // namespace lrsched
