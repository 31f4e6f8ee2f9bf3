"""Import and export images: OCI layout directories, oci-archive, docker-archive.

``load`` reads an archive in one pass: every member goes straight into the
store as a blob (checked against its name when the name is a digest), small
JSON members are kept in memory, and only then are the images assembled and
tagged. Archive member names are only ever dictionary keys, never paths.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArchiveError, BlobError, ReferenceFormatError
from . import media
from .layers import decompressed, detect_compression
from .ref import Reference, parse_reference
from .store import Descriptor, Image, Store

_BLOB_NAME = re.compile(r"\Ablobs/sha256/([0-9a-f]{64})\Z")
_SMALL_NAMES = {"index.json", "oci-layout", "manifest.json", "repositories"}


@dataclass
class Loaded:
    image: Image
    tags: list[str]


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _name_from_annotations(annotations: dict[str, Any] | None) -> Reference | str | None:
    """A full reference from a descriptor's annotations, or the bare tag found there."""
    annotations = annotations or {}
    full = annotations.get(media.ANNOTATION_IMAGE_NAME)
    if isinstance(full, str):
        with contextlib.suppress(ReferenceFormatError):
            return parse_reference(full)
    ref_name = annotations.get(media.ANNOTATION_REF_NAME)
    if isinstance(ref_name, str) and ref_name:
        if any(c in ref_name for c in "/:@"):
            with contextlib.suppress(ReferenceFormatError):
                return parse_reference(ref_name)
        return ref_name  # a bare tag: the repository must come from -t
    return None


class _Source:
    """Where the blobs of one archive come from."""

    def __init__(self, store: Store, fetch: Callable[[str], None] | None = None):
        self.store = store
        self._fetch = fetch

    def ensure(self, digest: str, size: int | None = None) -> None:
        if self.store.has_blob(digest):
            return
        if self._fetch is None:
            raise ArchiveError(f"the archive lacks blob {digest}")
        self._fetch(digest)

    def json(self, digest: str, what: str) -> dict[str, Any]:
        self.ensure(digest)
        return self.store.read_json(digest, what)


def _pick_platform(index: dict[str, Any], what: str) -> dict[str, Any] | None:
    wanted = media.host_platform()
    candidates = [d for d in index["manifests"] if d.get("mediaType") in media.MANIFEST_TYPES]
    for desc in candidates:
        if media.platform_matches(desc.get("platform"), wanted):
            return desc
    without = [d for d in candidates if not d.get("platform")]
    if len(without) == 1:
        return without[0]
    return None


def _assemble_oci(store: Store, source: _Source, index: dict[str, Any], tag: str | None) -> list[Loaded]:
    media.check_index(index, "index.json")
    found: list[tuple[Descriptor, Reference | str | None]] = []
    platform_skipped = 0
    wanted = media.host_platform()
    for i, desc in enumerate(index["manifests"]):
        name = _name_from_annotations(desc.get("annotations"))
        mt = desc.get("mediaType")
        if mt in media.INDEX_TYPES:
            sub = media.check_index(source.json(desc["digest"], "image index"), f"index.json entry {i}")
            chosen = _pick_platform(sub, "image index")
            if chosen is None:
                raise ArchiveError(
                    f"index.json entry {i} has no image for this platform ({wanted['os']}/{wanted['architecture']})"
                )
            desc = chosen
        elif mt not in media.MANIFEST_TYPES:
            raise ArchiveError(f"index.json entry {i} has unsupported mediaType {mt!r}")
        if desc.get("platform") and not media.platform_matches(desc["platform"], wanted):
            platform_skipped += 1
            continue
        found.append((Descriptor(desc["mediaType"], desc["digest"], desc["size"]), name))
    if not found:
        if platform_skipped:
            raise ArchiveError(
                f"no image in the archive is for this platform ({wanted['os']}/{wanted['architecture']})"
            )
        raise ArchiveError("the archive's index.json lists no images")
    return _finish(store, source, found, tag)


def _finish(
    store: Store, source: _Source, found: list[tuple[Descriptor, Reference | str | None]], tag: str | None
) -> list[Loaded]:
    """Check every image is complete, then tag: blobs first, tags last."""
    if tag is not None and len({d.digest for d, _ in found}) > 1:
        raise ArchiveError(f"the archive holds {len(found)} images; -t names only one")
    results: list[tuple[Descriptor, list[Reference]]] = []
    for desc, name in found:
        source.ensure(desc.digest)
        manifest = media.check_manifest(store.read_json(desc.digest, "manifest"))
        config_desc = manifest["config"]
        source.ensure(config_desc["digest"])
        media.check_config(store.read_json(config_desc["digest"], "image config"), len(manifest["layers"]))
        for layer in manifest["layers"]:
            source.ensure(layer["digest"], layer["size"])
            actual = store.blob_path(layer["digest"]).stat().st_size
            if actual != layer["size"]:
                raise ArchiveError(
                    f"layer {layer['digest'][:19]} has {actual} bytes, the manifest says {layer['size']}"
                )
        if tag is not None:
            refs = [parse_reference(tag)]
        elif isinstance(name, Reference):
            refs = [name]
        elif isinstance(name, str):
            raise ArchiveError(f"the archive names its image only by the tag {name!r}; give a repository with -t REF")
        else:
            raise ArchiveError("the archive does not name its image; give one with -t REF")
        results.append((desc, refs))
    loaded = []
    for desc, refs in results:
        for ref in refs:
            store.set_tag(ref, desc)
        names = [str(r) for r in refs]
        loaded.append(Loaded(store.load_image(desc.digest, names), names))
    return loaded


def _assemble_docker(
    store: Store, manifest_json: bytes, files: dict[str, tuple[str, int]], small: dict[str, bytes], tag: str | None
) -> list[Loaded]:
    entries = media.parse_json(manifest_json, "manifest.json", expect=list)
    found: list[tuple[Descriptor, Reference | str | None]] = []
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("Config"), str)
            or not isinstance(entry.get("Layers"), list)
        ):
            raise ArchiveError(f"manifest.json entry {i} lacks Config or Layers")
        config_name = _norm(entry["Config"])
        config_bytes = small.get(config_name)
        if config_bytes is None:
            raise ArchiveError(f"manifest.json entry {i}: config {entry['Config']!r} is not in the archive")
        config_digest = store.put_bytes(config_bytes)
        layers = []
        for layer_name in entry["Layers"]:
            if not isinstance(layer_name, str) or _norm(layer_name) not in files:
                raise ArchiveError(f"manifest.json entry {i}: layer {layer_name!r} is not in the archive")
            digest, size = files[_norm(layer_name)]
            with store.open_blob(digest) as fh:
                kind = detect_compression(fh.read(4))
            mt = {"gzip": media.OCI_LAYER_GZIP, "zstd": media.OCI_LAYER_ZSTD, "none": media.OCI_LAYER}[kind]
            layers.append({"mediaType": mt, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": {"mediaType": media.OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
        }
        digest, size = store.put_json(manifest)
        desc = Descriptor(media.OCI_MANIFEST, digest, size)
        repo_tags = entry.get("RepoTags") or []
        if tag is None and repo_tags:
            for repo_tag in repo_tags:
                try:
                    found.append((desc, parse_reference(repo_tag)))
                except ReferenceFormatError as exc:
                    raise ArchiveError(f"manifest.json entry {i}: {exc}") from None
        else:
            found.append((desc, None))
    if not found:
        raise ArchiveError("manifest.json lists no images")
    return _finish(store, _Source(store), found, tag)


def load(store: Store, path: str | os.PathLike[str], tag: str | None = None) -> list[Loaded]:
    """Load images from an OCI layout dir, an oci-archive or a docker-archive ("-": stdin)."""
    if tag is not None:
        parse_reference(tag)
    if str(path) == "-":  # docker load < image.tar
        import sys

        with store.writing():
            return _load_tar(store, sys.stdin.buffer, tag)  # type: ignore[arg-type]
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ArchiveError(f"cannot open {path}: {exc.strerror}") from None
    try:
        with store.writing():
            if stat.S_ISDIR(st.st_mode):
                return _load_dir(store, path, tag)
            with open(path, "rb") as fh:
                return _load_tar(store, fh, tag)
    except ArchiveError:
        raise
    except BlobError as exc:
        raise ArchiveError(f"{path}: {exc}") from None


def _load_dir(store: Store, path: Path, tag: str | None) -> list[Loaded]:
    if (path / "index.json").is_file():

        def fetch(digest: str) -> None:
            blob = path / "blobs" / "sha256" / digest.split(":", 1)[1]
            try:
                with open(blob, "rb") as fh:
                    store.ingest(fh, expected_digest=digest)
            except FileNotFoundError:
                raise ArchiveError(f"{path} lacks blob {digest}") from None

        index = media.parse_json((path / "index.json").read_bytes(), f"{path}/index.json")
        return _assemble_oci(store, _Source(store, fetch), index, tag)
    if (path / "manifest.json").is_file():
        raise ArchiveError(f"{path} is an unpacked docker-archive; load the tar file itself")
    raise ArchiveError(f"{path} is not an OCI image layout (no index.json)")


def _load_tar(store: Store, fh: io.BufferedReader, tag: str | None) -> list[Loaded]:
    small: dict[str, bytes] = {}
    files: dict[str, tuple[str, int]] = {}
    links: dict[str, str] = {}
    try:
        stream = decompressed(fh)
        with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
            for member in tf:
                name = _norm(member.name)
                if member.issym() or member.islnk():
                    target = member.linkname
                    links[name] = _norm(posixpath.join(posixpath.dirname(name), target) if member.issym() else target)
                    continue
                if not member.isreg():
                    continue
                data = tf.extractfile(member)
                assert data is not None
                match = _BLOB_NAME.match(name)
                if match:
                    digest = f"sha256:{match.group(1)}"
                    try:
                        store.ingest(data, expected_digest=digest, expected_size=member.size)
                    except BlobError as exc:
                        raise ArchiveError(f"archive member {member.name!r}: {exc}") from None
                    files[name] = (digest, member.size)
                elif name in _SMALL_NAMES or (name.endswith(".json") and member.size <= media.MAX_JSON_BYTES):
                    small[name] = data.read(media.MAX_JSON_BYTES + 1)
                else:
                    files[name] = store.ingest(data, expected_size=member.size)
                tf.members.clear()
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and exc.errno is not None:
            raise
        raise ArchiveError(f"not a readable tar archive: {exc}") from None
    except BlobError as exc:
        raise ArchiveError(f"archive is corrupt: {exc}") from None
    for name, target in links.items():
        if target in files:
            files[name] = files[target]
        elif target in small:
            small[name] = small[target]
    if "index.json" in small and "oci-layout" in small:
        index = media.parse_json(small["index.json"], "index.json")
        return _assemble_oci(store, _Source(store), index, tag)
    if "manifest.json" in small:
        return _assemble_docker(store, small["manifest.json"], files, small, tag)
    raise ArchiveError("not an image archive: it has neither index.json nor manifest.json")


# -- save -------------------------------------------------------------------------


def _tar_info(name: str, size: int = 0, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o755 if is_dir else 0o644
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.uname = info.gname = ""
    return info


def save(store: Store, names: list[str], out: str | os.PathLike[str]) -> list[Image]:
    """Write images as an OCI archive (a tar of an OCI image layout)."""
    images: list[tuple[Image, Reference | None]] = []
    for text in names:
        image = store.resolve(text)
        ref: Reference | None
        try:
            ref = parse_reference(text)
        except ReferenceFormatError:
            ref = None
        if ref is not None and ref.tag is None and ref.digest is None:
            ref = None
        if ref is None and len(image.tags) == 1:
            ref = parse_reference(image.tags[0])
        images.append((image, ref))
    entries = []
    blobs: dict[str, int] = {}
    for image, ref in images:
        annotations = {}
        if ref is not None and ref.tag is not None:
            annotations = {media.ANNOTATION_REF_NAME: ref.tag, media.ANNOTATION_IMAGE_NAME: str(ref)}
        desc = Descriptor(
            image.manifest.get("mediaType", media.OCI_MANIFEST),
            image.manifest_digest,
            store.blob_path(image.manifest_digest).stat().st_size,
            annotations or None,
        )
        entries.append(desc.to_json())
        blobs[image.manifest_digest] = desc.size
        blobs[image.config_digest] = image.manifest["config"]["size"]
        for layer in image.layers:
            blobs[layer["digest"]] = layer["size"]
    index = media.canonical_json({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries})
    layout = b'{"imageLayoutVersion":"1.0.0"}'
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            tf.addfile(_tar_info("blobs", is_dir=True))
            tf.addfile(_tar_info("blobs/sha256", is_dir=True))
            for digest in sorted(blobs):
                path = store.blob_path(digest)
                with store.open_verified(digest) as blob:  # (a damaged blob is never written out)
                    tf.addfile(_tar_info(f"blobs/sha256/{digest.split(':', 1)[1]}", path.stat().st_size), blob)
                    blob.verify()
            tf.addfile(_tar_info("index.json", len(index)), io.BytesIO(index))
            tf.addfile(_tar_info("oci-layout", len(layout)), io.BytesIO(layout))
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArchiveError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return [im for im, _ in images]
