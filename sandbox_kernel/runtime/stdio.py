"""A foreground container's stdio: always pipes the runtime owns, copied here.

A container never gets one of the caller's file descriptors: a host file
passed as stdin or stdout could otherwise be chmod'ed, chown'ed or truncated
through ``/proc/self/fd/N`` by the container's root (conmon and containerd's
shim relay for the same reason). So fds 0-2 of the container are pipes, and
:class:`Relay` copies the caller's stdin into one and the two output pipes to
the caller's fds or callbacks, as the data comes.

With ``tty`` (docker's ``-t``) the container gets a pseudo-terminal of its own
instead: fds 0-2 are its slave end (the command makes it its controlling
terminal, so the line discipline turns Ctrl-C into SIGINT and Ctrl-D into an
end of file there), and the master end stays here. When the caller's stdin is
a terminal, it is put in raw mode while the container runs (every key goes to
the container, as with docker), its window size is copied at the start and at
every SIGWINCH, and its mode is restored at the end.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import termios
import threading
import tty as _tty
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

    def __init__(self, stdin: int | None, stdout: Output, stderr: Output, tty: bool = False):
        if stdin is not None and not isinstance(stdin, int):
            raise TypeError("stdin must be an fd or None")
        self.source = stdin  # the caller's stdin: read only when poll says so (it is never made non-blocking)
        self.outputs = (stdout, stderr)
        self.tty = tty
        self._terminal: tuple[int, list[object]] | None = None  # the caller's terminal and its mode, to restore
        self._winch: tuple[object] | None = None  # the SIGWINCH handler before ours, while ours is there
        self._master: int | None = None  # the terminal's master end, while it is open (tty)
        self.pending = b""
        self.stdin_w: int | None = None
        self.readers: dict[int, Callable[[bytes], None]] = {}
        self.child_fds: tuple[int, int, int] = (-1, -1, -1)
        self._child_ends: list[int] = []

    def __enter__(self) -> Relay:
        if self.tty:
            return self._enter_tty()
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

    def _enter_tty(self) -> Relay:
        master, slave = os.openpty()  # (both close-on-exec: the child gets the slave through the monitor)
        try:
            self._child_ends = [slave]
            self.child_fds = (slave, slave, slave)
            self.readers[master] = _writer(self.outputs[0])  # one stream, as docker -t: stderr goes there too
            self._master = master
            if self.source is not None:
                self.stdin_w = os.dup(master)  # (closed at the caller's EOF; the master stays open)
                fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
            caller = self.source if self.source is not None and os.isatty(self.source) else None
            if caller is not None:
                self._resize(caller)
                if threading.current_thread() is threading.main_thread():
                    self._winch = (signal.signal(signal.SIGWINCH, lambda *_: self._resize(caller)),)
                self._terminal = (caller, termios.tcgetattr(caller))
                _tty.setraw(caller, termios.TCSANOW)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _resize(self, caller: int) -> None:
        """The caller's window size onto the container's terminal (which sends its foreground SIGWINCH); once
        the master is closed, nothing (its fd number may be another file's by then)."""
        if self._master is None:
            return
        try:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, fcntl.ioctl(caller, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            pass

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
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # a terminal's master once no process holds the slave any more: its end
            if exc.errno != errno.EIO:
                raise
            data = b""
        if data:
            self.readers[fd](data)
        else:
            if fd == self._master:
                self._master = None
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
        if self._terminal is not None:
            termios.tcsetattr(self._terminal[0], termios.TCSADRAIN, self._terminal[1])
            self._terminal = None
        if self._winch is not None:
            before = self._winch[0]
            signal.signal(signal.SIGWINCH, before if before is not None else signal.SIG_DFL)  # type: ignore[arg-type]
            self._winch = None
        self.close_child_ends()
        self._close_stdin()
        self._master = None
        for fd in list(self.readers):
            os.close(fd)
        self.readers.clear()
