"""The image store: an OCI image layout on disk, plus unpacked layers.

    ROOT/
      oci-layout, index.json      an OCI image layout; index.json holds the tags
                                  (annotation org.opencontainers.image.ref.name
                                  = the full reference, docker.io/library/x:y)
      blobs/sha256/HEX            content-addressed blobs
      layers/HEX[-trusted][-mUID-GID][-userns[1]]/
                                  each layer unpacked once per id map, an overlay
                                  lowerdir: with its owners as the host sees them in
                                  containers whose root is host UID:GID (idmap.py);
                                  without the suffix, with the layer's own owners;
                                  -userns: unpacked in the user namespace of a user
                                  who is not root (inside.py); -userns1: one that
                                  maps one id
      l/SHORT -> ../layers/NAME   short names for overlay's options (a deep chain of snapshots)
      tmp/                        writes in flight
      locks/                      flock files

Crash safety comes from ordering: a blob appears under its digest only by
``rename`` after it was fsynced and its digest checked; an unpacked layer only
by ``rename`` of a fully extracted directory; ``index.json`` is replaced by
``rename`` and names only manifests whose blobs are all present. A process
killed at any point leaves at most files in ``tmp/``, which ``prune`` removes.

Concurrency: writers (import, unpack) hold ``locks/gc`` shared, ``prune``
holds it exclusive; read-modify-write of ``index.json`` holds ``locks/index``.

Privacy: the store is its owner's alone. Every directory is 0700 and every
file the store writes 0600, whatever the umask; a store an earlier version
left open is tightened when it is first opened. No other user can list it,
read a blob or a container's files, run what a container made, or take a
lock. A store that another user owns, or that a directory another user may
write could swap, is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from .. import idmap as idmap_mod
from .. import userns_keeper
from ..errors import (
    BlobError,
    ImageInUse,
    ImageNotFound,
    LayerError,
    ReferenceFormatError,
    StoreError,
    UserNamespaceError,
)
from ..fsutil import private_dir, remove_quietly, unsafe_ancestor
from . import media

if TYPE_CHECKING:  # the extractor is imported when a layer is unpacked, not by every command
    from ..idmap import IdMap
    from .layers import ExtractLimits, ExtractResult
from .ref import Reference, digest_hex, looks_like_id, parse_reference, validate_digest

CHUNK = 1 << 20
DEFAULT_MAP = "default"  # the id map of this caller's containers (idmap.default), for layer_dir and unpack
ROOTLESS_SUFFIX = "-userns"  # a layer unpacked in the namespace of a user who is not root (inside.py)
PRIVATE_DIRS = ("blobs", "blobs/sha256", "layers", "l", "tmp", "locks", "containers", "containers/names",
                "networks")


def default_root() -> Path:
    """``$SANDBOX_KERNEL_ROOT``, else the system default (as root) or the per-user one."""
    env = os.environ.get("SANDBOX_KERNEL_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/sandbox-kernel")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "sandbox-kernel"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass
class Image:
    """One image in the store, as the frontends see it."""

    manifest_digest: str
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    tags: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """Docker's image id: the config digest."""
        return self.config_digest

    @property
    def short_id(self) -> str:
        return digest_hex(self.config_digest)[:12]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest["layers"]

    @property
    def diff_ids(self) -> list[str]:
        return self.config["rootfs"]["diff_ids"]

    @property
    def size(self) -> int:
        """Bytes of the blobs (compressed layers + config), as registries count."""
        return sum(layer["size"] for layer in self.layers) + self.manifest["config"]["size"]

    @property
    def created(self) -> str | None:
        return self.config.get("created")

    @property
    def repo_digests(self) -> list[str]:
        names = {parse_reference(t).name for t in self.tags}
        return sorted(f"{n}@{self.manifest_digest}" for n in names)


class _Tee(io.RawIOBase):
    """Reads ``size`` bytes of ``src`` for the unpacker, writing and hashing them on the way."""

    def __init__(self, src: IO[bytes], out: IO[bytes], size: int, on_bytes: Callable[[int], None] | None):
        super().__init__()
        self.src = src
        self.out = out
        self.size = size
        self.on_bytes = on_bytes
        self.sha = hashlib.sha256()
        self.count = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: max(0, self.size - self.count)]
        if not view:
            return 0
        try:
            readinto = getattr(self.src, "readinto", None)
            if readinto is not None:  # straight into the caller's buffer: one copy less per byte
                n = readinto(view) or 0
            else:
                data = self.src.read(len(view))
                n = len(data)
                view[:n] = data
        except BaseException as exc:
            self.error = exc  # the unpacker sees a broken stream; the caller raises this instead
            raise
        chunk = view[:n]
        self.sha.update(chunk)
        self.out.write(chunk)
        self.count += n
        if self.on_bytes is not None and n:
            self.on_bytes(n)
        return n

    def drain(self) -> None:
        buffer = bytearray(CHUNK)
        while self.readinto(buffer):
            pass


def hash_file(path: str | os.PathLike[str]) -> str:
    """``sha256:HEX`` of a file's content, read in chunks."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


_LAYER_NAME = re.compile(r"\A([0-9a-f]{64})(-trusted)?(?:-m(\d+)-(\d+))?(" + ROOTLESS_SUFFIX + r"1?)?\Z")


def parse_layer_name(name: str) -> tuple[str, bool, IdMap | None, bool] | None:
    """What :meth:`Store.layer_dir` put in a layer directory's name: (diff id, trusted, id map, unpacked in a
    user's namespace); None for a name it does not make."""
    m = _LAYER_NAME.match(name)
    if m is None:
        return None
    idmap = idmap_mod.IdMap(int(m.group(3)), int(m.group(4))) if m.group(3) is not None else None
    return f"sha256:{m.group(1)}", m.group(2) is not None, idmap, m.group(5) is not None


def corrupt_blob(digest: str, actual: str) -> BlobError:
    return BlobError(f"blob {digest[:19]} of the store is corrupt (its content hashes to {actual[:19]}): "
                     "`sandbox-kernel check --repair` removes it; then pull or load the image again")


class VerifiedBlob(io.RawIOBase):
    """A stored blob read through a hash: :meth:`verify` raises if what was read is not what its digest says."""

    def __init__(self, fh: BinaryIO, digest: str):
        self.fh, self.digest, self.sha = fh, digest, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.fh.readinto(buffer)
        self.sha.update(memoryview(buffer)[:n])
        return n

    def verify(self) -> None:
        while chunk := self.fh.read(CHUNK):  # (a reader that stopped at the size it was told: the rest counts)
            self.sha.update(chunk)
        actual = f"sha256:{self.sha.hexdigest()}"
        if actual != self.digest:
            raise corrupt_blob(self.digest, actual)

    def close(self) -> None:
        self.fh.close()
        super().close()


def writer_alive(name: str) -> bool:
    """Whether the process that named a ``tmp/`` entry (``PID-...``, see ``Store._tmp_path``) is still alive."""
    pid = name.split("-", 1)[0]
    return pid.isdigit() and (int(pid) == os.getpid() or os.path.exists(f"/proc/{pid}"))


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # gone (prune removes the links of layers it removes)
        return None


def _publish_dir(tmp: Path, target: Path) -> None:
    """An unpacked layer becomes visible by rename; if another process got there first, ours goes."""
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        remove_quietly(tmp)


def _unpack_inside(tmp: str, target: str, diff_id: str, limits: ExtractLimits, single_id: bool,
                   blob_fd: int) -> ExtractResult:
    """A layer of a user who is not root, unpacked in its user namespace (inside.py): owners as the image
    says, so ids of the user's range on the host (``single_id``: a namespace of one id, where other owners
    stay root's); opaque directories in the form overlay reads there (``userxattr``). Published by rename
    there too (its top directory may be an id of the range's)."""
    from .layers import extract_layer

    with os.fdopen(os.dup(blob_fd), "rb") as fh:
        result = extract_layer(fh, tmp, expected_diff_id=diff_id, limits=limits, whiteouts="userxattr",
                               chown="mapped" if single_id else True)
    _publish_dir(Path(tmp), Path(target))
    return result


def _create_private(path: Path) -> BinaryIO:
    """A new file only its owner may read or write (0600 whatever the umask), open for writing."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "wb")


def _tighten(root: Path) -> None:
    """Close a store an earlier version left readable by others: directories 0700, files 0600.

    The root is done last, so that an interrupted pass is done again on the next open.
    """
    def chmod(path: Path, mode: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            if not path.is_symlink():
                os.chmod(path, mode)

    for sub in PRIVATE_DIRS:
        chmod(root / sub, 0o700)
    for name in ("index.json", "oci-layout"):
        chmod(root / name, 0o600)
    for folder in ("blobs/sha256", "locks"):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(root / folder):
                chmod(Path(entry.path), 0o600)
    for folder in ("containers", "networks"):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(root / folder):
                if entry.is_dir(follow_symlinks=False):
                    chmod(Path(entry.path), 0o700)
                    for inner in os.scandir(entry.path):
                        if inner.is_file(follow_symlinks=False):
                            chmod(Path(inner.path), 0o600)
    os.chmod(root, 0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store_error(exc: OSError, doing: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"{doing}: no space left on the device holding the store")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"{doing}: permission denied ({exc.filename or ''})")
    return StoreError(f"{doing}: {exc.strerror or exc}")


class Store:
    """Content-addressed images on disk; safe for concurrent processes."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root) if root is not None else default_root()
        self._images: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}
        self._tags_cache: tuple[tuple[int, int, int], dict[str, str]] | None = None
        self._links: dict[str, str] = {}  # layer dir name -> its short link's name (short_links)
        self._idmap: tuple[IdMap | None] | None = None
        try:
            self._open_private()
            for sub in ("blobs", "blobs/sha256", "layers", "tmp", "locks"):
                private_dir(self.root / sub)
            layout = self.root / "oci-layout"
            if not layout.exists():
                self._atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
            if not (self.root / "index.json").exists():
                with self._lock("index"):
                    if not (self.root / "index.json").exists():
                        self._write_index([])
        except OSError as exc:
            raise _store_error(exc, f"cannot open the store at {self.root}") from None

    def _open_private(self) -> None:
        """The root exists, is ours, cannot be swapped by another user, and is 0700 (tightened if it was not)."""
        why = unsafe_ancestor(self.root, writable_self=True)
        if why is not None:
            raise StoreError(f"refusing the store at {self.root}: {why}, so another user could replace it; "
                             "choose a directory that only you (or root) can change")
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            self.root.mkdir(mode=0o700, parents=True)
            st = os.stat(self.root)
        if st.st_uid != os.geteuid():
            raise StoreError(f"refusing the store at {self.root}: it belongs to uid {st.st_uid}, not to you")
        if st.st_mode & 0o7777 != 0o700:
            _tighten(self.root)

    @property
    def idmap(self) -> IdMap | None:
        """How the ids of this caller's containers map to host ids (idmap.default), None for host ids.

        What layers are unpacked for by default. Without a range (not set up
        yet), layers keep their own owners and containers say what is missing.
        """
        if self._idmap is None:
            try:
                self._idmap = (idmap_mod.default(),)
            except UserNamespaceError:
                self._idmap = (None,)
        return self._idmap[0]

    # -- locks and atomic files ---------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, name: str, shared: bool = False) -> Iterator[None]:
        fd = os.open(self.root / "locks" / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Hold while adding blobs that are not yet tagged: keeps ``prune`` away."""
        return self._lock("gc", shared=True)

    def _tmp_path(self, hint: str = "") -> Path:
        return self.root / "tmp" / f"{os.getpid()}-{os.urandom(6).hex()}{hint}"

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = self._tmp_path(".w")
        try:
            with _create_private(tmp) as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)

    # -- blobs --------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from the store") from None

    def read_blob(self, digest: str, max_size: int = media.MAX_JSON_BYTES) -> bytes:
        """A small blob (a manifest, a config), its digest checked: a damaged one is never used."""
        with self.open_blob(digest) as fh:
            data = fh.read(max_size + 1)
        if len(data) > max_size:
            raise BlobError(f"blob {digest} is larger than {max_size} bytes")
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise corrupt_blob(digest, actual)
        return data

    def open_verified(self, digest: str) -> VerifiedBlob:
        """A blob to copy out whole (``save``): :meth:`VerifiedBlob.verify` after the last byte."""
        return VerifiedBlob(self.open_blob(digest), digest)

    def read_json(self, digest: str, what: str) -> dict[str, Any]:
        return media.parse_json(self.read_blob(digest), f"{what} {digest[:19]}")

    def ingest(
        self,
        src: IO[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        max_size: int | None = None,
    ) -> tuple[str, int]:
        """Copy a stream into the store as a blob; return ``(digest, size)``.

        The digest is checked before the blob becomes visible; a mismatch or a
        short stream raises :class:`BlobError` and leaves nothing behind.
        """
        if expected_digest is not None:
            validate_digest(expected_digest)
            if self.has_blob(expected_digest):
                # Drain so that callers reading a tar stream stay in step.
                while src.read(CHUNK):
                    pass
                return expected_digest, self.blob_path(expected_digest).stat().st_size
        tmp = self._tmp_path(".blob")
        sha = hashlib.sha256()
        size = 0
        try:
            with _create_private(tmp) as fh:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    sha.update(chunk)
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise BlobError(f"blob is larger than {max_size} bytes")
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            digest = f"sha256:{sha.hexdigest()}"
            if expected_digest is not None and digest != expected_digest:
                raise BlobError(f"blob content has digest {digest}, expected {expected_digest}")
            if expected_size is not None and size != expected_size:
                raise BlobError(f"blob {digest} has {size} bytes, expected {expected_size}")
            os.rename(tmp, self.blob_path(digest))
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _store_error(exc, "cannot write a blob") from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return digest, size

    def ingest_layer(self, src: IO[bytes], digest: str, size: int, diff_id: str, *,
                     on_bytes: Callable[[int], None] | None = None, limits: ExtractLimits | None = None,
                     idmap: IdMap | str | None = DEFAULT_MAP) -> None:
        """Store a layer blob from a stream and unpack it from the same bytes as they come (a pull).

        The blob and the unpacked directory become visible only once the
        blob's digest and size and the layer's diff id are right; anything
        else raises and leaves nothing behind. A wrong digest is reported as
        such even when it first broke the unpacking. Call inside :meth:`writing`.
        """
        from .layers import ExtractLimits, extract_layer

        validate_digest(digest)
        mapping = self._map(idmap)
        target = self.layer_dir(diff_id, idmap=mapping)
        tmp_blob = self._tmp_path(".blob")
        tmp_layer = self._tmp_path(".layer")
        try:
            with _create_private(tmp_blob) as out:
                tee = _Tee(src, out, size, on_bytes)
                unpack_error: BaseException | None = None
                if not target.is_dir():
                    try:
                        extract_layer(tee, tmp_layer, expected_diff_id=diff_id, limits=limits or ExtractLimits(),
                                      idmap=mapping)
                    except Exception as exc:
                        unpack_error = exc
                if tee.error is not None:  # the download failed: that is the error, not what it did to the tar
                    raise tee.error
                tee.drain()  # what the tar did not need (the compressor's trailer): it is in the digest too
                actual = f"sha256:{tee.sha.hexdigest()}"
                if actual != digest or tee.count != size:
                    raise BlobError(f"layer {digest[:19]}: the registry sent {tee.count} bytes with digest "
                                    f"{actual[:19]}, not the {size} bytes of {digest[:19]}; nothing was stored")
                if unpack_error is not None:
                    raise unpack_error
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp_blob, self.blob_path(digest))
            if tmp_layer.exists():
                _publish_dir(tmp_layer, target)
        except OSError as exc:
            raise _store_error(exc, f"cannot store layer {digest[:19]}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp_blob.unlink()
            if tmp_layer.exists():
                remove_quietly(tmp_layer)

    def adopt(self, tmp: Path, digest: str) -> None:
        """Move in a blob this process wrote (and fsynced) in ``tmp/`` and hashed as it wrote: no second copy."""
        validate_digest(digest)
        if tmp.parent != self.root / "tmp":
            raise StoreError(f"{tmp} is not in the store's tmp/")
        try:
            if self.has_blob(digest):
                tmp.unlink()  # the same bytes are here already
                return
            os.rename(tmp, self.blob_path(digest))
            _fsync_dir(self.blob_path(digest).parent)
        except OSError as exc:
            raise _store_error(exc, f"cannot store blob {digest[:19]}") from None

    def put_bytes(self, data: bytes) -> str:
        import io

        digest, _ = self.ingest(io.BytesIO(data))
        return digest

    def put_json(self, doc: Any) -> tuple[str, int]:
        data = media.canonical_json(doc)
        return self.put_bytes(data), len(data)

    # -- index (tags) -------------------------------------------------------------

    def _read_index(self) -> list[dict[str, Any]]:
        try:
            data = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _store_error(exc, "cannot read the store index") from None
        doc = media.parse_json(data, f"store index {self.root / 'index.json'}")
        entries = doc.get("manifests", [])
        if not isinstance(entries, list):
            raise StoreError(f"store index {self.root / 'index.json'} is damaged: 'manifests' is not a list")
        return entries

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries}
        self._atomic_write(self.root / "index.json", json.dumps(doc, indent=2, sort_keys=True).encode())

    def tags(self) -> dict[str, str]:
        """``{full reference: manifest digest}`` for every tag in the store."""
        # index.json is only ever replaced by rename: the same inode, size and time mean the same tags
        try:
            st = os.stat(self.root / "index.json")
            key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and self._tags_cache is not None and self._tags_cache[0] == key:
            return dict(self._tags_cache[1])
        out = {}
        for entry in self._read_index():
            name = (entry.get("annotations") or {}).get(media.ANNOTATION_REF_NAME)
            digest = entry.get("digest")
            if isinstance(name, str) and isinstance(digest, str):
                out[name] = digest
        if key is not None:
            self._tags_cache = (key, dict(out))
        return out

    def set_tag(self, ref: Reference | str, manifest: Descriptor, *, by_digest: bool = False) -> None:
        """Point ``ref`` at a stored manifest (whose blobs must all be present).

        ``by_digest``: ``ref`` is ``name@digest`` of that very manifest (a pull
        by digest): recorded so that the image is kept, shown without a tag.
        """
        ref = parse_reference(str(ref)) if isinstance(ref, str) else ref
        if by_digest:
            if ref.digest != manifest.digest or ref.tag is not None:
                raise ReferenceFormatError(f"{ref} does not name manifest {manifest.digest}")
        elif ref.tag is None:
            raise ReferenceFormatError(f"cannot tag with a digest reference {ref}")
        self._check_complete(manifest.digest)
        name = str(ref)
        try:
            with self._lock("index"):
                entries = [
                    e for e in self._read_index() if (e.get("annotations") or {}).get(media.ANNOTATION_REF_NAME) != name
                ]
                entries.append(
                    Descriptor(
                        manifest.media_type, manifest.digest, manifest.size, {media.ANNOTATION_REF_NAME: name}
                    ).to_json()
                )
                entries.sort(key=lambda e: e["annotations"][media.ANNOTATION_REF_NAME])
                self._write_index(entries)
        except OSError as exc:
            raise _store_error(exc, f"cannot tag {ref.familiar()}") from None

    def put_image(self, config: dict[str, Any], layers: list[dict[str, Any]], ref: str | None = None) -> Descriptor:
        """Write an image's config and manifest over layer blobs already stored; tag it.

        ``layers`` are descriptors (mediaType, digest, size) in bottom-up order.
        Call inside :meth:`writing` together with the ingest of the layers.
        """
        config_digest, config_size = self.put_json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": {"mediaType": media.OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers,
        }
        digest, size = self.put_json(manifest)
        desc = Descriptor(media.OCI_MANIFEST, digest, size)
        if ref is not None:
            self.set_tag(ref, desc)
        return desc

    def tag(self, source: str, target: str) -> Reference:
        """``docker tag SOURCE TARGET``: give the image ``source`` resolves to another name."""
        image = self.resolve(source)
        ref = parse_reference(target)
        if ref.digest is not None:
            raise ReferenceFormatError(f"cannot tag with a digest reference: {target}")
        size = self.blob_path(image.manifest_digest).stat().st_size
        self.set_tag(ref, Descriptor(image.manifest.get("mediaType", media.OCI_MANIFEST), image.manifest_digest, size))
        return ref

    def remove_tags(self, names: Iterable[str]) -> None:
        drop = set(names)
        try:
            with self._lock("index"):
                entries = [
                    e
                    for e in self._read_index()
                    if (e.get("annotations") or {}).get(media.ANNOTATION_REF_NAME) not in drop
                ]
                self._write_index(entries)
        except OSError as exc:
            raise _store_error(exc, "cannot remove tags") from None

    def _check_complete(self, manifest_digest: str) -> None:
        manifest = media.check_manifest(self.read_json(manifest_digest, "manifest"))
        for desc in [manifest["config"], *manifest["layers"]]:
            if not self.has_blob(desc["digest"]):
                raise BlobError(f"image {manifest_digest[:19]} is incomplete: blob {desc['digest']} is missing")

    # -- images -------------------------------------------------------------------

    def load_image(self, manifest_digest: str, tags: list[str] | None = None) -> Image:
        # Blobs never change under their digest, so a manifest read once (and checked) is kept.
        cached = self._images.get(manifest_digest)
        if cached is None or not self.has_blob(manifest_digest):
            manifest = media.check_manifest(self.read_json(manifest_digest, "manifest"))
            config_digest = manifest["config"]["digest"]
            config = media.check_config(self.read_json(config_digest, "image config"), len(manifest["layers"]))
            cached = self._images[manifest_digest] = (manifest, config_digest, config)
        manifest, config_digest, config = cached
        return Image(manifest_digest, manifest, config_digest, config, sorted(tags or []))

    def images(self) -> list[Image]:
        """Every tagged image, one entry per manifest, newest first."""
        by_digest: dict[str, list[str]] = {}
        for name, digest in self.tags().items():
            by_digest.setdefault(digest, []).append(name)
        out = []
        for digest, names in by_digest.items():
            try:
                out.append(self.load_image(digest, names))
            except BlobError:
                continue  # damaged: `images` still lists the rest; `inspect` says why
        out.sort(key=lambda im: (im.created or "", im.manifest_digest), reverse=True)
        return out

    def resolve(self, text: str) -> Image:
        """Find an image by reference (``busybox``, ``x:tag``, ``x@sha256:…``) or id prefix."""
        tags = self.tags()
        ref: Reference | None
        try:
            ref = parse_reference(text)
        except ReferenceFormatError:
            ref = None
        if ref is not None:
            if ref.digest is not None:
                names = [n for n, d in tags.items() if d == ref.digest and parse_reference(n).name == ref.name]
                if names or (ref.tag is None and self.has_blob(ref.digest)):
                    try:
                        return self.load_image(ref.digest, names or [n for n, d in tags.items() if d == ref.digest])
                    except BlobError:
                        pass
            elif str(ref) in tags:
                digest = tags[str(ref)]
                return self.load_image(digest, [n for n, d in tags.items() if d == digest])
        if looks_like_id(text):
            hexpart = text.split(":", 1)[-1]
            matches = {
                im.manifest_digest: im
                for im in self.images()
                if digest_hex(im.config_digest).startswith(hexpart)
                or digest_hex(im.manifest_digest).startswith(hexpart)
            }
            if len(matches) == 1:
                return next(iter(matches.values()))
            if len(matches) > 1:
                raise ImageNotFound(f"image id prefix {text!r} is ambiguous: {len(matches)} images match")
        if ref is None:
            parse_reference(text)  # re-raise the format error for the user
        raise ImageNotFound(f"no such image: {text}")

    # -- unpacked layers ----------------------------------------------------------

    def _map(self, idmap: IdMap | str | None) -> IdMap | None:
        return self.idmap if idmap == DEFAULT_MAP else idmap  # type: ignore[return-value]

    def layer_dir(self, diff_id: str, trusted: bool = False, *, idmap: IdMap | str | None = DEFAULT_MAP) -> Path:
        """Where layer ``diff_id`` is unpacked for containers with ``idmap`` (None: with the layer's own owners)."""
        mapping = self._map(idmap)
        suffix = ("-trusted" if trusted else "") + (mapping.suffix if mapping is not None else "")
        if userns_keeper.rootless():  # owners of the user's range, opaque dirs as user.overlay.* xattrs
            suffix += ROOTLESS_SUFFIX + ("1" if userns_keeper.ensure().single_id else "")
        return self.root / "layers" / (digest_hex(diff_id) + suffix)

    def unpack(self, image: Image, *, trusted: bool = False, limits: ExtractLimits | None = None,
               idmap: IdMap | str | None = DEFAULT_MAP) -> list[Path]:
        """Unpack every layer of ``image`` that is not unpacked yet for containers with ``idmap``.

        Returns the layer directories bottom first (reverse them for overlay's
        ``lowerdir``). Each is verified against the config's diff id.
        """
        mapping = self._map(idmap)
        dirs = [self.layer_dir(diff_id, trusted, idmap=mapping) for diff_id in image.diff_ids]
        if all(target.is_dir() for target in dirs):  # a layer dir appears whole (rename): no lock needed to see it
            return dirs
        dirs = []
        with self.writing():
            for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
                target = self.layer_dir(diff_id, trusted, idmap=mapping)
                if not target.is_dir():
                    self._unpack_one(desc, diff_id, target, trusted, limits, mapping)
                dirs.append(target)
        return dirs

    def unpack_layer(self, desc: dict[str, Any], diff_id: str) -> None:
        """Unpack one stored layer blob if its tree is not here yet (call inside :meth:`writing`)."""
        target = self.layer_dir(diff_id)
        if not target.is_dir():
            self._unpack_one(desc, diff_id, target, False, None, self.idmap)

    def unpack_to(self, desc: dict[str, Any], diff_id: str, target: Path, *, trusted: bool = False,
                  idmap: IdMap | None = None) -> None:
        """Unpack one stored layer blob into ``target`` (which must not exist), as :meth:`unpack` would for a
        layer directory of that name (``check`` unpacks a layer afresh to compare, or to restore one)."""
        with self.writing():
            self._unpack_one(desc, diff_id, target, trusted, None, idmap)

    def tmp_dir(self, hint: str = "") -> Path:
        """A new directory in ``tmp/``, named by this process (``prune`` removes it if the process dies)."""
        path = self._tmp_path(hint)
        path.mkdir(mode=0o700)
        return path

    def short_links(self, layer_dirs: Iterable[str | os.PathLike[str]]) -> tuple[Path, tuple[str, ...]]:
        """Short names for layer dirs, as symlinks in ``l/`` (docker's overlay2 way): ``(l/, names)``.

        overlay's mount options must fit in one page: the store's full layer
        paths allow about 40 layers, 17-character names relative to ``l/``
        over 200 (a deep chain of snapshots).
        """
        links = self.root / "l"
        names = []
        for layer in layer_dirs:
            target = f"../layers/{Path(layer).name}"
            known = self._links.get(Path(layer).name)
            if known is not None and _readlink(links / known) == target:  # one syscall on a start's path
                names.append(known)
                continue
            private_dir(links)
            # (a hash of the whole name: a layer unpacked for several id maps has names that share a prefix)
            full = hashlib.sha256(Path(layer).name.encode()).hexdigest()
            for length in (16, 24, 32, 64):
                name = full[:length]
                link = links / name
                try:
                    os.symlink(target, link)
                except FileExistsError:
                    if os.readlink(link) != target:
                        continue  # another layer's prefix: a longer name
                except OSError as exc:
                    raise _store_error(exc, "cannot link a layer") from None
                names.append(name)
                self._links[Path(layer).name] = name
                break
        return links, tuple(names)

    @contextlib.contextmanager
    def blob_lock(self, digest: str) -> Iterator[None]:
        """Held while a blob is fetched: a second process fetching it waits, then finds it stored."""
        with self._lock(f"blob-{digest_hex(digest)[:2]}"):  # 256 lock files at most
            yield

    def _unpack_one(
        self, desc: dict[str, Any], diff_id: str, target: Path, trusted: bool, limits: ExtractLimits | None,
        idmap: IdMap | None,
    ) -> ExtractResult:
        from .layers import ExtractLimits, extract_layer

        tmp = self._tmp_path(".layer")
        try:
            with self.open_blob(desc["digest"]) as fh:
                if userns_keeper.rootless():  # (its owners are ids of the user's range: set inside)
                    from .. import inside

                    return inside.call(_unpack_inside, str(tmp), str(target), diff_id, limits or ExtractLimits(),
                                       target.name.endswith(ROOTLESS_SUFFIX + "1"), fds=(fh.fileno(),))
                result = extract_layer(fh, tmp, expected_diff_id=diff_id, trusted=trusted,
                                       limits=limits or ExtractLimits(), idmap=idmap)
            _publish_dir(tmp, target)
        except OSError as exc:
            remove_quietly(tmp)
            raise _store_error(exc, f"cannot unpack layer {desc['digest'][:19]}") from None
        except LayerError:
            remove_quietly(tmp)
            self._check_digest(desc["digest"])  # a layer damaged in the store is said to be that, not a bad image
            raise
        except BaseException:
            remove_quietly(tmp)
            raise
        return result

    def _check_digest(self, digest: str) -> None:
        """Raise the store's corrupt-blob error if blob ``digest`` does not hash to its name."""
        try:
            actual = hash_file(self.blob_path(digest))
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing from the store") from None
        if actual != digest:
            raise corrupt_blob(digest, actual)

    # -- removal and garbage collection ---------------------------------------------

    def reachable(self, manifest_digests: Iterable[str]) -> tuple[set[str], set[str]]:
        """Blobs and diff ids reachable from manifests (skipping damaged ones)."""
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        for digest in manifest_digests:
            blobs.add(digest)
            try:
                image = self.load_image(digest)
            except (BlobError, ReferenceFormatError):
                continue
            blobs.add(image.config_digest)
            blobs.update(layer["digest"] for layer in image.layers)
            diff_ids.update(image.diff_ids)
        return blobs, diff_ids

    def prune(self, keep: Iterable[str] = ()) -> dict[str, int]:
        """Remove what no tag (nor ``keep``, manifest digests) needs.

        Also removes unfinished writes left in ``tmp/`` by killed processes.
        Returns counts and freed bytes.
        """
        removed = {"blobs": 0, "layers": 0, "tmp": 0, "bytes": 0}
        with self._lock("gc"):
            keep = set(keep) | set(self.containers_using())
            blobs, diff_ids = self.reachable(set(self.tags().values()) | keep)
            keep_hex = {digest_hex(b) for b in blobs}
            keep_layers = {digest_hex(d) for d in diff_ids}
            for path in (self.root / "blobs" / "sha256").iterdir():
                if path.name not in keep_hex:
                    removed["bytes"] += path.stat().st_size
                    path.unlink()
                    removed["blobs"] += 1
            for path in (self.root / "layers").iterdir():
                if path.name[:64] not in keep_layers:  # HEX, then -trusted and the id map's suffix
                    remove_quietly(path)
                    removed["layers"] += 1
            if (self.root / "l").is_dir():
                for link in (self.root / "l").iterdir():
                    if not link.exists():  # its layer was removed just now
                        link.unlink(missing_ok=True)
            for path in (self.root / "tmp").iterdir():
                if writer_alive(path.name):
                    continue  # a write in flight: index.json's is made here under the index lock alone, not gc's
                if path.is_dir() and not path.is_symlink():
                    remove_quietly(path)
                else:
                    path.unlink(missing_ok=True)
                removed["tmp"] += 1
        return removed

    def remove_image(self, text: str, *, force: bool = False) -> tuple[list[str], Image]:
        """``rmi``: untag; a bare id removes every tag (``force`` needed if several repos).

        Returns the tags removed and the image. Blobs go on the next ``prune``
        or right away when nothing else uses them.
        """
        image = self.resolve(text)
        tags = self.tags()
        try:
            ref = parse_reference(text)
        except ReferenceFormatError:
            ref = None
        if ref is not None and ref.digest is None and str(ref) in tags:
            names = [str(ref)]
        else:
            names = [n for n, d in tags.items() if d == image.manifest_digest]
            repos = {parse_reference(n).name for n in names}
            if len(repos) > 1 and not force:
                raise StoreError(
                    f"image {image.short_id} is tagged in {len(repos)} repositories; "
                    "remove the tags one by one or use -f"
                )
        remaining = [n for n, d in tags.items() if d == image.manifest_digest and n not in names]
        users = self.containers_using().get(image.manifest_digest, [])
        if users and not remaining and not force:
            raise ImageInUse(f"image {image.short_id} is used by container {users[0][:12]}"
                             f"{f' and {len(users) - 1} more' if len(users) > 1 else ''}: "
                             "remove the container first, or use -f (the image stays until it is gone)")
        self.remove_tags(names)
        return names, image

    def containers_using(self) -> dict[str, list[str]]:
        """``{manifest digest: [container ids]}`` of the containers in ``ROOT/containers``.

        A container needs its image's layers (and, to be committed, its
        manifest) for as long as it exists: ``prune`` keeps them.
        """
        out: dict[str, list[str]] = {}
        from ..record import load

        for config in (self.root / "containers").glob("*/config.json"):
            try:
                record = load(config)
            except StoreError:
                continue
            out.setdefault(record.image_manifest, []).append(record.id)
        return out

    def verify(self) -> list[str]:
        """Problems with tagged images (missing or corrupt blobs); empty when sound."""
        problems = []
        for name, digest in sorted(self.tags().items()):
            try:
                image = self.load_image(digest)
                for layer in image.layers:
                    path = self.blob_path(layer["digest"])
                    if not path.exists():
                        problems.append(f"{name}: layer {layer['digest']} missing")
                        continue
                    if hash_file(path) != layer["digest"]:
                        problems.append(f"{name}: layer {layer['digest']} is corrupt")
            except (BlobError, ReferenceFormatError) as exc:
                problems.append(f"{name}: {exc}")
        return problems
