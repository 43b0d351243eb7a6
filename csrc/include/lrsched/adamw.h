// AdamW per element (Loshchilov & Hutter, arXiv 1711.05101), in torch.optim.AdamW's order of operations:
//
//     g = -g if maximize;  g = g / grad_scale
//     p = p * (1 - lr * wd)
//     m = m + (g - m) * (1 - b1)                          (torch's lerp)
//     v = v * b2 + (1 - b2) * g * g
//     vmax = max(vmax, v)  (amsgrad; the denominator then uses vmax; NaN propagates as torch.maximum)
//     p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// The per-tensor coefficients are computed once in double (adamw_coeffs) and rounded to the compute type;
// the gradient is multiplied by (+-1 / grad_scale), which equals torch's division whenever the scale is a
// power of two (as GradScaler's always is).
#pragma once

#include "config.h"
#include "convert.h"
#include "layout.h"

#if !defined(__CUDACC__)
#include <math.h>
#endif

namespace lrsched {

template <class T>
struct AdamWCoeffs {
  T gmul;       // (maximize ? -1 : 1) / grad_scale
  T decay;      // 1 - lr * wd
  T omb1;       // 1 - beta1
  T beta2;      // beta2
  T omb2;       // 1 - beta2
  T bc2_sqrt;   // sqrt(1 - beta2^t)
  T inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^t) (int8 moments: a multiplication instead of torch's division)
  T step_size;  // lr / (1 - beta1^t)
  T eps;
};

/// Coefficients for one tensor: ``lr`` its group's lr, ``hp`` its group's row of the hyperparameter table,
/// ``step`` its update count before this step (t = step + 1), ``inv_scale`` = 1 / grad_scale.
template <class T>
LRS_HD AdamWCoeffs<T> adamw_coeffs(double lr, const double* hp, double step, double inv_scale) {
  const double b1 = hp[layout::HP_BETA1], b2 = hp[layout::HP_BETA2];
  const double t = step + 1.0;
  const double bc1 = 1.0 - ::pow(b1, t);
  const double bc2 = 1.0 - ::pow(b2, t);
  AdamWCoeffs<T> c;
  c.gmul = static_cast<T>((hp[layout::HP_MAXIMIZE] != 0.0 ? -1.0 : 1.0) * inv_scale);
  c.decay = static_cast<T>(1.0 - lr * hp[layout::HP_WEIGHT_DECAY]);
  c.omb1 = static_cast<T>(1.0 - b1);
  c.beta2 = static_cast<T>(b2);
  c.omb2 = static_cast<T>(1.0 - b2);
  c.bc2_sqrt = static_cast<T>(::sqrt(bc2));
  c.inv_bc2_sqrt = static_cast<T>(1.0 / ::sqrt(bc2));
  c.step_size = static_cast<T>(lr / bc1);
  c.eps = static_cast<T>(hp[layout::HP_EPS]);
  return c;
}

/// The moment update of one element (and the decay of p): the first half of adamw_element.
template <class T>
LRS_HD void adamw_moments(T& p, T g, T& m, T& v, const AdamWCoeffs<T>& c) {
  g = g * c.gmul;
  p = p * c.decay;
  m = m + (g - m) * c.omb1;
  v = v * c.beta2 + c.omb2 * g * g;
}

/// The parameter step from the first moment and ``root`` = sqrt(v) (the second half of adamw_element; the
/// int8 kernels reuse ``root`` to encode the second moment).
template <class T>
LRS_HD void adamw_apply(T& p, T m, T root, const AdamWCoeffs<T>& c) {
  const T denom = root / c.bc2_sqrt + c.eps;
  p = p - c.step_size * m / denom;
}

/// adamw_apply for int8 moments, which have no torch counterpart to follow bit for bit: the bias correction
/// of sqrt(v) is a multiplication by its reciprocal (computed in double, as LAMB's), which leaves one
/// division per element besides the square root the encoding needs anyway.
template <class T>
LRS_HD void adamw_apply_q(T& p, T m, T root, const AdamWCoeffs<T>& c) {
  const T denom = root * c.inv_bc2_sqrt + c.eps;
  p = p - c.step_size * m / denom;
}

/// One element; ``vmax`` is read and written only when ``AMSGRAD``.
template <bool AMSGRAD, class T>
LRS_HD void adamw_element(T& p, T g, T& m, T& v, T& vmax, const AdamWCoeffs<T>& c) {
  adamw_moments(p, g, m, v, c);
  T vd = v;
  if (AMSGRAD) {
    vmax = (v > vmax || v != v) ? v : vmax;
    vd = vmax;
  }
  adamw_apply(p, m, sqrt_rn(vd), c);
}

}  // namespace lrsched
