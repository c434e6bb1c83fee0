"""report.png: learning curves, predicted vs true age, the gender confusion matrix, errors by age band."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kit.files import atomic_path
from kit.metric import rmse

AGE_BANDS = [0, 10, 20, 30, 40, 50, 60, 70, 200]


def errors_by_age_band(oof: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Age RMSE and gender F1 per true-age band: where the errors are."""
    from sklearn.metrics import f1_score

    bands = pd.cut(oof["age"], AGE_BANDS, right=False,
                   labels=[f"{a}-{b - 1}" if b < 200 else f"{a}+" for a, b in zip(AGE_BANDS, AGE_BANDS[1:])])
    rows = []
    for band, part in oof.groupby(bands, observed=True):
        decided = (part["gender_prob"] >= threshold).astype(int)
        rows.append({"band": str(band), "rows": len(part), "age_rmse": rmse(part["age"], part["age_pred"]),
                     "gender_f1": f1_score(part["gender"], decided, average="macro", labels=[0, 1], zero_division=0)})
    return pd.DataFrame(rows)


def make_report(path: Path, oof: pd.DataFrame, histories: list[pd.DataFrame], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax = axes[0, 0]
    for history in histories:
        ax.plot(history["epoch"], history["score"], marker=".", label=f"fold {int(history['fold'].iloc[0])}")
    ax.set(title="held-out score per epoch", xlabel="epoch", ylabel="competition score")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for history in histories:
        ax.plot(history["epoch"], history["train_loss"], marker=".")
    ax.set(title="training loss (gender CE + w * age loss)", xlabel="epoch")
    ax = axes[0, 2]
    ax.scatter(oof["age"], oof["age_pred"], s=3, alpha=0.3)
    top = float(max(oof["age"].max(), oof["age_pred"].max()))
    ax.plot([0, top], [0, top], color="black", lw=1)
    ax.set(title="out-of-fold age: predicted vs true", xlabel="true age", ylabel="predicted age")
    ax = axes[1, 0]
    matrix = confusion_matrix(oof["gender"], (oof["gender_prob"] >= 0.5).astype(int), labels=[0, 1])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set(title="gender confusion (out-of-fold)", xticks=[0, 1], yticks=[0, 1],
           xticklabels=["female", "male"], yticklabels=["female", "male"], xlabel="predicted", ylabel="true")
    bands = errors_by_age_band(oof)
    ax = axes[1, 1]
    ax.bar(bands["band"], bands["age_rmse"], color="tab:orange")
    ax.set(title="age RMSE by true age band", ylabel="RMSE (years)")
    ax.tick_params(axis="x", rotation=45)
    ax = axes[1, 2]
    ax.bar(bands["band"], bands["gender_f1"], color="tab:green")
    ax.set(title="gender macro-F1 by true age band", ylim=(0, 1))
    ax.tick_params(axis="x", rotation=45)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
