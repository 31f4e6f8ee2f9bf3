"""A ``%%container`` cell: its round trip vs a native cell and vs ``podman exec``; the first cell of a container.

In one IPython shell (InteractiveShell, as a kernel runs cells), on the debian-python image:

- a native ``pass`` cell (``run_cell("pass")``);
- ``run_cell("%%container bench\\npass")`` in a running container (the agent keeps it);
- ``podman exec CONTAINER python3 -c pass`` in a running podman container of the same image
  (loaded from our archive into a private podman store, run with ``sleep infinity``);
- the first cell of a new container: ``%%container NAME`` with ``pass``, a new NAME each time
  (create, start, agent ready, the cell), each container removed after (untimed).

Containers run in their user namespace (the default); each of our figures is measured too for
containers made with ``--userns=host`` (no user namespace), interleaved with the default, so that
the namespace's cost shows as the difference.

Prints the medians, the overhead over native (target: at most 1 ms), the ratio to podman exec
(target: at least 100x faster) and the first cell (target: at most 50 ms). Needs root.

    .venv/bin/python benchmarks/bench_cell.py [--runs 300] [--first 15]

Nothing is left behind: our containers are removed, podman's store is removed with its temporary
directory, and the run ends by checking that no new mount or cgroup is left.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_start import PODMAN_RUN_FLAGS, HostCheck, Podman, _mem_available_kb, _memory_kb
from benchlib import remove_tree

from sandbox_kernel.runtime import Store, build, save

IMAGE = "localhost/debian-python:latest"


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        begin = time.perf_counter()
        fn()
        out.append(time.perf_counter() - begin)
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.3f} ms  (min {min(values) * 1000:.3f}, max {max(values) * 1000:.3f})"


class Silent:
    """The cells' output goes nowhere (it is ``pass``)."""

    def __init__(self, trusted: bool = False):
        pass

    def stream(self, name: str, text: str) -> None:
        pass

    def display(self, data: dict, metadata: dict) -> None:
        pass


def measure_idle(shell, magics, count: int) -> str:
    """``count`` containers with their agent, idle after one cell: memory per container.

    A container is its monitor on the host, PID 1, the agent's supervisor and its worker; the
    figure sums their Pss (shared pages divided among the processes sharing them) per container.
    """
    if count <= 0:
        return ""
    names = [f"idle{number}" for number in range(count)]
    available = _mem_available_kb()
    began = time.monotonic()
    try:
        for name in names:
            shell.run_cell(f"%%container {name}\nx = 1", store_history=False)
        started = time.monotonic() - began
        time.sleep(1.0)
        pss = rss = processes = 0
        for name in names:
            cid = magics.sessions[name].cid
            state = (magics.store.root / "containers" / cid / "state.json").read_text()
            import json

            pids = {json.loads(state)["monitor_pid"]}
            cgroup = next(iter(Path("/sys/fs/cgroup").glob(f"*/sandbox-kernel/{cid[:32]}/cgroup.procs")), None)
            if cgroup is not None:
                pids |= {int(p) for p in cgroup.read_text().split()}
            for pid in pids:
                r, p = _memory_kb(pid)
                rss, pss, processes = rss + r, pss + p, processes + 1
        drop = (available - _mem_available_kb()) / count / 1024
        verdict = "met" if pss / count / 1024 <= 12 else "NOT met"
        return (f"idle containers with the agent: {count} made in {started:.1f} s, "
                f"{processes / count:.0f} processes each\n"
                f"  per container: Pss {pss / count / 1024:.2f} MB, Rss {rss / count / 1024:.2f} MB, "
                f"MemAvailable drop {drop:.2f} MB  (target <= 12 MB: {verdict})")
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                magics._forget(name)
                magics.containers.remove(name, force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="pass cells of each kind (default 300)")
    parser.add_argument("--first", type=int, default=15, help="new containers for the first-cell figure")
    parser.add_argument("--podman-runs", type=int, default=20, help="podman execs (default 20)")
    parser.add_argument("--idle", type=int, default=200, help="idle %%%%container containers for the memory figure")
    parser.add_argument("--rootless", action="store_true",
                        help="instead: the pass cell's overhead over native as a user the run makes and as root, "
                             "both with the same Python and IPython")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cell.py needs root (containers, podman)", file=sys.stderr)
        return 1
    if args.rootless:
        return rootless_main(args)
    from IPython.testing.globalipapp import start_ipython

    from sandbox_kernel.notebook.magics import ContainerMagics

    check = HostCheck()
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sk-bench-cell-", dir="/var/tmp"))
    magics = None
    podman = None
    try:
        store = Store(work / "store")
        build(store, "debian-python")
        shell = start_ipython()
        magics = ContainerMagics(shell, store=store)
        magics.sink_factory = Silent
        shell.register_magics(magics)

        shell.run_cell("%%container bench\npass", store_history=False)
        magics.userns = "host"  # (the benchhost container: no user namespace)
        shell.run_cell("%%container benchhost\npass", store_history=False)
        magics.userns = ""
        timed(lambda: shell.run_cell("pass", store_history=False), 50)  # warm-up
        timed(lambda: shell.run_cell("%%container bench\npass", store_history=False), 50)
        timed(lambda: shell.run_cell("%%container benchhost\npass", store_history=False), 50)
        native: list[float] = []
        ours: list[float] = []
        ours_host: list[float] = []
        for _ in range(args.runs):  # interleaved
            native += timed(lambda: shell.run_cell("pass", store_history=False), 1)
            ours += timed(lambda: shell.run_cell("%%container bench\npass", store_history=False), 1)
            ours_host += timed(lambda: shell.run_cell("%%container benchhost\npass", store_history=False), 1)

        firsts: dict[str, list[float]] = {"": [], "host": []}
        for number in range(args.first + 1):
            for mode in ("", "host"):  # interleaved
                name = f"first{mode}{number}"
                magics.userns = mode
                time.sleep(0.3)  # the warm slot the last start left gets ready, as between a user's cells
                begin = time.perf_counter()
                shell.run_cell(f"%%container {name}\npass", store_history=False)
                elapsed = time.perf_counter() - begin
                if number:
                    firsts[mode].append(elapsed)
                magics._forget(name)  # (untimed) the container goes, as `%container rm -f` does
                magics.containers.remove(name, force=True)
        magics.userns = ""

        # The idle containers get no disk of their own: the figure is their memory, and 200 disks of the
        # default 4 GiB would pass what the store's file system may promise (the room check refuses them).
        default_limits = magics.default_limits
        magics.default_limits = dataclasses.replace(default_limits, disk=None)
        try:
            idle = measure_idle(shell, magics, args.idle)
        finally:
            magics.default_limits = default_limits

        podman_times: list[float] = []
        podman_note = ""
        exe = shutil.which("podman")
        if exe is None:
            podman_note = "podman is not installed (run scripts/setup.sh)"
        else:
            archive = work / "image.tar"
            save(store, [IMAGE], archive)
            podman = Podman(exe, work / "podman")
            podman.load(archive)
            cid = podman("run", "-d", "--network=none", *PODMAN_RUN_FLAGS, IMAGE, "sleep", "infinity").stdout.strip()
            argv = [*podman.argv, "exec", cid, "python3", "-c", "pass"]
            for _ in range(args.podman_runs + 2):
                begin = time.perf_counter()
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, env=podman.env)
                podman_times.append(time.perf_counter() - begin)
            podman_times = podman_times[2:]

        overhead = (statistics.median(ours) - statistics.median(native)) * 1000
        overhead_host = (statistics.median(ours_host) - statistics.median(native)) * 1000
        print(f"a pass cell, median of {args.runs} (interleaved), image {IMAGE}")
        print(f"  native cell (run_cell('pass'))                     {ms(native)}")
        print(f"  %%container cell, running container               {ms(ours)}")
        print(f"    overhead over native: {overhead:.3f} ms  (target <= 1 ms: {'met' if overhead <= 1 else 'NOT met'})")
        print(f"  the same, container made with --userns=host        {ms(ours_host)}")
        print(f"    overhead over native: {overhead_host:.3f} ms; with/without user namespace: "
              f"{statistics.median(ours) / statistics.median(ours_host):.2f}x")
        if podman_times:
            ratio = statistics.median(podman_times) / statistics.median(ours)
            print(f"  podman exec CONTAINER python3 -c pass ({args.podman_runs})      {ms(podman_times)}")
            verdict = "met" if ratio >= 100 else "NOT met"
            print(f"    podman exec / %%container: {ratio:.0f}x  (target >= 100x: {verdict})")
        else:
            print(f"  podman exec: skipped: {podman_note}")
        first = statistics.median(firsts[""]) * 1000
        print(f"first cell of a new container (create + start + agent + pass), median of {args.first}, interleaved")
        print(f"  %%container NEW                                   {ms(firsts[''])}")
        print(f"    target <= 50 ms: {'met' if first <= 50 else 'NOT met'}")
        print(f"  the same, --userns=host                           {ms(firsts['host'])}")
        ratio = statistics.median(firsts[""]) / statistics.median(firsts["host"])
        print(f"    with/without user namespace: {ratio:.2f}x")
        if idle:
            print(idle)
    finally:
        if magics is not None:
            magics.shutdown()
        if podman is not None:
            for problem in podman.clean():
                print(f"podman clean-up: {problem}", file=sys.stderr)
        remove_tree(work)
        check.clean_and_report(work)
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


def rootless_main(args: argparse.Namespace) -> int:
    """``--rootless``: a warm ``pass`` cell over a native one, as a user who is not root and as root, interleaved,
    each in a shell of its own (the same Python, IPython and copy of the package: benchusers.py)."""
    from benchusers import user_and_root_workers

    check = HostCheck()
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sk-bench-cell-", dir="/var/tmp"))
    try:
        store = Store(work / "store")
        build(store, "debian-python")
        archive = work / "debian-python.tar"
        save(store, [IMAGE], archive)
        with user_and_root_workers([archive]) as (mine, roots, user, _top):
            print(f"rootless: user {user.name} (uid {user.uid}); {args.runs} pass cells of each kind, interleaved")
            times: dict[str, list[float]] = {"native_rootless": [], "cell_rootless": [], "native_root": [],
                                             "cell_root": []}
            for worker in (mine, roots):  # warm-up (each shell's first cell makes its container)
                for request in ("cell", "native") * 50:
                    worker.ask(request)
            for _ in range(args.runs):
                for kind, worker in (("rootless", mine), ("root", roots)):
                    times[f"native_{kind}"].append(worker.ask("native"))
                    times[f"cell_{kind}"].append(worker.ask("cell"))
        median = {key: statistics.median(values) * 1000 for key, values in times.items()}
        print("a `pass` cell (median of wall-clock times, ms)")
        for kind in ("rootless", "root"):
            overhead = median[f"cell_{kind}"] - median[f"native_{kind}"]
            print(f"  {'as a user who is not root' if kind == 'rootless' else 'as root':<28}native "
                  f"{median[f'native_{kind}']:.3f}  %%container {median[f'cell_{kind}']:.3f}  overhead "
                  f"{overhead:.3f} ms (target <= 1 ms)")
    finally:
        remove_tree(work)
        check.clean_and_report(work)
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
