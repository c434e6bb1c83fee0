"""Kaggle datasets through the official client: creating or versioning the bundle's dataset, waiting until
Kaggle has it ready, and the dataset names the kit uses."""
from __future__ import annotations

import re

from kit.errors import KaggleFault
from kit.files import write_json
from kit.kaggle.api import Polling, Services, Subject
from kit.kaggle.bundle import UPLOADS_NAME, Bundle, bundle_home, read_record
from kit.kaggle.ledger import now_utc
from kit.kaggle.wheels import BundleError
from kit.log import log, warn

DATASET_POLLING = Polling(interval=5.0, factor=1.5, max_interval=30.0, timeout=900.0)   # a new version processed


# ----------------------------------------------------------------------------- uploading
def upload_bundle(bundle: Bundle, *, root=None, notes: str | None = None, services: Services | None = None) -> bool:
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
    services = services or Services()
    api = services.client()
    exists = dataset_exists(services, dataset)
    notes = notes or f"facekit {bundle.manifest['facekit_version']}, content {bundle.manifest['content_sha256'][:12]}"
    what = "a new version of" if exists else "the new dataset"
    size = sum(p.stat().st_size for p in bundle.folder.rglob("*") if p.is_file())
    log(f"uploading {bundle.folder} ({size / 2**20:.1f} MiB) as {what} {dataset} ...")

    def create():
        if exists:
            return api.dataset_create_version(str(bundle.folder), notes, quiet=True, dir_mode="zip")
        return api.dataset_create_new(str(bundle.folder), public=False, quiet=True, dir_mode="zip")

    response = services.send(f"uploading {dataset}", create, Subject("dataset", dataset))
    if response is None or (getattr(response, "error", None) or "").strip():
        reason = response.error if response is not None else "no answer"
        raise KaggleFault(f"Kaggle refused the bundle {dataset}: {reason}", kind="refused")
    log(f"Kaggle accepted {dataset} ({response.url or 'no URL given'}); waiting until it is processed")
    wait_until_ready(services, dataset)
    records.setdefault("datasets", {})[dataset] = {"content_sha256": bundle.manifest["content_sha256"],
                                                   "time": now_utc(), "url": response.url or ""}
    write_json(records_path, records)
    log(f"{dataset}: uploaded and ready; attach it to a notebook, or run `facekit kaggle run -- COMMAND`")
    return True


def dataset_exists(services: Services, dataset: str) -> bool:
    return services.call(f"asking for {dataset}", lambda: services.client().dataset_status(dataset),
                         Subject("dataset", dataset), missing_ok=True) is not None


def wait_until_ready(services: Services, dataset: str) -> str:
    def read():
        return services.call(f"asking for {dataset}", lambda: services.client().dataset_status(dataset),
                             Subject("dataset", dataset))

    status, _ = services.poll(read, lambda status: status in ("ready", "failed", "deleted"), default=DATASET_POLLING)
    if status in ("failed", "deleted"):
        raise KaggleFault(f"Kaggle could not process the bundle {dataset} (status {status}); build and upload "
                          "it again", kind="refused")
    if status != "ready":
        warn(f"{dataset} is still {status}; a kernel pushed now may get the previous version (the kernel checks "
             "the content and stops if so)")
    return status


# ----------------------------------------------------------------------------- command line
def check_slug(dataset: str) -> None:
    owner, _, slug = dataset.partition("/")
    if not owner or not re.fullmatch(r"[a-z0-9][a-z0-9-]{4,48}[a-z0-9]", slug or ""):
        raise BundleError(f"--slug {dataset}: a dataset is OWNER/SLUG with a slug of 6 to 50 lowercase letters, "
                          "digits and dashes")
