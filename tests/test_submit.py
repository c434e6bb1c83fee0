"""kit.kaggle (submit, download, the ledger) against the local fake Kaggle (tests/kaggle_server.py), through
the official client.

Every test starts its own server on a free port; the client reaches it through HTTP_PROXY with
KAGGLE_API_ENVIRONMENT=LOCALHOST. Credentials come from the environment (or a kaggle.json in a
temporary KAGGLE_CONFIG_DIR), never from the user's own ~/.kaggle.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kit.__main__ import main
from kit.errors import KaggleFault, LedgerError, MissingCredentials, SubmissionError, SubmitError
from kit.files import sha256_file
from kit.kaggle.api import TOKEN_URL, Polling, Retry, Services, connect
from kit.kaggle.download import download
from kit.kaggle.ledger import HEADER, append_row, is_intent, latest_states, read_rows
from kit.kaggle.scores import list_submissions
from kit.kaggle.submit import submit
from kit.metric import score

sys.path.insert(0, str(Path(__file__).parent))
from kaggle_server import DEFAULT_COMPETITION, KaggleServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = Retry(attempts=3, first_delay=0.01)             # retries without real waiting
QUICK = Polling(interval=0.01, timeout=0.2)


def fast(**hooks) -> Services:
    """Services that retry and poll without real waiting (a new one per call: it keeps its client)."""
    return Services(retry=FAST, polling=QUICK, **hooks)
TEST_IDS = list(range(100, 130))


def submissions_in(ledger: Path) -> list[dict]:
    """The ledger's rows about Kaggle submissions (its intent rows left out)."""
    return [row for row in read_rows(ledger) if not is_intent(row)]


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> dict:
    """A tiny competition as Kaggle serves it (face_dataset/ in a zip) and its hidden labels."""
    folder = tmp_path_factory.mktemp("competition")
    rng = np.random.default_rng(0)
    n = len(TEST_IDS)
    labels = pd.DataFrame({"id": TEST_IDS, "gender": rng.integers(0, 2, n), "age": rng.integers(1, 90, n),
                           "Usage": ["Public", "Private"] * (n // 2)})
    train = pd.DataFrame({"id": range(6), "full_path": [f"train/{i:05d}.jpg" for i in range(6)],
                          "gender": [0, 1] * 3, "age": [20, 30, 40, 50, 60, 70]})
    files = {"face_dataset/train.csv": train.to_csv(index=False),
             "face_dataset/test.csv": pd.DataFrame({"id": TEST_IDS, "full_path": [f"test/{i}.jpg" for i in TEST_IDS]})
             .to_csv(index=False),
             "face_dataset/sample_submission.csv": labels[["id"]].assign(gender=1, age=30).to_csv(index=False),
             "face_dataset/train/00000.jpg": "not really a jpeg"}
    write_zip(folder / "competition.zip", files)
    labels.to_csv(folder / "labels.csv", index=False)
    sample = folder / "sample_submission.csv"
    sample.write_text(files["face_dataset/sample_submission.csv"])
    return {"zip": folder / "competition.zip", "labels": labels, "sample": sample}


def write_zip(path: Path, files: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)


def prediction(labels: pd.DataFrame, flips: int = 3, seed: int = 1) -> pd.DataFrame:
    """A submission a little off the labels, so its score is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    gender = labels.gender.to_numpy().copy()
    gender[:flips] = 1 - gender[:flips]
    return pd.DataFrame({"id": labels.id, "gender": gender, "age": labels.age + rng.normal(0, 5, len(labels)).round(2)})


def expected_public(labels: pd.DataFrame, sub: pd.DataFrame) -> str:
    public = labels.Usage == "Public"
    return f"{score(labels.gender[public], sub.gender[public], labels.age[public], sub.age[public]).score:.5f}"


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "submissions").mkdir()
    return tmp_path


def write_submission(root: Path, frame: pd.DataFrame, name: str = "blend", cv: float | None = 0.8) -> Path:
    path = root / "submissions" / f"{name}.csv"
    frame.to_csv(path, index=False)
    if cv is not None:
        (root / "submissions" / f"{name}.json").write_text(json.dumps({"cv_score": cv, "sha256": sha256_file(path)}))
    return path


# ----------------------------------------------------------------------------- the server and the client
@pytest.fixture
def make_server(competition, monkeypatch, tmp_path_factory):
    """Start a fake Kaggle (keyword arguments as KaggleServer's) and point the official client at it."""
    servers = []
    home = tmp_path_factory.mktemp("home")
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_COMPETITION", "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))  # no ~/.kaggle of the user's is read
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle-config"))

    def start(**options) -> KaggleServer:
        options = {"data_zip": competition["zip"], "labels": competition["labels"], **options}
        server = KaggleServer(**options).start()
        servers.append(server)
        for name, value in server.client_env().items():
            monkeypatch.setenv(name, value)
        _client_uses_localhost(monkeypatch)
        return server

    yield start
    for server in servers:
        server.stop()


def _client_uses_localhost(monkeypatch) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    # The client reads KAGGLE_API_ENVIRONMENT once, when it is first imported; if that happened
    # before the variable was set, tell the class directly.
    if "--local" not in KaggleApi.args:
        monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])


@pytest.fixture
def server(make_server) -> KaggleServer:
    return make_server()


def client_env(server: KaggleServer, home: Path, **overrides) -> dict:
    """Environment for a subprocess (the kaggle CLI, or the kit's) talking to `server`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k.lower() != "no_proxy"}
    env.update(server.client_env(), HOME=str(home), KAGGLE_CONFIG_DIR=str(home / "kaggle-config"),
               PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


# ----------------------------------------------------------------------------- submit
def test_submit_records_the_public_score_beside_the_cv_score(server, competition, root, capsys):
    sub = prediction(competition["labels"])
    path = write_submission(root, sub, cv=0.8123)
    result = submit(path, "first blend", root=root, services=fast())

    expected = expected_public(competition["labels"], sub)
    assert (result.status, result.public_score, result.cv_score) == ("complete", expected, 0.8123)
    assert result.remaining_today == 4
    out = capsys.readouterr().out
    assert f"public score {expected}   CV score 0.81230" in out and "4 submission(s) remaining today" in out
    everything = read_rows(root / "submissions" / "ledger.csv")
    assert [r["status"] for r in everything] == ["submitting", "pending", "confirmed", "complete"]
    assert everything[0]["ref"] == everything[2]["ref"] and everything[2]["error"] == f"Kaggle ref {result.ref}"
    rows = submissions_in(root / "submissions" / "ledger.csv")
    assert [r["status"] for r in rows] == ["pending", "complete"]  # recorded on confirmation, then scored
    final = rows[-1]
    assert final["ref"] == str(result.ref) == str(server.submissions[0].ref)
    assert (final["sha256"], final["message"], final["competition"]) == (sha256_file(path), "first blend",
                                                                        DEFAULT_COMPETITION)
    assert (final["public_score"], float(final["cv_score"])) == (expected, 0.8123)
    assert server.submissions[0].description == "first blend" and server.count("PUT") == 1


def test_submit_command_line(server, competition, root, monkeypatch, capsys):
    write_submission(root, prediction(competition["labels"]), name="cli", cv=0.75)
    monkeypatch.setenv("FACEKIT_ROOT", str(root))   # a relative path is read from the project root
    assert main(["submit", "submissions/cli.csv", "-m", "from the CLI"]) == 0
    out = capsys.readouterr().out
    assert "public score" in out and "CV score 0.75000" in out
    assert main(["submissions"]) == 0
    listing = capsys.readouterr().out
    assert "complete" in listing and "submissions/cli.csv" in listing and "from the CLI" in listing


def test_official_cli_submits_to_the_local_server(server, competition, root, tmp_path):
    path = write_submission(root, prediction(competition["labels"]), cv=None)
    env = client_env(server, tmp_path / "home")
    done = run(["-m", "kaggle", "competitions", "submit", "-c", DEFAULT_COMPETITION, "-f", str(path),
                "-m", "official"], env, root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Submission ref: {server.submissions[0].ref}" in done.stdout
    assert "4 submissions remaining today" in done.stdout
    listed = run(["-m", "kaggle", "competitions", "submissions", "-c", DEFAULT_COMPETITION, "-v"], env, root)
    assert expected_public(competition["labels"], pd.read_csv(path)) in listed.stdout

    wrong = run(["-m", "kaggle", "competitions", "submit", "-c", DEFAULT_COMPETITION, "-f", str(path), "-m", "x"],
                client_env(server, tmp_path / "home", KAGGLE_KEY="not-the-key"), root)
    assert wrong.returncode != 0 and "Authentication required" in wrong.stdout
    assert len(server.submissions) == 1


def test_wrong_credentials_stop_before_the_upload(make_server, competition, root, monkeypatch):
    server = make_server()
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key-1234")
    path = write_submission(root, prediction(competition["labels"]))
    with pytest.raises(KaggleFault) as caught:
        submit(path, "x", root=root, services=fast())
    assert caught.value.kind == "auth" and TOKEN_URL in str(caught.value)
    assert "wrong-key-1234" not in str(caught.value)
    assert server.count("StartSubmissionUpload") == 0 and not server.submissions
    assert not (root / "submissions" / "ledger.csv").exists()


def test_two_503s_then_success(server, competition, root, capsys):
    server.fail_next("CreateSubmission", 503, 503)
    result = submit(write_submission(root, prediction(competition["labels"])), "retried", root=root,
                    services=fast())
    assert result.status == "complete"
    assert server.count("CreateSubmission") == 3 and len(server.submissions) == 1
    assert capsys.readouterr().err.count("retrying in") == 2


def test_503s_that_never_stop_are_given_up(server, competition, root):
    server.fail_next("CreateSubmission", *[503] * 5)
    with pytest.raises(KaggleFault, match="gave up after 3 tries"):
        submit(write_submission(root, prediction(competition["labels"])), "x", root=root, services=fast())
    assert server.count("CreateSubmission") == 3 and not server.submissions
    ledger = root / "submissions" / "ledger.csv"
    assert not submissions_in(ledger)          # only the intent, marked abandoned with the reason
    assert [(r["status"], "gave up" in r["error"]) for r in latest_states(read_rows(ledger))] == [("abandoned", True)]


def test_connection_errors_are_retried_then_reported(server, root, monkeypatch, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.setenv("http_proxy", closed)
    with pytest.raises(KaggleFault, match="gave up after 3 tries: could not reach Kaggle") as caught:
        download(root=root, services=fast())
    assert caught.value.kind == "connection" and capsys.readouterr().err.count("retrying in") == 2
    assert not (root / "data").exists()


def test_a_lost_answer_is_found_not_submitted_twice(server, competition, root):
    server.lose_next_create_responses(1)  # Kaggle makes the submission, the answer is a 503
    result = submit(write_submission(root, prediction(competition["labels"])), "lost", root=root,
                    services=fast())
    assert len(server.submissions) == 1 and server.count("CreateSubmission") == 1
    assert result.ref == server.submissions[0].ref and result.status == "complete"


def test_silent_upload_failure_is_a_failure(server, competition, root):
    """The client returns "Could not submit to competition" without raising when the upload fails."""
    server.fail_next("PUT", 500, 500, 500)
    with pytest.raises(KaggleFault, match="uploading .* failed"):
        submit(write_submission(root, prediction(competition["labels"])), "x", root=root, services=fast())
    assert server.count("PUT") == 3 and server.count("CreateSubmission") == 0
    assert not submissions_in(root / "submissions" / "ledger.csv")


def test_daily_limit_reached_stops_before_the_upload(make_server, competition, root, tmp_path):
    server = make_server(daily_limit=5, used_today=5)
    path = write_submission(root, prediction(competition["labels"]))
    with pytest.raises(KaggleFault, match="daily submission limit") as caught:
        submit(path, "x", root=root, services=fast())
    assert caught.value.kind == "daily_limit" and server.count("StartSubmissionUpload") == 0

    # When the limits call fails, Kaggle's refusal of the submission itself says the same.
    server.fail_next("GetSubmissionLimits", 500)
    with pytest.raises(KaggleFault) as caught:
        submit(path, "x", root=root, services=fast())
    assert caught.value.kind == "daily_limit" and server.count("CreateSubmission") == 1
    assert not server.submissions and not submissions_in(root / "submissions" / "ledger.csv")

    official = run(["-m", "kaggle", "competitions", "submit", "-c", DEFAULT_COMPETITION, "-f", str(path), "-m", "x"],
                   client_env(server, tmp_path / "home"), root)
    assert official.returncode != 0 and "daily Submission allowance" in official.stderr


def test_rate_limit_is_not_retried(server, competition, root):
    server.fail_next("CreateSubmission", 429)
    with pytest.raises(KaggleFault) as caught:
        submit(write_submission(root, prediction(competition["labels"])), "x", root=root, services=fast())
    assert caught.value.kind == "rate_limited" and server.count("CreateSubmission") == 1


@pytest.mark.parametrize("options, competition_slug, kind, hint", [
    ({"entered": False}, DEFAULT_COMPETITION, "forbidden",
     f"https://www.kaggle.com/competitions/{DEFAULT_COMPETITION}/rules"),
    ({}, "no-such-competition", "not_found", "unknown competition 'no-such-competition'"),
])
def test_forbidden_and_unknown_competitions(make_server, competition, root, options, competition_slug, kind, hint):
    server = make_server(**options)
    path = write_submission(root, prediction(competition["labels"]))
    with pytest.raises(KaggleFault) as caught:
        submit(path, "x", competition_slug, sample=competition["sample"], root=root, services=fast())
    assert caught.value.kind == kind and hint in str(caught.value)
    assert not server.submissions


def test_malformed_file_is_stopped_before_upload(server, competition, root, monkeypatch, capsys):
    bad = prediction(competition["labels"]).assign(gender=0.5)
    path = write_submission(root, bad.iloc[:-1], name="bad")  # a row short, gender not 0/1
    with pytest.raises(SubmissionError) as caught:
        submit(path, "x", sample=competition["sample"], root=root, services=fast())
    assert "missing" in str(caught.value) and "gender" in str(caught.value)
    monkeypatch.setenv("FACEKIT_ROOT", str(root))
    assert main(["submit", "submissions/bad.csv", "--sample", str(competition["sample"])]) == 2
    assert "nothing was uploaded" in capsys.readouterr().err
    assert server.calls == []  # not even a credentials check


def made_for(root: Path, path: Path, competition_name: str, sample: Path) -> None:
    """The sidecar `ensemble` writes: the competition (as the data was named) and its sample submission."""
    sidecar = {"cv_score": 0.5, "sha256": sha256_file(path), "competition": competition_name,
               "sample_submission": str(sample)}
    path.with_suffix(".json").write_text(json.dumps(sidecar))


def other_competition(tmp_path: Path, root: Path) -> Path:
    """A submission made on the synthetic sample (100 other ids), valid against that sample's own file."""
    sample = tmp_path / "data" / "sample" / "sample_submission.csv"
    sample.parent.mkdir(parents=True)
    pd.DataFrame({"id": range(100), "gender": 1, "age": 30}).to_csv(sample, index=False)
    path = write_submission(root, pd.DataFrame({"id": range(100), "gender": 0, "age": 41.5}), name="from_sample")
    made_for(root, path, "sample", sample)
    return path


def test_a_file_made_for_another_competition_is_refused_before_any_upload(server, root, tmp_path, monkeypatch,
                                                                          capsys):
    path = other_competition(tmp_path, root)
    with pytest.raises(SubmitError, match="made for 'sample' .*nothing was uploaded.*--competition sample.*--force"):
        submit(path, "x", root=root, services=Services(retry=FAST, polling=QUICK))
    monkeypatch.setenv("FACEKIT_ROOT", str(root))
    assert main(["submit", "submissions/from_sample.csv", "--competition", DEFAULT_COMPETITION]) == 2
    assert "was made for 'sample'" in capsys.readouterr().err
    assert server.count("StartSubmissionUpload") == 0 and not server.submissions
    assert not (root / "submissions" / "ledger.csv").exists()


def test_a_file_made_from_synthetic_data_is_refused_without_asking_kaggle(server, root, tmp_path):
    path = other_competition(tmp_path, root)
    (tmp_path / "data" / "sample" / ".synthetic").write_text("made by kit.sample\n")
    with pytest.raises(SubmitError, match="made for 'sample' \\(synthetic sample data"):
        submit(path, "x", root=root, services=Services(retry=FAST, polling=QUICK))
    assert server.calls == []       # not even the target's sample submission was needed


def test_forced_it_is_checked_against_the_target_s_own_sample_fetched_from_kaggle(server, root, tmp_path):
    path = other_competition(tmp_path, root)
    with pytest.raises(SubmissionError, match="missing|unexpected|ids"):
        submit(path, "x", root=root, force=True, services=Services(retry=FAST, polling=QUICK))
    assert server.count("DownloadDataFile") == 1       # the target's sample_submission.csv, by the download path
    assert server.count("StartSubmissionUpload") == 0 and not server.submissions


def test_data_named_after_its_zip_is_taken_for_the_competition_whose_ids_it_lists(server, competition, root,
                                                                                   capsys):
    path = write_submission(root, prediction(competition["labels"]))
    made_for(root, path, "utkface-age-gender", competition["sample"])    # --data utkface-age-gender.zip
    result = submit(path, "x", root=root, services=Services(retry=FAST, polling=QUICK))
    assert result.status == "complete" and len(server.submissions) == 1
    assert "names the data 'utkface-age-gender', whose sample submission lists the ids" in capsys.readouterr().out


def test_duplicate_is_refused_unless_forced(server, competition, root):
    path = write_submission(root, prediction(competition["labels"]))
    first = submit(path, "once", root=root, services=fast())
    with pytest.raises(SubmitError, match=f"already submitted .* ref {first.ref}.*--force"):
        submit(path, "twice", root=root, services=fast())
    assert len(server.submissions) == 1
    again = submit(path, "twice, on purpose", root=root, force=True, services=fast())
    states = latest_states(submissions_in(root / "submissions" / "ledger.csv"))
    assert [s["ref"] for s in states] == [str(first.ref), str(again.ref)] and len(server.submissions) == 2


def submit_process(server, root: Path, home: Path, path: Path, *args) -> subprocess.Popen:
    env = client_env(server, home, FACEKIT_ROOT=str(root))
    return subprocess.Popen([sys.executable, "-m", "kit", "submit", str(path), *args], env=env, cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_submits_of_one_file_at_once_upload_it_once(server, competition, root, tmp_path):
    """The ledger check, the upload and the ledger row are one critical section across processes."""
    path = write_submission(root, prediction(competition["labels"]))
    server.create_delay = 1.0            # both processes are inside submit while Kaggle takes its time
    both = [submit_process(server, root, tmp_path / "home", path, "-m", "same file", "--no-wait") for _ in range(2)]
    finished = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in both]
    assert sorted(code for code, _, _ in finished) == [0, 2], finished
    assert len(server.submissions) == 1 and server.count("CreateSubmission") == 1
    assert "was already submitted" in next(err for code, _, err in finished if code == 2)
    assert [r["status"] for r in submissions_in(root / "submissions" / "ledger.csv")] == ["pending"]


def test_a_submit_killed_after_kaggle_took_it_is_recorded_not_repeated(server, competition, root, tmp_path):
    """kill -9 between Kaggle's confirmation and the ledger row: the rerun finds the submission on Kaggle."""
    path = write_submission(root, prediction(competition["labels"]))
    process = submit_process(server, root, tmp_path / "home", path, "-m", "killed", "--no-wait")
    server.after_create = lambda ref: os.kill(process.pid, signal.SIGKILL)   # before the answer goes out
    assert process.wait(timeout=120) == -signal.SIGKILL
    server.after_create = None
    ledger = root / "submissions" / "ledger.csv"
    assert [(r["status"], is_intent(r)) for r in read_rows(ledger)] == [("submitting", True)]
    assert len(server.submissions) == 1

    with pytest.raises(SubmitError, match=f"already submitted .* ref {server.submissions[0].ref}"):
        submit(path, "killed", root=root, services=fast())     # the rerun: found, recorded, refused
    assert len(server.submissions) == 1 and server.count("CreateSubmission") == 1
    rows = submissions_in(ledger)
    assert [(r["ref"], r["status"]) for r in rows] == [(str(server.submissions[0].ref), "pending")]
    assert latest_states(read_rows(ledger))[0]["status"] == "confirmed"       # the intent, settled
    assert list_submissions(root=root, services=fast())[0]["status"] == "complete"   # and its score fetched


def test_an_intent_kaggle_never_saw_is_abandoned_and_the_file_submitted(server, competition, root):
    path = write_submission(root, prediction(competition["labels"]))
    ledger = root / "submissions" / "ledger.csv"
    append_row(ledger, {"time": "2026-01-01T00:00:00Z", "file": str(path), "sha256": sha256_file(path),
                        "ref": "intent-0123456789ab", "message": "lost", "competition": DEFAULT_COMPETITION,
                        "status": "submitting"})
    result = submit(path, "lost", root=root, services=fast())
    assert result.status == "complete" and len(server.submissions) == 1
    intents = [r for r in latest_states(read_rows(ledger)) if is_intent(r)]
    assert sorted(r["status"] for r in intents) == ["abandoned", "confirmed"]


def test_an_empty_file_is_refused_before_any_upload(server, competition, root, monkeypatch, capsys):
    (root / "submissions" / "empty.csv").write_bytes(b"")
    monkeypatch.setenv("FACEKIT_ROOT", str(root))
    assert main(["submit", "submissions/empty.csv", "--sample", str(competition["sample"])]) == 2
    err = capsys.readouterr().err
    assert "empty.csv (the submission) is empty" in err and "nothing was uploaded" in err
    assert server.count("StartSubmissionUpload") == 0


def test_dry_run_uploads_nothing(server, competition, root):
    result = submit(write_submission(root, prediction(competition["labels"])), "x", root=root, dry_run=True)
    assert result.status == "dry-run" and server.calls.count("StartSubmissionUpload") == 0
    assert not (root / "submissions" / "ledger.csv").exists()


def test_pending_when_polling_gives_up_then_refreshed(make_server, competition, root, capsys):
    server = make_server(never_score=True)
    sub = prediction(competition["labels"])
    result = submit(write_submission(root, sub), "slow", root=root, services=fast())
    assert result.status == "pending" and "still being scored" in capsys.readouterr().out
    ledger = root / "submissions" / "ledger.csv"
    assert [r["status"] for r in submissions_in(ledger)] == ["pending"]

    list_submissions(root=root, services=fast())  # still pending: nothing appended
    assert len(submissions_in(ledger)) == 1
    before = ledger.read_bytes()
    server.submissions[0].reads_until_scored = 0  # Kaggle finishes scoring
    rows = list_submissions(root=root, services=fast())
    assert rows[0]["status"] == "complete" and rows[0]["public_score"] == expected_public(competition["labels"], sub)
    assert ledger.read_bytes().startswith(before)  # appended, not rewritten
    assert "complete" in capsys.readouterr().out


def test_scoring_error_is_recorded_and_fails_the_command(make_server, competition, root, monkeypatch, capsys):
    shifted = competition["labels"].assign(id=competition["labels"].id + 1000)  # Kaggle expects other ids
    server = make_server(labels=shifted)
    write_submission(root, prediction(competition["labels"]), name="off")
    monkeypatch.setenv("FACEKIT_ROOT", str(root))
    assert main(["submit", "submissions/off.csv", "--sample", str(competition["sample"])]) == 1
    assert "Kaggle could not score submission" in capsys.readouterr().out
    final = read_rows(root / "submissions" / "ledger.csv")[-1]
    assert (final["status"], final["public_score"]) == ("error", "")
    assert final["error"] == server.submissions[0].error and "missing ids" in final["error"]


def test_ctrl_c_while_waiting_leaves_it_pending(make_server, competition, root, capsys):
    make_server(pending_reads=5)

    def interrupted(_seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        submit(write_submission(root, prediction(competition["labels"])), "x", root=root,
               services=fast(sleep=interrupted))
    rows = submissions_in(root / "submissions" / "ledger.csv")
    assert [r["status"] for r in rows] == ["pending"] and rows[0]["ref"]
    assert "stays recorded as pending" in capsys.readouterr().out


def test_sample_submission_is_fetched_when_not_local(server, competition, root):
    path = write_submission(root, prediction(competition["labels"]), cv=None)
    assert submit(path, "x", root=root, dry_run=True, services=fast()).status == "dry-run"
    assert (root / ".cache" / "kaggle" / DEFAULT_COMPETITION / "face_dataset" / "sample_submission.csv").is_file()
    assert server.count("DownloadDataFile") == 1 and server.count("StartSubmissionUpload") == 0


# ----------------------------------------------------------------------------- download
def test_download_extracts_once_then_the_clients_check_finds_it_unchanged(server, competition, root, capsys):
    result = download(root=root, services=fast())
    folder, archive = root / "data" / DEFAULT_COMPETITION, root / "data" / f"{DEFAULT_COMPETITION}.zip"
    assert result.downloaded and result.files == 4
    assert (folder / "face_dataset" / "sample_submission.csv").read_text() == competition["sample"].read_text()
    assert archive.read_bytes() == competition["zip"].read_bytes()  # kept where the client puts it
    assert sorted(p.name for p in (root / "data").iterdir()) == [DEFAULT_COMPETITION, archive.name]  # no staging

    kept, extracted = archive.stat(), (folder / "face_dataset" / "train.csv").stat()
    again = download(root=root, services=fast())
    assert not again.downloaded and again.files == 4 and "nothing to do" in capsys.readouterr().out
    assert archive.stat().st_ino == kept.st_ino  # not downloaded again: a download renames a new file in
    assert (folder / "face_dataset" / "train.csv").stat().st_ino == extracted.st_ino  # not extracted again
    assert server.count("DownloadDataFiles") == 2  # Kaggle asked once a call

    from kit.data import locate  # `./run.sh cv MODEL` finds the download without --data
    assert locate(None, project_root=root) == (folder / "face_dataset", DEFAULT_COMPETITION, False)


def test_download_repairs_the_extracted_files_from_the_archive(server, competition, root, capsys):
    download(root=root, services=fast())
    folder, archive = root / "data" / DEFAULT_COMPETITION, root / "data" / f"{DEFAULT_COMPETITION}.zip"
    kept, train = archive.stat(), (folder / "face_dataset" / "train.csv").read_text()
    (folder / "face_dataset" / "test.csv").unlink()
    (folder / "face_dataset" / "train.csv").write_text("cut short")
    (folder / "notes" / "mine.txt").parent.mkdir()
    (folder / "notes" / "mine.txt").write_text("the user's own")
    result = download(root=root, services=fast())
    assert not result.downloaded and archive.stat().st_ino == kept.st_ino
    out = capsys.readouterr().out
    assert "4 files extracted" in out and "kept notes/mine.txt, which is not Kaggle's" in out
    assert (folder / "notes" / "mine.txt").read_text() == "the user's own"   # only Kaggle's files are replaced
    assert (folder / "face_dataset" / "test.csv").is_file()
    assert (folder / "face_dataset" / "train.csv").read_text() == train


def test_download_again_when_the_archive_changed_on_kaggle(server, competition, root, tmp_path):
    download(root=root, services=fast())
    changed = tmp_path / "changed.zip"
    write_zip(changed, {"face_dataset/train.csv": "id,full_path,gender,age\n", "face_dataset/NEW.txt": "new"})
    later = competition["zip"].stat().st_mtime + 60  # Last-Modified counts whole seconds: a new archive is later
    os.utime(changed, (later, later))
    server.data_zip = changed
    folder = root / "data" / DEFAULT_COMPETITION
    (folder / "mine.txt").write_text("the user's own")
    result = download(root=root, services=fast())
    assert (folder / "mine.txt").read_text() == "the user's own"
    assert result.downloaded and result.files == 2  # though smaller than the archive here
    assert (folder / "face_dataset" / "NEW.txt").is_file() and not (folder / "face_dataset" / "test.csv").exists()
    assert (root / "data" / f"{DEFAULT_COMPETITION}.zip").read_bytes() == changed.read_bytes()


def test_download_again_over_a_truncated_archive(server, competition, root):
    download(root=root, services=fast())
    archive = root / "data" / f"{DEFAULT_COMPETITION}.zip"
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) // 2])  # newer than Kaggle's, but smaller than its Content-Length
    assert download(root=root, services=fast()).downloaded and archive.read_bytes() == whole


def test_a_download_cut_short_leaves_no_archive(server, competition, root):
    from kit.kaggle.api import connect

    api = connect()

    def cut_short(response, outfile, *args, **kwargs):  # the client writes in place; then Ctrl-C
        Path(outfile).write_bytes(competition["zip"].read_bytes()[:100])
        raise KeyboardInterrupt

    api.download_file = cut_short
    with pytest.raises(KeyboardInterrupt):
        download(root=root, services=fast(api=api))
    assert list((root / "data").iterdir()) == []  # no archive the client's check could take, no staging
    assert download(root=root, services=fast()).downloaded


def test_download_leaves_a_folder_it_did_not_make(server, root):
    folder = root / "data" / DEFAULT_COMPETITION
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("mine")
    with pytest.raises(SubmitError, match="not made by `download`"):
        download(root=root, services=fast())
    assert server.calls == [] and (folder / "mine.txt").is_file()
    assert download(root=root, force=True, services=fast()).downloaded and (folder / "mine.txt").read_text() == "mine"
    assert (folder / "face_dataset" / "train.csv").is_file()


def test_download_takes_over_a_folder_an_earlier_version_made(server, root):
    folder = root / "data" / DEFAULT_COMPETITION
    folder.mkdir(parents=True)
    (folder / ".kaggle-download.json").write_text("{}")  # its manifest of the remote headers, now unused
    assert download(root=root, services=fast()).downloaded
    assert (folder / "face_dataset" / "train.csv").is_file() and not (folder / ".kaggle-download.json").exists()


# ----------------------------------------------------------------------------- credentials
def test_missing_credentials_say_how_to_make_a_token(server, root, tmp_path):
    env = client_env(server, tmp_path / "home", KAGGLE_USERNAME=None, KAGGLE_KEY=None)
    done = run(["-m", "kit", "download"], env, root)
    assert done.returncode == 2
    assert "No usable Kaggle credentials" in done.stderr and TOKEN_URL in done.stderr
    assert server.calls == []


def test_kaggle_json_credentials_and_the_permission_warning(server, root, tmp_path):
    home = tmp_path / "home"
    config = home / "kaggle-config" / "kaggle.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"username": server.username, "key": server.key}))
    config.chmod(0o644)
    env = client_env(server, home, KAGGLE_USERNAME=None, KAGGLE_KEY=None)
    done = run(["-m", "kit", "download"], env, root)
    assert done.returncode == 0, done.stderr
    assert "readable by other users" in done.stderr and f"chmod 600 {config}" in done.stderr
    assert server.key not in done.stdout + done.stderr
    config.chmod(stat.S_IRUSR | stat.S_IWUSR)
    quiet = run(["-m", "kit", "download"], env, root)
    assert "readable" not in quiet.stderr and "nothing to do" in quiet.stdout


def test_api_token_credentials(server, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAGGLE_API_TOKEN", server.token)
    api = connect()
    assert api.competition_get_submission_limits(DEFAULT_COMPETITION).num_allowed_now == 5

    monkeypatch.setenv("KAGGLE_API_TOKEN", "revoked-token")
    with pytest.raises(MissingCredentials, match="KAGGLE_API_TOKEN is set, but Kaggle did not accept it"):
        connect()


# ----------------------------------------------------------------------------- the ledger itself
def test_ledger_is_append_only_and_checks_its_header(tmp_path):
    ledger = tmp_path / "ledger.csv"
    append_row(ledger, {"ref": 1, "status": "pending", "competition": "c", "message": 'comma, "quote"'})
    first = ledger.read_bytes()
    append_row(ledger, {"ref": 1, "status": "complete", "competition": "c", "public_score": "0.5"})
    assert ledger.read_bytes().startswith(first) and first.startswith(HEADER.encode())
    assert latest_states(read_rows(ledger))[0]["status"] == "complete"
    assert read_rows(ledger)[0]["message"] == 'comma, "quote"'

    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(LedgerError, match="other.csv"):
        append_row(foreign, {"ref": 2})
    assert foreign.read_text() == "a,b\n1,2\n"


# ----------------------------------------------------------------------------- the estimate against the scores
def with_estimate(path: Path, score: float, public: list[float], private: list[float]) -> Path:
    """Give a submission's NAME.json a leaderboard estimate, as `ensemble` writes it."""
    sidecar = path.with_suffix(".json")
    content = json.loads(sidecar.read_text()) if sidecar.exists() else {"sha256": sha256_file(path)}
    sidecar.write_text(json.dumps({**content, "leaderboard_estimate": {"score": score, "public": public,
                                                                       "private": private}}))
    return path


def test_submit_prints_the_estimate_beside_the_public_score(server, competition, root, capsys):
    sub = prediction(competition["labels"])
    path = with_estimate(write_submission(root, sub, cv=0.8123), 0.99, [0.985, 0.995], [0.986, 0.994])
    result = submit(path, "estimated", root=root, services=fast())
    public = float(result.public_score)
    out = capsys.readouterr().out
    assert "leaderboard estimate 0.99000, public 95% 0.9850-0.9950" in out
    assert f"(public - estimate = {public - 0.99:+.5f}; OUTSIDE the interval)" in out


LEDGER = [  # name, status, public score, estimate (score, public interval, private interval) or None
    ("a", "complete", "0.853", (0.850, [0.842, 0.858], [0.844, 0.856])),
    ("b", "complete", "0.862", (0.849, [0.841, 0.857], [0.838, 0.856])),   # wide low end: a selection bias
    ("c", "complete", "0.846", (0.848, [0.840, 0.856], [0.841, 0.855])),
    ("d", "complete", "0.870", None),                                       # the best public score, no estimate
    ("e", "error", "", (0.900, [0.892, 0.908], [0.894, 0.906])),           # Kaggle could not score it
]


def test_submissions_compare_public_with_estimate_and_propose_the_finals(root, capsys):
    ledger = root / "submissions" / "ledger.csv"
    for ref, (name, status, public, estimate) in enumerate(LEDGER, start=1):
        path = write_submission(root, pd.DataFrame({"id": [ref], "gender": [1], "age": [30.0]}), name=name)
        if estimate is not None:
            with_estimate(path, *estimate)
        append_row(ledger, {"time": "2026-12-03T10:00:00Z", "file": str(path), "sha256": sha256_file(path),
                            "ref": ref, "competition": DEFAULT_COMPETITION, "status": status, "public_score": public})
    rows = list_submissions(root=root, refresh=False, final=True)
    out = capsys.readouterr().out
    assert len(rows) == 5
    # public minus estimate over a, b and c: +0.003, +0.013, -0.002
    assert "public minus estimate over 3 submission(s): mean +0.0047, spread (sd) 0.0076" in out
    assert "OUTSIDE its public interval: 2" in out                      # b's 0.862 is above 0.857
    table = out.split("public minus estimate")[0]
    assert "0.8410-0.8570 OUTSIDE" in table and "0.8420-0.8580 OUTSIDE" not in table
    # The finals: a (the highest estimate), then c (the highest private low end of the others, though b's
    # estimate is higher); never d, whose public score is the best but which has no estimate, nor the error.
    finals = out.split("final selections")[1]
    assert "1. 1 " in finals and "the highest estimate, 0.8500" in finals
    assert "2. 3 " in finals and "highest low end of the private interval, 0.8410" in finals
    assert "within the private split's noise" in finals and "public scores are not used" in finals
    assert "d.csv" not in finals and "e.csv" not in finals


def test_submissions_final_command_line_without_estimates(root, monkeypatch, capsys):
    monkeypatch.setenv("FACEKIT_ROOT", str(root))
    path = write_submission(root, pd.DataFrame({"id": [1], "gender": [1], "age": [30.0]}), name="old")
    append_row(root / "submissions" / "ledger.csv", {"file": str(path), "sha256": sha256_file(path), "ref": 7,
                                                     "competition": DEFAULT_COMPETITION, "status": "complete",
                                                     "public_score": "0.84"})
    assert main(["submissions", "--no-refresh", "--final"]) == 0
    out = capsys.readouterr().out
    assert "no scored submission has a leaderboard estimate yet" in out
    assert "no scored submission has a leaderboard estimate (its NAME.json" in out
