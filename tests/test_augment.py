"""Batched augmentation: what each strength does to a batch, reproducibly from the generator."""
import pytest
import torch

from kit.augment import AUGMENT_STRENGTHS, IMAGENET_MEAN, IMAGENET_STD, augment, prepare


def batch(n=32, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_flip_only_mirrors_some_images_and_changes_no_pixel():
    x = batch()
    out = augment(x, "flip", torch.Generator().manual_seed(1))
    same = [torch.equal(out[i], x[i]) for i in range(len(x))]
    mirrored = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 0 < sum(mirrored) < len(x)        # a coin per image, not per batch


@pytest.mark.parametrize("strength", [s for s, params in AUGMENT_STRENGTHS.items() if params and any(params)])
def test_geometric_and_colour_strengths_are_reproducible_and_stay_in_range(strength):
    x = batch()
    first = augment(x, strength, torch.Generator().manual_seed(3))
    again = augment(x, strength, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == x.shape
    assert first.min() >= 0 and first.max() <= 1
    unflipped_and_changed = [not torch.equal(first[i], x[i]) and not torch.equal(first[i], x[i].flip(2))
                             for i in range(len(x))]
    assert all(unflipped_and_changed)        # rotation and colour touch every image


def test_prepare_normalises_without_augmenting_when_told_none():
    x_uint8 = (batch(4) * 255).to(torch.uint8)
    out = prepare(x_uint8, strength="none")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (x_uint8.float() / 255 - mean) / std)
    assert out.is_contiguous(memory_format=torch.channels_last)
