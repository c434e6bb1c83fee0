"""The model cards, by name, for the two modules below the models that need them: config and options.

Each model's card lives next to its code in kit/models/ (kit/models/card.py says what one holds), a layer above
this one: kit.models imports config and options, never the other way. So the registry hands its lookup in here
when kit.models is imported, and TrainConfig.resolved (a model's pretrained learning rates, whether its weights
come installed, its epoch cap) and the command line's list of models read the cards through it. Every command
imports kit.models before it resolves a config; a program that does not is told so.
"""
from __future__ import annotations

from collections.abc import Callable

_lookup: Callable[[str], object] | None = None
_listing: Callable[[], str] | None = None
# Models whose pretrained weights a package installs: best names the extra that brings them when they are
# missing. Filled as their cards register.
INSTALLED: set[str] = set()


def install(lookup: Callable[[str], object], listing: Callable[[], str]) -> None:
    """kit/models/registry.py's card lookup (a ConfigError for an unknown name) and its --help list of models."""
    global _lookup, _listing
    _lookup, _listing = lookup, listing


def _loaded():
    if _lookup is None or _listing is None:
        raise RuntimeError("the model cards are not loaded: import kit.models before resolving a config or "
                           "building the command line's model option")


def card(model: str):
    """The model's card (a kit.models.card.ModelCard)."""
    _loaded()
    return _lookup(model)


def listing() -> str:
    """The registered models as --model's help says them."""
    _loaded()
    return _listing()
