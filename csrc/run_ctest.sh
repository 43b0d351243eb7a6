#!/usr/bin/env bash
# Builds and runs the C++ tests (CMakeLists.txt): a normal build and an ASan+UBSan build.
#   csrc/run_ctest.sh            both
#   csrc/run_ctest.sh normal     only the optimized build
#   csrc/run_ctest.sh sanitize   only the sanitized build
# Build trees go to build/ctest and build/ctest-sanitize (incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
gen=()
if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); fi
run() {  # run <dir> <extra cmake args...>
  local dir="$1"; shift
  cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" -j "${JOBS:-2}"
  OMP_NUM_THREADS=2 ctest --test-dir "$dir" --output-on-failure
}
if [[ "$which" == all || "$which" == normal ]]; then
  run build/ctest
fi
if [[ "$which" == all || "$which" == sanitize ]]; then
  # detect_leaks=0: libgomp keeps its thread pool alive until exit by design
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}" UBSAN_OPTIONS="print_stacktrace=1" \
    run build/ctest-sanitize -DLRSCHED_SANITIZE=ON
fi
