"""``%%container`` in a real IPython kernel (jupyter_client), checked on the iopub messages a notebook gets."""

from __future__ import annotations

import os
import queue
import sys
import time
from typing import Any

import pytest

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
                ) -> tuple[dict[str, Any], list[tuple[float, dict[str, Any]]]]:
        """Run ``code``; the execute_reply and every iopub message of it, with the time it came. ``when``:
        text -> action, each action run once, when a stream message with that text comes (an event, not a
        delay: "interrupt" interrupts the kernel). ``timeout``: a bound on the cell ending at all."""
        msg_id = self.kc.execute(code)
        began = time.monotonic()
        messages: list[tuple[float, dict[str, Any]]] = []
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
            messages.append((time.monotonic(), msg))
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
    deadline = time.monotonic() + 10
    while Containers(kernel_store).list(all=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Containers(kernel_store).list(all=True) == [], "the kernel's exit removes its containers"


def of(messages, kind: str) -> list[dict[str, Any]]:
    return [m["content"] for _, m in messages if m["msg_type"] == kind]


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
    texts = [m["content"]["text"] for _, m in messages if m["msg_type"] == "stream"]
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
