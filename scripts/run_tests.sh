#!/usr/bin/env bash
# The whole test suite, set-up included: builds (or reuses) the environment,
# lints with ruff, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=$(scripts/setup_env.sh current | tail -n 1)
"$python" -m ruff check .
"$python" -m pytest -q "$@"
