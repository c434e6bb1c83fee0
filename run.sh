#!/usr/bin/env bash
# facekit's entry point.
#   ./run.sh cv resnet18 [options]   cross-validate a model (see ./run.sh --help)
#   ./run.sh test [pytest args]      run the test suite
#   ./run.sh lint                    check the code with ruff (pyproject.toml)
# On first use (and whenever requirements.txt changes) it creates .venv and installs requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.requirements.sha256

want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "run.sh: setting up $VENV from requirements.txt (first use; torch is large, this takes a few minutes)" >&2
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "run.sh: Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2; exit 1; }
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > "$STAMP"
fi

if [ "${1:-}" = "test" ]; then
    shift
    exec "$VENV/bin/python" -m pytest tests "$@"
fi
if [ "${1:-}" = "lint" ]; then
    shift
    exec "$VENV/bin/ruff" check . "$@"
fi
exec "$VENV/bin/python" -m kit "$@"
