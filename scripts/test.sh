#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the test suite. Arguments go to pytest:
#   bash scripts/test.sh                     # what .ci/run runs
#   bash scripts/test.sh -m slow             # the long checks;  bash scripts/test.sh tests/test_data.py -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
bash scripts/setup.sh || status=$?
# 3: no data set and no root to install it; the tests that need it skip with the command that installs it
if [ "$status" != 0 ] && [ "$status" != 3 ]; then
    exit "$status"
fi
exec .venv/bin/python -m pytest -q "$@"
