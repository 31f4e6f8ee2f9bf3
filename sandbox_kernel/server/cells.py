"""``%%container`` cells run by the server for a remote kernel (``%container --remote URL``).

The server keeps one headless :class:`~sandbox_kernel.notebook.magics.ContainerMagics` (no
IPython shell: a namespace of its own for ``--in``/``--out`` values) and runs each
cell through it, exactly as a local kernel would: same arguments, same agent,
same limits and sentences. What the cell prints and displays is sent as it comes;
its last value, its ``--out`` values (encoded as data, never pickled) or its error
(the container's traceback, as lines) come at the end. The remote kernel cleans
rich output as a local one does. One cell runs at a time on a server; its
containers belong to the server (removed when it exits, unless ``--keep``).

An interrupt raises KeyboardInterrupt in the thread that runs the cell, as the
kernel's SIGINT does in a local kernel's main thread: the cell's wait sees it
within a poll slice and interrupts the container's cell (then kills it after the
grace period).
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any

from ..runtime import Store, UsageError


class _Sink:
    def __init__(self, emit: Callable[[str, Any], None]):
        self.emit = emit

    def stream(self, name: str, text: str) -> None:
        self.emit("stream", {"name": name, "text": text})

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.emit("display", {"data": data, "metadata": metadata})


class CellRunner:
    def __init__(self, store: Store, policy: Any = None):
        """``policy``: the server's (ServerPolicy): a remote cell may ask for no more than ``POST /containers``."""
        from ..notebook.magics import ContainerMagics

        self.namespace: dict[str, Any] = {}
        self.magics = ContainerMagics(types.SimpleNamespace(user_ns=self.namespace), store=store)
        if policy is not None:
            self.magics.policy = policy
            self.magics.default_limits = policy.defaults()
        self.magics.default_name = "remote"
        self.magics.remote = None  # (this server's runtime, whatever $SANDBOX_KERNEL_HOST says)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # the thread running a cell now

    def run(self, line: str, cell: str, inputs: dict[str, Any], emit: Callable[[str, Any], None]) -> dict[str, Any]:
        """One cell; what it prints and displays goes to ``emit`` as it comes; the end as a dict.

        The cell runs in a thread of its own, made for it and gone after it: an interrupt (an
        exception raised in that thread) can never land in anything else the server runs.
        """
        outcome: dict[str, Any] = {}

        def body() -> None:
            try:
                outcome["end"] = self._run(line, cell, inputs, emit)
            except BaseException as exc:
                outcome["raised"] = exc

        with self._lock:
            thread = threading.Thread(target=body, name="sandbox-kernel-cell", daemon=True)
            self._thread = thread
            thread.start()
            thread.join()
            self._thread = None
        raised = outcome.get("raised")
        if "end" in outcome:
            return dict(outcome["end"])
        if raised is None or isinstance(raised, KeyboardInterrupt):  # (an interrupt as the cell ended)
            return {"status": "error", "error": {"ename": "KeyboardInterrupt", "evalue": "",
                                                 "lines": ["KeyboardInterrupt"]}}
        raise raised

    def _run(self, line: str, cell: str, inputs: dict[str, Any], emit: Callable[[str, Any], None]
             ) -> dict[str, Any]:
        from IPython.core.error import UsageError as MagicUsageError
        from IPython.core.magic_arguments import parse_argstring

        from ..notebook import values
        from ..notebook.session import CellError

        try:
            self.namespace.clear()
            for name, item in inputs.items():
                self.namespace[name] = values.decode(name, item)
            self.magics.sink_factory = lambda _trusted: _Sink(emit)
            try:
                args = parse_argstring(self.magics.container_cell, line)
                outputs = [n.strip() for n in args.outputs.split(",") if n.strip()]
                value = self.magics.container_cell(line, cell)
            except CellError as exc:
                return {"status": "error", "error": {"ename": exc.ename, "evalue": exc.evalue,
                                                     "lines": exc._render_traceback_()}}
            except MagicUsageError as exc:
                raise UsageError(str(exc)) from None
            except KeyboardInterrupt:  # one that came after the cell had ended
                return {"status": "error", "error": {"ename": "KeyboardInterrupt", "evalue": "",
                                                     "lines": ["KeyboardInterrupt"]}}
            result = value._repr_mimebundle_() if value is not None else None
            return {"status": "ok", "result": result,
                    "outputs": {n: values.encode(n, self.namespace[n]) for n in outputs if n in self.namespace}}
        finally:
            self.namespace.clear()

    def interrupt(self) -> bool:
        """KeyboardInterrupt in the thread running a cell; False if none runs."""
        from ..notebook.session import interrupt_thread

        thread = self._thread
        if thread is None or not thread.is_alive() or thread.ident is None:
            return False
        interrupt_thread(thread.ident)
        return True

    def shutdown(self) -> None:
        self.magics.shutdown()
