"""sandbox-kernel: real Linux containers inside Jupyter.

``%load_ext sandbox_kernel`` registers the ``%container`` magics.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:  # pragma: no cover - IPython hook
    pass
