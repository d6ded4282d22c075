"""Models by name: ``register`` adds one, ``get_model`` builds (and caches) one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from imgsim_lab.models.base import EmbeddingModel

log = logging.getLogger(__name__)

Factory = Callable[..., EmbeddingModel]
F = TypeVar("F", bound=Factory)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``factory(size=..., **options)`` and an offline-availability probe."""

    name: str
    factory: Factory
    available: Callable[[], bool]
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_CACHE: dict[tuple[Any, ...], EmbeddingModel] = {}
_LOCK = threading.Lock()


def _always() -> bool:
    return True


def register(name: str, factory: Factory | None = None, *,
             available: Callable[[], bool] | None = None,
             description: str = "") -> Any:
    """Register ``factory(size=None, **options) -> EmbeddingModel`` under ``name``.

    Use directly (``register("m", make_m)``) or as a decorator (``@register("m")``).
    ``available()`` tells whether the weights are present now (default: always).
    """
    def deco(f: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].factory is not f:
            log.warning("model %r re-registered", name)
        _REGISTRY[name] = ModelSpec(name, f, available or _always,
                                    description or (f.__doc__ or "").strip().split("\n")[0])
        with _LOCK:
            for k in [k for k in _CACHE if k[0] == name]:
                del _CACHE[k]
        return f

    if factory is not None:
        return deco(factory)
    return deco


def _ensure_builtins() -> None:
    # Importing the modules registers the built-in models.
    from imgsim_lab.adapters.model import register_flip_models  # <name>_flip wrappers (issue 18)
    from imgsim_lab.models import baselines, efficientnet_lite, torchvision_models  # noqa: F401

    register_flip_models()


def spec(name: str) -> ModelSpec:
    """The registration of ``name``; ``KeyError`` listing known names otherwise."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: "
                       f"{', '.join(sorted(_REGISTRY))}") from None


def available_models(offline_only: bool = False) -> list[str]:
    """All registered names, or only those whose weights are present right now."""
    _ensure_builtins()
    names = sorted(_REGISTRY)
    if offline_only:
        names = [n for n in names if _probe(_REGISTRY[n])]
    return names


def _probe(s: ModelSpec) -> bool:
    try:
        return bool(s.available())
    except Exception as exc:  # a broken probe means "not available", never a crash
        log.debug("availability probe of %s failed: %s", s.name, exc)
        return False


def get_model(name: str, size: int | None = None, **options: Any) -> EmbeddingModel:
    """The model ``name`` at input ``size`` (None: its default); cached per (name, size, options).

    Raises :class:`ModelUnavailableError` when its weights are missing.
    """
    s = spec(name)
    key = (name, size, tuple(sorted(options.items())))
    with _LOCK:
        m = _CACHE.get(key)
    if m is not None:
        return m
    m = s.factory(size=size, **options)
    m.build_args = (name, size, dict(options))  # lets worker processes rebuild it
    with _LOCK:
        _CACHE.setdefault(key, m)
        if size is None:
            _CACHE.setdefault((name, m.size, key[2]), m)
        elif size == m.default_size:
            _CACHE.setdefault((name, None, key[2]), m)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget built models (frees their memory once no one else holds them)."""
    with _LOCK:
        _CACHE.clear()
