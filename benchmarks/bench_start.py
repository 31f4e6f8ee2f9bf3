"""Start a container and run ``true``: sandbox-kernel vs runc, bwrap and podman.

Everyone starts the same busybox image on the same machine. Ours runs it from
a private store (``--root`` in a temporary directory; /var/lib/sandbox-kernel is
not touched); runc and bwrap run one ``umoci unpack`` of that image, saved as
an OCI archive; podman runs the archive loaded into a private podman store.
Our starts are ``run --rm``, which returns once nothing of the container is
left (its cgroup and directory too), as ``runc run`` returns once it has
deleted its container. Two groups are measured one after the other: the
in-process API with runc and bwrap, then the CLI with podman. In a group each round starts every peer once,
in turn, so drift hits all alike; the first ``--warmup`` rounds are not
counted. Prints the medians and the ratios. Our containers
run in a user namespace of their own (the default); each of our figures is
also measured for ``--userns=host`` (none), in a group of its own with runc
again (a warm slot is made for one kind of start: alternating the two would
start both cold). Needs root.

    .venv/bin/python benchmarks/bench_start.py [--runs 50] [--warmup 5] [--idle 200] [--dir /var/tmp]

Nothing is left behind: the temporary directory goes, podman's image is
removed, and what podman leaves on the host whatever its ``--root`` (the
``libpod_parent`` cgroups, ``/run/runc``, ``/run/containers``,
``/dev/shm/libpod_lock``) is removed when it was not there before; ``podman
load`` runs with a tmpfs over /var/lib/containers so that containers/image's
blob-info cache there is not written. The run ends by checking that no mount
and no cgroup of ours or of a peer is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchlib import Peer, measure, mounts, our_cli, populated

from sandbox_kernel.runtime import Containers, ContainerSpec, Store, launcher

IMAGE = "localhost/busybox:latest"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the image's Env, as runc and ours get it
CGROUP_ROOT = Path("/sys/fs/cgroup")
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
# What podman (or the runc it calls) creates on the host whatever --root says: removed after if it was not there.
HOST_DIRS = ("/run/runc", "/run/containers", "/run/containers/networks", "/run/libpod")
HOST_FILES = ("/dev/shm/libpod_lock",)  # podman's shared-memory locks (root's are one segment whatever --root)
# podman load writes containers/image's blob-info cache here whatever --root says: it gets a tmpfs.
BLOB_INFO_CACHE_PARENT = Path("/var/lib/containers")
# crun refuses hybrid cgroups (this machine's); podman's default limits are above this machine's.
PODMAN_RUNTIME_FLAGS = ("--cgroup-manager=cgroupfs", "--runtime=runc")
PODMAN_RUN_FLAGS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
CGROUP_NAMES = ("libpod_parent", "sandbox-kernel")  # podman's and ours; runc's are named after the container id


@contextlib.contextmanager
def stdio_to_devnull() -> Iterator[None]:
    """Point fds 0, 1 and 2 at /dev/null: the in-process API gives them to the container."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        yield
    finally:
        for fd, old in zip((0, 1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        os.close(null)


def timed_command(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Run ``argv`` with stdio on /dev/null (stderr kept for the error); raise if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["(nothing on stderr)"]
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1][-500:]}")
    return elapsed


# --- the peers -------------------------------------------------------------------------------------------------


def ours_in_process(root: Path, warm: bool = True, pause: bool = True, userns: str = "") -> Callable[[], float]:
    """The API as a notebook kernel uses it. ``warm``: the default, with the warm slot that each
    foreground start leaves for the next; otherwise every start forks its processes from scratch.
    ``pause``: wait (untimed) for the slot to be ready, as between two cells; without, starts
    follow each other at once (measured alone: the slot would warm during a peer's turn).
    ``userns="host"``: without a user namespace."""
    containers = Containers(Store(root))
    spec = ContainerSpec(image=IMAGE, command=("true",), remove=True, userns=userns)

    def start() -> float:
        with stdio_to_devnull(), (contextlib.nullcontext() if warm else launcher.without_warm_slots()):
            # The slot left by the last start warms between starts, as in a notebook; waiting for it
            # here, untimed, keeps its warming out of the peers' turns.
            if pause:
                launcher.wait_warm()
            begin = time.perf_counter()
            result = containers.run(spec)
            elapsed = time.perf_counter() - begin
        if result.exit_code != 0:
            raise RuntimeError(f"true exited {result.exit_code} ({result.message() or 'no message'})")
        return elapsed

    return start


def ours_cli(root: Path, userns: str = "") -> Callable[[], float]:
    argv = [*our_cli(), "--root", str(root), "run", "--rm", *(["--userns", userns] if userns else []), IMAGE, "true"]
    return lambda: timed_command(argv)


def runc_run(runc: str, state: Path, bundle: Path) -> Callable[[], float]:
    counter = iter(range(1 << 30))

    def start() -> float:
        cid = f"sk-bench-{os.getpid()}-{next(counter)}"
        try:
            return timed_command([runc, "--root", str(state), "run", "-b", str(bundle), cid])
        finally:  # runc run removes the container when it exits; this is for when it did not
            subprocess.run([runc, "--root", str(state), "delete", "-f", cid], capture_output=True, check=False)

    return start


def bwrap_run(bwrap: str, rootfs: Path) -> Callable[[], float]:
    argv = [bwrap, "--unshare-all", "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "true"]
    env = {"PATH": IMAGE_PATH}  # bwrap looks ``true`` up in its own environment, which the container inherits
    return lambda: timed_command(argv, env=env)


class Podman:
    """podman with its own store, run dir and tmp dir, all under ``base``."""

    def __init__(self, exe: str, base: Path):
        self.base = base
        tmp = base / "tmp"
        tmp.mkdir(parents=True)
        self.argv = [exe, "--root", str(base / "root"), "--runroot", str(base / "run"), "--tmpdir", str(tmp),
                     *PODMAN_RUNTIME_FLAGS]
        self.env = {**os.environ, "TMPDIR": str(tmp)}  # podman copies images through $TMPDIR, else /var/tmp

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=self.env, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {args[0]}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return proc

    def load(self, archive: Path) -> None:
        """``podman load``, in a private mount namespace where /var/lib/containers is a fresh tmpfs."""
        made = not BLOB_INFO_CACHE_PARENT.exists()
        if made:
            BLOB_INFO_CACHE_PARENT.mkdir(mode=0o700)
        try:
            script = f'mount -t tmpfs sk-bench {BLOB_INFO_CACHE_PARENT} && exec "$@"'
            proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                                   *self.argv, "load", "-q", "-i", str(archive)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self.env, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"podman load: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
        finally:
            if made:
                BLOB_INFO_CACHE_PARENT.rmdir()

    def run_true(self) -> Callable[[], float]:
        argv = [*self.argv, "run", "--rm", "--network=none", *PODMAN_RUN_FLAGS, IMAGE, "true"]

        def start() -> float:
            return timed_command(argv, env=self.env)

        return start

    def clean(self) -> list[str]:
        """Remove every container and image of the private store; return what went wrong."""
        problems = []
        for args in (("rm", "-a", "-f"), ("rmi", "-a", "-f")):
            proc = self(*args, check=False)
            if proc.returncode != 0:
                problems.append(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return problems


# --- memory of idle containers --------------------------------------------------------------------------------


def _memory_kb(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of a process in kB; Pss shares each shared page among its users, so Pss adds up."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def measure_idle_containers_rss(root: Path, count: int) -> None:
    """Memory of ``count`` idle detached containers (busybox ``sleep``; the Python agent is issue 6's).

    Each container is its monitor on the host plus PID 1 and the command inside; the figure is
    the sum of their Pss (shared pages divided among the processes that share them) and of their
    Rss (shared pages counted once per process), per container. No peer: the target is 12 MB.
    """
    if count <= 0:
        return
    containers = Containers(Store(root))
    spec = ContainerSpec(image=IMAGE, command=("sleep", "3600"), remove=True)
    ids: list[str] = []
    available_before = _mem_available_kb()
    began = time.monotonic()
    try:
        for _ in range(count):
            ids.append(containers.run_detached(spec))
        started = time.monotonic() - began
        time.sleep(1.0)  # let every process settle into its idle state
        rss = pss = processes = 0
        for cid in ids:
            state = json.loads((root / "containers" / cid / "state.json").read_text())
            cgroup = next(iter(Path("/sys/fs/cgroup").glob(f"*/sandbox-kernel/{cid[:32]}/cgroup.procs")), None)
            pids = {state["monitor_pid"], state["pid"]}
            if cgroup is not None:
                pids |= {int(p) for p in cgroup.read_text().split()}
            for pid in pids:
                r, p = _memory_kb(pid)
                rss, pss, processes = rss + r, pss + p, processes + 1
        used = (available_before - _mem_available_kb()) / count
        print(f"idle containers: {count} started detached in {started:.1f} s ({started / count * 1000:.0f} ms each), "
              f"{processes / count:.0f} processes each")
        print(f"  per container: Pss {pss / count / 1024:.2f} MB, Rss {rss / count / 1024:.2f} MB, "
              f"MemAvailable drop {used / 1024:.2f} MB (target <= 12 MB with the Python agent)")
    finally:
        for cid in ids:
            with contextlib.suppress(Exception):
                containers.remove(cid, force=True)
        # their monitors remove the cgroups just after the containers are gone: wait for that
        deadline = time.monotonic() + 30
        while any(Path("/sys/fs/cgroup").glob(f"*/sandbox-kernel/{cid[:32]}") for cid in ids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)


def _mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


# --- leaving nothing behind ------------------------------------------------------------------------------------


def peer_cgroups() -> set[Path]:
    """Every cgroup under the top-level ones of podman, ours and the runc containers of this run."""
    found: set[Path] = set()
    for hierarchy in CGROUP_ROOT.iterdir():
        if not hierarchy.is_dir():
            continue
        for top in hierarchy.iterdir():
            if top.is_dir() and (top.name in CGROUP_NAMES or top.name.startswith("sk-bench-")):
                found.add(top)
                found.update(p for p in top.rglob("*") if p.is_dir())
    return found


class HostCheck:
    """What the host had before the run, to clean up after the peers and to report leaks."""

    def __init__(self) -> None:
        self.mounts = mounts()
        self.cgroups = peer_cgroups()
        self.dirs = {d for d in HOST_DIRS if os.path.lexists(d)}
        self.files = {f for f in HOST_FILES if os.path.lexists(f)}

    def clean_and_report(self, work: Path) -> None:
        leaks = []
        for point, fstype in sorted(mounts() - self.mounts):
            leaks.append(f"mount {point} ({fstype})")
        for point, _ in sorted(mounts(), reverse=True):
            if point.startswith(f"{work}/"):  # never delete through a mount point
                subprocess.run(["umount", "-l", point], check=False)
        deadline = time.monotonic() + 2
        while True:  # a container of another process may be ending just now: its cgroup goes in a moment
            cgroups, busy = [], 0
            for cgroup in sorted(peer_cgroups() - self.cgroups, key=lambda p: len(p.parts), reverse=True):
                if "sandbox-kernel" not in cgroup.parts:  # podman leaves libpod_parent/ and libpod_parent/conmon/
                    with contextlib.suppress(OSError):
                        cgroup.rmdir()
                if not cgroup.exists():
                    continue
                if populated(cgroup):  # all of ours have exited: a running one is another process's
                    busy += 1
                    continue
                cgroups.append(f"cgroup {cgroup}")
            if not cgroups or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        leaks += cgroups
        if busy:
            print(f"not ours: {busy} new cgroup(s) with processes in them (another process's containers, running)")
        for path in sorted(set(HOST_DIRS) - self.dirs, key=len, reverse=True):
            if os.path.lexists(path):
                try:
                    os.rmdir(path)  # made by podman's runc, empty after the last container
                except OSError:
                    leaks.append(f"host directory {path} (made by podman, not empty)")
        for path in sorted(set(HOST_FILES) - self.files):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        print(f"left behind: {', '.join(leaks) if leaks else 'nothing (no new mount, cgroup or host directory)'}")


# --- the run ---------------------------------------------------------------------------------------------------


def prepare_bundle(umoci: str, archive: Path, work: Path) -> Path:
    """``umoci unpack`` of the archived image, set to run ``true`` without a terminal."""
    layout = work / "layout"
    layout.mkdir()
    with tarfile.open(archive) as tf:
        tf.extractall(layout, filter="data")  # our own archive, as an OCI layout for umoci
    bundle = work / "bundle"
    subprocess.run([umoci, "unpack", "--image", f"{layout}:latest", str(bundle)], check=True, capture_output=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = ["true"]
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config))
    return bundle


def row(peer: Peer | None, name: str, skipped: str | None = None, versus: Peer | None = None, what: str = "",
        target: str = "") -> None:
    label = f"  {name:<48}"
    if peer is not None and peer.error is not None:
        print(f"{label}failed: {peer.error}")
        return
    if peer is None or not peer.times:
        print(f"{label}skipped: {skipped or 'not run'}")
        return
    spread = f"(min {min(peer.times) * 1000:.1f}, max {max(peer.times) * 1000:.1f})"
    line = f"{label}{peer.median_ms:8.1f} ms  {spread:<26}"
    if versus is not None and versus.error is None and versus.times:
        line += f"  {what} {versus.median_ms / peer.median_ms:.2f}x{f'  {target}' if target else ''}"
    elif versus is not None:
        line += f"  {what}: no figure for ours"
    print(line.rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="measured runs of each peer (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="runs of each peer before measuring (default 5)")
    parser.add_argument("--idle", type=int, default=200, help="idle containers for the memory figure (default 200)")
    parser.add_argument("--dir", default="/var/tmp", help="where the stores and the bundle go (one file system)")
    parser.add_argument("--rootless", action="store_true",
                        help="instead: ours as a user the run makes and as root (the same Python), runc as root, "
                             "and the CLI against rootless podman")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_start.py needs root (namespaces, mounts, cgroups; runc and podman as root)", file=sys.stderr)
        return 1
    if args.rootless:
        return rootless_main(args)
    tools = {name: shutil.which(name) for name in ("umoci", "runc", "bwrap", "podman")}
    missing = {name: f"{name} is not installed (run scripts/setup.sh)" for name, path in tools.items() if not path}
    if "umoci" in missing:
        missing.setdefault("runc", "umoci is not installed, so there is no bundle (run scripts/setup.sh)")
        missing.setdefault("bwrap", missing["runc"])

    check = HostCheck()
    began = time.monotonic()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sk-bench-start-", dir=args.dir) as tmp:
        work = Path(tmp)
        root = work / "store"
        podman: Podman | None = None
        try:
            archive = work / "busybox.tar"
            for command in (["image", "build", "busybox"], ["save", IMAGE, "-o", str(archive)]):
                try:
                    timed_command([*our_cli(), "--root", str(root), *command])
                except RuntimeError as exc:
                    print(f"sandbox-kernel {' '.join(command[:2])} failed: {exc}", file=sys.stderr)
                    return 1
            image = Store(root).resolve(IMAGE)
            print(f"image {IMAGE}: {image.size / 1e6:.1f} MB compressed, {len(image.layers)} layer(s); "
                  f"{args.runs} runs of each after {args.warmup} warm-up runs, interleaved in two groups")
            print(f"work dir {work}")

            api = Peer("ours_api", ours_in_process(root))
            api_cold = Peer("ours_api_cold", ours_in_process(root, warm=False))
            api_host = Peer("ours_api_userns_host", ours_in_process(root, userns="host"))
            api_host_cold = Peer("ours_api_userns_host_cold", ours_in_process(root, warm=False, userns="host"))
            cli = Peer("ours_cli", ours_cli(root))
            cli_host = Peer("ours_cli_userns_host", ours_cli(root, userns="host"))
            runc = runc_again = bwrap = podman_peer = None
            if "runc" not in missing or "bwrap" not in missing:
                bundle = prepare_bundle(str(tools["umoci"]), archive, work)
                if "runc" not in missing:  # runc's state on tmpfs, as its default /run/runc is
                    state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sk-bench-runc-", dir=SHM)))
                    runc = Peer("runc", runc_run(str(tools["runc"]), state, bundle))
                    runc_again = Peer("runc", runc_run(str(tools["runc"]), state, bundle))
                if "bwrap" not in missing:
                    bwrap = Peer("bwrap", bwrap_run(str(tools["bwrap"]), bundle / "rootfs"))
            if "podman" not in missing:
                podman = Podman(str(tools["podman"]), work / "podman")
                podman.load(archive)
                podman_peer = Peer("podman", podman.run_true())

            # Two groups, each interleaved: podman's many processes and cgroups stay out of the in-process figures.
            measure([p for p in (api, api_cold, runc, bwrap) if p is not None], args.runs, args.warmup)
            launcher.drop_spare()
            measure([p for p in (api_host, api_host_cold, runc_again) if p is not None], args.runs, args.warmup)
            launcher.drop_spare()
            api_rush = Peer("ours_api_no_pause", ours_in_process(root, pause=False))
            measure([api_rush], args.runs, args.warmup)
            measure([p for p in (cli, cli_host, podman_peer) if p is not None], args.runs, args.warmup)
            launcher.drop_spare()
            leftover = [p for p in (root / "containers").glob("*") if len(p.name) == 64 and p.name.isalnum()]

            print("start a container and run `true` (median of wall-clock times, ms)")
            row(api, "sandbox-kernel, in-process API (warm process)")
            row(api_cold, "  the same, no warm slot (every start forks all)")
            row(api_rush, "  the same, back to back (measured alone)")
            row(runc, "runc run -b BUNDLE", missing.get("runc"), api, "ours/runc", "(target <= 0.25x)")
            row(bwrap, "bwrap --unshare-all", missing.get("bwrap"), api, "ours/bwrap")
            if runc is not None and runc.times and api_cold.times:
                print(f"  {'(no warm slot)/runc':<48}{'':>8}{'':30}  {api_cold.median_ms / runc.median_ms:.2f}x")
            print("  --userns=host (no user namespace), with runc again:")
            row(api_host, "sandbox-kernel, in-process API, --userns=host")
            row(api_host_cold, "  the same, no warm slot")
            row(runc_again, "runc run -b BUNDLE (this group)", missing.get("runc"), api_host, "ours/runc")
            if api.times and api_host.times:
                print(f"  {'user namespace / --userns=host (API)':<48}{'':>8}{'':30}  "
                      f"{api.median_ms / api_host.median_ms:.2f}x")
            row(cli, "sandbox-kernel run --rm (CLI)")
            row(cli_host, "sandbox-kernel run --rm --userns=host (CLI)")
            row(podman_peer, "podman run --rm --network=none", missing.get("podman"), cli, "ours/podman",
                "(target < 1x: faster)")
            measure_idle_containers_rss(root, args.idle)
            if leftover:
                print(f"our store kept {len(leftover)} container dir(s) despite remove=True / --rm")
        finally:
            if podman is not None:
                for problem in podman.clean():
                    print(f"cleanup: {problem}", file=sys.stderr)
            check.clean_and_report(work)
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


def rootless_main(args: argparse.Namespace) -> int:
    """``--rootless``: a start as a user who is not root, against root's and runc's; the CLI against podman's."""
    from benchusers import RootlessPodman, our_cli_as, user_and_root_workers

    check = HostCheck()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sk-bench-start-", dir=args.dir) as tmp:
        work = Path(tmp)
        root = work / "store"
        archive = work / "busybox.tar"
        try:
            for command in (["image", "build", "busybox"], ["save", IMAGE, "-o", str(archive)]):
                timed_command([*our_cli(), "--root", str(root), *command])
            runc_exe, umoci = shutil.which("runc"), shutil.which("umoci")
            with user_and_root_workers([archive]) as (mine, roots, user, top), \
                    tempfile.TemporaryDirectory(prefix="sk-bench-runc-", dir=SHM) as state:
                print(f"rootless: user {user.name} (uid {user.uid}, ids {user.subids}); both workers run "
                      f"the same Python with the same copy of the package; {args.runs} runs after {args.warmup}")
                rootless = Peer("ours_api_rootless", lambda: mine.ask("start"))
                as_root = Peer("ours_api_root", lambda: roots.ask("start"))
                runc = None
                if runc_exe and umoci:
                    runc = Peer("runc", runc_run(runc_exe, Path(state), prepare_bundle(umoci, archive, work)))
                measure([p for p in (rootless, as_root, runc) if p is not None], args.runs, args.warmup)
                podman = None
                exe = shutil.which("podman")
                podman_note = "podman is not installed (run scripts/setup.sh)"
                if exe is not None:
                    try:
                        podman = Peer("podman_rootless", RootlessPodman(exe, user, top, top / archive.name).run_true)
                    except subprocess.CalledProcessError as exc:
                        podman_note = f"rootless podman does not run here: {exc}"
                cli = Peer("ours_cli_rootless", lambda: our_cli_as(user, top / user.name))
                measure([p for p in (cli, podman) if p is not None], args.runs, args.warmup)
            print("start a container and run `true` (median of wall-clock times, ms)")
            row(rootless, "sandbox-kernel API, as a user who is not root")
            row(as_root, "sandbox-kernel API, as root (same Python)", None, rootless, "rootless/root")
            row(runc, "runc run -b BUNDLE (as root)", "runc or umoci is not installed", rootless, "rootless/runc",
                "(target <= 0.25x)")
            row(cli, "sandbox-kernel run --rm (CLI), as the user")
            row(podman, "podman run --rm --network=none, rootless", podman_note, cli, "ours/podman",
                "(target < 1x: faster)")
        finally:
            check.clean_and_report(work)
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
