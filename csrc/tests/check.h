// A minimal test harness (no dependencies): CHECK-style assertions that count failures, and main().
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace lrs_test {

struct Registry {
  std::vector<std::pair<std::string, std::function<void()>>> tests;
  int failures = 0;
  static Registry& get() {
    static Registry r;
    return r;
  }
};

struct Register {
  Register(const char* name, std::function<void()> fn) { Registry::get().tests.emplace_back(name, std::move(fn)); }
};

inline void fail(const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, msg.c_str());
  ++Registry::get().failures;
}

inline int run_all() {
  for (auto& t : Registry::get().tests) {
    const int before = Registry::get().failures;
    t.second();
    std::printf("[%s] %s\n", Registry::get().failures == before ? "ok" : "FAIL", t.first.c_str());
  }
  std::printf("%zu tests, %d failed checks\n", Registry::get().tests.size(), Registry::get().failures);
  return Registry::get().failures == 0 ? 0 : 1;
}

}  // namespace lrs_test

#define TEST(name)                                                 \
  static void name();                                              \
  static lrs_test::Register name##_registered(#name, &name);      \
  static void name()

#define CHECK(cond)                                                \
  do {                                                             \
    if (!(cond)) lrs_test::fail(__FILE__, __LINE__, #cond);        \
  } while (0)

#define CHECK_NEAR(a, b, rel)                                                                          \
  do {                                                                                                 \
    const double lrs_a = (a), lrs_b = (b);                                                             \
    if (!(std::fabs(lrs_a - lrs_b) <= (rel) * std::fmax(std::fabs(lrs_b), 1e-300))) {                  \
      char lrs_buf[256];                                                                               \
      std::snprintf(lrs_buf, sizeof lrs_buf, "%s = %.17g, expected %s = %.17g (rel %g)", #a, lrs_a, #b, \
                    lrs_b, (double)(rel));                                                             \
      lrs_test::fail(__FILE__, __LINE__, lrs_buf);                                                     \
    }                                                                                                  \
  } while (0)

#define TEST_MAIN() \
  int main() { return lrs_test::run_all(); }
