"""A frozen trunk computed once: the same training as running it every step, for a fraction of the work."""
import numpy as np
import pandas as pd
import pytest
import torch

import kit.train
from kit.config import TrainConfig
from kit.errors import ConfigError
from kit.models import check_model_config, create_model
from kit.train import FoldData, fit_fold
from kit.trunk import TrunkFeatures, trunk_features

FAST = dict(model="dlib_age", epochs=2, size=64, batch_size=16, num_threads=1, frozen_trunk=2, augment="flip",
            tta=True, schedule="onecycle", optimizer="adamw")


def fold_data(n_train=48, n_valid=24, n_test=16, seed=0) -> FoldData:
    rng = np.random.default_rng(seed)
    n = n_train + n_valid
    ages, gender = rng.integers(1, 90, n), rng.integers(0, 2, n)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    images[..., 0] = np.clip(ages[:, None, None] * 2.5, 0, 255)
    frame = pd.DataFrame({"id": np.arange(n), "gender": gender, "age": ages, "cache_index": np.arange(n)})
    test = pd.DataFrame({"id": np.arange(n_test), "cache_index": np.arange(n_test)})
    return FoldData(train=frame[:n_train], valid=frame[n_train:], test=test, train_images=images,
                    test_images=images[:n_test].copy())


def test_the_trunk_s_features_are_what_the_network_computes_on_the_image_and_its_mirror():
    model = create_model("dlib_age", pretrained=True).eval()
    data = fold_data()
    cfg = TrainConfig(**FAST).resolved(sample=True)
    features = trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"),
                              amp_dtype=None)
    assert isinstance(features, TrunkFeatures) and features.n_train == 72
    from kit.augment import prepare

    x = prepare(torch.from_numpy(data.train_images[:4]).permute(0, 3, 1, 2))
    with torch.no_grad():
        assert torch.allclose(features.rows("train", np.arange(4), False), model.trunk(x, 2), atol=1e-5)
        assert torch.allclose(features.rows("train", np.arange(4), True), model.trunk(x.flip(3), 2), atol=1e-5)
        mixed = features.batch(np.array([0, 72 + 3]), torch.tensor([True, False]))   # a train row, a test row
        assert torch.allclose(mixed[1], model.trunk(prepare(torch.from_numpy(data.test_images[3:4])
                                                                 .permute(0, 3, 1, 2)), 2)[0], atol=1e-5)


def test_training_on_the_cached_trunk_is_training_with_the_trunk_frozen(tmp_path, monkeypatch):
    """The same fold trained twice: once on the cached features, once running the frozen trunk every step
    on the augmented images (the same flips): the same predictions, up to float rounding."""
    cfg = TrainConfig(**FAST).resolved(sample=True)
    cached = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "cached")
    monkeypatch.setattr(kit.train, "cacheable", lambda cfg: False)
    running = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "running")
    assert np.allclose(cached.oof["gender_prob"], running.oof["gender_prob"], atol=1e-4)
    assert np.allclose(cached.test["age_pred"], running.test["age_pred"], atol=1e-2)
    best = torch.load(tmp_path / "cached" / "best.pt", weights_only=False)["model"]
    pretrained = create_model("dlib_age", pretrained=True, age_outputs=1).state_dict()
    assert torch.equal(best["backbone.stem.weight"], pretrained["backbone.stem.weight"])          # frozen
    assert not torch.equal(best["backbone.blocks.4.conv2.weight"], pretrained["backbone.blocks.4.conv2.weight"])


@pytest.mark.parametrize("values, message", [
    (dict(model="resnet18", frozen_trunk=2), "resnet18 has 0 blocks to freeze"),
    (dict(model="dlib_age", frozen_trunk=6), "dlib_age has 5 blocks to freeze"),
    (dict(model="dlib_age", frozen_trunk=2, pretrained=False), "a frozen trunk of random weights learns nothing"),
])
def test_a_trunk_that_cannot_be_frozen_is_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        check_model_config(TrainConfig(**values))
