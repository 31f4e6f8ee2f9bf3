"""A container's ``config.json`` as a typed record: what was asked and resolved at create.

Written once when the container is made (and again only by ``update``, for its
limits), read by every operation on it. This module alone knows its JSON; the
rest of the runtime reads fields (``record.cgroup``, ``record.spec.limits``),
never keys. The format on disk is the one earlier versions wrote, so their
containers still load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import StoreError
from .fsutil import write_private
from .idmap import IdMap
from .spec import ContainerSpec, Limits

ETC_FILES = ("hostname", "hosts", "resolv.conf")  # bound over the image's from the container's directory


@dataclass(frozen=True)
class ProcessRecord:
    """The container's command, resolved from the image and the spec at create."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # in order: the image's, then HOSTNAME, then -e, then HOME
    cwd: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": dict(self.env), "cwd": self.cwd, "uid": self.uid, "gid": self.gid,
                "groups": list(self.groups)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(tuple(data["argv"]), tuple((str(k), str(v)) for k, v in data["env"].items()), data["cwd"],
                   int(data["uid"]), int(data["gid"]), tuple(int(g) for g in data["groups"]))


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    name: str
    image_id: str
    image_manifest: str  # the store keeps this image while the container exists
    idmap: IdMap | None  # None: host ids (--userns=host)
    spec: ContainerSpec
    cgroup: str
    hostname: str
    lowerdirs: tuple[str, ...]  # the image's unpacked layers, top first
    process: ProcessRecord
    # made by a version before user namespaces (its config has no "idmap"): it ran as the host's root, and
    # may not start again; kept as it is when saved, so that an update cannot make it a --userns=host one
    legacy: bool = False

    def mount_points(self) -> set[str]:
        """What the runtime mounts over in the container's root (relative paths): not the container's changes."""
        return {f"etc/{name}" for name in ETC_FILES} | {m.target.strip("/") for m in self.spec.mounts}

    def with_limits(self, limits: Limits) -> ContainerRecord:
        return replace(self, spec=replace(self.spec, limits=limits))

    def to_json(self) -> dict[str, Any]:
        data = {"id": self.id, "name": self.name, "image_id": self.image_id, "image_manifest": self.image_manifest,
                "idmap": self.idmap.to_json() if self.idmap is not None else None, "spec": asdict(self.spec),
                "cgroup": self.cgroup, "hostname": self.hostname, "lowerdirs": list(self.lowerdirs),
                "process": self.process.to_json()}
        if self.legacy:
            del data["idmap"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        return cls(str(data["id"]), str(data["name"]), str(data["image_id"]), str(data["image_manifest"]),
                   IdMap.from_json(data.get("idmap")), ContainerSpec.from_dict(data["spec"]), str(data["cgroup"]),
                   str(data["hostname"]), tuple(data["lowerdirs"]), ProcessRecord.from_json(data["process"]),
                   legacy="idmap" not in data)


def load(path: Path) -> ContainerRecord:
    """The record in ``path`` (a container's config.json); a StoreError that names the container otherwise."""
    try:
        return ContainerRecord.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"container {path.parent.name[:12]}: cannot read its config: {exc}") from None


def save(path: Path, record: ContainerRecord) -> None:
    """Replace ``path`` with the record, atomically (a reader sees the old one or the new one)."""
    try:
        write_private(path, json.dumps(record.to_json()).encode())
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
