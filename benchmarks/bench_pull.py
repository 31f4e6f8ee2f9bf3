"""Pull an image from a local registry into an empty store: sandbox-kernel vs podman pull and skopeo + umoci.

Two images go into a throwaway ``docker-registry`` (distribution 2.8) on 127.0.0.1: debian-python
(one layer, 55 MB compressed and 170 MB unpacked; the issue's "77 MB" was another build) and a
five-layer image made here from busybox and four layers of random (incompressible) and text files,
of varied sizes (fixed seed: the same bytes every time). Then every
peer pulls each image, and every run starts from an empty store (a fresh directory, so nothing is
shared between runs; on tmpfs removed after the run, on a disk at the end, see RunDirs) on the same
file system (``--dir``), after ``sync``:

- ours, the CLI (``sandbox-kernel --root DIR pull --insecure -q REF``, a fresh process, as a user
  runs it), and the in-process API (``pull(Store(DIR), REF)``): blobs verified and layers unpacked,
  ready to run;
- ``podman pull`` into a private store (``--root``, ``--runroot``, ``--tmpdir``), in a private mount
  namespace with tmpfs over /var/lib/containers (its blob-info cache), /run and /dev/shm (its locks),
  so that it writes nothing on the host outside the temporary directory; the time includes
  ``unshare`` and the three mounts, measured alone and printed;
- ``skopeo copy docker://REF oci:DIR:bench`` then ``umoci unpack --image DIR:bench BUNDLE`` (as root:
  owners kept), skopeo with its cache, auth file and temporary files under the run's directory.

Each round runs every peer once, in turn, so drift hits all alike, and starts one peer later than
the round before, so no peer always runs right after the same one; the first ``--warmup`` rounds
are not counted. Prints the medians, the ratios (target: ours at most 0.5x podman pull) and the image
sizes. Needs root (podman's namespace, umoci's owners).

    .venv/bin/python benchmarks/bench_pull.py [--runs 5] [--warmup 1] [--dir /var/tmp]

Nothing is left behind: the registry is stopped by its PID, the temporary directory goes, and the
run ends by checking that no new mount is left and that /run/containers, /run/libpod,
/dev/shm/libpod_lock and /var/lib/containers are as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' registry and skopeo set-up
from benchlib import cache_parent, clean_env, mounts, our_cli, remove_tree, snapshot
from registry_infra import REGISTRY_BIN, running_registry, skopeo_env

from sandbox_kernel.runtime import Store, build, write_layer
from sandbox_kernel.runtime.image.pull import pull
from sandbox_kernel.runtime.image.push import push
from sandbox_kernel.runtime.image.transport import RegistryOptions

DEBIAN = "localhost/debian-python:latest"
BUSYBOX = "localhost/busybox:latest"
FIVE = "localhost/bench-five-layers:latest"
SEED = 20240601
MB = 1 << 20
# The four layers over busybox: (random bytes in files of these sizes, text files: count and size each).
EXTRA_LAYERS = (
    {"random": [8 * MB, 8 * MB, 8 * MB], "text": (1, 1 * MB)},  # a few big binaries
    {"random": [3 * MB] * 4, "text": (100, 40 << 10)},  # mixed
    {"random": [30 << 10] * 200, "text": (1000, 8 << 10)},  # a source tree
    {"random": [4 << 10] * 500, "text": (3000, 1 << 10)},  # many small files
)
PODMAN_RUNROOT = "/run/sk-bench-podman"  # in podman's namespace, where /run is a tmpfs of its own
# What podman creates on the host whatever --root says (here under tmpfs mounts of its own namespace).
HOST_PATHS = ("/run/containers", "/run/libpod", "/dev/shm/libpod_lock")
HOST_TREES = ("/var/lib/containers",)  # its blob-info cache lives here: compared file by file
# podman's namespace: tmpfs over where it writes whatever its options say. Argument 1 is the work dir;
# when a tmpfs hides it (--dir /dev/shm), it is bound back from the shell's working directory.
PODMAN_NS_SCRIPT = """set -e
work=$1; shift
cd "$work"
for target in "$CACHE_PARENT" /run /dev/shm; do mount -t tmpfs sk-bench-pull "$target"; done
if [ ! -d "$work" ]; then mkdir -p "$work"; mount --no-canonicalize --bind . "$work"; fi
exec "$@"
"""


@dataclass
class Peer:
    """One way to pull; ``start`` pulls once into an empty store and returns seconds (or seconds per part)."""

    name: str
    start: Callable[[], float | dict[str, float]]
    times: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


def run(argv: list[str], env: dict[str, str] | None = None, what: str | None = None) -> float:
    """Run ``argv`` with stdio on /dev/null (stderr kept for the error); its wall-clock seconds. Raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=env if env is not None else clean_env(), check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["(nothing on stderr)"]
        raise RuntimeError(f"{what or Path(argv[0]).name}: exit {proc.returncode}: {lines[-1][-500:]}")
    return elapsed


class RunDirs:
    """A fresh directory per run under ``base``, removed after the run (untimed).

    On a disk (not tmpfs) the trees stay until the work dir goes at the end: deleting 170 MB of
    files makes the file system discard their blocks (this VM mounts / with ``discard``) while
    the next run writes, and that run, whichever peer it is, would pay for it (measured: the
    same unpack took 0.6 s into a quiet ext4 and 2.0 s right after a delete).
    """

    def __init__(self, base: Path, name: str):
        self.base = base
        self.name = name
        self.count = 0
        self.defer = _fs_type(base) != "tmpfs"

    @contextlib.contextmanager
    def fresh(self) -> Iterator[Path]:
        self.count += 1
        path = self.base / f"{self.name}-{self.count}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            if not self.defer:
                remove_tree(path)


def _fs_type(path: Path) -> str:
    """The file system type of ``path`` (the longest mount point above it in /proc/self/mounts)."""
    best, kind = "", ""
    target = str(path.resolve()) if path.exists() else str(path.parent.resolve())
    with open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            point = fields[1]
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def synced(fn: Callable[[], float | dict[str, float]]) -> Callable[[], float | dict[str, float]]:
    """``fn`` after ``sync`` (untimed): no run pays for the writeback of the one before."""

    def start() -> float | dict[str, float]:
        subprocess.run(["sync"], check=True)
        return fn()

    return start


# --- the images -------------------------------------------------------------------------------------------------


def _text(rng: random.Random, lines: list[str], size: int) -> bytes:
    out: list[str] = []
    total = 0
    while total < size:
        chunk = rng.choices(lines, k=256)
        out.extend(chunk)
        total += sum(len(line) + 1 for line in chunk)
    return "\n".join(out).encode()[:size]


def _make_tree(root: Path, number: int, spec: dict, rng: random.Random, lines: list[str]) -> None:
    base = root / "opt" / "bench" / f"layer{number}"
    for i, size in enumerate(spec["random"]):
        path = base / "bin" / f"d{i // 50:02d}" / f"blob{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        path.chmod(0o755 if i % 3 == 0 else 0o644)
    count, size = spec["text"]
    for i in range(count):
        path = base / "src" / f"pkg{i // 100:02d}" / f"mod{i % 10}" / f"file{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_text(rng, lines, size))


def make_five_layer_image(store: Store, work: Path) -> None:
    """busybox plus the four :data:`EXTRA_LAYERS`, tagged :data:`FIVE`; the same bytes on every run."""
    base = store.resolve(BUSYBOX)
    rng = random.Random(SEED)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(3000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(4, 14))) for _ in range(5000)]
    config = json.loads(json.dumps(base.config))
    layers = list(base.layers)
    with store.writing():
        for number, spec in enumerate(EXTRA_LAYERS, start=2):
            tree = work / f"tree{number}"
            _make_tree(tree, number, spec, rng, lines)
            blob = work / f"layer{number}.tar.gz"
            with open(blob, "wb") as out:
                layer = write_layer(tree, out, compression="gzip", epoch=0)
            with open(blob, "rb") as fh:
                store.ingest(fh, expected_digest=layer.digest, expected_size=layer.size)
            shutil.rmtree(tree)
            blob.unlink()
            layers.append(layer.descriptor())
            config["rootfs"]["diff_ids"].append(layer.diff_id)
            config.setdefault("history", []).append(
                {"created": config.get("created", "1970-01-01T00:00:00Z"),
                 "created_by": f"benchmarks/bench_pull.py layer {number}"})
        store.put_image(config, layers, FIVE)


def tree_size(root: Path) -> tuple[int, int]:
    """(bytes of the regular files, entries) below ``root``."""
    size = entries = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                size += st.st_size
    return size, entries


# --- the peers --------------------------------------------------------------------------------------------------


def ours_cli(dirs: RunDirs, ref: str) -> Callable[[], float]:
    def start() -> float:
        with dirs.fresh() as root:
            return run([*our_cli(), "--root", str(root / "store"), "pull", "--insecure", "-q", ref],
                       what="sandbox-kernel pull")

    return start


def ours_api(dirs: RunDirs, ref: str) -> Callable[[], float]:
    options = RegistryOptions(insecure=True)

    def start() -> float:
        with dirs.fresh() as root:
            begin = time.perf_counter()
            pull(Store(root / "store"), ref, options=options)
            return time.perf_counter() - begin

    return start


def in_podman_namespace(work: Path, argv: list[str]) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PODMAN_NS_SCRIPT, "sh",
            str(work), *argv]


class Podman:
    """``podman pull`` into a fresh private store per run, in its own mount namespace."""

    def __init__(self, exe: str, work: Path, dirs: RunDirs, driver: str):
        self.exe = exe
        self.work = work
        self.dirs = dirs
        self.driver = driver

    def argv(self, base: Path) -> tuple[list[str], dict[str, str]]:
        tmp = base / "tmp"
        tmp.mkdir(exist_ok=True)
        # --runroot: at most 50 characters (podman's limit), so on the namespace's own /run tmpfs, gone with it
        argv = [self.exe, "--root", str(base / "root"), "--runroot", PODMAN_RUNROOT, "--tmpdir", str(tmp),
                "--storage-driver", self.driver, "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        # podman copies big blobs through $TMPDIR, else /var/tmp
        return argv, clean_env(TMPDIR=str(tmp), CACHE_PARENT=cache_parent())

    def pull(self, ref: str) -> Callable[[], float]:
        def start() -> float:
            with self.dirs.fresh() as base:
                argv, env = self.argv(base)
                return run(in_podman_namespace(self.work, [*argv, "pull", "-q", "--tls-verify=false", ref]), env,
                           what="podman pull")

        return start

    def overhead(self) -> Callable[[], float]:
        """The same namespace and mounts, running ``true``."""
        def start() -> float:
            return run(in_podman_namespace(self.work, ["true"]), clean_env(CACHE_PARENT=cache_parent()),
                       what="unshare true")

        return start


def skopeo_umoci(skopeo: str, umoci: str, dirs: RunDirs, ref: str) -> Callable[[], dict[str, float]]:
    def start() -> dict[str, float]:
        with dirs.fresh() as base:
            env = skopeo_env(base)
            layout = base / "oci"
            copy = run([skopeo, "--insecure-policy", "--tmpdir", str(base / "tmp"),
                        "--registries.d", str(base / "registries.d"), "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"oci:{layout}:bench"], env, what="skopeo copy")
            unpack = run([umoci, "unpack", "--image", f"{layout}:bench", str(base / "bundle")], env,
                         what="umoci unpack")
            return {"skopeo copy": copy, "umoci unpack": unpack}

    return start


# --- leaving nothing behind -------------------------------------------------------------------------------------


class HostCheck:
    """What the host had before the run, to report (and remove) what a peer left."""

    def __init__(self) -> None:
        self.mounts = mounts()
        self.paths = {p for p in HOST_PATHS if os.path.lexists(p)}
        self.trees = {t: snapshot(t) for t in HOST_TREES}

    def clean_and_report(self, work: Path, leftovers: list[str]) -> None:
        leaks = list(leftovers)
        for point, fstype in sorted(mounts() - self.mounts):
            leaks.append(f"mount {point} ({fstype})")
        for path in sorted(set(HOST_PATHS) - self.paths, key=len, reverse=True):
            if os.path.lexists(path):
                leaks.append(f"host path {path} (removed now)")
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        for tree, before in self.trees.items():
            after = snapshot(tree)
            changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
            if changed:
                leaks.append(f"{tree} changed: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}")
        if os.path.lexists(work):
            leaks.append(f"work dir {work}")
        print(f"left behind: {'; '.join(leaks) if leaks else 'nothing (no new mount, host path or work dir)'}")


# --- the run ----------------------------------------------------------------------------------------------------


def measure(peers: list[Peer], runs: int, warmup: int) -> None:
    for round_ in range(warmup + runs):
        # Each round starts one peer later: no peer always follows the same one (whose writeback, even
        # after sync, and page-cache state it would inherit every time).
        shift = round_ % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            if peer.error is not None:
                continue
            try:
                result = peer.start()
            except Exception as exc:  # a peer that fails is reported and left out, the others go on
                peer.error = f"{type(exc).__name__}: {exc}"
                print(f"{peer.name}: failed in round {round_ + 1}: {peer.error}", file=sys.stderr)
                continue
            if round_ < warmup:
                continue
            if isinstance(result, dict):
                for part, seconds in result.items():
                    peer.parts.setdefault(part, []).append(seconds)
                result = sum(result.values())
            peer.times.append(result)


def row(peer: Peer | None, name: str, skipped: str | None = None, ours: tuple[tuple[str, Peer], ...] = (),
        what: str = "", target: str = "") -> None:
    label = f"  {name:<44}"
    if peer is not None and peer.error is not None:
        print(f"{label}failed: {peer.error}")
        return
    if peer is None or not peer.times:
        print(f"{label}skipped: {skipped or 'not run'}")
        return
    spread = f"(min {min(peer.times) * 1000:.0f}, max {max(peer.times) * 1000:.0f})"
    line = f"{label}{peer.median_ms:8.0f} ms  {spread:<24}"
    ratios = [f"{how} {mine.median_ms / peer.median_ms:.2f}x" for how, mine in ours
              if mine.error is None and mine.times]
    if ratios:
        line += f"  {what} " + ", ".join(ratios) + (f"  {target}" if target else "")
    print(line.rstrip())
    for part, times in peer.parts.items():
        spread = f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"
        print(f"  {'  ' + part + ' alone':<44}{statistics.median(times) * 1000:8.0f} ms  {spread}")


def choose_driver(podman: Podman, ref: str) -> tuple[str | None, str]:
    """overlay if a pull with it works here, else vfs; (driver, why) — (None, errors) if neither does."""
    errors = []
    for driver in ("overlay", "vfs"):
        podman.driver = driver
        try:
            podman.pull(ref)()
            return driver, "" if driver == "overlay" else f"overlay failed: {errors[0]}"
        except RuntimeError as exc:
            errors.append(str(exc))
    return None, "; ".join(errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured pulls of each image by each peer (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds before measuring (default 1)")
    parser.add_argument("--dir", default="/var/tmp", help="where every store goes (one file system for all peers)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_pull.py needs root (podman's mount namespace, umoci's owners)", file=sys.stderr)
        return 1
    if not os.access(REGISTRY_BIN, os.X_OK):
        print(f"{REGISTRY_BIN} is missing (Debian package docker-registry; run scripts/setup.sh)", file=sys.stderr)
        return 1
    tools = {name: shutil.which(name) for name in ("podman", "skopeo", "umoci")}
    missing = {name: f"{name} is not installed (run scripts/setup.sh)" for name, path in tools.items() if not path}

    check = HostCheck()
    began = time.monotonic()
    leftovers: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="sk-bench-pull-", dir=args.dir))
    try:
        fstype = _fs_type(work)  # (stat -f says "ext2/ext3" for ext4 too)
        source = Store(work / "source")
        build(source, "debian-python")
        build(source, "busybox")
        made = time.monotonic()
        make_five_layer_image(source, work)
        made = time.monotonic() - made
        options = RegistryOptions(insecure=True)
        with running_registry("plain", parent=work) as registry:
            host = registry.host
            refs = {"debian-python (1 layer)": (DEBIAN, f"{host}/bench/debian-python:1"),
                    "five layers (busybox + 4)": (FIVE, f"{host}/bench/five-layers:1")}
            for local, remote in refs.values():
                push(source, local, remote, options=options)
            print(f"work dir {work} ({fstype}); registry {host}; five-layer image made in {made:.1f} s")

            # One untimed pull each, to check it works and to measure what an image is once unpacked.
            for label, (local, remote) in refs.items():
                image = source.resolve(local)
                probe = work / "probe"
                pulled = pull(Store(probe), remote, options=options).image
                if pulled.manifest_digest != image.manifest_digest:
                    leftovers.append(f"(pulled {label} has manifest {pulled.manifest_digest}, pushed "
                                     f"{image.manifest_digest})")
                size, entries = tree_size(probe / "layers")
                layer_sizes = ", ".join(f"{layer['size'] / 1e6:.1f}" for layer in image.layers)
                print(f"{label}: {remote}, {len(image.layers)} layer(s) of {layer_sizes} MB compressed "
                      f"(image {image.size / 1e6:.1f} MB); unpacked {size / 1e6:.1f} MB in {entries} entries")
                remove_tree(probe)

            runs = work / "runs"
            peers: dict[str, dict[str, Peer]] = {}
            podman = None
            driver, driver_note = None, ""
            if "podman" not in missing:
                podman = Podman(str(tools["podman"]), work, RunDirs(runs, "podman-probe"), "overlay")
                driver, driver_note = choose_driver(podman, refs["debian-python (1 layer)"][1])
                if driver is None:
                    missing["podman"] = f"podman pull failed with overlay and vfs: {driver_note}"
            for label, (_, remote) in refs.items():
                slug = label.split()[0]
                group = {
                    "cli": Peer("ours_cli", synced(ours_cli(RunDirs(runs, f"{slug}-ours-cli"), remote))),
                    "api": Peer("ours_api", synced(ours_api(RunDirs(runs, f"{slug}-ours-api"), remote))),
                }
                if podman is not None and driver is not None:
                    puller = Podman(podman.exe, work, RunDirs(runs, f"{slug}-podman"), driver)
                    group["podman"] = Peer("podman", synced(puller.pull(remote)))
                if "skopeo" not in missing and "umoci" not in missing:
                    group["skopeo"] = Peer("skopeo+umoci", synced(skopeo_umoci(
                        str(tools["skopeo"]), str(tools["umoci"]), RunDirs(runs, f"{slug}-skopeo"), remote)))
                peers[label] = group
            # Interleaved: each round pulls each image once with every peer.
            measure([peer for group in peers.values() for peer in group.values()], args.runs, args.warmup)
            overhead = None
            if podman is not None and driver is not None:
                overhead = Peer("unshare", podman.overhead())
                measure([overhead], max(args.runs, 10), 2)

        print(f"pull into an empty store, {args.runs} runs each after {args.warmup} warm-up round(s), interleaved; "
              f"stores in {args.dir} ({fstype}); median of wall-clock times, ms")
        skopeo_missing = missing.get("skopeo") or missing.get("umoci")
        for label, group in peers.items():
            print(label)
            cli, api = group["cli"], group["api"]
            row(cli, "sandbox-kernel pull --insecure -q (CLI)")
            row(api, "sandbox-kernel pull() (in-process API)")
            row(group.get("podman"), f"podman pull ({driver or '-'})", missing.get("podman"),
                (("CLI", cli), ("API", api)), "ours/podman", "(target <= 0.5x)")
            row(group.get("skopeo"), "skopeo copy + umoci unpack", skopeo_missing,
                (("CLI", cli), ("API", api)), "ours/(skopeo+umoci)")
        if overhead is not None and overhead.times:
            print(f"podman's namespace alone (unshare + 3 tmpfs mounts + true, in podman's figures): "
                  f"median {overhead.median_ms:.1f} ms (min {min(overhead.times) * 1000:.1f}, "
                  f"max {max(overhead.times) * 1000:.1f})")
        if driver_note:
            print(f"podman storage driver {driver}: {driver_note}")
    finally:
        remove_tree(work)
        check.clean_and_report(work, leftovers)
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
