"""The wheels a Kaggle bundle carries: the closure of the kit's requirements that Kaggle's image lacks,
resolved from the installed distributions' metadata at the versions installed here, and the files that
hold them (from --find-links folders, the wheelhouse, or `pip download` for Kaggle's Python and
platform), with the kit's own wheel built reproducibly.
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

from kit.errors import SubmitError
from kit.log import log

# What Kaggle's Python image has (with everything these need): never bundled unless --include or
# --kaggle-image says otherwise. The list is short on purpose: a wheel bundled in vain costs some bytes,
# one missing stops the offline install.
KAGGLE_IMAGE_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "pillow",
                         "matplotlib", "tqdm", "pip")
NEVER_BUNDLED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|pip|setuptools)$")
KAGGLE_PYTHON = "3.11"
KAGGLE_GLIBC = 35                    # Kaggle's image is Ubuntu 22.04: glibc 2.35
SOURCE_DATE_EPOCH = "315532800"      # 1980-01-01: the kit's wheel is the same bytes for the same source


class BundleError(SubmitError):
    """The bundle cannot be built as asked; nothing was uploaded."""


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

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

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = self.python_version.split(".")[:2]
        return int(major), int(minor)

    def markers(self, extra: str = "") -> dict[str, str]:
        return {"python_version": ".".join(map(str, self.version_tuple)),
                "python_full_version": ".".join(map(str, self.version_tuple)) + ".0",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "platform_release": "", "platform_version": "", "implementation_version": "", "extra": extra}

    def tags(self) -> set:
        from packaging import tags

        major, minor = self.version_tuple
        found = set(tags.cpython_tags(python_version=(major, minor), platforms=list(self.platforms)))
        found |= set(tags.compatible_tags(python_version=(major, minor), interpreter=f"cp{major}{minor}",
                                          platforms=list(self.platforms)))
        return found

    def pip_options(self) -> list[str]:
        options = ["--python-version", self.python_version, "--implementation", "cp"]
        for platform in self.platforms:
            options += ["--platform", platform]
        return options


# ----------------------------------------------------------------------------- the closure
@dataclass
class Wanted:
    """A distribution that goes into the bundle, at the version installed here."""
    name: str
    version: str
    needed_by: list[str]


@dataclass
class Closure:
    wanted: dict[str, Wanted]                 # canonical name -> what to bundle
    image_requirements: list[dict]            # requirements left to Kaggle's image, checked by install.py
    left_out: list[str]                       # never bundled (torch, CUDA) though asked for


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
    """`names` and every distribution they need as installed here (with the extras they ask of each other,
    markers read for this machine); versions None, since the image's own are unknown."""
    from packaging.requirements import Requirement

    image: dict[str, str | None] = {}
    seen: set[tuple[str, str]] = set()
    queue = [(canonical(n), "") for n in names]
    while queue:
        name, extra = queue.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        image[name] = None
        dist = installed.get(name)
        for text in dist.requires if dist else ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                child = canonical(requirement.name)
                queue += [(child, "")] + [(child, e) for e in requirement.extras]
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
            if name.lower() != "package" and not set(name) <= {"-"}:
                image[canonical(name)] = version
    if not image:
        raise BundleError(f"--kaggle-image {path}: no NAME==VERSION lines (run `pip list --format=freeze` in a "
                          "Kaggle notebook and save its output)")
    return image


def resolve(requirements: list[str], *, target: Target, image: dict[str, str | None], include: set[str],
            installed: dict, root_name: str = "facekit") -> Closure:
    """The distributions to bundle for `requirements`, walking installed metadata; each pinned to the
    version installed here, which must meet every requirement on it."""
    from packaging.requirements import Requirement

    wanted: dict[str, Wanted] = {}
    extras_seen: dict[str, set[str]] = {}
    image_requirements: list[dict] = []
    left_out: list[str] = []
    problems: list[str] = []
    queue: list[tuple[str, str, tuple[str, ...]]] = [(text, root_name, ()) for text in requirements]
    while queue:
        text, needed_by, parent_extras = queue.pop(0)
        requirement = Requirement(text)
        if requirement.marker is not None and not any(
                requirement.marker.evaluate(target.markers(extra)) for extra in (*parent_extras, "")):
            continue
        name = canonical(requirement.name)
        never = bool(NEVER_BUNDLED.match(name))
        if never or (name in image and name not in include):
            if name not in image:   # torch & co. that the image lacks: left to it all the same
                left_out.append(f"{requirement} (needed by {needed_by})")
                continue
            version = image[name]
            if version is None or requirement.specifier.contains(version, prereleases=True):
                entry = {"requirement": requirement.name + str(requirement.specifier), "needed_by": needed_by}
                if requirement.specifier and entry not in image_requirements:
                    image_requirements.append(entry)   # install.py checks it against the image's version
                continue
            if never:
                problems.append(f"{needed_by} needs {requirement}; Kaggle's image has {name} {version}, and "
                                f"{name} is never bundled")
                continue
            # the image's version does not meet it: ours is bundled
        dist = installed.get(name)
        if dist is None:
            problems.append(f"{requirement} (needed by {needed_by}) is not installed here; the bundle pins what "
                            "is installed, so install it first")
            continue
        if not requirement.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{needed_by} needs {requirement}, but {name} {dist.version} is installed here")
            continue
        if name in wanted:
            if needed_by not in wanted[name].needed_by:
                wanted[name].needed_by.append(needed_by)
            if set(requirement.extras) <= extras_seen[name]:
                continue
        else:
            wanted[name] = Wanted(dist.name, dist.version, [needed_by])
        extras_seen.setdefault(name, set()).update(requirement.extras)
        for child in dist.requires:   # again with new extras: what was seen is skipped above
            queue.append((child, dist.name, tuple(sorted(extras_seen[name]))))
    if problems:
        raise BundleError("the bundle's requirements cannot be met:\n  - " + "\n  - ".join(problems))
    return Closure(wanted, image_requirements, left_out)


# ----------------------------------------------------------------------------- wheels
def wheel_matches(path: Path, name: str, version: str, tags: set) -> bool:
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from packaging.version import Version

    try:
        wheel_name, wheel_version, _, wheel_tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename:
        return False
    return (str(wheel_name) == canonical(name) and wheel_version == Version(version)
            and bool(set(wheel_tags) & tags))


def find_wheel(name: str, version: str, folders: list[Path], tags: set) -> Path | None:
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.whl")):
                if wheel_matches(path, name, version, tags):
                    return path
    return None


def pip_download(pins: list[str], dest: Path, target: Target) -> None:
    """`pip download --no-deps --only-binary=:all:` of NAME==VERSION pins for the target, into dest."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "off", *target.pip_options(), "-d", str(dest), *pins]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise BundleError(f"pip could not download {len(pins)} wheel(s) for Python {target.python_version} on "
                          f"{target.platforms[0]}: {' '.join(pins)}\n{tail}\nDownload or build them yourself "
                          "(pip wheel NAME==VERSION) into a folder and pass it with --find-links")


def gather_wheels(wanted: list[Wanted], *, find_links: list[Path], wheelhouse: Path, target: Target,
                  download=pip_download) -> dict[str, Path]:
    """A wheel per distribution: from --find-links, the wheelhouse, else downloaded into the wheelhouse."""
    tags = target.tags()
    folders = [*find_links, wheelhouse]
    found = {w.name: find_wheel(w.name, w.version, folders, tags) for w in wanted}
    missing = [w for w in wanted if found[w.name] is None]
    if missing:
        wheelhouse.mkdir(parents=True, exist_ok=True)
        pins = [f"{w.name}=={w.version}" for w in missing]
        log(f"downloading {len(pins)} wheel(s) for Python {target.python_version} / {target.platforms[0]} into "
            f"{wheelhouse}: {', '.join(pins)}")
        started = time.monotonic()
        download(pins, wheelhouse, target)
        for w in missing:
            found[w.name] = find_wheel(w.name, w.version, [wheelhouse], tags)
        size = sum(found[w.name].stat().st_size for w in missing if found[w.name])
        log(f"downloaded {size / 2**20:.1f} MiB in {time.monotonic() - started:.1f}s")
        still = [f"{w.name}=={w.version}" for w in missing if found[w.name] is None]
        if still:
            raise BundleError(f"no wheel for Python {target.python_version} on Kaggle's platform after downloading: "
                              f"{', '.join(still)}; put one in a --find-links folder")
    return found


BUILD_WHEEL = """
import os, sys
os.chdir(sys.argv[1])
from setuptools import build_meta
print(build_meta.build_wheel(sys.argv[2]))
"""


def build_own_wheel(source: Path, out_dir: Path) -> Path:
    """The kit's wheel, built from a clean copy of the source (pyproject.toml, README.md, kit/) so that the
    checkout gets no build/ or egg-info, with fixed timestamps so the same source gives the same bytes.
    setuptools' own backend builds it where it is recent enough (no registry), else `pip wheel`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facekit-src-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source / name).is_file():
                shutil.copy2(source / name, copy / name)
        shutil.copytree(source / "kit", copy / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if _has_build_backend():
            command = [sys.executable, "-c", BUILD_WHEEL, str(copy), str(out_dir.resolve())]
        else:
            command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                       "-w", str(out_dir), str(copy)]
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
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def wheel_digest(path: Path) -> str:
    """sha256 of a wheel's members (names and bytes), blind to zip timestamps and compression."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            digest.update(info.filename.encode() + b"\0" + hashlib.sha256(archive.read(info)).digest())
    return digest.hexdigest()
