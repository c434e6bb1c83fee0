"""A local stand-in for Kaggle's API: enough of it for `kit.submit` and `kaggle competitions submit`.

The official client (kaggle / kagglesdk) POSTs JSON to http://localhost/api/v1/<service>/<method>
when KAGGLE_API_ENVIRONMENT=LOCALHOST, and being built on requests it honours HTTP_PROXY, so this
server can listen on any port and receive every call (including the upload PUT and the data
download it redirects to) as a proxy.

From a shell (e.g. for the acceptance transcript):

    python tests/kaggle_server.py --port 8765 --data-zip /work/shared/data/utkface-age-gender.zip \
        --labels LABELS.csv
    # then, in another shell:
    export KAGGLE_API_ENVIRONMENT=LOCALHOST HTTP_PROXY=http://127.0.0.1:8765 http_proxy=http://127.0.0.1:8765
    export KAGGLE_USERNAME=tester KAGGLE_KEY=local-key
    ./run.sh download && ./run.sh submit submissions/NAME.csv -m "first try"

The real test labels are hidden, so to score a real ensemble meaningfully make a competition whose
"test" rows are held-out train rows (labels kept by the server):

    python tests/kaggle_server.py holdout --zip /work/shared/data/utkface-age-gender.zip --out /tmp/holdout

From tests: `with KaggleServer(data_zip=..., labels=...) as server: env = server.client_env()`.

Labels are a CSV of id,gender,age and optionally Usage (Public/Private, as in Kaggle solution
files); without Usage every row is public. Submissions are scored with kit.metric.score.
Datasets, blobs and kernels: `kaggle datasets create/version` (StartBlobUpload, then a PUT of each file)
make dataset versions, unpacked as Kaggle mounts them (a folder uploaded as NAME.zip shows as NAME/);
`kaggle kernels push` (SaveKernel) makes a kernel version that really runs when `kernel_runner` is given
(tests/kaggle_sandbox.py's SandboxRunner: /kaggle/input holds the competition and the attached datasets,
/kaggle/working starts empty, no network); GetKernelSessionStatus answers QUEUED for `queued_reads`
reads, then RUNNING until it ends COMPLETE or ERROR; ListKernelSessionOutput lists /kaggle/working and
the log; CreateCodeSubmission scores a COMPLETE version's submission.csv. From a shell, with
`--sandbox-python $(python tests/kaggle_sandbox.py image-python /tmp/kaggle-image)`.

Faults: wrong credentials get 401 like Kaggle; `fail_next(method, 503, 503)` answers the next calls
of a method with those statuses; `daily_limit`/`used_today` make the daily allowance run out;
`pending_reads` / `never_score` keep a submission pending; `lose_next_create_responses(n)` makes a
submission and then answers 503, as when a response is lost on the way back.
"""
from __future__ import annotations

import argparse
import base64
import email.utils
import io
import itertools
import json
import shutil
import sys
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for kit.*

from kit.metric import score  # noqa: E402

DEFAULT_COMPETITION = "sep-25-dl-gen-ai-nppe-1"
COMPETITION_SERVICE = "competitions.CompetitionApiService"


@dataclass
class Submission:
    ref: int
    file_name: str
    description: str
    date: datetime
    size: int
    status: str                 # what scoring will end in: COMPLETE or ERROR
    public_score: str | None
    private_score: str | None
    error: str | None
    reads_until_scored: int     # status reads still answered PENDING

    def as_api(self, username: str) -> dict:
        pending = self.reads_until_scored > 0
        status = "PENDING" if pending else self.status
        out = {"ref": self.ref, "totalBytes": self.size, "fileName": self.file_name,
               "description": self.description, "status": status, "submittedBy": username,
               "teamName": username, "date": self.date.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
        if not pending and status == "COMPLETE":
            out.update(publicScore=self.public_score, privateScore=self.private_score)
        if not pending and status == "ERROR":
            out["errorDescription"] = self.error
        return out


@dataclass
class KernelVersion:
    """One pushed version of a kernel and what became of it."""
    owner: str
    slug: str
    number: int
    request: dict                       # the SaveKernel body
    status: str = "QUEUED"              # QUEUED, RUNNING, COMPLETE, ERROR
    failure_message: str | None = None
    log: list = field(default_factory=list)
    working: Path | None = None         # its /kaggle/working once it ran
    queued_reads: int = 0
    started: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"


@dataclass
class ApiError(Exception):
    status: int
    message: str


def score_csv(data: bytes, labels: pd.DataFrame | None) -> tuple[str, str | None, str | None, str | None]:
    """(status, public score, private score, error) the way Kaggle's scorer would report them."""
    if labels is None:
        return "ERROR", None, None, "this local server holds no labels (start it with --labels)"
    try:
        sub = pd.read_csv(io.BytesIO(data))
    except Exception as error:  # Kaggle reports any parse failure as a scoring error
        return "ERROR", None, None, f"could not parse the submission as CSV: {error}"
    missing = [c for c in ("id", "gender", "age") if c not in sub.columns]
    if missing:
        return "ERROR", None, None, f"Submission is missing column(s) {missing}"
    if len(sub) != len(labels):
        return "ERROR", None, None, f"Submission must have {len(labels)} rows (found {len(sub)})"
    merged = labels.merge(sub, on="id", how="left", suffixes=("", "_pred"))
    if merged["gender_pred"].isna().any() or merged["age_pred"].isna().any():
        return "ERROR", None, None, "Submission is missing ids or has empty values"
    usage = merged["Usage"] if "Usage" in merged.columns else pd.Series("Public", index=merged.index)
    scores = {}
    for part in ("Public", "Private"):
        rows = merged[usage == part]
        if len(rows):
            scores[part] = f"{score(rows.gender, rows.gender_pred, rows.age, rows.age_pred).score:.5f}"
    return "COMPLETE", scores.get("Public"), scores.get("Private"), None


class KaggleServer:
    """The fake Kaggle: its state, the faults to play, and the HTTP server in a background thread."""

    def __init__(self, *, competition: str = DEFAULT_COMPETITION, data_zip=None, labels=None,
                 username: str = "tester", key: str = "local-key", token: str | None = "local-token",
                 daily_limit: int = 5, used_today: int = 0, pending_reads: int = 0,
                 never_score: bool = False, entered: bool = True, host: str = "127.0.0.1", port: int = 0,
                 kernel_runner=None, queued_reads: int = 1, kernel_timeout: float = 600.0):
        self.competition = competition
        self.data_zip = Path(data_zip) if data_zip else None
        if labels is None or isinstance(labels, pd.DataFrame):
            self.labels = labels
        else:
            self.labels = pd.read_csv(labels)
        self.username, self.key, self.token = username, key, token
        self.daily_limit, self.used_today = daily_limit, used_today
        self.pending_reads, self.never_score, self.entered = pending_reads, never_score, entered
        self.submissions: list[Submission] = []
        self.uploads: dict[str, dict] = {}       # token -> {"file_name", "data"}
        self.calls: list[str] = []               # method names (and PUT/GET) in arrival order
        self._planned_errors: dict[str, list[int]] = {}
        self._lost_create_responses = 0
        self.create_delay = 0.0                  # seconds CreateSubmission takes (to make submits overlap)
        self.after_create = None                 # called once a submission is made, before the answer goes out
        self._refs = itertools.count(1001)
        self._lock = threading.Lock()
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-kaggle-"))   # blobs, datasets, kernels' files
        self.blobs: dict[str, dict] = {}         # token -> {"name", "path", "type"}
        self.datasets: dict[str, dict] = {}      # owner/slug -> {"title", "private", "versions": [mounted folder]}
        self.kernels: dict[str, list[KernelVersion]] = {}   # owner/slug -> its versions, oldest first
        self.kernel_runner = kernel_runner       # None: pushed kernels end in ERROR, saying so
        self.queued_reads = queued_reads
        self.kernel_timeout = kernel_timeout
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.kaggle = self
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KaggleServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        for versions in self.kernels.values():
            for version in versions:
                version.started.set()
                version.finished.wait(timeout=self.kernel_timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def client_env(self, *, username: str | None = None, key: str | None = None) -> dict[str, str]:
        """Environment that points the official client at this server with (by default) valid credentials."""
        proxy = self.proxy_url
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy,
                "KAGGLE_USERNAME": username or self.username, "KAGGLE_KEY": key or self.key}

    # ------------------------------------------------------------------ faults
    def fail_next(self, method: str, *statuses: int) -> None:
        """Answer the next calls of `method` ('*' for any) with these HTTP statuses, in order."""
        with self._lock:
            self._planned_errors.setdefault(method, []).extend(statuses)

    def lose_next_create_responses(self, count: int = 1) -> None:
        """Make the next `count` submissions but answer 503, as if the response was lost."""
        with self._lock:
            self._lost_create_responses += count

    def count(self, method: str) -> int:
        return self.calls.count(method)

    # ------------------------------------------------------------------ the API
    def handle_api(self, method: str, body: dict, auth: str | None, host: str):
        """Return (status, JSON dict) or ("redirect", url). Raises ApiError for Kaggle's error answers."""
        with self._lock:
            self.calls.append(method)
            for key in (method, "*"):
                if self._planned_errors.get(key):
                    status = self._planned_errors[key].pop(0)
                    raise ApiError(status, {503: "Service Unavailable", 429: "Too Many Requests"}
                                   .get(status, f"planned error {status}"))
            if method == "IntrospectToken":
                active = self.token is not None and body.get("token") == self.token
                return 200, {"active": active, "username": self.username if active else ""}
            if not self._authorized(auth):
                raise ApiError(401, "Unauthenticated")
            if "competitionName" in body and body["competitionName"] != self.competition:
                raise ApiError(404, f"Competition '{body['competitionName']}' not found")
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                raise ApiError(404, f"the local Kaggle server does not implement {method}")
            return handler(body, host)

    def _authorized(self, auth: str | None) -> bool:
        if not auth:
            return False
        kind, _, value = auth.partition(" ")
        if kind == "Bearer":
            return self.token is not None and value == self.token
        if kind == "Basic":
            return base64.b64decode(value).decode() == f"{self.username}:{self.key}"
        return False

    def _require_entered(self):
        if not self.entered:
            raise ApiError(403, "Permission 'competitions.participate' was denied")

    def _api_GetSubmissionLimits(self, body, host):
        allowed = max(0, self.daily_limit - self.used_today)
        return 200, {"numToday": self.used_today, "numTotal": len(self.submissions),
                     "numAllowedNow": allowed, "limitedByTotal": False}

    def _api_StartSubmissionUpload(self, body, host):
        self._require_entered()
        token = uuid.uuid4().hex
        self.uploads[token] = {"file_name": body.get("fileName", ""), "data": None}
        return 200, {"token": token, "createUrl": f"http://{host}/upload/{token}"}

    def _api_CreateSubmission(self, body, host):
        self._require_entered()
        if self.used_today >= self.daily_limit:
            raise ApiError(400, f"Submission not allowed:  Your team has used its daily Submission "
                                f"allowance ({self.daily_limit}) today, please try again tomorrow UTC.")
        upload = self.uploads.get(body.get("blobFileTokens", ""))
        if upload is None or upload["data"] is None:
            raise ApiError(400, "blobFileTokens does not name a completed upload")
        status, public, private, error = score_csv(upload["data"], self.labels)
        ref = next(self._refs)
        self.submissions.append(Submission(
            ref=ref, file_name=upload["file_name"], description=body.get("submissionDescription", ""),
            date=datetime.now(UTC), size=len(upload["data"]), status=status,
            public_score=public, private_score=private, error=error,
            reads_until_scored=10**9 if self.never_score else self.pending_reads))
        self.used_today += 1
        if self.create_delay:
            self._lock.release()                 # let other calls in while this one "takes its time"
            try:
                threading.Event().wait(self.create_delay)
            finally:
                self._lock.acquire()
        if self.after_create is not None:
            self.after_create(ref)
        if self._lost_create_responses:
            self._lost_create_responses -= 1
            raise ApiError(503, "Service Unavailable")
        return 200, {"message": f"Successfully submitted to {self.competition}", "ref": ref}

    def _read(self, submission: Submission) -> dict:
        answer = submission.as_api(self.username)
        if submission.reads_until_scored > 0:
            submission.reads_until_scored -= 1
        return answer

    def _api_GetSubmission(self, body, host):
        for submission in self.submissions:
            if submission.ref == body.get("ref"):
                return 200, self._read(submission)
        raise ApiError(404, f"Submission {body.get('ref')} not found")

    def _api_ListSubmissions(self, body, host):
        newest_first = sorted(self.submissions, key=lambda s: s.ref, reverse=True)
        size = body.get("pageSize") or 20
        start = (max(body.get("page") or 1, 1) - 1) * size
        return 200, {"submissions": [self._read(s) for s in newest_first[start:start + size]]}

    def _members(self) -> list[zipfile.ZipInfo]:
        if self.data_zip is None:
            raise ApiError(404, "this local server has no data files (start it with --data-zip)")
        with zipfile.ZipFile(self.data_zip) as archive:
            return [info for info in archive.infolist() if not info.is_dir()]

    def _api_ListDataFiles(self, body, host):
        members = self._members()
        size = body.get("pageSize") or 20
        start = int(body.get("pageToken") or 0)
        page = members[start:start + size]
        created = datetime.fromtimestamp(self.data_zip.stat().st_mtime, UTC)
        files = [{"ref": m.filename, "name": m.filename, "totalBytes": m.file_size,
                  "creationDate": created.strftime("%Y-%m-%dT%H:%M:%S.000Z")} for m in page]
        following = start + size if start + size < len(members) else None
        return 200, {"files": files, "nextPageToken": str(following) if following else ""}

    def _api_DownloadDataFiles(self, body, host):
        self._require_entered()
        self._members()
        return "redirect", f"http://{host}/files/{self.competition}.zip"

    def _api_DownloadDataFile(self, body, host):
        self._require_entered()
        name = body.get("fileName", "")
        if name not in {m.filename for m in self._members()}:
            raise ApiError(404, f"Data file '{name}' not found")
        return "redirect", f"http://{host}/files/{self.competition}/{name}"

    # ------------------------------------------------------------------ blobs and datasets
    def _api_StartBlobUpload(self, body, host):
        token = uuid.uuid4().hex
        self.blobs[token] = {"name": body.get("name", ""), "type": body.get("type"), "path": None}
        return 200, {"token": token, "createUrl": f"http://{host}/blob-upload/{token}"}

    def _owned(self, owner: str) -> None:
        if owner != self.username:
            raise ApiError(403, f"Permission denied: {self.username} cannot write to {owner}'s datasets or kernels")

    def _dataset_files(self, files: list, ref: str, number: int) -> Path:
        """A dataset version as Kaggle mounts it: each file as uploaded, an archive unpacked into a folder
        named after it (wheels.zip -> wheels/)."""
        folder = self.workdir / "datasets" / ref.replace("/", "__") / f"v{number}"
        folder.mkdir(parents=True)
        for entry in files:
            blob = self.blobs.get(entry.get("token", ""))
            if blob is None or blob["path"] is None:
                raise ApiError(400, f"file token {entry.get('token')!r} does not name a completed upload")
            if blob["name"].endswith(".zip"):
                with zipfile.ZipFile(blob["path"]) as archive:
                    archive.extractall(folder / blob["name"][: -len(".zip")])
            else:
                shutil.copyfile(blob["path"], folder / blob["name"])
        return folder

    def _api_GetDatasetStatus(self, body, host):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            raise ApiError(404, f"Dataset {ref} not found")
        return 200, {"status": "READY"}

    def _api_CreateDataset(self, body, host):
        owner, slug = body.get("ownerSlug") or self.username, body.get("slug", "")
        self._owned(owner)
        ref = f"{owner}/{slug}"
        if ref in self.datasets:
            return 200, {"status": "error", "error": f"The requested slug \"{slug}\" is already in use"}
        folder = self._dataset_files(body.get("files", []), ref, 1)
        self.datasets[ref] = {"title": body.get("title"), "private": body.get("isPrivate", False),
                              "license": body.get("licenseName"), "versions": [folder]}
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def _api_CreateDatasetVersion(self, body, host):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            raise ApiError(404, f"Dataset {ref} not found")
        self._owned(body.get("ownerSlug"))
        versions = self.datasets[ref]["versions"]
        versions.append(self._dataset_files((body.get("body") or {}).get("files", []), ref, len(versions) + 1))
        return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    # ------------------------------------------------------------------ kernels
    def _api_SaveKernel(self, body, host):
        ref = body.get("slug") or ""
        owner, _, slug = ref.partition("/")
        self._owned(owner)
        if body.get("language") != "python" or body.get("kernelType") not in ("script", "notebook"):
            return 200, {"error": f"unsupported language/kernel type {body.get('language')}/{body.get('kernelType')}"}
        invalid = {"invalidCompetitionSources": [c for c in body.get("competitionDataSources", [])
                                                 if c != self.competition],
                   "invalidDatasetSources": [d for d in body.get("datasetDataSources", []) if d not in self.datasets],
                   "invalidKernelSources": list(body.get("kernelDataSources", [])),
                   "invalidModelSources": list(body.get("modelDataSources", []))}
        versions = self.kernels.setdefault(ref, [])
        number = len(versions) + 1
        answer = {"ref": f"/code/{ref}", "url": f"https://www.kaggle.com/code/{ref}", "versionNumber": number,
                  "kernelId": 1 + list(self.kernels).index(ref), **{k: v for k, v in invalid.items() if v}}
        version = KernelVersion(owner, slug, number, body, queued_reads=self.queued_reads)
        versions.append(version)
        if any(invalid.values()):  # Kaggle saves it but cannot run it as asked
            version.status, version.failure_message = "ERROR", "invalid data sources"
            version.started.set()
            version.finished.set()
            return 200, answer
        threading.Thread(target=self._run_kernel, args=(version,), daemon=True).start()
        if not version.queued_reads:
            version.started.set()
        return 200, answer

    def _run_kernel(self, version: KernelVersion) -> None:
        version.started.wait(timeout=5.0)   # queued until a status read or two have seen it so (or 5 s)
        version.status = "RUNNING"
        workdir = self.workdir / "kernels" / version.ref.replace("/", "__") / f"v{version.number}"
        try:
            if self.kernel_runner is None:
                version.status, version.failure_message = "ERROR", "this local server runs no kernels " \
                    "(start it with --sandbox-python, or pass kernel_runner)"
                return
            inputs = {self.competition: self._competition_folder()}
            for ref in version.request.get("datasetDataSources", []):
                inputs[ref.split("/", 1)[1]] = self.datasets[ref]["versions"][-1]
            timeout = version.request.get("sessionTimeoutSeconds") or self.kernel_timeout
            result, working = self.kernel_runner(source=version.request.get("text", ""),
                                                 code_file=f"{version.slug}.py", inputs=inputs, workdir=workdir,
                                                 timeout=float(timeout))
            version.log, version.working = result.log, working
            if result.exit_code == 0:
                version.status = "COMPLETE"
            else:
                version.status, version.failure_message = "ERROR", result.failure_message
        except Exception as error:  # noqa: BLE001 - the kernel fails as Kaggle would say, the server lives on
            version.status, version.failure_message = "ERROR", f"the local server could not run it: {error!r}"
        finally:
            version.finished.set()

    def _competition_folder(self) -> Path:
        folder = self.workdir / "competition"
        if not folder.is_dir():
            if self.data_zip is None:
                raise RuntimeError("no competition files (start the server with --data-zip)")
            with zipfile.ZipFile(self.data_zip) as archive:
                archive.extractall(self.workdir / ".competition")
            (self.workdir / ".competition").rename(folder)
        return folder

    def _version(self, body) -> KernelVersion:
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        versions = self.kernels.get(ref)
        if not versions:
            raise ApiError(404, f"Kernel {ref} not found")
        label = str(body.get("versionLabel") or "").lstrip("v")
        if not label:
            return versions[-1]
        if not label.isdigit() or not 1 <= int(label) <= len(versions):
            raise ApiError(404, f"Kernel {ref} has no version {body.get('versionLabel')}")
        return versions[int(label) - 1]

    def _api_GetKernelSessionStatus(self, body, host):
        version = self._version(body)
        if version.status == "QUEUED" and not version.started.is_set():
            if version.queued_reads > 0:
                version.queued_reads -= 1
            if version.queued_reads == 0:
                version.started.set()
            return 200, {"status": "QUEUED"}
        answer = {"status": version.status}
        if version.failure_message:
            answer["failureMessage"] = version.failure_message
        return 200, answer

    def _api_ListKernelSessionOutput(self, body, host):
        version = self._version(body)
        files = []
        if version.status == "COMPLETE" and version.working is not None:
            files = sorted(p.relative_to(version.working).as_posix() for p in version.working.rglob("*") if p.is_file())
        size = body.get("pageSize") or 20
        start = int(body.get("pageToken") or 0)
        base = f"http://{host}/kernel-output/{version.ref}/{version.number}/"
        answer = {"files": [{"fileName": name, "url": base + quote(name)} for name in files[start:start + size]],
                  "log": json.dumps(version.log)}
        if start + size < len(files):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def _api_GetKernel(self, body, host):
        versions = self.kernels.get(f"{body.get('userName')}/{body.get('kernelSlug')}")
        if not versions:
            raise ApiError(404, f"Kernel {body.get('userName')}/{body.get('kernelSlug')} not found")
        last = versions[-1]
        request = last.request
        return 200, {"metadata": {"ref": last.ref, "slug": last.slug, "author": last.owner,
                                  "title": request.get("newTitle") or last.slug, "language": request.get("language"),
                                  "kernelType": request.get("kernelType"), "enableGpu": request.get("enableGpu"),
                                  "enableInternet": request.get("enableInternet"),
                                  "machineShape": request.get("machineShape"),
                                  "datasetDataSources": request.get("datasetDataSources", []),
                                  "competitionDataSources": request.get("competitionDataSources", []),
                                  "currentVersionNumber": last.number},
                     "blob": {"source": request.get("text"), "language": request.get("language"),
                              "kernelType": request.get("kernelType"), "slug": last.slug}}

    def _api_CreateCodeSubmission(self, body, host):
        self._require_entered()
        if self.used_today >= self.daily_limit:
            raise ApiError(400, f"Submission not allowed:  Your team has used its daily Submission "
                                f"allowance ({self.daily_limit}) today, please try again tomorrow UTC.")
        label = body.get("kernelVersion")
        version = self._version({"userName": body.get("kernelOwner"), "kernelSlug": body.get("kernelSlug"),
                                 "versionLabel": str(label) if label else None})
        if version.status != "COMPLETE" or version.working is None:
            raise ApiError(400, f"kernel {version.ref} version {version.number} has not completed successfully")
        name = body.get("fileName") or "submission.csv"
        output = version.working / name
        if not output.is_file():
            raise ApiError(400, f"kernel {version.ref} version {version.number} has no output file {name}")
        data = output.read_bytes()
        status, public, private, error = score_csv(data, self.labels)
        ref = next(self._refs)
        self.submissions.append(Submission(
            ref=ref, file_name=name, description=body.get("submissionDescription", ""), date=datetime.now(UTC),
            size=len(data), status=status, public_score=public, private_score=private, error=error,
            reads_until_scored=10**9 if self.never_score else self.pending_reads))
        self.used_today += 1
        return 200, {"message": f"Successfully submitted {version.ref} version {version.number}", "ref": ref}

    def kernel_output(self, path: str) -> Path | None:
        """The file behind a /kernel-output/OWNER/SLUG/N/PATH URL, or None."""
        parts = unquote(path).split("/", 5)   # '', 'kernel-output', owner, slug, n, relpath
        if len(parts) != 6 or not parts[4].isdigit():
            return None
        versions = self.kernels.get(f"{parts[2]}/{parts[3]}") or []
        number = int(parts[4])
        if not 1 <= number <= len(versions) or versions[number - 1].working is None:
            return None
        working = versions[number - 1].working.resolve()
        target = (working / parts[5]).resolve()
        return target if target.is_file() and working in target.parents else None

    def receive_blob(self, token: str, stream, length: int | None, chunked: bool) -> int:
        with self._lock:
            self.calls.append("PUT")
            for key in ("PUT", "*"):
                if self._planned_errors.get(key):
                    return self._planned_errors[key].pop(0)
            blob = self.blobs.get(token)
        if blob is None:
            return 404
        target = self.workdir / "blobs" / token
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            for chunk in stream:
                out.write(chunk)
        blob["path"] = target
        return 200

    # ------------------------------------------------------------------ uploads and downloads
    def receive_upload(self, token: str, data: bytes) -> int:
        with self._lock:
            self.calls.append("PUT")
            for key in ("PUT", "*"):
                if self._planned_errors.get(key):
                    return self._planned_errors[key].pop(0)
            if token not in self.uploads:
                return 404
            self.uploads[token]["data"] = data
            return 200

    def open_download(self, path: str) -> tuple[io.BufferedIOBase, int] | None:
        """A stream and its size for a download URL the API redirected to, or None."""
        with self._lock:
            self.calls.append("GET")
        if self.data_zip is None:
            return None
        if path == f"/files/{self.competition}.zip":
            return open(self.data_zip, "rb"), self.data_zip.stat().st_size
        prefix = f"/files/{self.competition}/"
        if path.startswith(prefix):
            with zipfile.ZipFile(self.data_zip) as archive:
                try:
                    data = archive.read(unquote(path[len(prefix):]))
                except KeyError:
                    return None
            return io.BytesIO(data), len(data)
        return None


class _Handler(BaseHTTPRequestHandler):
    """Speaks HTTP for KaggleServer; requests arrive either direct or through HTTP_PROXY (absolute URLs)."""

    def _path(self) -> str:
        return urlsplit(self.path).path

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict):
        self._send(status, json.dumps(obj).encode())

    def do_POST(self):
        kaggle: KaggleServer = self.server.kaggle
        parts = self._path().strip("/").split("/")
        body = self._body()
        if len(parts) != 4 or parts[:2] != ["api", "v1"]:
            return self._json(404, {"code": 404, "message": f"no API at {self._path()}"})
        try:
            result = kaggle.handle_api(parts[3], json.loads(body or b"{}"),
                                       self.headers.get("Authorization"), self.headers.get("Host", "localhost"))
        except ApiError as error:
            return self._json(error.status, {"code": error.status, "message": error.message})
        if result[0] == "redirect":
            return self._send(302, headers=[("Location", result[1])])
        self._json(*result)

    def _body_chunks(self):
        """The request body in pieces, for large uploads (chunked or with a Content-Length)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return
                yield chunk
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def do_PUT(self):
        path = self._path()
        if path.startswith("/blob-upload/"):
            status = self.server.kaggle.receive_blob(path[len("/blob-upload/"):], self._body_chunks(), None, False)
            return self._json(status, {})
        data = self._body()
        if not path.startswith("/upload/"):
            return self._send(404)
        status = self.server.kaggle.receive_upload(path[len("/upload/"):], data)
        self._json(status, {})

    def do_GET(self):
        kaggle: KaggleServer = self.server.kaggle
        if self._path().startswith("/kernel-output/"):
            return self._send_file(kaggle.kernel_output(self._path()))
        found = kaggle.open_download(self._path())
        if found is None:
            return self._send(404, b"not found", "text/plain")
        stream, size = found
        archive = kaggle.data_zip.stat()
        etag = f'"{archive.st_size:x}-{archive.st_mtime_ns:x}"'  # changes whenever the archive does
        self.send_response(200)
        kind = "application/zip" if self._path().endswith(".zip") else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(size))
        self.send_header("Last-Modified", email.utils.formatdate(archive.st_mtime, usegmt=True))
        self.send_header("ETag", etag)
        self.end_headers()
        try:
            shutil.copyfileobj(stream, self.wfile, 1 << 20)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: it only wanted the headers (an unchanged download)
        finally:
            stream.close()

    def _send_file(self, path: Path | None):
        if path is None:
            return self._send(404, b"not found", "text/plain")
        stat = path.stat()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stat.st_size))
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.end_headers()
        with open(path, "rb") as source:
            shutil.copyfileobj(source, self.wfile, 1 << 20)

    def log_message(self, format, *args):
        if getattr(self.server, "verbose", False):
            sys.stderr.write(f"[kaggle-server] {format % args}\n")


# ---------------------------------------------------------------------- the real data, held out
def make_holdout(zip_path, out_dir, *, fraction: float = 0.25, public: float = 0.5, seed: int = 0,
                 limit: int | None = None):
    """Write out_dir/competition.zip whose test rows are held-out train rows, and out_dir/labels.csv.
    `limit`: keep only that many train rows (a mini cut of the real data) before holding some out.

    The images stay where they are in the archive (test.csv's full_path points at train/...), so the
    kit reads the derived competition exactly like the real one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as source:
        csvs = [n for n in source.namelist() if n.endswith("/train.csv") or n == "train.csv"]
        if len(csvs) != 1:
            raise SystemExit(f"{zip_path}: expected one train.csv, found {csvs}")
        folder = csvs[0][: -len("train.csv")]
        train = pd.read_csv(source.open(csvs[0]))
        rng = np.random.default_rng(seed)
        if limit is not None:
            train = train.iloc[np.sort(rng.permutation(len(train))[:limit])]
        held = rng.random(len(train)) < fraction
        test, kept = train[held], train[~held]
        labels = test[["id", "gender", "age"]].assign(
            Usage=np.where(rng.random(len(test)) < public, "Public", "Private"))
        sample = test[["id"]].assign(gender=1, age=30)
        replaced = {folder + "train.csv": kept, folder + "test.csv": test[["id", "full_path"]],
                    folder + "sample_submission.csv": sample}
        with zipfile.ZipFile(out_dir / "competition.zip", "w") as target:
            for name, frame in replaced.items():
                target.writestr(name, frame.to_csv(index=False), compress_type=zipfile.ZIP_DEFLATED)
            used = set(folder + train["full_path"].astype(str))
            for info in source.infolist():  # the images the rows use (never the real test set's: no labels)
                if info.filename not in replaced and info.filename in used:
                    target.writestr(info, source.read(info))
    labels.to_csv(out_dir / "labels.csv", index=False)
    print(f"{out_dir / 'competition.zip'}: {len(kept)} train rows, {len(test)} held-out test rows\n"
          f"{out_dir / 'labels.csv'}: their labels ({int((labels.Usage == 'Public').sum())} public)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["holdout"]:
        parser = argparse.ArgumentParser(prog="kaggle_server.py holdout", description=make_holdout.__doc__)
        parser.add_argument("--zip", required=True, help="the competition's zip as Kaggle serves it")
        parser.add_argument("--out", required=True, help="folder for competition.zip and labels.csv")
        parser.add_argument("--fraction", type=float, default=0.25, help="share of train rows held out")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--limit", type=int, help="keep only this many train rows (a mini cut)")
        args = parser.parse_args(argv[1:])
        make_holdout(args.zip, args.out, fraction=args.fraction, seed=args.seed, limit=args.limit)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (80 to be http://localhost)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--competition", default=DEFAULT_COMPETITION)
    parser.add_argument("--data-zip", help="the competition's files, served by the download calls")
    parser.add_argument("--labels", help="CSV of id,gender,age[,Usage] that submissions are scored against")
    parser.add_argument("--username", default="tester")
    parser.add_argument("--key", default="local-key", help="the API key the server accepts")
    parser.add_argument("--daily-limit", type=int, default=5)
    parser.add_argument("--used-today", type=int, default=0, help="submissions already made today")
    parser.add_argument("--pending-reads", type=int, default=1,
                        help="status reads answered PENDING before a score appears")
    parser.add_argument("--never-score", action="store_true", help="scoring stays pending for ever")
    parser.add_argument("--fail", action="append", default=[], metavar="METHOD:STATUS[xN]",
                        help="answer the next N calls of METHOD with STATUS, e.g. CreateSubmission:503x2")
    parser.add_argument("--create-delay", type=float, default=0.0,
                        help="seconds CreateSubmission waits after making the submission, before it answers")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument("--sandbox-python", help="run pushed kernels with this Python in the sandbox of "
                        "tests/kaggle_sandbox.py (the output of: python tests/kaggle_sandbox.py image-python DIR)")
    parser.add_argument("--kernel-timeout", type=float, default=3600.0, help="seconds a kernel may run")
    args = parser.parse_args(argv)
    runner = None
    if args.sandbox_python:
        from kaggle_sandbox import SandboxRunner, sandbox_unavailable

        reason = sandbox_unavailable()
        if reason:
            raise SystemExit(f"kernels cannot run here: {reason}")
        runner = SandboxRunner(Path(args.sandbox_python), timeout=args.kernel_timeout)
    server = KaggleServer(competition=args.competition, data_zip=args.data_zip, labels=args.labels,
                          username=args.username, key=args.key, daily_limit=args.daily_limit,
                          used_today=args.used_today, pending_reads=args.pending_reads,
                          never_score=args.never_score, host=args.host, port=args.port, kernel_runner=runner,
                          kernel_timeout=args.kernel_timeout)
    for spec in args.fail:
        method, _, status = spec.partition(":")
        status, _, times = status.partition("x")
        server.fail_next(method, *[int(status)] * int(times or 1))
    server.create_delay = args.create_delay
    server._httpd.verbose = not args.quiet
    print(f"fake Kaggle for '{args.competition}' on {server.proxy_url}; point the client at it with:\n"
          f"  export KAGGLE_API_ENVIRONMENT=LOCALHOST HTTP_PROXY={server.proxy_url} http_proxy={server.proxy_url}\n"
          f"  export KAGGLE_USERNAME={args.username} KAGGLE_KEY={args.key}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()
        shutil.rmtree(server.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
