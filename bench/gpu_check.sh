#!/usr/bin/env bash
# One prepared check of lrsched-fused on a CUDA GPU (H100/H200 class; about 5 minutes): installs the
# package from this tree, building the CUDA extension (LRSCHED_BUILD_CUDA=1), then runs
# `python -m bench.gpu_check`: the Triton and CUDA backends against the reference on the GPU, a
# CUDA-graph capture across WSD phase edges, pytest if time allows, and timings vs
# torch.optim.AdamW(fused=True) and a device copy, printing a short table last. Rows are appended to
# bench/out/gpu_check.csv; with $OUT set, gpu_check.{md,json,csv} and the install log go there too.
# Without CUDA it exits at once with status 0.
#
#   bash bench/gpu_check.sh [options of python -m bench.gpu_check, e.g. --quick --params 5e8]
#
# No network is needed: pip runs with --no-index --no-deps --no-build-isolation (torch, triton,
# setuptools, pybind11 and ninja must already be installed, as on the project's GPU image). A failed
# CUDA build does not stop the run: the check then reports the cuda backend as unavailable.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device visible to torch (or torch is missing); nothing to check on this machine."
    exit 0
fi
"$PY" -c "import torch; print('gpu_check: torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"

echo "gpu_check: installing (LRSCHED_BUILD_CUDA=${LRSCHED_BUILD_CUDA:-1}" \
     "pip install --no-build-isolation --no-deps --no-index -e .) ..."
LOG="${TMPDIR:-/tmp}/gpu_check_pip.log"
start=$(date +%s)
if LRSCHED_BUILD_CUDA="${LRSCHED_BUILD_CUDA:-1}" timeout 240 \
        "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e . >"$LOG" 2>&1; then
    echo "gpu_check: installed in $(( $(date +%s) - start ))s"
else
    echo "gpu_check: install failed or timed out after $(( $(date +%s) - start ))s;" \
         "the check falls back to the source tree. Log tail:"
    tail -n 25 "$LOG"
fi
grep -i "could not build the optional extension" "$LOG" | head -n 3
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$LOG" "$OUT/gpu_check_pip.log" 2>/dev/null; fi

# Whatever the build took, keep the whole run near 5 minutes: the Python part gets what is left.
used=$(( $(date +%s) - start ))
export GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-$(( 240 - used > 120 ? 240 - used : 120 ))}"
exec "$PY" -m bench.gpu_check "$@"
