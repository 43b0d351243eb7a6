#!/usr/bin/env bash
# Compile-checks the CUDA backend where nvcc exists (no GPU needed): every .cu with nvcc -c for sm_90, and
# the pybind11 bindings with the host compiler. Exits 0 with a message when nvcc is absent.
#   csrc/cuda/compile_check.sh [extra nvcc flags...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$nvcc" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then nvcc="$CUDA_HOME/bin/nvcc"; fi
if [[ -z "$nvcc" ]]; then
  echo "compile_check: nvcc not found; skipping the CUDA compile check"
  exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for cu in "$here"/*.cu; do
  echo "nvcc -c -arch=sm_90 $(basename "$cu")"
  "$nvcc" -std=c++17 -O3 --fmad=false -Xcompiler -fPIC -Xcompiler -Wall -Werror all-warnings \
    -I"$root/csrc/include" -arch=sm_90 "$@" -c "$cu" -o "$out/$(basename "$cu" .cu).o"
done
py="${PYTHON:-python3}"
if pyinc="$("$py" -c 'import sysconfig, pybind11; print(sysconfig.get_paths()["include"], pybind11.get_include())' 2>/dev/null)"; then
  read -r inc1 inc2 <<<"$pyinc"
  echo "c++ -fsyntax-only bindings.cpp"
  "${CXX:-c++}" -std=c++17 -fsyntax-only -Wall -Wextra -I"$root/csrc/include" -I"$inc1" -I"$inc2" "$here/bindings.cpp"
else
  echo "compile_check: pybind11 not importable by $py; skipping the bindings check"
fi
echo "compile_check: CUDA sources compile for sm_90"
