// Python bindings of the CUDA backend (module lrsched_fused._cuda): pybind11 over raw device addresses
// and a stream handle (torch.cuda.current_stream().cuda_stream); no CUDA or torch headers here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "api.h"

namespace py = pybind11;
using namespace lrsched::cuda;
using lrsched::step_tables_from_addresses;

namespace {

template <class T>
T* ptr(int64_t address) {
  return reinterpret_cast<T*>(static_cast<intptr_t>(address));
}

/// ``t``: (table, n, pdtype, sdtype, has_max, master_mode, blocks, nblocks, first_block, quant_block,
/// stochastic_rounding); ``table`` the device copy of TensorBatch.pointer_table() (int64
/// [layout::PTR_TABLE_ROWS, n]), dtypes as layout::DT_* codes, the master mode a layout::MASTER_* code.
using BatchDesc = std::array<int64_t, 11>;

TensorTable tensor_table(const BatchDesc& t) {
  TensorTable tt;
  tt.table = ptr<const int64_t>(t[0]);
  tt.n = t[1];
  tt.pdtype = t[2];
  tt.sdtype = t[3];
  tt.has_max = t[4] != 0;
  tt.master_mode = t[5];
  tt.blocks = ptr<const int32_t>(t[6]);
  tt.nblocks = t[7];
  tt.first_block = ptr<const int64_t>(t[8]);
  tt.quant_block = t[9];
  tt.stochastic_rounding = t[10] != 0;
  if (!supported(tt.pdtype, tt.sdtype, tt.master_mode))
    throw py::value_error("lrsched_fused._cuda: unsupported (param dtype, state dtype, master mode) combination");
  if (tt.sdtype == lrsched::layout::DT_I8) {
    const int64_t qb = tt.quant_block;
    if (tt.has_max) throw py::value_error("lrsched_fused._cuda: amsgrad has no int8-moment kernels");
    if (qb < 1 || qb > lrsched::kMaxQuantBlock || (qb & (qb - 1)) != 0)
      throw py::value_error("lrsched_fused._cuda: quant_block must be a power of two in [1, 4096]");
  }
  return tt;
}

Gnorm gnorm(int64_t partials, int64_t out) {
  Gnorm g;
  g.partials = ptr<double>(partials);
  g.out = ptr<float>(out);
  return g;
}

void check() {
  const std::string err = last_error();
  if (!err.empty()) throw std::runtime_error("lrsched_fused._cuda: " + err);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lrsched_fused CUDA kernels; use through lrsched_fused.backends.cuda";
  m.def("supported", [](int64_t pd, int64_t sd, int64_t master) { return supported(pd, sd, master); },
        py::arg("pdtype"), py::arg("sdtype"), py::arg("master"),
        "Whether (param dtype, state dtype, master mode) has kernels (layout DT_* codes, MASTER_* mode)");
  m.def("adamw", [](const BatchDesc& t, const std::array<int64_t, 10>& c, bool ams, int64_t gn_partials,
                    int64_t gnorm_out, int64_t stream) {
    adamw(tensor_table(t), step_tables_from_addresses(c), ams, gnorm(gn_partials, gnorm_out), ptr<void>(stream));
    check();
  });
  m.def("lamb", [](const BatchDesc& t, const std::array<int64_t, 10>& c, int64_t clip, int64_t norms,
                   int64_t partials, int64_t ratio, int64_t sums, int64_t phase, int64_t gn_partials,
                   int64_t gnorm_out, int64_t stream) {
    lamb(tensor_table(t), step_tables_from_addresses(c), ptr<const float>(clip), ptr<float>(norms),
         ptr<double>(partials), ptr<double>(ratio), ptr<float>(sums), phase, gnorm(gn_partials, gnorm_out),
         ptr<void>(stream));
    check();
  });
  m.def("grad_sumsq", [](const BatchDesc& t, int64_t grad_scale, int64_t partials, int64_t out,
                         int64_t stream) {
    grad_sumsq(tensor_table(t), ptr<const float>(grad_scale), ptr<double>(partials), ptr<float>(out),
               ptr<void>(stream));
    check();
  });
  m.def("advance", [](const std::array<int64_t, 10>& c, int64_t steps, int64_t nsteps, int64_t lr_out, int64_t tokens,
                      int64_t gnorm_partials, int64_t gnorm_rows, int64_t history, int64_t capacity, int64_t stream) {
    lrsched::GnormHistory gn;
    gn.partials = ptr<const float>(gnorm_partials);
    gn.rows = gnorm_partials ? gnorm_rows : 0;
    gn.history = ptr<float>(history);
    gn.capacity = capacity;
    advance(step_tables_from_addresses(c), ptr<float>(steps), nsteps, ptr<float>(lr_out), ptr<int64_t>(c[5]),
            ptr<const int64_t>(tokens), gn, ptr<void>(stream));
    check();
  });
  m.def("evaluate_schedule", [](int64_t ints, int64_t floats, int64_t first, int64_t rows, int64_t t, int64_t count,
                                int64_t out, int64_t stream) {
    evaluate_schedule(ptr<const int64_t>(ints), ptr<const double>(floats), first, rows, ptr<const int64_t>(t), count,
                      ptr<float>(out), ptr<void>(stream));
    check();
  });
  m.attr("CHUNK_ELEMS") = kChunkElems;
  m.attr("MAX_QUANT_BLOCK") = lrsched::kMaxQuantBlock;
}
