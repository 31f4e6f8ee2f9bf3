"""The jupyter-server extension: the REST API of handlers.py under ``/sandbox-kernel/api/``.

Enabled by the package's jupyter config (``jupyter_server_config.d/sandbox_kernel.json``,
installed with it) or by ``jupyter server extension enable sandbox_kernel``. The
runtime lives in the server's process, on the store of ``$SANDBOX_KERNEL_ROOT``
(or the default); containers it starts are detached and outlive the server.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "sandbox_kernel.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from ..client import LocalClient
    from .handlers import handlers

    web_app = serverapp.web_app
    web_app.settings["sandbox_kernel_client"] = LocalClient()
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("sandbox-kernel: REST API at %ssandbox-kernel/api/", web_app.settings["base_url"])
