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
    if [ ! -x "$VENV/bin/python" ]; then
        # torch's x86_64 build from PyPI carries CUDA: the venv takes about 6.5 GB. Say so now rather than
        # let pip stop minutes in with "No space left on device".
        need_gb=${FACEKIT_VENV_GB:-$([ "$(uname -m)" = x86_64 ] && echo 7 || echo 2)}
        read -r free_gb mount_point < <(df -Pk . | awk 'NR == 2 { print int($4 / 1048576), $6 }')
        if [ "$free_gb" -lt "$need_gb" ]; then
            echo "run.sh: $VENV needs about $need_gb GB and only $free_gb GB are free on $mount_point;" \
                 "free some space (or set FACEKIT_VENV_GB=0 to try anyway)" >&2
            exit 1
        fi
        "$PYTHON" -m venv "$VENV"
    fi
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
