// The schedule evaluator (schedule.h): phase edges, every shape against hand-computed values, zero-length
// and truncated phases, clocks beyond 2**40, group learning rates.
#include <lrsched/schedule.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"

using namespace lrsched;
namespace L = lrsched::layout;

namespace {

struct Table {
  std::vector<int64_t> ints;
  std::vector<double> floats;
  int64_t next = 0;
  // appends a phase after the previous one
  void phase(int64_t shape, int64_t length, double v0, double v1, double a = 0, double b = 0, double c = 0,
             int64_t span = -1) {
    ints.insert(ints.end(), {next, length, span < 0 ? length : span, shape});
    floats.insert(floats.end(), {v0, v1, a, b, c});
    next += length;
  }
  void finish(double final_value) {
    ints.insert(ints.end(), {next, L::INFINITE_LENGTH, 1, L::SHAPE_CONSTANT});
    floats.insert(floats.end(), {final_value, final_value, 0, 0, 0});
  }
  int64_t rows() const { return static_cast<int64_t>(ints.size()) / L::SCHED_INT_COLS; }
  double at(int64_t t) const { return schedule_value(ints.data(), floats.data(), 0, rows(), t); }
};

}  // namespace

TEST(warmup_then_cosine_hits_every_edge_exactly) {
  Table s;
  s.phase(L::SHAPE_LINEAR, 10, 0.0, 1.0);
  s.phase(L::SHAPE_COSINE, 90, 1.0, 0.1);
  s.finish(0.1);
  CHECK(s.at(0) == 0.0);
  CHECK(s.at(5) == 0.5);
  CHECK(s.at(10) == 1.0);
  CHECK_NEAR(s.at(55), 0.55, 1e-15);
  CHECK(s.at(99) > 0.1);
  CHECK(s.at(100) == 0.1);
  CHECK(s.at(int64_t(1) << 50) == 0.1);
}

TEST(each_shape_matches_its_formula) {
  const double p = 0.5;
  struct Case {
    int64_t shape;
    double a, want;
  } cases[] = {
      {L::SHAPE_LINEAR, 0, 2.0 + (4.0 - 2.0) * p},
      {L::SHAPE_COSINE, 0, 2.0 + 2.0 * 0.5 * (1 - std::cos(M_PI * p))},
      {L::SHAPE_ONE_SQRT, 0, 2.0 + 2.0 * std::sqrt(p)},
      {L::SHAPE_SQUARE, 0, 2.0 + 2.0 * p * p},
      {L::SHAPE_REX, 0.5, 2.0 + 2.0 * (1.0 / 3.0)},
      {L::SHAPE_POLY, 2.0, 2.0 + 2.0 * 0.75},
      {L::SHAPE_INV_SQRT, 3.0, 2.0 + 2.0 * ((1 / std::sqrt(2.5) - 1) / (0.5 - 1))},
      {L::SHAPE_CONSTANT, 0, 2.0},
  };
  for (const Case& c : cases) {
    Table s;
    s.phase(c.shape, 100, 2.0, 4.0, c.a);
    s.finish(4.0);
    CHECK_NEAR(s.at(50), c.want, 1e-15);
    CHECK(s.at(0) == 2.0);
  }
  Table e;
  e.phase(L::SHAPE_EXP, 100, 1.0, 0.01);
  e.finish(0.01);
  CHECK_NEAR(e.at(50), 0.1, 1e-14);
  CHECK(e.at(0) == 1.0);
}

TEST(power_law_uses_the_absolute_clock_and_its_cap) {
  Table s;
  s.phase(L::SHAPE_POWER, 1000, 0.0, 0.0, /*a=*/2.0, /*b=*/-0.5, /*c=*/0.5);
  s.finish(0.01);
  CHECK(s.at(0) == 0.5);  // 0^-0.5 = inf, capped
  CHECK(s.at(4) == 0.5);  // 2 * 4^-0.5 = 1 > cap
  CHECK_NEAR(s.at(64), 0.25, 1e-15);
  Table z;
  z.phase(L::SHAPE_POWER, 10, 0.0, 0.0, 0.3, 0.0, 1.0);
  z.finish(0.0);
  CHECK(z.at(0) == 0.3);  // t^0 = 1 at t = 0
}

TEST(zero_length_phases_are_never_selected) {
  Table s;
  s.phase(L::SHAPE_LINEAR, 0, 9.0, 9.0);
  s.phase(L::SHAPE_CONSTANT, 5, 2.0, 2.0);
  s.phase(L::SHAPE_LINEAR, 0, 7.0, 7.0);
  s.finish(3.0);
  CHECK(s.at(0) == 2.0);
  CHECK(s.at(4) == 2.0);
  CHECK(s.at(5) == 3.0);
}

TEST(truncated_phase_keeps_its_span) {
  Table s;
  s.phase(L::SHAPE_LINEAR, 5, 0.0, 1.0, 0, 0, 0, /*span=*/10);
  s.finish(7.0);
  CHECK(s.at(4) == 0.4);
  CHECK(s.at(5) == 7.0);
}

TEST(offsets_beyond_2_pow_40_are_exact) {
  const int64_t start = (int64_t(1) << 40) + 3;
  Table s;
  s.phase(L::SHAPE_CONSTANT, start, 1.0, 1.0);
  s.phase(L::SHAPE_LINEAR, 1000, 0.0, 1.0);
  s.finish(1.0);
  CHECK(s.at(start - 1) == 1.0);
  CHECK(s.at(start) == 0.0);
  CHECK(s.at(start + 1) == 1.0 / 1000.0);
  CHECK(s.at(start + 999) == 999.0 / 1000.0);
  CHECK(s.at(start + 1000) == 1.0);
}

TEST(group_lr_reads_its_rows_clock_and_scale) {
  Table s;  // schedule 0: constant 0.5; schedule 1: linear 0 -> 1 over 100 (tokens)
  s.phase(L::SHAPE_CONSTANT, 10, 0.5, 0.5);
  s.finish(0.5);
  const int64_t first1 = s.rows();
  s.next = 0;
  s.phase(L::SHAPE_LINEAR, 100, 0.0, 1.0);
  s.finish(1.0);
  const int64_t gs[] = {0, first1, L::CLOCK_STEPS, first1, s.rows() - first1, L::CLOCK_TOKENS};
  double hp[2 * L::HP_COLS] = {};
  hp[L::HP_LR_SCALE] = 2.0;
  hp[L::HP_COLS + L::HP_LR_SCALE] = 3.0;
  const int64_t clock[2] = {7, 25};
  CHECK(group_lr(s.ints.data(), s.floats.data(), gs, hp, clock, 0) == 1.0);
  CHECK(group_lr(s.ints.data(), s.floats.data(), gs, hp, clock, 1) == 0.75);
}

TEST_MAIN()
