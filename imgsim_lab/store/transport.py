"""How the Redis-protocol store reaches its server(s): one node, or a cluster.

Both transports offer the same few operations, so :class:`~imgsim_lab.store.redis_store.RespStore`
holds the write protocol once: :meth:`run` sends packed commands, each routed by the
slot of its key (one pipeline per server, all written before any is read), with
redis-py's :class:`~redis.retry.Retry` (exponential backoff) around the whole list after
a lost connection, and a slot-map refresh after a redirection. Callers send idempotent
command lists. Errors become :mod:`imgsim_lab.store.errors` with the password scrubbed.

Commands are packed by :func:`imgsim_lab.store.resp.pack` instead of redis-py's packer:
measured with ``imgsim bench store`` it is what lets a batch of 5 KB vectors go at wire
speed (redis-py copies every argument below 6 KB several times).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from imgsim_lab.store.config import StoreConfig
from imgsim_lab.store.errors import StoreAuthError, StoreConnectionError, StoreError
from imgsim_lab.store.resp import pack
from imgsim_lab.store.scripts import SCRIPTS
from imgsim_lab.store.url import parse_cluster_url

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: Redirection and failover errors: refresh the slot map and retry the list.
REROUTE = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError,
           redis.exceptions.ClusterDownError)

#: A packed command and the key that routes it (by its slot).
Routed = tuple[str, bytes]


class _Reroute(Exception):
    """A reply asked for a refreshed slot map (MOVED, ASK, TRYAGAIN, CLUSTERDOWN)."""


def _auth_reply(text: str) -> bool:
    """An error reply refusing credentials: Redis (WRONGPASS, NOAUTH) or Kvrocks ("Invalid password")."""
    low = text.lower()
    return ("WRONGPASS" in text or "NOAUTH" in text or "invalid password" in low
            or "authentication required" in low or "no password is set" in low)


def _auth_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.AuthenticationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "username-password" in str(exc) or _auth_reply(str(exc))


class Transport:
    """Common part: error mapping, retries, packed command lists."""

    single: bool = True  # every key on one server: a MULTI may span any keys

    def __init__(self, redacted: str, secret: str | None, config: StoreConfig) -> None:
        self.url = redacted
        self._secret = secret
        self.config = config
        self.retry = Retry(ExponentialBackoff(cap=config.backoff_cap, base=config.backoff_base),
                           config.retries, supported_errors=(*TRANSIENT, _Reroute))

    # -------------------------------------------------------------- errors
    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run one client call, turning failures into clear store errors."""
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.AuthenticationError:
            raise StoreAuthError(f"authentication to {self.url} failed: wrong user or password") from None
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if _auth_reply(text):
                raise StoreAuthError(f"authentication to {self.url} failed: wrong user or password") from None
            if "NOPERM" in text:
                raise StoreAuthError(f"{self.url} refused the credentials or command: "
                                     f"{text.split(' ', 1)[0]}") from None
            raise StoreError(f"{self.url} answered an error: {self.scrub(text)[:200]}") from None
        except (*TRANSIENT, _Reroute) as exc:
            raise StoreConnectionError(
                f"cannot reach the store at {self.url} after {self.config.retries} retries: "
                f"{type(exc).__name__}: {self.scrub(str(exc))[:300]}. Is the server running?") from None
        except (redis.exceptions.RedisClusterException, redis.exceptions.ClusterError) as exc:
            if _auth_failure(exc):
                raise StoreAuthError(f"authentication to {self.url} failed: wrong user or password") from None
            raise StoreConnectionError(f"cannot use the cluster at {self.url}: {self.scrub(str(exc))[:200]}. "
                                       "Are the nodes running?") from None

    # ------------------------------------------------------------ commands
    def run(self, routed: Sequence[Routed], raise_errors: bool = True) -> list:
        """Replies of packed commands, retried as a whole on lost connections and redirections."""
        if not routed:
            return []

        def attempt() -> list:
            replies = self._run_once(routed)
            if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self.load_scripts()
                replies = self._run_once(routed)
            if any(isinstance(r, REROUTE) for r in replies):
                raise _Reroute(next(r for r in replies if isinstance(r, REROUTE)))
            return replies

        replies = self.call(self.retry.call_with_retry, attempt, self._on_failure)
        if raise_errors:
            err = next((r for r in replies if isinstance(r, redis.exceptions.ResponseError)), None)
            if err is not None:
                self.call(_raise, err)
        return replies

    def run_stream(self, blocks: Iterable[Sequence[Routed]]) -> list:
        """Replies of blocks of packed commands, each block sent as soon as it is built, so
        the server executes one while the caller packs the next (one node; a cluster, or a
        lost connection, falls back to :meth:`run` of everything, retried as a whole)."""
        sent: list[Routed] = []
        it = iter(blocks)
        if self.single:
            try:
                replies = self._stream_once(it, sent)
            except TRANSIENT as exc:
                self._on_failure(exc)
            else:
                err = next((r for r in replies if isinstance(r, redis.exceptions.ResponseError)), None)
                if err is not None:
                    self.call(_raise, err)
                return replies
        sent += [r for block in it for r in block]
        return self.run(sent)

    def _stream_once(self, blocks: Iterator[Sequence[Routed]], sent: list[Routed]) -> list:
        with _connection(self._pool()) as conn:
            for block in blocks:
                sent += block
                for c in _coalesced([c for _, c in block]):
                    conn.send_packed_command([c], check_health=False)
            return _read_replies(conn, len(sent))

    def _pool(self) -> redis.ConnectionPool:
        raise NotImplementedError

    def command(self, *args) -> object:
        """One command (routed by its first key argument)."""
        return self.run([(str(args[1]) if len(args) > 1 else "", pack(args))])[0]

    def script(self, name: str, keys: Sequence[str], args: Sequence, inline: bool = False) -> Routed:
        """EVALSHA of a known script; ``inline`` sends its source (EVAL), for use inside a
        MULTI, where a NOSCRIPT error would leave the transaction's other commands applied."""
        src, sha = SCRIPTS[name]
        head = ["EVAL", src] if inline else ["EVALSHA", sha]
        return keys[0], pack([*head, len(keys), *keys, *args])

    def _on_failure(self, exc: Exception) -> None:
        log.info("store %s: %s, retrying", self.url, type(exc).__name__)

    def info_all(self, section: str) -> list[str]:
        """``INFO <section>`` of every server (every primary of a cluster), as text."""
        raise NotImplementedError

    def _send_on(self, pool: redis.ConnectionPool, cmds: Sequence[bytes]) -> list:
        """All commands on one connection, then every reply (error replies as objects)."""
        with _connection(pool) as conn:
            conn.send_packed_command(_coalesced(cmds), check_health=False)
            return _read_replies(conn, len(cmds))

    def _run_once(self, routed: Sequence[Routed]) -> list:
        raise NotImplementedError

    def load_scripts(self) -> None:
        raise NotImplementedError

    def scan_keys(self, prefix: str) -> Iterator[str]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@contextlib.contextmanager
def _connection(pool: redis.ConnectionPool) -> Iterator[redis.Connection]:
    """A connection of ``pool``, released after use; dropped if the use failed midway."""
    conn = pool.get_connection()
    ok = False
    try:
        yield conn
        ok = True
    finally:
        if not ok:
            conn.disconnect()
        pool.release(conn)


def _read_replies(conn: redis.Connection, n: int) -> list:
    """The next ``n`` replies on ``conn``, error replies as exception objects."""
    out = []
    for _ in range(n):
        try:
            out.append(conn.read_response())
        except redis.exceptions.ResponseError as exc:
            out.append(exc)
    return out


def _raise(err: BaseException) -> None:
    raise err


def _coalesced(cmds: Sequence[bytes], small: int = 1 << 16) -> list[bytes]:
    """Small commands joined into one send; large ones (vector batches) sent as they are."""
    out: list[bytes] = []
    cur: list[bytes] = []
    for c in cmds:
        if len(c) >= small:
            if cur:
                out.append(b"".join(cur))
                cur = []
            out.append(c)
        else:
            cur.append(c)
    if cur:
        out.append(b"".join(cur))
    return out


class NodeTransport(Transport):
    """One Redis-protocol server (``redis://``, ``rediss://``)."""

    single = True

    def __init__(self, url: str, redacted: str, config: StoreConfig) -> None:
        password = urlsplit(url).password
        super().__init__(redacted, unquote(password) if password else None, config)
        try:
            self.client = redis.Redis.from_url(
                url, protocol=2, socket_connect_timeout=config.connect_timeout,
                socket_timeout=config.socket_timeout, retry=self.retry,
                retry_on_error=list(TRANSIENT), health_check_interval=30)
        except ValueError as exc:
            raise StoreError(f"invalid Redis URL {redacted}: {exc}") from None
        try:
            self.call(self.client.ping)
        except BaseException:
            self.client.close()  # never leak the pool of a client that could not connect
            raise

    def _run_once(self, routed: Sequence[Routed]) -> list:
        return self._send_on(self.client.connection_pool, [c for _, c in routed])

    def _pool(self) -> redis.ConnectionPool:
        return self.client.connection_pool

    def load_scripts(self) -> None:
        for src, _ in SCRIPTS.values():
            self.client.script_load(src)

    def info_all(self, section: str) -> list[str]:
        raw = self.command("INFO", section)
        return [raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)]

    def scan_keys(self, prefix: str) -> Iterator[str]:
        """SCAN without MATCH (Kvrocks MATCH is prefix-only and skips keys in clusters)."""
        p = prefix.encode()
        for key in self.call(lambda: list(self.client.scan_iter(count=1000))):
            if key.startswith(p):
                yield key.decode("utf-8", "replace")

    def close(self) -> None:
        self.client.close()


class ClusterTransport(Transport):
    """A Kvrocks cluster or a Redis Cluster (``redis+cluster://``)."""

    single = False

    def __init__(self, url: str, redacted: str, config: StoreConfig) -> None:
        cu = parse_cluster_url(url)
        super().__init__(redacted, cu.password, config)
        self.client: RedisCluster = self.call(
            RedisCluster, startup_nodes=[ClusterNode(h, p) for h, p in cu.nodes], username=cu.username,
            password=cu.password, ssl=cu.tls, protocol=2, socket_connect_timeout=config.connect_timeout,
            socket_timeout=config.socket_timeout, retry=self.retry)
        try:
            self.call(self.client.ping)
        except BaseException:
            self.client.close()
            raise

    def _run_once(self, routed: Sequence[Routed]) -> list:
        nm = self.client.nodes_manager
        slots = nm.slots_cache  # slot -> [primary, replicas...]; get_node_from_slot is slow per key
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, (key, _) in enumerate(routed):
            slot = key_slot(key.encode())
            owners = slots.get(slot)
            node = owners[0] if owners else nm.get_node_from_slot(slot)
            groups.setdefault(node.name, (node, []))[1].append(i)
        replies: list = [None] * len(routed)
        # every node's commands first, then every node's replies: the nodes work in parallel
        with contextlib.ExitStack() as stack:
            held = []
            for node, idx in groups.values():
                pool = self.client.get_redis_connection(node).connection_pool
                conn = stack.enter_context(_connection(pool))
                conn.send_packed_command(_coalesced([routed[i][1] for i in idx]), check_health=False)
                held.append((conn, idx))
            for conn, idx in held:
                for i, r in zip(idx, _read_replies(conn, len(idx)), strict=True):
                    replies[i] = r
        return replies

    def _on_failure(self, exc: Exception) -> None:
        log.info("cluster %s: %s, refreshing the slot map", self.url, type(exc).__name__)
        try:
            self.client.nodes_manager.initialize()
        except (redis.exceptions.RedisClusterException, *TRANSIENT) as e:
            log.info("cluster %s: slot map refresh failed: %s", self.url, e)

    def info_all(self, section: str) -> list[str]:
        out = []
        for node in self.call(self.client.get_primaries):
            pool = self.client.get_redis_connection(node).connection_pool
            raw = self.call(self._send_on, pool, [pack(["INFO", section])])[0]
            out.append(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
        return out

    def load_scripts(self) -> None:
        for node in self.client.get_primaries():
            conn = self.client.get_redis_connection(node)
            for src, _ in SCRIPTS.values():
                conn.script_load(src)

    def scan_keys(self, prefix: str) -> Iterator[str]:
        """SCAN without MATCH on every primary, filtered here (MATCH scans skip keys on Kvrocks)."""
        p = prefix.encode()
        for node in self.call(self.client.get_primaries):
            conn = self.client.get_redis_connection(node)
            for key in self.call(lambda c=conn: list(c.scan_iter(count=1000))):
                if key.startswith(p):
                    yield key.decode("utf-8", "replace")

    def close(self) -> None:
        self.client.close()


def connect(url: str, redacted: str, config: StoreConfig) -> Transport:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        return ClusterTransport(url, redacted, config)
    return NodeTransport(url, redacted, config)
