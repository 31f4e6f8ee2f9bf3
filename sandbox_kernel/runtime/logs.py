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
from collections.abc import Iterator
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
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        offset = 0
        while offset + _HEADER.size <= len(data):
            stream, length = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            if stream not in (STDOUT, STDERR) or start + length > len(data):
                break
            yield stream, data[start:start + length]
            offset = start + length
