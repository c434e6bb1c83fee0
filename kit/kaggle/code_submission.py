"""Code competitions: a kernel version's output submitted through Kaggle's CreateCodeSubmission, with the
file submission's validation, ledger, duplicate guard and score polling (kit/kaggle/submit.py)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from kit.errors import KaggleFault, SubmitError
from kit.files import sha256_file
from kit.kaggle.api import Services, competition
from kit.kaggle.kernel_output import kernel_output_file
from kit.kaggle.submit import SubmitResult, _read_sidecar, _submissions, submit_with


def create_code_submission(services: Services, path: Path, message: str, slug: str, *, kernel: str, version: int,
                           file_name: str = "submission.csv") -> int:
    """A code competition's submission: Kaggle takes `file_name` from the kernel version's own output (`path`
    is the local copy, validated and recorded). As with a file, a lost answer is looked for before a retry."""
    before = {s.ref for s in _submissions(services, slug)}

    def attempt() -> int:
        response = services.client().competition_submit_code(file_name, message, slug, kernel=kernel,
                                                              kernel_version=version, quiet=True)
        if response.ref:
            return int(response.ref)
        found = made_anyway()
        if found is not None:
            return found
        raise KaggleFault(f"Kaggle answered {response.message!r} without confirming a submission of {kernel} "
                          f"version {version}; nothing was recorded", kind="refused")

    def made_anyway() -> int | None:
        try:
            new = [s for s in _submissions(services, slug, once=True) if s.ref not in before
                   and (s.description or "") == message]
        except KaggleFault:
            return None
        return max(s.ref for s in new) if new else None

    return services.call(f"submitting {kernel} version {version}", attempt, competition(slug),
                         before_retry=made_anyway)


def submit_kernel(kernel: str, version: int, message: str | None = None, slug: str | None = None, *,
                  file_name: str = "submission.csv", root=None, services: Services | None = None,
                  **options) -> SubmitResult:
    """Submit a kernel version's output to a code competition: its `file_name` is downloaded (if it is not
    here yet) and validated first; ledger, duplicate guard and score polling are submit()'s (`options`:
    sample, dry_run, wait, force)."""
    if kernel.count("/") != 1:
        raise SubmitError(f"--kernel {kernel}: a kernel is OWNER/SLUG")
    services = services or Services()
    path = kernel_output_file(kernel, version, file_name, root=root, services=services)
    if message is None:
        sidecar = _read_sidecar(path)
        cv = sidecar.get("cv_score") if sidecar.get("sha256") == sha256_file(path) else None
        message = f"{kernel} v{version}" + (f" (CV {float(cv):.4f})" if cv is not None else "")
    create = partial(create_code_submission, kernel=kernel, version=version, file_name=file_name)
    return submit_with(create, path, message, slug, root=root, services=services, **options)
