// The compressed-state pieces of lrsched/quant.h (docs/compressed_state.md), against independent
// formulations: the int8 / uint8 moment codec, the block geometry, the compact master correction (with the
// 16-bit tie rule), the stochastic-rounding hash, and the gradient-norm history of advance.h.
#include <lrsched/advance.h>
#include <lrsched/convert.h>
#include <lrsched/layout.h>
#include <lrsched/quant.h>

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"

#define COMMA ,

using namespace lrsched;
namespace L = lrsched::layout;

namespace {

/// Round half to even with the C library (the default rounding mode).
float rne_libm(float x) { return std::nearbyint(x); }

/// The codec as the specification states it, with the C library's rounding and clamps.
int ref_code_m(float m, float s) {
  if (!(s > 0.0f)) return 0;
  const float q = 127.0f / s;
  const float y = rne_libm(m * q);
  if (std::isnan(y)) return 0;
  return static_cast<int>(std::fmax(-127.0f, std::fmin(127.0f, y)));
}

int ref_code_v(float r, float s) {
  if (r == 0.0f) return 0;
  const float q = s > 0.0f ? 255.0f / s : 0.0f;
  const float y = rne_libm(r * q);
  if (std::isnan(y)) return 1;
  return static_cast<int>(std::fmax(1.0f, std::fmin(255.0f, y)));
}

uint32_t lowbias32(uint32_t x) {  // written out from the specification
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

}  // namespace

TEST(q_rne_rounds_half_to_even_like_the_c_library) {
  CHECK(std::fegetround() == FE_TONEAREST);
  for (int k = -600; k <= 600; ++k) {
    const float x = 0.5f * static_cast<float>(k);  // every half-integer and integer in [-300, 300]
    CHECK(q_rne(x) == rne_libm(x));
    const float y = x + 0.2501f, z = x - 0.2499f;
    CHECK(q_rne(y) == rne_libm(y));
    CHECK(q_rne(z) == rne_libm(z));
  }
  CHECK(q_rne(2.5f) == 2.0f && q_rne(3.5f) == 4.0f && q_rne(-2.5f) == -2.0f && q_rne(-0.5f) == 0.0f);
}

TEST(codec_matches_the_specification) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-40, 40);
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = 1 + trial % 300;
    std::vector<float> m(n), r(n);
    const float scale = std::ldexp(1.0f, expo(rng));
    uint32_t xm = 0, xv = 0;
    for (int j = 0; j < n; ++j) {
      m[j] = normal(rng) * scale;
      r[j] = std::fabs(normal(rng)) * scale;
      if (trial % 7 == 0 && j % 3 == 0) m[j] = r[j] = 0.0f;
      xm = max_u32(xm, abs_bits(m[j]));
      xv = max_u32(xv, abs_bits(r[j]));
    }
    const float sm = f32_from_bits(xm), sv = f32_from_bits(xv);
    float want_sm = 0.0f, want_sv = 0.0f;
    for (int j = 0; j < n; ++j) {
      want_sm = std::fmax(want_sm, std::fabs(m[j]));
      want_sv = std::fmax(want_sv, r[j]);
    }
    CHECK(sm == want_sm && sv == want_sv);
    const float qm = q_recip_m(sm), qv = q_recip_v(sv);
    const float dm = q_step_m(sm), dv = q_step_v(sv);
    for (int j = 0; j < n; ++j) {
      const int cm = q_encode_m(m[j], qm), cv = q_encode_v(r[j], qv);
      CHECK(cm == ref_code_m(m[j], sm));
      CHECK(cv == ref_code_v(r[j], sv));
      CHECK(cv >= (r[j] > 0.0f ? 1 : 0) && cv <= 255 && cm >= -127 && cm <= 127);
      // decoding: within half a step (plus float32 rounding) of the value, except where max(1, .) lifts v
      const float md = q_decode_m(static_cast<int8_t>(cm), dm), rd = q_decode_r(static_cast<uint8_t>(cv), dv);
      CHECK(std::fabs(md - m[j]) <= 0.5f * dm * 1.0001f + 1e-45f);
      if (cv > 1) CHECK(std::fabs(rd - r[j]) <= 0.5f * dv * 1.0001f + 1e-45f);
      CHECK(q_decode_v(static_cast<uint8_t>(cv), dv) == rd * rd);
    }
    // the block maximum encodes to the extreme code
    for (int j = 0; j < n; ++j) {
      if (std::fabs(m[j]) == sm && sm > 0.0f) CHECK(std::abs(q_encode_m(m[j], qm)) == 127);
      if (r[j] == sv && sv > 0.0f) CHECK(q_encode_v(r[j], qv) == 255);
    }
  }
}

TEST(codec_edge_cases) {
  CHECK(q_recip_m(0.0f) == 0.0f && q_encode_m(0.0f, q_recip_m(0.0f)) == 0);  // an all-zero block
  CHECK(q_encode_v(0.0f, q_recip_v(0.0f)) == 0);
  CHECK(q_encode_v(1e-30f, q_recip_v(1.0f)) == 1);  // a nonzero v never becomes 0
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(q_recip_m(inf) == 0.0f && q_recip_m(nan) == 0.0f);  // a non-finite block decodes to NaN from its scale
  CHECK(std::isnan(q_decode_m(0, q_step_m(nan))) && std::isnan(q_decode_m(0, q_step_m(inf))));
  const float tiny = 1e-40f;  // 127 / s overflows: codes saturate, zeros stay 0
  CHECK(std::isinf(q_recip_m(tiny)) && q_encode_m(tiny, q_recip_m(tiny)) == 127);
  CHECK(q_encode_m(0.0f, q_recip_m(tiny)) == 0);
  CHECK(q_encode_m(-tiny, q_recip_m(tiny)) == -127);
  CHECK(q_encode_m(0.5f, 127.0f / 0.5f) == 127 && q_encode_m(-1.0f, 127.0f) == -127);
  CHECK(q_encode_m(0.5f / 127.0f, 127.0f) == 0 || q_encode_m(0.5f / 127.0f, 127.0f) == 1);
  CHECK(q_encode_m(2.5f, 1.0f) == 2 && q_encode_m(3.5f, 1.0f) == 4 && q_encode_m(-2.5f, 1.0f) == -2);
}

TEST(block_geometry_follows_rows) {
  const QuantGeometry q = quant_geometry(4 * 300, 300, 256);  // two blocks per row: 256 + 44
  CHECK(q.nb == 2 && q.blocks == 8);
  CHECK(q_block_start(q, 0) == 0 && q_block_length(q, 0) == 256);
  CHECK(q_block_start(q, 1) == 256 && q_block_length(q, 1) == 44);
  CHECK(q_block_start(q, 2) == 300 && q_block_start(q, 7) == 3 * 300 + 256);
  CHECK(q_block_at(q, 0) == 0 && q_block_at(q, 1) == 1 && q_block_at(q, 256) == 1 && q_block_at(q, 257) == 2);
  CHECK(q_block_at(q, 299) == 2 && q_block_at(q, 300) == 2 && q_block_at(q, 1199) == 8);
  const QuantGeometry small = quant_geometry(7, 7, 256), empty = quant_geometry(0, 5, 256);
  CHECK(small.blocks == 1 && q_block_length(small, 0) == 7 && empty.blocks == 0);
  const QuantGeometry narrow = quant_geometry(6 * 70, 70, 256);  // D smaller than a block
  CHECK(narrow.blocks == 6 && q_block_start(narrow, 5) == 350 && q_block_length(narrow, 5) == 70);
}

TEST(rne_shift_is_round_half_even_of_the_quotient) {
  for (int32_t d = -40000; d <= 40000; ++d) {
    CHECK(rne_shift<8>(d) == static_cast<int32_t>(std::nearbyint(d / 256.0)));
    CHECK(rne_shift<5>(d) == static_cast<int32_t>(std::nearbyint(d / 32.0)));
  }
}

namespace {

template <class P, int64_t MODE>
float decoded(P p, master_t<MODE> c) {
  return compact_decode<P, MODE>(p, c);
}

template <class P, int64_t MODE>
void check_compact(float master, float tol_steps) {
  P p;
  master_t<MODE> c;
  compact_encode<P, MODE>(master, &p, &c);
  if (!std::isfinite(master)) {
    CHECK(c == 0);
    return;
  }
  P rne;
  store(&rne, master);
  const float back = compact_decode<P, MODE>(p, c);
  const int64_t steps = static_cast<int64_t>(f32_bits(back)) - static_cast<int64_t>(f32_bits(master));
  if (MODE == L::MASTER_CORR16 && std::is_same<P, bf16>::value) {
    CHECK(back == master || (std::isnan(back) && std::isnan(master)));  // exact
    if (p.bits != rne.bits) {  // only on a tie rounded down: the neighbour up, c = -2**15
      CHECK((f32_bits(master) & 0xFFFFu) == 0x8000u && (rne.bits & 1u) == 0 && p.bits == rne.bits + 1 && c == -32768);
    }
  } else {
    CHECK(p.bits == rne.bits);
    CHECK(std::llabs(steps) <= static_cast<int64_t>(tol_steps));
  }
}

}  // namespace

TEST(compact_corrections_reconstruct_the_master) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<uint32_t> bits(0, 0xFFFFFFFFu);
  int tested = 0;
  for (int trial = 0; trial < 200000; ++trial) {
    uint32_t u = bits(rng);
    if (trial % 4 == 0) u = (u & 0xFFFF0000u) | 0x8000u;  // exact bf16 ties
    const float x = f32_from_bits(u);
    const float ax = std::fabs(x);
    if (!std::isfinite(x)) continue;
    // bf16: 8-bit corrections hold the master to half a step of 2**8 float32 steps, except where the code
    // 128 clamps to 127 (a whole step); 16-bit are exact
    if (ax < 3.3e38f) {
      check_compact<bf16, L::MASTER_CORR8>(x, 256.0f);
      check_compact<bf16, L::MASTER_CORR16>(x, 0.0f);
    }
    // fp16 in its normal range: 8-bit within a step of 2**5 float32 steps (half a step but for the clamp),
    // 16-bit exact
    if (ax >= 6.2e-5f && ax <= 65000.0f) {
      check_compact<f16, L::MASTER_CORR8>(x, 32.0f);
      check_compact<f16, L::MASTER_CORR16>(x, 0.0f);
      ++tested;
    }
  }
  CHECK(tested > 1000);
  const float inf = std::numeric_limits<float>::infinity();
  check_compact<bf16, L::MASTER_CORR8>(inf, 0.0f);
  check_compact<f16, L::MASTER_CORR16>(-inf, 0.0f);
  check_compact<bf16, L::MASTER_CORR16>(std::numeric_limits<float>::quiet_NaN(), 0.0f);
}

TEST(compact_tie_rule_for_16_bit_bf16_corrections) {
  // 1 + 2**-8 lies halfway between the bf16 neighbours 1 and 1 + 2**-7; RNE rounds down to the even 1.0
  const float tie = f32_from_bits(0x3F808000u);
  bf16 p;
  int16_t c;
  compact_encode<bf16, L::MASTER_CORR16>(tie, &p, &c);
  CHECK(p.bits == 0x3F81u && c == -32768);
  CHECK(decoded<bf16 COMMA L::MASTER_CORR16>(p, c) == tie);
  // the odd case rounds up: no special rule
  const float up = f32_from_bits(0x3F818000u);
  compact_encode<bf16, L::MASTER_CORR16>(up, &p, &c);
  CHECK(p.bits == 0x3F82u && c == -32768 && (decoded<bf16 COMMA L::MASTER_CORR16>(p, c)) == up);
  // 8-bit: d = +2**15 -> 128 clamps to 127
  int8_t c8;
  compact_encode<bf16, L::MASTER_CORR8>(tie, &p, &c8);
  CHECK(p.bits == 0x3F80u && c8 == 127);
}

TEST(fp16_corrections_clamp_outside_the_normal_range) {
  const float tiny = 1e-7f;  // an fp16 subnormal: the gap to the parameter exceeds 16 bits of float32 steps
  f16 p;
  int16_t c;
  compact_encode<f16, L::MASTER_CORR16>(tiny, &p, &c);
  CHECK(c == 32767 || c == -32768 || (decoded<f16 COMMA L::MASTER_CORR16>(p, c)) == tiny);
  const float big = 1e6f;  // beyond fp16: the parameter is inf, the correction clamps
  compact_encode<f16, L::MASTER_CORR16>(big, &p, &c);
  CHECK(std::isinf(load(p)) && c == -32768);
}

TEST(stochastic_rounding_is_the_stated_hash) {
  for (uint32_t index : {0u, 1u, 12345u, 0xFFFFFFFFu}) {
    for (int64_t clock : {int64_t(0), int64_t(7), (int64_t(1) << 33) + 5}) {
      for (int64_t salt : {int64_t(0), int64_t(3), (int64_t(1) << 32) + 9}) {
        for (int64_t stream : {L::SR_STREAM_PARAM, L::SR_STREAM_EXP_AVG, L::SR_STREAM_EXP_AVG_SQ}) {
          const uint32_t x = (index * 0x9E3779B1u) ^ (static_cast<uint32_t>(clock) * 0x85EBCA77u) ^
                             (static_cast<uint32_t>(salt) * 0xC2B2AE3Du) ^
                             (static_cast<uint32_t>(stream) * 0x27D4EB2Fu);
          CHECK(sr_bits(index, sr_seed(clock, salt, stream)) == (lowbias32(x) & 0xFFFFu));
        }
      }
    }
  }
  const float one_and_quarter_step = f32_from_bits(0x3F804000u);  // 1 + a quarter bf16 step
  CHECK(f32_to_bf16_sr(one_and_quarter_step, 0) == 0x3F80u && f32_to_bf16_sr(one_and_quarter_step, 0xBFFFu) == 0x3F80u);
  CHECK(f32_to_bf16_sr(one_and_quarter_step, 0xC000u) == 0x3F81u);
  CHECK(f32_to_bf16_sr(1.0f, 0xFFFFu) == 0x3F80u);  // representable values never move
  CHECK(f32_to_bf16_sr(std::numeric_limits<float>::quiet_NaN(), 0x1234u) == 0x7FC0u);
  CHECK(f32_to_bf16_sr(-std::numeric_limits<float>::infinity(), 0xFFFFu) == 0xFF80u);
  // unbiased: over all 2**16 draws the mean is the value
  double mean = 0.0;
  for (uint32_t r = 0; r < 65536u; ++r) mean += bf16_to_f32(f32_to_bf16_sr(one_and_quarter_step, r));
  CHECK(mean / 65536.0 == static_cast<double>(one_and_quarter_step));
}

TEST(advance_records_the_summed_partials_unless_skipped) {
  std::vector<int64_t> ints = {0, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT};
  std::vector<double> floats = {0.5, 0.5, 0, 0, 0};
  std::vector<int64_t> gs = {0, 1, L::CLOCK_STEPS};
  std::vector<double> hp(L::HP_COLS, 0.0);
  hp[L::HP_LR_SCALE] = 1.0;
  std::vector<int64_t> clock = {7, 0};
  float found = 0.0f;
  StepTables st;
  st.sched_ints = ints.data();
  st.sched_floats = floats.data();
  st.group_sched = gs.data();
  st.hparams = hp.data();
  st.groups = 1;
  st.clock = clock.data();
  st.found_inf = &found;
  // rows whose float32 sum would lose the small ones: the float64 sum keeps them
  std::vector<float> partials = {1e8f, 1.0f, 1.0f, 2.0f, 1.0f, 3.0f, -1e8f, 4.0f};
  std::vector<float> history(3 * L::GN_COLS, -1.0f), steps(1, 0.0f), lr(1);
  GnormHistory gn;
  gn.partials = partials.data();
  gn.rows = 4;
  gn.history = history.data();
  gn.capacity = 3;
  advance_step(st, steps.data(), 1, lr.data(), clock.data(), nullptr, gn);  // clock 7 -> slot 1
  CHECK(history[2] == 2.0f && history[3] == 10.0f && history[0] == -1.0f && history[4] == -1.0f);
  CHECK(clock[0] == 8);
  found = 1.0f;  // skipped: nothing written, the clock stays
  partials[1] = 100.0f;
  advance_step(st, steps.data(), 1, lr.data(), clock.data(), nullptr, gn);
  CHECK(history[4] == -1.0f && history[5] == -1.0f && clock[0] == 8);
  found = 0.0f;
  advance_step(st, steps.data(), 1, lr.data(), clock.data(), nullptr, gn);  // clock 8 -> slot 2
  CHECK(history[4] == 2.0f && history[5] == 109.0f && clock[0] == 9);
  advance_step(st, steps.data(), 1, lr.data(), clock.data(), nullptr, GnormHistory());  // no history: fine
  CHECK(clock[0] == 10);
}

TEST_MAIN()
