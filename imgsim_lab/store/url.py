"""Parsing and redacting store URLs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from imgsim_lab.store.errors import InvalidURLError

SCHEMES = ("rocksdb", "redis", "rediss")


def parse_url(url: str) -> tuple[str, str]:
    """``(scheme, target)``: the RocksDB path, or the URL itself for Redis."""
    if not isinstance(url, str) or ":" not in url:
        raise InvalidURLError(f"store URL {redact_url(str(url))!r} has no scheme; use rocksdb:PATH, "
                              "redis://host:6666/0 or rediss://host:6666/0")
    scheme, rest = url.split(":", 1)
    scheme = scheme.lower()
    if scheme == "rocksdb":
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise InvalidURLError("rocksdb: URL needs a path, e.g. rocksdb:data/kv")
        return scheme, path
    if scheme in ("redis", "rediss"):
        parts = urlsplit(url)
        if not parts.hostname:
            raise InvalidURLError(f"store URL {redact_url(url)!r} has no host")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise InvalidURLError(f"store URL {redact_url(url)!r} has an invalid port") from None
        return scheme, url
    raise InvalidURLError(f"unknown store scheme {scheme!r} in {redact_url(url)!r}; "
                          f"use one of {', '.join(SCHEMES)}")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    cred = f"{user}:***" if parts.password is not None else user
    return urlunsplit((parts.scheme, f"{cred}@{host}", parts.path, parts.query, parts.fragment))
