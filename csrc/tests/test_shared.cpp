// The pieces the CPU and CUDA backends share (csrc/include/lrsched): supported() and the dtype dispatch
// (dtypes.h), the end-of-step advance of lr_out / steps / clock (advance.h), and the stored-moment rounding
// of LAMB (lamb.h).
#include <lrsched/advance.h>
#include <lrsched/convert.h>
#include <lrsched/dtypes.h>
#include <lrsched/lamb.h>
#include <lrsched/layout.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <tuple>
#include <type_traits>
#include <vector>

#include "check.h"

using namespace lrsched;
namespace L = lrsched::layout;

namespace {

const int64_t kCodes[] = {L::DT_F32, L::DT_BF16, L::DT_F16, L::DT_F64, L::DT_I8, L::DT_U8, L::DT_I16};
const int64_t kModes[] = {L::MASTER_NONE, L::MASTER_FP32, L::MASTER_CORR8, L::MASTER_CORR16};

/// The combinations with kernels, written out independently of dtypes.h's list: every master mode for
/// bf16/fp16 params only; int8 moments (DT_I8) for fp32, bf16 and fp16 params.
bool expected_supported(int64_t pd, int64_t sd, int64_t master) {
  const bool low = pd == L::DT_BF16 || pd == L::DT_F16;
  if (master != L::MASTER_NONE && !low) return false;
  if (sd == L::DT_I8) return pd == L::DT_F32 || low;
  if (pd == L::DT_F32) return sd == L::DT_F32 || sd == L::DT_BF16;
  if (pd == L::DT_F64) return sd == L::DT_F64;
  if (pd == L::DT_BF16) return sd == L::DT_F32 || sd == L::DT_BF16;
  if (pd == L::DT_F16) return sd == L::DT_F32 || sd == L::DT_F16;
  return false;
}

template <class T>
int64_t code_of() {
  if (std::is_same<T, float>::value) return L::DT_F32;
  if (std::is_same<T, double>::value) return L::DT_F64;
  if (std::is_same<T, bf16>::value) return L::DT_BF16;
  if (std::is_same<T, f16>::value) return L::DT_F16;
  if (std::is_same<T, q8>::value) return L::DT_I8;
  return -1;
}

struct Seen {
  int calls = 0;
  int64_t pd = -1, sd = -1;
  int64_t master = -1;
  int extra = 0;
};

template <class P, class S, int64_t MASTER>
struct Record {
  static void run(Seen& seen, int extra) {
    ++seen.calls;
    seen.pd = code_of<P>();
    seen.sd = code_of<S>();
    seen.master = MASTER;
    seen.extra = extra;
  }
};

template <class P>
struct RecordParam {
  static void run(Seen& seen) {
    ++seen.calls;
    seen.pd = code_of<P>();
  }
};

/// Tables of two groups: group 0 a linear schedule 0 -> 1 over 10 steps (steps clock), group 1 the constant
/// 0.5 scaled by 2 (tokens clock).
struct Tables {
  std::vector<int64_t> ints = {0, 10, 10, L::SHAPE_LINEAR, 10, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT,
                               0, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT};
  std::vector<double> floats = {0.0, 1.0, 0, 0, 0, 1.0, 1.0, 0, 0, 0, 0.5, 0.5, 0, 0, 0};
  std::vector<int64_t> group_sched = {0, 2, L::CLOCK_STEPS, 2, 1, L::CLOCK_TOKENS};
  std::vector<double> hp = std::vector<double>(2 * L::HP_COLS, 0.0);
  std::vector<int64_t> clock = {3, 100};
  float found = 0.0f;

  Tables() {
    hp[L::HP_LR_SCALE] = 1.0;
    hp[L::HP_COLS + L::HP_LR_SCALE] = 2.0;
  }
  StepTables st() const {
    StepTables s;
    s.sched_ints = ints.data();
    s.sched_floats = floats.data();
    s.group_sched = group_sched.data();
    s.hparams = hp.data();
    s.groups = 2;
    s.clock = clock.data();
    s.found_inf = &found;
    return s;
  }
};

}  // namespace

TEST(supported_lists_exactly_the_kernel_combinations) {
  int count = 0;
  for (int64_t pd : kCodes)
    for (int64_t sd : kCodes)
      for (int64_t master : kModes) {
        CHECK(supported(pd, sd, master) == expected_supported(pd, sd, master));
        count += supported(pd, sd, master) ? 1 : 0;
      }
  CHECK(count == 28);
  CHECK(!supported(L::NUM_DTYPES, L::DT_F32, L::MASTER_NONE));
  CHECK(!supported(L::DT_F32, -1, L::MASTER_NONE));
  CHECK(supported(L::DT_BF16, L::DT_F32, true) == supported(L::DT_BF16, L::DT_F32, L::MASTER_FP32));
}

TEST(dispatch_calls_the_functor_of_the_runtime_combination) {
  for (int64_t pd : kCodes)
    for (int64_t sd : kCodes)
      for (int64_t master : kModes) {
        Seen seen;
        const bool ran = dispatch_dtypes<Record>(pd, sd, master, seen, 42);
        CHECK(ran == supported(pd, sd, master));
        CHECK(seen.calls == (ran ? 1 : 0));
        if (ran) {
          CHECK(seen.pd == pd);
          CHECK(seen.sd == sd);
          CHECK(seen.master == master);
          CHECK(seen.extra == 42);
        }
      }
}

TEST(param_dispatch_calls_the_functor_of_the_param_type) {
  for (int64_t pd : kCodes) {
    Seen seen;
    const bool param_type = pd == L::DT_F32 || pd == L::DT_BF16 || pd == L::DT_F16 || pd == L::DT_F64;
    CHECK(dispatch_param_dtype<RecordParam>(pd, seen) == param_type);
    CHECK(seen.calls == (param_type ? 1 : 0) && (!param_type || seen.pd == pd));
  }
  Seen none;
  CHECK(!dispatch_param_dtype<RecordParam>(int64_t(L::NUM_DTYPES), none));
  CHECK(none.calls == 0);
}

TEST(dtype_codes_are_the_layout_codes) {
  CHECK(DtypeCode<float>::value == L::DT_F32);
  CHECK(DtypeCode<bf16>::value == L::DT_BF16);
  CHECK(DtypeCode<f16>::value == L::DT_F16);
  CHECK(DtypeCode<double>::value == L::DT_F64);
  CHECK(DtypeCode<q8>::value == L::DT_I8);
}

TEST(advance_writes_lr_from_the_clock_before_moving_it) {
  Tables t;
  std::vector<float> steps = {0.0f, 4.0f, 7.0f};
  std::vector<float> lr(2, -1.0f);
  const int64_t tokens = 64;
  advance_step(t.st(), steps.data(), 3, lr.data(), t.clock.data(), &tokens);
  CHECK(lr[0] == 0.3f);  // linear 0 -> 1 over 10 steps at clock 3
  CHECK(lr[1] == 1.0f);  // 2 * 0.5
  CHECK((steps == std::vector<float>{1.0f, 5.0f, 8.0f}));
  CHECK(t.clock[L::CLOCK_STEPS] == 4 && t.clock[L::CLOCK_TOKENS] == 164);
  advance_step(t.st(), steps.data(), 3, lr.data(), t.clock.data(), nullptr);  // no tokens: that clock stays
  CHECK(lr[0] == 0.4f);
  CHECK(t.clock[L::CLOCK_STEPS] == 5 && t.clock[L::CLOCK_TOKENS] == 164);
  CHECK((steps == std::vector<float>{2.0f, 6.0f, 9.0f}));
}

TEST(advance_on_a_skipped_step_writes_only_lr) {
  Tables t;
  t.found = 1.0f;
  std::vector<float> steps = {2.0f, 2.0f};
  std::vector<float> lr(2, -1.0f);
  const int64_t tokens = 5;
  advance_step(t.st(), steps.data(), 2, lr.data(), t.clock.data(), &tokens);
  CHECK(lr[0] == 0.3f && lr[1] == 1.0f);
  CHECK((steps == std::vector<float>{2.0f, 2.0f}));
  CHECK(t.clock[L::CLOCK_STEPS] == 3 && t.clock[L::CLOCK_TOKENS] == 100);
}

TEST(advance_split_over_workers_equals_one_worker) {
  // the CUDA kernel's shape: every worker's advance_lr, a barrier, every worker's advance_counters
  for (int64_t parts : {1, 2, 3, 7}) {
    Tables one, many;
    std::vector<float> s1(5), s2(5), lr1(2), lr2(2);
    for (int i = 0; i < 5; ++i) s1[i] = s2[i] = static_cast<float>(i);
    const int64_t tokens = 9;
    advance_step(one.st(), s1.data(), 5, lr1.data(), one.clock.data(), &tokens);
    for (int64_t part = 0; part < parts; ++part) advance_lr(many.st(), many.clock.data(), lr2.data(), part, parts);
    for (int64_t part = 0; part < parts; ++part)
      advance_counters(many.st(), s2.data(), 5, many.clock.data(), &tokens, part, parts);
    CHECK(s1 == s2);
    CHECK(lr1 == lr2);
    CHECK(one.clock == many.clock);
  }
}

TEST(lamb_moments_stored_round_to_the_state_type) {
  double hp[L::HP_COLS] = {};
  hp[L::HP_BETA1] = 0.9;
  hp[L::HP_BETA2] = 0.999;
  hp[L::HP_EPS] = 1e-6;
  hp[L::HP_BIAS_CORRECTION] = hp[L::HP_GRAD_AVERAGING] = 1.0;
  const LambCoeffs<float> c = lamb_coeffs<float>(1e-2, hp, 0.0, 1.0);
  int differ = 0;
  for (int k = 1; k < 200; ++k) {
    const float g = 0.013f * k - 1.1f, m0 = 0.002f * k, v0 = 1e-4f * k;
    float mf = m0, vf = v0;
    lamb_moments(g, mf, vf, c);
    float m32 = m0, v32 = v0;
    lamb_moments_stored<float>(g, m32, v32, c);  // fp32 states: nothing changes
    CHECK(m32 == mf && v32 == vf);
    float mb = m0, vb = v0;
    lamb_moments_stored<bf16>(g, mb, vb, c);
    bf16 sm, sv;  // what storing the fresh moments writes
    store(&sm, mf);
    store(&sv, vf);
    CHECK(mb == load(sm) && vb == load(sv));
    float mh = m0, vh = v0;
    lamb_moments_stored<f16>(g, mh, vh, c);
    f16 hm, hv;
    store(&hm, mf);
    store(&hv, vf);
    CHECK(mh == load(hm) && vh == load(hv));
    differ += lamb_direction(mb, vb, c) != lamb_direction(mf, vf, c) ? 1 : 0;
  }
  CHECK(differ > 100);  // the stored-moment direction is a different number for most elements
}

TEST_MAIN()
