"""``pull``: an image from a registry into the store, ready to run.

1. The manifest the reference names; if it is an index (a multi-arch image),
   the entry for the wanted platform (this machine's by default), fetched by
   its digest and checked against it.
2. The config (size-capped, checked against its digest).
3. The layers, in parallel: each one the store does not hold is streamed
   once, written and hashed as it comes and unpacked from the same bytes
   (store.ingest_layer); a dropped connection resumes with Range
   (transport.BlobReader). Layers already here, from any image, are skipped.
   Two processes pulling the same layer take turns on a lock: the second
   finds it stored.
4. Then the manifest and the tag. Nothing is tagged until every blob is in.

Progress goes to a callback as :class:`ProgressEvent` values (the CLI draws
tqdm bars with them; the widgets a progress bar).
"""

from __future__ import annotations

import concurrent.futures
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ImageError, RegistryError, UsageError
from . import media
from .ref import Reference, parse_reference
from .registry import RegistryClient
from .store import Descriptor, Image, Store
from .transport import RegistryOptions

WORKERS = 3  # layers downloaded at once (docker's default)


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a pull or push, for a progress display.

    ``status`` is one of: ``resolved`` (``digest`` is the image's), ``waiting``,
    ``exists`` (already stored, or already in the registry), ``mounted``,
    ``downloading``/``uploading`` (``done`` of ``total`` bytes so far),
    ``complete``.
    """

    status: str
    digest: str
    total: int = 0
    done: int = 0


Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class PullResult:
    image: Image
    reference: Reference
    digest: str  # what the reference resolved to: the index's digest for a multi-arch image
    downloaded: int  # layers fetched (the rest were here already)


def parse_platform(text: str | None) -> dict[str, str]:
    """``linux/arm64/v8`` → an OCI platform; None → this machine's."""
    if not text:
        return media.host_platform()
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"invalid platform {text!r}: use OS/ARCH[/VARIANT], e.g. linux/arm64/v8")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        plat["variant"] = parts[2]
    return plat


def _platform_text(plat: dict[str, Any]) -> str:
    return "/".join(str(plat[k]) for k in ("os", "architecture", "variant") if plat.get(k))


def choose_platform(index: dict[str, Any], wanted: dict[str, str], what: str) -> dict[str, Any]:
    """The index entry for ``wanted``; a clear error naming what the image does have."""
    candidates = [d for d in index["manifests"] if d.get("mediaType", media.OCI_MANIFEST) in media.MANIFEST_TYPES]
    exact = [d for d in candidates if media.platform_matches(d.get("platform"), wanted)
             and (not wanted.get("variant") or d["platform"].get("variant") in (None, "", wanted["variant"]))]
    matching = exact or [d for d in candidates if media.platform_matches(d.get("platform"), wanted)]
    if matching:
        return matching[0]
    have = sorted({_platform_text(d["platform"]) for d in candidates if isinstance(d.get("platform"), dict)})
    raise ImageError(f"{what} has no image for {_platform_text(wanted)} (it has: {', '.join(have) or 'none named'}); "
                     "choose one with --platform")


def pull(store: Store, reference: str, *, platform: str | None = None, options: RegistryOptions | None = None,
         progress: Progress | None = None, workers: int = WORKERS) -> PullResult:
    """Pull ``reference`` (``busybox``, ``ghcr.io/o/i:tag``, ``host:5000/x@sha256:…``) into ``store``."""
    ref = parse_reference(reference)
    wanted = parse_platform(platform)
    notify = progress or (lambda _event: None)
    client = RegistryClient(ref.registry, options)
    try:
        top = client.get_manifest(ref.repository, ref.digest or ref.tag or "latest")
        chosen = top
        if top.media_type in media.INDEX_TYPES:
            index = media.parse_json(top.body, f"index {ref}")
            entry = choose_platform(index, wanted, str(ref.familiar()))
            chosen = client.get_manifest(ref.repository, entry["digest"])
            if chosen.media_type not in media.MANIFEST_TYPES:
                raise RegistryError(f"{ref.familiar()}: the index entry for {_platform_text(wanted)} is not an image")
        notify(ProgressEvent("resolved", top.digest))
        manifest = media.check_manifest(media.parse_json(chosen.body, f"manifest {ref.familiar()}"))
        config_desc = manifest["config"]
        with store.writing():
            if not store.has_blob(config_desc["digest"]):
                data = client.get_blob(ref.repository, config_desc["digest"], media.MAX_JSON_BYTES)
                store.ingest(io.BytesIO(data), expected_digest=config_desc["digest"])
            config = media.check_config(store.read_json(config_desc["digest"], "image config"),
                                        len(manifest["layers"]))
            if platform and top.media_type in media.MANIFEST_TYPES and not platform_ok(config, wanted):
                raise ImageError(f"{ref.familiar()} is for {_platform_text(_config_platform(config))}, "
                                 f"not {_platform_text(wanted)}")
            layers = list(zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True))
            downloaded = _fetch_layers(store, client, ref.repository, layers, notify, workers)
            store.ingest(io.BytesIO(chosen.body), expected_digest=chosen.digest)
            desc = Descriptor(chosen.media_type, chosen.digest, len(chosen.body))
            if ref.tag is not None:  # (name:tag@digest is kept as name:tag, as docker does)
                store.set_tag(ref.with_tag(ref.tag), desc)
            else:  # by digest: kept under name@digest of what was stored (an index's entry, for an index)
                store.set_tag(ref.with_digest(chosen.digest), desc, by_digest=True)
        names = [str(ref.with_tag(ref.tag))] if ref.tag is not None else []
        return PullResult(store.load_image(chosen.digest, names), ref, top.digest, downloaded)
    finally:
        client.close()


def _config_platform(config: dict[str, Any]) -> dict[str, Any]:
    return {"os": config.get("os"), "architecture": config.get("architecture"), "variant": config.get("variant")}


def platform_ok(config: dict[str, Any], wanted: dict[str, str]) -> bool:
    found = _config_platform(config)
    return not found["os"] or media.platform_matches({k: v for k, v in found.items() if v}, wanted)


def _fetch_layers(store: Store, client: RegistryClient, repository: str, layers: list[tuple[dict[str, Any], str]],
                  notify: Progress, workers: int) -> int:
    """Every layer into the store (in parallel); how many were downloaded."""
    todo: dict[str, tuple[dict[str, Any], str]] = {}
    for desc, diff_id in layers:
        todo.setdefault(desc["digest"], (desc, diff_id))
    for digest, (desc, _) in todo.items():
        notify(ProgressEvent("waiting", digest, desc["size"]))
    stop = threading.Event()

    def one(desc: dict[str, Any], diff_id: str) -> bool:
        if stop.is_set():
            return False
        digest, size = desc["digest"], desc["size"]
        with store.blob_lock(digest):  # another process pulling it: wait, then find it here
            if store.has_blob(digest) and store.layer_dir(diff_id).is_dir():
                notify(ProgressEvent("exists", digest, size, size))
                return False
            if store.has_blob(digest):  # the blob without its unpacked tree (a load, say): unpack it here
                store.unpack_layer(desc, diff_id)
                notify(ProgressEvent("complete", digest, size, size))
                return False
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                if stop.is_set():
                    raise RegistryError("cancelled: another layer failed")
                done += n
                notify(ProgressEvent("downloading", digest, size, done))

            with client.open_blob(repository, digest, size) as stream:
                store.ingest_layer(stream, digest, size, diff_id, on_bytes=on_bytes)
            notify(ProgressEvent("complete", digest, size, size))
            return True

    downloaded = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="pull") as pool:
        futures = [pool.submit(one, desc, diff_id) for desc, diff_id in todo.values()]
        try:
            for future in concurrent.futures.as_completed(futures):
                downloaded += bool(future.result())
        except BaseException:
            stop.set()  # the others stop at their next chunk; what they wrote is removed
            raise
    return downloaded
