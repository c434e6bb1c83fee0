"""A stand-in for the machine a Kaggle kernel runs on, for tests/kaggle_server.py to run pushed kernels in.

    python = image_python(folder)           # a venv (with pip) that has only what Kaggle's image has
    runner = SandboxRunner(python)          # KaggleServer(kernel_runner=runner): pushed kernels really run
    wheels = repack_installed(names, dest)  # wheels of installed distributions, offline (a test wheelhouse)

The sandbox: `unshare --mount --net` (as root) gives the kernel a private mount table and no network at
all (not even loopback, so the fake Kaggle is out of reach too). In it a tmpfs becomes the new root, the
host's top-level folders are bind-mounted into it, /kaggle/input/<name>/ are the competition and the
attached datasets (read-only, unpacked as Kaggle mounts them), /kaggle/working is an empty folder and
/kaggle/src holds the script; then chroot and run the script from /kaggle/working with a bare
environment. The kit's real paths (/kaggle/...) are used: nothing points it at a temporary folder.

The image Python: a venv without packages of its own whose site-packages has a .pth naming a folder of
symlinks to the installed files of kit.kaggle.wheels.KAGGLE_IMAGE_PACKAGES and everything they need
(torch, numpy, pandas, ..., pip), so `pip install --no-index` has to bring every other package itself.

From a shell (for scripts/kaggle_acceptance.sh):  python tests/kaggle_sandbox.py image-python FOLDER [--newest]
(--newest: numpy, pandas, scikit-learn, scipy, pillow, matplotlib and tqdm at today's releases, from the index).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for kit.*

from kit.kaggle.wheels import KAGGLE_IMAGE_PACKAGES, canonical, image_closure, installed_distributions  # noqa: E402

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"


# ----------------------------------------------------------------------------- can it run here?
def sandbox_unavailable() -> str | None:
    """Why kernels cannot be sandboxed here, or None when they can."""
    if os.geteuid() != 0:
        return "the kernel sandbox needs root (unshare --mount --net, mount, chroot); not root here"
    for tool in ("unshare", "mount", "chroot"):
        if shutil.which(tool) is None:
            return f"the kernel sandbox needs `{tool}`, which is not installed here"
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(["unshare", "--mount", "--net", "sh", "-c",
                               f"mount --make-rprivate / && mount -t tmpfs tmpfs {folder}"],
                              capture_output=True, text=True)
    if done.returncode != 0:
        return f"unshare --mount --net with a tmpfs mount fails here: {done.stderr.strip() or done.returncode}"
    return None


# ----------------------------------------------------------------------------- the image's Python
def site_packages(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())


def fresh_venv(template: Path, dest: Path) -> Path:
    """A new venv like `template` (the image Python): what a kernel installs never reaches the next one."""
    subprocess.run([str(template), "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    target = site_packages(python)
    for pth in site_packages(template).glob("*.pth"):
        shutil.copyfile(pth, target / pth.name)
    return python


def image_python(folder: Path, packages=(*KAGGLE_IMAGE_PACKAGES,), newest=()) -> Path:
    """A venv at folder/venv seeing only `packages` and their closure (symlinks in folder/image). `newest`:
    packages installed at today's releases from the index into folder/newest (with what they need), which
    comes first on the path: an image that has moved on from the versions the kit was built against."""
    folder = Path(folder)
    venv, image, newer = folder / "venv", folder / "image", folder / "newest"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    installed = installed_distributions()
    names = image_closure(packages, installed)
    image.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        dist = installed.get(name)
        if dist is None:
            continue
        for top in sorted({Path(str(f)).parts[0] for f in dist.dist.files or [] if not str(f).startswith("..")}):
            link = image / top
            if not link.exists() and not link.is_symlink():
                link.symlink_to(Path(dist.dist.locate_file(top)).resolve())
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    if newest:
        # --target implies --ignore-installed: every dependency lands in the folder, at its newest release.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-conflicts",
                        "--only-binary=:all:", "--target", str(newer), *newest], check=True)
    # One .pth, its lines in order: the newer folder's packages shadow the image's.
    (site_packages(python) / "kaggle-image.pth").write_text("".join(f"{p}\n" for p in (newer, image) if p.exists()))
    return python


def newest_releases() -> list[str]:
    """Kaggle's usual packages whose newest release an image would have moved to: all but torch and torchvision
    (the installed ones are today's; their CUDA builds are what an image pins) and the tools."""
    return [p for p in KAGGLE_IMAGE_PACKAGES if p not in ("torch", "torchvision", "pip", "requests")]


# ----------------------------------------------------------------------------- wheels, offline
def repack_installed(names, dest: Path) -> list[Path]:
    """A wheel of each installed distribution named, rebuilt from its RECORD (files outside site-packages,
    such as console scripts, are left out: pip writes them again from entry_points.txt). Stored, not
    compressed: quick to write and to install."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    installed = installed_distributions()
    wheels = []
    for name in names:
        dist = installed[canonical(name)].dist
        info = next(Path(str(f)).parts[0] for f in dist.files if str(f).endswith(".dist-info/METADATA"))
        wheel_text = Path(dist.locate_file(f"{info}/WHEEL")).read_text()
        tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")]
        parts = [sorted({t.split("-")[i] for t in tags or ["py3-none-any"]}) for i in range(3)]
        stem = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}"
        path = dest / f"{stem}-{'-'.join('.'.join(p) for p in parts)}.whl"
        if not path.exists():
            _write_wheel(dist, info, path)
        wheels.append(path)
    return wheels


def _write_wheel(dist, info: str, path: Path) -> None:
    skip = {f"{info}/RECORD", f"{info}/INSTALLER", f"{info}/REQUESTED", f"{info}/direct_url.json"}
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for entry in sorted(str(f) for f in dist.files):
            if entry.startswith("..") or entry in skip or "__pycache__" in entry or entry.endswith(".pyc"):
                continue
            source = Path(dist.locate_file(entry))
            if not source.is_file():
                continue
            data = source.read_bytes()
            archive.writestr(entry, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([entry, f"sha256={digest}", len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        archive.writestr(f"{info}/RECORD", record.getvalue())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- running a kernel
@dataclass
class KernelResult:
    exit_code: int
    log: list[dict]              # Kaggle's log entries: {stream_name, time, data}
    failure_message: str | None


SCRIPT = r"""
set -eu
root="$1"; working="$2"; source="$3"; home="$4"; shift 4
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$root"
for entry in /*; do
    name="${entry#/}"
    case "$name" in kaggle|proc|sys|dev|tmp|lost+found) continue ;; esac
    if [ -L "$entry" ]; then cp -P "$entry" "$root/$name"
    elif [ -d "$entry" ]; then mkdir "$root/$name"; mount --rbind "$entry" "$root/$name"
    fi
done
for name in proc sys dev; do mkdir "$root/$name"; mount --rbind "/$name" "$root/$name"; done
mkdir "$root/tmp"; mount --bind /tmp "$root/tmp"      # not recursive: the new root lives under /tmp
mkdir -p "$root/kaggle/input" "$root/kaggle/working" "$root/kaggle/src"
while [ "$#" -gt 1 ] && [ "$1" != "--" ]; do          # NAME SOURCE pairs: the inputs, read-only
    mkdir -p "$root/kaggle/input/$1"; mount --bind "$2" "$root/kaggle/input/$1"
    mount -o remount,bind,ro "$root/kaggle/input/$1"; shift 2
done
shift
mount --bind "$working" "$root/kaggle/working"
mount --bind "$source" "$root/kaggle/src"; mount -o remount,bind,ro "$root/kaggle/src"
exec chroot "$root" /bin/sh -c 'cd /kaggle/working && exec "$@"' sh env -i PATH="{path}" HOME="$home" \
    LANG=C.UTF-8 KAGGLE_KERNEL_RUN_TYPE=Batch KAGGLE_DATA_PROXY_PROJECT=facekit-local PIP_CONFIG_FILE=/dev/null \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MPLBACKEND=Agg "$@"
""".replace("{path}", SANDBOX_PATH)


class SandboxRunner:
    """Runs a kernel's script the way Kaggle would, in the sandbox described above, each time with a new venv
    made like `python` (so nothing one kernel installs is there for the next)."""

    def __init__(self, python: Path, *, timeout: float = 600.0):
        self.python = Path(python)
        self.timeout = timeout

    def __call__(self, *, source: str, code_file: str, inputs: dict[str, Path], workdir: Path,
                 timeout: float | None = None) -> tuple[KernelResult, Path]:
        workdir = Path(workdir)
        src, working, home, root = (workdir / n for n in ("src", "working", "home", "root"))
        for folder in (src, working, home, root):
            folder.mkdir(parents=True, exist_ok=True)
        python = fresh_venv(self.python, workdir / "venv")   # every session starts from the bare image
        (src / code_file).write_text(source)
        pairs = [str(v) for name, path in inputs.items() for v in (name, path)]
        command = ["unshare", "--mount", "--net", "sh", "-c", SCRIPT, "sandbox", str(root), str(working), str(src),
                   str(home), *pairs, "--", str(python), f"/kaggle/src/{code_file}"]
        started = time.monotonic()
        entries: list[dict] = []
        lock = threading.Lock()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def read(stream, name):
            for line in stream:
                with lock:
                    entries.append({"stream_name": name, "time": round(time.monotonic() - started, 3), "data": line})

        readers = [threading.Thread(target=read, args=(process.stdout, "stdout"), daemon=True),
                   threading.Thread(target=read, args=(process.stderr, "stderr"), daemon=True)]
        for reader in readers:
            reader.start()
        limit = timeout or self.timeout
        try:
            code = process.wait(timeout=limit)
            failure = None if code == 0 else f"Kernel run failed: the script exited with code {code}"
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            failure = f"Kernel run exceeded its time limit of {limit:.0f} seconds"
        for reader in readers:
            reader.join(timeout=5)
        shutil.rmtree(root, ignore_errors=True)   # an empty mount point once the namespace is gone
        return KernelResult(code, entries, failure), working


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    newest = "--newest" in argv
    argv = [a for a in argv if a != "--newest"]
    if len(argv) != 2 or argv[0] != "image-python":
        print(__doc__)
        return 2
    print(image_python(Path(argv[1]), newest=newest_releases() if newest else ()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
