"""What the Kaggle notebook tests share (tests/test_kaggle_bundle.py, tests/test_kaggle_kernels.py).

    wheelhouse(tmp_path_factory)       wheels of everything the kit needs beyond Kaggle's image, made once per
                                       session from the installed distributions (offline: no registry)
    image_but("optuna")                an image lacking only optuna: bundles of two wheels
    competition_zip(folder)            a tiny synthetic competition zipped as Kaggle serves it, and its labels
    point_client_at(server, monkeypatch, home)   the official client talks to the fake Kaggle, as `tester`
"""
from __future__ import annotations

import contextlib
import io
import shutil
import sys
import zipfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from kaggle_sandbox import repack_installed  # noqa: E402

from kit.kaggle.api import Polling  # noqa: E402
from kit.kaggle.wheels import (  # noqa: E402
    CLIENT_ONLY,
    KAGGLE_IMAGE_PACKAGES,
    NEVER_BUNDLED,
    canonical,
    image_closure,
    installed_distributions,
    project_requirements,
    read_pyproject,
)
from kit.sample import make_sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK_KERNEL = Polling(interval=0.05, factor=1.5, max_interval=0.5, timeout=300)   # no real waiting


def closure_names() -> list[str]:
    """What the kit (no extras) needs beyond Kaggle's image, the client left out, read from the installed
    distributions' metadata: what the test wheelhouse holds, for pip to resolve the bundle offline."""
    from packaging.requirements import Requirement

    installed = installed_distributions()
    image = image_closure(KAGGLE_IMAGE_PACKAGES, installed)
    names, queue = set(), [Requirement(r) for r in project_requirements(read_pyproject(REPO), [])]
    while queue:
        requirement = queue.pop()
        name = canonical(requirement.name)
        if name in names or name in image or name in CLIENT_ONLY or NEVER_BUNDLED.match(name) or (
                requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        names.add(name)
        queue += [Requirement(text) for text in installed[name].requires]
    return sorted(installed[name].name for name in names)


def image_but(*bundled: str) -> dict:
    """An image that has everything the kit needs except `bundled`: small bundles, quick to upload."""
    installed = installed_distributions()
    image = image_closure(KAGGLE_IMAGE_PACKAGES, installed)
    return {**image, **{canonical(n): installed[canonical(n)].version for n in closure_names() if n not in bundled}}


def wheelhouse(tmp_path_factory) -> Path:
    """The no-extras closure as wheels, rebuilt from this interpreter's installed files, once per session."""
    folder = tmp_path_factory.getbasetemp() / "kaggle-wheelhouse"
    if not (folder / ".complete").is_file():
        repack_installed(closure_names(), folder)
        (folder / ".complete").touch()
    return folder


def competition_zip(folder: Path, *, n_train: int = 40, n_test: int = 10, seed: int = 3) -> tuple[Path, pd.DataFrame]:
    """face_dataset/ in a zip, as Kaggle serves the competition, and the hidden test labels."""
    made = make_sample(folder / "made" / "face_dataset", n_train=n_train, n_test=n_test, seed=seed)
    labels = pd.read_csv(made / "test_labels.csv")
    (made / "test_labels.csv").unlink()
    (made / ".synthetic").unlink()
    archive = folder / "competition.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(made.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(made.parent).as_posix())
    shutil.rmtree(folder / "made")
    return archive, labels


def point_client_at(server, monkeypatch, home: Path) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_COMPETITION", "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy",
                 "KAGGLE_KERNEL_RUN_TYPE", "FACEKIT_KAGGLE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle-config"))
    for name, value in server.client_env().items():
        monkeypatch.setenv(name, value)
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    if "--local" not in KaggleApi.args:   # the client read KAGGLE_API_ENVIRONMENT before it was set
        monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])
