"""Options shared by subcommands, and the error users see instead of a traceback."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A user mistake (bad path, unknown model, ...): one line on stderr, exit status 2."""


def add_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv", metavar="URL", default=None,
                        help="store URL: rocksdb:PATH, redis://host:6666/0, rediss://..., "
                             "redis+cluster://h1:6666,h2:6666 "
                             "(default: $IMGSIM_KV_URL, else rocksdb:<data dir>/kv)")
    parser.add_argument("--namespace", default=None,
                        help="key namespace (default: $IMGSIM_NAMESPACE, else imgsim)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value



def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """``--max-bytes`` and ``--max-pixels``, with their defaults in the help."""
    from imgsim_lab.images import Limits

    parser.add_argument("--max-bytes", type=positive_int, default=Limits.max_bytes, metavar="N",
                        help="refuse image files larger than N bytes "
                             f"(default {Limits.max_bytes} = {Limits.max_bytes / 2**20:.0f} MiB)")
    parser.add_argument("--max-pixels", type=positive_int, default=Limits.max_pixels, metavar="N",
                        help="refuse images of more than N pixels, width x height, read from the "
                             f"header before decoding (default {Limits.max_pixels:,})")


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["onnxruntime", "torch"], default=None,
                        help="what runs the CNNs (default onnxruntime; same vectors either way)")


def load_model(name: str, size: int | None = None, backend: str | None = None):
    """The embedding model ``name`` (on ``backend`` when given and the model has backends: CNNs);
    an unknown name or missing weights is a :class:`UsageError`."""
    from imgsim_lab.models import ModelUnavailableError, get_model

    try:
        if backend:
            try:
                return get_model(name, size=size, backend=backend)
            except TypeError:  # a baseline: numpy only
                pass
        return get_model(name, size=size)
    except KeyError as exc:
        raise UsageError(str(exc.args[0]) if exc.args else f"unknown model {name!r}") from exc
    except ModelUnavailableError as exc:
        raise UsageError(str(exc)) from exc


def require_stored_model(store, key: str, kv: str | None) -> None:
    """Refuse a model the store holds no embeddings of, naming those it holds and the fix."""
    models = {k: m for k, m in store.model_info().items() if m.count}
    if key in models:
        return
    where = f" --kv {kv}" if kv else ""
    ns = f" --namespace {store.namespace}" if store.namespace != "imgsim" else ""
    have = (", ".join(f"{k} ({m.count} images)" for k, m in sorted(models.items()))
            or "none (the store is empty)")
    from imgsim_lab.models.base import split_key

    name, size = split_key(key)
    model = f"{name} --size {size}" if size else key
    raise UsageError(f"the store {store.url} (namespace {store.namespace}) has no {key} embeddings; "
                     f"models present: {have}. Add them with: imgsim ingest SOURCE --model {model}"
                     f"{where}{ns}")


def is_embedded(url: str | None) -> bool:
    """Whether ``url`` (or the default) names an embedded RocksDB store: read-only commands
    open those as a secondary, so they work while another process writes."""
    from imgsim_lab import config
    from imgsim_lab.store import parse_url

    return parse_url(config.kv_url(url))[0] == "rocksdb"
