"""How many examples the fuzz targets run, and which: a fixed set by default, fresh random ones with ``--fuzz N``.

By default every run tries the same examples (hypothesis derandomized, schemathesis in its deterministic mode): a
regression set that a change cannot pass by luck and that fails the same way twice. ``pytest --fuzz N``
(conftest.py) asks for N fresh random examples per target instead, on demand: a long hunt, not CI's job.
A failure then prints what reproduces it (hypothesis' blob, schemathesis' seed).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings

ENV = "SANDBOX_KERNEL_FUZZ"  # set by `pytest --fuzz N` before the test modules are imported


def fresh() -> int:
    """N of ``--fuzz N``; 0 for the fixed set."""
    return int(os.environ.get(ENV) or 0)


def fuzz_settings(fixed: int, **options: Any) -> settings:
    """Hypothesis settings of a fuzz target: ``fixed`` examples, the same every run, or ``--fuzz N`` fresh ones."""
    n = fresh()
    return settings(max_examples=n or fixed, derandomize=not n, database=None, deadline=None, print_blob=bool(n),
                    **options)


def schemathesis_args(fixed: int) -> list[str]:
    """schemathesis run's options for the same choice: its deterministic mode, or ``--fuzz N`` examples from a
    fresh seed (which it prints)."""
    n = fresh()
    if n:
        return ["--max-examples", str(n), "--seed", str(int.from_bytes(os.urandom(4), "big"))]
    return ["--max-examples", str(fixed), "--generation-deterministic"]
