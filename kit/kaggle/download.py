"""Download a competition's files through the official Kaggle client into data/<slug>/.

    ./run.sh download [--competition SLUG] [--dest DIR] [--force]

The archive is kept beside the folder (data/<slug>.zip, the client's own name for it), so that a second
call leaves the client to decide whether it changed on Kaggle. Afterwards `./run.sh cv MODEL` finds the
data without --data.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from kit.errors import SubmitError
from kit.files import exclusive_lock, replace_folder, staging_folder
from kit.kaggle.api import (
    Services,
    add_competition_argument,
    classify,
    competition,
    resolve_competition,
)
from kit.log import log
from kit.paths import Project

MAX_FILE_LIST_PAGES = 200                 # x 200 files a page, when looking for sample_submission.csv
LEGACY_MANIFEST = ".kaggle-download.json"  # what an earlier version left in the folders it made


@dataclass
class DownloadResult:
    folder: Path
    downloaded: bool   # False when the archive here was already Kaggle's current one
    files: int


def download(slug: str | None = None, dest=None, *, root=None, force: bool = False, progress: bool = False,
             services: Services | None = None) -> DownloadResult:
    """Download the competition's archive beside `dest` (default root/data/<slug>/) and extract it there.

    The client's `download_needed` (the archive here as large as Content-Length and not older than
    Last-Modified) decides whether to download; the archive is extracted when it was downloaded, or when a
    file of its listing is missing from `dest` or of another size. Archive and folder are each made beside
    their place and renamed into it whole.
    """
    slug = resolve_competition(slug)
    dest = Path(dest) if dest else Project.at(root).data / slug
    archive = dest.with_name(f"{dest.name}.zip")  # data/<slug>.zip; --dest DIR gets DIR.zip, a pair of its own
    if dest.exists() and not (archive.is_file() or (dest / LEGACY_MANIFEST).is_file()) and not force:
        raise SubmitError(f"{dest} exists but was not made by `download` (no {archive.name} beside it); "
                          f"move it away, or pass --force to extract Kaggle's files into it (its own are kept)")
    services = services or Services()
    api = services.client()
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

    request = ApiDownloadDataFilesRequest()
    request.competition_name = slug
    with api.build_kaggle_client() as client:
        response = services.call(f"asking Kaggle for the files of '{slug}'",
                                 lambda: client.competitions.competition_api_client.download_data_files(request),
                                 competition(slug))
        downloaded = force or api.download_needed(response, str(archive))
        replaced = set()
        if not downloaded:
            response.close()  # only its headers were wanted
        else:
            log(f"downloading the files of '{slug}' ({_size(response.headers.get('Content-Length'))}) ...")
            with staging_folder(dest) as staging:
                try:
                    api.download_file(response, str(staging / archive.name), client.http_client(),
                                      quiet=not progress)
                except Exception as error:  # noqa: BLE001 - turned into a KaggleFault when it is Kaggle's
                    fault = classify(error, competition(slug))
                    raise (fault or error) from error
                # The client writes in place and dates the file only when it is complete: renamed whole, a
                # download cut short never sits where the next size check could take it for the archive.
                replaced = _listing(archive)   # Kaggle's files of before: not kept as the user's below
                os.replace(staging / archive.name, archive)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            extract = downloaded or not _intact(dest, members)
            if extract:
                with staging_folder(dest) as staging:
                    zf.extractall(staging / "extracted")  # zipfile drops absolute and '..' parts
                    if dest.exists():
                        _keep_own_files(dest, staging / "extracted", {Path(i.filename) for i in members} | replaced)
                    replace_folder(staging / "extracted", dest, staging)
    except zipfile.BadZipFile as error:
        archive.unlink(missing_ok=True)  # else the client's check would keep it
        raise SubmitError(f"{archive} is not a valid zip ({error}); removed it, run download again") from error
    if extract:
        log(f"{dest}: {len(members)} files extracted{_where_train_is(dest)}")
    else:
        log(f"{dest}: already downloaded, unchanged on Kaggle ({len(members)} files); nothing to do")
    return DownloadResult(dest, downloaded, len(members))


def _intact(dest: Path, members: list[zipfile.ZipInfo]) -> bool:
    """Every file of the archive's listing is in `dest` with its size (the listing is the record)."""
    try:
        return all((dest / info.filename).stat().st_size == info.file_size for info in members)
    except OSError:
        return False


def _listing(archive: Path) -> set[Path]:
    """The files an archive here holds (none where there is none, or it is no zip)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return {Path(info.filename) for info in zf.infolist() if not info.is_dir()}
    except (OSError, zipfile.BadZipFile):
        return set()


def _keep_own_files(dest: Path, extracted: Path, kaggles: set[Path]) -> None:
    """Move the files a user added to `dest` (in no archive of Kaggle's, old or new) into the new folder:
    only Kaggle's files are replaced."""
    for path in sorted(p for p in dest.rglob("*") if p.is_file() or p.is_symlink()):
        relative = path.relative_to(dest)
        if relative not in kaggles and relative != Path(LEGACY_MANIFEST):
            (extracted / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, extracted / relative)
            log(f"{dest}: kept {relative}, which is not Kaggle's")


def _where_train_is(dest: Path) -> str:
    from kit.data import find_competition_folder
    from kit.errors import DataError

    try:
        return f"; train.csv is in {find_competition_folder(dest)}"
    except DataError as error:
        return f"; warning: {error}"


def _size(content_length) -> str:
    return f"{int(content_length) / 2**20:.1f} MiB" if content_length else "size unknown"


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
    # One process fetches at a time: two submits at once would unzip over each other.
    with exclusive_lock(cache.parent / f".{slug}.fetch.lock"):
        cached = sorted(cache.rglob("sample_submission.csv"))
        if cached:
            return cached[0]
        log(f"no sample_submission.csv for '{slug}' here (run facekit download); fetching it from Kaggle")
        api = services.client()
        name = services.call("finding sample_submission.csv",
                             lambda: _find_data_file(api, slug, "sample_submission.csv"), competition(slug))
        with staging_folder(cache) as staging:
            services.call(f"downloading {name}", lambda: api.competition_download_file(
                slug, name, path=str(staging / slug), force=True, quiet=True, unzip=True), competition(slug))
            replace_folder(staging / slug, cache, staging)
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
    parser.add_argument("--force", action="store_true", help="download and extract again even when unchanged, "
                        "and into a folder that download did not make (the files there that are not Kaggle's are kept)")
    args = parser.parse_args(argv)
    download(args.competition, args.dest, force=args.force, progress=sys.stderr.isatty())
    return 0
