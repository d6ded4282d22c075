"""Real Redis-protocol servers for the tests: ``redis-server`` on free loopback ports."""

from __future__ import annotations

import os
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
