#!/usr/bin/env bash
# The Kaggle flow end to end against the local fake Kaggle (tests/kaggle_server.py), each step echoed:
# bundle -> kaggle run -> status polling to COMPLETE -> the output in runs/kaggle/... -> ensemble with a
# local run on the same folds -> submit (public score in the ledger) -> code submission of the kernel version.
#
#   scripts/kaggle_acceptance.sh               # the real data (ZIP below), `best --time-limit 10m` in the kernel
#   scripts/kaggle_acceptance.sh --synthetic   # a tiny synthetic competition: a smoke check of a few minutes
#
# The real test labels are hidden, so the server gets a competition whose test rows are held-out train rows
# (kaggle_server.py holdout) and scores against their labels. Kernels run under `unshare --mount --net`
# (root needed) with a Python that has only what Kaggle's image has (tests/kaggle_sandbox.py). Everything is
# written under $WORK (default: a new /tmp/kaggle-acceptance.XXXX); the server's log is $WORK/server.log.
# Environment: PYTHON (default .venv/bin/python), PORT (8765), ZIP, WORK, FIND_LINKS (a folder of wheels for
# the bundle, to avoid downloading them), NEWEST_IMAGE=1 (the kernels' Python has today's releases of numpy,
# pandas, scikit-learn, scipy, pillow, matplotlib and tqdm from the index: an image that has moved on).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
PORT=${PORT:-8765}
ZIP=${ZIP:-/work/shared/data/utkface-age-gender.zip}
WORK=${WORK:-$(mktemp -d /tmp/kaggle-acceptance.XXXX)}
MODE=real
[ "${1:-}" = "--synthetic" ] && MODE=synthetic

step() { echo; echo "+ $*"; "$@"; }
fails() {   # a step that must fail: its exit status is shown, and success stops the script
    echo; echo "+ $*   # must fail"
    local rc=0
    "$@" || rc=$?
    [ "$rc" -ne 0 ] || { echo "it did not fail"; exit 1; }
    echo "(exit $rc)"
}
facekit() { "$PY" -m kit "$@"; }
export PYTHONPATH=$REPO TQDM_DISABLE=1

echo "kaggle acceptance ($MODE) in $WORK with $PY"
mkdir -p "$WORK/home" "$WORK/project"
if [ "$MODE" = real ]; then
    step "$PY" tests/kaggle_server.py holdout --zip "$ZIP" --out "$WORK/competition"
    EXTRAS=()                                      # the default: dlib, what best's default members need
    LOCAL=(cv scratch --epochs 1 --size 32 --name local)
    KERNEL=(best --time-limit 10m)
    POLL=(--poll-interval 15s --poll-timeout 2h)
else
    step "$PY" - "$WORK/competition" <<'EOF'
import sys, zipfile
from pathlib import Path
from kit.sample import make_sample
out = Path(sys.argv[1])
made = make_sample(out / "made" / "face_dataset", n_train=60, n_test=20, seed=5)
(made / "test_labels.csv").rename(out / "labels.csv")
(made / ".synthetic").unlink()
with zipfile.ZipFile(out / "competition.zip", "w") as archive:
    for path in sorted(made.rglob("*")):
        archive.write(path, path.relative_to(made.parent).as_posix())
print(f"{out / 'competition.zip'}: a synthetic competition; {out / 'labels.csv'}: its test labels")
EOF
    EXTRAS=(--extras none)
    LOCAL=(cv scratch --epochs 1 --size 32 --folds 2 --name local --seed 7)
    KERNEL=(cv scratch --epochs 1 --size 32 --folds 2 --name kernel -- ensemble scratch/kernel)
    POLL=(--poll-interval 1s --poll-timeout 20m)
fi

NEWEST=()
[ "${NEWEST_IMAGE:-}" = 1 ] && NEWEST=(--newest)
IMAGE_PY=$("$PY" tests/kaggle_sandbox.py image-python "$WORK/image" "${NEWEST[@]}")
LATEST=""
[ ${#NEWEST[@]} -gt 0 ] && LATEST=", with today's releases first"
echo "+ the kernels' Python (what Kaggle's image has, nothing else$LATEST): $IMAGE_PY"
step "$IMAGE_PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("torch", "numpy", "pandas", "scikit-learn", "scipy", "pillow", "matplotlib", "tqdm")))'
echo "+ $PY tests/kaggle_server.py --port $PORT --data-zip $WORK/competition/competition.zip --labels ... &"
"$PY" tests/kaggle_server.py --port "$PORT" --data-zip "$WORK/competition/competition.zip" \
    --labels "$WORK/competition/labels.csv" --sandbox-python "$IMAGE_PY" --kernel-timeout 7200 \
    >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
"$PY" - "$PORT" <<'EOF'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the fake Kaggle did not start; see server.log")
EOF

export KAGGLE_API_ENVIRONMENT=LOCALHOST HTTP_PROXY=http://127.0.0.1:$PORT http_proxy=http://127.0.0.1:$PORT
export KAGGLE_USERNAME=tester KAGGLE_KEY=local-key HOME=$WORK/home KAGGLE_CONFIG_DIR=$WORK/home/kaggle
export FACEKIT_ROOT=$WORK/project
unset KAGGLE_API_TOKEN KAGGLE_COMPETITION NO_PROXY no_proxy HTTPS_PROXY https_proxy KAGGLE_KERNEL_RUN_TYPE || true

step facekit download
step facekit "${LOCAL[@]}"                         # makes the folds file the bundle ships
BUNDLE=(kaggle bundle "${EXTRAS[@]}")
[ -n "${FIND_LINKS:-}" ] && BUNDLE+=(--find-links "$FIND_LINKS")
step facekit "${BUNDLE[@]}"
step facekit "${BUNDLE[@]}"                        # unchanged: not uploaded again
step facekit kaggle run "${POLL[@]}" -- "${KERNEL[@]}"

OUT=$FACEKIT_ROOT/runs/kaggle/facekit-run/v1
step ls -R "$OUT"
step cat "$OUT/kaggle-run.json"
# the kernel's complete runs (those with an oof.csv), as RUN specs under runs/
mapfile -t RUNS < <(cd "$FACEKIT_ROOT/runs" && ls kaggle/facekit-run/v1/*/*/oof.csv | grep -v '/output/' | xargs -n1 dirname)
step facekit ensemble "${RUNS[@]}" scratch/local --out "$FACEKIT_ROOT/submissions/kernel+local.csv"
step facekit submit "$FACEKIT_ROOT/submissions/kernel+local.csv" -m "kernel runs + a local run" --poll-interval 1s
step facekit submit --kernel tester/facekit-run --version 1 --poll-interval 1s
step facekit submissions
step cat "$FACEKIT_ROOT/submissions/ledger.csv"
# A kernel that fails (a bad option inside it): Kaggle's failure message and the log's tail, nothing submitted.
cp "$FACEKIT_ROOT/submissions/ledger.csv" "$WORK/ledger-before.csv"
fails facekit kaggle run --kernel facekit-broken "${POLL[@]}" -- cv scratch --no-such-option
step cmp "$WORK/ledger-before.csv" "$FACEKIT_ROOT/submissions/ledger.csv"
step facekit submissions
echo
echo "kaggle acceptance ($MODE): done; everything is in $WORK"
