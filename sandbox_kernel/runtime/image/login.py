"""``login`` and ``logout``: check credentials against a registry, then keep or forget them (docker's config.json)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import credentials
from .registry import RegistryClient
from .transport import RegistryOptions


def registry_name(server: str | None) -> str:
    """The registry a ``login``/``logout`` argument names (Docker Hub when none)."""
    return credentials.normalize(server or "docker.io")


def login(server: str | None, username: str, password: str, options: RegistryOptions | None = None
          ) -> tuple[str, Path]:
    """Log in to ``server`` (its token endpoint or basic auth must take the credentials), then save them.
    Returns the registry and the file they were saved in; an AuthError or RegistryError otherwise."""
    registry = registry_name(server)
    creds = credentials.Credentials(username, password)
    client = RegistryClient(registry, replace(options or RegistryOptions(), credentials=creds))
    try:
        client.transport.check_login()
    finally:
        client.close()
    return registry, credentials.store(registry, creds)


def logout(server: str | None) -> tuple[str, bool]:
    """Forget the saved credentials of ``server``: the registry, and whether there were any."""
    registry = registry_name(server)
    return registry, credentials.remove(registry)
