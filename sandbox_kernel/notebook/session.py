"""One ``%%container`` container as the notebook sees it: its agent, and cells run through it.

The container's main process is the agent (``sandbox_kernel/agent/agent.py``, run
by the image's ``python3``), started in the foreground by a thread of this process
(:meth:`Containers.run` / :meth:`Containers.start_attached`), so the container
dies with the kernel. Requests go to the agent's stdin as length-prefixed JSON;
its replies come back on its stdout and are queued for the cell that waits.
Images without ``python3`` get a shell container: a sleeping ``/bin/sh`` as main
process and every cell an ``exec`` of ``/bin/sh -c``.

Everything that comes back is data: JSON frames of a bounded size, values in
and out as JSON, bytes or ``.npy`` (never pickle), see :mod:`sandbox_kernel.notebook.values`.

And it is bounded: a container that prints without end cannot fill the
kernel. Each period (a cell, or the time between two cells) keeps at most
``OutputLimits.stream`` bytes of printed text and ``OutputLimits.display``
bytes of display data and results; what comes past that is dropped unread
(not decoded) and the period ends with one line saying how much. A frame is
size-checked from its header before its body is kept, and a large one whose
JSON holds more values than a frame of ours could is refused before it is
decoded, so no frame becomes gigabytes of objects.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..runtime import ContainerError, Containers, ContainerSpec, SandboxError, format_size

AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"  # (sandbox_kernel/agent, mounted read-only)
AGENT_MOUNT = "/.sandbox-kernel"
AGENT_ARGV = ("python3", f"{AGENT_MOUNT}/agent.py")
SHELL_IDLE = ("/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done")
HEADER = struct.Struct(">I")
MAX_FRAME = 16 << 20  # one reply from the container; more ends the session (a container cannot fill our memory)
MAX_VALUES = 200_000  # JSON values (arrays, objects, items) a large frame may hold
MAX_CONTROL = 10_000  # frames that are neither output nor a display (done, ready...) in one period: more is abuse
MAX_CONTROL_BYTES = 2 * MAX_FRAME  # and their bytes (a cell's done may hold its --out values: one full frame)
MAX_DEPTH = 200  # how deep a frame's JSON may nest: the cell's thread, deep in IPython's stack, must walk it too
STREAM_PREFIX = b'{"type":"stream"'  # how the agent starts a stream frame (json.dumps, "type" first)
CONTROL_TYPES = ("ready", "done", "died", "interrupted")
START_TIMEOUT = 60.0
GRACE = 3.0  # seconds between the interrupt and the kill of a cell that ignores it
KILL_GRACE = 10.0  # seconds the agent has to answer that kill before its container is stopped (a stopped agent)
POLL = 0.1
PYTHONS = ("usr/bin/python3", "usr/local/bin/python3", "bin/python3")


@dataclass(frozen=True)
class OutputLimits:
    """How much of a container's output the kernel keeps in one cell, and between two cells (bytes).

    Like Jupyter's ``iopub_data_rate_limit``: what comes past it is dropped, and
    the cell says so once. The magics' ``output_limit`` and ``display_limit``
    (Jupyter config) set them.
    """

    stream: int = 4 << 20  # printed text (stdout, stderr)
    display: int = 32 << 20  # display data and results: images, HTML


class _Budget:
    """What the current period (a cell, or the time between two) has kept of its limits, and dropped."""

    def __init__(self, limits: OutputLimits):
        self.limits = limits
        self.lock = threading.Lock()
        self.kept = {"stream": 0, "display": 0, "control": 0, "control_bytes": 0}
        self.dropped = {"stream": 0, "display": 0}

    def take(self, kind: str, size: int) -> bool:
        """Whether a frame of ``kind`` and ``size`` may be kept (counted if so, counted as dropped if not)."""
        with self.lock:
            if kind == "control":  # (never dropped, a cell's end must come: bounded in number and bytes)
                self.kept["control"] += 1
                self.kept["control_bytes"] += size
                return self.kept["control"] <= MAX_CONTROL and self.kept["control_bytes"] <= MAX_CONTROL_BYTES
            limit = self.limits.stream if kind == "stream" else self.limits.display
            if self.kept[kind] + size > limit:
                self.dropped[kind] += size
                return False
            self.kept[kind] += size
            return True

    def next_period(self) -> dict[str, int]:
        """Start a new period; what the one that ends dropped."""
        with self.lock:
            dropped = {kind: size for kind, size in self.dropped.items() if size}
            self.kept = {"stream": 0, "display": 0, "control": 0, "control_bytes": 0}
            self.dropped = {"stream": 0, "display": 0}
        return dropped

    def notice(self, dropped: dict[str, int], when: str) -> str:
        """The one line a period that dropped output ends with."""
        parts = []
        for kind, size in dropped.items():
            limit = self.limits.stream if kind == "stream" else self.limits.display
            what = "output" if kind == "stream" else "display data"
            option = "output_limit" if kind == "stream" else "display_limit"
            parts.append(f"{format_size(size)} of {what} dropped: {when} keeps {format_size(limit)} "
                         f"(c.ContainerMagics.{option})")
        return f"[sandbox-kernel: {'; '.join(parts)}]\n"


# A JSON string, or an unclosed one to the end of the body: a match never fails and never backtracks (possessive),
# so the scan is linear (one that could fail rescanned from each escaped quote: quadratic, holding the GIL).
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)


def _too_many_values(body: bytes) -> bool:
    """Whether a large frame's JSON holds more values than MAX_VALUES (counted outside its strings)."""
    if len(body) <= 65536:
        return False
    skeleton = _STRINGS.sub(b"", body)
    return skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{") > MAX_VALUES


def _too_deep(body: bytes, message: Any) -> bool:
    """Whether a decoded frame nests deeper than MAX_DEPTH (walked only when its body has that many brackets).

    The reader thread's stack is short, so JSON that decodes here could still fail in the cell's thread, deep in
    IPython's stack (``str`` of an error's fields, ``json.dumps`` of an ``--out`` value: RecursionError).
    """
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    level: list[Any] = [message]
    for _ in range(MAX_DEPTH):
        level = [v for item in level if isinstance(item, (list, dict))
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, (list, dict)) for item in level)


def _kind(body: bytes) -> str:
    """stream, display (display data, results, errors) or control: what budget a frame is counted in."""
    if body.startswith(STREAM_PREFIX):
        return "stream"
    head = body[:40]
    if any(b'{"type":"%s"' % t.encode() == head[:len(t) + 10] for t in CONTROL_TYPES):
        return "control"
    return "display"


class Sink(Protocol):
    """Where a cell's output goes (the notebook, or a test)."""

    def stream(self, name: str, text: str) -> None: ...
    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None: ...


class CellError(SandboxError):
    """A cell failed inside the container: the traceback is the container's, shown once."""

    def __init__(self, ename: str, evalue: str, traceback: list[str], note: str | None = None):
        super().__init__(evalue if note is None else note)
        self.ename = ename
        self.evalue = evalue
        self.lines = "".join(traceback).rstrip("\n").split("\n") if traceback else []
        if note:
            self.lines.append(note)

    def add_sentence(self, sentence: str) -> None:
        """A plain last line (a limit, a timeout): also the exception's message."""
        self.lines.append(sentence)
        self.args = (sentence,)

    def _render_traceback_(self) -> list[str]:
        return self.lines or [f"{self.ename}: {self.evalue}"]


E = TypeVar("E", bound=CellError)
_NAMED: dict[tuple[type, str], type] = {}  # (base, the container's exception name) -> its subclass
MAX_NAMED = 256  # (names come from the container: a bounded number of classes)


def named_error(base: type[E], ename: str, *args: Any) -> E:
    """``base(ename, *args)``, of a subclass named as the container's exception (ModuleNotFoundError, ...):
    IPython and ipykernel take a failed cell's ``ename`` from the type's name, and nbgrader and nbval read
    it. A name that is no identifier, or one too many, keeps ``base``'s."""
    name = ename if ename.isidentifier() and len(ename) <= 100 else base.__name__
    if name == base.__name__:
        return base(ename, *args)
    cls = _NAMED.get((base, name))
    if cls is None:
        if len(_NAMED) >= MAX_NAMED:
            return base(ename, *args)
        cls = _NAMED[(base, name)] = type(name, (base,), {"__module__": base.__module__,
                                                         "__doc__": f"{name}, raised in a container's cell."})
    return cls(ename, *args)


class CellKilled(CellError):
    """The cell's process was killed (a limit, a timeout, an ignored interrupt): one plain sentence."""

    def __init__(self, sentence: str):
        super().__init__("CellKilled", sentence, [], sentence)


@dataclass
class CellResult:
    status: str = "ok"
    result: tuple[dict[str, Any], dict[str, Any]] | None = None  # the last expression's bundle
    outputs: dict[str, Any] = field(default_factory=dict)  # --out values, still encoded
    wall: float = 0.0
    cpu: float = 0.0
    error: CellError | None = None
    interrupted: bool = False
    died: dict[str, Any] | None = None  # the agent's "died" reply, when the cell's process was killed


def has_python(lowerdirs: list[str]) -> bool:
    """Whether the image has a ``python3`` for the agent (looked up in its layers, top first)."""
    for layer in lowerdirs:
        for rel in PYTHONS:
            if os.path.lexists(os.path.join(layer, rel)):
                return True
    return False


class Session:
    """The agent (or shell) of one running container, and the queue of what it says."""

    def __init__(self, containers: Containers, name: str, limits: OutputLimits | None = None):
        self.containers = containers
        self.name = name
        self.budget = _Budget(limits or OutputLimits())
        self._bad = False
        self.cid: str | None = None
        self.python = True
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.stdin_w = -1
        self.exited: Any = None
        self.stderr_tail = b""
        self.pending: list[tuple[str, Any]] = []
        self.counter = 0
        self.oom_seen = 0  # the cgroup's OOM kills and refused forks already reported
        self.disk_full_said = False  # the cell that found its disk full said so (again once it is not)
        self.pids_seen = 0
        self._buf = bytearray()
        self._lock = threading.Lock()

    # -- start and stop ------------------------------------------------------------------------------------------

    def start(self, spec: ContainerSpec | None, python: bool) -> None:
        """Run ``spec`` (a new container), or start the existing container ``self.name`` when ``spec`` is None."""
        self.python = python
        stdin_r, self.stdin_w = os.pipe()
        started = threading.Event()

        def on_start(cid: str) -> None:
            self.cid = cid
            started.set()

        def main() -> None:
            try:
                kwargs: dict[str, Any] = {"stdin": stdin_r, "stdout": self._on_stdout, "stderr": self._on_stderr,
                                          "on_start": on_start}
                if spec is not None:
                    result = self.containers.run(spec, **kwargs)
                else:
                    result = self.containers.start_attached(self.name, **kwargs)
                self.exited = result
                self.queue.put(("exit", result))
            except BaseException as exc:  # reported to whoever waits
                self.exited = exc
                self.queue.put(("failed", exc))
            finally:
                started.set()
                os.close(stdin_r)

        self.thread = threading.Thread(target=main, name=f"sandbox-kernel {self.name}", daemon=True)
        self.thread.start()
        if python:
            self._wait_ready()
        else:
            started.wait(START_TIMEOUT)
            self._wait_running()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            kind, value = self._get(deadline)
            if kind == "msg" and value.get("type") == "ready":
                return
            if kind == "timeout":
                self.close()
                raise ContainerError(f"container {self.name}: its agent did not start within {START_TIMEOUT:.0f} s")
            if kind in ("exit", "failed"):
                raise self._gone_error(value)
            self.pending.append((kind, value))

    def _wait_running(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.exited is not None:
                raise self._gone_error(self.exited)
            with contextlib.suppress(SandboxError):
                if self.cid and self.containers.get(self.cid).running:
                    return
            time.sleep(0.005)
        raise ContainerError(f"container {self.name} did not start within {START_TIMEOUT:.0f} s")

    def _gone_error(self, value: Any) -> BaseException:
        if isinstance(value, BaseException):
            return value
        said = self.stderr_tail.decode(errors="replace").strip().splitlines()
        why = f": {said[-1]}" if said else ""
        code = value.exit_code
        if not said and isinstance(code, int) and 128 < code < 128 + 65:  # (a signal: name it)
            try:
                why = f" (its agent was killed by {signal.Signals(code - 128).name})"
            except ValueError:
                why = f" (its agent was killed by signal {code - 128})"
        return ContainerError(f"container {self.name} exited with status {code}{why}")

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.exited is None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the agent (its stdin closes, it exits, the container stops)."""
        if self.stdin_w >= 0:
            with contextlib.suppress(OSError):
                if self.python:
                    self._send({"op": "shutdown"})
            with contextlib.suppress(OSError):
                os.close(self.stdin_w)
            self.stdin_w = -1
        if self.thread is not None and self.thread.is_alive() and self.cid:
            if not self.python:
                with contextlib.suppress(SandboxError):
                    self.containers.stop(self.cid, timeout=timeout)
            self.thread.join(timeout)
            if self.thread.is_alive():
                with contextlib.suppress(SandboxError):
                    self.containers.kill(self.cid)
                self.thread.join(timeout)

    # -- the channel ---------------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        data = memoryview(HEADER.pack(len(body)) + body)
        while data:
            data = data[os.write(self.stdin_w, data):]

    def _on_stdout(self, data: bytes) -> None:
        """In the container's thread: frames out of the agent's stdout, onto the queue (within the budget)."""
        if self._bad:
            return  # the container is being stopped: nothing it says matters any more
        self._buf += data
        while len(self._buf) >= 4:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                self._refuse(f"the agent sent a message of {size} bytes (more than {MAX_FRAME})")
                return
            if len(self._buf) < 4 + size:
                return
            body = bytes(self._buf[4:4 + size])
            del self._buf[:4 + size]
            kind = _kind(body)
            if not self.budget.take(kind, size):
                if kind == "control" and self.budget.kept["control"] > MAX_CONTROL:
                    self._refuse(f"the agent sent more than {MAX_CONTROL} control messages at once")
                    return
                if kind == "control":
                    self._refuse(f"the agent sent more than {format_size(MAX_CONTROL_BYTES)} of control messages "
                                 "at once")
                    return
                continue  # past what this period keeps: dropped without being decoded
            if _too_many_values(body):
                self._refuse(f"the agent sent a message of {size} bytes with more than {MAX_VALUES} values")
                return
            try:
                message = json.loads(body)
            except (ValueError, RecursionError):
                self._refuse("the agent sent a message that is not JSON")
                return
            if _too_deep(body, message):
                self._refuse(f"the agent sent a message nested more than {MAX_DEPTH} levels deep")
                return
            if isinstance(message, dict):
                self.queue.put(("msg", message))

    def _refuse(self, why: str) -> None:
        self._bad = True
        self._buf.clear()
        self.queue.put(("bad", why))

    def _on_stderr(self, data: bytes) -> None:
        self.stderr_tail = (self.stderr_tail + data)[-4096:]
        if self.budget.take("stream", len(data)):
            self.queue.put(("agent-stderr", data.decode(errors="replace")))

    def _get(self, deadline: float | None) -> tuple[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return ("timeout", None)
            try:  # in slices: an interrupt that is only a flag (_thread.interrupt_main) is seen too
                return self.queue.get(timeout=POLL if left is None else min(left, POLL))
            except queue.Empty:
                continue

    def _note_pending(self) -> None:
        """Output that came between cells (a background thread's prints) goes out first, then the line that
        says what of it was dropped; from here on, what comes is the cell's."""
        dropped = self.budget.next_period()
        while True:
            try:
                self.pending.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if dropped:
            self.pending.append(("dropped", self.budget.notice(dropped, "the time between two cells")))

    # -- cells ---------------------------------------------------------------------------------------------------

    def execute(self, code: str, sink: Sink, *, shell: bool = False, inputs: dict[str, Any] | None = None,
                outputs: list[str] | None = None, timeout: float | None = None,
                on_interrupt: Callable[[], None] | None = None) -> CellResult:
        """Run one cell; its output goes to ``sink`` as it comes. Ctrl-C (KeyboardInterrupt) interrupts it."""
        if not self.alive:
            raise ContainerError(f"container {self.name} is not running")
        if not self.python:
            return self._execute_shell(code, sink, timeout)
        self._note_pending()
        self.counter += 1
        self._send({"op": "execute", "id": self.counter, "code": code, "shell": shell,
                    "inputs": inputs or {}, "outputs": outputs or []})
        result = CellResult()
        deadline = None if timeout is None else time.monotonic() + timeout
        kill_at: float | None = None
        kill_sent = False
        while True:
            try:  # Ctrl-C may come while we wait or while we publish what came
                kind, value = self._get(min(d for d in (deadline, kill_at) if d is not None)
                                        if deadline is not None or kill_at is not None else None)
                if kind == "timeout":
                    now = time.monotonic()
                    if kill_at is not None and now >= kill_at and kill_sent:
                        # the agent answers no kill either (a cell stopped it, SIGSTOP): its container goes
                        self.close()
                        raise ContainerError(f"container {self.name}: its agent did not answer the kill of the "
                                             f"cell within {KILL_GRACE:g} s; the container was stopped")
                    if kill_at is not None and now >= kill_at:
                        self._send({"op": "kill"})
                        kill_sent = True
                        kill_at = now + KILL_GRACE
                        if result.status != "timeout":
                            result.status = "killed"
                    elif deadline is not None and now >= deadline and kill_at is None:
                        result.status = "timeout"
                        self._send({"op": "interrupt"})
                        kill_at = now + GRACE
                        deadline = None
                    continue
                if self._handle(kind, value, result, sink):
                    return result
            except Exception:  # the sink failed (a remote client that went away): the cell stops too
                with contextlib.suppress(OSError):
                    self._send({"op": "interrupt"})
                raise
            except KeyboardInterrupt:
                result.interrupted = True
                if kill_at is None:
                    self._send({"op": "interrupt"})
                    kill_at = time.monotonic() + GRACE
                    if on_interrupt is not None:
                        on_interrupt()
                else:  # a second Ctrl-C: no more grace
                    kill_at = time.monotonic()

    def _handle(self, kind: str, value: Any, result: CellResult, sink: Sink) -> bool:
        """One thing the container said during a cell; True once the cell is over."""
        if kind == "msg":
            what = value.get("type")
            if what == "stream":
                sink.stream("stderr" if value.get("name") == "stderr" else "stdout", str(value.get("text", "")))
            elif what == "display":
                sink.display(_dict(value.get("data")), _dict(value.get("metadata")))
            elif what == "result":
                result.result = (_dict(value.get("data")), _dict(value.get("metadata")))
            elif what == "error":
                tb = value.get("traceback")
                result.error = named_error(CellError, str(value.get("ename", "Error")), str(value.get("evalue", "")),
                                           [str(line) for line in tb] if isinstance(tb, list) else [])
            elif what == "done":
                if value.get("id") != self.counter:  # an earlier cell's, left behind when its wait broke off
                    return False
                if result.status not in ("timeout", "killed"):
                    result.status = "error" if value.get("status") == "error" else "ok"
                result.outputs = _dict(value.get("outputs"))
                result.wall = _seconds(value.get("wall"))
                result.cpu = _seconds(value.get("cpu"))
                dropped = self.budget.next_period()  # the time between this cell and the next begins
                if dropped:
                    sink.stream("stderr", self.budget.notice(dropped, "a cell"))
                return True
            elif what == "died":
                result.died = value
                if result.status != "timeout":
                    result.status = "killed"
                return True
        elif kind in ("agent-stderr", "dropped"):
            sink.stream("stderr", value)
        elif kind == "bad":
            self.close()
            raise ContainerError(f"container {self.name}: {value}; the container was stopped")
        elif kind in ("exit", "failed"):
            raise self._gone_error(value)
        return False

    def _execute_shell(self, code: str, sink: Sink, timeout: float | None) -> CellResult:
        """A cell in a container without python3: ``/bin/sh -c CODE`` through ``exec``."""
        assert self.cid is not None
        result = CellResult()
        began = time.monotonic()
        timer = None
        if timeout is not None:
            caller = threading.get_ident()

            def expire() -> None:  # the exec's wait ends as at a Ctrl-C
                result.status = "timeout"
                interrupt_thread(caller)

            timer = threading.Timer(timeout, expire)
            timer.start()
        self.budget.next_period()

        def out(name: str) -> Callable[[bytes], None]:
            def publish(data: bytes) -> None:
                if self.budget.take("stream", len(data)):
                    sink.stream(name, data.decode(errors="replace"))
            return publish

        try:
            code_ = self.containers.exec(self.cid, ["/bin/sh", "-c", code], stdin=None, stdout=out("stdout"),
                                         stderr=out("stderr"))
        finally:
            if timer is not None:
                timer.cancel()
            dropped = self.budget.next_period()
            if dropped:
                sink.stream("stderr", self.budget.notice(dropped, "a cell"))
        result.wall = time.monotonic() - began
        if code_ and result.status == "ok":
            result.status = "error"
            result.error = CellError("ShellError", f"the shell exited with status {code_}",
                                     [f"the shell exited with status {code_}\n"])
        return result


def interrupt_thread(ident: int) -> None:
    """KeyboardInterrupt in thread ``ident``, as a Ctrl-C would raise it.

    The main thread gets a real SIGINT (it also breaks a blocking wait); another thread (a cell
    that a Jupyter server runs for a remote kernel) gets the exception raised in it, which its
    waits, all in short slices, see at once. Never a SIGINT to a server's main thread.
    """
    if ident == threading.main_thread().ident:
        import signal

        signal.pthread_kill(ident, signal.SIGINT)
    else:
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seconds(value: Any) -> float:
    """A time the agent reports: a finite number of seconds, else 0 (its frames are data, never trusted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        seconds = float(value)
    except OverflowError:  # (an int past a float's range)
        return 0.0
    return seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
