"""Models by name: ``register`` adds one, ``get_model`` builds (and caches) one.

The built-in models come from :func:`imgsim_lab.models.builtins.builtin_specs`, loaded on
first use; model modules never import the registry, so imports flow one way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from imgsim_lab.models.base import EmbeddingModel
from imgsim_lab.models.spec import Factory, ModelSpec, always

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, ModelSpec] = {}
_CACHE: dict[tuple[Any, ...], EmbeddingModel] = {}
_LOCK = threading.Lock()
_BUILD_LOCK = threading.RLock()  # one build at a time: a preload and a query share one model
_BUILTINS_LOADED = False


def register(name: str, factory: Factory | None = None, *,
             available: Callable[[], bool] | None = None,
             description: str = "") -> Any:
    """Register ``factory(size=None, **options) -> EmbeddingModel`` under ``name``.

    Use directly (``register("m", make_m)``) or as a decorator (``@register("m")``).
    ``available()`` tells whether the weights are present now (default: always).
    """
    def deco(f: F) -> F:
        _ensure_builtins()
        if name in _REGISTRY and _REGISTRY[name].factory is not f:
            log.warning("model %r re-registered", name)
        _REGISTRY[name] = ModelSpec(name, f, available or always,
                                    description or (f.__doc__ or "").strip().split("\n")[0])
        with _LOCK:
            for k in [k for k in _CACHE if k[0] == name]:
                del _CACHE[k]
        return f

    if factory is not None:
        return deco(factory)
    return deco


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    from imgsim_lab.models.builtins import builtin_specs

    with _LOCK:
        if not _BUILTINS_LOADED:
            for s in builtin_specs():
                _REGISTRY.setdefault(s.name, s)
            _BUILTINS_LOADED = True



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
    with _BUILD_LOCK:
        with _LOCK:
            m = _CACHE.get(key)
        if m is not None:
            return m
        m = s.factory(size=size, **options)
        m.build_args = (name, size, dict(options))  # lets worker processes rebuild it
        return _remember(key, name, size, m)


def _remember(key: tuple[Any, ...], name: str, size: int | None, m: EmbeddingModel) -> EmbeddingModel:
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


def preload(name: str, size: int | None = None, *, background: bool = False,
            **options: Any) -> EmbeddingModel | threading.Thread:
    """Build ``name`` and :meth:`~EmbeddingModel.warm_up` it, so the first query is fast.

    ``background=True`` does it on a daemon thread and returns the thread (call it when a
    kernel or server starts); a later ``get_model`` with the same arguments gets this model.
    """
    def work() -> EmbeddingModel:
        return get_model(name, size, **options).warm_up()

    if not background:
        return work()

    def run() -> None:
        try:
            work()
        except Exception as exc:  # logged: the caller's first real query will raise it again
            log.warning("preloading %s failed: %s", name, exc)

    t = threading.Thread(target=run, name=f"imgsim-preload-{name}", daemon=True)
    t.start()
    return t
