"""The age target: what the age head outputs, the loss it learns from, and how its output becomes years.

    target = AgeTarget.for_training("bins", "l1", train_ages)   # mean and std from the training fold
    loss = target.loss(age_output, ages_in_years)
    years = target.years(age_output)

regression: one output, the age standardised by the training fold's mean and std, so that the head
    starts at the mean age instead of climbing from 0 to ~33 years, and its loss starts near the
    gender cross-entropy's (~0.7): an age loss weight of 1 balances the two heads.
bins: a label distribution over one-year bins 0..MAX_AGE (DLDL, Gao et al. 2017). The true age becomes a
    Gaussian of SIGMA_YEARS over the bins; the loss is the KL divergence to it plus the point loss of
    the expected age (DLDL-v2); the prediction is the expected age. Neighbouring ages share evidence,
    which helps where ages are rare (over 60 here).
The point loss is L1 or MSE of the standardised age. The competition scores RMSE: L1 pulls towards the
conditional median, MSE towards the mean, which is what minimises RMSE.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MAX_AGE = 120        # UTKFace's oldest is 116
SIGMA_YEARS = 3.0    # width of the label distribution: about the spread of a person's apparent age


def head_outputs(kind: str) -> int:
    """Width of the age head for an age target kind (regression | bins)."""
    return 1 if kind == "regression" else MAX_AGE + 1


def bin_centers(device: torch.device) -> torch.Tensor:
    return torch.arange(MAX_AGE + 1, device=device, dtype=torch.float32)


@dataclass(frozen=True)
class AgeTarget:
    kind: str            # regression | bins
    point_loss: str      # l1 | mse
    mean: float          # of the training fold's ages (years)
    std: float

    @classmethod
    def for_training(cls, kind: str, point_loss: str, train_ages) -> AgeTarget:
        ages = np.asarray(train_ages, dtype=np.float64)
        std = float(ages.std(ddof=1)) if len(ages) > 1 else 0.0
        return cls(kind, point_loss, float(ages.mean()), std if std > 0 else 1.0)

    @property
    def outputs(self) -> int:
        """Width of the age head."""
        return head_outputs(self.kind)

    def years(self, output: torch.Tensor) -> torch.Tensor:
        """Age head output [B] or [B, bins] -> predicted age in years [B]."""
        output = output.float()
        if self.kind == "regression":
            return output * self.std + self.mean
        return output.softmax(1) @ bin_centers(output.device)

    def loss(self, output: torch.Tensor, ages: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The age loss for a batch; `ages` in years. `weights`: per row (pseudo-labelled rows count less)."""
        output, ages = output.float(), ages.float()
        standardised_target = (ages - self.mean) / self.std
        reduction = "none" if weights is not None else "mean"
        distribution_loss = 0.0
        if self.kind == "regression":
            standardised_pred = output
        else:
            squared_distance = (bin_centers(output.device) - ages.clamp(0, MAX_AGE)[:, None]) ** 2
            label_distribution = torch.softmax(-squared_distance / (2 * SIGMA_YEARS ** 2), 1)
            if weights is None:
                distribution_loss = F.kl_div(output.log_softmax(1), label_distribution, reduction="batchmean")
            else:
                distribution_loss = F.kl_div(output.log_softmax(1), label_distribution, reduction="none").sum(1)
            standardised_pred = (self.years(output) - self.mean) / self.std
        point_loss = F.l1_loss if self.point_loss == "l1" else F.mse_loss
        point = point_loss(standardised_pred, standardised_target, reduction=reduction)
        if weights is None:
            return point + distribution_loss
        return ((point + distribution_loss) * weights).sum() / weights.sum()
