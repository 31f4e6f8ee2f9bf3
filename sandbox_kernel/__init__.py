"""sandbox-kernel: real Linux containers inside Jupyter.

``%load_ext sandbox_kernel`` registers the ``%container`` magics;
``sandbox_kernel.Panel()`` is the widget panel (images, containers, limits).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Panel":  # (ipywidgets is imported only by those who ask for the panel)
        from .notebook.widgets import Panel

        return Panel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """``jupyter server extension enable sandbox_kernel``: the REST API lives in sandbox_kernel.server."""
    return [{"module": "sandbox_kernel.server"}]


def load_ipython_extension(ipython: Any) -> None:
    from .notebook.magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:  # pragma: no cover - IPython hook
    pass
