"""The layer format's constants, shared by compression, extraction and writing."""

from __future__ import annotations

from typing import Literal

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
MAX_ID = (1 << 32) - 1
MAX_HEADER_READ = 16 << 20
DIR_CACHE = 64  # directory fds kept open: enough for a tar's locality, far below RLIMIT_NOFILE
Compression = Literal["gzip", "zstd", "none"]
WhiteoutMode = Literal["overlay", "userxattr", "apply"]
