"""The registry HTTP API v2 (OCI distribution spec) for one registry: manifests, blobs, uploads.

Every document fetched is size-capped and checked against its digest when we
asked by digest; a document that is both an index and a manifest is refused
(CVE-2021-41190, see media.py); digests are validated before they are used.
Orchestration (which manifests, which blobs, in parallel, into the store) is
in pull.py and push.py; HTTP, TLS, tokens and retries in transport.py.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from ..errors import BlobError, RegistryError
from . import media
from .ref import validate_digest
from .transport import BlobReader, RegistryOptions, Transport

MANIFEST_ACCEPT = ", ".join([media.OCI_INDEX, media.OCI_MANIFEST, media.DOCKER_LIST, media.DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20  # containers/image's limit for a manifest
CHUNK_UPLOAD = 16 << 20  # blobs above this go up in PATCH chunks of this size
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")


@dataclass(frozen=True)
class Fetched:
    """A manifest or index as the registry sent it: its exact bytes, digest and media type."""

    media_type: str
    digest: str
    body: bytes


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def scope(repository: str, push: bool = False) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


class RegistryClient:
    """The v2 API of one registry (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``...)."""

    def __init__(self, registry: str, options: RegistryOptions | None = None):
        self.transport = Transport(registry, options)
        self.registry = self.transport.registry

    def close(self) -> None:
        self.transport.close()

    # -- manifests --------------------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str, *, push: bool = False) -> Fetched:
        """The manifest or index ``reference`` (a tag or a digest) names; checked against a digest reference."""
        what = f"{self.registry}/{repository}:{reference}" if not reference.startswith("sha256:") \
            else f"{self.registry}/{repository}@{reference}"
        resp = self.transport.request("GET", f"/v2/{repository}/manifests/{reference}",
                                      scopes=[scope(repository, push)], headers={"Accept": MANIFEST_ACCEPT},
                                      what=f"manifest {what}")
        body = resp.read(MAX_MANIFEST)
        digest = sha256_digest(body)
        if reference.startswith("sha256:") and digest != reference:
            raise BlobError(f"manifest {what}: the registry sent content with digest {digest}; refusing it")
        doc = media.parse_json(body, f"manifest {what}")
        media_type = doc.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type in SCHEMA1 or doc.get("schemaVersion") == 1:
            raise RegistryError(f"manifest {what}: Docker schema 1 manifests are not supported (push it again with "
                                "a current client)")
        if not media_type:
            media_type = media.OCI_INDEX if "manifests" in doc else media.OCI_MANIFEST
        if media_type in media.INDEX_TYPES:
            media.check_index(doc, f"index {what}")
        elif media_type in media.MANIFEST_TYPES:
            media.check_manifest(doc, f"manifest {what}")
        else:
            raise RegistryError(f"{what}: not an image (media type {media_type!r})")
        return Fetched(media_type, digest, body)

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Upload a manifest under a tag (or its digest); returns its digest."""
        digest = sha256_digest(body)
        resp = self.transport.request("PUT", f"/v2/{repository}/manifests/{reference}",
                                      scopes=[scope(repository, True)], headers={"Content-Type": media_type},
                                      body=body, expect=(200, 201, 202),
                                      what=f"push manifest {self.registry}/{repository}:{reference}")
        resp.read(1 << 20)
        said = resp.headers.get("Docker-Content-Digest")
        if said and said != digest:
            raise RegistryError(f"push manifest {self.registry}/{repository}:{reference}: the registry stored "
                                f"{said}, not {digest}")
        return digest

    # -- blobs ------------------------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str, *, push: bool = False) -> int | None:
        """The size of a blob the repository has, or None (``HEAD``)."""
        validate_digest(digest)
        resp = self.transport.request("HEAD", f"/v2/{repository}/blobs/{digest}", scopes=[scope(repository, push)],
                                      expect=(200, 404), what=f"blob {digest[:19]} in {self.registry}/{repository}")
        resp.raw.read()  # a HEAD answer has no body: this only frees the connection
        if resp.status != 200:
            return None
        length = resp.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else 0

    def open_blob(self, repository: str, digest: str, size: int) -> BlobReader:
        """A blob's bytes as a stream that resumes after a dropped connection (not yet checked: see store)."""
        validate_digest(digest)
        return BlobReader(self.transport, f"/v2/{repository}/blobs/{digest}", size, [scope(repository)],
                          f"blob {digest[:19]} of {self.registry}/{repository}")

    def get_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A small blob (a config), checked against its digest."""
        validate_digest(digest)
        resp = self.transport.request("GET", f"/v2/{repository}/blobs/{digest}", scopes=[scope(repository)],
                                      what=f"blob {digest[:19]} of {self.registry}/{repository}")
        data = resp.read(limit)
        if sha256_digest(data) != digest:
            raise BlobError(f"blob {digest[:19]} of {self.registry}/{repository}: the registry sent content with "
                            f"digest {sha256_digest(data)[:19]}; refusing it")
        return data

    # -- uploads ----------------------------------------------------------------------------------------

    def mount_blob(self, repository: str, digest: str, source: str) -> bool:
        """Cross-repository mount (no bytes sent); False when the registry would rather have an upload."""
        validate_digest(digest)
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        resp = self.transport.request("POST", f"/v2/{repository}/blobs/uploads/?{query}",
                                      scopes=[scope(repository, True), scope(source)], expect=(201, 202),
                                      what=f"mount blob {digest[:19]} into {self.registry}/{repository}")
        resp.read(1 << 20)
        if resp.status == 201:
            return True
        location = resp.headers.get("Location")
        if location:  # it opened an upload instead: cancel it, we upload our own way
            try:
                self.transport.request("DELETE", self._absolute(location), scopes=[scope(repository, True)],
                                       expect=(200, 202, 204, 404), what="cancel upload").read(1 << 20)
            except RegistryError:
                pass
        return False

    def upload_blob(self, repository: str, digest: str, size: int, source: Callable[[], IO[bytes]],
                    on_bytes: Callable[[int], None] | None = None) -> None:
        """Upload a blob: in one PUT when small, else in PATCH chunks; ``source`` opens it from the start."""
        validate_digest(digest)
        what = f"push blob {digest[:19]} to {self.registry}/{repository}"
        scopes = [scope(repository, True)]
        resp = self.transport.request("POST", f"/v2/{repository}/blobs/uploads/", scopes=scopes, expect=(202,),
                                      what=what)
        resp.read(1 << 20)
        location = self._location(resp, what)
        sent = 0
        with source() as fh:
            if size > CHUNK_UPLOAD:
                while True:
                    chunk = fh.read(CHUNK_UPLOAD)
                    if not chunk:
                        break
                    resp = self.transport.request(
                        "PATCH", location, scopes=scopes, body=chunk, expect=(202,), what=what,
                        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                                 "Content-Range": f"{sent}-{sent + len(chunk) - 1}"})
                    resp.read(1 << 20)
                    location = self._location(resp, what)
                    sent += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                body = b""
            else:
                body = fh.read(size + 1)
                if len(body) != size:
                    raise BlobError(f"{what}: the stored blob has {len(body)} bytes, not {size}")
        separator = "&" if "?" in location else "?"
        resp = self.transport.request("PUT", f"{location}{separator}{urllib.parse.urlencode({'digest': digest})}",
                                      scopes=scopes, body=body, expect=(201, 204), what=what,
                                      headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(len(body))})
        resp.read(1 << 20)
        if body and on_bytes is not None:
            on_bytes(len(body))

    def _absolute(self, location: str) -> str:
        base = f"{self.transport.scheme}://{self.transport.host}/"
        return urllib.parse.urljoin(base, location)

    def _location(self, resp: object, what: str) -> str:
        location = getattr(resp, "headers", {}).get("Location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location")
        return self._absolute(location)
