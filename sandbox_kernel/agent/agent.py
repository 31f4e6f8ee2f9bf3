# ruff: noqa: UP031  (%-formatting on purpose: this file runs under the image's python3, maybe old)
"""The in-container agent of ``%%container``, and its protocol (below). Standard library only.

It runs as the container's main process with the image's own ``python3``, mounted
read-only at ``/.sandbox-kernel``. Two processes:

* the *supervisor* (this process) owns the channel to the notebook: length-prefixed
  JSON frames, requests on fd 0, replies on fd 1. It forks
* the *worker*, which runs the cells in one persistent namespace. The worker's
  fds 1 and 2 are pipes that the supervisor reads and forwards as ``stream``
  frames as the bytes come (so a ``subprocess`` in a cell streams too); its other
  replies (display, result, error, done) come over a socket pair. Before it
  forwards a worker frame the supervisor drains those pipes, so output keeps its
  order around a ``display()``.

The worker leads its own process group: an ``interrupt`` sends SIGINT to the whole
group (the cell's children too), and the cell's leftovers are killed when it
ends. ``kill`` (a cell that ignored the interrupt) kills every process the agent
can signal, starts a new worker, and says so: the variables are gone, files stay.
A worker that dies (the OOM killer) is reported and replaced the same way.

Requests: execute {id, code, shell, inputs, outputs, stats}, interrupt, kill, shutdown.
Replies: ready, stream, display, result, error, done, died.
"""

import ast
import base64
import builtins
import errno
import io
import json
import linecache
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import types

HEADER = struct.Struct(">I")
AGENT_DIR = os.path.dirname(os.path.abspath(__file__))
MAX_FRAME = 256 << 20
WORKER = None  # the worker's Worker, in the worker
SEND_LOCK = threading.RLock()  # the worker's channel: frames from the cell and from the flusher thread
SENDING = 0  # frames being written by the worker's main thread
FLUSH_EVERY = 0.05  # a partial line (print(..., end="")) is sent at most this late
CHUNK = 65536
TEXT_MIMES = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
)
BINARY_MIMES = (("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg"))


# -- framing ----------------------------------------------------------------------------------------------------


def write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue


def send(fd, message):
    """One frame. A Ctrl-C that comes while the worker's main thread writes one waits until it is whole."""
    global SENDING
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    main = threading.current_thread() is threading.main_thread()
    if main:
        SENDING += 1
    try:
        write_all(fd, HEADER.pack(len(body)) + body)
    finally:
        if main:
            SENDING -= 1
    if main and not SENDING and WORKER is not None and WORKER.deferred:
        WORKER.deferred = False
        raise KeyboardInterrupt


class Frames:
    """Frames out of a byte stream read in pieces."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (size,) = HEADER.unpack_from(self.buf)
            if size > MAX_FRAME:
                raise ValueError("frame too large")
            if len(self.buf) < 4 + size:
                break
            out.append(json.loads(bytes(self.buf[4:4 + size])))
            del self.buf[:4 + size]
        return out


# -- values in and out: JSON, bytes, .npy; never pickle ---------------------------------------------------------


def decode_value(item):
    kind = item.get("kind")
    if kind == "json":
        return item["value"]
    raw = base64.b64decode(item["b64"])
    if kind == "bytes":
        return raw
    if kind == "npy":
        try:
            import numpy
        except ImportError:
            raise RuntimeError("numpy is not installed in this container") from None
        return numpy.load(io.BytesIO(raw), allow_pickle=False)
    raise ValueError("unknown value kind %r" % (kind,))


class NotData(TypeError):
    """A value that cannot cross the boundary: ``kind`` is "objects" (a numpy array of objects) or its type."""

    def __init__(self, kind):
        TypeError.__init__(self, kind)
        self.kind = kind


def wire_value(value):
    """``value`` as it crosses the container's boundary (either way): JSON, bytes or .npy; else NotData.
    (The kernel's --in uses this too, so both sides agree on what is data.)"""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"kind": "bytes", "b64": base64.b64encode(bytes(value)).decode()}
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        buf = io.BytesIO()
        try:
            numpy.save(buf, value, allow_pickle=False)
        except ValueError:
            raise NotData("objects") from None
        return {"kind": "npy", "b64": base64.b64encode(buf.getvalue()).decode()}
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise NotData(type(value).__name__) from None
    return {"kind": "json", "value": value}


def encode_value(name, value):
    try:
        return wire_value(value)
    except NotData as exc:
        if exc.kind == "objects":
            raise TypeError("%s is a numpy array of objects: only plain dtypes can leave the container"
                            % name) from None
        raise TypeError("%s is a %s: only JSON values, bytes and numpy arrays can leave the container"
                        % (name, exc.kind)) from None


# -- the worker -------------------------------------------------------------------------------------------------


class Out(io.TextIOBase):
    """sys.stdout/sys.stderr: every write is a stream frame at once (the cell streams, partial lines too).

    Frames, not the fd: they keep their order with display frames. What other processes
    (or C code) write to fds 1 and 2 comes through the pipes the supervisor reads.
    """

    def __init__(self, fd, name, channel):
        self.fd = fd
        self._name = name
        self.channel = channel
        self.stream = "stderr" if fd == 2 else "stdout"
        self.buffer = _Bytes(fd)
        self.pending = []  # text of the line being written (print writes its pieces one by one)

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    def writable(self):
        return True

    def fileno(self):
        return self.fd

    def isatty(self):
        return False

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        with SEND_LOCK:
            self.pending.append(text)
            if "\n" in text or sum(map(len, self.pending)) >= CHUNK:
                self._flush()
        return len(text)

    def flush(self):
        with SEND_LOCK:
            self._flush()

    def _flush(self):
        """Send what is pending (the caller holds SEND_LOCK): a whole line is one frame, not its pieces."""
        if not self.pending:
            return
        text, self.pending = "".join(self.pending), []
        for start in range(0, len(text), 1 << 20):  # bounded frames, however big the print
            send(self.channel.fileno(), {"type": "stream", "name": self.stream,
                                         "text": text[start:start + (1 << 20)]})


class _Bytes:
    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        write_all(self.fd, bytes(data))
        return len(data)

    def flush(self):
        pass


def mime_bundle(obj):
    """What Jupyter shows for ``obj``: text/plain plus what its ``_repr_*_`` methods give."""
    data, metadata = {}, {}
    if not isinstance(obj, type):
        method = getattr(obj, "_repr_mimebundle_", None)
        if callable(method):
            try:
                got = method()
                if isinstance(got, tuple):
                    got, metadata = got[0], dict(got[1] or {})
                data.update(got or {})
            except Exception:
                pass
        for attr, mime in TEXT_MIMES + BINARY_MIMES:
            method = getattr(obj, attr, None)
            if mime in data or not callable(method):
                continue
            try:
                got = method()
            except Exception:
                continue
            if isinstance(got, tuple):
                got, metadata[mime] = got[0], got[1]
            if got is None:
                continue
            if isinstance(got, (bytes, bytearray)):
                got = base64.b64encode(bytes(got)).decode()
            data[mime] = got
    try:
        data.setdefault("text/plain", repr(obj))
    except Exception as exc:
        data.setdefault("text/plain", "<repr failed: %s>" % exc)
    clean = {}
    for mime, value in data.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        clean[mime] = value
    return clean, metadata


def cpu_seconds():
    """CPU time of this process and its waited-for children, in microseconds' resolution."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Worker:
    def __init__(self, channel, supervisor_pid):
        self.channel = channel
        self.supervisor_pid = supervisor_pid
        self.pid = os.getpid()
        self.count = 0
        self.running = False
        self.deferred = False
        self._magics = None  # (sk_magics.py: the first cell in IPython's syntax loads it)
        # The cells' namespace is a fresh __main__ (pickle, multiprocessing and `import __main__` find it);
        # this module stays importable as sk_agent (the matplotlib backend uses it).
        sys.modules["sk_agent"] = sys.modules[__name__]
        main_module = types.ModuleType("__main__")
        sys.modules["__main__"] = main_module
        self.ns = main_module.__dict__
        self.ns.update({"__builtins__": builtins, "display": self.display})
        builtins.display = self.display
        global WORKER
        WORKER = self

    def run(self):
        signal.signal(signal.SIGINT, self.on_sigint)
        threading.Thread(target=self.flusher, name="sk-flush", daemon=True).start()
        frames = Frames()
        while True:
            data = self.channel.recv(CHUNK)
            if not data:
                os._exit(0)
            for message in frames.feed(data):
                if message.get("op") == "execute":
                    self.execute(message)

    def on_sigint(self, signum, frame):
        if self.running:
            if SENDING:
                self.deferred = True  # raised once the frame is out (send)
            else:
                raise KeyboardInterrupt

    def send(self, message):
        with SEND_LOCK:
            for out in (sys.stdout, sys.stderr):  # what was printed before comes before
                if isinstance(out, Out):
                    out._flush()
            send(self.channel.fileno(), message)

    def flusher(self):
        """Partial lines reach the notebook while the cell runs, not only when a newline comes."""
        while True:
            time.sleep(FLUSH_EVERY)
            with SEND_LOCK:
                for out in (sys.stdout, sys.stderr):
                    if isinstance(out, Out) and out.pending:
                        out._flush()

    def display(self, *objs, **kwargs):
        for obj in objs:
            data, metadata = mime_bundle(obj)
            self.send({"type": "display", "data": data, "metadata": metadata})

    def execute(self, message):
        self.count += 1
        begin, usage = time.monotonic(), cpu_seconds()
        status, outputs = "ok", {}
        try:
            for name, item in (message.get("inputs") or {}).items():
                self.ns[name] = decode_value(item)
            if message.get("shell"):
                self.run_shell(message["code"])
            else:
                self.run_python(message["code"])
        except BaseException as exc:  # the cell's error, reported as a traceback from in here
            status = "error"
            if os.getpid() != self.pid:
                self.forked_child_leaves(exc)
            self.report(exc)
        if os.getpid() != self.pid:
            self.forked_child_leaves(None)
        self.deferred = False  # (a Ctrl-C after the cell's end is not for the next cell)
        self.flush_figures()
        if status == "ok":
            try:
                for name in message.get("outputs") or ():
                    if name not in self.ns:
                        raise NameError("name %r is not defined in the container" % name)
                    outputs[name] = encode_value(name, self.ns[name])
            except Exception as exc:
                status, outputs = "error", {}
                self.send({"type": "error", "ename": type(exc).__name__, "evalue": str(exc),
                           "traceback": ["%s: %s" % (type(exc).__name__, exc)]})
        cpu = cpu_seconds() - usage
        self.send({"type": "done", "id": message.get("id"), "status": status, "outputs": outputs,
                   "wall": time.monotonic() - begin, "cpu": cpu})

    def forked_child_leaves(self, exc):
        """A process the cell forked (os.fork) is back from the cell: it is not the worker. It must not end the
        cell a second time, nor read the next cells' requests from the channel (a fork bomb left dozens of
        copies doing both): it exits as a forked Python would, its traceback (if any) on its stderr."""
        try:
            for out in (sys.stdout, sys.stderr):
                if isinstance(out, Out):
                    out.flush()
            if exc is not None and not isinstance(exc, SystemExit):
                write_all(2, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).encode())
        finally:
            os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1 if exc else 0)

    def run_python(self, code):
        filename = "<cell-%d>" % self.count
        lines = code.splitlines(True)
        linecache.cache[filename] = (len(code), None, lines, filename)
        try:
            tree = ast.parse(code, filename, "exec")
        except SyntaxError:  # IPython's syntax (!ls, %timeit): sk_magics makes Python of it
            code = self.magics().transform(code)
            tree = ast.parse(code, filename, "exec")
        last = None
        quiet = code.rstrip().endswith(";")  # as in IPython: a trailing ; hides the value
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not quiet:
            last = ast.Expression(tree.body.pop().value)
        body = compile(tree, filename, "exec")
        expr = compile(last, filename, "eval") if last is not None else None
        self.running = True
        try:
            exec(body, self.ns)
            value = eval(expr, self.ns) if expr is not None else None
        finally:
            self.running = False
        if value is not None:
            self.ns["_"] = value
            data, metadata = mime_bundle(value)
            self.send({"type": "result", "data": data, "metadata": metadata, "count": self.count})

    def magics(self):
        if self._magics is None:
            import sk_magics

            self._magics = sk_magics.Magics(self)
        return self._magics

    def run_shell(self, code):
        import subprocess

        self.running = True
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", code], stdin=subprocess.DEVNULL)
            try:
                status = proc.wait()
            except KeyboardInterrupt:
                proc.wait()
                raise
        finally:
            self.running = False
        if status:
            raise ShellError("the shell exited with status %d" % status if status > 0
                             else "the shell was killed by signal %d" % -status)

    def report(self, exc):
        if isinstance(exc, ShellError):
            lines = ["%s\n" % exc]
        elif isinstance(exc, SyntaxError):
            lines = traceback.format_exception_only(type(exc), exc)
        else:
            tb = exc.__traceback__
            while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == AGENT_DIR:
                tb = tb.tb_next  # the agent's own frames are not the user's business
            lines = traceback.format_exception(type(exc), exc, tb)
        self.send({"type": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": lines})

    def flush_figures(self):
        """Every open matplotlib figure becomes a PNG display, then is closed (as the inline backend does)."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            numbers = plt.get_fignums()
        except Exception:
            return
        for number in numbers:
            try:
                buf = io.BytesIO()
                plt.figure(number).savefig(buf, format="png", bbox_inches="tight")
                self.send({"type": "display", "data": {
                    "image/png": base64.b64encode(buf.getvalue()).decode(),
                    "text/plain": "<Figure %d>" % number}, "metadata": {}})
            except Exception as exc:
                self.send({"type": "stream", "name": "stderr", "text": "figure %d: %s\n" % (number, exc)})
        plt.close("all")


class ShellError(Exception):
    pass


def worker_main(channel, out_w, err_w, supervisor_pid):
    os.setpgid(0, 0)
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")  # the OOM killer takes the cell, not the supervisor
    except OSError:
        pass
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (null, out_w, err_w):
        if fd > 2:
            os.close(fd)
    sys.stdout, sys.stderr = Out(1, "<stdout>", channel), Out(2, "<stderr>", channel)
    sys.stdin = open(os.devnull)
    sys.path[0] = ""  # the cwd, as in an interactive python; not the agent's directory
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # the matplotlib backend module
    os.environ.setdefault("MPLBACKEND", "module://sk_matplotlib")
    try:
        Worker(channel, supervisor_pid).run()
    finally:
        os._exit(1)


# -- the supervisor ---------------------------------------------------------------------------------------------


class Supervisor:
    def __init__(self, proto_in, proto_out):
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.worker = 0
        self.channel = None
        self.pipes = {}
        self.decoders = {}
        self.busy = False
        self.interrupted = False

    def send(self, message):
        send(self.proto_out, message)

    def start_worker(self):
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                for fd in (out_r, err_r, self.proto_in, self.proto_out):
                    os.close(fd)
                worker_main(theirs, out_w, err_w, os.getppid())
            finally:
                os._exit(1)
        theirs.close()
        os.close(out_w)
        os.close(err_w)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.worker, self.channel = pid, ours
        self.pipes = {out_r: "stdout", err_r: "stderr"}
        import codecs

        self.decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in self.pipes}
        self.busy = self.interrupted = False

    def drain(self, fd, final=False):
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return True
            text = self.decoders[fd].decode(data, final=not data)
            if text:
                self.send({"type": "stream", "name": self.pipes[fd], "text": text})
            if not data:
                return False

    def drain_all(self):
        for fd in list(self.pipes):
            if not self.drain(fd):
                os.close(fd)
                del self.pipes[fd]

    def kill_group_leftovers(self):
        """After an interrupted cell: whatever else is in the worker's process group goes."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in (self.worker, os.getpid()):
                continue
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.worker:
                    os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass

    def replace_worker(self, reason):
        """Kill every process we may signal (PID 1 and this one are spared), reap the worker, start another."""
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        status = self.reap()
        self.drain_all()
        for fd in self.pipes:
            os.close(fd)
        self.channel.close()
        code = sig = None
        if status is not None:
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
            elif os.WIFEXITED(status):
                code = os.WEXITSTATUS(status)
        self.start_worker()
        self.send({"type": "died", "reason": reason, "signal": sig, "code": code})

    def from_worker(self, replies, data):
        """The worker's messages in ``data``, each with the frame body to forward: JSON objects, else ValueError
        (a cell wrote into the worker's end of the channel; the supervisor must not die of it)."""
        out = []
        for message in replies.feed(data):
            if not isinstance(message, dict):
                raise ValueError("not a message")
            out.append((message, json.dumps(message, separators=(",", ":"), allow_nan=False).encode()))
        return out

    def reap(self):
        while True:
            try:
                _pid, status = os.waitpid(self.worker, 0)
                return status
            except InterruptedError:
                continue
            except ChildProcessError:
                return None

    def run(self):
        self.start_worker()
        self.send({"type": "ready", "pid": os.getpid(), "python": sys.version.split()[0]})
        requests = Frames()
        replies = Frames()
        while True:
            watched = [self.proto_in, self.channel.fileno(), *self.pipes]
            try:
                readable, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            for fd in readable:
                if fd in self.pipes:
                    if not self.drain(fd):
                        os.close(fd)
                        del self.pipes[fd]
                elif fd == self.channel.fileno():
                    data = self.channel.recv(CHUNK)
                    if not data:  # the worker died: the OOM killer, or os._exit in a cell
                        replies = Frames()
                        self.replace_worker("died")
                        continue
                    self.drain_all()
                    try:
                        messages = self.from_worker(replies, data)
                    except (ValueError, RecursionError):  # the cell wrote into its end of the channel
                        replies = Frames()
                        self.replace_worker("channel")
                        continue
                    for message, body in messages:
                        if message.get("type") == "done":
                            self.busy = False
                            if self.interrupted:
                                self.kill_group_leftovers()
                                self.interrupted = False
                        write_all(self.proto_out, HEADER.pack(len(body)) + body)  # (encoded once, checked above)
                else:
                    data = os.read(self.proto_in, CHUNK)
                    if not data:
                        return
                    for message in requests.feed(data):
                        op = message.get("op")
                        if op == "execute":
                            self.busy = True
                            send(self.channel.fileno(), message)
                        elif op == "interrupt" and self.busy:
                            self.interrupted = True
                            try:
                                os.killpg(self.worker, signal.SIGINT)
                            except OSError:
                                pass
                        elif op == "kill":
                            replies = Frames()
                            self.replace_worker("killed")
                        elif op == "shutdown":
                            return


def main():
    # The channel moves off fds 0 and 1; the worker's are its own pipes.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are requests, for the worker's group
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        Supervisor(proto_in, proto_out).run()
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise


if __name__ == "__main__":
    main()
