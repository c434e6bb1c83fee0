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


def test_a_trunk_cache_larger_than_memory_is_refused_before_it_is_computed(monkeypatch):
    import kit.trunk

    model = create_model("dlib_age", pretrained=True).eval()
    seen, trunk = [], model.trunk
    monkeypatch.setattr(model, "trunk", lambda x, blocks: seen.append(len(x)) or trunk(x, blocks))
    monkeypatch.setattr(kit.trunk, "host_available", lambda: 2**20)   # 1 MiB available
    data = fold_data()
    cfg = TrainConfig(**FAST).resolved(sample=True)
    # At 64 px, dlib_age's stem and 2 blocks give 128 x 7 x 7 floats an image: 24.5 KiB, x 88 images x 2 views.
    with pytest.raises(ConfigError, match=r"--frozen-trunk 2: dlib_age's cached trunk features of 88 images x 2 "
                                          r"view\(s\) at 64 px take 4.2 MiB \(fp32\), and there are 1.0 MiB available"
                                          r".*refused before computing them.*--size.*--augment none without --tta"):
        trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"), amp_dtype=None)
    assert seen == [2]   # the trunk ran on the probe batch only


@pytest.mark.parametrize("gpu_free, host, where", [
    (8 * 2**30, 64 * 2**30, ("cuda", torch.float16)),     # fits in half of the GPU's free memory: kept there
    (2 * 2**30, 64 * 2**30, ("cpu", torch.float16)),      # not on the GPU: fp16 in host memory
    (2 * 2**30, 4 * 2**30, None),                         # nowhere: refused, naming both
])
def test_a_gpu_keeps_the_features_in_fp16_where_they_fit(monkeypatch, gpu_free, host, where):
    import kit.trunk
    from kit.trunk import choose_storage

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (gpu_free, 16 * 2**30))
    monkeypatch.setattr(kit.trunk, "host_available", lambda: host)
    cfg = TrainConfig(**{**FAST, "size": 224, "frozen_trunk": 1})
    nbytes_fp32 = 6 * 2**30   # 3 GiB in fp16
    if where is None:
        with pytest.raises(ConfigError, match=r"take 3.0 GiB \(fp16\), and there are 2.0 GiB free on cuda \(they may "
                                              r"take 50%\), 4.0 GiB available in host memory"):
            choose_storage(nbytes_fp32, torch.device("cuda"), cfg, 1000)
    else:
        storage = choose_storage(nbytes_fp32, torch.device("cuda"), cfg, 1000)
        assert (storage.device.type, storage.dtype) == where
    assert choose_storage(2**20, torch.device("cpu"), cfg, 10).dtype == torch.float32   # the CPU's stays fp32


def test_without_flips_one_view_is_computed(monkeypatch):
    model = create_model("dlib_age", pretrained=True).eval()
    data = fold_data()
    cfg = TrainConfig(**{**FAST, "augment": "none", "tta": False}).resolved(sample=True)
    features = trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"),
                              amp_dtype=None)
    assert len(features.train) == len(features.test) == 1
    assert features.batch(np.arange(3), None).shape[0] == 3
