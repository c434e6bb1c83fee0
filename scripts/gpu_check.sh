#!/usr/bin/env bash
# The kit on a lent GPU machine, as one prepared run (under 8 minutes on one GPU), for the closing note of
# a GPU change: the device line, bench (kit against the compute ceiling) for resnet18 and dlib_face at
# 112 px, the wall time and images/s of a 5-fold `cv resnet18 --size 112 --no-pretrained --epochs 10`,
# `cv --devices` over every GPU, and `best --time-limit 5m`'s score and time used.
#
#   scripts/gpu_check.sh            on the GPU, with the 112-px data copied into gpu-data/ (below)
#   scripts/gpu_check.sh --cpu      the same steps, shortened, on the CPU with a small synthetic competition:
#                                   a dry run of the script itself (a few minutes on 2 cores)
#   scripts/gpu_check.sh --dry-run  print the commands, run nothing (with --cpu too; the tests do this)
#
# Only 64 MiB of the checkout travel to a lent machine, and ../shared does not: before a GPU run, here,
#   mkdir -p gpu-data && cp ../shared/data/utkface-age-gender-112.zip gpu-data/
# (gpu-data/ is git-ignored) and carry gpu-data. Everything the steps write goes to a scratch project
# ($GPU_CHECK_ROOT, default /tmp/facekit-gpu-check), never into the checkout; the lines to quote are
# collected at the end under "summary" (and in $OUT/gpu_check.log where $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=gpu dry=0
for arg in "$@"; do
    case $arg in
        --cpu) mode=cpu ;;
        --dry-run) dry=1 ;;
        *) echo "usage: scripts/gpu_check.sh [--cpu] [--dry-run]" >&2; exit 2 ;;
    esac
done

# The kit's venv where there is one; a lent machine's own python3 holds torch.
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export FACEKIT_ROOT=${GPU_CHECK_ROOT:-/tmp/facekit-gpu-check-$mode}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
kit=("$PYTHON" -m kit)

if [ "$mode" = gpu ]; then
    data=gpu-data/utkface-age-gender-112.zip
    size=112 face_size=112 folds=5 epochs=10 best_limit=5m best_models=()
    bench_steps=(--steps 30 --warmup 5 --reference-workers 8)
    devices=$("$PYTHON" -c 'import torch; print(",".join(f"cuda:{i}" for i in range(torch.cuda.device_count())))' \
              2>/dev/null || true)
    if [ "$dry" = 0 ] && [ ! -f "$data" ]; then
        echo "gpu_check: $data is missing; here, before the run: mkdir -p gpu-data &&" \
             "cp ../shared/data/utkface-age-gender-112.zip gpu-data/ (and carry gpu-data)" >&2
        exit 2
    fi
    if [ "$dry" = 0 ] && [ -z "$devices" ]; then
        echo "gpu_check: torch sees no GPU here; scripts/gpu_check.sh --cpu is the CPU's dry run" >&2
        exit 2
    fi
else   # the same steps on a CPU, shortened: small synthetic images, one epoch, a short budget and one member
    data=$FACEKIT_ROOT/sample
    size=48 face_size=104 folds=5 epochs=1 best_limit=3m best_models=(--models resnet18 --spares "")
    bench_steps=(--steps 2 --warmup 1 --reference-workers 0)
    devices=cpu,cpu
fi
devices=${devices:-cuda:0}

summary=()
step() {   # step NAME COMMAND...: print it, run it (unless --dry-run) with its wall time, keep its last lines
    local name=$1; shift
    echo "== $name: $*"
    [ "$dry" = 1 ] && return 0
    local started=$SECONDS log="$FACEKIT_ROOT/$name.log" code=0
    "$@" 2>&1 | tee "$log" || code=$?
    local seconds=$((SECONDS - started))
    summary+=("$name: exit $code, ${seconds}s wall")
    case $name in
        device) summary+=("  $(lines '^devices?: ' "$log")") ;;
        bench-*) summary+=("  $(lines '^(kit|ceiling|reference) ' "$log" | tr -s ' ')") ;;
        cv-*) summary+=("  $(lines 'out-of-fold over' "$log")"
                        "  images/s over the run: $(images_per_s "$log" "$seconds")") ;;
        best) summary+=("  $(lines '^(wrote|cross-validated|where the time went)' "$log")") ;;
    esac
}

lines() {   # lines PATTERN FILE: the lines that match, joined by ';' (none is no failure)
    grep -E "$1" "$2" | paste -sd ';' - || true
}

images_per_s() {   # training images per wall second: the epochs' img/s lines say how many images each trained
    "$PYTHON" - "$1" "$2" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rates = [float(rate) for rate in re.findall(r"(\d+) img/s", text)]
seconds = [float(s) for s in re.findall(r"img/s\s+(\d+)s", text)]
print(f"{sum(r * s for r, s in zip(rates, seconds)) / max(1, int(sys.argv[2])):.0f} "
      f"({len(rates)} epochs, mean epoch {sum(rates) / max(1, len(rates)):.0f} img/s)")
EOF
}

mkdir -p "$FACEKIT_ROOT"
if [ "$mode" = cpu ] && [ "$dry" = 0 ] && [ ! -d "$data" ]; then
    "${kit[@]}" sample "$data" --train 300 --test 60 >/dev/null
fi
common=(--data "$data" --size "$size")
name=gpu-check-$(date +%s)   # a rerun trains again rather than finding its folds done
[ "$mode" = cpu ] && common+=(--batch-size 32)

step device "$PYTHON" -c 'from kit.device import announce_device; announce_device("auto", None, "auto", None)'
[ "$mode" = gpu ] && [ "$dry" = 0 ] && { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; }
step bench-resnet18 "${kit[@]}" bench --model resnet18 "${common[@]}" --no-pretrained "${bench_steps[@]}"
step bench-dlib_face "${kit[@]}" bench --model dlib_face --data "$data" --size "$face_size" --no-pretrained \
    "${bench_steps[@]}"
step cv-resnet18 "${kit[@]}" cv resnet18 "${common[@]}" --no-pretrained --folds "$folds" --epochs "$epochs" \
    --device "${devices%%,*}" --name "$name"
step cv-devices "${kit[@]}" cv resnet18 "${common[@]}" --no-pretrained --folds "$folds" --epochs 2 \
    --devices "$devices" --name "$name-devices"
step best "${kit[@]}" best --time-limit "$best_limit" "${common[@]}" "${best_models[@]}" --name "$name-best"

[ "$dry" = 1 ] && exit 0
echo
echo "== summary ($mode, $(date -u +%FT%TZ))"
printf '%s\n' "${summary[@]}" | tee "${OUT:-$FACEKIT_ROOT}/gpu_check.log"
