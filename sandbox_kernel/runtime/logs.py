"""The size-capped output log of a detached container.

Records are ``stream (1 byte: 1 stdout, 2 stderr) | length (4 bytes, big
endian) | data``, so ``logs`` can give each stream back to its own fd. The log
is two files, ``container.log`` and the older ``container.log.1``: when the
current one would pass half the cap it becomes the old one, so the pair never
holds more than the cap and always holds the newest output.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_MAX_SIZE = 8 << 20
STDOUT, STDERR = 1, 2
_HEADER = struct.Struct(">BI")
LOG_NAME = "container.log"


class LogWriter:
    """Appends records; rotates so that both files together stay under ``max_size``."""

    def __init__(self, directory: Path, max_size: int = DEFAULT_MAX_SIZE):
        self.path = directory / LOG_NAME
        self.old = directory / (LOG_NAME + ".1")
        self.half = max(4096, max_size // 2)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def write(self, stream: int, data: bytes) -> None:
        while data:
            room = self.half - _HEADER.size
            chunk, data = data[:room], data[room:]
            if self.size + _HEADER.size + len(chunk) > self.half:
                self._rotate()
            record = _HEADER.pack(stream, len(chunk)) + chunk
            try:
                os.write(self.fd, record)
            except OSError:
                return  # a full disk loses log output, never the container
            self.size += len(record)

    def _rotate(self) -> None:
        os.close(self.fd)
        try:
            os.replace(self.path, self.old)
        except OSError:
            pass
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def read_log(directory: Path) -> Iterator[tuple[int, bytes]]:
    """Every record still kept, oldest first. A torn last record (a killed writer) is skipped."""
    for path in (directory / (LOG_NAME + ".1"), directory / LOG_NAME):
        yield from read_log_file(path)


def _records(buffer: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete records at the front of ``buffer`` (consumed); a partial one stays for later."""
    while len(buffer) >= _HEADER.size:
        stream, length = _HEADER.unpack_from(buffer, 0)
        if stream not in (STDOUT, STDERR):
            buffer.clear()  # not a log of ours: nothing more to trust
            return
        if len(buffer) < _HEADER.size + length:
            return
        data = bytes(buffer[_HEADER.size:_HEADER.size + length])
        del buffer[:_HEADER.size + length]
        yield stream, data


def follow_log(directory: Path, running: Callable[[], bool], interval: float = 0.05) -> Iterator[tuple[int, bytes]]:
    """``logs -f``: every record kept, then new ones as they are written, until ``running()`` is false.

    Survives rotation: when ``container.log`` becomes ``container.log.1``, the
    open file is read to its end before the new one is opened. A follower more
    than two files behind misses what was rotated away meanwhile (the log is
    capped; docker's json-file log does the same).
    """
    old = directory / (LOG_NAME + ".1")
    if old.exists():
        yield from read_log_file(old)
    path = directory / LOG_NAME
    fh = None
    buffer = bytearray()
    try:
        while True:
            if fh is None:
                try:
                    fh = open(path, "rb")
                except FileNotFoundError:
                    fh = None
            alive = running()  # asked before reading: what was written before it stopped is read
            if fh is not None:
                buffer += fh.read()
                yield from _records(buffer)
                try:
                    rotated = os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    rotated = False
                if rotated:  # ours was renamed container.log.1: finish it, then take the new one
                    ours = os.fstat(fh.fileno()).st_ino
                    buffer += fh.read()
                    yield from _records(buffer)
                    fh.close()
                    fh, buffer = None, bytearray()
                    try:  # rotated twice meanwhile: container.log.1 is a file we have not read
                        if os.stat(old).st_ino != ours:
                            yield from read_log_file(old)
                    except FileNotFoundError:
                        pass
                    continue
            if not alive:
                return
            time.sleep(interval)
    finally:
        if fh is not None:
            fh.close()


def read_log_file(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        buffer = bytearray(path.read_bytes())
    except FileNotFoundError:
        return
    yield from _records(buffer)
