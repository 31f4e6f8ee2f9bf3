"""The REST API under ``/sandbox-kernel/api/``: the client API (client.py) over HTTP.

Every handler is a jupyter_server ``APIHandler`` behind ``@web.authenticated``:
the server's token (``Authorization: token T``, or its login cookie with the
``_xsrf`` rules for a browser) or 403; and behind the server's authorizer, on
the resource ``sandbox-kernel`` (``read``, ``write`` or ``execute``): a user
allowed only to read can list and look, not run, pull, commit or remove. Replies are JSON; errors are
``{"message": one line}`` with a status that says whose fault it was (400 bad
input, 404 no such image or container, 409 a state that forbids it, 502 the
registry). Work that takes time (a pull, an exec) streams server-sent events:
``progress``/``stdout``/``stderr`` as it goes, then ``done`` or ``error``.
The runtime's calls block, so they run in worker threads, never on the
server's event loop.

Nothing a client does (or fails to do) grows the server: a stream holds at
most ``STREAM_EVENTS`` events for its client, and past that the work waits
for the client (back-pressure: an exec's command then blocks on its own
output); a client that stops reading for ``SLOW_CLIENT`` seconds, or goes
away, ends the work (an exec's command is ended, a log follow stops, a
remote cell is interrupted) and frees its thread. A request that is not a
stream is answered within ``REQUEST_TIMEOUT`` seconds, or gets 504.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from http.client import responses
from importlib import resources
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from ..client import LimitsRow, LocalClient, as_json
from ..progress import Progress
from ..runtime import (
    ExecCancelled,
    Limits,
    SandboxError,
    UsageError,
)

BASE = "sandbox-kernel/api"
PROGRESS_EVERY = 0.1  # seconds between progress events of a pull
# seconds: a stream with nothing to say sends a comment line this often (clients time out after 60 s of silence)
HEARTBEAT = float(os.environ.get("SANDBOX_KERNEL_SSE_HEARTBEAT", "15"))
STREAM_EVENTS = 64  # events a stream holds for its client: then the work waits for it
MAX_STREAMS = int(os.environ.get("SANDBOX_KERNEL_MAX_STREAMS", "64"))  # streams at once (each has a thread)
_streams = threading.BoundedSemaphore(MAX_STREAMS)
SLOW_CLIENT = float(os.environ.get("SANDBOX_KERNEL_SLOW_CLIENT", "60"))  # seconds a full stream waits for its client
REQUEST_TIMEOUT = float(os.environ.get("SANDBOX_KERNEL_REQUEST_TIMEOUT", "600"))  # seconds, for what is no stream


class _ClientGone(Exception):
    """The stream's client went away, or stopped reading for SLOW_CLIENT seconds: the work stops."""


def _http_error(exc: SandboxError) -> web.HTTPError:
    error = web.HTTPError(exc.http_status, "%s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    error.sandbox_error = type(exc).__name__  # type: ignore[attr-defined]  # (the reply's "error": for clients)
    return error


def _bad(message: str) -> web.HTTPError:
    return web.HTTPError(400, "%s", message)


class _Handler(APIHandler):
    # jupyter_server's authorizer decides per action on this resource: "read" lists and looks, "write"
    # pulls, commits, removes and changes limits, "execute" runs containers, commands and cells
    auth_resource = "sandbox-kernel"
    gone: threading.Event | None = None  # a stream's: set when its client goes away

    @property
    def client(self) -> LocalClient:
        return self.settings["sandbox_kernel_client"]

    def on_connection_close(self) -> None:
        if self.gone is not None:
            self.gone.set()
        super().on_connection_close()

    def cancelled(self) -> bool:
        """For the work of a stream: whether its client has gone (then it should stop)."""
        return self.gone is not None and self.gone.is_set()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """``{"message": ...}`` with the error's own words (APIHandler's would show "%s" for an
        HTTPError made with arguments, and doubles every '%' of one made without)."""
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if not isinstance(exc, web.HTTPError):
            super().write_error(status_code, **kwargs)
            return
        self.set_header("Content-Type", "application/json")
        message = exc.get_message() if hasattr(exc, "get_message") else exc.log_message
        reply = {"message": message or responses.get(status_code, "Unknown HTTP Error"), "reason": exc.reason}
        if getattr(exc, "sandbox_error", None):
            reply["error"] = exc.sandbox_error  # the runtime's exception class (RemoteClient raises the same)
        self.finish(json.dumps(reply))

    def body(self) -> dict[str, Any]:
        """The request's JSON object; 400 for anything else."""
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _bad("the body must be a JSON object")
        return data

    def flag(self, name: str, default: bool = False) -> bool:
        """A true/false query argument: ``1``/``true`` turn an off-by-default flag on, ``0``/``false`` turn
        an on-by-default one off; anything else leaves the default."""
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        return value not in ("0", "false") if default else value in ("1", "true")

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(function, *args, **kwargs), REQUEST_TIMEOUT)
        except SandboxError as exc:
            raise _http_error(exc) from None
        except TimeoutError:
            raise web.HTTPError(504, "%s", f"the request took longer than {REQUEST_TIMEOUT:.0f} s") from None

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(as_json(value)))

    async def stream(self, work: Callable[[Callable[[str, Any], None]], Any]) -> None:
        """Run ``work(emit)`` in a thread and send what it emits as server-sent events, then
        ``done`` (with what it returned) or ``error``.

        ``emit`` blocks while the client is ``STREAM_EVENTS`` events behind, and
        raises (so that the work stops) once the client is gone or has not read
        for ``SLOW_CLIENT`` seconds; work that waits without emitting asks
        :meth:`cancelled`.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(maxsize=STREAM_EVENTS)
        gone = self.gone = threading.Event()

        def put(item: tuple[str, Any] | None) -> None:  # in the worker thread
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            try:
                future.result(SLOW_CLIENT)
            except concurrent.futures.TimeoutError:
                future.cancel()
                gone.set()
                raise _ClientGone from None

        def emit(event: str, data: Any) -> None:
            if gone.is_set():
                raise _ClientGone
            put((event, data))

        def run() -> None:
            final: tuple[str, Any] | None = None
            try:
                final = ("done", as_json(work(emit)))
            except (_ClientGone, ExecCancelled):
                pass  # nobody listens any more; the work has stopped
            except SandboxError as exc:
                final = ("error", {"message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                   "status": exc.http_status, "error": type(exc).__name__})
            except Exception as exc:  # a bug: still one line to the client, and the log has it
                self.log.exception("sandbox-kernel: %s failed", self.request.path)
                final = ("error", {"message": f"internal error: {type(exc).__name__}", "status": 500})
            finally:
                with contextlib.suppress(_ClientGone):
                    if final is not None and not gone.is_set():
                        put(final)
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(queue.put(None)))  # the end, after the rest

        # A thread of its own, not one of the server's shared few: quick requests never wait behind streams.
        if not _streams.acquire(blocking=False):
            raise web.HTTPError(503, "%s", f"{MAX_STREAMS} streams are open already; try again later")
        worker = loop.create_future()

        def thread() -> None:
            try:
                run()
            finally:
                _streams.release()
                loop.call_soon_threadsafe(lambda: worker.done() or worker.set_result(None))

        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        threading.Thread(target=thread, name=f"sandbox-kernel {self.request.path}", daemon=True).start()
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:  # a comment line now and then: clients' read timeouts stay quiet
                item = ("", None)
            if item is None:
                break
            if gone.is_set():
                continue  # drained, unwritten, so that the work is never left waiting to put
            event, data = item
            try:
                self.write(f"event: {event}\ndata: {json.dumps(data)}\n\n" if event else ": still working\n\n")
                await self.flush()  # waits while the client's socket is full: back-pressure
            except StreamClosedError:
                gone.set()
        await worker
        if not gone.is_set():
            self.finish()


def _ref(path_arg: str) -> str:
    """A path argument (tornado has already percent-decoded it: an image's '/' comes as %2F)."""
    ref = path_arg
    if not ref or "\0" in ref:
        raise _bad("empty or invalid reference")
    return ref


def _optional(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``body[key]`` if it is a ``kind`` (never a bool, which JSON's true would pass as an int), None if absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _bad(f"{key}: expected {what}")
    return value


def _boolean(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{key}: expected true or false")
    return value


def _known(body: dict[str, Any], keys: set[str], what: str) -> None:
    """400 for a field this API does not know (a typo must not pass for a default)."""
    unknown = sorted(set(body) - keys)
    if unknown:
        raise _bad(f"{what}: unknown field {unknown[0]!r} (known: {', '.join(sorted(keys))})")


def _limits(body: Any) -> LimitsRow:
    if not isinstance(body, dict):
        raise _bad("limits: expected an object")
    _known(body, {"memory", "cpus", "pids", "disk"}, "limits")
    memory = _optional(body, "memory", int, "an integer number of bytes or null")
    disk = _optional(body, "disk", int, "an integer number of bytes or null")
    cpus = _optional(body, "cpus", (int, float), "a number of CPUs or null")
    pids = _optional(body, "pids", int, "an integer or null")
    try:  # the runtime's rules (spec.Limits), not a copy of them
        Limits(memory=memory, cpus=None if cpus is None else float(cpus), pids=pids, disk=disk)
    except UsageError as exc:
        raise _bad(f"limits: {exc}") from None
    return LimitsRow(memory=memory, cpus=None if cpus is None else float(cpus), pids=pids, disk=disk)


def _strings(value: Any, key: str, *, empty: bool = True) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "\0" not in v for v in value):
        raise _bad(f"{key}: expected a list of strings")
    if not empty and not value:
        raise _bad(f"{key}: must not be empty")
    return value


# -- handlers ------------------------------------------------------------------------------------------------------

class HostHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        self.reply(await self.call(self.client.host))


class ImagesHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        self.reply(await self.call(self.client.images))


class PullHandler(_Handler):
    @web.authenticated
    @authorized("write")
    async def post(self) -> None:
        body = self.body()
        reference = body.get("reference")
        if not isinstance(reference, str) or not reference:
            raise _bad("reference: expected an image reference such as registry/name:tag")
        platform = _optional(body, "platform", str, "a platform such as linux/amd64")
        insecure = _boolean(body, "insecure", False)
        from ..runtime import parse_reference

        try:
            parse_reference(reference)
        except SandboxError as exc:
            raise _http_error(exc) from None

        def work(emit: Callable[[str, Any], None]) -> dict[str, str]:
            last = [0.0]

            def progress(state: Progress) -> None:
                now = time.monotonic()
                if state.finished or now - last[0] >= PROGRESS_EVERY:
                    last[0] = now
                    emit("progress", {"done": state.done, "total": state.total, "fraction": state.fraction,
                                      "layers": {k: {"done": d, "total": t} for k, (d, t) in state.layers.items()}})

            digest = self.client.pull(reference, platform=platform, insecure=insecure, progress=progress)
            return {"reference": reference, "digest": digest}

        await self.stream(work)


class ImageHandler(_Handler):
    @web.authenticated
    @authorized("write")
    async def delete(self, ref: str) -> None:
        self.reply(await self.call(self.client.remove_image, _ref(ref), self.flag("force")))


class HistoryHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self, ref: str) -> None:
        self.reply(await self.call(self.client.history, _ref(ref)))


class ContainersHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        self.reply(await self.call(self.client.containers, self.flag("all", True)))

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        body = self.body()
        _known(body, {"image", "name", "command", "limits", "start"}, "container")
        image = body.get("image")
        if not isinstance(image, str) or not image:
            raise _bad("image: expected an image reference")
        name = _optional(body, "name", str, "a container name")
        command = _strings(body.get("command", []), "command")
        limits = _limits(body["limits"]) if body.get("limits") is not None else None
        start = _boolean(body, "start", True)
        cid = await self.call(self.client.create, image, name=name, command=tuple(command), limits=limits,
                              start=start)
        self.reply({"id": cid}, status=201)


class ContainerHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self, ref: str) -> None:
        self.reply(await self.call(self.client.container, _ref(ref)))

    @web.authenticated
    @authorized("write")
    async def delete(self, ref: str) -> None:
        self.reply({"id": await self.call(self.client.remove, _ref(ref), self.flag("force"))})


class ActionHandler(_Handler):
    """POST /containers/REF/start|stop."""

    @web.authenticated
    @authorized("execute")
    async def post(self, ref: str, action: str) -> None:
        ref = _ref(ref)
        if action == "start":
            await self.call(self.client.start, ref)
        else:
            timeout = self.body().get("timeout", 10)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 <= timeout <= 3600:
                raise _bad("timeout: expected seconds, 0 to 3600")
            await self.call(self.client.stop, ref, float(timeout))
        self.reply({"id": ref, "action": action})


class LimitsHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self, ref: str) -> None:
        self.reply(await self.call(self.client.limits, _ref(ref)))

    @web.authenticated
    @authorized("write")
    async def put(self, ref: str) -> None:
        ref = _ref(ref)
        self.reply(await self.call(self.client.set_limits, ref, _limits(self.body())))


class StatsHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self, ref: str) -> None:
        self.reply(await self.call(self.client.stats, _ref(ref)))


class CommitHandler(_Handler):
    @web.authenticated
    @authorized("write")
    async def post(self, ref: str) -> None:
        body = self.body()
        target = _optional(body, "reference", str, "an image reference")
        message = _optional(body, "message", str, "a message")
        created_by = _optional(body, "created_by", str, "what made the layer (its history entry)")
        image_id = await self.call(self.client.commit, _ref(ref), target, message, created_by)
        self.reply({"id": image_id, "reference": target}, status=201)


class ExecHandler(_Handler):
    @web.authenticated
    @authorized("execute")
    async def post(self, ref: str) -> None:
        ref = _ref(ref)
        argv = _strings(self.body().get("argv"), "argv", empty=False)
        info = await self.call(self.client.runtime.get, ref)  # 404 before the stream starts
        if not info.running:
            raise _http_error(SandboxError(f"container {info.name} is not running"))

        def work(emit: Callable[[str, Any], None]) -> dict[str, int]:
            return {"exit_code": self.client.exec(ref, argv, lambda stream, text: emit(stream, {"text": text}),
                                                  cancelled=self.cancelled)}

        await self.stream(work)


class LogsHandler(_Handler):
    """GET /containers/REF/logs[?follow=1]: the output as server-sent events, then ``done`` with the exit code."""

    @web.authenticated
    @authorized("read")
    async def get(self, ref: str) -> None:
        ref = _ref(ref)
        follow = self.flag("follow")
        await self.call(self.client.runtime.get, ref)  # 404 before the stream starts

        def work(emit: Callable[[str, Any], None]) -> dict[str, int | None]:
            return {"exit_code": self.client.logs(ref, lambda stream, text: emit(stream, {"text": text}), follow,
                                                  cancelled=self.cancelled)}

        await self.stream(work)


class CellHandler(_Handler):
    """POST /cells {line, cell, inputs}: a %%container cell of a remote kernel (server/cells.py), as SSE."""

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        body = self.body()
        line, cell = body.get("line", ""), body.get("cell")
        if not isinstance(line, str) or not isinstance(cell, str):
            raise _bad("line and cell: expected strings (the magic's arguments and the cell's code)")
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            raise _bad("inputs: expected an object of encoded values")
        runner = self.cells()
        # (a client that goes away: the cell's next output raises in its sink, and the session interrupts it)
        await self.stream(lambda emit: runner.run(line, cell, inputs, emit))

    def cells(self) -> Any:
        runner = self.settings.get("sandbox_kernel_cells")
        if runner is None:
            from .cells import CellRunner

            runner = self.settings["sandbox_kernel_cells"] = CellRunner(self.client.store,
                                                                         self.settings.get("sandbox_kernel_policy"))
        return runner


class InterruptHandler(CellHandler):
    """POST /cells/interrupt: KeyboardInterrupt in the running cell (as a kernel's interrupt)."""

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        self.reply({"interrupted": self.cells().interrupt()})


class OpenAPIHandler(_Handler):
    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(resources.files(__package__).joinpath("openapi.json").read_text())


REF = r"([^/]+)"  # a container name or id, or an image reference with its '/' escaped as %2F


def handlers(base_url: str) -> list[tuple[str, type, ...]]:  # type: ignore[misc]
    routes: list[tuple[str, type]] = [
        ("host", HostHandler),
        ("images", ImagesHandler),
        ("images/pull", PullHandler),
        (f"images/{REF}/history", HistoryHandler),
        (f"images/{REF}", ImageHandler),
        ("containers", ContainersHandler),
        (f"containers/{REF}/(start|stop)", ActionHandler),
        (f"containers/{REF}/limits", LimitsHandler),
        (f"containers/{REF}/stats", StatsHandler),
        (f"containers/{REF}/commit", CommitHandler),
        (f"containers/{REF}/exec", ExecHandler),
        (f"containers/{REF}/logs", LogsHandler),
        (f"containers/{REF}", ContainerHandler),
        ("cells", CellHandler),
        ("cells/interrupt", InterruptHandler),
        ("openapi.json", OpenAPIHandler),
    ]
    return [(url_path_join(base_url, BASE, path), handler) for path, handler in routes]
