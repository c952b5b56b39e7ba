"""HTTP and command-line helpers for the server tests (a module of its own: `conftest` names clash across folders)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path


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


def run_argv(bundle: Path) -> list[str]:
    return [sys.executable, str(bundle / "run"), "--serve", "--threads", "2"]


def slimedge_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "slimedge", "serve", *args]


def post_raw(port: int, path: str, data: bytes, headers: dict | None = None, timeout: float = 120):
    """(status, headers, parsed JSON or raw text) of a POST of ``data`` exactly as given (no encoding)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        raw = r.read().decode(errors="replace")
        ctype = r.getheader("content-type", "")
        return r.status, dict(r.getheaders()), (json.loads(raw) if ctype.startswith("application/json") else raw)
    finally:
        conn.close()
