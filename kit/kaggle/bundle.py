"""`facekit kaggle bundle`: the kit, the wheels Kaggle's image lacks and the project's folds, as one private
Kaggle dataset that a notebook installs offline.

    facekit kaggle bundle                          # build .cache/kaggle-bundle/facekit-bundle/, upload if changed
    facekit kaggle bundle --extras none --dry-run  # build only
    # in a notebook with the dataset attached:   !python /kaggle/input/facekit-bundle/install.py

The dataset folder holds
    wheels/                the kit's own wheel, and a wheel of every distribution its requirements need
                           that Kaggle's image lacks (the closure, read from the installed distributions'
                           metadata, at the versions installed here)
    folds/                 the project's folds/*.csv, so runs on Kaggle use the folds of the local runs
    install.py             pip install --no-index --find-links <bundle>/wheels facekit[EXTRAS]==VERSION,
                           then copies the folds into /kaggle/working/folds/
    facekit-bundle.json    the manifest: what is inside, the folds' hashes, the content hash
    dataset-metadata.json  what `kaggle datasets create` / `version` read

Kaggle's image is taken to have KAGGLE_IMAGE_PACKAGES and everything they need (torch is never
bundled, nor the CUDA libraries); `--kaggle-image FILE` (`pip list --format=freeze` run in a notebook)
gives its real versions instead, and a requirement the image's version does not meet is then bundled.
Wheels come from --find-links folders, else the wheelhouse (.cache/kaggle-bundle/wheelhouse/), else
`pip download --no-deps --only-binary=:all:` for Kaggle's Python and platform (--python-version,
--platform). A bundle whose content hash was uploaded before is not uploaded again.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
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

from kit.errors import KaggleFault, SubmitError
from kit.files import read_json, sha256_file, write_json
from kit.kaggle.api import DEFAULT_RETRY, Retry, call_with_retry, connect
from kit.kaggle.ledger import now_utc
from kit.log import log, warn
from kit.paths import Project

# What Kaggle's Python image has (with everything these need): never bundled unless --include or
# --kaggle-image says otherwise. The list is short on purpose: a wheel bundled in vain costs some bytes,
# one missing stops the offline install.
KAGGLE_IMAGE_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scipy", "pillow",
                         "matplotlib", "tqdm", "pip")
NEVER_BUNDLED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|pip|setuptools)$")
DEFAULT_EXTRAS = ("dlib",)           # what `best`'s default members (dlib_age) need
KAGGLE_PYTHON = "3.11"
KAGGLE_GLIBC = 35                    # Kaggle's image is Ubuntu 22.04: glibc 2.35
DEFAULT_SLUG = "facekit-bundle"
MANIFEST_NAME = "facekit-bundle.json"
METADATA_NAME = "dataset-metadata.json"
INSTALL_NAME = "install.py"
BUNDLE_FOLDER = "facekit-bundle"     # under .cache/kaggle-bundle/
UPLOADS_NAME = "uploaded.json"       # beside it: which content went to which dataset
SOURCE_DATE_EPOCH = "315532800"      # 1980-01-01: the kit's wheel is the same bytes for the same source


class BundleError(SubmitError):
    """The bundle cannot be built as asked; nothing was uploaded."""


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def bundle_home(root=None) -> Path:
    return Project.at(root).cache / "kaggle-bundle"


def bundle_folder(root=None) -> Path:
    return bundle_home(root) / BUNDLE_FOLDER


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


# ----------------------------------------------------------------------------- the folder
@dataclass
class Bundle:
    folder: Path
    manifest: dict
    changed: bool        # its content differs from the folder's previous content


def content_hash(entries: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(f"{name}\0{entries[name]}\n".encode())
    return digest.hexdigest()


def folds_files(project: Project) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(project.folds.glob("*.csv"))}


def build_bundle(*, dataset: str, extras: list[str], root=None, target: Target = Target(),
                 find_links: list[Path] = (), wheelhouse: Path | None = None, image: dict | None = None,
                 include: set[str] = frozenset(), source: Path | None = None, download=pip_download,
                 title: str = "facekit bundle") -> Bundle:
    """Build the dataset folder (kept as it is when its content is unchanged); return it and its manifest."""
    project = Project.at(root)
    source = Path(source) if source else Path(__file__).resolve().parents[2]
    home = bundle_home(project.root)
    folder = home / BUNDLE_FOLDER
    wheelhouse = Path(wheelhouse) if wheelhouse else home / "wheelhouse"
    meta = read_pyproject(source)
    installed = installed_distributions()
    if image is None:
        image = image_closure(KAGGLE_IMAGE_PACKAGES, installed)
    closure = resolve(project_requirements(meta, extras), target=target, image=image,
                      include={canonical(n) for n in include}, installed=installed, root_name=meta["name"])
    for note in closure.left_out:
        log(f"not bundled (Kaggle's image provides it): {note}")

    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=home))
    try:
        (staging / "wheels").mkdir()
        own = build_own_wheel(source, staging / "wheels")
        wanted = sorted(closure.wanted.values(), key=lambda w: canonical(w.name))
        wheels = gather_wheels(wanted, find_links=[Path(p) for p in find_links], wheelhouse=wheelhouse,
                               target=target, download=download)
        records = [{"file": own.name, "name": meta["name"], "version": meta["version"], "needed_by": [],
                    "bytes": own.stat().st_size, "digest": wheel_digest(own)}]
        for w in wanted:
            copy = staging / "wheels" / wheels[w.name].name
            _link_or_copy(wheels[w.name], copy)
            records.append({"file": copy.name, "name": w.name, "version": w.version, "needed_by": w.needed_by,
                            "bytes": copy.stat().st_size, "digest": wheel_digest(copy)})
        (staging / "folds").mkdir()
        folds = folds_files(project)
        for name in folds:
            shutil.copy2(project.folds / name, staging / "folds" / name)
        shutil.copyfile(Path(__file__).with_name("bundle_install.py"), staging / INSTALL_NAME)
        entries = {f"wheels/{r['file']}": r["digest"] for r in records}
        entries |= {f"folds/{name}": digest for name, digest in folds.items()}
        entries[INSTALL_NAME] = sha256_file(staging / INSTALL_NAME)
        entries["extras"] = ",".join(sorted(extras))
        spec = f"{meta['name']}[{','.join(extras)}]" if extras else meta["name"]
        manifest = {"format": 1, "dataset": dataset, "facekit_version": meta["version"], "extras": list(extras),
                    "requirement": f"{spec}=={meta['version']}", "content_sha256": content_hash(entries),
                    "created": now_utc(), "python_version": target.python_version, "platforms": list(target.platforms),
                    "wheels": records, "folds": folds, "image_requirements": closure.image_requirements,
                    "left_to_the_image": closure.left_out}
        write_json(staging / MANIFEST_NAME, manifest)
        write_json(staging / METADATA_NAME, dataset_metadata(dataset, title, manifest))
        previous = _read(folder / MANIFEST_NAME)
        changed = previous.get("content_sha256") != manifest["content_sha256"]
        if changed or previous.get("dataset") != dataset or not (folder / METADATA_NAME).is_file():
            old = home / f".{BUNDLE_FOLDER}.old-{os.getpid()}"
            if folder.exists():
                os.replace(folder, old)   # a folder cannot be renamed onto a full one: two steps
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            manifest = previous
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(r["bytes"] for r in manifest["wheels"])
    log(f"{folder}: {len(manifest['wheels'])} wheels ({total / 2**20:.1f} MiB), {len(manifest['folds'])} folds "
        f"file(s), content {manifest['content_sha256'][:12]}" + ("" if changed else " (unchanged)"))
    return Bundle(folder, manifest, changed)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _read(path: Path) -> dict:
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
    manifest = _read(path)
    if not manifest:
        raise SubmitError(f"no bundle at {path.parent}; run `facekit kaggle bundle` first")
    return manifest


def uploaded(root=None) -> dict:
    return _read(bundle_home(root) / UPLOADS_NAME).get("datasets", {})


def folds_differences(project: Project, shipped: dict[str, str]) -> list[str]:
    """How the project's folds files differ from the ones a bundle ships (empty when they are the same)."""
    local = folds_files(project)
    both, here, there = set(local) & set(shipped), set(local) - set(shipped), set(shipped) - set(local)
    problems = [f"folds/{name}: changed since the bundle was built" for name in sorted(both)
                if local[name] != shipped[name]]
    problems += [f"folds/{name}: made after the bundle was built (not in it)" for name in sorted(here)]
    problems += [f"folds/{name}: in the bundle, but not in {project.folds}" for name in sorted(there)]
    return problems


# ----------------------------------------------------------------------------- uploading
@dataclass(frozen=True)
class Waiting:
    """How long to wait for Kaggle to process a new dataset version."""
    interval: float = 5.0
    factor: float = 1.5
    max_interval: float = 30.0
    timeout: float = 900.0


def upload_bundle(bundle: Bundle, *, api=None, root=None, notes: str | None = None, retry: Retry = DEFAULT_RETRY,
                  waiting: Waiting = Waiting(), sleep=time.sleep, clock=time.monotonic) -> bool:
    """Create the dataset or a new version of it through the official client, unless this content is there
    already; wait until Kaggle has processed it. Returns whether anything was uploaded."""
    dataset = bundle.manifest["dataset"]
    records_path = bundle_home(root) / UPLOADS_NAME
    records = _read(records_path)
    done = records.get("datasets", {}).get(dataset, {})
    if done.get("content_sha256") == bundle.manifest["content_sha256"]:
        log(f"{dataset}: this content ({bundle.manifest['content_sha256'][:12]}) was uploaded on {done['time']}; "
            "nothing to upload")
        return False
    api = api or connect()
    exists = dataset_exists(api, dataset, retry)
    notes = notes or f"facekit {bundle.manifest['facekit_version']}, content {bundle.manifest['content_sha256'][:12]}"
    what = "a new version of" if exists else "the new dataset"
    size = sum(p.stat().st_size for p in bundle.folder.rglob("*") if p.is_file())
    log(f"uploading {bundle.folder} ({size / 2**20:.1f} MiB) as {what} {dataset} ...")

    def create():
        with contextlib.redirect_stdout(io.StringIO()) as said:  # the client prints progress and errors
            try:
                if exists:
                    return api.dataset_create_version(str(bundle.folder), notes, quiet=True, dir_mode="zip")
                return api.dataset_create_new(str(bundle.folder), public=False, quiet=True, dir_mode="zip")
            except ValueError as error:   # the client's way of saying an upload or the metadata failed
                printed = said.getvalue().strip()
                raise KaggleFault(f"uploading {dataset}: {error}" + (f" ({printed})" if printed else ""),
                                  kind="upload") from error

    response = _dataset_call(f"uploading {dataset}", create, dataset, Retry(attempts=1))
    if response is None or (getattr(response, "error", None) or "").strip():
        reason = response.error if response is not None else "no answer"
        raise KaggleFault(f"Kaggle refused the bundle {dataset}: {reason}", kind="refused")
    log(f"Kaggle accepted {dataset} ({response.url or 'no URL given'}); waiting until it is processed")
    wait_until_ready(api, dataset, retry=retry, waiting=waiting, sleep=sleep, clock=clock)
    records.setdefault("datasets", {})[dataset] = {"content_sha256": bundle.manifest["content_sha256"],
                                                   "time": now_utc(), "url": response.url or ""}
    write_json(records_path, records)
    log(f"{dataset}: uploaded and ready; attach it to a notebook, or run `facekit kaggle run -- COMMAND`")
    return True


def _dataset_call(what: str, call, dataset: str, retry: Retry):
    """call_with_retry, with a dataset's words for a 403 or 404 (kit/kaggle/api.py speaks of competitions)."""
    try:
        return call_with_retry(what, call, competition=None, retry=retry)
    except KaggleFault as fault:
        if fault.kind in ("forbidden", "not_found"):
            said = _said(fault)
            raise KaggleFault(f"{what}: Kaggle has no dataset {dataset} that these credentials may write "
                              f"({fault.kind}{said}); the slug's owner must be your user name",
                              kind=fault.kind) from fault
        raise


def _said(fault: BaseException) -> str:
    cause = fault.__cause__
    response = getattr(cause, "response", None)
    try:
        return f": {response.json().get('message')}" if response is not None else ""
    except ValueError:
        return ""


def dataset_exists(api, dataset: str, retry: Retry = DEFAULT_RETRY) -> bool:
    import requests

    def status():
        try:
            return api.dataset_status(dataset)
        except requests.exceptions.HTTPError as error:
            if error.response is not None and error.response.status_code == 404:
                return None
            raise

    return _dataset_call(f"asking for {dataset}", status, dataset, retry) is not None


def wait_until_ready(api, dataset: str, *, retry: Retry = DEFAULT_RETRY, waiting: Waiting = Waiting(),
                     sleep=time.sleep, clock=time.monotonic) -> str:
    deadline = clock() + waiting.timeout
    interval = waiting.interval
    while True:
        status = _dataset_call(f"asking for {dataset}", lambda: api.dataset_status(dataset), dataset, retry)
        if status == "ready":
            return status
        if status in ("failed", "deleted"):
            raise KaggleFault(f"Kaggle could not process the bundle {dataset} (status {status}); build and upload "
                              "it again", kind="refused")
        if clock() + interval > deadline:
            warn(f"{dataset} is still {status} after {waiting.timeout:.0f}s; a kernel pushed now may get the "
                 "previous version (the kernel checks the content and stops if so)")
            return status
        sleep(interval)
        interval = min(interval * waiting.factor, waiting.max_interval)


# ----------------------------------------------------------------------------- command line
def default_dataset(slug: str | None, *, dry_run: bool) -> tuple[str, object]:
    """OWNER/SLUG for --slug (default <username>/facekit-bundle) and the client, if it was connected."""
    if slug and "/" in slug:
        return slug, None
    owner = os.environ.get("KAGGLE_USERNAME")
    api = None
    if not owner and not dry_run:
        api = connect()
        owner = api.config_values.get("username")
    if not owner:
        owner = "USERNAME"
        log("dry run without KAGGLE_USERNAME: the dataset is written as USERNAME/...")
    return f"{owner}/{slug or DEFAULT_SLUG}", api


def check_slug(dataset: str) -> None:
    owner, _, slug = dataset.partition("/")
    if not owner or not re.fullmatch(r"[a-z0-9][a-z0-9-]{4,48}[a-z0-9]", slug or ""):
        raise BundleError(f"--slug {dataset}: a dataset is OWNER/SLUG with a slug of 6 to 50 lowercase letters, "
                          "digits and dashes")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit kaggle bundle", description=__doc__.split("\n\n")[0],
                                     epilog="The folder is .cache/kaggle-bundle/facekit-bundle/ under the project.")
    parser.add_argument("--extras", default=",".join(DEFAULT_EXTRAS),
                        help="the kit's extras to install, comma-separated, or none (default: %(default)s, what "
                             "best's default members need)")
    parser.add_argument("--slug", help=f"the dataset, [OWNER/]SLUG (default: <username>/{DEFAULT_SLUG})")
    parser.add_argument("--title", default="facekit bundle", help="the dataset's title (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="build the folder; upload nothing")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR",
                        help="a folder of wheels to take wheels from before downloading (repeatable)")
    parser.add_argument("--wheelhouse",
                        help="where downloaded wheels are kept (default: .cache/kaggle-bundle/wheelhouse)")
    parser.add_argument("--python-version", default=KAGGLE_PYTHON, help="Kaggle's Python (default: %(default)s)")
    parser.add_argument("--platform", action="append", metavar="TAG",
                        help=f"wheel platform tags (repeatable; default: manylinux up to glibc "
                             f"2.{KAGGLE_GLIBC}, x86_64)")
    parser.add_argument("--kaggle-image", metavar="FILE",
                        help="`pip list --format=freeze` of a Kaggle notebook: what its image has, with versions")
    parser.add_argument("--include", action="append", default=[], metavar="NAME",
                        help="bundle this distribution even if Kaggle's image has it (repeatable)")
    parser.add_argument("--notes", help="the dataset version's notes")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip() and e.strip().lower() != "none"]
    dataset, api = default_dataset(args.slug, dry_run=args.dry_run)
    check_slug(dataset)
    target = Target(args.python_version, tuple(args.platform) if args.platform else default_platforms())
    image = read_image_file(Path(args.kaggle_image)) if args.kaggle_image else None
    bundle = build_bundle(dataset=dataset, extras=extras, target=target, find_links=args.find_links,
                          wheelhouse=args.wheelhouse, image=image, include=set(args.include), title=args.title)
    if args.dry_run:
        log(f"dry run: {bundle.folder} is built; nothing uploaded (it would go to {dataset})")
        return 0
    upload_bundle(bundle, api=api, notes=args.notes)
    return 0
