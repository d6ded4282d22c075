"""A registered model: its factory and offline-availability probe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imgsim_lab.models.base import EmbeddingModel

Factory = Callable[..., EmbeddingModel]


def always() -> bool:
    """The probe of models that need no weights."""
    return True


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``factory(size=..., **options)`` and an offline-availability probe."""

    name: str
    factory: Factory
    available: Callable[[], bool] = always
    description: str = ""
