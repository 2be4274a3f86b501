#!/usr/bin/env bash
# Installs what kbit needs on a fresh CPU machine (Python 3.11, gcc, cmake; nvcc optional) and
# builds the extension in place. Safe to run again: installed pieces are skipped, the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of torch first, pinned, so nothing pulls a multi-GB CUDA build.
python3 -m pip install -q "torch==2.13.0" "transformers==5.17.0" "peft==0.21.0" "accelerate==1.15.0" \
  safetensors tqdm pytest scikit-build-core ninja pybind11

# GoogleTest for the C++ core tests.
if [ ! -d /usr/src/googletest ] && [ ! -f /usr/include/gtest/gtest.h ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev >/dev/null
  fi
fi

# --no-build-isolation: build against the torch installed above instead of a fresh one.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  python3 -m pip install -q --no-build-isolation --no-deps -e .
