"""Download a competition's files through the official Kaggle client into data/<slug>/.

    ./run.sh download [--competition SLUG] [--dest DIR] [--force]

A second call asks Kaggle once and does nothing when the archive is unchanged and the extracted
files are intact; afterwards `./run.sh cv MODEL` finds the data without --data.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kit.errors import SubmitError
from kit.files import exclusive_lock, sha256_file, write_json
from kit.kaggle.api import (
    Services,
    add_competition_argument,
    classify,
    competition,
    resolve_competition,
    services_or_default,
)
from kit.kaggle.ledger import now_utc
from kit.log import log
from kit.paths import Project

MAX_FILE_LIST_PAGES = 200                 # x 200 files a page, when looking for sample_submission.csv
MANIFEST_NAME = ".kaggle-download.json"   # inside data/<slug>/: what was downloaded, to skip a re-download


@dataclass
class DownloadResult:
    folder: Path
    downloaded: bool   # False when the files were already there and unchanged on Kaggle
    files: int


def download(slug: str | None = None, dest=None, *, root=None, force: bool = False, progress: bool = False,
             services: Services | None = None) -> DownloadResult:
    """Download and extract the competition's files into `dest` (default root/data/<slug>/).

    One call asks Kaggle for the archive; its size, Last-Modified and ETag are compared with the
    manifest of the last download, and when they match (and every extracted file is still there)
    nothing is downloaded. A new archive is extracted beside `dest` and swapped in whole.
    """
    slug = resolve_competition(slug)
    dest = Path(dest) if dest else Project.at(root).data / slug
    manifest_path = dest / MANIFEST_NAME
    if dest.exists() and not manifest_path.exists() and not force:
        raise SubmitError(f"{dest} exists but was not made by `download` (it has no {MANIFEST_NAME}); "
                          f"move it away, or pass --force to replace it")
    services = services_or_default(services)
    api = services.client()
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

    request = ApiDownloadDataFilesRequest()
    request.competition_name = slug
    with api.build_kaggle_client() as client:
        response = services.call(f"asking Kaggle for the files of '{slug}'",
                                 lambda: client.competitions.competition_api_client.download_data_files(request),
                                 competition(slug))
        remote = {"url": response.url.split("?")[0], "bytes": response.headers.get("Content-Length"),
                  "last_modified": response.headers.get("Last-Modified"), "etag": response.headers.get("ETag")}
        manifest = _read_json(manifest_path)
        if not force and _unchanged(dest, manifest, remote):
            response.close()
            log(f"{dest}: already downloaded, unchanged on Kaggle ({len(manifest['files'])} files); nothing to do")
            return DownloadResult(dest, False, len(manifest["files"]))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
        try:
            archive = staging / f"{slug}.zip"
            log(f"downloading the files of '{slug}' ({_size(remote['bytes'])}) ...")
            try:
                api.download_file(response, str(archive), client.http_client(), quiet=not progress)
            except Exception as error:  # noqa: BLE001 - turned into a KaggleFault when it is Kaggle's
                fault = classify(error, competition(slug))
                raise (fault or error) from error
            files = _extract(archive, staging / "extracted")
            write_json(staging / "extracted" / MANIFEST_NAME,
                       {"competition": slug, "downloaded": now_utc(), "remote": remote,
                        "archive_sha256": sha256_file(archive), "files": files})
            if dest.exists():
                os.replace(dest, staging / "previous")  # removed with staging below
            os.replace(staging / "extracted", dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"{dest}: {len(files)} files extracted{_where_train_is(dest)}")
    return DownloadResult(dest, True, len(files))


def _unchanged(dest: Path, manifest: dict, remote: dict) -> bool:
    identified = remote["etag"] or remote["last_modified"] or remote["bytes"]
    if not identified or manifest.get("remote") != remote:
        return False
    for entry in manifest.get("files", []):
        try:
            if (dest / entry["name"]).stat().st_size != entry["bytes"]:
                return False
        except OSError:
            return False
    return True


def _extract(archive: Path, target: Path) -> list[dict]:
    """Extract every member (zipfile drops absolute and '..' parts); return names and sizes."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target)
            return [{"name": info.filename, "bytes": info.file_size} for info in zf.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as error:
        raise SubmitError(f"the archive Kaggle sent is not a valid zip ({error}); try again") from error


def _where_train_is(dest: Path) -> str:
    from kit.data import find_competition_folder
    from kit.errors import DataError

    try:
        return f"; train.csv is in {find_competition_folder(dest)}"
    except DataError as error:
        return f"; warning: {error}"


def _size(content_length) -> str:
    return f"{int(content_length) / 2**20:.1f} MiB" if content_length else "size unknown"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def find_sample(slug: str, sample, sidecar: dict, root: Path, services: Services) -> Path:
    """The target competition's own sample submission: --sample, else the sidecar's when the sidecar was
    made for `slug`, else data/<slug>/'s, else sample_submission.csv from Kaggle. A sidecar made for
    another competition is never the reference: a file would pass against its own competition's ids."""
    if sample is not None:
        if not Path(sample).is_file():
            raise SubmitError(f"--sample {sample}: no such file")
        return Path(sample)
    recorded = sidecar.get("sample_submission")
    if recorded and sidecar.get("competition") == slug and Path(recorded).is_file():
        return Path(recorded)
    local = sorted((root / "data" / slug).rglob("sample_submission.csv"), key=lambda p: (len(p.parts), str(p)))
    if local:
        return local[0]
    cache = root / ".cache" / "kaggle" / slug
    # One process fetches at a time (two submits at once would unzip over each other), into a folder of
    # its own that is renamed into place whole.
    with exclusive_lock(cache.parent / f".{slug}.fetch.lock"):
        cached = sorted(cache.rglob("sample_submission.csv"))
        if cached:
            return cached[0]
        log(f"no sample_submission.csv for '{slug}' here (run facekit download); fetching it from Kaggle")
        api = services.client()
        name = services.call("finding sample_submission.csv",
                             lambda: _find_data_file(api, slug, "sample_submission.csv"), competition(slug))
        staging = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=cache.parent))
        try:
            services.call(f"downloading {name}", lambda: api.competition_download_file(
                slug, name, path=str(staging), force=True, quiet=True, unzip=True), competition(slug))
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(staging, cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return cache / name


def _find_data_file(api, slug: str, basename: str) -> str:
    page_token = None
    for _ in range(MAX_FILE_LIST_PAGES):
        response = api.competition_list_files(slug, page_token=page_token, page_size=200)
        names = [f.name for f in response.files if f.name.rsplit("/", 1)[-1] == basename]
        if names:
            return min(names, key=len)
        page_token = response.next_page_token
        if not page_token:
            break
    raise SubmitError(f"'{slug}' has no {basename} among its data files; pass --sample PATH")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facekit download", description="Download the competition's files "
                                     "into data/<slug>/ and extract them; nothing happens when they are unchanged.")
    add_competition_argument(parser)
    parser.add_argument("--dest", help="folder to extract into (default data/<slug>/)")
    parser.add_argument("--force", action="store_true", help="download again even when unchanged")
    args = parser.parse_args(argv)
    download(args.competition, args.dest, force=args.force, progress=sys.stderr.isatty())
    return 0
