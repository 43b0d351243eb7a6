"""The benchmark runner (``python -m bench.run``): end to end in its quick mode, and its parts.

The end-to-end test runs the real command in a subprocess on tiny sizes and checks the CSV it appends:
one row per (case, implementation) requested, finite positive timings with p20 <= median <= p80, the
bytes counted per implementation, ratios consistent with the medians, and the floor at 100% of itself.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `bench` is a top-level directory of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench import impls as I  # noqa: E402
from bench.report import COLUMNS  # noqa: E402
from bench.targets import check_targets  # noqa: E402
from bench.timing import interleaved, strides, summarize  # noqa: E402
from bench.workloads import Case, bytes_per_param, layout_name, parse_count, tensor_sizes  # noqa: E402

from helpers import have_backend  # noqa: E402

HAVE_PYOPT = importlib.util.find_spec("pytorch_optimizer") is not None


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------
@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_quick_run_writes_a_row_per_case_and_implementation(tmp_path):
    out = tmp_path / "results.csv"
    adamw = ["ours", "ours-kernel", "reference", "torch-fused", "torch-foreach", "torch-forloop", "floor"]
    lamb = ["ours", "ours-kernel", "reference", "floor"] + (["pyopt"] if HAVE_PYOPT else [])
    names = list(dict.fromkeys(adamw + lamb))
    sizes, tensors, dtypes = [20_000], [7, 250], ["fp32", "bf16"]
    proc = _run(["--quick", "--no-progress", "--csv", str(out), "--impls", ",".join(names), "--sizes", "20K",
                 "--tensors", "7,250", "--dtypes", "fp32,bf16", "--threads", "1", "--repeats", "3", "--warmup", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    expected = {(op, name, n, t, d) for n in sizes for t in tensors for d in dtypes
                for op, names_ in (("adamw", adamw), ("lamb", lamb)) for name in names_}
    got = [(r["op"], r["implementation"], int(r["params"]), int(r["tensors"]), r["dtype"]) for r in rows]
    assert sorted(got) == sorted(expected)  # every requested implementation, once per case
    for r in rows:
        med, p20, p80 = float(r["median_ms"]), float(r["p20_ms"]), float(r["p80_ms"])
        assert all(math.isfinite(x) and x > 0 for x in (med, p20, p80)), r
        assert p20 <= med <= p80, r
        assert int(r["repeats"]) == 3 and r["threads"] == "1" and r["device"] == "cpu"
        assert float(r["GB_s"]) > 0 and float(r["floor_frac"]) > 0
        assert r["layout"] == layout_name(int(r["tensors"]))
    by = {(r["op"], r["implementation"], r["tensors"], r["dtype"]): r for r in rows}
    for t in ("7", "250"):
        fp32_ours = by[("adamw", "ours", t, "fp32")]
        assert int(fp32_ours["bytes_per_param"]) == 28
        assert int(by[("lamb", "ours", t, "fp32")]["bytes_per_param"]) == 40
        assert int(by[("adamw", "ours", t, "bf16")]["bytes_per_param"]) == 22   # fp32 moments
        assert int(by[("adamw", "torch-fused", t, "bf16")]["bytes_per_param"]) == 14  # torch: bf16 moments
        assert by[("adamw", "torch-fused", t, "bf16")]["state_dtype"] == "bf16"
        ratio = float(fp32_ours["median_ms"]) / float(by[("adamw", "torch-fused", t, "fp32")]["median_ms"])
        assert float(fp32_ours["ratio_vs_torch_fused"]) == pytest.approx(ratio, rel=1e-3, abs=1e-4)
        lamb_ours = by[("lamb", "ours", t, "fp32")]
        ratio = float(lamb_ours["median_ms"]) / float(fp32_ours["median_ms"])
        assert float(lamb_ours["ratio_vs_ours_adamw"]) == pytest.approx(ratio, rel=1e-3, abs=1e-4)
        assert float(by[("adamw", "floor", t, "fp32")]["floor_frac"]) == pytest.approx(1.0)
    assert "issue-5 targets" not in proc.stdout or "not measured" in proc.stdout


@pytest.mark.parametrize("argv,message", [
    (["--impls", "ours,no-such-impl"], "no-such-impl"),
    (["--sizes", "10", "--tensors", "50"], "--tensors 50"),
    (["--repeats", "0"], "--repeats"),
    (["--dtypes", "fp8"], "fp8"),
], ids=["unknown-impl", "more-tensors-than-params", "zero-repeats", "unknown-dtype"])
def test_bad_arguments_are_rejected(argv, message, capsys):
    from bench.run import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--quick", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params,tensors", [(1_000, 1), (1_000_000, 50), (10_000, 2000), (2000, 2000)],
                         ids=lambda x: str(x))
def test_tensor_sizes_sum_to_params(params, tensors):
    sizes = tensor_sizes(params, tensors)
    assert len(sizes) == tensors and sum(sizes) == params and min(sizes) >= 1
    assert sizes == tensor_sizes(params, tensors)  # deterministic


def test_mixed_layout_spans_decades_and_small_layout_is_even():
    mixed = tensor_sizes(10_000_000, 50)
    assert max(mixed) / min(mixed) > 50
    small = tensor_sizes(10_000_000, 2000)
    assert max(small) / min(small) < 3.5


@pytest.mark.parametrize("text,value", [("50M", 50_000_000), ("1e6", 1_000_000), ("200k", 200_000), ("7", 7),
                                        ("1.5M", 1_500_000)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["", "0", "-3", "1.5", "ten"])
def test_parse_count_rejects(text):
    with pytest.raises(ValueError):
        parse_count(text)


def test_bytes_per_param_counts():
    f32, bf16 = torch.float32, torch.bfloat16
    assert bytes_per_param("adamw", f32, f32) == 28
    assert bytes_per_param("adamw", bf16, f32) == 22
    assert bytes_per_param("adamw", bf16, bf16) == 14
    assert bytes_per_param("adamw", bf16, f32, master=True) == 30  # + fp32 master read and written
    assert bytes_per_param("lamb", f32, f32) == 40
    assert bytes_per_param("lamb", bf16, f32) == 32
    with pytest.raises(ValueError):
        bytes_per_param("lamb", bf16, f32, master=True)
    with pytest.raises(ValueError):
        bytes_per_param("sgd", f32, f32)


def test_hparams_row_sets_each_column():
    from bench.hparams import hparams_row, hparams_table
    from lrsched_fused.kernels import layout as L

    row = hparams_row(lr_scale=0.5, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True,
                      bias_correction=False, grad_averaging=False, adapt=False, trust_clamp=(0.01, 10.0),
                      decoupled=True)
    want = {L.HP_LR_SCALE: 0.5, L.HP_BETA1: 0.8, L.HP_BETA2: 0.99, L.HP_EPS: 1e-6, L.HP_WEIGHT_DECAY: 0.1,
            L.HP_MAXIMIZE: 1.0, L.HP_BIAS_CORRECTION: 0.0, L.HP_GRAD_AVERAGING: 0.0, L.HP_ADAPT: 0.0,
            L.HP_TRUST_MIN: 0.01, L.HP_TRUST_MAX: 10.0, L.HP_DECOUPLED: 1.0}
    assert len(row) == L.HP_COLS and set(want) == set(range(L.HP_COLS))
    assert row == [want[c] for c in range(L.HP_COLS)]
    default = hparams_row()
    assert default[L.HP_TRUST_MAX] == math.inf and default[L.HP_BIAS_CORRECTION] == 1.0 == default[L.HP_ADAPT]
    table = hparams_table([default, row])
    assert table.dtype == torch.float64 and table.shape == (2, L.HP_COLS)
    # the benchmark's C++ call uses ours' settings
    adamw = I._hparams_row("adamw")
    assert adamw.shape == (1, L.HP_COLS) and adamw[0, L.HP_EPS] == I.EPS["adamw"]
    assert adamw[0, L.HP_WEIGHT_DECAY] == I.WEIGHT_DECAY and tuple(adamw[0, [L.HP_BETA1, L.HP_BETA2]]) == I.BETAS


def _run_small_case(module: str, cwd) -> str:
    """``python -m <module>`` on a 20K-parameter, 7-tensor, 1-thread case with 2 rounds, in ``cwd``; its stdout
    (the run must succeed)."""
    proc = subprocess.run([sys.executable, "-m", module, "--params", "20K", "--tensors", "7", "--threads", "1",
                           "--rounds", "2", "--warmup", "1"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=_env_with_repo())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_quick_times_one_case_without_csv(tmp_path):
    stdout = _run_small_case("bench.quick", tmp_path)
    for text in ("ours-kernel", "torch-fused", "floor", "C++ call LAMB / AdamW", "of the in-place-add floor"):
        assert text in stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_isa_times_every_instruction_set(tmp_path):
    from lrsched_fused.backends.cpu import extension

    stdout = _run_small_case("bench.isa", tmp_path)
    rows = [line.split() for line in stdout.splitlines() if line.startswith(("adamw ", "lamb "))]
    isas = list(extension.available_isas())
    # one row per (op, kind, isa), each ISA's ratio to the fastest of its row >= 1 and one of them exactly 1
    assert {(r[0], r[1], r[2]) for r in rows} == {(op, kind, isa) for op in ("adamw", "lamb")
                                                  for kind in ("ours", "ours-int8") for isa in isas}
    for op in ("adamw", "lamb"):
        for kind in ("ours", "ours-int8"):
            ratios = [float(r[-1].rstrip("x")) for r in rows if r[0] == op and r[1] == kind]
            assert min(ratios) == 1.0 and all(x >= 1.0 for x in ratios)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_isa_rejects_bad_arguments(capsys):
    from bench.isa import parse_args

    assert parse_args([]).kinds == ["ours", "ours-int8"]
    with pytest.raises(SystemExit):
        parse_args(["--ops", "sgd"])
    assert "sgd" in capsys.readouterr().err


def test_quick_rejects_bad_arguments(capsys):
    from bench.quick import parse_args

    assert parse_args([]).impls == ["ours", "ours-kernel", "torch-fused", "floor"]
    with pytest.raises(SystemExit):
        parse_args(["--impls", "nope"])
    with pytest.raises(SystemExit):
        parse_args(["--params", "10", "--tensors", "50"])
    assert "--tensors 50" in capsys.readouterr().err


def _env_with_repo() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_floor_moves_the_same_bytes_as_our_step():
    case = Case(1_000_000, 50, "fp32", 1)
    assert I._floor_elems("adamw", case) * 12 >= 28 * case.params > (I._floor_elems("adamw", case) - 1) * 12
    assert I._floor_elems("lamb", case) * 12 >= 40 * case.params


def test_summarize_percentiles():
    st = summarize([float(x) for x in range(1, 11)])
    assert (st.median_ms, st.p20_ms, st.p80_ms, st.repeats) == (5.5, 2.8, 8.2, 10)


def test_interleaved_calls_each_once_per_round_in_varying_order_and_skips_warmup():
    calls: list[str] = []
    steps = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    times = interleaved(steps, repeats=6, warmup=2, seed=1)
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    assert {k: len(v) for k, v in times.items()} == {k: 6 for k in "abcd"}
    assert all(t >= 0 for v in times.values() for t in v)
    calls.clear()
    interleaved(steps, repeats=6, warmup=2, seed=1)
    assert [calls[i:i + 4] for i in range(0, len(calls), 4)] == rounds  # seeded: repeatable


def test_budget_thins_only_slow_functions_and_keeps_min_samples():
    first = {"fast": 0.01, "slow": 2.0, "medium": 0.5}
    k = strides(first, repeats=15, budget_s=30.0, min_samples=5)   # share: 10 s each
    assert k["fast"] == 1 and k["medium"] == 1                     # 15 x 0.5 s fits in 10 s
    assert k["slow"] > 1 and len(range(0, 15, k["slow"])) >= 5     # 15 x 2 s does not: >= 5 calls
    assert strides(first, repeats=15, budget_s=None, min_samples=5) == {"fast": 1, "slow": 1, "medium": 1}
    calls: list[str] = []
    slow = {"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), time.sleep(0.02))}
    times = interleaved(slow, repeats=10, warmup=2, budget_s=0.1, min_samples=3)
    assert len(times["a"]) == 10 and 3 <= len(times["b"]) < 10
    assert calls.count("b") == 1 + len(times["b"])  # thinned: no second warm-up call


def _row(op, impl, params, tensors, threads, median, **extra):
    row = {"op": op, "implementation": impl, "params": params, "tensors": tensors, "dtype": "fp32",
           "threads": threads, "median_ms": median, "ratio_vs_torch_fused": "", "ratio_vs_ours_adamw": "",
           "floor_frac": "", "GB_s": 0.0, "bytes_per_param": 28}
    row.update(extra)
    return row


def test_targets_met_and_not_met():
    rows = [_row("adamw", "ours", 50_000_000, 50, 2, 30.0, ratio_vs_torch_fused=1.02, floor_frac=0.95),
            _row("adamw", "ours", 10_000_000, 2000, 2, 9.0, ratio_vs_torch_fused=1.3),
            _row("lamb", "ours", 50_000_000, 50, 2, 50.0, ratio_vs_ours_adamw=1.67),
            _row("lamb", "pyopt", 50_000_000, 50, 2, 400.0),
            _row("adamw", "ours-int8", 20_000_000, 50, 2, 10.0, ratio_vs_torch_fused=0.75, floor_frac=0.66,
                 bytes_per_param=16.0625),
            _row("lamb", "ours-int8", 20_000_000, 50, 2, 14.5, ratio_vs_ours_int8_adamw=1.45)]
    checks = check_targets(rows)
    status = {c.target: c.met for c in checks}
    figure = {c.target: c.figure for c in checks}
    assert status["AdamW fp32 50M/50, 2 threads: ours <= 1.05x torch fused"] is True
    assert status["AdamW fp32 50M/50, 2 threads: ours >= 90% of the in-place-add floor"] is True
    assert status["AdamW fp32 10M/2000, 2 threads: ours <= 1.05x torch fused"] is False
    assert status["LAMB fp32 50M/50, 2 threads: ours <= 1.6x our AdamW"] is False
    assert status["LAMB fp32 50M/50, 2 threads: >= 5x faster than pytorch-optimizer Lamb"] is True
    int8 = "AdamW int8 moments 20M/50, 2 threads: <= 0.7x torch fused fp32"
    assert status[int8] is False and figure[int8] == "0.750x (10.00 ms, 66% of the floor at 16.06 B/param)"
    assert status["LAMB int8 moments 20M/50, 2 threads: <= 1.5x our AdamW int8"] is True


def test_targets_not_measured_without_rows():
    assert all(c.met is None for c in check_targets([]))


@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_overhead_diagnostic_reads_the_current_plan_and_tables(capsys):
    """bench.overhead reaches into the optimizer's plan and tables on purpose; this keeps it from rotting."""
    from bench import overhead

    overhead.main(["--params", "20K", "--tensors", "10", "--threads", "1", "--repeats", "2", "--timeit-number", "1"])
    out = capsys.readouterr().out
    for piece in ("host cost of step()", "reusable_grads (plan validation), total", "read_groups + TablesCache.commit",
                  "CpuBackend: refresh_grads"):
        assert piece in out, piece


def test_memory_table_measures_the_configurations(capsys):
    """bench.memory sums the real tensors: torch AdamW's 12 B/param, mixed precision's 14, and the ~5 B/param
    of bf16 params + int8 moments + compact masters (1-d parameters keep fp32 moments and int8 blocks add scales, hence the margin)."""
    from bench import memory

    rows = {r["configuration"]: r for r in memory.measure(64, 512, 2, "reference")}
    # "other": each tensor's float32 step and the shared clock, 0.0005 B/param at this size
    assert rows["fp32 params, fp32 moments (= torch AdamW)"]["without_grads"] == pytest.approx(12.0, abs=1e-3)
    assert rows["bf16 params + fp32 masters, fp32 moments (mixed precision)"]["without_grads"] == pytest.approx(
        14.0, abs=1e-3)
    compact = rows["bf16 params + compact8 masters, int8 moments"]
    assert compact["master"] == 1.0 and 5.0 < compact["without_grads"] < 5.2 and compact["grads"] == 2.0
    memory.main(["--rows", "8", "--cols", "256", "--layers", "1", "--backend", "reference"])
    assert "compact8 masters, int8 moments" in capsys.readouterr().out


@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_storage_speed_times_every_configuration_against_torch_fused(tmp_path, capsys):
    """bench.storage_speed: one row per (op, configuration of bench.memory) plus torch fused AdamW per
    parameter dtype, each peer's ratio exactly 1, the state bytes from state_bytes(), rows in the CSV."""
    from bench import memory, storage_speed

    csv_path = tmp_path / "speed.csv"
    storage_speed.main(["--params", "40K", "--tensors", "2", "--threads", "1", "--repeats", "2", "--warmup", "1",
                        "--csv", str(csv_path)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("adamw ", "lamb "))]
    assert len(lines) == 2 * (len(memory.CONFIGS) + 2)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(lines)
    peers = [r for r in rows if r["configuration"].startswith("torch fused AdamW")]
    assert len(peers) == 4 and all(float(r["ratio_vs_torch_fused"]) == 1.0 for r in peers)
    compact = next(r for r in rows if r["op"] == "adamw" and r["configuration"] ==
                   "bf16 params + compact8 masters, int8 moments")
    assert 5.0 < float(compact["state_bytes_per_param"]) < 5.2
    assert float(compact["adamw_moved_bytes_per_param"]) == pytest.approx(
        2 * float(compact["state_bytes_per_param"]) + 2.0)


@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_layouts_times_every_case_against_ours_contiguous(capsys):
    from bench import layouts

    layouts.main(["--rows", "8", "--cols", "16", "--tensors", "2", "--repeats", "2", "--threads", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith("x |")]
    assert len(lines) == 5 and lines[0].startswith("| ours, contiguous |") and lines[0].endswith("| 1.00x |")
    with pytest.raises(SystemExit):
        layouts.main(["--repeats", "0"])


def test_int8_sizes_times_adamw_and_lamb_per_tensor_size(tmp_path, capsys):
    """bench.int8_sizes: one row per size, the total split into whole rows of 1024, the ratio of the medians."""
    from bench import int8_sizes

    csv_path = tmp_path / "sizes.csv"
    int8_sizes.main(["--sizes", "2K,8K", "--params", "16K", "--threads", "1", "--repeats", "2", "--warmup", "1",
                     "--csv", str(csv_path)])
    out = capsys.readouterr().out
    assert "LAMB / AdamW" in out
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["tensor_elems"]), int(r["tensors"])) for r in rows] == [(2048, 8), (8192, 2)]
    for r in rows:
        assert float(r["lamb_over_adamw"]) == pytest.approx(float(r["lamb_ms"]) / float(r["adamw_ms"]))
