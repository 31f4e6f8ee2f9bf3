"""The client API against a Jupyter server's sandbox-kernel REST API (docker's client/daemon split).

``RemoteClient(url, token)`` has the methods of :class:`~sandbox_kernel.client.LocalClient`
and makes each one an HTTP request to ``URL/sandbox-kernel/api/``; the magics
(``%container --remote URL --token T``), the CLI (``--host URL`` or
``$SANDBOX_KERNEL_HOST`` with ``$SANDBOX_KERNEL_TOKEN``) and the panel use it
as they use the local one. Errors come back as the runtime's exceptions, with the
server's one-line message (404 -> ContainerNotFound or ImageNotFound, 502 ->
RegistryError, other 4xx -> UsageError); a server that cannot be reached is one
line too. Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from .client import (
    ContainerRow,
    ImageRemoval,
    ImageRow,
    LimitsRow,
    Output,
    ProgressCallback,
    RunOptions,
    RunOutcome,
    StatsRow,
    Stdio,
)
from .progress import Progress
from .runtime import (
    ExecCancelled,
    HostCapacity,
    SandboxError,
    UsageError,
    errors,
)

HOST_ENV = "SANDBOX_KERNEL_HOST"
TOKEN_ENV = "SANDBOX_KERNEL_TOKEN"
API = "sandbox-kernel/api"


class RemoteError(SandboxError):
    """The server could not be reached, or answered with something that is not the API."""


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


class RemoteClient:
    """The client API over HTTP, against the server at ``url`` with its ``token``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"invalid remote URL {url!r}: expected http(s)://HOST:PORT[/base]")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.timeout = timeout

    @classmethod
    def from_environment(cls) -> RemoteClient | None:
        """The client that ``$SANDBOX_KERNEL_HOST`` (and ``$SANDBOX_KERNEL_TOKEN``) name, if set."""
        url = os.environ.get(HOST_ENV)
        return cls(url) if url else None

    def __repr__(self) -> str:
        return f"RemoteClient({self.url!r})"

    # -- HTTP -----------------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, *, stream: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/{API}/{path}", data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"token {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            reply = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise self._error(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self.url}: {reason}") from None
        if stream:
            return reply
        with reply:
            text = reply.read()
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise RemoteError(f"{self.url} did not answer with JSON: is it a sandbox-kernel server?") from None

    def _row(self, cls: type[Any], data: Any) -> Any:
        """A row (a dataclass) from the server's JSON: fields it does not know, or missing ones, are refused."""
        if not isinstance(data, dict):
            raise RemoteError(f"{self.url} answered with something that is not the API's {cls.__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise RemoteError(f"{self.url} sent a field this client does not know ({cls.__name__}.{unknown[0]}): "
                              "is the server a newer sandbox-kernel?")
        try:
            return cls(**data)
        except TypeError:
            raise RemoteError(f"{self.url} sent a {cls.__name__} without all of its fields") from None

    def _list(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise RemoteError(f"{self.url} answered with something that is not the API's list")
        return data

    def _error(self, status: int, body: bytes) -> SandboxError:
        """The runtime's exception the server named (its "error"), with the server's message."""
        if status == 403:
            return RemoteError(f"{self.url} refused the request (403): wrong or missing token")
        try:
            reply = json.loads(body)
            message, kind = str(reply.get("message") or ""), str(reply.get("error") or "")
        except (ValueError, AttributeError):  # not the API's JSON: a Jupyter page, a proxy's, ...
            return RemoteError(f"{self.url} answered {status} without the sandbox-kernel API's JSON: is the "
                               "server extension enabled there?")
        message = message or f"the server answered {status}"
        return errors.from_reply(status, kind, message) or RemoteError(f"{self.url}: {message}")

    def _events(self, path: str, body: Any, method: str = "POST") -> Iterator[tuple[str, Any]]:
        """Server-sent events of a streaming call, as they come."""
        with self._request(method, path, body, stream=True) as reply:
            try:
                yield from self._parse(reply)  # (the server sends a comment line every 15 s of silence)
            except OSError as exc:
                raise RemoteError(f"lost the connection to {self.url}: {exc}") from None

    def _stream_result(self, path: str, body: Any, on_event: Callable[[str, Any], None], method: str = "POST",
                       cancelled: Callable[[], bool] | None = None) -> Any:
        """The ``done`` event's data; ``on_event`` for the others. Once ``cancelled()`` says so (asked at each
        event, at least every heartbeat), the connection is closed: the server then ends the work."""
        for event, data in self._events(path, body, method):
            if cancelled is not None and cancelled():
                raise ExecCancelled(f"stopped waiting for {self.url}: the request was closed")
            if event == "done":
                return data
            if event == "error":
                raise self._error(int(data.get("status", 500)), json.dumps(data).encode())
            on_event(event, data)
        raise RemoteError(f"{self.url}: the stream ended without a result")

    # -- %%container cells, run by the server ---------------------------------------------------------------------

    def cell(self, line: str, cell: str, inputs: dict[str, Any], sink: Any) -> dict[str, Any]:
        """Run a ``%%container`` cell on the server (server/cells.py): its output to ``sink`` as it comes;
        the end: ``{"status": "ok", "result", "outputs"}`` or ``{"status": "error", "error"}``.

        Ctrl-C (KeyboardInterrupt) while it runs interrupts the cell there, as it would here; the
        stream goes on to the cell's end (the server kills a cell that ignores it).
        """
        events: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        reply = self._request("POST", "cells", {"line": line, "cell": cell, "inputs": inputs}, stream=True)

        def read() -> None:  # in a thread: a Ctrl-C must never land inside the HTTP parser
            try:
                for item in self._parse(reply):
                    events.put(item)
            except (OSError, ValueError) as exc:
                events.put(("lost", str(exc)))
            finally:
                events.put(None)
                reply.close()

        threading.Thread(target=read, name="sandbox-kernel-remote-cell", daemon=True).start()
        while True:
            try:  # Ctrl-C may come while we wait or while we show what came: either way it goes there
                try:
                    item = events.get(timeout=0.1)  # in slices, as the local wait: a Ctrl-C is seen at once
                except queue.Empty:
                    continue
                if item is None:
                    raise RemoteError(f"{self.url}: the cell's stream ended without its result")
                event, data = item
                if event == "stream":
                    sink.stream(str(data.get("name")), str(data.get("text", "")))
                elif event == "display":
                    sink.display(dict(data.get("data") or {}), dict(data.get("metadata") or {}))
                elif event == "done":
                    return dict(data)
                elif event == "error":
                    raise self._error(int(data.get("status", 500)), json.dumps(data).encode())
                elif event == "lost":
                    raise RemoteError(f"lost the connection to {self.url}: {data}")
            except KeyboardInterrupt:
                self._request("POST", "cells/interrupt", {})

    @staticmethod
    def _parse(reply: Any) -> Iterator[tuple[str, Any]]:
        """(event, data) of a server-sent event stream; comment lines (the server's heartbeat) skipped."""
        event = "message"
        for raw in reply:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, json.loads(line[6:])
                event = "message"

    # -- the client API -------------------------------------------------------------------------------------------

    def host(self) -> HostCapacity:
        return self._row(HostCapacity, self._request("GET", "host"))

    def images(self) -> list[ImageRow]:
        return [self._row(ImageRow, row) for row in self._list(self._request("GET", "images"))]

    def pull(self, reference: str, *, platform: str | None = None, insecure: bool = False,
             progress: ProgressCallback | None = None, ca_file: str | None = None,
             cert_dir: str | None = None) -> str:
        if ca_file or cert_dir:
            raise UsageError("--ca-file and --cert-dir name files of this machine: the server pulls with its own")
        state = Progress(reference)

        def on_event(event: str, data: Any) -> None:
            if event == "progress":
                state.layers = {k: [v["done"], v["total"]] for k, v in data["layers"].items()}
                if progress is not None:
                    progress(state)

        body: dict[str, Any] = {"reference": reference, "insecure": insecure}
        if platform:
            body["platform"] = platform
        result = self._stream_result("images/pull", body, on_event)
        state.finished = True
        if progress is not None:
            progress(state)
        return str(result["digest"])

    def remove_image(self, reference: str, force: bool = False) -> ImageRemoval:
        return self._row(ImageRemoval, self._request("DELETE", f"images/{_quote(reference)}?force={int(force)}"))

    def history(self, reference: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"images/{_quote(reference)}/history"))

    def containers(self, all: bool = True) -> list[ContainerRow]:
        return [self._row(ContainerRow, row) for row in self._list(self._request("GET", f"containers?all={int(all)}"))]

    def container(self, ref: str) -> ContainerRow:
        return self._row(ContainerRow, self._request("GET", f"containers/{_quote(ref)}"))

    def create(self, image: str, *, name: str | None = None, command: tuple[str, ...] = (),
               limits: LimitsRow | None = None, start: bool = True) -> str:
        body: dict[str, Any] = {"image": image, "command": list(command), "start": start}
        if name:
            body["name"] = name
        if limits is not None:
            body["limits"] = {"memory": limits.memory, "cpus": limits.cpus, "pids": limits.pids}
        return str(self._request("POST", "containers", body)["id"])

    def start(self, ref: str) -> None:
        self._request("POST", f"containers/{_quote(ref)}/start")

    def stop(self, ref: str, timeout: float = 10.0) -> None:
        self._request("POST", f"containers/{_quote(ref)}/stop", {"timeout": timeout})

    def remove(self, ref: str, force: bool = False) -> str:
        return str(self._request("DELETE", f"containers/{_quote(ref)}?force={int(force)}")["id"])

    def commit(self, ref: str, target: str | None = None, message: str | None = None,
               created_by: str | None = None, compression: str = "gzip") -> str:
        if compression != "gzip":
            raise UsageError("--compression is not available against a remote host (its layers are gzip)")
        body = {k: v for k, v in (("reference", target), ("message", message), ("created_by", created_by)) if v}
        return str(self._request("POST", f"containers/{_quote(ref)}/commit", body)["id"])

    def stats(self, ref: str) -> StatsRow:
        return self._row(StatsRow, self._request("GET", f"containers/{_quote(ref)}/stats"))

    def limits(self, ref: str) -> LimitsRow:
        return self._row(LimitsRow, self._request("GET", f"containers/{_quote(ref)}/limits"))

    def set_limits(self, ref: str, limits: LimitsRow, memory_swap: str | None = None) -> LimitsRow:
        if memory_swap is not None:
            raise UsageError("--memory-swap is not available against a remote host")
        body = {"memory": limits.memory, "cpus": limits.cpus, "pids": limits.pids}
        return self._row(LimitsRow, self._request("PUT", f"containers/{_quote(ref)}/limits", body))

    def logs(self, ref: str, output: Output, follow: bool = False,
             cancelled: Callable[[], bool] | None = None) -> int | None:
        output = _text(output)
        result = self._stream_result(f"containers/{_quote(ref)}/logs?follow={int(follow)}", None,
                                     lambda event, data: output(event, data["text"]), method="GET",
                                     cancelled=cancelled)
        return None if result["exit_code"] is None else int(result["exit_code"])

    def exec(self, ref: str, argv: list[str], output: Output, cancelled: Callable[[], bool] | None = None, *,
             env: tuple[str, ...] = (), user: str | None = None, workdir: str | None = None) -> int:
        if env or user or workdir:
            raise UsageError("-e, -u and -w are not available against a remote host")
        output = _text(output)
        result = self._stream_result(f"containers/{_quote(ref)}/exec", {"argv": list(argv)},
                                     lambda event, data: output(event, data["text"]), cancelled=cancelled)
        return int(result["exit_code"])

    def run(self, options: RunOptions, output: Output | None = None, *, detach: bool = False,
            start: bool = True) -> RunOutcome:
        """A container made and started there; in the foreground, its output followed here until it exits
        (Ctrl-C stops it there, as docker's signal proxy would) and, with ``remove``, removed after."""
        local = options.local_only()
        if local:
            raise UsageError(f"{local[0]} is not available against a remote host")
        text = _text(output)  # (-t is refused here, before anything is made)
        if detach and options.remove:
            raise UsageError("-d and --rm together are not available against a remote host")
        cid = self.create(options.image, name=options.name, command=options.command, limits=options.limits,
                          start=start)
        if detach:
            return RunOutcome(cid)
        try:
            try:
                code = self.logs(cid, text, follow=True)
            except KeyboardInterrupt:
                self.stop(cid, timeout=10)
                code = self.logs(cid, lambda *_: None)  # (its output was shown; now its exit code)
        finally:
            if options.remove:
                self.remove(cid, force=True)
        return RunOutcome(cid, code)


def _text(output: Output | None) -> Callable[[str, str], None]:
    """What a server sends (text by stream) for ``output``."""
    if output is None:
        return lambda stream, text: None
    if isinstance(output, Stdio):
        if output.tty:
            raise UsageError("-t is not available against a remote host")
        return output.text()
    return output
