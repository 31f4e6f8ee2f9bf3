"""Registry credentials in docker's file: ``~/.docker/config.json`` (or ``$DOCKER_CONFIG/config.json``).

Read the way docker and podman read it: ``auths`` maps a registry (or, for
Docker Hub, ``https://index.docker.io/v1/``) to ``{"auth": base64("user:password")}``.
``login`` and ``logout`` write the same format, keep every other key of the
file as it was, and write it atomically with mode 0600. Credential helpers
(``credsStore``, ``credHelpers``) are not run: a registry they cover counts as
having no stored credentials here.

A secret never goes into a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthError, StoreError
from .ref import DEFAULT_REGISTRY

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = (DOCKER_HUB_KEY, "index.docker.io", "docker.io", "registry-1.docker.io", "https://index.docker.io/v1")


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The value of an ``Authorization: Basic`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def normalize(registry: str) -> str:
    """The registry as the rest of the runtime names it (``docker.io`` for Docker Hub's aliases)."""
    text = registry.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("/")
    if text.endswith("/v1") or text.endswith("/v2"):
        text = text[:-3]
    return DEFAULT_REGISTRY if text in ("index.docker.io", "registry-1.docker.io", "docker.io") else text


def _keys(registry: str) -> tuple[str, ...]:
    """The ``auths`` keys that may hold ``registry``'s credentials, the one we write first."""
    if normalize(registry) == DEFAULT_REGISTRY:
        return _HUB_ALIASES
    host = normalize(registry)
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"https://{host}/v1/")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        raise AuthError(f"{path} is not valid JSON; fix or remove it") from None
    if not isinstance(doc, dict):
        raise AuthError(f"{path} is not a JSON object; fix or remove it")
    return doc


def lookup(registry: str, path: Path | None = None) -> Credentials | None:
    """The stored credentials for ``registry``, or None."""
    auths = _read(path or config_path()).get("auths")
    if not isinstance(auths, dict):
        return None
    for key in _keys(registry):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError(f"the stored credentials for {normalize(registry)} in {path or config_path()} "
                                "are not valid base64; log in again") from None
            if sep:
                return Credentials(user, password)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"])
    return None


def _write(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent="\t")
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None


def store(registry: str, credentials: Credentials, path: Path | None = None) -> Path:
    """Save ``credentials`` for ``registry`` (``login``); returns the file written."""
    path = path or config_path()
    doc = _read(path)
    auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
    for key in _keys(registry)[1:]:
        auths.pop(key, None)  # one entry per registry: the one we write
    auths[_keys(registry)[0]] = {"auth": base64.b64encode(f"{credentials.username}:{credentials.password}"
                                                          .encode()).decode()}
    doc["auths"] = auths
    _write(path, doc)
    return path


def remove(registry: str, path: Path | None = None) -> bool:
    """Forget ``registry``'s credentials (``logout``); False if there were none."""
    path = path or config_path()
    doc = _read(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return False
    found = [key for key in _keys(registry) if key in auths]
    for key in found:
        del auths[key]
    if found:
        _write(path, doc)
    return bool(found)
