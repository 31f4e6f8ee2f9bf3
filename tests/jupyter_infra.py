"""A real Jupyter server (or JupyterLab) on 127.0.0.1 for the server and browser tests, and a tiny HTTP client.

The server runs in its own process with a token, its runtime/config/data
directories in the test's temp dir (nothing written to ~), on the store given.
Stopped with SIGTERM (then SIGKILL) at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_infra import free_port


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    proc: subprocess.Popen
    log: Path

    def request(self, method: str, path: str, body: Any = None, *, token: bool = True, raw: bytes | None = None,
                timeout: float = 60) -> tuple[int, Any]:
        """``method`` on ``/sandbox-kernel/api/`` + ``path``: (status, parsed JSON reply or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"{self.url}/sandbox-kernel/api/{path}", data=data, method=method)
        if token:
            req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as reply:
                status, text = reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def events(self, path: str, body: Any, comments: bool = False) -> Iterator[tuple[str, Any]]:
        """POST and read server-sent events as they come: (event, data); with ``comments``, the stream's
        comment lines too, as (":", text)."""
        req = urllib.request.Request(f"{self.url}/sandbox-kernel/api/{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"token {self.token}",
                                                             "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as reply:
            assert reply.headers["Content-Type"].startswith("text/event-stream")
            event = None
            for line in reply:
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: "):
                    yield event or "message", json.loads(text[6:])
                elif text.startswith(": ") and comments:
                    yield ":", text[2:]


@contextmanager
def jupyter_server(workdir: Path, store_root: Path, *, lab: bool = False,
                   env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Iterator[RunningServer]:
    port = free_port()
    token = secrets.token_hex(16)
    for sub in ("runtime", "config", "data", "notebooks"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    if lab:  # no "get the news?" prompt (and no fetch of it) in the tests' JupyterLab
        settings = workdir / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    environment = {**os.environ, "SANDBOX_KERNEL_ROOT": str(store_root),
                   "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"), "JUPYTER_CONFIG_DIR": str(workdir / "config"),
                   "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_PLATFORM_DIRS": "1", **(env or {})}
    argv = [sys.executable, "-m", "jupyterlab" if lab else "jupyter_server", "--allow-root", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir / 'notebooks'}", *args]
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment,
                                start_new_session=True)
    server = RunningServer(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Jupyter server exited: {log.read_text()[-2000:]}")
            try:
                req = urllib.request.Request(f"{server.url}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Jupyter server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
