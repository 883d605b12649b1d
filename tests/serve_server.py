"""A real ``smscredits serve`` in a subprocess on a free loopback port, for the serve tests.

    server = start_server(db_url, tmp_path, tokens={"gateway": GATEWAY_TOKEN})
    with server.client(GATEWAY_TOKEN) as http:
        http.post("/v1/charge", json={...})
    assert server.stop() == 0   # SIGTERM, then the exit code
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import shifted_clock

GATEWAY_TOKEN = "gw-" + "g" * 29
ADMIN_TOKEN = "adm-" + "a" * 28
STARTUP_S = 30  # how long a server may take to answer its first /healthz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def async_client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not stop after {sig}: {self.log_text()}") from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def serve_env(db_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "SMSCREDITS_DB": db_url, "SMSCREDITS_ACTOR": "tester",
           "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


def start_server(db_url: str, tmp_path: Path, *, tokens: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 wait: bool = True, clock_file: Path | None = None) -> Server:
    """Start ``smscredits serve`` on the database; ``tokens``: role -> token, written to an
    owner-only tokens file; ``clock_file``: on the clock of tests/shifted_clock.py, the
    host's plus the offset the file holds."""
    port = free_port()
    runs = [shifted_clock.__file__] if clock_file is not None else ["-m", "smscredits"]
    if clock_file is not None:
        env = {**(env or {}), shifted_clock.OFFSET_ENV: f"@{clock_file}"}
    command = [sys.executable, *runs, "serve", "--port", str(port), *args]
    if tokens:
        path = tmp_path / f"tokens-{port}"
        path.write_text("".join(f"{role} {token}\n" for role, token in tokens.items()))
        path.chmod(0o600)
        command += ["--tokens", str(path)]
    log = tmp_path / f"serve-{port}.log"
    full_env = serve_env(db_url, env)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = Server(f"http://127.0.0.1:{port}", proc, log, full_env)
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"serve exited {server.proc.returncode}: {server.log_text()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling for a port to open, not waiting on a clock
    server.stop(signal.SIGKILL)
    raise AssertionError(f"serve did not answer in {STARTUP_S}s: {server.log_text()}")


@contextmanager
def running(db_url: str, tmp_path: Path, **kwargs: Any) -> Iterator[Server]:
    """A server for the block; stopped with SIGTERM after it, which must exit 0."""
    server = start_server(db_url, tmp_path, **kwargs)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, server.log_text()


@pytest.fixture
def funded(cli: Any) -> Any:
    """alice and bob with a credits power each (alice 100 credits, bob 10) and a default
    price of 0.05 per part; the CLI runner on the same database."""
    for name, credits in (("alice", "100"), ("bob", "10")):
        assert cli("user", "add", name).exit_code == 0
        assert cli("power", "create", name, "credits", "--initial", credits).exit_code == 0
    assert cli("price", "set", "default", "0.05").exit_code == 0
    return cli
