"""The kill matrix: the controlling process killed with SIGKILL anywhere in a command loses nothing and leaves
nothing behind.

Each command (pull with its unpack, run with a fresh unpack, create, start, run -d, exec, commit, rm, run on a
network, network create and rm) is run once whole to count its calls into the package, then again killed at
points spread evenly over that count (tests/killpoint.py). After each kill: the next call (`ps -a`) reconciles,
the store passes `check` (notes of killed writes allowed, no problem), the command run again works, and once its
objects are removed no mount, cgroup, container directory, name, veth, bridge, nftables table or process of the
store is left. ``SANDBOX_KERNEL_KILL_POINTS=N`` tries N points per command instead of the suite's 5.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import busybox_copy
from leftovers import assert_nothing_left, cgroups
from registry_infra import running_registry

from sandbox_kernel.runtime import Containers, Networks, Store, check_store

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"
KILLPOINT = Path(__file__).with_name("killpoint.py")
POINTS = int(os.environ.get("SANDBOX_KERNEL_KILL_POINTS") or 5)
TRIED: dict[str, tuple[int, int]] = {}  # command -> (points tried, points survived), printed at the end


@dataclass
class Command:
    name: str
    argv: list[str]  # after `--root ROOT`; {reg} is the registry's host
    setup: list[list[str]] = field(default_factory=list)  # CLI calls that make what the command needs
    fresh_unpack: bool = False  # its image's layers removed first, so that the command unpacks them
    empty_store: bool = False  # the image not in the store at all (pull)


COMMANDS = [
    Command("pull", ["pull", "--insecure", "{reg}/busybox:latest"], empty_store=True),
    Command("run-unpack", ["run", "--rm", BUSYBOX, "true"], fresh_unpack=True),
    Command("create", ["create", "--name", "k", BUSYBOX, "sleep", "1000"]),
    Command("start", ["start", "k"], [["create", "--name", "k", BUSYBOX, "sleep", "1000"]]),
    Command("run-d", ["run", "-d", "--name", "k", BUSYBOX, "sleep", "1000"]),
    Command("exec", ["exec", "k", "sh", "-c", "echo hi > /made"], [["run", "-d", "--name", "k", BUSYBOX,
                                                                     "sleep", "1000"]]),
    Command("commit", ["commit", "k", "localhost/snap:1"], [["run", "-d", "--name", "k", BUSYBOX, "sleep", "1000"],
                                                            ["exec", "k", "sh", "-c", "echo hi > /made"]]),
    Command("rm", ["rm", "-f", "k"], [["run", "-d", "--name", "k", BUSYBOX, "sleep", "1000"]]),
    Command("run-network", ["run", "--rm", "--network", "n1", BUSYBOX, "true"], [["network", "create", "n1"]]),
    Command("network-create", ["network", "create", "n1"]),
    Command("network-rm", ["network", "rm", "n1"], [["network", "create", "n1"]]),
]


@pytest.fixture(scope="module")
def registry(base_store, tmp_path_factory):
    """A registry on 127.0.0.1 holding busybox (pushed by our CLI)."""
    with running_registry("plain", parent=tmp_path_factory.mktemp("kill-registry")) as reg:
        ref = f"{reg.host}/busybox:latest"
        base_store.tag(BUSYBOX, ref)
        try:
            run_cli(base_store.root, {}, ["push", "--insecure", ref], check=True)
        finally:
            base_store.remove_tags([ref])
        yield reg


@pytest.fixture
def host_netns():
    """A network namespace that stands for the host's: the commands' bridges and veths go there."""
    from pyroute2 import IPRoute, netns

    name = f"sk-kill-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    yield name
    netns.remove(name)


def run_cli(root: Path, env: dict[str, str], argv: list[str], *, kill_at: int | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """The CLI as its own process; ``kill_at``: through killpoint.py (0 counts, N kills at the Nth call)."""
    prefix = [sys.executable, str(KILLPOINT), str(kill_at)] if kill_at is not None else \
        [sys.executable, "-m", "sandbox_kernel"]
    done = subprocess.run([*prefix, "--root", str(root), *argv], env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr}")
    return done


def store_processes(root: Path) -> list[str]:
    """Processes that name the store in their command line: the CLI and what it forked (monitors)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline:
            found.append(pid + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def netns_state(name: str) -> tuple[list[str], str]:
    """The links (other than lo) and the nftables tables of the namespace."""
    from pyroute2 import IPRoute

    with IPRoute(netns=name) as ipr:
        links = sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
    tables = subprocess.run(["ip", "netns", "exec", name, "nft", "list", "tables"], capture_output=True,
                            text=True, check=True).stdout.strip()
    return [link for link in links if link != "lo"], tables


def clean(store: Store, netns: str) -> None:
    """Remove every container and network the command made (as a user would: rm -f, network rm)."""
    containers = Containers(store, warm_slots=False)
    for info in containers.list(all=True):
        containers.remove(info.id, force=True)
    networks = Networks(store.root, host_netns=netns)
    for network in networks.list():
        networks.remove(network.name)
    store.remove_tags([name for name in store.tags() if name != BUSYBOX])  # (pulled, committed)
    store.prune()


def assert_clean(store: Store, netns: str, before: set[Path], where: str) -> None:
    left = [f"{p.name[:12]}: {sorted(c.name for c in p.iterdir())}" for p in (store.root / "containers").iterdir()
            if p.name != "names"]
    try:
        assert_nothing_left(store.root, before)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc} {left}") from None
    deadline = time.monotonic() + 30  # a monitor still on its way out (after it told its caller)
    while (procs := store_processes(store.root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs, f"{where}: processes left: {procs}"
    assert netns_state(netns) == ([], ""), f"{where}: links or nftables tables left"


def points(count: int) -> list[int]:
    """``POINTS`` kill points spread evenly over a command's ``count`` calls (1-based)."""
    return sorted({max(1, round(count * (i + 1) / (POINTS + 1))) for i in range(POINTS)})


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_kill_anywhere_loses_nothing_and_leaves_nothing(command, base_store, registry, host_netns, tmp_path):
    store = busybox_copy(base_store, tmp_path / "copy")
    if command.empty_store:
        store.remove_tags([BUSYBOX])
        store.prune()
    env = {"SANDBOX_KERNEL_NETNS": host_netns, "KILLPOINT_COUNT": str(tmp_path / "count")}
    argv = [a.replace("{reg}", registry.host) for a in command.argv]
    before = cgroups()

    def prepare() -> None:
        for call in command.setup:
            run_cli(store.root, env, call, check=True)
        if command.fresh_unpack:
            for layer in (store.root / "layers").iterdir():
                subprocess.run(["rm", "-rf", str(layer)], check=True)

    try:
        for kill_at in (None, 0):  # once to reach the state the kill runs start in (layers unpacked), then counted
            prepare()
            assert run_cli(store.root, env, argv, kill_at=kill_at).returncode == 0
            clean(store, host_netns)
        count = int((tmp_path / "count").read_text())
        survived = 0
        for n in points(count):
            where = f"{command.name} killed at call {n} of {count}"
            prepare()
            killed = run_cli(store.root, env, argv, kill_at=n)
            assert killed.returncode == -9, f"{where}: not killed ({killed.returncode}: {killed.stderr})"
            # the next call reconciles; the store is sound; the command works again
            run_cli(store.root, env, ["ps", "-a"], check=True)
            problems = check_store(Store(store.root)).problems_left
            assert not problems, f"{where}: {[p.line() for p in problems]}"
            if command.name in ("create", "run-d"):  # the name a killed create claimed is free again
                run_cli(store.root, env, ["rm", "-f", "k"])
            if command.name == "network-create":
                run_cli(store.root, env, ["network", "rm", "n1"])
            again = run_cli(store.root, env, argv)
            gone = command.name in ("rm", "network-rm") and "no such" in again.stderr  # (the kill came late)
            assert again.returncode == 0 or gone, f"{where}: the command again: {again.stderr}"
            clean(store, host_netns)
            assert_clean(store, host_netns, before, where)
            survived += 1
        TRIED[command.name] = (len(points(count)), survived)
        print(f"\n{command.name}: {survived} of {len(points(count))} kill points survived ({count} calls)")
    finally:
        clean(store, host_netns)
