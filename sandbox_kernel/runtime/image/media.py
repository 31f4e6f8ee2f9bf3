"""Media types and the small JSON documents of OCI and Docker images."""

from __future__ import annotations

import json
import platform as _platform
from typing import Any

from ..errors import BlobError
from .ref import validate_digest

OCI_LAYOUT = "application/vnd.oci.layout.header.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
LAYER_TYPES = {
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST,
    OCI_LAYER_NONDIST_GZIP,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

MAX_JSON_BYTES = 8 << 20

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_platform() -> dict[str, str]:
    """The OCI platform of this machine (``linux``/``amd64``...)."""
    machine = _platform.machine()
    plat = {"os": "linux", "architecture": _ARCH.get(machine, machine)}
    if machine == "armv7l":
        plat["variant"] = "v7"
    elif machine == "aarch64":
        plat["variant"] = "v8"
    return plat


def platform_matches(candidate: dict[str, Any] | None, wanted: dict[str, str]) -> bool:
    """containers/image's rule, simplified: os and architecture equal; variant if both say one."""
    if not candidate:
        return False
    if candidate.get("os") != wanted["os"] or candidate.get("architecture") != wanted["architecture"]:
        return False
    want_variant = wanted.get("variant")
    have_variant = candidate.get("variant")
    if want_variant and have_variant and have_variant != want_variant:
        # arm64 images are often published without a variant or as v8
        return wanted["architecture"] == "arm64" and have_variant in ("v8", "")
    return True


def parse_json(data: bytes, what: str, expect: type = dict) -> Any:
    """Parse an image JSON document (an object, or ``expect=list``); one-line error on anything odd."""
    if len(data) > MAX_JSON_BYTES:
        raise BlobError(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BlobError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, expect):
        raise BlobError(f"{what} is not a JSON {'object' if expect is dict else 'list'}")
    return doc


def check_descriptor(desc: Any, what: str) -> dict[str, Any]:
    """A descriptor with a valid digest, a non-negative size and a media type."""
    if not isinstance(desc, dict):
        raise BlobError(f"{what}: descriptor is not an object")
    try:
        validate_digest(desc.get("digest"))  # type: ignore[arg-type]
    except Exception:
        raise BlobError(f"{what}: invalid digest {desc.get('digest')!r}") from None
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BlobError(f"{what}: invalid size {size!r}")
    if not isinstance(desc.get("mediaType", ""), str):
        raise BlobError(f"{what}: invalid mediaType")
    return desc


def check_manifest(doc: dict[str, Any], what: str = "manifest") -> dict[str, Any]:
    """Validate an image manifest (and refuse the ambiguous manifest+index, CVE-2021-41190)."""
    if "manifests" in doc:
        raise BlobError(f"{what} has both 'manifests' and image fields: refusing an ambiguous document")
    if doc.get("schemaVersion") != 2:
        raise BlobError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    media = doc.get("mediaType", OCI_MANIFEST)
    if not isinstance(media, str) or media not in MANIFEST_TYPES:
        raise BlobError(f"{what}: not an image manifest (mediaType {media!r})")
    check_descriptor(doc.get("config"), f"{what} config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BlobError(f"{what}: 'layers' is not a list")
    for i, layer in enumerate(layers):
        check_descriptor(layer, f"{what} layer {i}")
        if not isinstance(layer.get("mediaType"), str) or layer["mediaType"] not in LAYER_TYPES:
            raise BlobError(f"{what} layer {i}: unsupported layer type {layer.get('mediaType')!r}")
    return doc


def check_index(doc: dict[str, Any], what: str = "index") -> dict[str, Any]:
    if "layers" in doc or "config" in doc:
        raise BlobError(f"{what} has both 'manifests' and image fields: refusing an ambiguous document")
    if doc.get("schemaVersion") != 2:
        raise BlobError(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise BlobError(f"{what}: 'manifests' is not a list")
    for i, desc in enumerate(manifests):
        check_descriptor(desc, f"{what} entry {i}")
    return doc


def check_config(doc: dict[str, Any], layer_count: int, what: str = "image config") -> dict[str, Any]:
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise BlobError(f"{what}: no rootfs.diff_ids")
    diff_ids = rootfs["diff_ids"]
    if len(diff_ids) != layer_count:
        raise BlobError(f"{what}: {len(diff_ids)} diff ids for {layer_count} layers")
    for d in diff_ids:
        try:
            validate_digest(d)
        except Exception:
            raise BlobError(f"{what}: invalid diff id {d!r}") from None
    if doc.get("config") is not None and not isinstance(doc.get("config"), dict):
        raise BlobError(f"{what}: 'config' is not an object")
    return doc


def canonical_json(doc: Any) -> bytes:
    """The bytes we write for a JSON document we create (stable across runs)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
