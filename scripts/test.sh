#!/usr/bin/env bash
# The README's second command: install what only the tests need, then run the suite.
#
#   scripts/test.sh [pytest args]        (default: -q, the whole suite)
#
# Adds the test extra (pytest, moto, hypothesis, optuna, a botocore pin) to the venv
# (.venv, or $VENV) with the versions CI tests (constraints.txt), and Debian's Chromium
# for the report's headless-browser test when it is missing (apt: root, or sudo without a
# password; otherwise it stops and says so). The suite runs under `timeout -s INT`, so
# that Ray shuts down cleanly on a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "scripts/test.sh: no virtual environment at $VENV; run the README's first command" \
       "(python3 -m venv .venv && .venv/bin/pip install -e . -c constraints.txt)" >&2
  exit 1
fi
"$VENV/bin/pip" install -q -e '.[test]' -c constraints.txt
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n);
  else
    echo "scripts/test.sh: the report's browser test needs Chromium; install it as root" \
         "(apt-get install chromium) and rerun" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get install -y -q chromium >/dev/null \
    || { "${SUDO[@]}" apt-get update -q >/dev/null \
         && "${SUDO[@]}" apt-get install -y -q chromium >/dev/null; }
fi
set +e
timeout -s INT 4800 "$VENV/bin/python" -m pytest "${@:--q}"
status=$?
exit $status
