"""Parsing and redacting store URLs."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from imgsim_lab.store.errors import InvalidURLError

SCHEMES = ("rocksdb", "redis", "rediss", "redis+cluster", "rediss+cluster")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://[user:password@]host:port[,host:port...]`` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


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
    if scheme in CLUSTER_SCHEMES:
        parse_cluster_url(url)  # validates
        return scheme, url
    raise InvalidURLError(f"unknown store scheme {scheme!r} in {redact_url(url)!r}; "
                          f"use one of {', '.join(SCHEMES)}")


def parse_cluster_url(url: str) -> ClusterURL:
    """Seed nodes, credentials and TLS of a cluster URL (only db 0 exists in a cluster)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES or not rest:
        raise InvalidURLError(f"{redact_url(url)!r} is not a redis+cluster://host:port[,host:port] URL")
    netloc, sep, tail = rest.partition("/")
    if "?" in netloc or "#" in netloc or (sep and tail not in ("", "0")):
        raise InvalidURLError(f"cluster URL {redact_url(url)!r}: no options, and only database 0")
    cred, _, hosts = netloc.rpartition("@")
    user, _, password = cred.partition(":")
    nodes = tuple(_host_port(h, url) for h in hosts.split(","))
    return ClusterURL(nodes, unquote(user) or None, unquote(password) if password else None,
                      scheme.lower() == "rediss+cluster")


def _host_port(text: str, url: str) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port``; the port defaults to 6379."""
    if text.startswith("["):
        host, _, after = text[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else after
    else:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else CLUSTER_DEFAULT_PORT
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise InvalidURLError(f"cluster URL {redact_url(url)!r}: bad node {text!r}, use host:port")
    return host, port


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
