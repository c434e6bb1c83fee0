"""bench: the kit's steps, the compute ceiling interleaved with them, the notebook's loader, and a ratio
that cannot pass a measurement fault off as a result."""
import json
import subprocess
import sys
import time
from pathlib import Path

from kit.bench import SOUND_RATIO, benchmark, interleaved, soundness
from kit.config import TrainConfig


def test_benchmark_measures_all_three_paths(tiny_competition, project):
    cfg = TrainConfig(model="scratch", data=str(tiny_competition), size=32, batch_size=8, num_threads=1)
    summary = benchmark(cfg, steps=2, warmup=1, reference_workers=0, root=project)
    for path in ("kit", "ceiling", "reference"):
        assert summary["images_per_s"][path]["train"] > 0 and summary["images_per_s"][path]["infer"] > 0
    for mode in ("train", "infer"):
        ratio = summary["images_per_s"]["kit"][mode] / summary["images_per_s"]["ceiling"][mode]
        if ratio > SOUND_RATIO:   # a busy machine can make two steps' timing unsound: then it must say so
            assert summary["kit_over_ceiling"][mode] is None and summary["measurement_faults"]
        else:
            assert abs(summary["kit_over_ceiling"][mode] - ratio) < 0.01
    assert summary["infer_batch_size"] == min(256, 80)   # inference_batch_size(), at most every row
    assert summary["cache_resident_over_array"] > 0 and summary["peak_rss_mib"] > 0


def test_a_cached_trunk_is_benchmarked_from_its_features(tiny_competition, project):
    # the ceiling must run what the kit runs: the unfrozen rest of the network on cached features
    cfg = TrainConfig(model="dlib_age", data=str(tiny_competition), size=64, batch_size=8, num_threads=1,
                      frozen_trunk=2)
    summary = benchmark(cfg, steps=2, warmup=1, reference_workers=0, root=project)
    for path in ("kit", "ceiling", "reference"):
        assert summary["images_per_s"][path]["train"] > 0 and summary["images_per_s"][path]["infer"] > 0


def test_kit_and_ceiling_alternate_and_each_is_timed_alone():
    calls = []

    def kit_step():
        calls.append("kit")
        time.sleep(0.002)

    def ceiling_step():
        calls.append("ceiling")

    kit_s, ceiling_s = interleaved(kit_step, ceiling_step, lambda: None, steps=4, warmup=1)
    assert calls == ["kit", "ceiling", "kit", "ceiling", "ceiling", "kit", "kit", "ceiling", "ceiling", "kit"]
    assert kit_s > 4 * 0.002 > ceiling_s


def test_a_kit_faster_than_its_own_compute_is_a_measurement_fault():
    assert soundness({"train": 0.97, "infer": 1.04}) == []
    faults = soundness({"train": 1.32, "infer": 1.0})
    assert len(faults) == 1 and faults[0].startswith("train: the kit path measured 1.32x the ceiling")


def test_bench_command_ends_with_one_json_line(tiny_competition, project):
    result = subprocess.run([sys.executable, "-m", "kit", "bench", "--model", "scratch",
                             "--data", str(tiny_competition), "--size", "32", "--batch-size", "8", "--steps", "1",
                             "--warmup", "1", "--reference-workers", "0", "--num-threads", "1"],
                            capture_output=True, text=True, timeout=300,
                            env={"FACEKIT_ROOT": str(project), "PYTHONPATH": str(Path(__file__).parents[1]),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode in (0, 1), result.stderr     # 1: a measurement fault, reported as such
    assert "kit_over_reference" in result.stdout
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last["images_per_s"]) == {"kit", "ceiling", "reference"}
    assert (result.returncode == 1) == bool(last["measurement_faults"])
