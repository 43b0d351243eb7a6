// Python bindings of the CPU backend (module lrsched_fused._cpu): plain pybind11 over raw addresses, no
// torch headers. lrsched_fused/backends/cpu.py passes tensor data pointers (tensor.data_ptr()) and keeps
// the tensors alive; every entry point releases the GIL while the kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <lrsched/layout.h>

#include "api.h"

namespace py = pybind11;
using namespace lrsched;
using namespace lrsched::cpu;

namespace {

template <class T>
T* ptr(int64_t address) {
  return reinterpret_cast<T*>(static_cast<intptr_t>(address));
}

/// ``batch``: (table, n, pdtype, sdtype, has_max, master_mode, quant_block, stochastic_rounding), with
/// ``table`` the address of the host pointer table, int64 [layout::PTR_TABLE_ROWS, n]
/// (TensorBatch.pointer_table(): the address rows PTR_PARAM .. PTR_EXP_AVG_SQ_SCALE, 0 where absent; the
/// rows PTR_NUMEL, PTR_LAST_DIM, PTR_ELEM_OFFSET, PTR_SALT). The lists behind PTR_MAX_EXP_AVG_SQ and
/// PTR_MASTER are used only when ``has_max`` / ``master_mode`` says so, the scale rows only for int8 moments.
using BatchDesc = std::array<int64_t, 8>;

TensorTable tensor_table(const BatchDesc& b) {
  namespace L = lrsched::layout;
  const int64_t n = b[1], pdtype = b[2], sdtype = b[3], master_mode = b[5], qb = b[6];
  const bool has_max = b[4] != 0;
  if (!supported(pdtype, sdtype, master_mode))
    throw py::value_error("lrsched_fused._cpu: unsupported (param dtype, state dtype, master mode) combination");
  const int64_t* rows = ptr<const int64_t>(b[0]);
  auto row = [&](int64_t r) { return rows + r * n; };
  TensorTable tt;
  tt.n = n;
  tt.pdtype = pdtype;
  tt.sdtype = sdtype;
  tt.master_mode = master_mode;
  tt.param = reinterpret_cast<void* const*>(row(L::PTR_PARAM));
  tt.grad = reinterpret_cast<const void* const*>(row(L::PTR_GRAD));
  tt.exp_avg = reinterpret_cast<void* const*>(row(L::PTR_EXP_AVG));
  tt.exp_avg_sq = reinterpret_cast<void* const*>(row(L::PTR_EXP_AVG_SQ));
  tt.max_exp_avg_sq = has_max ? reinterpret_cast<void* const*>(row(L::PTR_MAX_EXP_AVG_SQ)) : nullptr;
  tt.master = master_mode != L::MASTER_NONE ? reinterpret_cast<void* const*>(row(L::PTR_MASTER)) : nullptr;
  tt.numel = row(L::PTR_NUMEL);
  tt.last_dim = row(L::PTR_LAST_DIM);
  tt.elem_offset = row(L::PTR_ELEM_OFFSET);
  tt.salt = row(L::PTR_SALT);
  tt.quant_block = qb;
  tt.stochastic_rounding = b[7] != 0;
  if (quantized(tt)) {
    if (has_max) throw py::value_error("lrsched_fused._cpu: amsgrad has no int8-moment kernels");
    if (qb < 1 || qb > kMaxQuantBlock || (qb & (qb - 1)) != 0)
      throw py::value_error("lrsched_fused._cpu: quant_block must be a power of two in [1, 4096]");
    tt.exp_avg_scale = reinterpret_cast<float* const*>(row(L::PTR_EXP_AVG_SCALE));
    tt.exp_avg_sq_scale = reinterpret_cast<float* const*>(row(L::PTR_EXP_AVG_SQ_SCALE));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t d = tt.last_dim[i];
      if (tt.numel[i] > 0 && (d < 1 || tt.numel[i] % d != 0))
        throw py::value_error("lrsched_fused._cpu: each last_dim must divide its tensor's numel");
    }
  }
  return tt;
}

py::dict layout_constants() {
  namespace L = lrsched::layout;
  py::dict d;
#define LRS_EXPORT(name) d[#name] = L::name
  LRS_EXPORT(SCHED_START); LRS_EXPORT(SCHED_LENGTH); LRS_EXPORT(SCHED_SPAN); LRS_EXPORT(SCHED_SHAPE);
  LRS_EXPORT(SCHED_INT_COLS); LRS_EXPORT(SCHED_V0); LRS_EXPORT(SCHED_V1); LRS_EXPORT(SCHED_A);
  LRS_EXPORT(SCHED_B); LRS_EXPORT(SCHED_C); LRS_EXPORT(SCHED_FLOAT_COLS); LRS_EXPORT(INFINITE_LENGTH);
  LRS_EXPORT(SHAPE_CONSTANT); LRS_EXPORT(SHAPE_LINEAR); LRS_EXPORT(SHAPE_COSINE); LRS_EXPORT(SHAPE_ONE_SQRT);
  LRS_EXPORT(SHAPE_SQUARE); LRS_EXPORT(SHAPE_EXP); LRS_EXPORT(SHAPE_REX); LRS_EXPORT(SHAPE_POLY);
  LRS_EXPORT(SHAPE_INV_SQRT); LRS_EXPORT(SHAPE_POWER); LRS_EXPORT(NUM_SHAPES);
  LRS_EXPORT(CLOCK_STEPS); LRS_EXPORT(CLOCK_TOKENS); LRS_EXPORT(NUM_CLOCKS);
  LRS_EXPORT(DT_F32); LRS_EXPORT(DT_BF16); LRS_EXPORT(DT_F16); LRS_EXPORT(DT_F64); LRS_EXPORT(DT_I8);
  LRS_EXPORT(DT_U8); LRS_EXPORT(DT_I16); LRS_EXPORT(NUM_DTYPES);
  LRS_EXPORT(PTR_PARAM); LRS_EXPORT(PTR_GRAD); LRS_EXPORT(PTR_EXP_AVG); LRS_EXPORT(PTR_EXP_AVG_SQ);
  LRS_EXPORT(PTR_MAX_EXP_AVG_SQ); LRS_EXPORT(PTR_MASTER); LRS_EXPORT(PTR_EXP_AVG_SCALE);
  LRS_EXPORT(PTR_EXP_AVG_SQ_SCALE); LRS_EXPORT(PTR_NUMEL); LRS_EXPORT(PTR_LAST_DIM); LRS_EXPORT(PTR_ELEM_OFFSET);
  LRS_EXPORT(PTR_SALT); LRS_EXPORT(PTR_TABLE_ROWS);
  LRS_EXPORT(MASTER_NONE); LRS_EXPORT(MASTER_FP32); LRS_EXPORT(MASTER_CORR8); LRS_EXPORT(MASTER_CORR16);
  LRS_EXPORT(MASTER_SHIFT8_BF16); LRS_EXPORT(MASTER_SHIFT8_F16);
  LRS_EXPORT(Q_M_LEVELS); LRS_EXPORT(Q_V_LEVELS); LRS_EXPORT(QUANT_BLOCK);
  LRS_EXPORT(SR_K_INDEX); LRS_EXPORT(SR_K_CLOCK); LRS_EXPORT(SR_K_SALT); LRS_EXPORT(SR_K_STREAM);
  LRS_EXPORT(SR_HASH_M1); LRS_EXPORT(SR_HASH_M2); LRS_EXPORT(SR_STREAM_PARAM); LRS_EXPORT(SR_STREAM_EXP_AVG);
  LRS_EXPORT(SR_STREAM_EXP_AVG_SQ);
  LRS_EXPORT(GN_SUMSQ); LRS_EXPORT(GN_SUMABS); LRS_EXPORT(GN_COLS);
  LRS_EXPORT(LAMB_FUSED); LRS_EXPORT(LAMB_STAGE1); LRS_EXPORT(LAMB_STAGE2);
  LRS_EXPORT(GS_FIRST_ROW); LRS_EXPORT(GS_ROWS); LRS_EXPORT(GS_CLOCK); LRS_EXPORT(GROUP_SCHED_COLS);
  LRS_EXPORT(HP_LR_SCALE); LRS_EXPORT(HP_BETA1); LRS_EXPORT(HP_BETA2); LRS_EXPORT(HP_EPS);
  LRS_EXPORT(HP_WEIGHT_DECAY); LRS_EXPORT(HP_MAXIMIZE); LRS_EXPORT(HP_BIAS_CORRECTION);
  LRS_EXPORT(HP_GRAD_AVERAGING); LRS_EXPORT(HP_ADAPT); LRS_EXPORT(HP_TRUST_MIN); LRS_EXPORT(HP_TRUST_MAX);
  LRS_EXPORT(HP_DECOUPLED); LRS_EXPORT(HP_COLS);
  LRS_EXPORT(NORM_PARAM); LRS_EXPORT(NORM_UPDATE); LRS_EXPORT(NORM_RATIO); LRS_EXPORT(NORM_COLS);
#undef LRS_EXPORT
  return d;
}

std::vector<std::string> isas() {
  const char* names[8];
  const int k = available_isas(names, 8);
  return std::vector<std::string>(names, names + k);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "lrsched_fused CPU kernels (C++17, OpenMP); use through lrsched_fused.backends.cpu";

  m.def(
      "supported", [](int64_t pd, int64_t sd, int64_t master) { return supported(pd, sd, master); },
      py::arg("pdtype"), py::arg("sdtype"), py::arg("master"),
      "Whether (param dtype, state dtype, master mode) has kernels (layout DT_* codes, MASTER_* mode; False / "
      "True mean MASTER_NONE / MASTER_FP32)");
  m.def(
      "adamw",
      [](const BatchDesc& batch, const std::array<int64_t, 10>& ctx, bool amsgrad, int64_t gnorm_out, int threads) {
        const TensorTable tt = tensor_table(batch);
        const StepTables st = step_tables_from_addresses(ctx);
        py::gil_scoped_release nogil;
        adamw(tt, st, amsgrad, threads, ptr<float>(gnorm_out));
      },
      py::arg("batch"), py::arg("ctx"), py::arg("amsgrad"), py::arg("gnorm_out"), py::arg("threads"));
  m.def(
      "lamb",
      [](const BatchDesc& batch, const std::array<int64_t, 10>& ctx, int64_t clip_div, int64_t norms_out,
         int64_t scratch, int64_t scratch_elems, int64_t gnorm_out, int threads) {
        const TensorTable tt = tensor_table(batch);
        const StepTables st = step_tables_from_addresses(ctx);
        py::gil_scoped_release nogil;
        lamb(tt, st, ptr<const float>(clip_div), ptr<float>(norms_out), ptr<void>(scratch), scratch_elems, threads,
             ptr<float>(gnorm_out));
      },
      py::arg("batch"), py::arg("ctx"), py::arg("clip_div"), py::arg("norms_out"), py::arg("scratch"),
      py::arg("scratch_elems"), py::arg("gnorm_out"), py::arg("threads"));
  m.def(
      "lamb_stage1",
      [](const BatchDesc& batch, const std::array<int64_t, 10>& ctx, int64_t clip_div, int64_t sums,
         int64_t gnorm_out, int threads) {
        const TensorTable tt = tensor_table(batch);
        const StepTables st = step_tables_from_addresses(ctx);
        py::gil_scoped_release nogil;
        lamb_stage1(tt, st, ptr<const float>(clip_div), ptr<float>(sums), threads, ptr<float>(gnorm_out));
      },
      py::arg("batch"), py::arg("ctx"), py::arg("clip_div"), py::arg("sums"), py::arg("gnorm_out"),
      py::arg("threads"));
  m.def(
      "lamb_stage2",
      [](const BatchDesc& batch, const std::array<int64_t, 10>& ctx, int64_t clip_div, int64_t sums,
         int64_t norms_out, int threads) {
        const TensorTable tt = tensor_table(batch);
        const StepTables st = step_tables_from_addresses(ctx);
        py::gil_scoped_release nogil;
        lamb_stage2(tt, st, ptr<const float>(clip_div), ptr<const float>(sums), ptr<float>(norms_out), threads);
      },
      py::arg("batch"), py::arg("ctx"), py::arg("clip_div"), py::arg("sums"), py::arg("norms_out"),
      py::arg("threads"));
  m.def(
      "grad_sumsq",
      [](int64_t table, int64_t n, int64_t pd, int64_t grad_scale, int64_t out, int threads) {
        namespace L = lrsched::layout;
        const TensorTable tt =
            tensor_table({table, n, pd, pd == L::DT_F64 ? L::DT_F64 : L::DT_F32, 0, L::MASTER_NONE, 1, 0});
        py::gil_scoped_release nogil;
        grad_sumsq(tt, ptr<const float>(grad_scale), ptr<float>(out), threads);
      },
      py::arg("table"), py::arg("n"), py::arg("pdtype"), py::arg("grad_scale"), py::arg("out"), py::arg("threads"));
  m.def(
      "advance",
      [](const std::array<int64_t, 10>& ctx, int64_t steps, int64_t nsteps, int64_t lr_out, int64_t tokens,
         int64_t gnorm_partials, int64_t gnorm_rows, int64_t history, int64_t capacity) {
        const StepTables st = step_tables_from_addresses(ctx);
        GnormHistory gn;
        gn.partials = ptr<const float>(gnorm_partials);
        gn.rows = gnorm_partials ? gnorm_rows : 0;
        gn.history = ptr<float>(history);
        gn.capacity = capacity;
        advance(st, ptr<float>(steps), nsteps, ptr<float>(lr_out), ptr<int64_t>(ctx[5]), ptr<const int64_t>(tokens),
                gn);
      },
      py::arg("ctx"), py::arg("steps"), py::arg("nsteps"), py::arg("lr_out"), py::arg("tokens"),
      py::arg("gnorm_partials") = 0, py::arg("gnorm_rows") = 0, py::arg("history") = 0, py::arg("capacity") = 0,
      "lr_out, then unless found_inf: history[clock % capacity] = sum of the gnorm_partials rows, steps, clock");
  m.def(
      "evaluate_schedule",
      [](int64_t ints, int64_t floats, int64_t first, int64_t rows, int64_t t, int64_t count, int64_t out) {
        py::gil_scoped_release nogil;
        evaluate_schedule(ptr<const int64_t>(ints), ptr<const double>(floats), first, rows, ptr<const int64_t>(t),
                          count, ptr<float>(out));
      },
      py::arg("ints"), py::arg("floats"), py::arg("first"), py::arg("rows"), py::arg("t"), py::arg("count"),
      py::arg("out"));
  m.def("layout", &layout_constants, "The binary layout constants compiled into the kernels (csrc/include/lrsched/layout.h)");
  m.def("available_isas", &isas, "Kernel builds usable on this CPU, best last");
  m.def("isa", []() { return std::string(current_isa()); }, "The kernel build in use");
  m.def("set_isa", [](const std::string& name) { return set_isa(name.c_str()); }, py::arg("name"),
        "Select a kernel build by name (returns False if unavailable here)");
  m.def("prefetch", &software_prefetch, "Whether the int8 kernels prefetch ahead in software");
  m.def("set_prefetch", &set_software_prefetch, py::arg("on"),
        "Turn the int8 kernels' software prefetch on or off (no result changes; LRSCHED_CPU_PREFETCH=0|1 sets it "
        "at import)");
  m.attr("CHUNK_ELEMS") = kChunkElems;
  m.attr("LAMB_HOT_ELEMS") = kLambHotElems;
  m.attr("LAMB_HOT_ELEMS_Q8") = kLambHotElemsQ8;
  m.attr("MAX_QUANT_BLOCK") = kMaxQuantBlock;
  {  // the layout's dtype codes by torch dtype name (kernels/layout.py DTYPE_CODES)
    namespace L = lrsched::layout;
    m.attr("DTYPE_CODES") = py::dict(py::arg("float32") = L::DT_F32, py::arg("bfloat16") = L::DT_BF16,
                                     py::arg("float16") = L::DT_F16, py::arg("float64") = L::DT_F64,
                                     py::arg("int8") = L::DT_I8, py::arg("uint8") = L::DT_U8,
                                     py::arg("int16") = L::DT_I16);
  }
}
