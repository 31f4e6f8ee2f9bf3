"""``%%container`` in a real IPython kernel (jupyter_client), checked on the iopub messages a notebook gets."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from leftovers import wait_for

from sandbox_kernel.runtime import Containers, Store, build

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def kernel_store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("kernel") / "store")
    build(store, "debian-python")
    return store


class Kernel:
    def __init__(self, store: Store):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        env = {**os.environ, "SANDBOX_KERNEL_ROOT": str(store.root), "PYTHONUNBUFFERED": "1"}
        self.km.kernel_spec.argv[0] = sys.executable  # this virtualenv's python, whatever the spec says
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str, *, when: dict[str, Any] | None = None, timeout: float = 120
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run ``code``; the execute_reply and every iopub message of it, in the order they came. ``when``:
        text -> action, each action run once, when a stream message with that text comes (an event, not a
        delay: "interrupt" interrupts the kernel). ``timeout``: a bound on the cell ending at all."""
        msg_id = self.kc.execute(code)
        began = time.monotonic()
        messages: list[dict[str, Any]] = []
        pending = dict(when or {})
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if time.monotonic() - began > timeout:
                    raise TimeoutError(code) from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(msg)
            if msg["msg_type"] == "stream":
                for text in [t for t in pending if t in msg["content"]["text"]]:
                    action = pending.pop(text)
                    self.km.interrupt_kernel() if action == "interrupt" else action()
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        reply = self.kc.get_shell_msg(timeout=30)
        return reply["content"], messages

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


@pytest.fixture
def kernel(kernel_store):
    k = Kernel(kernel_store)
    reply, _ = k.execute("%load_ext sandbox_kernel")
    assert reply["status"] == "ok"
    yield k
    k.close()
    wait_for(lambda: Containers(kernel_store).list(all=True) == [], what="the kernel's exit to remove its containers")


def of(messages, kind: str) -> list[dict[str, Any]]:
    return [m["content"] for m in messages if m["msg_type"] == kind]


def error_text(messages) -> str:
    """What the notebook shows of a failed cell: a traceback, or a UsageError's line (IPython prints that one
    to stderr)."""
    return "\n".join(["\n".join(e["traceback"]) for e in of(messages, "error")]
                     + [s["text"] for s in of(messages, "stream") if s["name"] == "stderr"])


def test_state_streams_display_and_result(kernel, kernel_store):
    reply, _ = kernel.execute("%%container k\nx = 20")
    assert reply["status"] == "ok"
    # the cell waits until the notebook has its first print: only then does the test let it go on
    containers = Containers(kernel_store)
    reply, messages = kernel.execute(
        "%%container k\nimport os, time, sys\nprint('early', flush=True)\ndeadline = time.monotonic() + 60\n"
        "while not os.path.exists('/tmp/go') and time.monotonic() < deadline:\n    time.sleep(0.01)\n"
        "print('late' if os.path.exists('/tmp/go') else 'NEVER RELEASED')\n"
        "class H:\n    def _repr_html_(self): return '<i>hi</i><script>x()</script>'\n"
        "display(H())\nx * 2 + 2",
        when={"early": lambda: containers.exec("k", ["touch", "/tmp/go"], stdin=None, stdout=None, stderr=None)})
    assert reply["status"] == "ok"
    texts = [m["content"]["text"] for m in messages if m["msg_type"] == "stream"]
    assert "".join(texts) == "early\nlate\n", "the first print reached the notebook while the cell still ran"
    [shown] = of(messages, "display_data")
    assert shown["data"]["text/html"] == "<i>hi</i>" and "text/plain" in shown["data"]
    [result] = of(messages, "execute_result")
    assert result["data"]["text/plain"] == "42"


def test_traceback_once(kernel):
    reply, messages = kernel.execute("%%container k\ndef f():\n    raise ValueError('bad value')\nf()")
    assert reply["status"] == "error"
    errors = of(messages, "error")
    assert len(errors) == 1
    text = "\n".join(errors[0]["traceback"])
    assert text.count("ValueError: bad value") == 1 and "in f" in text
    assert not [s for s in of(messages, "stream") if "Traceback" in s["text"]]
    # the container's exception type and message, as nbgrader and nbval read them
    assert (errors[0]["ename"], errors[0]["evalue"]) == ("ValueError", "bad value")
    assert (reply["ename"], reply["evalue"]) == ("ValueError", "bad value")
    reply, messages = kernel.execute("%%container k\nimport nothere")
    [error] = of(messages, "error")
    assert (reply["ename"], error["ename"], error["evalue"]) == ("ModuleNotFoundError", "ModuleNotFoundError",
                                                                 "No module named 'nothere'")


def test_interrupt_sleep_and_a_sigint_ignoring_loop(kernel):
    kernel.execute("%%container k\ny = 5")
    reply, messages = kernel.execute("%%container k\nimport time\nprint('armed', flush=True)\ntime.sleep(60)",
                                     when={"armed": "interrupt"})
    assert reply["status"] == "error", "interrupted (else it ends after 60 s without an error)"
    assert of(messages, "error")[0]["traceback"][-1] == "KeyboardInterrupt"
    reply, messages = kernel.execute("%%container k\ny")
    assert of(messages, "execute_result")[0]["data"]["text/plain"] == "5"
    reply, messages = kernel.execute(
        "%%container k\nimport signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('armed', flush=True)\nwhile True: time.sleep(0.05)",
        when={"armed": "interrupt"})
    assert reply["status"] == "error"
    assert "did not stop within 3 s of the interrupt" in of(messages, "error")[0]["traceback"][-1]
    reply, messages = kernel.execute("%%container k\n'back'")
    assert of(messages, "execute_result")[0]["data"]["text/plain"] == "'back'"


def test_oom_in_a_kernel_is_a_sentence_not_a_dead_kernel(kernel):
    reply, messages = kernel.execute("%%container m --memory 48m\n"
                                     "hog = []\nwhile True: hog.append(bytearray(1 << 20))")
    assert reply["status"] == "error"
    assert of(messages, "error")[0]["traceback"] == [
        "The cell ran out of memory: the container's limit is 48 MiB and the kernel's OOM killer ended it. "
        "The container's Python process was restarted: variables are lost, files are kept."]
    reply, _ = kernel.execute("1 + 1")
    assert reply["status"] == "ok"


EVIL_ENCODER = '''
import base64, pickle, sys
class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch {marker}",))
agent = sys.modules["sk_agent"]
agent.encode_value = lambda name, value: {{"kind": "pickle", "b64": base64.b64encode(pickle.dumps(Evil())).decode()}}
c = 1
'''


def test_remote_cells_in_a_real_kernel(kernel_store, tmp_path):
    """A notebook's kernel against a Jupyter server: cells run there with their state, Ctrl-C from the notebook
    interrupts the cell there, and a value for --out that the container crafted (a pickle that would run a
    command here) is refused by the kernel, which runs nothing of it."""
    from jupyter_infra import jupyter_server

    marker = tmp_path / "pwned"
    with jupyter_server(tmp_path / "server", kernel_store.root) as server:
        k = Kernel(Store(tmp_path / "no-local-store"))
        try:
            reply, _ = k.execute(f"%load_ext sandbox_kernel\n%container --remote {server.url} --token {server.token}")
            assert reply["status"] == "ok", reply
            reply, messages = k.execute("%%container far\nimport socket\nx = 20\nprint('there')\nx + 1")
            assert of(messages, "stream")[0]["text"] == "there\n"
            assert of(messages, "execute_result")[0]["data"]["text/plain"] == "21"
            assert Containers(kernel_store).get("far").running, "the container is the server's"
            reply, messages = k.execute("%%container far\nimport time\nprint('armed', flush=True)\ntime.sleep(60)"
                                        "\nprint('not reached')", when={"armed": "interrupt"})
            assert reply["status"] == "error", "interrupted (else it ends after 60 s without an error)"
            assert of(messages, "error")[0]["traceback"][-1].endswith("KeyboardInterrupt")
            assert not [s for s in of(messages, "stream") if "not reached" in s["text"]]
            reply, messages = k.execute("%%container far\nx")
            assert of(messages, "execute_result")[0]["data"]["text/plain"] == "20", "the state there is kept"

            reply, _ = k.execute("%%container far\n" + EVIL_ENCODER.format(marker=marker))
            assert reply["status"] == "ok"
            reply, messages = k.execute("%%container far --out c\nc")
            assert reply["status"] == "error" and "kind 'pickle'" in error_text(messages), messages
            reply, messages = k.execute("'c' in dir()")
            assert of(messages, "execute_result")[0]["data"]["text/plain"] == "False"
            assert not marker.exists(), "nothing of the pickle ran here"
        finally:
            k.close()
            for info in Containers(kernel_store).list(all=True):  # (the server's: they outlive the kernel)
                Containers(kernel_store).remove(info.id, force=True)


@contextlib.contextmanager
def hostile_server(outputs: dict[str, Any]) -> Iterator[str]:
    """A server that answers like sandbox-kernel's (host, cells) and ends every cell with ``outputs``: what a
    subverted or impersonated server could send a notebook for --out. Its URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the host, asked when the notebook connects
            body = json.dumps({"memory": 1 << 30, "cpus": 1, "pids": 4096}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # a cell: it "ran", and here are the values
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            done = {"status": "ok", "result": None, "outputs": outputs}
            self.wfile.write(f"event: done\ndata: {json.dumps(done)}\n\n".encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_crafted_out_value_from_a_server_runs_nothing_in_the_kernel(tmp_path):
    """A pickle (as a kind, and inside a .npy of objects) for --out, and values for names --out did not ask for
    (here `print`): the kernel refuses each with one line, sets nothing and runs nothing of them."""
    import base64
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = base64.b64encode(pickle.dumps(Evil())).decode()
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + pickle.dumps([Evil()])
    crafted = [
        ({"c": {"kind": "pickle", "b64": payload}}, "kind 'pickle'"),
        ({"c": {"kind": "npy", "b64": base64.b64encode(npy).decode()}}, "array of objects"),
        ({"c": {"kind": "json", "value": 1}, "print": {"kind": "json", "value": 2}}, "did not ask for"),
    ]
    k = Kernel(Store(tmp_path / "no-local-store"))
    try:
        assert k.execute("%load_ext sandbox_kernel")[0]["status"] == "ok"
        for outputs, error in crafted:
            with hostile_server(outputs) as url:
                assert k.execute(f"%container --remote {url} --token t")[0]["status"] == "ok"
                reply, messages = k.execute("%%container far --out c\nc = 1")
            assert reply["status"] == "error" and error in error_text(messages), messages
            reply, messages = k.execute("('c' in dir(), print is __builtins__.print)")
            assert of(messages, "execute_result")[0]["data"]["text/plain"] == "(False, True)", "nothing was set"
        assert not marker.exists(), "nothing of the pickle ran in the kernel"
    finally:
        k.close()
