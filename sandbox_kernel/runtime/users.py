"""``--user`` as docker reads it: ``name``, ``uid``, ``name:group``, ``uid:gid``, ...

Names are looked up in the image's own ``/etc/passwd`` and ``/etc/group``,
read from the topmost layer that has them, each opened inside its layer
directory (``RESOLVE_IN_ROOT``), so a symlinked ``/etc/passwd`` in an image
cannot make us read a host file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from . import syscalls as sc
from .errors import UsageError

MAX_FILE = 4 << 20


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/root"


def _read_image_file(layer_dirs: list[str], path: str) -> str:
    """The file as the container will see it: the topmost layer wins, a whiteout hides it."""
    for layer in layer_dirs:  # top first
        try:
            root = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fd = sc.openat2(root, path.lstrip("/"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                            sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)
        except FileNotFoundError:
            continue
        except OSError:
            return ""
        finally:
            os.close(root)
        try:
            st = os.fstat(fd)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # an overlay whiteout: deleted above
                return ""
            if not stat.S_ISREG(st.st_mode):
                return ""
            return os.read(fd, MAX_FILE).decode(errors="replace")
        finally:
            os.close(fd)
    return ""


def _entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


_resolved: dict[tuple[str, tuple[str, ...]], User] = {}


def resolve(text: str, layer_dirs: list[str]) -> User:
    """Resolve ``text`` (``user[:group]``) against the image; numeric ids need no entry.

    Unpacked layers never change, so an answer is kept for the process.
    """
    key = (text, tuple(layer_dirs))
    if key not in _resolved:
        _resolved[key] = _resolve(text, layer_dirs)
    return _resolved[key]


def _resolve(text: str, layer_dirs: list[str]) -> User:
    name, _, group = text.partition(":")
    if not name:
        raise UsageError(f"invalid user {text!r}: expected USER[:GROUP]")
    passwd = _entries(_read_image_file(layer_dirs, "/etc/passwd")) if not (name.isdigit() and group) else []
    uid: int | None = int(name) if name.isdigit() else None
    gid: int | None = None
    home = "/root" if uid in (0, None) else "/"
    user_name = None
    for entry in passwd:
        if len(entry) >= 7 and entry[2].isdigit() and entry[3].isdigit():
            if (uid is None and entry[0] == name) or (uid is not None and int(entry[2]) == uid):
                uid, gid, home, user_name = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
                break
    if uid is None:
        raise UsageError(f"unable to find user {name}: no matching entries in the image's /etc/passwd")
    groups_file = _entries(_read_image_file(layer_dirs, "/etc/group"))
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [int(e[2]) for e in groups_file if len(e) >= 3 and e[0] == group and e[2].isdigit()]
            if not found:
                raise UsageError(f"unable to find group {group}: no matching entries in the image's /etc/group")
            gid = found[0]
    if gid is None:
        gid = 0  # docker's choice for a uid with no passwd entry
    extra = []
    if user_name is not None:
        for entry in groups_file:
            if len(entry) >= 4 and entry[2].isdigit() and user_name in entry[3].split(","):
                if int(entry[2]) != gid and int(entry[2]) not in extra:
                    extra.append(int(entry[2]))
    return User(uid, gid, tuple(extra), home)
