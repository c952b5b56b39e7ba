"""A bundle of the shared tiny model (its tokenizer carries a Phi-3-style chat template) and servers on it.

``start_server(argv)`` starts a server process on a free loopback port and waits until /v1/models
answers; every process it started is ended (by its pid) when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from slimedge.bundle import build_bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, path: str, body: dict | None = None, key: str | None = None, timeout: float = 120):
    """(status, parsed JSON or raw text) of a GET (no body) or POST to the server."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read().decode()
            status, ctype = r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    return status, (json.loads(raw) if ctype.startswith("application/json") else raw)


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def serve_bundle(hf_model, tmp_path_factory):
    return build_bundle(hf_model, "cpu", tmp_path_factory.mktemp("serve") / "tiny-cpu")


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], port: int | None = None, env: dict | None = None, wait: bool = True) -> Server:
        port = port or free_port()
        log = tmp_path_factory.mktemp("serverlog") / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*argv, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, **(env or {})))
        procs.append(proc)
        srv = Server(proc, port, log)
        deadline = time.monotonic() + 120
        while wait:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{srv.output()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not listen within 120 s:\n{srv.output()}")
                time.sleep(0.2)
        return srv

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_argv(bundle: Path) -> list[str]:
    return [sys.executable, str(bundle / "run"), "--serve", "--threads", "2"]


def slimedge_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "slimedge", "serve", *args]
