"""`facekit kaggle bundle`: the kit, the wheels Kaggle's image lacks and the project's folds, as one private
Kaggle dataset that a notebook installs offline.

    facekit kaggle bundle                          # build .cache/kaggle-bundle/facekit-bundle/, upload if changed
    facekit kaggle bundle --extras none --dry-run  # build only
    # in a notebook with the dataset attached:   !python /kaggle/input/facekit-bundle/install.py

The dataset folder holds
    wheels/                the kit's own wheel, and a wheel of every distribution its requirements need
                           that Kaggle's image lacks, as pip resolves them for Kaggle's Python and platform
                           (kit/kaggle/wheels.py), at the versions installed here where pip can
    folds/                 the project's folds/*.csv, so runs on Kaggle use the folds of the local runs
    install.py             kit/kaggle/bundle_install.py: checks the image, installs the wheels offline,
                           copies the folds into /kaggle/working/folds/
    facekit-bundle.json    the manifest: what is inside, the folds' hashes, the content hash
    dataset-metadata.json  what `kaggle datasets create` / `version` read

Which wheels, and why (Kaggle's image, --kaggle-image, --include, the client left out, weights-only
packages): kit/kaggle/wheels.py. A bundle whose content hash was uploaded before is not uploaded again.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from kit.errors import SubmitError
from kit.files import read_json, replace_folder, sha256_file, staging_folder, write_json
from kit.kaggle.ledger import now_utc
from kit.kaggle.wheels import (
    WheelSource,
    build_own_wheel,
    fetch_wheels,
    installed_distributions,
    project_requirements,
    read_pyproject,
    wheel_digest,
)
from kit.log import log
from kit.paths import Project

DEFAULT_EXTRAS = ("dlib",)           # what `best`'s default members (dlib_age) need
DEFAULT_SLUG = "facekit-bundle"
MANIFEST_NAME = "facekit-bundle.json"
METADATA_NAME = "dataset-metadata.json"
INSTALL_NAME = "install.py"
BUNDLE_FOLDER = "facekit-bundle"     # under .cache/kaggle-bundle/
UPLOADS_NAME = "uploaded.json"       # beside it: which content went to which dataset


def bundle_home(root=None) -> Path:
    return Project.at(root).cache / "kaggle-bundle"


def bundle_folder(root=None) -> Path:
    return bundle_home(root) / BUNDLE_FOLDER


# ----------------------------------------------------------------------------- the folder
@dataclass
class Bundle:
    folder: Path
    manifest: dict
    changed: bool        # its content differs from the folder's previous content


def content_hash(entries: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{name}\0{entries[name]}\n" for name in sorted(entries)).encode()).hexdigest()


def folds_files(project: Project) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(project.folds.glob("*.csv"))}


def build_bundle(*, dataset: str, extras: list[str], root=None, wheels: WheelSource = WheelSource(),
                 title: str = "facekit bundle") -> Bundle:
    """Build the dataset folder (kept as it is when its content is unchanged); return it and its manifest."""
    project = Project.at(root)
    source = Path(__file__).resolve().parents[2]
    folder = bundle_folder(project.root)
    meta = read_pyproject(source)
    with staging_folder(folder) as staging:
        made = staging / BUNDLE_FOLDER
        (made / "wheels").mkdir(parents=True)
        wanted, image_requirements = fetch_wheels(project_requirements(meta, extras), wheels, made / "wheels",
                                                  installed=installed_distributions(), root_name=meta["name"])
        own = build_own_wheel(source, made / "wheels")
        records = [{"file": own.name, "name": meta["name"], "version": meta["version"],
                    "bytes": own.stat().st_size, "digest": wheel_digest(own)}]
        records += [{"file": w.path.name, "name": w.name, "version": w.version, "weights_only": w.weights_only,
                     "bytes": w.path.stat().st_size, "digest": wheel_digest(w.path)} for w in wanted]
        (made / "folds").mkdir()
        folds = folds_files(project)
        for name in folds:
            shutil.copy2(project.folds / name, made / "folds" / name)
        shutil.copyfile(Path(__file__).with_name("bundle_install.py"), made / INSTALL_NAME)
        entries = {f"wheels/{r['file']}": r["digest"] for r in records}
        entries |= {f"folds/{name}": digest for name, digest in folds.items()}
        entries[INSTALL_NAME] = sha256_file(made / INSTALL_NAME)
        entries["extras"] = ",".join(sorted(extras))
        spec = f"{meta['name']}[{','.join(extras)}]" if extras else meta["name"]
        manifest = {"format": 2, "dataset": dataset, "facekit_version": meta["version"], "extras": list(extras),
                    "requirement": f"{spec}=={meta['version']}", "content_sha256": content_hash(entries),
                    "created": now_utc(), "python_version": wheels.target.python_version,
                    "platforms": list(wheels.target.platforms), "wheels": records, "folds": folds,
                    "image_requirements": image_requirements}
        write_json(made / MANIFEST_NAME, manifest)
        write_json(made / METADATA_NAME, dataset_metadata(dataset, title, manifest))
        previous = read_record(folder / MANIFEST_NAME)
        changed = previous.get("content_sha256") != manifest["content_sha256"]
        if changed or previous.get("dataset") != dataset or not (folder / METADATA_NAME).is_file():
            replace_folder(made, folder, staging)
        else:
            manifest = previous
    total = sum(r["bytes"] for r in manifest["wheels"])
    log(f"{folder}: {len(manifest['wheels'])} wheels ({total / 2**20:.1f} MiB), {len(manifest['folds'])} folds "
        f"file(s), content {manifest['content_sha256'][:12]}" + ("" if changed else " (unchanged)"))
    return Bundle(folder, manifest, changed)


def read_record(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def dataset_metadata(dataset: str, title: str, manifest: dict) -> dict:
    listed = ", ".join(f"{r['name']} {r['version']}" for r in manifest["wheels"])
    return {"title": title, "id": dataset, "licenses": [{"name": "other"}],
            "subtitle": "facekit and the wheels it needs, for offline installs",
            "description": (f"facekit {manifest['facekit_version']} for Kaggle notebooks without internet: "
                            f"`python /kaggle/input/<this dataset>/install.py`. Wheels: {listed}. Each wheel keeps "
                            "its own project's license (see its METADATA).")}


def read_bundle(root=None) -> dict:
    """The manifest of the project's bundle folder, or a SubmitError saying to build it."""
    path = bundle_folder(root) / MANIFEST_NAME
    manifest = read_record(path)
    if not manifest:
        raise SubmitError(f"no bundle at {path.parent}; run `facekit kaggle bundle` first")
    return manifest


def uploaded(root=None) -> dict:
    return read_record(bundle_home(root) / UPLOADS_NAME).get("datasets", {})


def folds_differences(project: Project, shipped: dict[str, str]) -> list[str]:
    """How the project's folds files differ from the ones a bundle ships (empty when they are the same)."""
    local = folds_files(project)
    both, here, there = set(local) & set(shipped), set(local) - set(shipped), set(shipped) - set(local)
    problems = [f"folds/{name}: changed since the bundle was built" for name in sorted(both)
                if local[name] != shipped[name]]
    problems += [f"folds/{name}: made after the bundle was built (not in it)" for name in sorted(here)]
    problems += [f"folds/{name}: in the bundle, but not in {project.folds}" for name in sorted(there)]
    return problems
