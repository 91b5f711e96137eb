#!/usr/bin/env bash
# The whole test suite: install, notebook/module sync check, notebook tests, pytest.
# Usage: bash tools/test.sh            (what CI runs)
#        SLOW=1 bash tools/test.sh     (also the #| slow notebook cells)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg PYDEVD_DISABLE_FILE_VALIDATION=1
export FEDHELLO_ARTIFACTS="${FEDHELLO_ARTIFACTS:-$PWD/runs/test-artifacts}"   # the browser check keeps its screenshot here
bash tools/setup.sh
# the browser check (tests/test_browser.py) needs Debian's Chromium and npm (to fetch the widget JavaScript)
need=""; command -v chromium >/dev/null || need="chromium"; command -v npm >/dev/null || need="$need npm"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
  else echo "test: $need missing and apt-get unavailable: the browser check will be skipped" >&2; fi
fi
bash tools/check_sync.sh
flags=""; [ "${SLOW:-0}" = 1 ] && flags="--flags slow"
echo "== nbdev-test"
# two notebooks at a time on two cores: one thread each, or they oversubscribe the CPU
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/nbdev-test --n-workers 2 --timing $flags
echo "== pytest"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
[ $rc -eq 5 ] && { echo "pytest collected no tests" >&2; exit 1; }
exit $rc
