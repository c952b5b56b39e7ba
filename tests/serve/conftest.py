"""A bundle of the shared tiny model (its tokenizer carries a Phi-3-style chat template) and servers on it.

``start_server(argv)`` starts a server process on a free loopback port and waits until it accepts
connections (uvicorn listens only once the model is loaded); every process it started is sent SIGTERM
(by its pid) when the module's tests end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from tests.serve.serve_helpers import Server, free_port

from slimedge.bundle import build_bundle


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
