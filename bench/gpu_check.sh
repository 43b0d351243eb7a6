#!/usr/bin/env bash
# One prepared check of lrsched-fused on a CUDA GPU (H100/H200 class; about 5 minutes):
# installs the package from this tree, then runs bench/gpu_check.py (correctness vs the reference on
# CUDA, a CUDA-graph capture across WSD phase edges, pytest if time allows, timings vs
# torch.optim.AdamW(fused=True) and a device copy), printing a table last. Writes gpu_check.{md,csv,json}
# under $OUT when set. Without CUDA it exits at once with status 0.
#
#   bash bench/gpu_check.sh [gpu_check.py options, e.g. --quick --params 5e8]
#
# No network is needed: pip runs with --no-index --no-deps --no-build-isolation (torch, triton,
# setuptools, pybind11 and ninja must already be installed, as on the project's GPU image).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device visible to torch (or torch is missing); nothing to check on this machine."
    exit 0
fi
"$PY" -c "import torch; print('gpu_check: torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"

echo "gpu_check: installing (pip install --no-build-isolation --no-deps --no-index -e .) ..."
LOG="${TMPDIR:-/tmp}/gpu_check_pip.log"
start=$(date +%s)
if timeout 150 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . >"$LOG" 2>&1; then
    echo "gpu_check: installed in $(( $(date +%s) - start ))s"
else
    echo "gpu_check: install failed or timed out after $(( $(date +%s) - start ))s; gpu_check.py falls back to the source tree. Log tail:"
    tail -n 25 "$LOG"
fi
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$LOG" "$OUT/gpu_check_pip.log" 2>/dev/null; fi

# Whatever the build took, keep the whole run near 5 minutes: the Python part gets what is left.
used=$(( $(date +%s) - start ))
export GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-$(( 240 - used > 120 ? 240 - used : 120 ))}"
exec "$PY" bench/gpu_check.py "$@"
