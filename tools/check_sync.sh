#!/usr/bin/env bash
# Fail when nbdev-export or nbdev-clean would change the tree: notebooks and modules must not drift.
set -euo pipefail
cd "$(dirname "$0")/.."
state() { { git diff -- nbs fedhello_nb; git ls-files --others --exclude-standard -- nbs fedhello_nb; } | sha1sum; }
before=$(state)
.venv/bin/nbdev-export
.venv/bin/nbdev-clean
after=$(state)
if [ "$before" != "$after" ]; then
  echo "check_sync: nbdev-export or nbdev-clean changed files; run them and commit the result:" >&2
  git status --short -- nbs fedhello_nb >&2
  exit 1
fi
echo "check_sync: notebooks and modules agree"
