"""The models, by name: `create_model("dlib_age", pretrained=True, age_outputs=121)`.

registry.py holds the registry and FaceModel (a backbone with a gender head and an age head); each
other module registers its models when imported here: scratch (the original report's CNN), resnet
(torchvision's ResNet18), dlib (dlib's pretrained age network, rebuilt in PyTorch) and dlib_face
(dlib's face-recognition ResNet, read from its own .dat file).
"""
from kit.models import dlib, dlib_face, resnet, scratch  # noqa: F401  (each registers its models)
from kit.models.registry import MODELS, FaceModel, check_model_config, create_model, register_model

__all__ = ["MODELS", "FaceModel", "check_model_config", "create_model", "register_model"]
