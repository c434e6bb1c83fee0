"""scripts/gpu_check.sh, the prepared check for a lent GPU machine: its steps, printed by --dry-run (the real
--cpu run takes minutes; it is the developer's dry run of the script, not the suite's)."""
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
STEPS = ["device", "bench-resnet18", "bench-dlib_face", "cv-resnet18", "cv-devices", "best"]


def dry_run(*options: str) -> dict[str, str]:
    result = subprocess.run(["bash", "scripts/gpu_check.sh", *options, "--dry-run"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    steps = dict(line[3:].split(": ", 1) for line in result.stdout.splitlines() if line.startswith("== "))
    assert list(steps) == STEPS
    return steps


def test_the_gpu_run_is_the_one_the_issue_asks_for():
    steps = dry_run()
    data = "--data gpu-data/utkface-age-gender-112.zip --size 112"
    assert "announce_device" in steps["device"]
    assert f"bench --model resnet18 {data}" in steps["bench-resnet18"]
    assert "--model dlib_face --data gpu-data/utkface-age-gender-112.zip --size 112" in steps["bench-dlib_face"]
    assert f"cv resnet18 {data} --no-pretrained --folds 5 --epochs 10" in steps["cv-resnet18"]
    assert "--devices cuda:" in steps["cv-devices"]
    assert steps["best"].split(" -m kit ")[1].startswith(f"best --time-limit 5m {data}")


def test_the_cpu_run_is_the_same_steps_shortened():
    steps = dry_run("--cpu")
    assert "--epochs 1" in steps["cv-resnet18"] and "--devices cpu,cpu" in steps["cv-devices"]
    assert "--time-limit 3m" in steps["best"] and "--steps 2" in steps["bench-resnet18"]


def test_unknown_options_are_refused():
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--gpu"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "usage: scripts/gpu_check.sh [--cpu] [--dry-run]" in result.stderr


@pytest.mark.parametrize("gitignored", ["gpu-data/utkface-age-gender-112.zip"])
def test_the_data_copied_for_a_gpu_machine_is_never_committed(gitignored):
    assert subprocess.run(["git", "check-ignore", "-q", gitignored], cwd=REPO).returncode == 0
