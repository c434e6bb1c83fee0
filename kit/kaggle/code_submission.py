"""Code competitions: a kernel version's output submitted through Kaggle's CreateCodeSubmission, with the
file submission's validation, ledger, duplicate guard and score polling (kit/kaggle/submit.py)."""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from kit.errors import KaggleFault, SubmitError
from kit.files import sha256_file
from kit.kaggle.api import DEFAULT_RETRY, Retry, call_with_retry
from kit.kaggle.kernel_output import kernel_output_file
from kit.kaggle.submit import SubmitResult, _read_sidecar, _submissions, submit


def create_code_submission(api, path: Path, message: str, slug: str, *, kernel: str, version: int,
                           file_name: str = "submission.csv", retry: Retry, sleep=time.sleep) -> int:
    """A code competition's submission: Kaggle takes `file_name` from the kernel version's own output (`path`
    is the local copy, validated and recorded). As with a file, a lost answer is looked for before a retry."""
    before = {s.ref for s in _submissions(api, slug, retry)}

    def attempt() -> int:
        response = api.competition_submit_code(file_name, message, slug, kernel=kernel, kernel_version=version,
                                               quiet=True)
        if response.ref:
            return int(response.ref)
        found = made_anyway()
        if found is not None:
            return found
        raise KaggleFault(f"Kaggle answered {response.message!r} without confirming a submission of {kernel} "
                          f"version {version}; nothing was recorded", kind="refused")

    def made_anyway() -> int | None:
        try:
            new = [s for s in _submissions(api, slug, Retry(attempts=1)) if s.ref not in before
                   and (s.description or "") == message]
        except KaggleFault:
            return None
        return max(s.ref for s in new) if new else None

    return call_with_retry(f"submitting {kernel} version {version}", attempt, competition=slug, retry=retry,
                           before_retry=made_anyway, sleep=sleep)


def submit_kernel(kernel: str, version: int, message: str | None = None, competition: str | None = None, *,
                  file_name: str = "submission.csv", root=None, api=None, retry: Retry = DEFAULT_RETRY,
                  **options) -> SubmitResult:
    """Submit a kernel version's output to a code competition: its `file_name` is downloaded (if it is not
    here yet) and validated first; ledger, duplicate guard and score polling are submit()'s."""
    if kernel.count("/") != 1:
        raise SubmitError(f"--kernel {kernel}: a kernel is OWNER/SLUG")
    path = kernel_output_file(kernel, version, file_name, root=root, api=api, retry=retry)
    if message is None:
        sidecar = _read_sidecar(path)
        cv = sidecar.get("cv_score") if sidecar.get("sha256") == sha256_file(path) else None
        message = f"{kernel} v{version}" + (f" (CV {float(cv):.4f})" if cv is not None else "")
    create = partial(create_code_submission, kernel=kernel, version=version, file_name=file_name)
    return submit(path, message, competition, root=root, api=api, retry=retry, create=create, **options)
