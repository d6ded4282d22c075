"""Settings in one place: every default, and the environment variable that overrides it.

>>> from imgsim_lab.config import Settings
>>> s = Settings.from_env()          # doctest: +SKIP
>>> s.data_dir, s.kv_url, s.namespace

:class:`Settings` is resolved once per call from the environment (nothing is cached, so
a test or a kernel that sets ``IMGSIM_DATA_DIR`` sees it at once). Paths never depend
on the working directory of the process unless a user gave a relative path: the data
directory is the project's ``data/`` (a checkout) or the user's data directory (an
installed package), and the default store lives inside it. Nothing here calls ``chdir``.

| setting | environment variable | default |
|---|---|---|
| ``data_dir`` | ``IMGSIM_DATA_DIR`` | ``<project>/data`` in a checkout, else ``~/.local/share/imgsim-lab`` |
| ``kv_url`` | ``IMGSIM_KV_URL`` | ``rocksdb:<data_dir>/kv`` |
| ``namespace`` | ``IMGSIM_NAMESPACE`` | ``imgsim`` |
| ``cifar10_archive`` | ``IMGSIM_CIFAR10_SOURCE`` | ``<project>/../shared/datasets/cifar10-jpeg.zip`` |
| ``max_bytes`` | ``IMGSIM_MAX_BYTES`` | :data:`imgsim_lab.images.Limits.max_bytes` (20 MiB) |
| ``max_pixels`` | ``IMGSIM_MAX_PIXELS`` | :data:`imgsim_lab.images.Limits.max_pixels` |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_KV_URL = "IMGSIM_KV_URL"
ENV_NAMESPACE = "IMGSIM_NAMESPACE"
ENV_DATA_DIR = "IMGSIM_DATA_DIR"
#: The one variable naming the CIFAR-10 archive (zip mirror or cifar-10-python.tar.gz).
ENV_CIFAR10_SOURCE = "IMGSIM_CIFAR10_SOURCE"
ENV_MAX_BYTES = "IMGSIM_MAX_BYTES"
ENV_MAX_PIXELS = "IMGSIM_MAX_PIXELS"

DEFAULT_NAMESPACE = "imgsim"
#: Where the data lives when the package is installed outside a checkout.
USER_DATA_DIR = Path("~/.local/share/imgsim-lab")
#: The shared CIFAR-10 mirror, relative to the project root.
SHARED_CIFAR10_ARCHIVE = Path("..") / "shared" / "datasets" / "cifar10-jpeg.zip"


def project_root() -> Path:
    """The checkout holding this package (the parent of ``imgsim_lab/``)."""
    return Path(__file__).resolve().parent.parent


def in_checkout() -> bool:
    """Whether the package runs from a source checkout (``pyproject.toml`` beside it)."""
    return (project_root() / "pyproject.toml").is_file()


def default_data_dir() -> Path:
    """``<project>/data`` in a checkout, else the user's data directory (never ``./data``)."""
    return project_root() / "data" if in_checkout() else USER_DATA_DIR.expanduser()


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


@dataclass(frozen=True)
class Settings:
    """Where data lives, which store and namespace, and input limits (see the module table)."""

    data_dir: Path
    kv_url: str
    namespace: str = DEFAULT_NAMESPACE
    cifar10_archive: Path | None = None
    max_bytes: int = 20 * 1024 * 1024  # = images.Limits.max_bytes
    max_pixels: int = 50_000_000  # = images.Limits.max_pixels

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from the environment; ``overrides`` that are not None win."""
        from imgsim_lab.images import Limits

        given = {k: v for k, v in overrides.items() if v is not None}
        data = Path(given.pop("data_dir", None) or _env(ENV_DATA_DIR) or default_data_dir()).expanduser()
        data = data.resolve()  # a relative path means the caller's working directory, once
        kv = str(given.pop("kv_url", None) or _env(ENV_KV_URL) or f"rocksdb:{data / 'kv'}")
        archive = given.pop("cifar10_archive", None) or _env(ENV_CIFAR10_SOURCE)
        if archive is None:
            shared = (project_root() / SHARED_CIFAR10_ARCHIVE).resolve()
            archive = shared if shared.is_file() else None
        return cls(
            data_dir=data, kv_url=kv,
            namespace=str(given.pop("namespace", None) or _env(ENV_NAMESPACE) or DEFAULT_NAMESPACE),
            cifar10_archive=Path(str(archive)).expanduser() if archive else None,
            max_bytes=int(given.pop("max_bytes", None) or _env_int(ENV_MAX_BYTES, Limits.max_bytes)),
            max_pixels=int(given.pop("max_pixels", None) or _env_int(ENV_MAX_PIXELS, Limits.max_pixels)),
        )

    def limits(self):
        """The validation limits (:class:`imgsim_lab.images.Limits`) these settings name."""
        from imgsim_lab.images import Limits

        return Limits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)

    def env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a child process."""
        env = {ENV_DATA_DIR: str(self.data_dir), ENV_KV_URL: absolute_kv_url(self.kv_url),
               ENV_NAMESPACE: self.namespace, ENV_MAX_BYTES: str(self.max_bytes),
               ENV_MAX_PIXELS: str(self.max_pixels)}
        if self.cifar10_archive is not None:
            env[ENV_CIFAR10_SOURCE] = str(self.cifar10_archive)
        return env


def absolute_kv_url(url: str) -> str:
    """A ``rocksdb:`` URL with its path made absolute against the working directory."""
    if url.startswith("rocksdb:"):
        return f"rocksdb:{Path(url[len('rocksdb:'):]).expanduser().resolve()}"
    return url


def kv_url(url: str | None = None) -> str:
    """The store URL: the argument, else ``$IMGSIM_KV_URL``, else ``rocksdb:<data_dir>/kv``."""
    return url or Settings.from_env().kv_url


def namespace(ns: str | None = None) -> str:
    """The key namespace: the argument, else ``$IMGSIM_NAMESPACE``, else ``imgsim``."""
    return ns or _env(ENV_NAMESPACE) or DEFAULT_NAMESPACE


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where snapshots, logs and datasets live: argument, else ``$IMGSIM_DATA_DIR``, else the
    project's ``data/`` (absolute, independent of the working directory)."""
    return Path(path).expanduser().resolve() if path else Settings.from_env().data_dir


def cifar10_archive(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The CIFAR-10 archive: argument, else ``$IMGSIM_CIFAR10_SOURCE``, else the shared mirror."""
    return Path(path).expanduser() if path else Settings.from_env().cifar10_archive
