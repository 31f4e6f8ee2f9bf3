"""``push``: an image of the store to a registry.

Blobs first (the config and every layer, in parallel): one the repository
already has is skipped (``HEAD``); one that another repository of the same
registry has (we pulled or pushed it under that name) is mounted across
(``POST …?mount=&from=``) when the registry allows it; the rest are uploaded,
small ones in one ``PUT``, big ones in ``PATCH`` chunks. Then the manifest,
byte for byte as stored, so its digest is the same everywhere.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any

from ..errors import RegistryError, UsageError
from .pull import WORKERS, Progress, ProgressEvent
from .ref import Reference, parse_reference
from .registry import RegistryClient
from .store import Store
from .transport import RegistryOptions


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    digest: str  # the manifest's
    size: int  # the manifest's bytes (docker prints it)
    uploaded: int  # blobs sent (the rest were there, or mounted)


def _mount_sources(store: Store, ref: Reference, manifest_digest: str) -> list[str]:
    """Other repositories of the same registry that hold this image (its other names)."""
    names = {parse_reference(name) for name, digest in store.tags().items() if digest == manifest_digest}
    return sorted({r.repository for r in names if r.registry == ref.registry and r.repository != ref.repository})


def push(store: Store, source: str, destination: str | None = None, *, options: RegistryOptions | None = None,
         progress: Progress | None = None, workers: int = WORKERS) -> PushResult:
    """Push the stored image ``source`` as ``destination`` (default: ``source``, which must then name a registry)."""
    image = store.resolve(source)
    ref = parse_reference(destination or source)
    if ref.digest is not None:
        raise UsageError(f"cannot push to a digest reference ({ref.familiar()}): give a tag")
    notify = progress or (lambda _event: None)
    client = RegistryClient(ref.registry, options)
    mount_from = _mount_sources(store, ref, image.manifest_digest)
    blobs: dict[str, int] = {image.config_digest: image.manifest["config"]["size"]}
    for layer in image.layers:
        blobs.setdefault(layer["digest"], layer["size"])
    for digest, size in blobs.items():
        notify(ProgressEvent("waiting", digest, size))

    def one(digest: str, size: int) -> bool:
        if client.blob_size(ref.repository, digest, push=True) is not None:
            notify(ProgressEvent("exists", digest, size, size))
            return False
        for other in mount_from:
            if client.mount_blob(ref.repository, digest, other):
                notify(ProgressEvent("mounted", digest, size, size))
                return False
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            notify(ProgressEvent("uploading", digest, size, done))

        client.upload_blob(ref.repository, digest, size, lambda: store.open_blob(digest), on_bytes)
        notify(ProgressEvent("complete", digest, size, size))
        return True

    try:
        uploaded = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="push") as pool:
            for done in pool.map(lambda item: one(*item), blobs.items()):
                uploaded += done
        body = store.read_blob(image.manifest_digest)
        media_type = _media_type(image.manifest)
        digest = client.put_manifest(ref.repository, ref.tag or "latest", body, media_type)
        if digest != image.manifest_digest:
            raise RegistryError(f"push {ref.familiar()}: the manifest changed on the way ({digest})")
        notify(ProgressEvent("resolved", digest))
        return PushResult(ref, digest, len(body), uploaded)
    finally:
        client.close()


def _media_type(manifest: dict[str, Any]) -> str:
    from . import media

    return str(manifest.get("mediaType") or media.OCI_MANIFEST)
