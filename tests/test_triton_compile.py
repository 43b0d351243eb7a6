"""The Triton kernels compile for a real GPU (sm_90), checked on any machine.

The interpreter runs the kernels' Python, not the compiler: type errors in constexpr branches,
unsupported ops (a libdevice call, an fp64 transcendental), or a lost alignment hint show up only when
Triton lowers the code to PTX. ``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` does that
without a GPU (Triton ships ``ptxas``), so this test compiles one variant of every kernel per dtype
family in a subprocess (the test session itself runs with ``TRITON_INTERPRET=1``), and checks that the
unmasked path of the aligned kernels uses 128-bit loads and stores.

Compressed state (``docs/compressed_state.md``): the int8-moment kernels for each parameter dtype and
master mode (fp32 masters, int8 / int16 corrections), with stochastic rounding and gradient-norm partials,
at block sizes 32, 256 and 4096 (one block wider than a tile), on the FULL path (every last dimension a
multiple of the block) and the ragged one; the plain kernels with compact masters, stochastic rounding and
partials; ``advance`` with the history ring. The compiled path of ``quant.rne_int`` (``cvt.rni``) is the one
code the interpreter tests cannot run, so its compiling here matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

pytestmark = [pytest.mark.triton, pytest.mark.slow]

_DRIVER = r'''
import inspect, json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lrsched_fused.kernels import adamw, adamw_int8, advance, lamb, lamb_int8, norms, schedule

POINTERS = {"ptr_table": "*i64", "numels_ptr": "*i64", "work_ptr": "*i32", "group_index_ptr": "*i64",
            "steps_ptr": "*fp32", "sched_ints": "*i64", "sched_floats": "*fp64", "group_sched": "*i64",
            "hparams": "*fp64", "clock": "*i64", "found_inf_ptr": "*fp32", "grad_scale_ptr": "*fp32",
            "clip_ptr": "*fp32", "partials_ptr": "*fp32", "sums_ptr": "*fp32", "norms_ptr": "*fp32",
            "first_work_ptr": "*i32", "chunks_ptr": "*i32", "x_ptr": "*fp32", "out_ptr": "*fp32",
            "lr_out_ptr": "*fp32", "tokens_ptr": "*i64", "ints_ptr": "*i64", "floats_ptr": "*fp64",
            "group_sched_ptr": "*i64", "t_ptr": "*i64", "gnorm_ptr": "*fp32", "history_ptr": "*fp32"}

def compile_ptx(kernel, consts):
    consts = dict(consts)
    warps = consts.pop("num_warps", 4)
    names = list(inspect.signature(kernel.fn).parameters)
    sig = {n: "constexpr" if n in consts else POINTERS.get(n, "i32") for n in names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    return compiled.asm["ptx"]

big = dict(CHUNK=65536, BLOCK=2048, PHASE_BLOCK=16)
cases = {}
# (param, state, f64, master: layout.MASTER_* (0 none, 1 fp32, 2 int8, 3 int16 corrections), SR, GNORM)
for p, s, f64, master, sr, gn in [(0, 0, False, 0, False, False), (1, 0, False, 1, False, True),
                                  (2, 2, False, 0, False, False), (3, 3, True, 0, False, True),
                                  (1, 1, False, 0, True, True), (1, 0, False, 2, False, True),
                                  (2, 0, False, 3, False, False), (0, 1, False, 0, True, False)]:
    tag = f"p{p}s{s}m{master}{'-sr' if sr else ''}{'-gn' if gn else ''}"
    cases[f"adamw-{tag}"] = (adamw.adamw_kernel, dict(P_DT=p, S_DT=s, F64=f64, MASTER=master, AMSGRAD=True,
                             HAS_SCALE=True, HAS_FOUND=True, SR=sr, GNORM=gn, ALIGNED=True, **big))
    cases[f"lamb1-{tag}"] = (lamb.lamb_stage1_kernel, dict(P_DT=p, S_DT=s, F64=f64, MASTER=master, HAS_SCALE=True,
                             HAS_CLIP=True, HAS_FOUND=True, SR=sr, GNORM=gn, ALIGNED=True, **big))
    cases[f"lamb2-{tag}"] = (lamb.lamb_stage2_kernel, dict(P_DT=p, S_DT=s, F64=f64, MASTER=master, HAS_FOUND=True,
                             SR=sr, ALIGNED=True, **big))
cases["adamw-unaligned"] = (adamw.adamw_kernel, dict(P_DT=0, S_DT=0, F64=False, MASTER=0, AMSGRAD=False,
                            HAS_SCALE=False, HAS_FOUND=False, SR=False, GNORM=False, ALIGNED=False, **big))
# int8 moments: (param, master, SR, block, blocks per tile, warps, FULL, aligned)
INT8 = [(0, 0, False, 256, 8, 4, True, True), (1, 0, True, 256, 8, 4, True, True),
        (1, 1, False, 32, 64, 4, True, True), (1, 2, False, 4096, 1, 8, True, True),
        (2, 3, False, 256, 8, 4, False, True), (2, 0, False, 256, 8, 4, False, False)]
for p, master, sr, qb, tr, warps, full, al in INT8:
    tag = f"p{p}m{master}{'-sr' if sr else ''}-qb{qb}{'' if full else '-ragged'}{'' if al else '-unaligned'}"
    tile = dict(P_DT=p, MASTER=master, HAS_FOUND=True, SR=sr, ALIGNED=al, FULL=full, QB=qb,
                RUN=max(1, 65536 // qb), TR=tr, PHASE_BLOCK=16, num_warps=warps)
    cases[f"adamw8-{tag}"] = (adamw_int8.adamw_int8_kernel, dict(HAS_SCALE=True, GNORM=True, **tile))
    cases[f"lamb8s1-{tag}"] = (lamb_int8.lamb_int8_stage1_kernel, dict(HAS_SCALE=True, HAS_CLIP=True, GNORM=True,
                               **tile))
    cases[f"lamb8s2-{tag}"] = (lamb_int8.lamb_int8_stage2_kernel, tile)
cases["sumsq-bf16"] = (norms.grad_sumsq_kernel, dict(P_DT=1, F64=False, HAS_SCALE=True, ALIGNED=True, CHUNK=65536,
                       BLOCK=2048))
cases["sum"] = (norms.sum_kernel, dict(BLOCK=1024))
cases["reduce"] = (lamb.lamb_reduce_kernel, dict(TB=32, CB=64))
cases["advance"] = (advance.advance_kernel, dict(HAS_FOUND=True, HAS_TOKENS=True, HAS_HISTORY=True, PHASE_BLOCK=16,
                   BLOCK=1024))
cases["evaluate"] = (schedule.evaluate_schedule_kernel, dict(PHASE_BLOCK=16, BLOCK=256))
out = {}
for name, (kernel, consts) in cases.items():
    try:
        ptx = compile_ptx(kernel, consts)
        out[name] = {"ok": True, "vector_ops": len(re.findall(r"(?:ld|st)\.global(?:\.nc)?\.v[24]\.b(?:32|64)", ptx)),
                     "rni": "cvt.rni" in ptx}
    except Exception as exc:
        out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _DRIVER], env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if not lines:
        if "ptxas" in proc.stderr and "not found" in proc.stderr:
            pytest.skip("triton's ptxas is not available here")
        raise AssertionError(f"compile driver failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def test_every_kernel_variant_compiles_for_sm90(compiled):
    failed = {name: r["error"] for name, r in compiled.items() if not r["ok"]}
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_aligned_kernels_use_vector_memory_ops(compiled):
    for name, r in compiled.items():
        if name.startswith(("adamw-p", "lamb1-", "lamb2-", "sumsq", "adamw8-", "lamb8")) and "unaligned" not in name:
            assert r["vector_ops"] > 0, f"{name}: no 128-bit loads/stores in the unmasked path"
    assert compiled["adamw-unaligned"]["vector_ops"] == 0
    assert compiled["adamw8-p2m0-qb256-ragged-unaligned"]["vector_ops"] == 0


def test_int8_codecs_round_with_one_instruction(compiled):
    for name, r in compiled.items():
        if name.startswith(("adamw8-", "lamb8s1-")):
            assert r["rni"], f"{name}: the codec's rne must compile to cvt.rni"
