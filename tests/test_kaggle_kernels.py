"""`facekit kaggle run`, `kaggle output` and code submissions against the local fake Kaggle.

The end-to-end tests really run the pushed kernel: tests/kaggle_server.py hands it to
tests/kaggle_sandbox.py, which runs it under `unshare --mount --net` with the competition and the
uploaded bundle mounted read-only at /kaggle/input, an empty /kaggle/working, no network, and a Python
that has only what Kaggle's image has. They skip only where that sandbox cannot be made (not root, no
unshare), saying why. The other tests need no sandbox.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from kit.__main__ import main as facekit
from kit.errors import KaggleFault, SubmitError
from kit.files import read_json
from kit.kaggle import bundle as bundles
from kit.kaggle import datasets, kernels, remote
from kit.kaggle.api import Polling, Retry, Services
from kit.kaggle.code_submission import submit_kernel
from kit.kaggle.ledger import read_rows
from kit.kaggle.submit import submit
from kit.kaggle.wheels import WheelSource
from kit.metric import score

sys.path.insert(0, str(Path(__file__).parent))
from kaggle_fixtures import QUICK_KERNEL, competition_zip, image_but, point_client_at, wheelhouse  # noqa: E402
from kaggle_sandbox import SandboxRunner, image_python, sandbox_unavailable  # noqa: E402
from kaggle_server import DEFAULT_COMPETITION, KaggleServer  # noqa: E402

FAST = Retry(attempts=2, first_delay=0.01)
QUICK = Polling(interval=0.01, timeout=0.5)
NO_WAIT = Polling(interval=0.01, timeout=1)


def fast(polling: Polling = QUICK) -> Services:
    """Services that retry and poll without real waiting (a new one per call: it keeps its client)."""
    return Services(retry=FAST, polling=polling)
TINY = ["--epochs", "1", "--size", "32", "--folds", "2"]
POLL = ["--poll-interval", "0.05", "--poll-timeout", "300"]


# ----------------------------------------------------------------------------- without a sandbox
@pytest.fixture
def quick_world(tmp_path, monkeypatch, tmp_path_factory):
    """A fake Kaggle that runs no kernels, and a project whose two-wheel bundle is uploaded to it."""
    archive, labels = competition_zip(tmp_path, n_train=20, n_test=5)
    project = tmp_path / "project"
    (project / "folds").mkdir(parents=True)
    (project / "folds" / f"{DEFAULT_COMPETITION}-k2-seed42.csv").write_text("id,fold\n0,0\n1,1\n")
    with KaggleServer(data_zip=archive, labels=labels) as server:
        point_client_at(server, monkeypatch, tmp_path / "home")
        monkeypatch.setenv("FACEKIT_ROOT", str(project))
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        source = WheelSource(find_links=(wheelhouse(tmp_path_factory),), image=image_but("optuna"))
        bundle = bundles.build_bundle(dataset="tester/facekit-bundle", extras=[], root=project, wheels=source)
        yield SimpleNamespace(server=server, project=project, bundle=bundle)


def run(*words, dry_run: bool = False, **spec):
    return remote.run_on_kaggle(kernels.split_commands(list(words)), remote.KernelSpec(**spec), dry_run=dry_run,
                                services=fast(QUICK_KERNEL))


def test_nothing_is_pushed_unless_bundle_and_folds_agree(quick_world):
    world = quick_world
    with pytest.raises(SubmitError, match="not the one uploaded to tester/facekit-bundle"):
        run("cv", "scratch")
    datasets.upload_bundle(world.bundle, root=world.project, services=fast(NO_WAIT))

    folds = world.project / "folds" / f"{DEFAULT_COMPETITION}-k2-seed42.csv"
    folds.write_text("id,fold\n0,1\n1,0\n")
    (world.project / "folds" / "other-k5-seed42.csv").write_text("id,fold\n")
    with pytest.raises(SubmitError) as caught:
        run("cv", "scratch")
    message = str(caught.value)
    assert f"folds/{DEFAULT_COMPETITION}-k2-seed42.csv: changed since the bundle was built" in message
    assert "folds/other-k5-seed42.csv: made after the bundle was built" in message and "nothing was pushed" in message
    assert world.server.count("SaveKernel") == 0 and not world.server.kernels

    for words, problem in [(("submit", "x.csv"), "does not run inside a kernel"), (("nope",), "no command 'nope'"),
                           ((), "no command to run")]:
        with pytest.raises(SubmitError, match=problem):
            kernels.split_commands(list(words))
    assert kernels.split_commands(["cv", "scratch", "--", "ensemble", "scratch/x"]) == [["cv", "scratch"],
                                                                                        ["ensemble", "scratch/x"]]


def test_the_kernel_folder(quick_world):
    for gpu, fields in [("t4x2", {"enable_gpu": True, "machine_shape": "NvidiaTeslaT4"}),
                        ("p100", {"enable_gpu": True}), ("none", {"enable_gpu": False}),
                        ("NvidiaL4", {"enable_gpu": True, "machine_shape": "NvidiaL4"})]:
        result = run("best", "--time-limit", "8h", gpu=gpu, dry_run=True, kernel="tester/facekit-gpu-check")
        metadata = json.loads((result.folder / "kernel-metadata.json").read_text())
        assert {k: metadata[k] for k in fields} == fields
        assert ("machine_shape" in metadata) == ("machine_shape" in fields)
    assert metadata == {**metadata, "id": "tester/facekit-gpu-check", "title": "facekit gpu check",
                        "code_file": "facekit-gpu-check.py", "language": "python", "kernel_type": "script",
                        "is_private": True, "enable_internet": False, "dataset_sources": ["tester/facekit-bundle"],
                        "competition_sources": [DEFAULT_COMPETITION]}
    source = (result.folder / "facekit-gpu-check.py").read_text()
    namespace: dict = {}
    exec(compile(source, "kernel", "exec"), namespace)   # defines CONFIG and main; runs nothing
    assert namespace["CONFIG"] == {"bundle": "tester/facekit-bundle",
                                   "content_sha256": quick_world.bundle.manifest["content_sha256"],
                                   "commands": [["best", "--time-limit", "8h"]], "keep_checkpoints": False}
    assert quick_world.server.calls == []
    with pytest.raises(SubmitError, match="--gpu tpu"):
        run("cv", "scratch", gpu="tpu", dry_run=True)


def test_kaggles_refusals_and_failures_are_faults(quick_world):
    world = quick_world
    datasets.upload_bundle(world.bundle, root=world.project, services=fast(NO_WAIT))
    with pytest.raises(KaggleFault, match="competition source.*other-competition.*joined") as caught:
        run("cv", "scratch", competition="other-competition")
    assert caught.value.kind == "refused" and not (world.project / "runs").exists()

    # This server runs no kernels: the version ends in ERROR, with Kaggle's failure message.
    with pytest.raises(KaggleFault, match=r"(?s)version 2 ended error on Kaggle: this local server runs no kernels"
                                          r".*the log is empty.*nothing was downloaded or submitted") as caught:
        run("cv", "scratch")
    assert caught.value.kind == "kernel_error" and not (world.project / "runs").exists()
    with pytest.raises(KaggleFault, match="ended error"):
        submit_kernel("tester/facekit-run", 2, root=world.project, services=fast())
    assert not world.server.submissions and not (world.project / "submissions" / "ledger.csv").exists()


class FakeKernels:
    """Kaggle's answers to status reads, one by one, and the waits asked for between them."""

    def __init__(self, *statuses):
        self.statuses = list(statuses)

    def kernels_status(self, kernel):
        name = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(status=SimpleNamespace(name=name), failure_message=None)


def test_polling_backs_off_and_gives_up(capsys):
    waits = []
    polling = Polling(interval=1.0, factor=2.0, max_interval=5.0, timeout=100.0)
    clock = iter(range(0, 1000, 1))
    api = FakeKernels("QUEUED", "QUEUED", "RUNNING", "RUNNING", "RUNNING", "RUNNING", "COMPLETE")
    services = Services(api=api, polling=polling, sleep=waits.append, clock=lambda: next(clock))
    answer = kernels.wait_for_kernel(services, "tester/k-slug", 3)
    assert answer.status.name == "COMPLETE" and waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert capsys.readouterr().out.count("tester/k-slug version 3:") == 3    # queued, running, complete

    now = [0.0]
    with pytest.raises(KaggleFault, match="still running after 10s.*kaggle output tester/k-slug --version 3"):
        kernels.wait_for_kernel(Services(api=FakeKernels("RUNNING"),
                                         polling=Polling(interval=1.0, factor=2.0, max_interval=4.0, timeout=10.0),
                                         sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0]),
                                "tester/k-slug", 3)


def test_log_text_reads_kaggles_json_log():
    raw = json.dumps([{"stream_name": "stdout", "time": 0.1, "data": "one\n"},
                      {"stream_name": "stderr", "time": 0.2, "data": "two\n"}])
    assert kernels.log_text(raw) == "one\ntwo\n" and kernels.log_text("plain text") == "plain text"
    assert kernels.log_text(None) == ""


# ----------------------------------------------------------------------------- in the sandbox
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fake Kaggle that runs kernels in the sandbox, and a project with the competition downloaded, a
    local cross-validation run on 2 folds and the bundle (no extras) uploaded."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(f"kernels cannot be sandboxed here: {reason}")
    base = tmp_path_factory.mktemp("kaggle-world")
    python = image_python(base / "image")
    archive, labels = competition_zip(base)
    with pytest.MonkeyPatch.context() as monkeypatch, \
            KaggleServer(data_zip=archive, labels=labels, kernel_runner=SandboxRunner(python, timeout=300)) as server:
        point_client_at(server, monkeypatch, base / "home")
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        project = base / "project"
        project.mkdir()
        monkeypatch.setenv("FACEKIT_ROOT", str(project))
        from kit.kaggle.download import download

        download(root=project, services=fast())
        assert facekit(["cv", "scratch", *TINY, "--name", "local", "--seed", "7"]) == 0   # not the kernel's twin
        assert facekit(["kaggle", "bundle", "--extras", "none", "--find-links",
                        str(wheelhouse(tmp_path_factory))]) == 0
        yield SimpleNamespace(server=server, project=project, labels=labels)


def public_score(labels: pd.DataFrame, path: Path) -> str:
    sub = pd.read_csv(path)
    merged = labels.merge(sub, on="id", suffixes=("", "_pred"))
    return f"{score(merged.gender, merged.gender_pred, merged.age, merged.age_pred).score:.5f}"


def test_a_kernel_runs_offline_and_its_runs_blend_and_submit(world, capsys):
    project, server = world.project, world.server
    assert facekit(["kaggle", "run", *POLL, "--", "cv", "scratch", *TINY, "--name", "kernel",
                    "--", "ensemble", "scratch/kernel"]) == 0
    out = capsys.readouterr().out
    assert [line.split(": ")[-1] for line in out.splitlines() if line.startswith("tester/facekit-run version 1:")] \
        == ["queued", "running", "complete"]

    pushed = server.kernels["tester/facekit-run"][0]
    request = pushed.request
    assert (request["language"], request["kernelType"], request["enableInternet"], request["enableGpu"],
            request["machineShape"]) == ("python", "script", False, True, "NvidiaTeslaT4")
    assert (request["datasetDataSources"], request["competitionDataSources"]) == (["tester/facekit-bundle"],
                                                                                  [DEFAULT_COMPETITION])
    log = "".join(entry["data"] for entry in pushed.log)
    assert "pip install --no-index --no-deps" in log and "from /kaggle/input/facekit-bundle/wheels" in log
    assert "installed facekit==0.3.0" in log
    installed = next(line for line in log.splitlines() if line.startswith("Successfully installed")).split()
    assert {"facekit-0.3.0", "optuna-5.0.0"} <= set(installed)   # neither was in the image
    assert not [w for w in installed if w.startswith(("kaggle-", "kagglesdk-", "six-"))]   # nor the client
    assert f"kaggle notebook: data /kaggle/input/{DEFAULT_COMPETITION}/face_dataset (read-only)" in log
    assert "also wrote /kaggle/working/submission.csv" in log

    # The output, laid out like local runs.
    version = project / "runs" / "kaggle" / "facekit-run" / "v1"
    run = version / "scratch" / "kernel"
    assert {p.name for p in run.iterdir()} >= {"config.json", "oof.csv", "test_fold0.csv", "test_fold1.csv",
                                              "metrics.json", "fold0", "fold1"}
    assert not list(version.rglob("*.pt")) and not list(version.rglob(".cache"))
    assert (version / "output" / "submission.csv").is_file() and (version / "kernel.log").is_file()
    assert read_json(version / "kaggle-run.json")["commands"][1] == ["ensemble", "scratch/kernel"]
    config, local = read_json(run / "config.json"), read_json(project / "runs" / "scratch" / "local" / "config.json")
    assert config["kaggle_data_dir"] == f"/kaggle/input/{DEFAULT_COMPETITION}/face_dataset"
    assert config["data_dir"] == local["data_dir"] and config["folds_sha256"] == local["folds_sha256"]
    assert config["folds_file"] == f"/kaggle/working/folds/{DEFAULT_COMPETITION}-k2-seed42.csv"

    # Blended with the local run (same folds), submitted as a file, and the kernel's own submission.csv as code.
    blend = project / "submissions" / "both.csv"
    assert facekit(["ensemble", "kaggle/facekit-run/v1/scratch/kernel", "scratch/local", "--out", str(blend)]) == 0
    filed = submit(blend, "kernel + local", root=project, services=fast())
    assert (filed.status, filed.public_score) == ("complete", public_score(world.labels, blend))
    coded = submit_kernel("tester/facekit-run", 1, root=project, services=fast())
    kernel_csv = version / "output" / "submission.csv"
    assert (coded.status, coded.public_score) == ("complete", public_score(world.labels, kernel_csv))
    made = server.submissions[-1]
    assert made.file_name == "submission.csv" and made.description.startswith("tester/facekit-run v1 (CV ")
    rows = [r for r in read_rows(project / "submissions" / "ledger.csv") if r["status"] == "complete"]
    assert [(r["file"], r["public_score"]) for r in rows] == [(str(blend), filed.public_score),
                                                               (str(kernel_csv), coded.public_score)]
    with pytest.raises(SubmitError, match="already submitted"):
        submit_kernel("tester/facekit-run", 1, root=project, services=fast())
    assert facekit(["kaggle", "output", "tester/facekit-run", *POLL]) == 0   # the latest version, here already
    assert "downloaded before" in capsys.readouterr().out


def test_a_failing_kernel_says_why_and_nothing_is_submitted(world, capsys):
    submitted = len(world.server.submissions)
    assert facekit(["kaggle", "run", "--kernel", "facekit-broken", *POLL, "--", "cv", "scratch",
                    "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert "tester/facekit-broken version 1 ended error on Kaggle: Kernel run failed: the script exited" in err
    assert "the last lines of its log" in err and "unrecognized arguments: --no-such-option" in err
    assert not (world.project / "runs" / "kaggle" / "facekit-broken").exists()
    with pytest.raises(KaggleFault, match="ended error"):
        submit_kernel("tester/facekit-broken", 1, root=world.project, services=fast())
    assert len(world.server.submissions) == submitted
