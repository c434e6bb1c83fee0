"""A frozen trunk computed once: the same training as running it every step, for a fraction of the work."""
import dataclasses
import errno
import gc
import re
from pathlib import Path

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


def test_a_trunk_cache_larger_than_memory_and_disk_is_refused_before_it_is_computed(monkeypatch, tmp_path):
    import kit.trunk

    model = create_model("dlib_age", pretrained=True).eval()
    seen, trunk = [], model.trunk
    monkeypatch.setattr(model, "trunk", lambda x, blocks: seen.append(len(x)) or trunk(x, blocks))
    monkeypatch.setattr(kit.trunk, "host_available", lambda: 2**20)      # 1 MiB available
    monkeypatch.setattr(kit.trunk, "disk_free", lambda folder: 2**21)    # 2 MiB free on the disk
    data = fold_data()
    cfg = TrainConfig(**FAST).resolved(sample=True)
    # At 64 px, dlib_age's stem and 2 blocks give 128 x 7 x 7 floats an image: 24.5 KiB, x 88 images x 2 views.
    with pytest.raises(ConfigError, match=r"--frozen-trunk 2: dlib_age's cached trunk features of 88 images x 2 "
                                          r"view\(s\) at 64 px take 4.2 MiB \(fp32\), and there are 1.0 MiB available"
                                          r" in host memory \(they may take 70%\) and 2.0 MiB free on the disk "
                                          r"holding .*trunk \(they may take 80%\); refused before computing them.*"
                                          r"--size.*--frozen-trunk.*--augment none without --tta"):
        trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"), amp_dtype=None,
                       cache_dir=tmp_path)
    assert seen == [2]   # the trunk ran on the probe batch only
    assert not (tmp_path / "trunk").exists()


GiB = 2**30


@pytest.mark.parametrize("device, gpu_free, host, disk, where", [
    ("cuda", 8 * GiB, 64 * GiB, 100 * GiB, ("cuda", torch.float16, False)),  # fits in half the GPU's free memory
    ("cuda", 2 * GiB, 64 * GiB, 100 * GiB, ("cpu", torch.float16, False)),   # not on the GPU: fp16 in host memory
    ("cuda", 2 * GiB, 4 * GiB, 100 * GiB, ("cpu", torch.float16, True)),     # nor there: a memory-mapped file
    ("cuda", 2 * GiB, 4 * GiB, 3 * GiB, None),                               # nowhere: refused, naming all three
    ("cpu", None, 64 * GiB, 100 * GiB, ("cpu", torch.float32, False)),       # a CPU's stays fp32, in host memory
    ("cpu", None, None, None, ("cpu", torch.float32, False)),                # no MemAvailable: host memory, as before
    ("cpu", None, 4 * GiB, 100 * GiB, ("cpu", torch.float32, True)),         # else fp32 in a memory-mapped file
    ("cpu", None, 4 * GiB, 7 * GiB, None),
])
def test_the_features_go_to_the_gpu_host_memory_or_a_memory_mapped_file_where_they_fit(tmp_path, device, gpu_free,
                                                                                      host, disk, where):
    from kit.trunk import Room, place

    cfg = TrainConfig(**{**FAST, "size": 224, "frozen_trunk": 1})
    nbytes_fp32 = 6 * GiB   # 3 GiB in fp16
    options = dict(device=torch.device(device), room=Room(gpu=gpu_free, host=host, disk=disk), folder=tmp_path,
                   cfg=cfg, n_images=1000)
    if where is None:
        size = "3.0 GiB \\(fp16\\)" if device == "cuda" else "6.0 GiB \\(fp32\\)"
        gpu = "2.0 GiB free on cuda \\(they may take 50%\\), " if device == "cuda" else ""
        folder = re.escape(str(tmp_path))
        with pytest.raises(ConfigError, match=rf"1000 images x 2 view\(s\) at 224 px take {size}, and there are {gpu}"
                                              r"4.0 GiB available in host memory \(they may take 70%\) and "
                                              rf"{disk // GiB}.0 GiB free on the disk holding {folder} \(they may "
                                              r"take 80%\); refused before computing them. Smaller: a lower --size.*"
                                              r"a larger --frozen-trunk.*--augment none without --tta"):
            place(nbytes_fp32, **options)
    else:
        storage = place(nbytes_fp32, **options)
        assert (storage.device.type, storage.dtype, storage.folder == tmp_path) == where


def test_the_room_is_measured_and_a_cache_sent_to_disk_says_where_and_why(monkeypatch, tmp_path, caplog):
    import kit.trunk
    from kit.trunk import choose_storage

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * GiB, 16 * GiB))
    monkeypatch.setattr(kit.trunk, "host_available", lambda: 4 * GiB)
    monkeypatch.setattr(kit.trunk, "disk_free", lambda folder: 100 * GiB)
    cfg = TrainConfig(**{**FAST, "size": 224, "frozen_trunk": 1})
    with caplog.at_level("INFO", logger="facekit"):
        storage = choose_storage(6 * GiB, torch.device("cuda"), cfg, 1000, tmp_path / "trunk")
    assert storage.folder == tmp_path / "trunk" and storage.dtype == torch.float16
    assert (f"do not fit in 50% of the 2.0 GiB free on cuda nor in 70% of the 4.0 GiB of host memory available: "
            f"they go to memory-mapped files in {tmp_path / 'trunk'} (100.0 GiB free on its disk)") in caplog.text


def test_a_file_backed_tensor_has_the_layout_of_one_in_memory(tmp_path):
    from kit.trunk import file_backed

    for layout in (torch.channels_last, torch.contiguous_format):
        on_disk = file_backed((5, 8, 3, 4), torch.float16, layout, tmp_path)
        assert on_disk.stride() == torch.empty((5, 8, 3, 4), memory_format=layout).stride()
        assert on_disk.dtype == torch.float16 and on_disk.untyped_storage().filename is not None
    assert list(tmp_path.iterdir()) == []   # unlinked once mapped: nothing to leave behind


def mapped(folder) -> list[str]:
    """This process's mappings of files in `folder` (deleted or not)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc/self/maps")
    return [line for line in maps.read_text().splitlines() if str(Path(folder).resolve()) in line]


def test_features_in_a_memory_mapped_file_train_and_predict_exactly_as_in_memory(tmp_path, monkeypatch, caplog):
    """The same fold trained twice on the cached trunk: its features in host memory, then (with host memory
    faked too small) in memory-mapped files under the project's .cache/trunk/: the same predictions, bit for bit;
    the files are unlinked from the start and their mapping gone with the features."""
    import kit.trunk

    cfg = TrainConfig(**FAST).resolved(sample=True)
    cache = tmp_path / "project" / ".cache"
    kit.trunk._MEMO.clear()
    in_memory = fit_fold(cfg, fold=0, data=fold_data(), fold_dir=tmp_path / "memory")
    (features,) = kit.trunk._MEMO.values()
    assert features.train[0].untyped_storage().filename is None
    kit.trunk._MEMO.clear()
    del features

    monkeypatch.setattr(kit.trunk, "host_available", lambda: 2**20)   # 1 MiB: the 4.2 MiB go to disk
    data = dataclasses.replace(fold_data(), cache_dir=cache)
    with caplog.at_level("INFO", logger="facekit"):
        on_disk = fit_fold(cfg, fold=0, data=data, fold_dir=tmp_path / "disk")
    assert f"memory-mapped files in {cache / 'trunk'}" in caplog.text
    (features,) = kit.trunk._MEMO.values()
    for tensor in features.train + features.test:
        assert str(cache / "trunk") in tensor.untyped_storage().filename
    assert len(mapped(cache)) >= 4 and all("(deleted)" in line for line in mapped(cache))
    assert list((cache / "trunk").iterdir()) == []

    pd.testing.assert_frame_equal(in_memory.oof, on_disk.oof, check_exact=True)
    pd.testing.assert_frame_equal(in_memory.test, on_disk.test, check_exact=True)
    def untimed(history):
        return [{k: v for k, v in epoch.items() if "seconds" not in k and "per_s" not in k} for epoch in history]

    assert untimed(in_memory.history) == untimed(on_disk.history) and in_memory.best_epoch == on_disk.best_epoch

    kit.trunk._MEMO.clear()
    del features, tensor
    gc.collect()
    assert mapped(cache) == []   # the disk's blocks are freed with the features


def test_a_memory_mapped_cache_interrupted_or_out_of_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    import kit.trunk
    from kit.errors import DiskFullError

    model = create_model("dlib_age", pretrained=True).eval()
    calls, trunk = [], model.trunk

    def interrupted(x, blocks):   # Ctrl-C once the first view's file is made: the probe, one batch, then this
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return trunk(x, blocks)

    monkeypatch.setattr(model, "trunk", interrupted)
    monkeypatch.setattr(kit.trunk, "host_available", lambda: 2**20)
    data = fold_data()
    cfg = TrainConfig(**FAST).resolved(sample=True)
    kit.trunk._MEMO.clear()
    with pytest.raises(KeyboardInterrupt):
        trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"), amp_dtype=None,
                       cache_dir=tmp_path)
    gc.collect()
    assert list((tmp_path / "trunk").iterdir()) == [] and mapped(tmp_path) == []

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "trunk", trunk)
    monkeypatch.setattr(kit.trunk.os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match="trunk"):
        trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"), amp_dtype=None,
                       cache_dir=tmp_path)
    gc.collect()
    assert list((tmp_path / "trunk").iterdir()) == [] and mapped(tmp_path) == [] and not kit.trunk._MEMO


def test_without_flips_one_view_is_computed(monkeypatch):
    model = create_model("dlib_age", pretrained=True).eval()
    data = fold_data()
    cfg = TrainConfig(**{**FAST, "augment": "none", "tta": False}).resolved(sample=True)
    features = trunk_features(model, cfg, data.train_images, data.test_images, device=torch.device("cpu"),
                              amp_dtype=None)
    assert len(features.train) == len(features.test) == 1
    assert features.batch(np.arange(3), None).shape[0] == 3
