#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: GoogleTest for csrc/core, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

jobs="$(nproc)"
cmake -S . -B build/core-tests -DKBIT_BUILD_EXTENSION=OFF -DKBIT_BUILD_TESTS=ON -DKBIT_CUDA_COMPILE_CHECK=OFF >/dev/null
cmake --build build/core-tests -j "$jobs" >/dev/null
ctest --test-dir build/core-tests --output-on-failure -j "$jobs"

python3 -m pytest -q "$@"
