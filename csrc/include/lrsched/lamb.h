// LAMB per element (You et al., arXiv 1904.00962 v5, Algorithm 2, with FusedLAMB's options):
//
//     g = g / (grad_scale * clip_div)
//     m = b1 m + b3 g            (b3 = 1 - b1 with grad_averaging, else 1)
//     v = b2 v + (1 - b2) g^2
//     r = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)      (bc = 1 - b^t with bias_correction, else 1)
//     decoupled: w = p (1 - lr wd), u = r       otherwise: w = p, u = r + wd p
//   per tensor: ratio = ||w|| / ||u|| (1 if either is 0 or adapt is off), clamped to [trust_min, trust_max]
//     p = w - lr ratio u
//
// r is formed from the moments *as stored*: rounded to the state dtype S first (lamb_moments_stored; a
// no-op for fp32/fp64 states), so the update applied is exactly the one whose norm gave the trust ratio,
// and a pass that rebuilds u (from the same old moments and gradient, or from the stored new moments)
// gets the same bits. The Triton kernels and the "reference" backend do the same; AdamW instead keeps
// torch's meaning (its update uses the fresh moments). With int8 moments (quant.h) "as stored" means the
// decoded codes of the block just encoded (docs/compressed_state.md). Divisions by the bias corrections are
// multiplications by reciprocals computed in double.
#pragma once

#include "config.h"
#include "convert.h"
#include "layout.h"
#include "quant.h"

#if !defined(__CUDACC__)
#include <math.h>
#endif

namespace lrsched {

template <class T>
struct LambCoeffs {
  T gmul;          // 1 / (grad_scale * clip_div)
  T beta1, beta3;  // m = beta1 m + beta3 g
  T beta2, omb2;   // v = beta2 v + (1 - beta2) g^2
  T inv_bc1;       // 1 / (1 - beta1^t), or 1
  T inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^t), or 1
  T eps;
  T w_scale;       // w = p * w_scale:    1 - lr wd (decoupled) or 1
  T u_decay;       // u = r + u_decay p:  0 (decoupled) or wd
};

/// Coefficients of one tensor (``hp`` its group's row, ``step`` its update count before this step).
template <class T>
LRS_HD LambCoeffs<T> lamb_coeffs(double lr, const double* hp, double step, double inv_scale) {
  const double b1 = hp[layout::HP_BETA1], b2 = hp[layout::HP_BETA2], wd = hp[layout::HP_WEIGHT_DECAY];
  const double t = step + 1.0;
  const bool bias_correction = hp[layout::HP_BIAS_CORRECTION] != 0.0;
  const bool decoupled = hp[layout::HP_DECOUPLED] != 0.0;
  const double bc1 = bias_correction ? 1.0 - ::pow(b1, t) : 1.0;
  const double bc2 = bias_correction ? 1.0 - ::pow(b2, t) : 1.0;
  LambCoeffs<T> c;
  c.gmul = static_cast<T>(inv_scale);
  c.beta1 = static_cast<T>(b1);
  c.beta3 = static_cast<T>(hp[layout::HP_GRAD_AVERAGING] != 0.0 ? 1.0 - b1 : 1.0);
  c.beta2 = static_cast<T>(b2);
  c.omb2 = static_cast<T>(1.0 - b2);
  c.inv_bc1 = static_cast<T>(1.0 / bc1);
  c.inv_bc2_sqrt = static_cast<T>(1.0 / ::sqrt(bc2));
  c.eps = static_cast<T>(hp[layout::HP_EPS]);
  c.w_scale = static_cast<T>(decoupled ? 1.0 - lr * wd : 1.0);
  c.u_decay = static_cast<T>(decoupled ? 0.0 : wd);
  return c;
}

/// Moment update (in place, compute type).
template <class T>
LRS_HD void lamb_moments(T g, T& m, T& v, const LambCoeffs<T>& c) {
  g = g * c.gmul;
  m = c.beta1 * m + c.beta3 * g;
  v = c.beta2 * v + c.omb2 * g * g;
}

/// The moment update followed by the rounding to the state type ``S``: ``m`` and ``v`` become the values a
/// later load of the stored moments gives, from which r is formed (every LAMB path calls this).
template <class S, class T>
LRS_HD void lamb_moments_stored(T g, T& m, T& v, const LambCoeffs<T>& c) {
  lamb_moments(g, m, v, c);
  m = round_trip<S>(m);
  v = round_trip<S>(v);
}

/// lamb_moments_stored with the rounding of the stores: stochastic for bf16 moments when SR (the same random
/// bits as the store of the same element in the same step, so every pass gets the same values).
template <class S, bool SR, class T>
LRS_HD void lamb_moments_stored_at(T g, T& m, T& v, const LambCoeffs<T>& c, SrAt at_m, SrAt at_v) {
  lamb_moments(g, m, v, c);
  m = round_stored<SR, S>(m, at_m);
  v = round_stored<SR, S>(v, at_v);
}

/// The bias-corrected Adam direction from the stored first moment and ``root`` = sqrt of the stored second
/// moment (int8 moments decode it directly: docs/compressed_state.md, "one multiply to decode").
template <class T>
LRS_HD T lamb_direction_root(T m, T root, const LambCoeffs<T>& c) {
  return (m * c.inv_bc1) / (root * c.inv_bc2_sqrt + c.eps);
}

/// The bias-corrected Adam direction r from the stored moments (see lamb_moments_stored).
template <class T>
LRS_HD T lamb_direction(T m, T v, const LambCoeffs<T>& c) {
  return lamb_direction_root(m, sqrt_rn(v), c);
}

/// The decay base w and the update u whose norms give the trust ratio.
template <class T>
LRS_HD void lamb_base_update(T p, T r, const LambCoeffs<T>& c, T& w, T& u) {
  w = p * c.w_scale;
  u = r + c.u_decay * p;
}

/// The trust ratio from the per-tensor norms (double): 1 if either norm is 0 (or not > 0) or ``adapt`` is
/// off, then clamped to [tmin, tmax].
LRS_HD double lamb_trust_ratio(double w_norm, double u_norm, bool adapt, double tmin, double tmax) {
  double ratio = (w_norm > 0.0 && u_norm > 0.0) ? w_norm / u_norm : 1.0;
  if (!adapt) ratio = 1.0;
  ratio = ratio > tmin ? ratio : tmin;
  ratio = ratio < tmax ? ratio : tmax;
  return ratio;
}

}  // namespace lrsched
