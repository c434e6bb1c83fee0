"""The age target: regression on the standardised age, or a label distribution over one-year bins."""
import math

import numpy as np
import pytest
import torch

from kit.age import MAX_AGE, SIGMA_YEARS, AgeTarget


def test_regression_standardises_with_the_training_ages():
    ages = np.array([10.0, 20.0, 30.0, 40.0])
    target = AgeTarget.for_training("regression", "l1", ages)
    assert target.mean == 25.0 and target.std == pytest.approx(ages.std(ddof=1))
    assert target.outputs == 1
    # An output of 0 is the mean age, 1 is one standard deviation above it.
    assert target.years(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([25.0, 25.0 + target.std])
    # A perfect prediction costs nothing; the loss is measured in standard deviations.
    perfect = (torch.tensor(ages, dtype=torch.float32) - target.mean) / target.std
    assert target.loss(perfect, torch.tensor(ages)).item() == pytest.approx(0.0, abs=1e-6)
    assert target.loss(perfect + 0.5, torch.tensor(ages)).item() == pytest.approx(0.5)


def test_mse_and_l1_differ_as_rmse_and_mae_do():
    target_l1 = AgeTarget("regression", "l1", mean=0.0, std=1.0)
    target_mse = AgeTarget("regression", "mse", mean=0.0, std=1.0)
    errors = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert target_l1.loss(errors, torch.zeros(4)).item() == pytest.approx(1.0)
    assert target_mse.loss(errors, torch.zeros(4)).item() == pytest.approx(4.0)


def test_a_single_training_age_does_not_divide_by_zero():
    target = AgeTarget.for_training("regression", "mse", [30.0])
    assert target.std == 1.0 and target.years(torch.tensor([0.0])).item() == 30.0


def test_bins_predict_the_expected_age():
    target = AgeTarget("bins", "l1", mean=33.0, std=19.5)
    assert target.outputs == MAX_AGE + 1
    peaked = torch.full((2, MAX_AGE + 1), -1e4)
    peaked[0, 7] = 0.0
    peaked[1, 40] = peaked[1, 50] = 0.0   # half at 40, half at 50
    assert target.years(peaked).tolist() == pytest.approx([7.0, 45.0])


def test_bins_loss_is_smallest_at_the_label_distribution():
    target = AgeTarget("bins", "mse", mean=33.0, std=19.5)
    ages = torch.tensor([10.0, 26.0, 71.0])
    centers = torch.arange(MAX_AGE + 1, dtype=torch.float32)
    gaussian_logits = -(centers - ages[:, None]) ** 2 / (2 * SIGMA_YEARS ** 2)
    at_truth = target.loss(gaussian_logits, ages).item()
    assert at_truth == pytest.approx(0.0, abs=1e-4)  # KL 0, and its expectation is the true age
    shifted = -(centers - ages[:, None] - 5) ** 2 / (2 * SIGMA_YEARS ** 2)
    assert target.loss(shifted, ages).item() > at_truth + 0.05
    assert target.years(gaussian_logits).tolist() == pytest.approx(ages.tolist(), abs=1e-2)


def test_bins_loss_gives_gradients_to_every_output():
    target = AgeTarget("bins", "l1", mean=33.0, std=19.5)
    output = torch.zeros(4, MAX_AGE + 1, requires_grad=True)
    target.loss(output, torch.tensor([1.0, 30.0, 90.0, 116.0])).backward()
    assert torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert not math.isnan(target.loss(output.detach()[:1], torch.tensor([130.0])).item())  # beyond the last bin
