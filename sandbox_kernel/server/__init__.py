"""The jupyter-server extension: the REST API of handlers.py under ``/sandbox-kernel/api/``.

Enabled by the package's jupyter config (``jupyter_server_config.d/sandbox_kernel.json``,
installed with it) or by ``jupyter server extension enable sandbox_kernel``. The
runtime lives in the server's process, on the store of ``$SANDBOX_KERNEL_ROOT``
(or the default); containers it starts are detached and outlive the server.
What its clients may ask for is the admin's ``ServerPolicy`` (sandbox_kernel/policy.py),
the same for every route: a remote cell cannot do what ``POST /containers`` may not.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "sandbox_kernel.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from ..client import LocalClient
    from ..policy import ServerPolicy
    from .handlers import handlers

    web_app = serverapp.web_app
    policy = ServerPolicy(parent=serverapp)  # c.ServerPolicy / c.SandboxPolicy in jupyter_server_config.py
    web_app.settings["sandbox_kernel_policy"] = policy
    web_app.settings["sandbox_kernel_client"] = LocalClient(policy=policy)
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("sandbox-kernel: REST API at %ssandbox-kernel/api/", web_app.settings["base_url"])
