"""A kernel version's output, downloaded into runs/kaggle/<kernel>/v<N>/ and laid out like local runs, so that
`facekit ensemble` and `facekit submit` read them as they read the project's own."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from kit.errors import SubmitError
from kit.files import read_json, replace_folder, sha256_file, staging_folder, write_json, write_text
from kit.kaggle.api import Services
from kit.kaggle.bundle import read_record
from kit.kaggle.kernels import (
    RECORD_NAME,
    TERMINAL,
    failed,
    kernel,
    kernel_status,
    kernels_home,
    log_text,
    output_dir,
    wait_for_kernel,
)
from kit.kaggle.ledger import now_utc
from kit.log import log, warn
from kit.paths import Project


# ----------------------------------------------------------------------------- the output
def download_output(services: Services, ref: str, version: int, *, root=None, force: bool = False) -> Path:
    """Download a COMPLETE version's output into runs/kaggle/<slug>/v<N>/ (runs at <model>/<name>/, the rest
    under output/), made usable here: each run's data_dir points at this project's copy of the competition
    where it has one, and folds files the project lacks are added to folds/."""
    project = Project.at(root)
    slug = ref.split("/", 1)[1]
    dest = output_dir(slug, version, project.root)
    if (dest / RECORD_NAME).is_file() and not force:
        log(f"{dest}: downloaded before; nothing to do (--force downloads it again)")
        return dest
    with staging_folder(dest) as staging:
        raw = staging / "raw"

        def fetch():
            with contextlib.redirect_stdout(io.StringIO()):
                return services.client().kernels_output(f"{ref}/{version}", str(raw), force=True, quiet=True)

        files, _ = services.call(f"downloading the output of {ref} version {version}", fetch, kernel(ref, version))
        out = staging / "out"
        out.mkdir()
        log_file = raw / f"{slug}.log"
        if log_file.is_file():
            write_text(out / "kernel.log", log_text(log_file.read_text()))
            log_file.unlink()
        if (raw / "runs").is_dir():
            for model in sorted((raw / "runs").iterdir()):
                if model.is_dir() and model.name not in ("output", "kaggle"):
                    shutil.move(str(model), str(out / model.name))
            shutil.rmtree(raw / "runs")
        if raw.is_dir() and any(raw.iterdir()):
            shutil.move(str(raw), str(out / "output"))
        runs = [p.parent for p in sorted(out.glob("*/*/config.json")) if p.parent.parent.name != "output"]
        for run in runs:
            _localise(run, project)
        pushed = read_record(kernels_home(project.root) / slug / f"v{version}.json")
        write_json(out / RECORD_NAME, {"kernel": ref, "version": version, "downloaded": now_utc(),
                                       "files": len(files), **pushed,
                                       "runs": [str(r.relative_to(out)) for r in runs]})
        replace_folder(out, dest, staging)
    _adopt_folds(dest / "output" / "folds", project)
    _say_what_came(dest, project)
    return dest


def _localise(run: Path, project: Project) -> None:
    """Point a downloaded run's data_dir at this project's copy of its competition (data/<name>/), keeping
    Kaggle's as kaggle_data_dir, so that ensemble and submit find sample_submission.csv here."""
    from kit.data import find_competition_folder
    from kit.errors import DataError

    config = read_json(run / "config.json")
    if Path(config.get("data_dir", "")).is_dir():
        return
    local = project.data / str(config.get("competition", ""))
    try:
        folder = find_competition_folder(local) if local.is_dir() else None
    except DataError:
        folder = None
    if folder is not None:
        config["kaggle_data_dir"] = config["data_dir"]
        config["data_dir"] = str(folder.resolve())
        write_json(run / "config.json", config)


def _adopt_folds(folder: Path, project: Project) -> None:
    """Folds files the kernel made that the project lacks join folds/; a different one is only reported."""
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        mine = project.folds / path.name
        if not mine.exists():
            project.folds.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, mine)
            log(f"added {mine} (made by the kernel; local runs on it blend with the kernel's)")
        elif sha256_file(mine) != sha256_file(path):
            warn(f"warning: the kernel's {path.name} differs from {mine}: its runs cannot be blended with local runs "
                 "on that file")


def _say_what_came(dest: Path, project: Project) -> None:
    shown = dest.relative_to(project.runs)   # output_dir is under it
    runs = [p.parent for p in sorted(dest.glob("*/*/config.json")) if p.parent.parent.name != "output"]
    log(f"downloaded into {dest}: {len(runs)} run(s)")
    for run in runs:
        metrics = read_record(run / "metrics.json").get("overall", {})
        score = f"  out-of-fold score {metrics['score']:.4f}" if "score" in metrics else "  (incomplete)"
        log(f"  {shown}/{run.parent.name}/{run.name}{score}")
    if (dest / "output" / "submission.csv").is_file():
        log(f"  {dest / 'output' / 'submission.csv'} (what a code competition would read)")
    if runs:
        log(f"next: facekit ensemble {shown}/{runs[0].parent.name}/{runs[0].name} MODEL/NAME   # with a local run")


def kernel_output_file(ref: str, version: int, file_name: str = "submission.csv", *, root=None,
                       services: Services | None = None) -> Path:
    """A file of a COMPLETE version's output (runs/kaggle/<slug>/v<N>/output/<file_name>), downloaded if
    it is not here yet."""
    slug = ref.split("/", 1)[1]
    path = output_dir(slug, version, root) / "output" / file_name
    if path.is_file():
        return path
    services = services or Services()
    response = kernel_status(services, ref, version)
    if response.status.name != "COMPLETE":
        if response.status.name in TERMINAL:
            raise failed(services, ref, version, response)
        raise SubmitError(f"{ref} version {version} is {response.status.name.lower()}, not complete: its output "
                          f"cannot be submitted yet (`facekit kaggle output {ref} --version {version}` waits for it)")
    download_output(services, ref, version, root=root, force=True)
    if not path.is_file():
        raise SubmitError(f"{ref} version {version} wrote no {file_name} (its output is in {path.parent.parent})")
    return path


def finish(services: Services, ref: str, version: int, *, root=None, force: bool = False) -> Path:
    """Wait for a pushed version; download its output when COMPLETE, else raise Kaggle's failure."""
    response = wait_for_kernel(services, ref, version)
    if response.status.name != "COMPLETE":
        raise failed(services, ref, version, response)
    return download_output(services, ref, version, root=root, force=force)
