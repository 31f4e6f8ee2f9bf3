"""Container lifecycle: create from an image, run in the foreground, clean up.

A container lives in ``ROOT/containers/ID/``: ``config.json`` (what was asked),
``state.json`` (pid and status), the overlay ``upper/`` and ``work/`` dirs, the
``rootfs/`` mount point and the ``/etc`` files the runtime writes. The overlay
and every other mount live only in the container's own mount namespace, so
they vanish with its last process, whatever happened to the caller.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import process
from .cgroups import Cgroup, open_cgroup
from .errors import ContainerError, UsageError
from .fsutil import remove_quietly
from .image.store import Image, Store
from .rootfs import RootfsPlan
from .spec import ContainerSpec

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ContainerResult:
    exit_code: int
    oom_killed: bool
    memory_limit: int | None

    def message(self) -> str | None:
        """The one plain sentence a user needs when a limit ended the container."""
        if self.oom_killed:
            limit = f" (limit {self.memory_limit >> 20} MiB)" if self.memory_limit else ""
            return f"out of memory{limit}: the container was killed"
        return None


def _env(image: Image, spec: ContainerSpec) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for item in (image.config.get("config") or {}).get("Env") or [DEFAULT_PATH]:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH.split("=", 1)[1])
    env["HOSTNAME"] = spec.hostname or ""
    env.update(dict(spec.env))
    env.setdefault("HOME", "/root")
    return tuple(env.items())


def _argv(image: Image, spec: ContainerSpec) -> tuple[str, ...]:
    config = image.config.get("config") or {}
    entrypoint = list(spec.entrypoint) if spec.entrypoint is not None else list(config.get("Entrypoint") or [])
    cmd = list(spec.command) if spec.command else (list(config.get("Cmd") or []) if spec.entrypoint is None else [])
    argv = tuple(entrypoint + cmd)
    if not argv:
        raise UsageError(f"no command given and image {spec.image} has no Cmd or Entrypoint")
    return argv


def _user(image: Image, spec: ContainerSpec) -> tuple[int, int]:
    text = spec.user or (image.config.get("config") or {}).get("User") or "0"
    uid_text, _, gid_text = text.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        raise UsageError(f"user {text!r}: only numeric uid[:gid] is supported so far")
    return int(uid_text), int(gid_text or uid_text)


class Containers:
    """The containers of one store."""

    def __init__(self, store: Store):
        self.store = store
        self.root = store.root / "containers"
        self.root.mkdir(exist_ok=True)

    def _write_state(self, cdir: Path, **state: Any) -> None:
        tmp = cdir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, cdir / "state.json")

    def run(self, spec: ContainerSpec) -> ContainerResult:
        """``run`` in the foreground: stdio attached, returns when the container exits."""
        image = self.store.resolve(spec.image)
        lowers = [str(d) for d in reversed(self.store.unpack(image))]
        cid = secrets.token_hex(32)
        hostname = spec.hostname or cid[:12]
        cdir = self.root / cid
        for sub in ("upper", "work", "rootfs"):
            (cdir / sub).mkdir(parents=True)
        etc = {
            "hostname": f"{hostname}\n",
            "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n",
            "resolv.conf": "# no network: --network none\n",
        }
        for name, text in etc.items():
            (cdir / name).write_text(text)
        config = {"id": cid, "name": spec.name or cid[:12], "image": image.id, "spec": asdict(spec),
                  "created": time.time()}
        (cdir / "config.json").write_text(json.dumps(config))
        uid, gid = _user(image, spec)
        proc = process.ProcessPlan(
            argv=_argv(image, spec),
            env=(*_env(image, spec), ("HOSTNAME", hostname)),
            cwd=spec.workdir or (image.config.get("config") or {}).get("WorkingDir") or "/",
            uid=uid,
            gid=gid,
        )
        plan = RootfsPlan(
            rootfs=str(cdir / "rootfs"),
            lowerdirs=tuple(lowers),
            upperdir=str(cdir / "upper"),
            workdir=str(cdir / "work"),
            etc_files=tuple((str(cdir / name), f"/etc/{name}") for name in etc),
            mounts=spec.mounts,
        )
        cgroup: Cgroup = open_cgroup(cid[:32])
        try:
            cgroup.create()
            cgroup.apply(spec.limits)
            pid1 = process.start(plan, hostname, proc, cgroup)
            self._write_state(cdir, status="running", pid=pid1, started=time.time())
            code = process.wait(pid1)
            oom = cgroup.oom_kills() > 0
            self._write_state(cdir, status="exited", pid=0, exit_code=code, oom_killed=oom, finished=time.time())
            return ContainerResult(137 if oom else code, oom, spec.limits.memory)
        except ContainerError:
            raise
        finally:
            cgroup.remove()
            if spec.remove:
                remove_quietly(cdir)
