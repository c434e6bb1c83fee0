"""Code competitions: a kernel version's output submitted through Kaggle's CreateCodeSubmission, with the
file submission's validation, ledger, duplicate guard and score polling (kit/kaggle/submit.py)."""
from __future__ import annotations

from functools import partial

from kit.errors import SubmitError
from kit.kaggle.api import Services
from kit.kaggle.kernel_output import kernel_output_file
from kit.kaggle.submit import SubmitResult, create_submission, submit_with


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
    create = partial(create_submission, kernel=kernel, version=version, file_name=file_name)
    return submit_with(create, path, message, slug, root=root, services=services, label=f"{kernel} v{version}",
                       **options)
