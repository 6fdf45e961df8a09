#!/usr/bin/env bash
# Sets up imm and runs the whole test suite (848 tests, about 19 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest tests
