"""What a tuning study leaves in tuning/<study>/: best.json, trials.csv, PNG plots, a printed table.

best.json keeps the best trial's whole training configuration under "params" (the TrainConfig
fields `cv --params` reads: the tuned ones and the fixed ones such as epochs and size), beside its
score, the baseline's score and the trial counts.
"""
from __future__ import annotations

import datetime
import warnings
from pathlib import Path

from kit.files import atomic_path, write_csv, write_json
from kit.log import log

PLOTS = {"history.png": "plot_optimization_history", "importances.png": "plot_param_importances",
         "slice.png": "plot_slice", "intermediate.png": "plot_intermediate_values"}


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        finished = t.datetime_complete and t.datetime_start
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if finished else None
        last_step = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "baseline": bool(t.user_attrs.get("baseline")), **{f"param_{k}": v for k, v in t.params.items()},
                     "last_step": last_step, "seconds": duration, "failure": t.user_attrs.get("failure"),
                     "run_dir": t.user_attrs.get("run_dir")})
    return rows


def state_counts(study) -> dict[str, int]:
    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def write_report(study, study_dir: Path, *, data: str | None = None, storage: str | None = None) -> dict | None:
    """Write best.json, trials.csv and the plots; print the best trials. Returns best.json's content."""
    import pandas as pd
    from optuna.trial import TrialState

    study_dir = Path(study_dir)
    rows = trial_rows(study)
    counts = state_counts(study)
    if rows:
        write_csv(study_dir / "trials.csv", pd.DataFrame(rows))
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    counted = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if not complete:
        log(f"study {study.study_name}: no complete trial yet ({counted or 'no trials'})")
        return None
    best = max(complete, key=lambda t: t.value)
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    model = best.user_attrs.get("config", {}).get("model", "MODEL")
    best_path = study_dir / "best.json"
    try:
        shown = best_path.relative_to(Path.cwd())
    except ValueError:
        shown = best_path
    command = f"./run.sh cv {model} --params {shown}" + (f" --data {data}" if data else "")
    result = {
        "study": study.study_name,
        "value": best.value,
        "trial": best.number,
        "params": best.user_attrs.get("config", best.params),
        "tuned": best.params,
        "scores": best.user_attrs.get("scores"),
        "fold_scores": best.user_attrs.get("fold_scores"),
        "folds": study.user_attrs.get("setup", {}).get("folds"),
        "baseline": None if baseline is None else {"trial": baseline.number, "value": baseline.value,
                                                     "tuned": baseline.params},
        "trials": {**counts, "total": sum(counts.values())},
        "storage": storage,
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
    }
    write_json(best_path, result)
    write_plots(study, study_dir, n_complete=len(complete))

    log(f"\nstudy {study.study_name}: {sum(counts.values())} trials ({counted})")
    log(format_table(complete, best, limit=5))
    if baseline is not None:
        log(f"baseline (trial {baseline.number}): {baseline.value:.4f}   best (trial {best.number}): "
            f"{best.value:.4f} ({best.value - baseline.value:+.4f})")
    log(f"wrote {best_path}, trials.csv and plots in {study_dir}\nall folds with the best parameters: {command}")
    return result


def format_table(complete, best, *, limit: int = 5) -> str:
    top = sorted(complete, key=lambda t: t.value, reverse=True)[:limit]
    names = sorted({k for t in top for k in t.params})
    header = f"  {'trial':>6} {'score':>7}  " + "  ".join(f"{n:>12}" for n in names) + "  seconds"
    lines = [f"best {len(top)} of {len(complete)} complete trial(s):", header]
    for t in top:
        cells = "  ".join(f"{format_value(t.params.get(n)):>12}" for n in names)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_start else float("nan")
        mark = "*" if t.number == best.number else " "
        lines.append(f"{mark} {t.number:>6} {t.value:7.4f}  {cells}  {seconds:7.0f}"
                     + ("  (baseline)" if t.user_attrs.get("baseline") else ""))
    return "\n".join(lines)


def format_value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_plots(study, study_dir: Path, *, n_complete: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as plots

    written = []
    for name, function in PLOTS.items():
        if name == "importances.png" and n_complete < 2:
            log(f"{name}: skipped (parameter importances need 2 complete trials, the study has {n_complete})")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # the matplotlib backend is "experimental" in Optuna
                axes = getattr(plots, function)(study)
            figure = np.ravel(axes)[0].figure
            if function == "plot_slice":  # one panel per parameter: give each room for its tick labels
                figure.set_size_inches(max(6.4, 3.6 * np.size(axes)), 4.8)
            with atomic_path(study_dir / name) as tmp:
                figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            written.append(study_dir / name)
        except Exception as err:  # a plot Optuna cannot draw for this study (e.g. one distinct value)
            log(f"{name}: skipped ({type(err).__name__}: {err})")
        finally:
            plt.close("all")
    return written
