"""Giving a user who is not root a cgroup subtree of its own (``sandbox-kernel system delegate USER``).

On cgroup v1 (and hybrid hosts) a user cannot make cgroups: root makes, once,
``sandbox-kernel-users/UID`` in each controller a user's containers use
(memory, cpu, cpuacct, pids, freezer; not devices, whose rules only root may
write) and gives the user that directory with its ``cgroup.procs`` and
``tasks``. The user then makes its containers' cgroups below it and sets
their limits; the subtree's own limits stay root's (an admin may cap a user
there). Idempotent; ``--remove`` takes the subtrees away again, refused while
the user has processes in them.

On cgroup v2 delegation is the init system's: systemd's ``user@UID.service``
has ``Delegate=yes``, and the runtime finds it (runtime/cgroups.py).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from .cgroups import USERS, V1_DELEGATED_FILES, V1_USER_CONTROLLERS, Hierarchy, discover, v1_mounts
from .errors import CgroupError, UsageError


def _user(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"no such user: {user}") from None


def delegate(user: str, remove: bool = False, hierarchy: Hierarchy | None = None) -> list[Path]:
    """Make (or with ``remove``, take away) ``user``'s subtrees; the directories made or removed."""
    if os.geteuid() != 0:
        raise UsageError("only root can delegate cgroups to a user (sudo sandbox-kernel system delegate USER)")
    entry = _user(user)
    if entry.pw_uid == 0:
        raise UsageError("root needs no delegation: its containers' cgroups are the host's")
    hierarchy = hierarchy or discover(uid=0)
    if hierarchy.driver == "v2":
        raise UsageError("this host has cgroup v2: a user's subtree there is systemd's (user@UID.service with "
                         "Delegate=yes, given to users with a login session or `loginctl enable-linger USER`)")
    changed = []
    subtrees = [mount / USERS / str(entry.pw_uid) for mount in v1_mounts(hierarchy.v1, V1_USER_CONTROLLERS)]
    if remove:
        for subtree in subtrees:  # (all checked before any goes: a refusal leaves the delegation whole)
            _refuse_if_used(subtree)
    for subtree in subtrees:
        try:
            if remove:
                if _remove_tree(subtree):
                    changed.append(subtree)
                try:
                    subtree.parent.rmdir()  # the shared parent goes with the last user
                except OSError:
                    pass
                continue
            subtree.parent.mkdir(mode=0o755, exist_ok=True)
            if not subtree.exists():
                subtree.mkdir()
                changed.append(subtree)
            for name in ("", *V1_DELEGATED_FILES):
                os.chown(subtree / name, entry.pw_uid, entry.pw_gid)
        except OSError as exc:
            raise CgroupError(f"cannot {'remove' if remove else 'make'} {subtree}: {exc.strerror}") from None
    return changed


def _tree(top: Path) -> list[Path]:
    """``top`` and the cgroups below it, deepest first (none when it is not there)."""
    if not top.exists():
        return []
    below = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    return [*below, top]


def _refuse_if_used(top: Path) -> None:
    for path in _tree(top):
        if (path / "cgroup.procs").read_text().split():
            raise UsageError(f"{path} still holds processes: stop the user's containers first")


def _remove_tree(top: Path) -> bool:
    """rmdir ``top`` and the (empty) cgroups below it, deepest first; False when it was not there."""
    tree = _tree(top)
    for path in tree:
        path.rmdir()
    return bool(tree)
