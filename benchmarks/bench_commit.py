"""Commit a container's changes as an image: sandbox-kernel vs ``podman commit`` of the same change.

Two changes, each made by running a script in a container (foreground, not ``--rm``: it stays, exited,
with its changes), then committed; only the commit is timed:

- the big change, in the debian-python image: 50 MB written (``--content random``: one file of
  /dev/urandom bytes; ``mixed``: 25 MB of those and 25 MB of Python source text from the image) and
  ``rm -rf /usr/share/doc`` (whiteouts). Target: ours at most 0.5x podman commit.
- the small change: 1 KB written to /small.bin, in debian-python and in busybox. Target: ours at most
  20 ms, whatever the size of the image.

Ours: the in-process API (``Containers.commit``) and the CLI (``sandbox-kernel --root ROOT commit NAME
REF``, a fresh process, as a user runs it), from a private store (``--root`` in a temporary directory).
podman: the image saved by us as an OCI archive and ``podman load``-ed into a private store; every round
runs in a fresh ``unshare --mount --pid --fork --mount-proc`` with tmpfs over /var/lib/containers (its
blob-info cache), /run (``--runroot`` and ``--tmpdir``, so runc's state and podman's locks) and /dev/shm,
so that podman writes nothing on the host outside the temporary directory, and nothing it starts
(conmon, ``podman container cleanup``) outlives the round: when the namespace's first process ends the
kernel ends the rest. In there the script runs ``podman run``, ``sync``, then ``podman commit`` (one CLI
invocation, timed with ``date +%s%N`` around it; the namespace's set-up is not in the figure), then
removes the container and the image (untimed). Every peer commits after ``sync`` (untimed): no commit
pays for the writeback of the container's writes or of the round before's removals.

Each round runs every peer once, in turn, so drift hits all alike; the first ``--warmup`` rounds are
not counted. The committed images are checked once (untimed) by running them. Needs root.

    .venv/bin/python benchmarks/bench_commit.py [--runs 5] [--warmup 1] [--content random] [--dir /var/tmp]

Nothing is left behind: the temporary directory goes, and the run ends by checking that no new mount,
no new cgroup (podman's ``libpod_parent``, removed when it was not there before; ours, ``sandbox-kernel``)
and no podman or conmon process is left, and that /run/containers, /run/libpod, /run/runc,
/dev/shm/libpod_lock, /var/lib/containers and /etc/containers are as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import Peer, cache_parent, clean_env, measure, mounts, our_cli, populated, remove_tree, snapshot

from sandbox_kernel.runtime import Containers, ContainerSpec, Store, build

DEBIAN = "localhost/debian-python:latest"
BUSYBOX = "localhost/busybox:latest"
TARGET_REPO = "localhost/bench-commit"
BIG = 50 * (1 << 20)
SCRIPTS = {
    "random": f"head -c {BIG} /dev/urandom > /big.bin && rm -rf /usr/share/doc",
    # half random bytes, half real text (the image's Python sources, over and over)
    "mixed": (f"head -c {BIG // 2} /dev/urandom > /big.bin && "
              f"for i in 1 2 3 4 5 6 7 8 9 10; do find /usr/lib/python3* -name '*.py' -exec cat {{}} +; done"
              f" | head -c {BIG // 2} > /big.txt && rm -rf /usr/share/doc"),
}
SMALL_SCRIPT = "head -c 1024 /dev/urandom > /small.bin"
# Run in the committed images (ours and podman's), once: one line per fact, compared with what the change made.
BIG_CHECK = ('echo "/big.bin $(wc -c < /big.bin) bytes"; '
             'if [ -e /big.txt ]; then echo "/big.txt $(wc -c < /big.txt) bytes"; fi; '
             '[ -d /usr/share/doc ] && echo "/usr/share/doc is there" || echo "/usr/share/doc is gone"')
SMALL_CHECK = 'echo "/small.bin $(cat /small.bin | wc -c) bytes"'
EXPECTED = {
    "random": [f"/big.bin {BIG} bytes", "/usr/share/doc is gone"],
    "mixed": [f"/big.bin {BIG // 2} bytes", f"/big.txt {BIG // 2} bytes", "/usr/share/doc is gone"],
    "small": ["/small.bin 1024 bytes"],
}
TARGET_MS = 20.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("libpod_parent", "sandbox-kernel")  # podman's (with cgroupfs) and ours
# What podman creates on the host whatever --root says (here under tmpfs mounts of its own namespace).
HOST_PATHS = ("/run/runc", "/run/containers", "/run/libpod", "/dev/shm/libpod_lock")
HOST_TREES = ("/var/lib/containers", "/etc/containers")  # compared file by file
# In podman's namespace, on its /run tmpfs: --runroot must be at most 50 characters.
PODMAN_RUNROOT = "/run/sk-bench-commit/run"
PODMAN_TMPDIR = "/run/sk-bench-commit/tmp"
# crun refuses hybrid cgroups (this machine's); podman's default limits are above this machine's.
PODMAN_GLOBAL_FLAGS = ("--cgroup-manager=cgroupfs", "--runtime=runc", "--events-backend=file")
PODMAN_RUN_FLAGS = "--network=none --ulimit nofile=20000:20000 --ulimit nproc=4096:4096"
# podman's namespace: tmpfs over where it writes whatever its options say. Argument 1 is the work dir;
# when a tmpfs hides it (--dir /dev/shm), it is bound back from the shell's working directory. Then
# argument 2 on are podman and its global options ("$@"), and the body runs.
PODMAN_NS_PREFIX = """set -e
work=$1; shift
cd "$work"
for target in "$CACHE_PARENT" /run /dev/shm; do mount -t tmpfs sk-bench-commit "$target"; done
if [ ! -d "$work" ]; then mkdir -p "$work"; mount --no-canonicalize --bind . "$work"; fi
"""
# One podman round: run the script in a container, commit it (timed), check once, remove both.
PODMAN_ROUND = """trap 'status=$?; "$@" rm -f "$NAME" >/dev/null 2>&1 || true
"$@" rmi -f "$TARGET" >/dev/null 2>&1 || true; exit $status' EXIT
"$@" run --name "$NAME" $RUN_FLAGS "$IMAGE" sh -c "$SCRIPT" >/dev/null
sync
t0=$(date +%s%N); t1=$(date +%s%N)
t2=$(date +%s%N)
"$@" commit -q "$NAME" "$TARGET" >/dev/null
t3=$(date +%s%N)
echo "clock $((t1 - t0))"
echo "commit $((t3 - t2))"
if [ -n "$CHECK" ]; then "$@" run --rm $RUN_FLAGS "$TARGET" sh -c "$CHECK" | sed 's/^/check /'; fi
"""


def run(argv: list[str], env: dict[str, str] | None = None, what: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` (stdin on /dev/null, output kept); raise with its last stderr line if it fails."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env if env is not None else clean_env(), check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(nothing on stderr)"]
        raise RuntimeError(f"{what or Path(argv[0]).name}: exit {proc.returncode}: {lines[-1][-500:]}")
    return proc


def timed_command(argv: list[str], what: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["(nothing on stderr)"]
        raise RuntimeError(f"{what}: exit {proc.returncode}: {lines[-1][-500:]}")
    return elapsed


def sync() -> None:
    subprocess.run(["sync"], check=True)


def _fs_type(path: Path) -> str:
    """The file system type of ``path`` (the longest mount point above it in /proc/self/mounts)."""
    best, kind = "", ""
    target = str(path.resolve())
    with open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            point = fields[1]
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


# --- ours -------------------------------------------------------------------------------------------------------


class Ours:
    """Our private store; containers run through the API (no warm slots: nothing warms during a commit)."""

    def __init__(self, root: Path):
        self.root = root
        self.store = Store(root)
        self.containers = Containers(self.store, warm_slots=False)
        self.counter = itertools.count()

    def make_change(self, image: str, script: str) -> str:
        """Run ``script`` in a container of ``image`` (foreground, kept); its name."""
        name = f"sk-bench-commit-{os.getpid()}-{next(self.counter)}"
        spec = ContainerSpec(image=image, command=("sh", "-c", script), name=name)
        err: list[bytes] = []
        result = self.containers.run(spec, stdin=None, stdout=None, stderr=err.append)
        if result.exit_code != 0:
            with contextlib.suppress(Exception):
                self.containers.remove(name, force=True)
            raise RuntimeError(f"the change exited {result.exit_code}: {b''.join(err).decode(errors='replace')[-300:]}")
        return name

    def clean(self, name: str, target: str) -> None:
        with contextlib.suppress(Exception):
            self.containers.remove(name, force=True)
        self.store.remove_tags([target])
        self.store.prune()

    def api(self, image: str, script: str) -> Callable[[], float]:
        def start() -> float:
            name = self.make_change(image, script)
            target = f"{TARGET_REPO}:{name}"
            try:
                sync()
                begin = time.perf_counter()
                self.containers.commit(name, target)
                return time.perf_counter() - begin
            finally:
                self.clean(name, target)

        return start

    def cli(self, image: str, script: str) -> Callable[[], float]:
        def start() -> float:
            name = self.make_change(image, script)
            target = f"{TARGET_REPO}:{name}"
            try:
                sync()
                return timed_command([*our_cli(), "--root", str(self.root), "commit", name, target],
                                     "sandbox-kernel commit")
            finally:
                self.clean(name, target)

        return start

    def check(self, image: str, script: str, check: str) -> tuple[list[str], float]:
        """Commit the change once (untimed), run ``check`` in the new image; (its output lines, layer MB)."""
        name = self.make_change(image, script)
        target = f"{TARGET_REPO}:{name}"
        try:
            committed = self.containers.commit(name, target)
            out: list[bytes] = []
            spec = ContainerSpec(image=target, command=("sh", "-c", check), remove=True)
            result = self.containers.run(spec, stdin=None, stdout=out.append, stderr=out.append)
            lines = b"".join(out).decode(errors="replace").strip().splitlines()
            if result.exit_code != 0:
                lines.append(f"(exit {result.exit_code})")
            return lines, committed.layers[-1]["size"] / 1e6
        finally:
            self.clean(name, target)


# --- podman -----------------------------------------------------------------------------------------------------


class Podman:
    """podman with a private store under ``work``; each call runs in a fresh mount and PID namespace."""

    def __init__(self, exe: str, work: Path, driver: str):
        self.exe = exe
        self.work = work
        self.base = work / "podman"
        self.tmp = self.base / "tmp"  # $TMPDIR: where podman copies images and layers (else /var/tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.driver = driver
        self.counter = itertools.count()
        self.checked: dict[str, list[str]] = {}
        self.clock: list[float] = []  # what one `date +%s%N` costs: it is in each figure

    def argv(self) -> list[str]:
        return [self.exe, "--root", str(self.base / "root"), "--runroot", PODMAN_RUNROOT, "--tmpdir", PODMAN_TMPDIR,
                "--storage-driver", self.driver, *PODMAN_GLOBAL_FLAGS]

    def in_namespace(self, body: str, what: str, **env: str) -> subprocess.CompletedProcess:
        argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "--",
                "sh", "-c", PODMAN_NS_PREFIX + body, "sh", str(self.work), *self.argv()]
        return run(argv, clean_env(TMPDIR=str(self.tmp), CACHE_PARENT=cache_parent(), **env), what)

    def load(self, archive: Path) -> None:
        self.in_namespace('"$@" load -q -i "$ARCHIVE" >/dev/null\n', "podman load", ARCHIVE=str(archive))

    def commit(self, label: str, image: str, script: str, check: str) -> Callable[[], float]:
        """A round: ``podman run`` the script, ``podman commit`` it (timed), remove both. Checked once."""
        def start() -> float:
            n = next(self.counter)
            checking = label not in self.checked
            proc = self.in_namespace(PODMAN_ROUND, "podman round", NAME=f"sk-bench-commit-{n}",
                                     TARGET=f"{TARGET_REPO}:podman-{n}", IMAGE=image, SCRIPT=script,
                                     RUN_FLAGS=PODMAN_RUN_FLAGS, CHECK=check if checking else "")
            figures = {}
            lines = []
            for line in proc.stdout.splitlines():
                key, _, value = line.partition(" ")
                if key == "check":
                    lines.append(value.strip())
                elif key in ("clock", "commit"):
                    figures[key] = int(value) / 1e9
            if "commit" not in figures:
                raise RuntimeError(f"podman round printed no figure: {proc.stdout[-300:]!r}")
            if checking:
                self.checked[label] = lines
            self.clock.append(figures.get("clock", 0.0))
            return figures["commit"]

        return start

    def overhead(self) -> Callable[[], float]:
        """The namespace alone (unshare, the tmpfs mounts, ``true``): outside podman's timed commit."""
        def start() -> float:
            begin = time.perf_counter()
            self.in_namespace("true\n", "unshare true")
            return time.perf_counter() - begin

        return start


def choose_driver(exe: str, work: Path, archive: Path) -> tuple[Podman | None, str]:
    """overlay if ``podman load`` works with it here, else vfs; (podman, why) — (None, errors) if neither does."""
    errors = []
    for driver in ("overlay", "vfs"):
        podman = Podman(exe, work, driver)
        try:
            podman.load(archive)
            return podman, "" if driver == "overlay" else f"overlay failed: {errors[0]}"
        except RuntimeError as exc:
            errors.append(str(exc))
            remove_tree(podman.base)
    return None, "; ".join(errors)


# --- leaving nothing behind ---------------------------------------------------------------------------------------


def peer_cgroups() -> set[Path]:
    """Every cgroup under the top-level ones of podman and ours."""
    found: set[Path] = set()
    for hierarchy in CGROUP_ROOT.iterdir():
        if not hierarchy.is_dir():
            continue
        for name in CGROUP_NAMES:
            top = hierarchy / name
            if top.is_dir():
                found.add(top)
                found.update(p for p in top.rglob("*") if p.is_dir())
    return found


def podman_processes() -> set[tuple[int, str]]:
    """(pid, name) of every podman and conmon process on the host."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                name = (entry / "comm").read_text().strip()
                if name in ("podman", "conmon"):
                    found.add((int(entry.name), name))
    return found


class HostCheck:
    """What the host had before the run, to clean up after podman and to report leaks."""

    def __init__(self) -> None:
        self.mounts = mounts()
        self.cgroups = peer_cgroups()
        self.paths = {p for p in HOST_PATHS if os.path.lexists(p)}
        self.trees = {t: snapshot(t) for t in HOST_TREES}
        self.processes = podman_processes()

    def clean_and_report(self, work: Path) -> None:
        leaks = []
        for point, fstype in sorted(mounts() - self.mounts):
            leaks.append(f"mount {point} ({fstype})")
        deadline = time.monotonic() + 5
        while True:  # a monitor of ours removes its container's cgroup just after the container ends
            cgroups, busy = [], 0
            for cgroup in sorted(peer_cgroups() - self.cgroups, key=lambda p: len(p.parts), reverse=True):
                if "sandbox-kernel" not in cgroup.parts:  # podman leaves libpod_parent/ and libpod_parent/conmon/
                    with contextlib.suppress(OSError):
                        cgroup.rmdir()
                if not cgroup.exists():
                    continue
                if populated(cgroup):  # all of ours have ended: a running one is another process's
                    busy += 1
                    continue
                cgroups.append(f"cgroup {cgroup}")
            if not cgroups or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        leaks += cgroups
        if busy:
            print(f"not ours: {busy} new cgroup(s) with processes in them (another process's containers, running)")
        for pid, name in sorted(podman_processes() - self.processes):
            leaks.append(f"process {name} {pid} (not ended by us: maybe another user's)")
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
        nothing = "nothing (no new mount, cgroup, process, host path or work dir)"
        print(f"left behind: {'; '.join(leaks) if leaks else nothing}")


# --- the run ------------------------------------------------------------------------------------------------------


def row(peer: Peer | None, name: str, skipped: str | None = None, ours: tuple[tuple[str, Peer], ...] = (),
        what: str = "", target: str = "", limit_ms: float | None = None) -> None:
    label = f"  {name:<46}"
    if peer is not None and peer.error is not None:
        print(f"{label}failed: {peer.error}")
        return
    if peer is None or not peer.times:
        print(f"{label}skipped: {skipped or 'not run'}")
        return
    spread = f"(min {min(peer.times) * 1000:.1f}, max {max(peer.times) * 1000:.1f})"
    line = f"{label}{peer.median_ms:8.1f} ms  {spread:<26}"
    ratios = [f"{how} {mine.median_ms / peer.median_ms:.2f}x" for how, mine in ours
              if mine.error is None and mine.times]
    if ratios:
        line += f"  {what} " + ", ".join(ratios) + (f"  {target}" if target else "")
    if limit_ms is not None:
        line += f"  (target <= {limit_ms:.0f} ms: {'met' if peer.median_ms <= limit_ms else 'MISSED'})"
    print(line.rstrip())


def verdict(lines: list[str], expected: list[str]) -> str:
    """The check's output, and whether it is what the change made."""
    judged = "right" if lines == expected else f"WRONG, expected {'; '.join(expected)}"
    return f"{'; '.join(lines) or '(no output)'}: {judged}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured commits of each peer (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds before measuring (default 1)")
    parser.add_argument("--content", choices=sorted(SCRIPTS), default="random",
                        help="the big change's 50 MB: random bytes, or half random, half text (default random)")
    parser.add_argument("--dir", default="/var/tmp", help="where both peers' stores go (one file system for all)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_commit.py needs root (containers, podman's namespaces)", file=sys.stderr)
        return 1
    podman_exe = shutil.which("podman")
    missing = {} if podman_exe else {"podman": "podman is not installed (run scripts/setup.sh)"}
    if podman_exe and not shutil.which("unshare"):
        missing["podman"] = "unshare (util-linux) is not installed"
    big_script = SCRIPTS[args.content]

    check = HostCheck()
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sk-bench-commit-", dir=args.dir))
    try:
        fstype = _fs_type(work)
        root = work / "store"
        ours = Ours(root)
        for name in ("debian-python", "busybox"):
            build(ours.store, name)
        archive = work / "debian-python.tar"
        run([*our_cli(), "--root", str(root), "save", DEBIAN, "-o", str(archive)], what="sandbox-kernel save")
        debian, busybox = ours.store.resolve(DEBIAN), ours.store.resolve(BUSYBOX)
        print(f"work dir {work} ({fstype}); {DEBIAN} {debian.size / 1e6:.1f} MB compressed, "
              f"{BUSYBOX} {busybox.size / 1e6:.1f} MB")

        podman: Podman | None = None
        driver_note = ""
        if "podman" not in missing:
            podman, driver_note = choose_driver(str(podman_exe), work, archive)
            if podman is None:
                missing["podman"] = f"podman load failed with overlay and vfs: {driver_note}"
        archive.unlink()

        # Checked once, untimed: the committed images hold the changes.
        checks = []
        for label, image, script, what, expected in (
                ("big", DEBIAN, big_script, BIG_CHECK, EXPECTED[args.content]),
                ("small, debian-python", DEBIAN, SMALL_SCRIPT, SMALL_CHECK, EXPECTED["small"]),
                ("small, busybox", BUSYBOX, SMALL_SCRIPT, SMALL_CHECK, EXPECTED["small"])):
            try:
                lines, layer_mb = ours.check(image, script, what)
                checks.append(f"  ours, {label}: {verdict(lines, expected)} (new layer {layer_mb:.3f} MB gzip)")
            except Exception as exc:
                checks.append(f"  ours, {label}: check failed: {type(exc).__name__}: {exc}")

        big = {"api": Peer("ours_api_big", ours.api(DEBIAN, big_script)),
               "cli": Peer("ours_cli_big", ours.cli(DEBIAN, big_script))}
        small = {"api": Peer("ours_api_small_debian", ours.api(DEBIAN, SMALL_SCRIPT)),
                 "api_busybox": Peer("ours_api_small_busybox", ours.api(BUSYBOX, SMALL_SCRIPT)),
                 "cli": Peer("ours_cli_small_debian", ours.cli(DEBIAN, SMALL_SCRIPT))}
        overhead = None
        if podman is not None:
            big["podman"] = Peer("podman_big", podman.commit("big", DEBIAN, big_script, BIG_CHECK))
            small["podman"] = Peer("podman_small", podman.commit("small", DEBIAN, SMALL_SCRIPT, SMALL_CHECK))
        # Interleaved: each round commits each change once with every peer.
        measure([*big.values(), *small.values()], args.runs, args.warmup)
        if podman is not None:
            overhead = Peer("unshare", podman.overhead())
            measure([overhead], max(args.runs, 5), 1)

        driver = podman.driver if podman is not None else "-"
        print(f"commit a container's changes: median of {args.runs} runs after {args.warmup} warm-up round(s), "
              f"interleaved; stores in {args.dir} ({fstype}); wall-clock ms")
        print(f"big change in {DEBIAN}: 50 MB ({args.content}) written + rm -rf /usr/share/doc")
        row(big["api"], "sandbox-kernel commit, in-process API")
        row(big["cli"], "sandbox-kernel commit (CLI)")
        row(big.get("podman"), f"podman commit ({driver})", missing.get("podman"),
            (("API", big["api"]), ("CLI", big["cli"])), "ours/podman", "(target <= 0.5x)")
        print("1 KB change (/small.bin)")
        row(small["api"], "sandbox-kernel commit, API, debian-python", limit_ms=TARGET_MS)
        row(small["api_busybox"], "sandbox-kernel commit, API, busybox", limit_ms=TARGET_MS)
        row(small["cli"], "sandbox-kernel commit (CLI), debian-python")
        row(small.get("podman"), f"podman commit ({driver}), debian-python", missing.get("podman"),
            (("API", small["api"]),), "ours/podman")
        if podman is not None and podman.clock:
            print(f"podman's figures are `date +%s%N` around one `podman commit` in its namespace; they include one "
                  f"`date` ({statistics.median(podman.clock) * 1000:.1f} ms)")
        if overhead is not None and overhead.times:
            print(f"podman's namespace alone (unshare --pid --fork --mount-proc + 3 tmpfs + true, NOT in the figures): "
                  f"median {overhead.median_ms:.1f} ms")
        if driver_note:
            print(f"podman storage driver {driver}: {driver_note}")
        print("checks (untimed, once):")
        for line in checks:
            print(line)
        if podman is not None:
            for label, lines in podman.checked.items():
                expected = EXPECTED[args.content if label == "big" else "small"]
                print(f"  podman, {label}: {verdict(lines, expected)}")
    finally:
        remove_tree(work)
        check.clean_and_report(work)
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
