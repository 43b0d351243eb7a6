// The CPU kernels through the C++ API (csrc/cpu/api.h): correctness against a plain double loop, and bit
// identity across thread counts, instruction sets and LAMB's scratch buffer.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <lrsched/convert.h>
#include <lrsched/layout.h>

#include "../cpu/api.h"
#include "check.h"

using namespace lrsched;
namespace L = lrsched::layout;

namespace {

const std::vector<int64_t> kSizes = {3 * cpu::kChunkElems + 123, 17, 0, cpu::kChunkElems, 5000, 1};

/// One bucket of fp32 (or bf16-param) tensors with fp32 (or bf16) moments and its tables; copies are
/// independent. With bf16 moments, ``m`` and ``v`` hold the initial moments' values (as stored).
struct Bucket {
  int64_t pdtype, sdtype;
  std::vector<std::vector<float>> p32, g32, m, v, master;
  std::vector<std::vector<bf16>> p16, g16, m16, v16;
  std::vector<int64_t> numel, group;
  std::vector<float> steps;
  // tables: one constant schedule (0.01), one linear warmup (tokens clock), two groups
  std::vector<int64_t> ints = {0, 10, 10, L::SHAPE_CONSTANT, 10, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT,
                               0, 100, 100, L::SHAPE_LINEAR, 100, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT};
  std::vector<double> floats = {0.01, 0.01, 0, 0, 0, 0.01, 0.01, 0, 0, 0, 0.0, 0.02, 0, 0, 0, 0.02, 0.02, 0, 0, 0};
  std::vector<int64_t> group_sched = {0, 2, L::CLOCK_STEPS, 2, 2, L::CLOCK_TOKENS};
  std::vector<double> hp = std::vector<double>(2 * L::HP_COLS, 0.0);
  std::vector<int64_t> clock = {3, 40};
  std::vector<void*> ptr_p, ptr_m, ptr_v;
  std::vector<const void*> ptr_g;
  std::vector<void*> ptr_master;

  explicit Bucket(int64_t pd, uint32_t seed = 1, int64_t sd = L::DT_F32) : pdtype(pd), sdtype(sd) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < kSizes.size(); ++i) {
      const int64_t n = kSizes[i];
      std::vector<float> p(n), g(n), mm(n), vv(n);
      for (int64_t j = 0; j < n; ++j) {
        p[j] = normal(rng);
        g[j] = normal(rng);
        mm[j] = 0.1f * normal(rng);
        vv[j] = 0.01f * std::fabs(normal(rng));
      }
      if (pd == L::DT_BF16) {  // bf16 params and grads, fp32 master weights
        std::vector<bf16> pb(n), gb(n);
        for (int64_t j = 0; j < n; ++j) {
          store(&pb[j], p[j]);
          store(&gb[j], g[j]);
          p[j] = load(pb[j]);
        }
        p16.push_back(pb);
        g16.push_back(gb);
        master.push_back(p);
      } else {
        p32.push_back(p);
        g32.push_back(g);
      }
      if (sd == L::DT_BF16) {
        std::vector<bf16> mb(n), vb(n);
        for (int64_t j = 0; j < n; ++j) {
          store(&mb[j], mm[j]);
          store(&vb[j], vv[j]);
          mm[j] = load(mb[j]);
          vv[j] = load(vb[j]);
        }
        m16.push_back(mb);
        v16.push_back(vb);
      }
      m.push_back(mm);
      v.push_back(vv);
      numel.push_back(n);
      group.push_back(static_cast<int64_t>(i % 2));
      steps.push_back(static_cast<float>(i % 3));
    }
    for (int gi = 0; gi < 2; ++gi) {
      double* h = hp.data() + gi * L::HP_COLS;
      h[L::HP_LR_SCALE] = gi ? 0.5 : 1.0;
      h[L::HP_BETA1] = 0.9;
      h[L::HP_BETA2] = 0.999;
      h[L::HP_EPS] = 1e-6;
      h[L::HP_WEIGHT_DECAY] = gi ? 0.0 : 0.1;
      h[L::HP_BIAS_CORRECTION] = h[L::HP_GRAD_AVERAGING] = h[L::HP_ADAPT] = 1.0;
      h[L::HP_TRUST_MAX] = std::numeric_limits<double>::infinity();
      h[L::HP_DECOUPLED] = gi ? 1.0 : 0.0;
    }
  }

  cpu::TensorTable table() {
    ptr_p.clear();
    ptr_g.clear();
    ptr_m.clear();
    ptr_v.clear();
    ptr_master.clear();
    for (size_t i = 0; i < kSizes.size(); ++i) {
      if (pdtype == L::DT_BF16) {
        ptr_p.push_back(p16[i].data());
        ptr_g.push_back(g16[i].data());
        ptr_master.push_back(master[i].data());
      } else {
        ptr_p.push_back(p32[i].data());
        ptr_g.push_back(g32[i].data());
      }
      if (sdtype == L::DT_BF16) {
        ptr_m.push_back(m16[i].data());
        ptr_v.push_back(v16[i].data());
      } else {
        ptr_m.push_back(m[i].data());
        ptr_v.push_back(v[i].data());
      }
    }
    cpu::TensorTable tt;
    tt.n = static_cast<int64_t>(kSizes.size());
    tt.pdtype = pdtype;
    tt.sdtype = sdtype;
    tt.param = ptr_p.data();
    tt.grad = ptr_g.data();
    tt.exp_avg = ptr_m.data();
    tt.exp_avg_sq = ptr_v.data();
    tt.master = pdtype == L::DT_BF16 ? ptr_master.data() : nullptr;
    tt.master_mode = pdtype == L::DT_BF16 ? L::MASTER_FP32 : L::MASTER_NONE;
    tt.numel = numel.data();
    return tt;
  }

  cpu::StepTables step_tables() const {
    cpu::StepTables st;
    st.sched_ints = ints.data();
    st.sched_floats = floats.data();
    st.group_sched = group_sched.data();
    st.hparams = hp.data();
    st.groups = 2;
    st.clock = clock.data();
    st.group_index = group.data();
    st.steps = steps.data();
    return st;
  }

  bool same_bits(const Bucket& o) const {
    auto eq = [](const auto& a, const auto& b) {
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (a[i].size() != b[i].size() || (a[i].size() && std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(a[i][0]))))
          return false;
      return true;
    };
    return eq(p32, o.p32) && eq(p16, o.p16) && eq(master, o.master) && eq(m, o.m) && eq(v, o.v) &&
           eq(m16, o.m16) && eq(v16, o.v16);
  }
};

void run(Bucket& b, bool lamb, int threads, std::vector<float>* norms = nullptr, int64_t scratch_elems = 1 << 20) {
  const cpu::TensorTable tt = b.table();
  const cpu::StepTables st = b.step_tables();
  if (!lamb) {
    cpu::adamw(tt, st, false, threads);
    return;
  }
  std::vector<float> scratch(scratch_elems);
  std::vector<float> local(3 * tt.n, -1.0f);
  cpu::lamb(tt, st, nullptr, norms ? norms->data() : local.data(), scratch_elems ? scratch.data() : nullptr,
            scratch_elems, threads);
}

std::vector<std::string> isas() {
  const char* names[8];
  const int k = cpu::available_isas(names, 8);
  return std::vector<std::string>(names, names + k);
}

}  // namespace

TEST(adamw_matches_a_double_loop) {
  Bucket b(L::DT_F32), ref(L::DT_F32);
  run(b, false, 2);
  for (size_t i = 0; i < kSizes.size(); ++i) {
    const double* h = ref.hp.data() + ref.group[i] * L::HP_COLS;
    const double lr = i % 2 ? 0.5 * 0.02 * 40.0 / 100.0 : 0.01;  // group 1 reads the token clock (40)
    const double t = ref.steps[i] + 1.0, b1 = h[L::HP_BETA1], b2 = h[L::HP_BETA2];
    for (int64_t j = 0; j < kSizes[i]; ++j) {
      double p = ref.p32[i][j], g = ref.g32[i][j], m = ref.m[i][j], v = ref.v[i][j];
      p *= 1.0 - lr * h[L::HP_WEIGHT_DECAY];
      m = m + (g - m) * (1 - b1);
      v = v * b2 + (1 - b2) * g * g;
      p -= lr / (1 - std::pow(b1, t)) * m / (std::sqrt(v) / std::sqrt(1 - std::pow(b2, t)) + h[L::HP_EPS]);
      // float32 rounding of terms of size ~|p| + lr: compare on that scale (p may cancel to ~0)
      const double err = std::fabs(b.p32[i][j] - p), bound = 1e-6 * (std::fabs(ref.p32[i][j]) + lr);
      if (!(err <= bound)) {
        CHECK_NEAR(b.p32[i][j], p, bound / std::fabs(p));
        return;
      }
    }
  }
}

TEST(lamb_norms_match_a_double_loop) {
  Bucket b(L::DT_F32), ref(L::DT_F32);
  std::vector<float> norms(3 * kSizes.size());
  run(b, true, 2, &norms);
  for (size_t i = 0; i < kSizes.size(); ++i) {
    const double* h = ref.hp.data() + ref.group[i] * L::HP_COLS;
    const double lr = i % 2 ? 0.5 * 0.02 * 40.0 / 100.0 : 0.01;
    const double t = ref.steps[i] + 1.0, b1 = h[L::HP_BETA1], b2 = h[L::HP_BETA2], wd = h[L::HP_WEIGHT_DECAY];
    const bool dec = h[L::HP_DECOUPLED] != 0.0;
    double sw = 0, su = 0;
    for (int64_t j = 0; j < kSizes[i]; ++j) {
      const double p = ref.p32[i][j], g = ref.g32[i][j];
      const double m = b1 * ref.m[i][j] + (1 - b1) * g, v = b2 * ref.v[i][j] + (1 - b2) * g * g;
      const double r = (m / (1 - std::pow(b1, t))) / (std::sqrt(v) / std::sqrt(1 - std::pow(b2, t)) + h[L::HP_EPS]);
      const double w = dec ? p * (1 - lr * wd) : p, u = dec ? r : r + wd * p;
      sw += w * w;
      su += u * u;
    }
    CHECK_NEAR(norms[3 * i + L::NORM_PARAM], std::sqrt(sw), 1e-6);
    CHECK_NEAR(norms[3 * i + L::NORM_UPDATE], std::sqrt(su), 1e-6);
    const double ratio = (sw > 0 && su > 0) ? std::sqrt(sw) / std::sqrt(su) : 1.0;
    CHECK_NEAR(norms[3 * i + L::NORM_RATIO], ratio, 1e-6);
  }
}

TEST(thread_count_does_not_change_bits) {
  for (int64_t pd : {L::DT_F32, L::DT_BF16}) {
    for (bool lamb : {false, true}) {
      Bucket one(pd), two(pd), three(pd);
      std::vector<float> n1(3 * kSizes.size()), n2(n1.size()), n3(n1.size());
      run(one, lamb, 1, &n1);
      run(two, lamb, 2, &n2);
      run(three, lamb, 3, &n3);
      CHECK(one.same_bits(two));
      CHECK(one.same_bits(three));
      CHECK(std::memcmp(n1.data(), n2.data(), n1.size() * 4) == 0);
      CHECK(std::memcmp(n1.data(), n3.data(), n1.size() * 4) == 0);
    }
  }
}

TEST(instruction_set_does_not_change_bits) {
  const std::vector<std::string> names = isas();
  CHECK(!names.empty() && names[0] == "baseline");
  const std::string before = cpu::current_isa();
  for (int64_t pd : {L::DT_F32, L::DT_BF16}) {
    for (bool lamb : {false, true}) {
      CHECK(cpu::set_isa("baseline"));
      Bucket base(pd);
      run(base, lamb, 2);
      for (const std::string& isa : names) {
        CHECK(cpu::set_isa(isa.c_str()));
        Bucket other(pd);
        run(other, lamb, 2);
        CHECK(base.same_bits(other));
      }
    }
  }
  CHECK(cpu::set_isa(before.c_str()));
  CHECK(!cpu::set_isa("no-such-isa"));
}

TEST(lamb_scratch_size_does_not_change_bits) {
  Bucket a(L::DT_F32), b(L::DT_F32), c(L::DT_F32);
  run(a, true, 2, nullptr, 1 << 20);
  run(b, true, 2, nullptr, 0);
  run(c, true, 2, nullptr, 300);
  CHECK(a.same_bits(b));
  CHECK(a.same_bits(c));
}

TEST(sharded_stages_match_the_fused_update) {
  // stage 1 -> (identity all-reduce) -> stage 2 gives the fused result up to the float32 rounding of the
  // sums, and the same bits for any thread count
  Bucket fused(L::DT_F32), one(L::DT_F32), two(L::DT_F32);
  std::vector<float> nf(3 * kSizes.size()), n1(nf.size()), n2(nf.size());
  run(fused, true, 2, &nf);
  for (auto* pair : {&one, &two}) {
    const int threads = pair == &one ? 1 : 2;
    std::vector<float>& norms = pair == &one ? n1 : n2;
    const cpu::TensorTable tt = pair->table();
    const cpu::StepTables st = pair->step_tables();
    std::vector<float> sums(2 * tt.n, -1.0f);
    cpu::lamb_stage1(tt, st, nullptr, sums.data(), threads);
    cpu::lamb_stage2(tt, st, nullptr, sums.data(), norms.data(), threads);
  }
  CHECK(one.same_bits(two));
  CHECK(std::memcmp(n1.data(), n2.data(), n1.size() * 4) == 0);
  for (size_t k = 0; k < nf.size(); ++k) CHECK_NEAR(n1[k], nf[k], 1e-6);
  for (size_t i = 0; i < kSizes.size(); ++i)
    for (int64_t j = 0; j < kSizes[i]; ++j) CHECK_NEAR(one.p32[i][j], fused.p32[i][j], 1e-6);
}

TEST(found_inf_leaves_everything_unchanged) {
  for (bool lamb : {false, true}) {
    Bucket a(L::DT_F32), b(L::DT_F32);
    const float found = 1.0f;
    cpu::StepTables st = a.step_tables();
    st.found_inf = &found;
    const cpu::TensorTable tt = a.table();
    std::vector<float> norms(3 * tt.n, -1.0f);
    if (lamb) cpu::lamb(tt, st, nullptr, norms.data(), nullptr, 0, 2);
    else cpu::adamw(tt, st, false, 2);
    CHECK(a.same_bits(b));
    if (lamb) CHECK(norms[3 * 0 + L::NORM_PARAM] > 0.0f);  // telemetry is still written
  }
}

TEST(lamb_with_bf16_moments_gives_the_same_bits_on_every_path) {
  // fp32 params, bf16 moments: stage 2 reading u from the scratch, or recomputing it (no or a tiny scratch),
  // on 1-3 threads, and the sharded stages on 1-2 threads all form u from the moments as stored
  Bucket base(L::DT_F32, 1, L::DT_BF16);
  std::vector<float> nb(3 * kSizes.size());
  run(base, true, 2, &nb);
  for (int threads : {1, 2, 3}) {
    for (int64_t scratch : {int64_t(1) << 20, int64_t(0), int64_t(300)}) {
      Bucket other(L::DT_F32, 1, L::DT_BF16);
      std::vector<float> no(nb.size());
      run(other, true, threads, &no, scratch);
      CHECK(base.same_bits(other));
      CHECK(std::memcmp(nb.data(), no.data(), nb.size() * 4) == 0);
    }
  }
  Bucket one(L::DT_F32, 1, L::DT_BF16), two(L::DT_F32, 1, L::DT_BF16);
  for (auto* b : {&one, &two}) {
    const cpu::TensorTable tt = b->table();
    const cpu::StepTables st = b->step_tables();
    std::vector<float> sums(2 * tt.n), norms(3 * tt.n);
    cpu::lamb_stage1(tt, st, nullptr, sums.data(), b == &one ? 1 : 2);
    cpu::lamb_stage2(tt, st, nullptr, sums.data(), norms.data(), b == &one ? 1 : 2);
    for (size_t k = 0; k < nb.size(); ++k) CHECK_NEAR(norms[k], nb[k], 1e-6);
  }
  CHECK(one.same_bits(two));
  for (size_t i = 0; i < kSizes.size(); ++i) {  // the moments do not depend on the ratio: the same bits
    if (kSizes[i] == 0) continue;
    CHECK(std::memcmp(one.m16[i].data(), base.m16[i].data(), 2 * kSizes[i]) == 0);
    CHECK(std::memcmp(one.v16[i].data(), base.v16[i].data(), 2 * kSizes[i]) == 0);
  }
  for (size_t i = 0; i < kSizes.size(); ++i)
    for (int64_t j = 0; j < kSizes[i]; ++j) CHECK_NEAR(one.p32[i][j], base.p32[i][j], 1e-6);
}

TEST(lamb_with_bf16_moments_forms_the_update_from_the_stored_moments) {
  // A double loop with the new moments rounded to bf16 before r (the stored meaning) against the kernels:
  // every element within float32 rounding except the rare one where float and double round the moment to
  // different bf16 neighbours; the fresh meaning (r from the unrounded moments) misses most elements.
  Bucket b(L::DT_F32, 1, L::DT_BF16), ref(L::DT_F32, 1, L::DT_BF16);
  run(b, true, 2);
  int64_t total = 0, off_stored = 0, off_fresh = 0;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    const double* h = ref.hp.data() + ref.group[i] * L::HP_COLS;
    const double lr = i % 2 ? 0.5 * 0.02 * 40.0 / 100.0 : 0.01;
    const double t = ref.steps[i] + 1.0, b1 = h[L::HP_BETA1], b2 = h[L::HP_BETA2], wd = h[L::HP_WEIGHT_DECAY];
    const bool dec = h[L::HP_DECOUPLED] != 0.0;
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    auto bf = [](double x) { return static_cast<double>(round_trip<bf16>(static_cast<float>(x))); };
    for (int stored = 0; stored < 2; ++stored) {
      const int64_t n = kSizes[i];
      std::vector<double> w(n), u(n);
      double sw = 0, su = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double p = ref.p32[i][j], g = ref.g32[i][j];
        double m = b1 * ref.m[i][j] + (1 - b1) * g, v = b2 * ref.v[i][j] + (1 - b2) * g * g;
        if (stored) {
          m = bf(m);
          v = bf(v);
        }
        const double r = (m / bc1) / (std::sqrt(v) / std::sqrt(bc2) + h[L::HP_EPS]);
        w[j] = dec ? p * (1 - lr * wd) : p;
        u[j] = dec ? r : r + wd * p;
        sw += w[j] * w[j];
        su += u[j] * u[j];
      }
      const double ratio = (sw > 0 && su > 0) ? std::sqrt(sw) / std::sqrt(su) : 1.0;
      for (int64_t j = 0; j < n; ++j) {
        const double want = w[j] - lr * ratio * u[j];
        const bool off = !(std::fabs(b.p32[i][j] - want) <= 1e-6 * (std::fabs(ref.p32[i][j]) + lr));
        (stored ? off_stored : off_fresh) += off ? 1 : 0;
      }
      if (stored) total += n;
    }
  }
  CHECK(off_stored * 10000 <= total);  // at most 0.01%
  CHECK(off_fresh * 4 >= total);       // at least 25%
  if (!(off_stored * 10000 <= total) || !(off_fresh * 4 >= total))
    std::fprintf(stderr, "elements off: stored %lld, fresh %lld of %lld\n", (long long)off_stored,
                 (long long)off_fresh, (long long)total);
}

TEST(grad_sumsq_matches_a_double_sum) {
  Bucket b(L::DT_F32);
  const cpu::TensorTable tt = b.table();
  double want = 0;
  for (const auto& g : b.g32)
    for (float x : g) want += static_cast<double>(x) * x;
  const float scale = 4.0f;
  float got = 0.0f;
  cpu::grad_sumsq(tt, &scale, &got, 2);
  CHECK_NEAR(got, want / 16.0, 1e-6);
}

TEST_MAIN()
