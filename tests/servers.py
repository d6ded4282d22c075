"""Real Redis-protocol servers for the tests: ``redis-server`` on free loopback ports."""

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
