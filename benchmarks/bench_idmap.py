"""How a container's files get their owners in its user namespace: the two ways, side by side.

- *unpacked into the range* (what sandbox-kernel does): each layer is unpacked once with its
  owners moved into the container's id range; a start mounts overlay over those directories,
  as without a user namespace. The unpacking costs what it cost before (one ``fchown`` per
  entry either way), once per layer and map.
- *idmapped layers* (the other way, overlayfs on idmapped lower layers, Linux 5.19): the
  layers keep the image's owners and every start makes, per layer, a detached copy of its
  mount (``open_tree``), gives it the map (``mount_setattr(MOUNT_ATTR_IDMAP)``) and attaches it
  (``move_mount``) before overlay is mounted over them; and a user namespace to hold the map.

Each round mounts and unmounts the rootfs both ways for 1, 5 and 20 layers (copies of the
busybox image's layer), in a private mount namespace, and prints the medians and the ratio.
Needs root; leaves nothing behind (its mount namespace dies with it, its files are removed).

    .venv/bin/python benchmarks/bench_idmap.py [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import remove_tree

from sandbox_kernel.runtime import Store, build
from sandbox_kernel.runtime import syscalls as sc
from sandbox_kernel.runtime.idmap import IdMap, userns_fd

LAYER_COUNTS = (1, 5, 20)


def overlay(lowers: list[str], upper: Path, work: Path, target: Path) -> None:
    sc.mount("overlay", str(target), "overlay", 0,
             f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},index=off,redirect_dir=off")


def plain(layers: list[Path], base: Path) -> float:
    begin = time.perf_counter()
    overlay([str(p) for p in layers], base / "upper", base / "work", base / "rootfs")
    sc.umount2(str(base / "rootfs"))
    return time.perf_counter() - begin


def idmapped(layers: list[Path], base: Path, userns: int) -> float:
    begin = time.perf_counter()
    points = []
    for number, layer in enumerate(layers):
        tree = sc.open_tree(str(layer), sc.OPEN_TREE_CLONE)
        try:
            sc.mount_setattr(tree, sc.MOUNT_ATTR_IDMAP, userns, flags=sc.AT_EMPTY_PATH)
            point = base / "idmapped" / str(number)
            fd = os.open(point, os.O_PATH | os.O_CLOEXEC)
            try:
                sc.move_mount(tree, fd)
            finally:
                os.close(fd)
            points.append(str(point))
        finally:
            os.close(tree)
    overlay(points, base / "upper", base / "work", base / "rootfs")
    sc.umount2(str(base / "rootfs"))
    for point in points:
        sc.umount2(point)
    return time.perf_counter() - begin


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.3f} ms (min {min(values) * 1000:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_idmap.py needs root (mounts)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sk-bench-idmap-", dir="/var/tmp"))
    try:
        store = Store(work / "store")
        build(store, "busybox")
        mapping = IdMap(store.idmap.uid, store.idmap.gid) if store.idmap else IdMap(100000, 100000)
        image = store.resolve("localhost/busybox")
        [shifted] = store.unpack(image, idmap=mapping)
        [original] = store.unpack(image, idmap=None)
        layers = {"shifted": [], "original": []}
        for number in range(max(LAYER_COUNTS)):  # copies: overlay refuses a layer twice
            for kind, source in (("shifted", shifted), ("original", original)):
                copy = work / kind / str(number)
                shutil.copytree(source, copy, symlinks=True)
                if kind == "shifted":  # (copytree keeps modes, not owners)
                    for path in [copy, *copy.rglob("*")]:
                        os.lchown(path, mapping.uid, mapping.gid)
                layers[kind].append(copy)
        for sub in ("upper", "work", "rootfs"):
            (work / sub).mkdir()
        for number in range(max(LAYER_COUNTS)):
            (work / "idmapped" / str(number)).mkdir(parents=True)
        begin = time.perf_counter()
        userns = userns_fd(mapping.uid_map(), mapping.gid_map())
        made = time.perf_counter() - begin
        pid = os.fork()
        if pid == 0:  # a private mount namespace: whatever happens, no mount reaches the host
            code = 1
            try:
                sc.unshare(sc.CLONE_NEWNS)
                sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
                print(f"rootfs mount + unmount, median of {args.runs} (interleaved); busybox layer copies")
                print(f"  a user namespace to hold the map (idmapped layers only, once per start): "
                      f"{made * 1000:.3f} ms")
                for count in LAYER_COUNTS:
                    ours, other = [], []
                    for _ in range(args.runs):
                        ours.append(plain(layers["shifted"][:count], work))
                        other.append(idmapped(layers["original"][:count], work, userns))
                    ratio = statistics.median(other) / statistics.median(ours)
                    print(f"  {count:2d} layer(s): unpacked into the range {ms(ours)}   "
                          f"idmapped layers {ms(other)}   {ratio:.2f}x")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        os.close(userns)
        return os.waitstatus_to_exitcode(status)
    finally:
        remove_tree(work)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
