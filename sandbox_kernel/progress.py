"""Pull and push progress: the state of one (:class:`Progress`, what the client API reports) and one renderer
per medium, each reading that state.

* :func:`terminal` (the CLI, local or remote): a tqdm bar per layer on a terminal,
  else a line per layer as it ends (``ID: Pull complete``), as docker prints them;
* :class:`Lines` (a notebook cell, or a terminal that is not one): those lines only;
* the panel's bars are widgets (notebook/widgets.py), fed by the same states.

:class:`Follow` turns the runtime's progress events (a local pull or push) into states.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

SAID = {"complete": "{verb} complete", "exists": "Already exists", "mounted": "Mounted from another repository"}


@dataclass
class Progress:
    """A pull as it goes: bytes per layer and in all; ``fraction`` is what a bar shows."""

    reference: str
    layers: dict[str, list[int]] = field(default_factory=dict)  # digest -> [done, total]
    finished: bool = False
    started: float = field(default_factory=time.monotonic)
    ends: dict[str, str] = field(default_factory=dict)  # digest -> complete | exists | mounted

    @property
    def done(self) -> int:
        return sum(d for d, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return self.done / self.total if self.total else 0.0

    @property
    def speed(self) -> float:
        """Bytes per second so far."""
        return self.done / max(time.monotonic() - self.started, 1e-6)

    def update(self, status: str, digest: str, done: int, total: int) -> None:
        """One event of the runtime's pull or push (ProgressEvent's status, digest, done, total)."""
        if status in ("waiting", "downloading", "uploading"):
            self.layers[digest] = [done, total]
        elif status in ("complete", "exists", "mounted"):
            size = max(total, self.layers.get(digest, [0, 0])[1])
            self.layers[digest] = [size, size]
            self.ends[digest] = status

    def ended(self, digest: str) -> str | None:
        """How a layer ended: complete, exists or mounted; None while it goes. (A state that came from a
        server says bytes only: a layer with all of its bytes is complete.)"""
        done, total = self.layers.get(digest, [0, 0])
        return self.ends.get(digest) or ("complete" if total and done >= total else None)



class Follow:
    """A progress callback for the runtime's pull or push: keeps a Progress and renders it at each event
    (``render`` may be None: the state is then only kept); :meth:`finish` renders it finished."""

    def __init__(self, reference: str, render: Callable[[Progress], None] | None) -> None:
        self.state = Progress(reference)
        self.render = render

    def __call__(self, event: Any) -> None:
        if event.status != "resolved":
            self.state.update(event.status, event.digest, event.done, event.total)
            if self.render is not None:
                self.render(self.state)

    def finish(self) -> None:
        self.state.finished = True
        if self.render is not None:
            self.render(self.state)


class Lines:
    """A line per layer as it ends: ``3f4d90098f5b: Pull complete`` (or Already exists, Mounted from ...)."""

    def __init__(self, verb: str = "Pull", stream: IO[str] | None = None, indent: str = ""):
        self.verb, self.stream, self.indent = verb, stream, indent
        self.said: set[str] = set()

    def __call__(self, state: Progress) -> None:
        for digest in state.layers:
            ended = state.ended(digest)
            if ended is not None and digest not in self.said:
                self.said.add(digest)
                print(f"{self.indent}{digest.split(':', 1)[-1][:12]}: {SAID[ended].format(verb=self.verb)}",
                      file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        pass


class Bars:
    """A tqdm bar per layer (bytes, speed), on stderr."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, state: Progress) -> None:
        from tqdm import tqdm

        for digest, (done, total) in state.layers.items():
            bar = self.bars.get(digest)
            if bar is None:
                bar = tqdm(total=total or None, desc=digest.split(":", 1)[-1][:12], unit="B", unit_scale=True,
                           unit_divisor=1024, position=len(self.bars), leave=True, file=sys.stderr,
                           dynamic_ncols=True)
                self.bars[digest] = bar
            bar.update(max(0, done - bar.n))
            ended = state.ended(digest)
            if ended is not None:
                bar.set_postfix_str({"complete": "done"}.get(ended, ended))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _Quiet:
    def __call__(self, state: Progress) -> None:
        pass

    def close(self) -> None:
        pass


def terminal(verb: str, quiet: bool = False) -> Lines | Bars | _Quiet:
    """The CLI's progress: bars on a terminal, else lines on stderr; nothing with ``-q``."""
    if quiet:
        return _Quiet()
    return Bars() if sys.stderr.isatty() else Lines(verb, sys.stderr)
