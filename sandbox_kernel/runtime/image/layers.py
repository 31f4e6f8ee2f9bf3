"""Layer tars: safe extraction for overlayfs, and deterministic writing.

Extraction never uses ``tarfile.extractall`` (its filters have been bypassed
more than once). ``tarfile`` only parses headers; every file system change is
made here with ``*at`` calls relative to directory fds that were resolved
inside the layer root with ``openat2(RESOLVE_IN_ROOT)``, so a symlink planted
by the layer can never lead a write outside it. Rules, each with a name that
appears in the error:

    dotdot          a name or hardlink target with a ``..`` component
    path-length     a path over ``limits.max_path`` or a component over 255 bytes
    entries         more than ``limits.max_entries`` entries
    bytes           more file content than ``limits.max_bytes``
    hardlink-scope  a hardlink whose target is not an earlier entry of the layer
    whiteout        ``.wh.`` alone, ``.wh..``/``.wh...``, or an opaque marker for ``/``
    parent          a parent that is not a directory (or a dangling symlink, a loop)
    owner           a uid or gid outside 0..2^32-2
    xattr           an allowed xattr the file system refuses (too large)
    type            a tar entry type we do not support (unknown)
    corrupt         a stream that does not decompress or parse, or the wrong diff id

Device nodes (character and block) are skipped, never made, and hard links to
them with them (as docker and podman unpack in a user namespace): images made
from a root file system carry /dev's nodes, and a container's /dev is the
runtime's own. Sparse files (GNU tar ``--sparse``, in each of its formats) are
made sparse again. A whiteout below a symlink or file of its own layer is moot
(skipped, never followed). Setuid and setgid bits of non-directories are removed unless ``trusted``;
``security.capability`` xattrs likewise; ``trusted.*`` xattrs are never applied.

With an id map (idmap.py) a layer is unpacked as containers with that map
see it: owner N becomes host id BASE+N (an owner the map does not have is
refused, rule ``owner``), and directories the layer does not name are made
for the container's root. Written back (``write_layer`` with the same map),
owners are the container's again, so a snapshot does not depend on the map.

The work is in three rooms: ``compression.py`` (detect, decompress ahead in a
thread, a reproducible gzip), ``extract.py`` (the rules above, applied as the
tar streams in) and ``write.py`` (a tree to a reproducible tar), over the
constants of ``layerformat.py``. This module gives the names callers use.
"""

from __future__ import annotations

from .compression import decompressed, detect_compression, gzip_writer_id
from .extract import ExtractLimits, ExtractResult, _FastTarInfo, apply_layer, extract_layer, split_name
from .layerformat import CHUNK, WHITEOUT_OPAQUE, WHITEOUT_PREFIX, Compression
from .write import WrittenLayer, check_size, close_all, iter_tree, lower_fds, write_layer

__all__ = ["CHUNK", "WHITEOUT_OPAQUE", "WHITEOUT_PREFIX", "Compression", "ExtractLimits", "ExtractResult",
           "WrittenLayer", "_FastTarInfo", "apply_layer", "check_size", "close_all", "decompressed",
           "detect_compression", "extract_layer", "gzip_writer_id", "iter_tree", "lower_fds", "split_name",
           "write_layer"]
