#!/usr/bin/env bash
# Sets up imm and runs the whole test suite (846 tests, about 25 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest tests
