"""The sandboxed kernel vs a plain ipykernel: the start (until kernel_info answers) and a pass cell's round trip.

Both are started by jupyter_client's KernelManager, as JupyterLab and nbclient start kernels:

- plain: Debian's ``/usr/bin/python3 -m ipykernel_launcher`` (python3-ipykernel: the very ipykernel the
  sandboxed kernel's image has), over TCP, Jupyter's default;
- sandboxed: the same in a container of localhost/debian-kernel (our provisioner: user namespace, seccomp,
  cgroup limits, no network, ZeroMQ over ipc sockets in a mounted directory).

Start: KernelManager.start_kernel, a client's channels, until kernel_info answers; then the kernel is shut
down (untimed). The two alternate, round by round. Round trip: one kernel of each, ``execute("pass")`` until its
shell reply, after a warm-up; the two alternate in blocks.

Prints the medians and the ratio of the starts (target: at most 1.5x) and the round trips' difference (target:
at most 0.2 ms). Needs root (the provisioner's containers, as for the other benchmarks).

    .venv/bin/python benchmarks/bench_kernel.py [--starts 15] [--cells 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_start import HostCheck

from sandbox_kernel.kernel import kernelspec
from sandbox_kernel.runtime import Store, build

PLAIN_PYTHON = "/usr/bin/python3"  # Debian's, with python3-ipykernel (scripts/setup.sh)
IMAGE = "localhost/debian-kernel:latest"


def install_specs(prefix: Path) -> None:
    kernelspec.install("sandboxed", kernelspec.settings(IMAGE), prefix=str(prefix))
    plain = prefix / "share" / "jupyter" / "kernels" / "plain"
    plain.mkdir(parents=True)
    (plain / "kernel.json").write_text(json.dumps({
        "argv": [PLAIN_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "plain",
        "language": "python", "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}}))


def start_once(name: str) -> float:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=name)
    begin = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        return time.perf_counter() - begin
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def round_trips(names: list[str], cells: int, block: int = 50) -> dict[str, list[float]]:
    from jupyter_client.manager import start_new_kernel

    kernels = {name: start_new_kernel(kernel_name=name, startup_timeout=60) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for _, kc in kernels.values():  # warm-up
            for _ in range(50):
                kc.execute_interactive("pass", timeout=30)
        for _ in range(cells // block):
            for name, (_, kc) in kernels.items():
                for _ in range(block):
                    begin = time.perf_counter()
                    msg_id = kc.execute("pass")
                    reply = kc.get_shell_msg(timeout=30)
                    times[name].append(time.perf_counter() - begin)
                    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok", reply
                while kc.iopub_channel.msg_ready():  # (the busy/idle and execute_input messages, unread)
                    kc.get_iopub_msg(timeout=1)
    finally:
        for km, kc in kernels.values():
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=15, help="starts of each kernel (default 15)")
    parser.add_argument("--cells", type=int, default=2000, help="pass cells in each kernel (default 2000)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_kernel: run as root (as the other benchmarks)")
    if not Path(PLAIN_PYTHON).exists() or os.system(f"{PLAIN_PYTHON} -c 'import ipykernel' 2>/dev/null"):
        sys.exit("bench_kernel: Debian's python3-ipykernel is missing: run bash scripts/setup.sh")
    check = HostCheck()
    work = Path(tempfile.mkdtemp(prefix="sk-bench-kernel-"))
    try:
        store = Store(work / "store")
        build(store, "debian-kernel")
        install_specs(work)
        os.environ.update(SANDBOX_KERNEL_ROOT=str(store.root), JUPYTER_PATH=str(work / "share" / "jupyter"),
                          JUPYTER_RUNTIME_DIR=str(work / "runtime"), IPYTHONDIR=str(work / "ipython"))
        starts: dict[str, list[float]] = {"plain": [], "sandboxed": []}
        for round_ in range(args.starts + 2):  # two warm-up rounds (page cache, the unpacked layer)
            for name in starts:
                elapsed = start_once(name)
                if round_ >= 2:
                    starts[name].append(elapsed)
        trips = round_trips(["plain", "sandboxed"], args.cells)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        check.clean_and_report(work)

    def med(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"kernel start until kernel_info answers, median of {args.starts}:")
    for name, values in starts.items():
        print(f"  {name:10s} {med(values):8.1f} ms  (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})")
    ratio = med(starts["sandboxed"]) / med(starts["plain"])
    print(f"  ratio sandboxed/plain: {ratio:.2f}x (target: at most 1.5x)")
    print(f"pass cell round trip (execute until its shell reply), median of {len(trips['plain'])}:")
    for name, values in trips.items():
        print(f"  {name:10s} {med(values):8.3f} ms  (p95 {statistics.quantiles(values, n=20)[-1] * 1000:.3f})")
    diff = med(trips["sandboxed"]) - med(trips["plain"])
    print(f"  difference sandboxed - plain: {diff:+.3f} ms (target: at most 0.2 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
