"""A foreground container's stdio: always pipes the runtime owns, copied here.

A container never gets one of the caller's file descriptors: a host file
passed as stdin or stdout could otherwise be chmod'ed, chown'ed or truncated
through ``/proc/self/fd/N`` by the container's root (conmon and containerd's
shim relay for the same reason). So fds 0-2 of the container are pipes, and
:class:`Relay` copies the caller's stdin into one and the two output pipes to
the caller's fds or callbacks, as the data comes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
from collections.abc import Callable

Output = int | Callable[[bytes], None] | None  # an fd, a callback for each chunk, or None to discard
CHUNK = 65536
SLICE_MS = 200
_IN = select.POLLIN | select.POLLHUP | select.POLLERR


def _writer(target: Output) -> Callable[[bytes], None]:
    if target is None:
        return lambda data: None
    if callable(target):
        return target
    fd = target
    broken = False

    def write(data: bytes) -> None:
        nonlocal broken
        view = memoryview(data)
        while view and not broken:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [])
            except OSError:  # the reader went away (`| head`): drop the rest, keep the container running
                broken = True

    return write


class Relay:
    """Pipes for the container's fds 0-2, and the copying between them and the caller."""

    def __init__(self, stdin: int | None, stdout: Output, stderr: Output):
        if stdin is not None and not isinstance(stdin, int):
            raise TypeError("stdin must be an fd or None")
        self.source = stdin  # the caller's stdin: read only when poll says so (it is never made non-blocking)
        self.outputs = (stdout, stderr)
        self.pending = b""
        self.stdin_w: int | None = None
        self.readers: dict[int, Callable[[bytes], None]] = {}
        self.child_fds: tuple[int, int, int] = (-1, -1, -1)
        self._child_ends: list[int] = []

    def __enter__(self) -> Relay:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        if self.source is None:
            os.close(in_w)  # stdin at EOF, like /dev/null
        else:
            fcntl.fcntl(in_w, fcntl.F_SETFL, fcntl.fcntl(in_w, fcntl.F_GETFL) | os.O_NONBLOCK)
            self.stdin_w = in_w
        ends = [in_r]
        for target in self.outputs:
            r, w = os.pipe2(os.O_CLOEXEC)
            self.readers[r] = _writer(target)
            ends.append(w)
        self._child_ends = ends
        self.child_fds = (ends[0], ends[1], ends[2])
        return self

    def close_child_ends(self) -> None:
        """Once the child has its copies: only the container holds the other ends now."""
        for fd in self._child_ends:
            os.close(fd)
        self._child_ends = []

    def _close_stdin(self) -> None:
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None
        self.source = None
        self.pending = b""

    def pump_until_ready(self, fd: int, check: Callable[[], None] | None = None) -> None:
        """Copy in both directions until ``fd`` is readable; ``check`` (which may raise) after every slice."""
        while True:
            if check is not None:
                check()
            poller = select.poll()
            poller.register(fd, _IN)
            for r in self.readers:
                poller.register(r, _IN)
            if self.stdin_w is not None:
                if self.pending:
                    poller.register(self.stdin_w, select.POLLOUT | select.POLLERR)
                elif self.source is not None:
                    poller.register(self.source, _IN)
            # In slices: a Python signal handler (Ctrl-C) runs only between calls, and the signal
            # may have been delivered to another thread (an IPython kernel has several).
            ready = dict(poller.poll(SLICE_MS))
            for r in [r for r in ready if r in self.readers]:
                self._copy_out(r)
            if self.source is not None and self.source in ready:
                self._read_stdin()
            if self.stdin_w is not None and self.stdin_w in ready:
                self._write_stdin()
            if fd in ready:
                return

    def _copy_out(self, fd: int) -> None:
        data = os.read(fd, CHUNK)
        if data:
            self.readers[fd](data)
        else:
            os.close(fd)
            del self.readers[fd]

    def _read_stdin(self) -> None:
        try:
            data = os.read(self.source, CHUNK) if self.source is not None else b""
        except OSError:
            data = b""
        if data:
            self.pending = data
        elif self.stdin_w is not None:  # EOF: the container sees it once the pipe is closed
            self._close_stdin()

    def _write_stdin(self) -> None:
        assert self.stdin_w is not None
        try:
            written = os.write(self.stdin_w, self.pending)
            self.pending = self.pending[written:]
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):  # the container closed its stdin
                self._close_stdin()
            else:
                raise

    def drain(self, timeout: float = 5.0) -> None:
        """Copy what is left in the output pipes (every writer is gone once the container has exited)."""
        self._close_stdin()
        while self.readers:
            poller = select.poll()
            for r in self.readers:
                poller.register(r, _IN)
            ready = poller.poll(int(timeout * 1000))
            if not ready:
                break
            for r, _ in ready:
                self._copy_out(r)

    def __exit__(self, *exc: object) -> None:
        self.close_child_ends()
        self._close_stdin()
        for fd in list(self.readers):
            os.close(fd)
        self.readers.clear()
