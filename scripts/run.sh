#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs kbit's main job: quantize a small Llama built from a bundled
# config to INT8 / NF4 / NF4+DQ and print sizes and errors, plus the Llama-3.1-8B table from its config.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m kbit "$@"
