"""`facekit kaggle run -- COMMAND ...`: run facekit commands in a Kaggle script kernel with the bundle
attached, wait for it, and download its output (docs/kaggle.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit.errors import SubmitError
from kit.files import write_json
from kit.kaggle import bundle as bundles
from kit.kaggle.api import Services, owner_ref, resolve_competition
from kit.kaggle.kernel_output import finish
from kit.kaggle.kernels import (
    DEFAULT_KERNEL,
    accelerator,
    check_kernel_slug,
    kernel_metadata,
    kernel_source,
    kernels_home,
    push_kernel,
    write_kernel_folder,
)
from kit.kaggle.ledger import now_utc
from kit.log import log
from kit.paths import Project


# ----------------------------------------------------------------------------- run
@dataclass
class KaggleRun:
    ref: str
    version: int | None          # None on a dry run
    folder: Path                 # the kernel folder pushed
    output: Path | None          # runs/kaggle/<slug>/v<N>/, once downloaded


@dataclass(frozen=True)
class KernelSpec:
    """The kernel `facekit kaggle run` pushes: its [OWNER/]SLUG, the competition attached, the machine, and
    what its script does besides running the commands."""
    kernel: str | None = None            # default <username>/facekit-run
    competition: str | None = None       # default $KAGGLE_COMPETITION, else the project's
    gpu: str = "t4x2"
    internet: bool = False
    keep_checkpoints: bool = False
    session_timeout: float | None = None


def checked_bundle(project: Project, competition: str, *, uploaded: bool) -> dict:
    """The project's bundle manifest, refused when its folds are not the project's (runs on other folds do
    not blend with the local ones) or, when `uploaded`, when it is not the content uploaded."""
    manifest = bundles.read_bundle(project.root)
    differences = bundles.folds_differences(project, manifest["folds"])
    if differences:
        raise SubmitError("the project's folds differ from the bundle's, so runs made on Kaggle would not blend "
                          "with the local ones:\n  - " + "\n  - ".join(differences)
                          + "\nrun `facekit kaggle bundle` to ship the current folds; nothing was pushed")
    record = bundles.uploaded(project.root).get(manifest["dataset"], {})
    if uploaded and record.get("content_sha256") != manifest["content_sha256"]:
        raise SubmitError(f"the bundle in {bundles.bundle_folder(project.root)} (content "
                          f"{manifest['content_sha256'][:12]}) is not the one uploaded to {manifest['dataset']}; run "
                          "`facekit kaggle bundle` first; nothing was pushed")
    if not any(name.startswith(f"{competition}-") for name in manifest["folds"]):
        log(f"note: the bundle ships no folds file named for '{competition}'; the kernel reuses a shipped one of "
            "the same training ids, else makes its own (and the download adds it to folds/)")
    return manifest


def run_on_kaggle(commands: list[list[str]], spec: KernelSpec = KernelSpec(), *, wait: bool = True,
                  dry_run: bool = False, root=None, services: Services | None = None) -> KaggleRun:
    """Push `commands` as a script kernel with the project's bundle attached, wait for it and download
    its output. Everything that can refuse (commands, folds, bundle) refuses before anything is sent."""
    kernel, gpu = spec.kernel, spec.gpu
    services = services or Services()
    project = Project.at(root)
    accelerator(gpu)
    slug = kernel.split("/")[-1] if kernel else DEFAULT_KERNEL
    check_kernel_slug(slug)
    competition = resolve_competition(spec.competition)
    manifest = checked_bundle(project, competition, uploaded=not dry_run)
    ref = owner_ref(kernel, DEFAULT_KERNEL, dry_run=dry_run, services=services)
    folder = kernels_home(project.root) / slug
    metadata = kernel_metadata(ref=ref, competition=competition, bundle=manifest["dataset"], gpu=gpu,
                               internet=spec.internet)
    write_kernel_folder(folder, metadata, kernel_source(bundle=manifest, commands=commands,
                                                        keep_checkpoints=spec.keep_checkpoints))
    shown = "; ".join("facekit " + " ".join(c) for c in commands)
    if dry_run:
        log(f"dry run: wrote {folder} ({metadata['code_file']}, kernel-metadata.json) to run `{shown}` on "
            f"{gpu}; nothing pushed")
        return KaggleRun(ref, None, folder, None)
    if gpu == "p100":
        log("note: the client calls the P100 retired; Kaggle runs such a session on its default GPU (a T4)")
    version, url = push_kernel(services, folder, ref=ref, session_timeout=spec.session_timeout)
    write_json(folder / f"v{version}.json", {"kernel": ref, "version": version, "pushed": now_utc(),
                                              "commands": commands, "gpu": gpu, "competition": competition,
                                              "bundle": manifest["dataset"],
                                              "bundle_content_sha256": manifest["content_sha256"]})
    log(f"pushed {ref} version {version} ({url}): `{shown}` on {gpu}")
    if not wait:
        log(f"not waiting; `facekit kaggle output {ref} --version {version}` waits for it and downloads its output")
        return KaggleRun(ref, version, folder, None)
    return KaggleRun(ref, version, folder, finish(services, ref, version, root=project.root))
