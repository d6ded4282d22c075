"""Real Redis-protocol servers for the tests: ``redis-server`` and Apache Kvrocks on free loopback ports."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for q in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it with apt-get)")
    return path


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; persistence is off unless asked for."""

    def __init__(self, workdir: Path, port: int | None = None, persist: bool = False,
                 extra: list[str] | None = None, password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persist = persist
        self.extra = list(extra or [])
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        a = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "no",
             "--logfile", str(self.workdir / "redis.log")]
        if self.persist:
            a += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        else:
            a += ["--appendonly", "no", "--save", ""]
        if self.password:
            a += ["--requirepass", self.password]
        return a + self.extra

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, protocol=2,
                             socket_connect_timeout=0.5)
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / "redis.log")
                    text = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to save anything that is not already on disk."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class RedisClusterServers:
    """Three ``redis-server`` masters joined into one Redis Cluster (no replicas).

    Each node persists with ``appendonly yes`` and ``appendfsync always``, so a node
    killed with SIGKILL and restarted on its port and directory loses no acknowledged write.
    """

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = Path(workdir)
        self.nodes = []
        for i in range(masters):
            d = self.workdir / f"node{i}"
            self.nodes.append(RedisServer(d, port=free_cluster_port(), persist=True, extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "3000"]))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        try:
            for n in self.nodes:
                n.start()
            self._create(timeout)
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, timeout: float) -> None:
        cli = shutil.which("redis-cli")
        if not cli:
            raise RuntimeError("redis-cli is not installed: run `make test` (it installs it with apt-get)")
        out = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                              "--cluster-replicas", "0", "--cluster-yes"],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout[-2000:]}"
                               f"{out.stderr[-2000:]}")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok`` with all slots assigned."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for n in self.nodes:
                try:
                    with redis.Redis(host="127.0.0.1", port=n.port, protocol=2,
                                     socket_connect_timeout=0.5) as c:
                        info = c.cluster("info")
                    states.append(info.get("cluster_state") == "ok"
                                  and int(info.get("cluster_slots_ok", 0)) == 16384)
                except redis.exceptions.RedisError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok after {timeout}s: {states}")
            time.sleep(0.1)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


# ---------------------------------------------------------------- Apache Kvrocks
KVROCKS_HELP = ("Apache Kvrocks not found: set $KVROCKS_BIN to a kvrocks binary, put `kvrocks` on "
                "PATH, or place it at ../shared/kvrocks/kvrocks (build it from "
                "https://github.com/apache/kvrocks, or copy the kvrocks binary out of the "
                "apache/kvrocks container image with docker cp)")


def kvrocks_binary() -> str | None:
    """``$KVROCKS_BIN``, else ``kvrocks`` on PATH, else ``<repo>/../shared/kvrocks/kvrocks``."""
    env = os.environ.get("KVROCKS_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("kvrocks")
    if found:
        return found
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "kvrocks" / "kvrocks"
    return str(shared) if os.access(shared, os.X_OK) else None


class KvrocksServer(RedisServer):
    """One Apache Kvrocks process on 127.0.0.1 (data in ``workdir/db``, persistent by nature).

    Kvrocks writes through RocksDB's write-ahead log, so a SIGKILLed node restarted on
    its directory keeps every acknowledged write.
    """

    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None,
                 password: str | None = None, binary: str | None = None) -> None:
        super().__init__(workdir, port=port, persist=True, extra=extra, password=password)
        self.binary = binary or kvrocks_binary()
        if not self.binary:
            raise RuntimeError(KVROCKS_HELP)

    def args(self) -> list[str]:
        a = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             "--log-dir", str(self.workdir), "--daemonize", "no", "--workers", "2"]
        if self.password:
            a += ["--requirepass", self.password]
        return a + self.extra

    def log_tail(self) -> str:
        logs = sorted(self.workdir.glob("kvrocks.*INFO*"))
        return logs[-1].read_text(errors="replace")[-2000:] if logs else ""

    def start(self, timeout: float = 20.0) -> KvrocksServer:
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, password=self.password, protocol=2,
                                 socket_connect_timeout=0.5) as client:
                    client.ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kvrocks did not start on port {self.port}:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.05)


class KvrocksClusterServers:
    """Three Kvrocks masters joined into one cluster with ``CLUSTERX SETNODES`` (no replicas)."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = Path(workdir)
        self.nodes = [KvrocksServer(self.workdir / f"node{i}", port=free_cluster_port(),
                                    extra=["--cluster-enabled", "yes"]) for i in range(masters)]
        self.node_ids = [f"{i + 1:040x}" for i in range(masters)]
        self.version = 1

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def topology(self) -> str:
        per = 16384 // len(self.nodes)
        lines = []
        for i, (node, nid) in enumerate(zip(self.nodes, self.node_ids, strict=True)):
            last = 16383 if i == len(self.nodes) - 1 else (i + 1) * per - 1
            lines.append(f"{nid} 127.0.0.1 {node.port} master - {i * per}-{last}")
        return "\n".join(lines)

    def start(self, timeout: float = 30.0) -> KvrocksClusterServers:
        try:
            for n in self.nodes:
                n.start()
            for n in self.nodes:
                self.set_topology(n)
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def set_topology(self, node: KvrocksServer) -> None:
        with redis.Redis(host="127.0.0.1", port=node.port, protocol=2) as c:
            c.execute_command("CLUSTERX", "SETNODES", self.topology(), self.version, "force")

    def restart(self, node: KvrocksServer) -> None:
        """Start a stopped or killed node on its port and directory, with the topology again."""
        node.start()
        self.set_topology(node)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        RedisClusterServers.wait_ok(self, timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
