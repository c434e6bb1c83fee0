"""The Optuna tuner: local workers on a journal file, a killed worker, PostgreSQL workers, pruning, best.json.

The PostgreSQL tests need FACEKIT_TEST_POSTGRES_URL (`source .ci/postgres.sh` starts a server and sets
it). They skip without it, except under CI=true, where they fail so that CI cannot skip them silently.
"""
import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from kit.__main__ import main as facekit
from kit.config import TrainConfig
from kit.cv import run_cv
from kit.errors import UserError
from kit.options import add_config_arguments, add_model_argument, config_from_args, model_from_args
from kit.tune import Hooks, Study, tune
from kit.tune.objective import RunningScore
from kit.tune.optuna_compat import SUPPORTED, check_supported, heartbeat_base, optuna_version, storage_of, trial_id
from kit.tune.space import load_space
from kit.tune.storage import journal_heartbeat_storage_class, mask_url, open_storage

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed:UserWarning")]

FAST = ["--model", "scratch", "--epochs", "2", "--size", "32", "--batch-size", "16", "--folds", "3",
        "--folds-per-trial", "1", "--num-threads", "1"]
FAST_CFG = dict(model="scratch", epochs=2, size=32, batch_size=16, folds=3, num_threads=1)


def tune_cli(project, data, *args):
    env = {**os.environ, "FACEKIT_ROOT": str(project), "PYTHONPATH": str(Path(__file__).parents[1]),
           "TQDM_DISABLE": "1"}
    return [sys.executable, "-m", "kit", "tune", "--data", str(data), *FAST, *args], env


def journal_study(project, name):
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(project / "tuning" / name / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def postgres_url() -> str:
    url = os.environ.get("FACEKIT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CI is set but FACEKIT_TEST_POSTGRES_URL is not: `source .ci/postgres.sh` before the tests")
        pytest.skip("FACEKIT_TEST_POSTGRES_URL is unset (`source .ci/postgres.sh` starts a server)")
    return url


# ----------------------------------------------------------------------------- real processes, tiny data

def test_two_local_workers_share_a_journal_study_and_best_json_reproduces(tiny_competition, project):
    command, env = tune_cli(project, tiny_competition, "--study", "local", "--trials", "3", "--workers", "2")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    study = journal_study(project, "local")
    assert states(study) == ["COMPLETE"] * 3          # 2 + 1 trials, nothing failed
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2   # two processes did them
    assert study.trials[0].user_attrs.get("baseline") and study.trials[0].params["lr_backbone"] == 1e-3

    out = project / "tuning" / "local"
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == study.best_trial.number and best["value"] == pytest.approx(study.best_value)
    assert best["trials"]["complete"] == 3 and best["baseline"]["trial"] == 0
    assert best["params"]["epochs"] == 2 and best["params"]["size"] == 32   # the fixed setup comes along
    assert best["params"]["lr_backbone"] == best["tuned"]["lr_backbone"]
    for plot in ("history.png", "slice.png", "importances.png"):
        assert (out / plot).stat().st_size > 5_000
    assert len(pd.read_csv(out / "trials.csv")) == 3
    assert "baseline (trial 0)" in done.stdout and "--params" in done.stdout
    # Every line a worker prints, the training's own included, carries its worker and trial tags.
    tagged_lines = [line for line in done.stdout.splitlines() if line.startswith("[w")]
    assert any(line.startswith(("[w0] [trial ", "[w1] [trial ")) and " epoch " in line for line in tagged_lines)
    assert any("] [trial " in line and "fold 0 done" in line for line in tagged_lines)

    # `cv MODEL --params best.json` reads it, and its fold 0 reproduces the best trial's fold 0.
    parser = argparse.ArgumentParser()
    add_model_argument(parser, positional=True)
    add_config_arguments(parser)
    args = parser.parse_args(["scratch", "--params", str(out / "best.json"), "--data", str(tiny_competition),
                              "--num-threads", "1"])
    cfg = config_from_args(args, model=model_from_args(args))
    assert {k: getattr(cfg, k) for k in best["params"]} == best["params"]
    rerun = run_cv(TrainConfig(**{**cfg.to_dict(), "only_folds": [0], "name": "tuned"}), root=project)
    assert rerun.fold_scores[0].score == pytest.approx(best["fold_scores"]["0"])


def test_killed_worker_fails_its_trial_and_the_study_resumes(competition_copy, project):
    args = ["--study", "killed", "--epochs", "3"]
    command, env = tune_cli(project, competition_copy, *args, "--trials", "2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = project / "tuning/killed/journal.log"
    lock = Path(f"{journal}.lock")
    # Kill it mid-trial, after it reported its first epoch to the journal and let go of the file's lock
    # (a writer killed holding it makes the next one wait out Optuna's 30 s lock grace period).
    reported = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        reported = journal.exists() and '"op_code":7' in journal.read_text()
        if reported and not lock.exists():
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert reported, "the trial never reported its first epoch"
    assert states(journal_study(project, "killed")) == ["RUNNING"], "killed too late to test a dead trial"

    command, env = tune_cli(project, competition_copy, *args, "--trials", "2")
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    study = journal_study(project, "killed")
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "1 running" in resumed.stdout and "trial(s) [0]" in resumed.stdout
    best = json.loads((project / "tuning/killed/best.json").read_text())
    assert best["trials"]["fail"] == 1 and best["trials"]["complete"] == 2


def reporting_trials(journal: Path) -> set:
    """Trials that reported an intermediate value (Optuna's journal op code 7)."""
    logs = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    return {log["trial_id"] for log in logs if log["op_code"] == 7}


def test_sigterm_to_the_parent_stops_its_workers_and_fails_their_trials(competition_copy, project):
    command, env = tune_cli(project, competition_copy, "--study", "term", "--epochs", "20", "--trials", "2",
                            "--workers", "2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = project / "tuning/term/journal.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:   # both workers inside a trial
        if journal.exists() and len(reporting_trials(journal)) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    study = journal_study(project, "term")
    assert states(study) == ["FAIL", "FAIL"], output[-3000:]
    for trial in study.trials:   # the workers are gone, not left training on their own
        with pytest.raises(ProcessLookupError):
            os.kill(trial.user_attrs["worker"]["pid"], 0)


def test_journal_heartbeat_fails_silent_trials_after_the_grace_period(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    storage = journal_heartbeat_storage_class()(JournalFileBackend(str(tmp_path / "journal.log")),
                                                  heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="beats")
    silent, alive = study.ask(), study.ask()
    storage.record_heartbeat(silent._trial_id)
    time.sleep(1.3)
    storage.record_heartbeat(alive._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert states(study) == ["FAIL", "RUNNING"]


def journal_with_trials(folder: Path, n: int) -> Path:
    storage = open_storage(None, folder, heartbeat_interval=30, grace_period=120)
    study = optuna.create_study(storage=storage, study_name="jt")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=n)
    return folder / "journal.log"


def test_a_journal_cut_short_is_repaired_never_appended_onto(tmp_path, caplog):
    journal = journal_with_trials(tmp_path, 2)
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-25])                      # a crash mid-write, a full disk
    storage = open_storage(None, tmp_path, heartbeat_interval=30, grace_period=120)
    [aside] = tmp_path.glob("journal.log.damaged-*")
    kept = journal.read_bytes()
    assert kept + aside.read_bytes() == whole[:-25] and kept.endswith(b"\n")
    assert f"set aside in {aside.name}" in caplog.text
    study = optuna.load_study(study_name="jt", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())   # every record whole
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    reread = optuna.load_study(study_name="jt", storage=storage)
    assert states(reread)[-1] == "COMPLETE"


def test_a_journal_damaged_before_its_last_record_is_refused(tmp_path):
    journal = journal_with_trials(tmp_path, 1)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines[:2], b'{"op_code": 4, "tri\n', *lines[2:]]))
    before = journal.read_bytes()
    with pytest.raises(UserError, match=r"journal.log: record 3 of \d+ is damaged.*new study"):
        open_storage(None, tmp_path, heartbeat_interval=30, grace_period=120)
    assert journal.read_bytes() == before and not list(tmp_path.glob("*.damaged-*"))


@pytest.mark.parametrize("url, shown", [
    ("postgresql://bob:p@ss@w0rd@127.0.0.1:1/x", "postgresql://bob:***@127.0.0.1:1/x"),
    ("postgresql://bob:p:ss@db:5432/x", "postgresql://bob:***@db:5432/x"),
    ("postgresql://bob:p/ss@db/x", "postgresql://***"),
    ("postgresql://db/x?user=bob&password=s3cret", "postgresql://db/x?user=bob&password=***"),
    ("postgresql://bob@db/x", "postgresql://bob@db/x"),
])
def test_storage_urls_are_masked_whole(url, shown):
    assert mask_url(url) == shown


def test_a_storage_error_never_prints_the_password(project, monkeypatch, capsys):
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    assert facekit(["tune", "--storage", "postgresql://bob:p@ss@w0rd@127.0.0.1:1/x", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "ss@w0rd" not in err and "bob:***@127.0.0.1:1/x" in err and "as %40" in err


def test_two_workers_on_postgres_add_up(tiny_competition, project):
    url = postgres_url()
    study_name = f"pg-{uuid.uuid4().hex[:8]}"
    command, env = tune_cli(project, tiny_competition, "--study", study_name, "--storage", url, "--trials", "2")
    workers = [subprocess.Popen([*command, "--worker-index", str(i)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out[-3000:] + err[-3000:]
        assert "Traceback" not in err and url.split("@")[0] not in out + err   # and the password is masked
    storage = open_storage(url, project, heartbeat_interval=30, grace_period=120)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        assert states(study) == ["COMPLETE"] * 4
        assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    finally:
        optuna.delete_study(study_name=study_name, storage=storage)


def test_postgres_heartbeat_fails_a_dead_workers_trial(tiny_competition, project):
    url = postgres_url()
    storage = open_storage(url, project, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name=f"pg-dead-{uuid.uuid4().hex[:8]}", storage=storage)
    try:
        dead = study.ask()   # as if its worker died on another machine right after its last heartbeat
        storage.record_heartbeat(dead._trial_id)
        time.sleep(3)
        study.optimize(lambda trial: 1.0, n_trials=1)   # a worker starting a trial fails the stale one
        assert states(study) == ["FAIL", "COMPLETE"]
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage)


# ----------------------------------------------------------------------------- in process, training faked

def fake_train(calls):
    """Stands in for run_cv: a score that grows with the learning rate, and oof.csv files to pool."""
    def train(cfg, *, root, run_dir, on_epoch, on_fold):
        quality = min(1.0, max(0.0, (6 + math.log10(cfg.lr_backbone)) / 4))
        for fold in cfg.only_folds:
            for epoch in range(cfg.epochs):
                calls.append((cfg.lr_backbone, fold, epoch))
                on_epoch(fold, epoch, _scores(quality * (epoch + 1) / cfg.epochs))
            rows = 10
            oof = pd.DataFrame({"id": range(rows), "fold": fold, "gender": [0, 1] * (rows // 2),
                                "age": [30.0] * rows, "gender_prob": [0.0, 1.0] * (rows // 2),
                                "age_pred": [30.0 + 30 * (1 - quality)] * rows})
            (run_dir / f"fold{fold}").mkdir(parents=True, exist_ok=True)
            oof.to_csv(run_dir / f"fold{fold}" / "oof.csv", index=False)
            on_fold(fold, _scores(quality))
    return train


def _scores(score):
    from kit.metric import Scores

    return Scores(score=score, gender_f1=score, age_score=score, age_rmse=1.0, age_mae=1.0)


def test_running_score_reports_each_step_once():
    running = RunningScore([0, 1], epochs=2)
    assert running.epoch(0, 0, 0.5) == (0, 0.5)
    assert running.epoch(0, 1, 0.4) == (1, 0.5)          # the fold's best epoch so far
    running.fold_done(0, 0.5)
    assert running.epoch(1, 0, 0.7) == (2, pytest.approx(0.6))
    assert running.epoch(1, 1, 0.9) == (3, pytest.approx(0.7))
    assert running.last_step == 3


def test_median_pruner_stops_a_clearly_bad_trial_early(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST_CFG, "epochs": 4})
    space = {"lr_backbone": {"low": 1e-6, "high": 1e-2, "log": True}}
    storage = open_storage(None, project / "tuning" / "prune", heartbeat_interval=30, grace_period=120)
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    for lr in (1e-3, 3e-3, 5e-3, 1e-6):              # three good trials, then a hopeless one
        study.enqueue_trial({"lr_backbone": lr})
    calls = []
    result = tune(cfg, trials=4, study=Study("prune", search_space=space, baseline=False), folds_per_trial=2,
                  root=project, hooks=Hooks(train=fake_train(calls)))
    trials = result.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert max(trials[3].intermediate_values) == 2   # stopped at the first step after the warm-up
    assert len([c for c in calls if c[0] == 1e-6]) == 3 < 8
    assert result.best["trials"]["pruned"] == 1 and result.best["params"]["lr_backbone"] == 5e-3


def test_a_study_refuses_trials_made_with_another_setup(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **FAST_CFG)
    tune(cfg, trials=1, study=Study("s"), folds_per_trial=1, root=project, hooks=Hooks(train=fake_train([])))
    changed = TrainConfig(**{**cfg.to_dict(), "epochs": 3})
    with pytest.raises(UserError, match=r"another setup \(epochs: 2 -> 3\).*another --study"):
        tune(changed, trials=1, study=Study("s"), folds_per_trial=1, root=project,
             hooks=Hooks(train=fake_train([])))
    more = tune(cfg, trials=2, study=Study("s"), folds_per_trial=1, root=project, hooks=Hooks(train=fake_train([])))
    assert len(more.study.trials) == 3             # --trials adds to what the study has


def test_time_limit_stops_the_running_trial_and_repeated_failures_stop_a_worker(tiny_competition, project):
    cfg = TrainConfig(data=str(tiny_competition), **{**FAST_CFG, "epochs": 8})
    now = [0.0]

    def clock():   # an epoch takes 0.5 s of this clock; nothing else does
        return now[0]

    inner = fake_train([])

    def slow(cfg, **kwargs):
        def on_epoch(*args, _outer=kwargs["on_epoch"]):
            now[0] += 0.5
            _outer(*args)
        return inner(cfg, **{**kwargs, "on_epoch": on_epoch})

    timed = tune(cfg, trials=5, study=Study("timeout"), folds_per_trial=1, time_limit=2, root=project,
                 hooks=Hooks(train=slow, clock=clock))
    assert states(timed.study) == ["FAIL"] and timed.exit_code == 0   # and no trial started after the limit
    assert timed.study.trials[0].user_attrs["failure"] == "stopped by --time-limit"
    assert max(timed.study.trials[0].intermediate_values) == 4   # the epoch that ended past 2 s: 5 x 0.5

    def broken(cfg, **kwargs):
        raise RuntimeError("CUDA out of memory (pretend)")

    failed = tune(cfg, trials=5, study=Study("broken"), folds_per_trial=1, root=project, hooks=Hooks(train=broken))
    assert states(failed.study) == ["FAIL"] * 3 and failed.exit_code == 1 and failed.best is None


def test_default_spaces_hold_the_baseline():
    from kit.tune.space import check_space, default_space, in_space

    pretrained = TrainConfig(model="resnet18", pretrained=True, epochs=6).resolved(sample=False)
    space = default_space(pretrained)
    assert set(space) == {"lr_head", "lr_backbone", "unfreeze_epoch"} and space["unfreeze_epoch"]["high"] == 6
    assert space["lr_head"]["log"] and space["lr_backbone"]["log"]
    random_init = TrainConfig(model="resnet18", pretrained=False).resolved(sample=False)
    assert set(default_space(random_init)) == {"lr_backbone", "schedule", "augment"}
    for cfg in (pretrained, random_init, TrainConfig(**FAST_CFG).resolved(sample=True)):
        check_space(default_space(cfg), cfg)
        assert all(in_space(getattr(cfg, k), entry) for k, entry in default_space(cfg).items())


@pytest.mark.parametrize("space, message", [
    ('{"lr_backbone": {"low": 1e-4, "high": 2, "log": true}}', r"'lr_backbone': 2 is not a valid value.*in \(0, 1\)"),
    ('{"epochs": {"low": 1, "high": 5}}', r"'epochs': not a tunable field"),
    ('{"lr_backbone": {"lo": 1e-4, "high": 1e-2}}', r"'lr_backbone': unknown key\(s\) \['lo'\]"),
    ('{"weight_decay": {"low": 0, "high": 0.1, "log": true}}', r"'weight_decay': a log scale needs low > 0"),
    ('{"lr_backbone": {"low": 1e-2, "high": 1e-4}}', r"'lr_backbone': low \(0.01\) must be below high"),
    ('{"batch_size": {"low": 8.5, "high": 64}}', r"'batch_size': low must be an integer"),
    ('{"optimizer": {"choices": ["adam", "adagrad"]}}', r"'optimizer': 'adagrad' is not a valid value"),
    ('{"schedule": {"choices": "cosine"}}', r"'schedule': choices must be a non-empty list"),
    ('{"unfreeze_epoch": {"low": 0, "high": 2}}', r"'unfreeze_epoch': only tuned when the model starts pretrained"),
    ('{"lr_backbone": null, "schedule": null, "augment": null}', r"the search space is empty"),
    ('{"lr_backbone": ', r"not valid JSON"),
])
def test_bad_space_files_are_refused_naming_the_key(tmp_path, space, message):
    path = tmp_path / "space.json"
    path.write_text(space)
    cfg = TrainConfig(**FAST_CFG).resolved(sample=True)
    with pytest.raises(UserError, match=message):
        load_space(path, cfg)


def test_space_file_overrides_the_default_and_cli_reports_errors(tiny_competition, project, tmp_path, monkeypatch,
                                                                  capsys):
    path = tmp_path / "space.json"
    path.write_text('{"augment": null, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": true}}')
    space = load_space(path, TrainConfig(**FAST_CFG).resolved(sample=True))
    assert set(space) == {"lr_backbone", "schedule", "weight_decay"}
    path.write_text('{"epochs": {"low": 1, "high": 3}}')
    monkeypatch.setenv("FACEKIT_ROOT", str(project))
    assert facekit(["tune", "--trials", "1", "--data", str(tiny_competition), *FAST, "--space", str(path)]) == 2
    assert f"error: --space {path}: 'epochs': not a tunable field" in capsys.readouterr().err
    assert not (project / "tuning").exists()


def test_the_optuna_internals_the_tuner_uses_exist_in_the_supported_range(tmp_path):
    low, high = SUPPORTED
    assert low <= optuna_version() < high
    check_supported()
    storage = open_storage(None, tmp_path, heartbeat_interval=1, grace_period=2)
    assert isinstance(storage, heartbeat_base())
    study = optuna.create_study(storage=storage, study_name="compat")
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert storage_of(study) is storage and trial_id(frozen) == trial._trial_id
    assert storage.get_trial(trial_id(frozen)).number == 0
