#!/usr/bin/env bash
# Mutation testing of the core modules, on demand (not part of CI); see tools/mutation.py for the groups.
#   tools/mutation.sh run heads masking --jobs 1
#   tools/mutation.sh report --docs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./run python -c "import mutmut" 2>/dev/null || ./run python -m pip install -q "mutmut==3.8.1"
exec ./run python tools/mutation.py "$@"
