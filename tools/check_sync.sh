#!/usr/bin/env bash
# Fail when nbdev-export or nbdev-clean would change the tree, or README.md is not what nbs/index.ipynb gives:
# notebooks, modules and the README must not drift.
set -euo pipefail
cd "$(dirname "$0")/.."
state() { { git diff -- nbs fedhello_nb README.md; git ls-files --others --exclude-standard -- nbs fedhello_nb; } | sha1sum; }
before=$(state)
.venv/bin/nbdev-export
.venv/bin/nbdev-clean
.venv/bin/python tools/readme.py
after=$(state)
if [ "$before" != "$after" ]; then
  echo "check_sync: nbdev-export, nbdev-clean or tools/readme.py changed files; run them and commit the result:" >&2
  git status --short -- nbs fedhello_nb README.md >&2
  exit 1
fi
echo "check_sync: notebooks, modules and README agree"
