"""The models, by name: `create_model("dlib_age", pretrained=True, age_outputs=121)`, and their cards: `card(name)`.

registry.py holds the registry, the cards (card.py says what one holds) and FaceModel (a backbone with a gender
head and an age head); each other module registers its models with their cards when imported here: scratch (the
original report's CNN), resnet (torchvision's ResNet18 with a small stem), dlib (dlib's pretrained age network,
rebuilt in PyTorch), dlib_face (dlib's face-recognition ResNet, read from its own .dat file), and two families
named PREFIX.NAME: torchvision_models (every torchvision classification model) and timm_models (timm's, where
it is installed).
"""
# Each registers its models as it is imported, in the order --help and the README list them.
# isort: off
from kit.models import scratch, resnet, dlib, dlib_face, torchvision_models, timm_models  # noqa: F401
# isort: on
from kit.models.registry import (
    CARDS,
    FAMILIES,
    MODELS,
    FaceModel,
    card,
    check_model_config,
    create_model,
    default_members,
    recipe_config,
    register_model,
)

__all__ = ["CARDS", "FAMILIES", "MODELS", "FaceModel", "card", "check_model_config", "create_model",
           "default_members", "recipe_config", "register_model"]
