import json
import subprocess
import sys
from pathlib import Path

from kit.bench import benchmark
from kit.config import TrainConfig


def test_benchmark_measures_all_three_paths(tiny_competition, project):
    cfg = TrainConfig(model="scratch", data=str(tiny_competition), size=32, batch_size=8, num_threads=1)
    summary = benchmark(cfg, steps=2, warmup=1, reference_workers=0, root=project)
    for path in ("kit", "ceiling", "reference"):
        assert summary["images_per_s"][path]["train"] > 0 and summary["images_per_s"][path]["infer"] > 0
    ratio = summary["images_per_s"]["kit"]["train"] / summary["images_per_s"]["ceiling"]["train"]
    assert abs(summary["kit_over_ceiling"]["train"] - ratio) < 0.01
    assert summary["cache_resident_over_array"] > 0 and summary["peak_rss_mib"] > 0


def test_bench_command_ends_with_one_json_line(tiny_competition, project):
    result = subprocess.run([sys.executable, "-m", "kit", "bench", "--model", "scratch", "--data", str(tiny_competition),
                             "--size", "32", "--batch-size", "8", "--steps", "1", "--warmup", "1",
                             "--reference-workers", "0", "--num-threads", "1"],
                            capture_output=True, text=True, timeout=300,
                            env={"FACEKIT_ROOT": str(project), "PYTHONPATH": str(Path(__file__).parents[1]),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "kit_over_reference" in result.stdout
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(last["images_per_s"]) == {"kit", "ceiling", "reference"}
