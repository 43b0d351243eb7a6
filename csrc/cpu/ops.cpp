// The scalar driver of the CPU backend (compiled with baseline flags): evaluates the schedules and the
// per-tensor coefficients in double (once per (group, step) pair), lays out the work, and calls the kernels
// of the selected instruction set. All scalar math happens here, in one translation unit, so every ISA's
// kernels receive bit-identical coefficients.
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <vector>

#include <lrsched/adamw.h>
#include <lrsched/advance.h>
#include <lrsched/dtypes.h>
#include <lrsched/lamb.h>
#include <lrsched/layout.h>
#include <lrsched/schedule.h>

#include "api.h"
#include "work.h"

namespace lrsched {
namespace cpu {

namespace {

// --- instruction-set selection ---------------------------------------------------------------------------
struct IsaEntry {
  const IsaKernels* kernels;
  bool (*usable)();
};

bool always() { return true; }
#if defined(LRS_HAVE_AVX2)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         __builtin_cpu_supports("bmi2");
}
#endif
#if defined(LRS_HAVE_AVX512)
bool has_avx512() {
#if defined(LRS_HAVE_AVX2)
  if (!has_avx2()) return false;
#endif
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512cd");
}
#endif

const IsaEntry kIsas[] = {
    {&kKernelsBaseline, &always},
#if defined(LRS_HAVE_AVX2)
    {&kKernelsAvx2, &has_avx2},
#endif
#if defined(LRS_HAVE_AVX512)
    {&kKernelsAvx512, &has_avx512},
#endif
};
constexpr int kNumIsas = sizeof(kIsas) / sizeof(kIsas[0]);

const IsaKernels* best_isa() {
  const IsaKernels* best = &kKernelsBaseline;
  for (const IsaEntry& e : kIsas)
    if (e.usable()) best = e.kernels;
  // LRSCHED_CPU_ISA=baseline|avx2|avx512 caps the choice (for testing and for reproducing another machine)
  if (const char* want = std::getenv("LRSCHED_CPU_ISA")) {
    for (const IsaEntry& e : kIsas)
      if (std::strcmp(want, e.kernels->name) == 0 && e.usable()) best = e.kernels;
  }
  return best;
}

const IsaKernels* g_kernels = best_isa();

// Software prefetch in the int8 kernels (kernel_common.h prefetch_ahead): on for Intel, off for AMD, where
// it slowed the int8 steps by 11-15% (Zen 4; bench/RESULTS.md). LRSCHED_CPU_PREFETCH=0|1 overrides.
bool default_prefetch() {
  if (const char* want = std::getenv("LRSCHED_CPU_PREFETCH")) {
    if (std::strcmp(want, "0") == 0) return false;
    if (std::strcmp(want, "1") == 0) return true;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return !__builtin_cpu_is("amd");
#else
  return true;
#endif
}

bool g_prefetch = default_prefetch();

// --- work layout -----------------------------------------------------------------------------------------
struct Offsets {
  std::vector<int64_t> elem, chunk;
  explicit Offsets(const TensorTable& tt) : elem(tt.n + 1), chunk(tt.n + 1) {
    elem[0] = chunk[0] = 0;
    for (int64_t i = 0; i < tt.n; ++i) {
      elem[i + 1] = elem[i] + tt.numel[i];
      chunk[i + 1] = chunk[i] + chunk_count(tt, i);
    }
  }
  // Chunks are the unit of parallel work, so more threads than chunks only add fork/join cost (which is
  // large on an oversubscribed machine). Results do not depend on the thread count.
  Work work(const TensorTable& tt, int threads, const StepTables* st = nullptr, double* gnorm = nullptr) const {
    const int64_t chunks = chunk[tt.n];
    int64_t t = threads < 1 ? 1 : threads;
    if (t > chunks) t = chunks < 1 ? 1 : chunks;
    const uint32_t clock32 = st && st->clock ? static_cast<uint32_t>(st->clock[layout::CLOCK_STEPS]) : 0u;
    return Work{&tt, elem.data(), chunk.data(), static_cast<int>(t), clock32, gnorm, g_prefetch};
  }
};

/// Per-chunk gradient-norm partials [chunks, GN_COLS], and their bucket total into ``out`` (float32
/// [1, GN_COLS]): chunks in order, float64, scaled by 1 / grad_scale (squares by its square).
struct GnormPartials {
  std::vector<double> chunks;
  float* out;
  GnormPartials(const Offsets& off, float* out_) : chunks(out_ ? layout::GN_COLS * off.chunk.back() : 0), out(out_) {}
  double* data() { return out ? chunks.data() : nullptr; }
  void finish(const float* grad_scale) const {
    if (!out) return;
    double sq = 0.0, ab = 0.0;
    for (size_t k = 0; k < chunks.size(); k += layout::GN_COLS) {
      sq += chunks[k + layout::GN_SUMSQ];
      ab += chunks[k + layout::GN_SUMABS];
    }
    const double inv = grad_scale ? 1.0 / static_cast<double>(*grad_scale) : 1.0;
    out[layout::GN_SUMSQ] = static_cast<float>(sq * (inv * inv));
    out[layout::GN_SUMABS] = static_cast<float>(ab * inv);
  }
};

std::vector<double> group_lrs(const StepTables& st) {
  std::vector<double> lr(st.groups);
  for (int64_t g = 0; g < st.groups; ++g) lr[g] = step_group_lr(st, g);
  return lr;
}

/// Per-tensor coefficients, computed once per run of tensors sharing (group, step).
template <class C, class Make>
std::vector<C> per_tensor(const TensorTable& tt, const StepTables& st, Make make) {
  std::vector<C> out(tt.n);
  int64_t last_g = -1;
  float last_step = -1.0f;
  for (int64_t i = 0; i < tt.n; ++i) {
    const int64_t g = st.group_index[i];
    const float step = st.steps[i];
    if (i > 0 && g == last_g && step == last_step) {
      out[i] = out[i - 1];
    } else {
      out[i] = make(g, static_cast<double>(step));
      last_g = g;
      last_step = step;
    }
  }
  return out;
}

void zero_gnorm(float* gnorm_out) {
  if (gnorm_out)
    for (int64_t c = 0; c < layout::GN_COLS; ++c) gnorm_out[c] = 0.0f;
}

double inv_scale(const float* grad_scale, const float* clip_div) {
  double s = 1.0;
  if (grad_scale) s *= static_cast<double>(*grad_scale);
  if (clip_div) s *= static_cast<double>(*clip_div);
  return 1.0 / s;
}

template <class T>
void adamw_t(const TensorTable& tt, const StepTables& st, bool amsgrad, int threads, float* gnorm_out) {
  const Offsets off(tt);
  GnormPartials gn(off, gnorm_out);
  if (step_skipped(st)) {  // nothing is updated; the gradient norms are still reported
    if (gnorm_out) g_kernels->gnorm(off.work(tt, threads, &st, gn.data()));
  } else {
    const std::vector<double> lr = group_lrs(st);
    const double inv = inv_scale(st.grad_scale, nullptr);
    const auto coeffs = per_tensor<AdamWCoeffs<T>>(tt, st, [&](int64_t g, double step) {
      return adamw_coeffs<T>(lr[g], st.hparams + g * layout::HP_COLS, step, inv);
    });
    g_kernels->adamw(off.work(tt, threads, &st, gn.data()), coeffs.data(), amsgrad);
  }
  gn.finish(st.grad_scale);
}

/// kLambHotElems (kLambHotElemsQ8 for fp32 parameters with int8 moments), or LRSCHED_CPU_LAMB_HOT for both
/// (read once; for tuning experiments only).
int64_t lamb_hot_elems(bool f32_int8) {
  static const int64_t env_hot = [] {
    const char* env = std::getenv("LRSCHED_CPU_LAMB_HOT");
    return env ? static_cast<int64_t>(std::atoll(env)) : int64_t(-1);
  }();
  if (env_hot >= 0) return env_hot;
  return f32_int8 ? kLambHotElemsQ8 : kLambHotElems;
}

template <class T>
void lamb_t(const TensorTable& tt, const StepTables& st, const float* clip_div, int64_t phase, float* sums,
            float* norms_out, void* scratch, int64_t scratch_elems, int threads, float* gnorm_out) {
  const std::vector<double> lr = group_lrs(st);
  const double inv = inv_scale(st.grad_scale, clip_div);
  const auto coeffs = per_tensor<LambCoeffs<T>>(tt, st, [&](int64_t g, double step) {
    return lamb_coeffs<T>(lr[g], st.hparams + g * layout::HP_COLS, step, inv);
  });
  std::vector<LambTensorInfo> info(tt.n);
  for (int64_t i = 0; i < tt.n; ++i) {
    const double* hp = st.hparams + st.group_index[i] * layout::HP_COLS;
    info[i] = LambTensorInfo{lr[st.group_index[i]], hp[layout::HP_TRUST_MIN], hp[layout::HP_TRUST_MAX],
                             hp[layout::HP_ADAPT] != 0.0 ? 1 : 0};
  }
  const Offsets off(tt);
  std::vector<double> partials(2 * off.chunk[tt.n] + 2);
  GnormPartials gn(off, phase == layout::LAMB_STAGE2 ? nullptr : gnorm_out);  // stage 1 reads the gradients
  // large tensors (more than a quarter of a thread's share) are updated by all threads together, the
  // others one tensor per thread, largest first (scheduling only: the bits do not depend on it)
  std::vector<int64_t> coop, rest;
  if (phase == layout::LAMB_FUSED) {
    const int64_t nthreads = threads < 1 ? 1 : threads;
    const int64_t large = off.elem[tt.n] / (4 * nthreads);
    for (int64_t i = 0; i < tt.n; ++i) (tt.numel[i] > large && nthreads > 1 ? coop : rest).push_back(i);
    std::stable_sort(rest.begin(), rest.end(), [&](int64_t x, int64_t y) { return tt.numel[x] > tt.numel[y]; });
  }
  LambArgs a{};
  a.coeffs = coeffs.data();
  a.info = info.data();
  a.skip = step_skipped(st);
  a.phase = phase;
  a.coop = coop.data();
  a.ncoop = static_cast<int64_t>(coop.size());
  a.rest = rest.data();
  a.nrest = static_cast<int64_t>(rest.size());
  a.scratch = scratch;
  a.scratch_elems = scratch ? scratch_elems : 0;
  a.hot_elems = lamb_hot_elems(quantized(tt) && tt.pdtype == layout::DT_F32);
  a.partials = partials.data();
  a.sums = sums;
  a.norms_out = norms_out;
  g_kernels->lamb(off.work(tt, threads, &st, gn.data()), a);
  gn.finish(st.grad_scale);
}

/// One LAMB phase (layout::LAMB_*) in the compute type of the parameters.
void lamb_phase(const TensorTable& tt, const StepTables& st, const float* clip_div, int64_t phase, float* sums,
                float* norms_out, void* scratch, int64_t scratch_elems, int threads, float* gnorm_out) {
  if (tt.n == 0) {
    zero_gnorm(gnorm_out);
    return;
  }
  if (tt.pdtype == layout::DT_F64)
    lamb_t<double>(tt, st, clip_div, phase, sums, norms_out, scratch, scratch_elems, threads, gnorm_out);
  else
    lamb_t<float>(tt, st, clip_div, phase, sums, norms_out, scratch, scratch_elems, threads, gnorm_out);
}

}  // namespace

void adamw(const TensorTable& tt, const StepTables& st, bool amsgrad, int threads, float* gnorm_out) {
  if (tt.n == 0) {
    zero_gnorm(gnorm_out);
    return;
  }
  if (tt.pdtype == layout::DT_F64) adamw_t<double>(tt, st, amsgrad, threads, gnorm_out);
  else adamw_t<float>(tt, st, amsgrad, threads, gnorm_out);
}

void lamb(const TensorTable& tt, const StepTables& st, const float* clip_div, float* norms_out, void* scratch,
          int64_t scratch_elems, int threads, float* gnorm_out) {
  lamb_phase(tt, st, clip_div, layout::LAMB_FUSED, nullptr, norms_out, scratch, scratch_elems, threads, gnorm_out);
}

void lamb_stage1(const TensorTable& tt, const StepTables& st, const float* clip_div, float* sums, int threads,
                 float* gnorm_out) {
  lamb_phase(tt, st, clip_div, layout::LAMB_STAGE1, sums, nullptr, nullptr, 0, threads, gnorm_out);
}

void lamb_stage2(const TensorTable& tt, const StepTables& st, const float* clip_div, const float* sums,
                 float* norms_out, int threads) {
  float* s = const_cast<float*>(sums);  // read only in stage 2
  lamb_phase(tt, st, clip_div, layout::LAMB_STAGE2, s, norms_out, nullptr, 0, threads, nullptr);
}

void grad_sumsq(const TensorTable& tt, const float* grad_scale, float* out, int threads) {
  const Offsets off(tt);
  std::vector<double> partials(off.chunk[tt.n] + 1);
  if (tt.n > 0) g_kernels->sumsq(off.work(tt, threads), partials.data());
  double total = 0.0;
  for (int64_t k = 0; k < off.chunk[tt.n]; ++k) total += partials[k];
  const double inv = inv_scale(grad_scale, nullptr);
  *out = static_cast<float>(total * (inv * inv));
}

void advance(const StepTables& st, float* steps, int64_t nsteps, float* lr_out, int64_t* clock,
             const int64_t* tokens, const GnormHistory& gnorm) {
  advance_step(st, steps, nsteps, lr_out, clock, tokens, gnorm);
}

void evaluate_schedule(const int64_t* ints, const double* floats, int64_t first, int64_t rows, const int64_t* t,
                       int64_t count, float* out) {
  for (int64_t j = 0; j < count; ++j) out[j] = static_cast<float>(schedule_value(ints, floats, first, rows, t[j]));
}

int available_isas(const char** names, int capacity) {
  int k = 0;
  for (const IsaEntry& e : kIsas)
    if (e.usable() && k < capacity) names[k++] = e.kernels->name;
  return k;
}

const char* current_isa() { return g_kernels->name; }

bool software_prefetch() { return g_prefetch; }
void set_software_prefetch(bool on) { g_prefetch = on; }

bool set_isa(const char* name) {
  for (const IsaEntry& e : kIsas) {
    if (std::strcmp(name, e.kernels->name) == 0 && e.usable()) {
      g_kernels = e.kernels;
      return true;
    }
  }
  return false;
}

}  // namespace cpu
}  // namespace lrsched
