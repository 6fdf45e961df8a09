#!/usr/bin/env bash
# Installs imm and its dependencies into the current Python (use a venv if you like).
# torch is installed first and pinned: the CPU wheel 2.13.0 (other versions pull CUDA builds).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
# DeepSpeed builds its C++ ops on first use instead of at install time (no CUDA toolkit needed)
DS_BUILD_OPS=0 python -m pip install -q -e ".[test]"
