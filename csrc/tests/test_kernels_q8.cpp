// The CPU kernels with int8 moments and compact master weights through the C++ API (csrc/cpu/api.h): the
// same bits for any thread count and on every LAMB path, the gradient-norm partials against a double sum,
// and (under ASan/UBSan, csrc/run_ctest.sh) the block buffers at row ends and chunk boundaries.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <lrsched/convert.h>
#include <lrsched/layout.h>
#include <lrsched/quant.h>

#include "../cpu/api.h"
#include "check.h"

using namespace lrsched;
namespace L = lrsched::layout;

namespace {

// (rows, last dim): a row end inside a block, D below a block, a tensor below a block, 1-d over two chunks
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{4, 300}, {6, 70}, {1, 7}, {1, 70000}, {0, 5}, {300, 200}};
constexpr int64_t kBlock = 256;

/// bf16 parameters with int8 compact corrections and int8 moments (or fp32 params, no master).
struct QBucket {
  bool bf16_params;
  std::vector<std::vector<float>> p32, g32, sm, sv;
  std::vector<std::vector<bf16>> p16, g16;
  std::vector<std::vector<int8_t>> m, corr;
  std::vector<std::vector<uint8_t>> v;
  std::vector<int64_t> numel, last_dim, offset, salt, group;
  std::vector<float> steps;
  std::vector<int64_t> ints = {0, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT};
  std::vector<double> floats = {0.01, 0.01, 0, 0, 0};
  std::vector<int64_t> group_sched = {0, 1, L::CLOCK_STEPS};
  std::vector<double> hp = std::vector<double>(L::HP_COLS, 0.0);
  std::vector<int64_t> clock = {5, 0};
  std::vector<void*> pp, pm, pv, pc;
  std::vector<const void*> pg;
  std::vector<float*> psm, psv;

  explicit QBucket(bool bf16p, bool decoupled = false) : bf16_params(bf16p) {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < kShapes.size(); ++i) {
      const int64_t rows = kShapes[i].first, d = kShapes[i].second, n = rows * d;
      const int64_t nb = (d + kBlock - 1) / kBlock;
      std::vector<float> p(n), g(n);
      for (int64_t j = 0; j < n; ++j) {
        p[j] = normal(rng);
        g[j] = normal(rng) * (j % 97 == 0 ? 100.0f : 1.0f);
      }
      if (bf16p) {
        std::vector<bf16> pb(n), gb(n);
        std::vector<int8_t> c(n);
        for (int64_t j = 0; j < n; ++j) {
          compact_encode<bf16, L::MASTER_CORR8>(p[j], &pb[j], &c[j]);
          store(&gb[j], g[j]);
        }
        p16.push_back(pb);
        g16.push_back(gb);
        corr.push_back(c);
      } else {
        p32.push_back(p);
        g32.push_back(g);
      }
      m.emplace_back(n, 0);
      v.emplace_back(n, 0);
      sm.emplace_back(rows * nb, 0.0f);
      sv.emplace_back(rows * nb, 0.0f);
      numel.push_back(n);
      last_dim.push_back(d);
      offset.push_back(static_cast<int64_t>(i) * 1000);
      salt.push_back(static_cast<int64_t>(i));
      group.push_back(0);
      steps.push_back(0.0f);
    }
    hp[L::HP_LR_SCALE] = 1.0;
    hp[L::HP_BETA1] = 0.9;
    hp[L::HP_BETA2] = 0.999;
    hp[L::HP_EPS] = 1e-6;
    hp[L::HP_WEIGHT_DECAY] = 0.1;
    hp[L::HP_BIAS_CORRECTION] = hp[L::HP_GRAD_AVERAGING] = hp[L::HP_ADAPT] = 1.0;
    hp[L::HP_TRUST_MAX] = std::numeric_limits<double>::infinity();
    hp[L::HP_DECOUPLED] = decoupled ? 1.0 : 0.0;
  }

  cpu::TensorTable table() {
    pp.clear(), pg.clear(), pm.clear(), pv.clear(), pc.clear(), psm.clear(), psv.clear();
    for (size_t i = 0; i < kShapes.size(); ++i) {
      pp.push_back(bf16_params ? static_cast<void*>(p16[i].data()) : p32[i].data());
      pg.push_back(bf16_params ? static_cast<const void*>(g16[i].data()) : g32[i].data());
      pm.push_back(m[i].data());
      pv.push_back(v[i].data());
      pc.push_back(bf16_params ? corr[i].data() : nullptr);
      psm.push_back(sm[i].data());
      psv.push_back(sv[i].data());
    }
    cpu::TensorTable tt;
    tt.n = static_cast<int64_t>(kShapes.size());
    tt.pdtype = bf16_params ? L::DT_BF16 : L::DT_F32;
    tt.sdtype = L::DT_I8;
    tt.master_mode = bf16_params ? L::MASTER_CORR8 : L::MASTER_NONE;
    tt.param = pp.data();
    tt.grad = pg.data();
    tt.exp_avg = pm.data();
    tt.exp_avg_sq = pv.data();
    tt.master = bf16_params ? pc.data() : nullptr;
    tt.exp_avg_scale = psm.data();
    tt.exp_avg_sq_scale = psv.data();
    tt.numel = numel.data();
    tt.last_dim = last_dim.data();
    tt.elem_offset = offset.data();
    tt.salt = salt.data();
    tt.quant_block = kBlock;
    tt.stochastic_rounding = !bf16_params;  // no effect without bf16 stores: must change nothing
    return tt;
  }

  cpu::StepTables step_tables() const {
    cpu::StepTables st;
    st.sched_ints = ints.data();
    st.sched_floats = floats.data();
    st.group_sched = group_sched.data();
    st.hparams = hp.data();
    st.groups = 1;
    st.clock = clock.data();
    st.group_index = group.data();
    st.steps = steps.data();
    return st;
  }

  template <class V>
  static bool eq(const std::vector<std::vector<V>>& a, const std::vector<std::vector<V>>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].size() != b[i].size() ||
          (!a[i].empty() && std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(V))))
        return false;
    return true;
  }
  bool same_moments(const QBucket& o) const { return eq(m, o.m) && eq(v, o.v) && eq(sm, o.sm) && eq(sv, o.sv); }
  bool same_bits(const QBucket& o) const {
    return same_moments(o) && eq(p32, o.p32) && eq(corr, o.corr) && eq(p16, o.p16);
  }
  double gnorm_sq() const {
    double s = 0.0;
    for (size_t i = 0; i < kShapes.size(); ++i)
      for (int64_t j = 0; j < numel[i]; ++j) {
        const double x = bf16_params ? load(g16[i][j]) : g32[i][j];
        s += x * x;
      }
    return s;
  }
};

enum class Path { adamw, lamb_scratch, lamb_plain, lamb_staged };

void step(QBucket& b, Path path, int threads, float* gnorm) {
  const cpu::TensorTable tt = b.table();
  const cpu::StepTables st = b.step_tables();
  std::vector<float> norms(3 * tt.n), sums(2 * tt.n), scratch(1 << 20);
  switch (path) {
    case Path::adamw: cpu::adamw(tt, st, false, threads, gnorm); break;
    case Path::lamb_scratch:
      cpu::lamb(tt, st, nullptr, norms.data(), scratch.data(), static_cast<int64_t>(scratch.size()), threads, gnorm);
      break;
    case Path::lamb_plain: cpu::lamb(tt, st, nullptr, norms.data(), nullptr, 0, threads, gnorm); break;
    case Path::lamb_staged:
      cpu::lamb_stage1(tt, st, nullptr, sums.data(), threads, gnorm);
      cpu::lamb_stage2(tt, st, nullptr, sums.data(), norms.data(), threads);
      break;
  }
  for (float& s : b.steps) s += 1.0f;
}

}  // namespace

TEST(int8_adamw_and_lamb_give_the_same_bits_for_any_thread_count) {
  for (bool bf16p : {false, true}) {
    for (Path path : {Path::adamw, Path::lamb_scratch, Path::lamb_plain}) {
      QBucket one(bf16p), two(bf16p), three(bf16p);
      for (int s = 0; s < 2; ++s) {
        step(one, path, 1, nullptr);
        step(two, path, 2, nullptr);
        step(three, path, 3, nullptr);
      }
      CHECK(one.same_bits(two));
      CHECK(one.same_bits(three));
    }
  }
}

TEST(int8_lamb_paths_store_the_same_codes) {
  for (bool bf16p : {false, true}) {
    QBucket scratch(bf16p, true), plain(bf16p, true), staged(bf16p, true);
    step(scratch, Path::lamb_scratch, 2, nullptr);
    step(plain, Path::lamb_plain, 2, nullptr);
    step(staged, Path::lamb_staged, 2, nullptr);
    CHECK(scratch.same_bits(plain));  // u kept or decoded again: the same update
    CHECK(scratch.same_moments(staged));
  }
}

TEST(int8_gradient_norm_partials_match_a_double_sum) {
  for (Path path : {Path::adamw, Path::lamb_scratch, Path::lamb_staged}) {
    QBucket b(true);
    const double want = b.gnorm_sq();
    float gn[L::GN_COLS] = {-1.0f, -1.0f};
    step(b, path, 2, gn);
    CHECK_NEAR(gn[L::GN_SUMSQ], want, 1e-6);
    CHECK(gn[L::GN_SUMABS] > 0.0f);
  }
}

TEST(int8_codes_stay_in_range_and_scales_are_block_maxima) {
  QBucket b(false);
  step(b, Path::adamw, 2, nullptr);
  for (size_t i = 0; i < kShapes.size(); ++i) {
    const int64_t d = kShapes[i].second, nb = (d + kBlock - 1) / kBlock;
    for (int64_t j = 0; j < b.numel[i]; ++j) {
      CHECK(b.m[i][j] >= -127 && b.v[i][j] >= 1);  // fresh v is nonzero everywhere here
      const int64_t blk = (j / d) * nb + (j % d) / kBlock;
      CHECK(b.sm[i][blk] > 0.0f && b.sv[i][blk] > 0.0f);
    }
  }
}

TEST_MAIN()
