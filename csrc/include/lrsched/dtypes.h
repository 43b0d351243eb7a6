// Element types and the (parameter, state, master weights) combinations that have kernels, shared by the
// CPU and CUDA backends: one list (KernelCombos) from which both supported() and the dtype dispatch are
// derived, so the two can never disagree. Dtype codes are layout::DT_* (kernels/layout.py DTYPE_CODES).
//
//   supported(pdtype, sdtype, master)                       host and device
//   dispatch_dtypes<Op>(pdtype, sdtype, master, args...)    calls Op<P, S, MASTER>::run(args...) (host)
//   dispatch_param_dtype<Op>(pdtype, args...)               calls Op<P>::run(args...) (host)
//
// P is the parameter (and gradient) storage type, S the moment storage type: float, double, bf16, f16
// (convert.h). MASTER: fp32 master weights of bf16/fp16 parameters.
#pragma once

#include <cstdint>

#include "config.h"
#include "convert.h"
#include "layout.h"

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

/// One (parameter type, state type, master weights) combination.
template <class P_, class S_, bool MASTER_>
struct DtypeCombo {
  using P = P_;
  using S = S_;
  static constexpr bool MASTER = MASTER_;
  static constexpr int64_t pdtype = DtypeCode<P_>::value;
  static constexpr int64_t sdtype = DtypeCode<S_>::value;
};

template <class... T>
struct TypeList {};

/// Every combination with kernels (the one list): fp32 params with fp32 or bf16 states, fp64 with fp64,
/// bf16 params with fp32 or bf16 states and fp16 params with fp32 or fp16 states, each low-precision pair
/// with or without fp32 master weights.
using KernelCombos = TypeList<
    DtypeCombo<float, float, false>, DtypeCombo<float, bf16, false>, DtypeCombo<double, double, false>,
    DtypeCombo<bf16, float, false>, DtypeCombo<bf16, float, true>, DtypeCombo<bf16, bf16, false>,
    DtypeCombo<bf16, bf16, true>, DtypeCombo<f16, float, false>, DtypeCombo<f16, float, true>,
    DtypeCombo<f16, f16, false>, DtypeCombo<f16, f16, true>>;

/// Every parameter (and gradient) storage type.
using ParamTypes = TypeList<float, bf16, f16, double>;

template <class... Cs>
LRS_HD bool combo_listed(TypeList<Cs...>, int64_t pdtype, int64_t sdtype, bool master) {
  return ((Cs::pdtype == pdtype && Cs::sdtype == sdtype && Cs::MASTER == master) || ...);
}

/// Whether (param dtype, state dtype, master weights) has kernels (layout::DT_* codes).
LRS_HD bool supported(int64_t pdtype, int64_t sdtype, bool master) {
  return combo_listed(KernelCombos{}, pdtype, sdtype, master);
}

template <template <class, class, bool> class Op, class... Cs, class... Args>
static inline bool dispatch_combos(TypeList<Cs...>, int64_t pdtype, int64_t sdtype, bool master, Args&... args) {
  return ((Cs::pdtype == pdtype && Cs::sdtype == sdtype && Cs::MASTER == master &&
           (Op<typename Cs::P, typename Cs::S, Cs::MASTER>::run(args...), true)) ||
          ...);
}

/// ``Op<P, S, MASTER>::run(args...)`` for the runtime (pdtype, sdtype, master); false (and no call) for a
/// combination without kernels (see supported()).
template <template <class, class, bool> class Op, class... Args>
static inline bool dispatch_dtypes(int64_t pdtype, int64_t sdtype, bool master, Args&&... args) {
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
