"""A layer's compression: detected from its first bytes, decompressed (gzip, zstd) ahead in a thread,
read forward only; and a reproducible gzip writer."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import queue
import tarfile
import threading
from typing import IO, TYPE_CHECKING, BinaryIO

from ..errors import LayerError
from .layerformat import (
    CHUNK,
    MAX_HEADER_READ,
    Compression,
)

if TYPE_CHECKING:
    pass


def detect_compression(head: bytes) -> Compression:
    """Tell gzip, zstd and plain tar apart by their magic numbers."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


class _Prefetcher:
    """Decompresses and hashes in a thread while the caller writes files.

    zlib, zstandard and hashlib release the GIL on large buffers, so on two
    cores decompression overlaps with extraction. ``read`` hands out the
    chunks in order; an error in the thread is raised in the caller.
    """

    _END = object()

    def __init__(self, raw: IO[bytes]):
        import queue
        import threading

        self._raw = raw
        self.sha = hashlib.sha256()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="layer-decompress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._raw.read(CHUNK)
                if not data:
                    break
                self.sha.update(data)
                self._queue.put(data)
        except BaseException as exc:  # handed to the reading thread
            self._queue.put(exc)
            return
        self._queue.put(self._END)

    def read(self, size: int = CHUNK) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if item is self._END:
            self._done = True
            return b""
        if isinstance(item, BaseException):
            self._done = True
            if isinstance(item, Exception):  # zlib, isal, zstandard, EOF: the stream is bad
                raise LayerError(f"layer stream is corrupt: {item}", rule="corrupt")
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except Exception:
                pass
        self._thread.join()


class _ForwardReader:
    """The uncompressed tar stream, read forward only, hashed and counted.

    It offers ``tell`` and a forward ``seek`` so that ``tarfile`` can use its
    random-access mode (whose reads copy only what they return) on a stream;
    a backward seek is refused. Every byte passes through the hash once.
    """

    def __init__(self, raw: _Prefetcher, limit: int):
        self._raw = raw
        self._limit = limit
        self.count = 0  # bytes pulled from the decompressor
        self._buf = b""
        self._bpos = 0
        self.offset = 0  # position of the next byte handed out
        self.head = b""  # the first record, to tell an all-zero (empty) tar from garbage

    def _fill(self, size: int) -> bytes:
        data = self._raw.read(size)
        if data:
            if self.count < tarfile.RECORDSIZE:
                self.head += data[: tarfile.RECORDSIZE - self.count]
            self.count += len(data)
            if self.count > self._limit:
                raise LayerError("uncompressed layer exceeds the size limit", rule="bytes")
        return data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        if size > MAX_HEADER_READ:
            # Only headers come through here (file data goes through copy_to): a
            # pax or GNU long-name header claiming gigabytes is an attack on memory.
            raise LayerError(f"a tar header block of {size} bytes is too large", rule="corrupt")
        avail = len(self._buf) - self._bpos
        if size <= avail:
            out = self._buf[self._bpos : self._bpos + size]
            self._bpos += size
            self.offset += size
            return out
        parts = [self._buf[self._bpos :]] if avail else []
        need = size - avail
        self._buf, self._bpos = b"", 0
        while need > 0:
            chunk = self._fill(max(need, CHUNK))
            if not chunk:
                break
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._buf, self._bpos = chunk, need
                need = 0
            else:
                parts.append(chunk)
                need -= len(chunk)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(out)
        return out

    def copy_to(self, fd: int, size: int) -> bool:
        """Write the next ``size`` bytes to ``fd`` straight from the buffer; False at EOF."""
        while size:
            if self._bpos >= len(self._buf):
                self._buf, self._bpos = self._fill(CHUNK), 0
                if not self._buf:
                    return False
            view = memoryview(self._buf)[self._bpos : self._bpos + size]
            n = len(view)
            while view:
                view = view[os.write(fd, view) :]
            self._bpos += n
            self.offset += n
            size -= n
        return True

    def tell(self) -> int:
        return self.offset

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.offset
        elif whence != 0:
            raise LayerError("layer stream cannot seek from its end", rule="corrupt")
        if pos < self.offset:
            raise LayerError("layer stream would need to seek backwards", rule="corrupt")
        while self.offset < pos:
            if not self.read(min(CHUNK, pos - self.offset)):
                break
        return self.offset

    def drain(self) -> None:
        self._buf, self._bpos = b"", 0
        while self._fill(CHUNK):
            pass


def decompressed(src: BinaryIO) -> IO[bytes]:
    """A readable uncompressed stream over ``src`` (gzip, zstd or plain)."""
    buffered = src if isinstance(src, io.BufferedReader) else io.BufferedReader(src, CHUNK)  # type: ignore[arg-type]
    kind = detect_compression(buffered.peek(4)[:4])
    if kind == "gzip":
        try:  # ISA-L decompresses gzip about 2.5x faster than zlib
            from isal import igzip
        except ImportError:
            return gzip.GzipFile(fileobj=buffered, mode="rb")
        return igzip.IGzipFile(fileobj=buffered, mode="rb")
    if kind == "zstd":
        return _ZstdReader(buffered)
    return buffered


class _ZstdReader:
    """zstd frames one after another; a stream that ends inside a frame is an error.

    The decompressor gets its input a little at a time: one call's output is
    bounded by the blocks that input can hold (at most 128 KiB each), so a
    small compressed chunk cannot become gigabytes in one go (a
    decompression bomb is stopped by the byte cap as it streams).
    """

    SLICE = 2048  # at most about 64 MiB out of one call, even for a stream of tiny RLE blocks

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._dobj = self._new()
        self._in_frame = False
        self._pending = b""

    def read(self, size: int = CHUNK) -> bytes:
        while True:
            if not self._pending:
                self._pending = self._raw.read(CHUNK)
                if not self._pending:
                    if self._in_frame:
                        raise EOFError("zstd stream ends inside a frame")
                    return b""
            data, self._pending = self._pending[:self.SLICE], self._pending[self.SLICE:]
            out = []
            while data:
                self._in_frame = True
                out.append(self._dobj.decompress(data))
                if self._dobj.eof:
                    self._in_frame = False
                    data = self._dobj.unused_data
                    self._dobj = self._new()
                else:
                    data = b""
            chunk = b"".join(out)
            if chunk:
                return chunk


def _gzip_writer(sink: IO[bytes]) -> IO[bytes]:
    """ISA-L at level 2 when it is installed, else zlib at level 6; a fixed header either way (no name, time 0).

    Measured on 50 MB: random data 84 ms with ISA-L level 2 against 1,021 ms with
    zlib level 6, text 19 ms against 273 ms, at the same ratio. The bytes (and so
    a layer's digest) are the same wherever the same ISA-L version writes them.
    """
    try:
        from isal import igzip
    except ImportError:
        return gzip.GzipFile(filename="", fileobj=sink, mode="wb", mtime=0, compresslevel=6)  # type: ignore[return-value]
    return igzip.IGzipFile(filename="", fileobj=sink, mode="wb", mtime=0, compresslevel=2)  # type: ignore[return-value]


def gzip_writer_id() -> str:
    """Which compressor writes gzip layers here: part of what makes a written layer's digest."""
    try:
        import isal
    except ImportError:
        return f"zlib level 6, {_Background.BATCH}-byte writes"
    # (how the stream is cut into writes changes ISA-L's bytes too: _Background's batches are part of it)
    return f"isa-l {getattr(isal, '__version__', '?')} level 2, {_Background.BATCH}-byte writes"


class _Background(io.RawIOBase):
    """Writes to ``target`` from a second thread, in batches of about 1 MiB.

    The compressor and the compressed digest then run beside the tar's making
    and its own digest (ISA-L and hashlib release the GIL), on two cores.
    An error over there comes back here, at the next write or at :meth:`finish`.
    """

    BATCH = 1 << 20

    def __init__(self, target: IO[bytes]):
        super().__init__()
        self._target = target
        self._buf = bytearray()
        self._queue: queue.Queue[bytearray | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="layer-compress", daemon=True)
        self._thread.start()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        if self._error is not None:
            raise self._error
        self._buf += data
        if len(self._buf) >= self.BATCH:
            self._queue.put(self._buf)
            self._buf = bytearray()
        return len(data)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._target.write(item)
                except BaseException as exc:
                    self._error = exc

    def finish(self) -> None:
        """Everything written through; raises what went wrong in the thread."""
        if self._buf:
            self._queue.put(self._buf)
            self._buf = bytearray()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        self._error = self._error or RuntimeError("abandoned")
        self._queue.put(None)
        self._thread.join()
