"""``sandbox-kernel check [--repair]``: is every part of the store what it claims to be?

What is checked, and what ``--repair`` does with what is broken:

* every blob hashes to its name; a corrupt one is removed (a pull or load of an
  image that needs it stores it again);
* every tag names a manifest whose config and layers are all stored and sound
  (reported: the blob a repair removed is what a pull or load restores; the
  tag stays, so the user knows what to pull);
* every unpacked layer is what its blob unpacks to: the blob is unpacked
  afresh into ``tmp/`` and the two trees compared (type, mode, owner, size,
  content, link target, hard links, extended attributes, times); a damaged
  one is replaced by the fresh one. A layer no image or container needs is
  only noted (``prune`` removes it);
* every container's layers are there (one that is gone is unpacked again
  from its blob) and its record reads;
* leftovers of processes that were killed (unfinished writes in ``tmp/``,
  short links to removed layers, names of removed containers) are noted and,
  with ``--repair``, removed. They are harmless: nothing reads them.

A problem is something a command would refuse or use wrongly; a note is
harmless. ``check`` exits 1 while a problem is left. Run ``--repair`` while no
other command uses the store: it replaces layers, and a running container's
layers are left alone (it says which container to stop).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import inside
from .errors import BlobError, ReferenceFormatError, SandboxError, StoreError
from .fsutil import remove_quietly
from .idmap import IdMap
from .image.store import Store, hash_file, parse_layer_name, writer_alive
from .userns_keeper import rootless

_HEX = re.compile(r"\A[0-9a-f]{64}\Z")


@dataclass
class Finding:
    """One thing ``check`` found: ``problem`` (a command would refuse it or use it wrongly) or a harmless note."""

    kind: str  # blob, image, layer, container, link, name, tmp
    what: str
    text: str
    problem: bool = True
    repaired: str | None = None  # what --repair did ("removed", "unpacked again")

    def line(self) -> str:
        done = f": {self.repaired}" if self.repaired else ""
        return f"{self.kind} {self.what}: {self.text}{done}"

    def to_json(self) -> dict[str, Any]:
        return {"Kind": self.kind, "What": self.what, "Text": self.text, "Problem": self.problem,
                "Repaired": self.repaired}


@dataclass
class Report:
    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("blobs", "images", "layers", "containers"), 0))
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems_left(self) -> list[Finding]:
        return [f for f in self.findings if f.problem and f.repaired is None]

    def summary(self) -> str:
        c = self.checked
        problems = sum(f.problem for f in self.findings)
        repaired = sum(f.repaired is not None for f in self.findings)
        return (f"Checked {_count(c['blobs'], 'blob')}, {_count(c['images'], 'image')}, "
                f"{_count(c['layers'], 'unpacked layer')} and {_count(c['containers'], 'container')}: "
                f"{_count(problems, 'problem')}, {_count(len(self.findings) - problems, 'note')}"
                + (f", {repaired} repaired" if repaired else ""))


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def check_store(store: Store, *, repair: bool = False) -> Report:
    """Check the whole store (and with ``repair``, mend what is broken); see the module docstring."""
    report = Report()
    sound = _blobs(store, report, repair)
    needed = _images(store, report, sound)
    in_use = _containers(store, report, repair, needed, sound)
    _layers(store, report, repair, needed, sound, in_use)
    _leftovers(store, report, repair)
    return report


# -- blobs and images ------------------------------------------------------------------------------------------------

def _blobs(store: Store, report: Report, repair: bool) -> set[str]:
    """The digests of the blobs that are sound; corrupt ones reported (and removed)."""
    sound = set()
    for path in sorted((store.root / "blobs" / "sha256").iterdir()):
        report.checked["blobs"] += 1
        digest = f"sha256:{path.name}"
        if not _HEX.match(path.name) or not path.is_file() or path.is_symlink():
            report.findings.append(Finding("blob", path.name, "not a blob of the store (a stray file)"))
        else:
            actual = hash_file(path)
            if actual == digest:
                sound.add(digest)
                continue
            report.findings.append(Finding("blob", digest, f"corrupt: its content hashes to {actual}"))
        if repair:
            remove_quietly(path)
            report.findings[-1].repaired = "removed (a pull or load of an image that needs it restores it)"
    return sound


def _images(store: Store, report: Report, sound: set[str]) -> dict[str, dict[str, Any]]:
    """``{diff id: layer descriptor}`` of every tagged image; an image with a missing or bad part is reported."""
    needed: dict[str, dict[str, Any]] = {}
    try:
        tags = store.tags()
    except SandboxError as exc:
        report.findings.append(Finding("index", "index.json", str(exc)))
        return needed
    for name, digest in sorted(tags.items()):
        report.checked["images"] += 1
        problem = _image_problem(store, digest, sound, needed)
        if problem is not None:
            report.findings.append(Finding("image", name, f"{problem}: pull or load it again"))
    return needed


def _image_problem(store: Store, digest: str, sound: set[str], needed: dict[str, dict[str, Any]]) -> str | None:
    if digest not in sound:
        return f"its manifest {digest[:19]} is missing"
    try:
        image = store.load_image(digest)
    except (BlobError, ReferenceFormatError) as exc:
        return str(exc)
    for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
        needed.setdefault(diff_id, desc)
    for what, blob in [("config", image.config_digest)] + [("layer", d["digest"]) for d in image.layers]:
        if blob not in sound:
            return f"its {what} {blob[:19]} is missing"
    return None


# -- containers ------------------------------------------------------------------------------------------------------

def _containers(store: Store, report: Report, repair: bool, needed: dict[str, dict[str, Any]],
                sound: set[str]) -> set[str]:
    """Names of the layer dirs that running containers use; each container's record and layers checked."""
    from .container import Containers
    from .record import load
    from .state import ACTIVE, ContainerDir

    containers = Containers(store, warm_slots=False)
    containers.list(all=True)  # reconcile first: containers whose monitor died are stopped
    in_use: set[str] = set()
    for path in sorted(containers.root.iterdir()):
        if path.name.startswith(".") or path.name == "names" or not path.is_dir():  # (.gone-, .new-: in flight)
            continue
        report.checked["containers"] += 1
        cdir = ContainerDir(path)
        if not cdir.config_path.exists():
            report.findings.append(Finding("container", path.name[:12], "an unfinished create (its maker was "
                                           "killed?); the next listing removes it after a minute", False))
            continue
        try:
            record = load(cdir.config_path)
            active = cdir.read_state().status in ACTIVE
        except StoreError as exc:
            report.findings.append(Finding("container", path.name[:12], str(exc)))
            continue
        try:
            image = store.load_image(record.image_manifest)
            for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
                needed.setdefault(diff_id, desc)
        except (BlobError, ReferenceFormatError):
            report.findings.append(Finding("container", record.name, f"its image's manifest "
                                           f"{record.image_manifest[:19]} is missing: it runs, but cannot be "
                                           "committed", False))
        for layer in map(Path, record.lowerdirs):
            if active:
                in_use.add(layer.name)
            if layer.is_dir():
                continue
            report.findings.append(Finding("container", record.name, f"a layer of its image is gone "
                                           f"({layer.name[:12]}): it cannot start"))
            if repair:
                report.findings[-1].repaired = _restore(store, layer, needed, sound)
    return in_use


def _restore(store: Store, layer: Path, needed: dict[str, dict[str, Any]], sound: set[str]) -> str | None:
    """Unpack a container's missing layer again from its blob; what was done, None if it cannot be."""
    parsed = parse_layer_name(layer.name)
    if parsed is None or layer.parent != store.root / "layers":
        return None
    diff_id, trusted, idmap, _ = parsed
    desc = needed.get(diff_id)
    if desc is None or desc["digest"] not in sound:
        return None
    store.unpack_to(desc, diff_id, layer, trusted=trusted, idmap=idmap)
    return "unpacked again from its blob"


# -- unpacked layers -------------------------------------------------------------------------------------------------

def _layers(store: Store, report: Report, repair: bool, needed: dict[str, dict[str, Any]], sound: set[str],
            in_use: set[str]) -> None:
    for path in sorted((store.root / "layers").iterdir()):
        report.checked["layers"] += 1
        parsed = parse_layer_name(path.name)
        if parsed is None or not path.is_dir() or path.is_symlink():
            report.findings.append(Finding("layer", path.name[:12], "not an unpacked layer of the store"))
            if repair:
                remove_quietly(path)
                report.findings[-1].repaired = "removed"
            continue
        diff_id, trusted, idmap, in_userns = parsed
        desc = needed.get(diff_id)
        if desc is None:
            report.findings.append(Finding("layer", path.name[:12], "no image or container uses it (prune "
                                           "removes it)", False))
            continue
        if desc["digest"] not in sound:
            report.findings.append(Finding("layer", path.name[:12], f"cannot be checked: its blob "
                                           f"{desc['digest'][:19]} is missing", False))
            continue
        if in_userns != rootless():
            report.findings.append(Finding("layer", path.name[:12], "unpacked for another kind of user (root or "
                                           "not): not checked here", False))
            continue
        _check_layer(store, report, repair, path, desc, diff_id, trusted, idmap, in_use)


def _check_layer(store: Store, report: Report, repair: bool, path: Path, desc: dict[str, Any], diff_id: str,
                 trusted: bool, idmap: IdMap | None, in_use: set[str]) -> None:
    """Unpack the blob afresh beside it and compare; a damaged layer is replaced by the fresh one."""
    work = store.tmp_dir(".check")
    fresh = work / path.name  # (the same name: a rootless unpack reads its kind from it)
    try:
        store.unpack_to(desc, diff_id, fresh, trusted=trusted, idmap=idmap)
        differences = inside.run(compare_trees, str(fresh), str(path))
        if not differences:
            return
        report.findings.append(Finding("layer", path.name[:12], "differs from what its blob unpacks to: "
                                       + "; ".join(differences)))
        if not repair:
            return
        if path.name in in_use:
            report.findings[-1].text += " (a running container uses it: stop it and repair again)"
            return
        remove_quietly(path)
        os.rename(fresh, path)
        report.findings[-1].repaired = "unpacked again from its blob"
    finally:
        remove_quietly(work)


def _entries(root: str) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (relative) with what makes it what it is; hard links name their first path."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}

    def walk(rel: str) -> None:
        with os.scandir(os.path.join(root, rel)) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path_rel = f"{rel}/{name}" if rel else name
            full = os.path.join(root, path_rel)
            st = os.lstat(full)
            xattrs = tuple(sorted((k, os.getxattr(full, k, follow_symlinks=False))
                                  for k in os.listxattr(full, follow_symlinks=False)))
            kind = stat.S_IFMT(st.st_mode)
            common = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs)
            if stat.S_ISDIR(st.st_mode):
                out[path_rel] = common
                walk(path_rel)
                continue
            if st.st_nlink > 1:
                first = inodes.setdefault((st.st_dev, st.st_ino), path_rel)
                if first != path_rel:
                    out[path_rel] = ("hard link to", first)
                    continue
            if stat.S_ISREG(st.st_mode):
                out[path_rel] = (*common, st.st_size, st.st_mtime_ns, hash_file(Path(full)))
            elif stat.S_ISLNK(st.st_mode):
                out[path_rel] = (*common, os.readlink(full))
            else:
                out[path_rel] = (*common, st.st_rdev, st.st_mtime_ns)

    walk("")
    return out


def compare_trees(expected: str, actual: str, most: int = 3) -> list[str]:
    """How the tree ``actual`` differs from ``expected`` (at most ``most`` sentences; empty: the same)."""
    want, have = _entries(expected), _entries(actual)
    out = [f"{p} is missing" for p in sorted(want.keys() - have.keys())]
    out += [f"{p} should not be there" for p in sorted(have.keys() - want.keys())]
    out += [f"{p} is changed" for p in sorted(want.keys() & have.keys()) if want[p] != have[p]]
    return out[:most] + ([f"and {len(out) - most} more"] if len(out) > most else [])


# -- leftovers -------------------------------------------------------------------------------------------------------

def _leftovers(store: Store, report: Report, repair: bool) -> None:
    """What killed processes leave: unfinished writes, links to removed layers, names of removed containers."""
    for path in sorted((store.root / "tmp").iterdir()):
        if writer_alive(path.name):
            continue  # a write in flight
        report.findings.append(Finding("tmp", path.name, "an unfinished write of a process that is gone", False))
        if repair:
            remove_quietly(path)
            report.findings[-1].repaired = "removed"
    links = store.root / "l"
    if links.is_dir():
        for link in sorted(links.iterdir()):
            if not link.exists():
                report.findings.append(Finding("link", link.name, "a short name of a removed layer", False))
                if repair:
                    link.unlink(missing_ok=True)
                    report.findings[-1].repaired = "removed"
    names = store.root / "containers" / "names"
    if names.is_dir():
        for name in sorted(names.iterdir()):
            with contextlib.suppress(OSError):
                if not (store.root / "containers" / os.readlink(name)).is_dir():
                    report.findings.append(Finding("name", name.name, "names a container that is gone", False))
                    if repair:
                        name.unlink(missing_ok=True)
                        report.findings[-1].repaired = "removed"
