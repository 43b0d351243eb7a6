// Per-element AdamW and LAMB math (adamw.h, lamb.h) and the storage conversions (convert.h) against
// hand-computed values.
#include <lrsched/adamw.h>
#include <lrsched/convert.h>
#include <lrsched/lamb.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "check.h"

using namespace lrsched;
namespace L = lrsched::layout;

namespace {
void adamw_hp(double* hp, double b1, double b2, double eps, double wd, bool maximize) {
  for (int i = 0; i < L::HP_COLS; ++i) hp[i] = 0.0;
  hp[L::HP_LR_SCALE] = 1.0;
  hp[L::HP_BETA1] = b1;
  hp[L::HP_BETA2] = b2;
  hp[L::HP_EPS] = eps;
  hp[L::HP_WEIGHT_DECAY] = wd;
  hp[L::HP_MAXIMIZE] = maximize ? 1.0 : 0.0;
  hp[L::HP_BIAS_CORRECTION] = hp[L::HP_GRAD_AVERAGING] = hp[L::HP_ADAPT] = 1.0;
  hp[L::HP_TRUST_MAX] = std::numeric_limits<double>::infinity();
}
}  // namespace

TEST(adamw_first_step_by_hand) {
  // p = 1, g = 0.5, lr = 0.1, wd = 0.01, t = 1:  p = 0.999 - (0.1 / 0.1) * 0.05 / (0.5 + 1e-8)
  double hp[L::HP_COLS];
  adamw_hp(hp, 0.9, 0.999, 1e-8, 0.01, false);
  const AdamWCoeffs<double> c = adamw_coeffs<double>(0.1, hp, 0.0, 1.0);
  double p = 1.0, m = 0.0, v = 0.0, vmax = 0.0;
  adamw_element<false>(p, 0.5, m, v, vmax, c);
  CHECK_NEAR(m, 0.05, 1e-15);
  CHECK_NEAR(v, 0.00025, 1e-13);
  CHECK_NEAR(p, 0.999 - 0.05 / (0.5 + 1e-8), 1e-14);
  // float: the same within float rounding
  const AdamWCoeffs<float> cf = adamw_coeffs<float>(0.1, hp, 0.0, 1.0);
  float pf = 1.0f, mf = 0.0f, vf = 0.0f, xf = 0.0f;
  adamw_element<false>(pf, 0.5f, mf, vf, xf, cf);
  CHECK_NEAR(pf, p, 1e-6);
}

TEST(adamw_maximize_and_grad_scale) {
  double hp[L::HP_COLS];
  adamw_hp(hp, 0.9, 0.999, 1e-8, 0.0, true);
  const AdamWCoeffs<double> c = adamw_coeffs<double>(0.1, hp, 0.0, 1.0 / 4.0);  // grad_scale 4
  double p = 1.0, m = 0.0, v = 0.0, x = 0.0;
  adamw_element<false>(p, 2.0, m, v, x, c);  // unscaled g = 0.5, ascending
  CHECK_NEAR(m, -0.05, 1e-15);
  CHECK_NEAR(p, 1.0 + 0.05 / (0.5 + 1e-8), 1e-14);
}

TEST(adamw_amsgrad_uses_the_running_maximum) {
  double hp[L::HP_COLS];
  adamw_hp(hp, 0.9, 0.999, 1e-8, 0.0, false);
  const AdamWCoeffs<double> c = adamw_coeffs<double>(0.1, hp, 4.0, 1.0);  // t = 5
  double p = 0.0, m = 0.1, v = 0.0, vmax = 1.0;
  adamw_element<true>(p, 0.0, m, v, vmax, c);
  CHECK(vmax == 1.0);  // v = 0 < 1
  const double bc1 = 1 - std::pow(0.9, 5.0), bc2 = 1 - std::pow(0.999, 5.0);
  CHECK_NEAR(p, -(0.1 / bc1) * 0.09 / (1.0 / std::sqrt(bc2) + 1e-8), 1e-13);
  double m2 = 0.0, v2 = 0.0, x2 = std::numeric_limits<double>::quiet_NaN(), p2 = 0.0;
  adamw_element<true>(p2, 1.0, m2, v2, x2, c);
  CHECK(std::isnan(x2));  // NaN propagates as torch.maximum
}

TEST(lamb_direction_and_update_by_hand) {
  double hp[L::HP_COLS];
  adamw_hp(hp, 0.9, 0.99, 1e-6, 0.1, false);
  hp[L::HP_DECOUPLED] = 0.0;
  const LambCoeffs<double> c = lamb_coeffs<double>(0.01, hp, 0.0, 1.0);
  double m = 0.0, v = 0.0;
  lamb_moments(2.0, m, v, c);
  CHECK_NEAR(m, 0.2, 1e-15);
  CHECK_NEAR(v, 0.04, 1e-14);
  const double r = lamb_direction(m, v, c);  // (0.2 / 0.1) / (0.2 / 0.1 + 1e-6)
  CHECK_NEAR(r, 2.0 / (2.0 + 1e-6), 1e-14);
  double w, u;
  lamb_base_update(3.0, r, c, w, u);
  CHECK(w == 3.0);
  CHECK_NEAR(u, r + 0.3, 1e-15);
  hp[L::HP_DECOUPLED] = 1.0;
  hp[L::HP_GRAD_AVERAGING] = 0.0;
  hp[L::HP_BIAS_CORRECTION] = 0.0;
  const LambCoeffs<double> d = lamb_coeffs<double>(0.01, hp, 0.0, 1.0);
  double m2 = 0.0, v2 = 0.0;
  lamb_moments(2.0, m2, v2, d);
  CHECK_NEAR(m2, 2.0, 1e-15);  // beta3 = 1
  lamb_base_update(3.0, lamb_direction(m2, v2, d), d, w, u);
  CHECK_NEAR(w, 3.0 * (1 - 0.01 * 0.1), 1e-15);
  CHECK_NEAR(u, 2.0 / (0.2 + 1e-6), 1e-14);
}

TEST(lamb_trust_ratio_rules) {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(lamb_trust_ratio(2.0, 4.0, true, 0.0, inf) == 0.5);
  CHECK(lamb_trust_ratio(0.0, 4.0, true, 0.0, inf) == 1.0);
  CHECK(lamb_trust_ratio(2.0, 0.0, true, 0.0, inf) == 1.0);
  CHECK(lamb_trust_ratio(2.0, 4.0, false, 0.0, inf) == 1.0);
  CHECK(lamb_trust_ratio(100.0, 1.0, true, 0.01, 10.0) == 10.0);
  CHECK(lamb_trust_ratio(1.0, 1000.0, true, 0.01, 10.0) == 0.01);
  CHECK(lamb_trust_ratio(2.0, 4.0, false, 0.0, 0.3) == 0.3);  // the clamp applies to the unit ratio too
}

TEST(bfloat16_rounds_to_nearest_even) {
  auto bits = [](uint32_t u) { return f32_from_bits(u); };
  CHECK(f32_to_bf16(bits(0x3F808000u)) == 0x3F80);  // tie, even below
  CHECK(f32_to_bf16(bits(0x3F818000u)) == 0x3F82);  // tie, even above
  CHECK(f32_to_bf16(bits(0x3F808001u)) == 0x3F81);
  CHECK(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()) == 0x7FC0);
  CHECK(f32_to_bf16(std::numeric_limits<float>::infinity()) == 0x7F80);
  CHECK(bf16_to_f32(0x3F80) == 1.0f);
  bf16 b;
  store(&b, 3.0f);
  CHECK(load(b) == 3.0f);
}

TEST(float16_round_trips_and_rounds_to_nearest_even) {
  CHECK(f32_to_f16(1.0f) == 0x3C00);
  CHECK(f16_to_f32(0x3C00) == 1.0f);
  CHECK(f32_to_f16(1.0f + 1.0f / 2048.0f) == 0x3C00);         // tie -> even
  CHECK(f32_to_f16(1.0f + 3.0f / 2048.0f) == 0x3C02);         // tie -> even (up)
  CHECK(f32_to_f16(65520.0f) == 0x7C00);                      // overflows to inf
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));         // smallest subnormal
  CHECK(round_trip<f16>(0.1f) == f16_to_f32(f32_to_f16(0.1f)));
}

TEST_MAIN()
