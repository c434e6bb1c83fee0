"""Kaggle datasets through the official client: creating or versioning the bundle's dataset, waiting until
Kaggle has it ready, and the dataset names the kit uses."""
from __future__ import annotations

import contextlib
import io
import os
import re
import time
from dataclasses import dataclass

from kit.errors import KaggleFault
from kit.files import write_json
from kit.kaggle.api import DEFAULT_RETRY, Retry, call_with_retry, connect
from kit.kaggle.bundle import DEFAULT_SLUG, UPLOADS_NAME, Bundle, bundle_home, read_record
from kit.kaggle.ledger import now_utc
from kit.kaggle.wheels import BundleError
from kit.log import log, warn


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
    records = read_record(records_path)
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
        with contextlib.redirect_stdout(io.StringIO()) as printed_by_client:  # it prints progress and errors
            try:
                if exists:
                    return api.dataset_create_version(str(bundle.folder), notes, quiet=True, dir_mode="zip")
                return api.dataset_create_new(str(bundle.folder), public=False, quiet=True, dir_mode="zip")
            except ValueError as error:   # the client's way of saying an upload or the metadata failed
                printed = printed_by_client.getvalue().strip()
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
            reason = kaggle_said(fault)
            raise KaggleFault(f"{what}: Kaggle has no dataset {dataset} that these credentials may write "
                              f"({fault.kind}{reason}); the slug's owner must be your user name",
                              kind=fault.kind) from fault
        raise


def kaggle_said(fault: BaseException) -> str:
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
