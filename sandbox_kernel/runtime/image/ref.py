"""Image references and digests, parsed by docker's rules.

``busybox`` is ``docker.io/library/busybox:latest``; ``localhost:5000/a/b@sha256:…``
keeps its registry; a digest is validated strictly (``sha256:`` and 64 lower-case
hex digits) before it can ever become part of a file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ReferenceFormatError

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# (\A...\Z, ASCII classes: `$` also matches before a final newline and \w takes any letter, so "latest\n" and
# "lat\u00e9st" passed as tags, and a digest with a newline as a digest, until the reference fuzz target found it)
_COMPONENT_RE = re.compile(rf"\A{_COMPONENT}\Z")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"\A(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?\Z")
_TAG_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
_ID_PREFIX_RE = re.compile(r"\A(?:sha256:)?[0-9a-f]{1,64}\Z")
MAX_NAME_LENGTH = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is exactly ``sha256:`` + 64 lower-case hex digits."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ReferenceFormatError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def digest_hex(digest: str) -> str:
    """The hex part of a validated digest (safe to use as a file name)."""
    return validate_digest(digest).split(":", 1)[1]


def looks_like_id(text: str) -> bool:
    """True for what may be an image id or its prefix (``3f57d9401f8d``, ``sha256:3f…``)."""
    return bool(_ID_PREFIX_RE.match(text))


@dataclass(frozen=True)
class Reference:
    """A normalized image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The short form docker shows: ``busybox`` for ``docker.io/library/busybox``."""
        if self.registry == DEFAULT_REGISTRY:
            prefix = OFFICIAL_NAMESPACE + "/"
            if self.repository.startswith(prefix) and "/" not in self.repository[len(prefix) :]:
                return self.repository[len(prefix) :]
            first = self.repository.split("/", 1)[0]
            if "." not in first and first != "localhost":  # (else it would read as a registry: keep docker.io/)
                return self.repository
        return self.name

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    def familiar(self) -> str:
        text = self.familiar_name
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise ReferenceFormatError(f"invalid tag {tag!r}")
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, validate_digest(digest))


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse ``text`` by docker's normalization rules.

    With ``default_tag`` a reference with neither tag nor digest gets ``latest``.
    """
    if not isinstance(text, str) or not text:
        raise ReferenceFormatError("invalid reference format: empty reference")
    original = text
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        try:
            validate_digest(digest)
        except ReferenceFormatError as exc:
            raise ReferenceFormatError(f"invalid reference {original!r}: {exc}") from None
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ReferenceFormatError(f"invalid reference {original!r}: bad tag {tag!r}")
    if not text:
        raise ReferenceFormatError(f"invalid reference {original!r}: no repository name")

    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, path = first, rest
        if not _DOMAIN_RE.match(registry):
            raise ReferenceFormatError(f"invalid reference {original!r}: bad registry {registry!r}")
    else:
        registry, path = DEFAULT_REGISTRY, text
    if registry in LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    for component in path.split("/"):
        if not _COMPONENT_RE.match(component):
            if component.lower() != component and _COMPONENT_RE.match(component.lower()):
                raise ReferenceFormatError(f"invalid reference {original!r}: repository name must be lowercase")
            raise ReferenceFormatError(f"invalid reference {original!r}: bad repository name component {component!r}")
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ReferenceFormatError(f"invalid reference {original!r}: name longer than 255 characters")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)
