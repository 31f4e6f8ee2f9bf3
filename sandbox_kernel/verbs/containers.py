"""The container verbs every frontend offers: run, create, exec, ps, stats, start, stop, rm, logs, commit,
update and limits."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..runtime import ImageNotFound, Limits, UsageError, format_size
from . import Done, Frontend, Listing, each, pull_shown, verb

if TYPE_CHECKING:
    from ..client import Client, ContainerRow, LimitsRow, RunOptions

T = TypeVar("T")


# -- run and create --------------------------------------------------------------------------------------------------

def limit_arguments(p: argparse.ArgumentParser, disk: bool = False) -> None:
    p.add_argument("--memory", "-m", help="memory limit, e.g. 256m")
    p.add_argument("--memory-swap", help="memory + swap limit (-1: unlimited swap)")
    p.add_argument("--cpus", help="CPU limit in cores, e.g. 0.5")
    p.add_argument("--pids-limit", type=int, help="process limit (default 2048)")
    if disk:
        p.add_argument("--disk", help="size of its writable layer, e.g. 2g (a file system of its own; root only)")
        p.add_argument("--storage-opt", action="append", metavar="size=SIZE", help="docker's spelling of --disk")


def _create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="a name for the container")
    limit_arguments(p, disk=True)
    p.add_argument("--network", default="none",
                   help="none (default), bridge, a network made with network create, or host (unsafe: the "
                   "caller's interfaces)")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="HOST:CONTAINER",
                   help="publish a container port on 127.0.0.1 of the host (needs a network)")
    p.add_argument("-v", "--volume", action="append", default=[], help="SRC:DST[:ro]")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE")
    p.add_argument("-w", "--workdir", help="working directory in the container")
    p.add_argument("-u", "--user", help="USER[:GROUP] or UID[:GID]")
    p.add_argument("--hostname")
    p.add_argument("--entrypoint")
    p.add_argument("--ulimit", action="append", default=[], help="NAME=SOFT[:HARD], e.g. nofile=1024:4096")
    p.add_argument("--log-size", help="keep at most this much output of a detached container (default 8m)")
    p.add_argument("--userns", default="", metavar="host",
                   help="host: no user namespace, container root is host root (trusted tools only)")
    p.add_argument("-i", "--interactive", action="store_true", help="accepted: stdin is always passed")
    p.add_argument("-t", "--tty", action="store_true",
                   help="a terminal of its own (with -i on a terminal: Ctrl-C, Ctrl-D and the window size as docker)")
    p.add_argument("--pull", default="missing", choices=("missing", "always", "never"),
                   help="pull the image before the run: when the store lacks it (default), always, or never")
    p.add_argument("--insecure", action="store_true", help="for that pull: allow plain http or an unverified https")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--detach", action="store_true", help="run in the background; print the id")
    _create_arguments(p)


def disk_option(args: argparse.Namespace) -> str | None:
    """``--disk SIZE``, or docker's ``--storage-opt size=SIZE`` (the one storage option there is here)."""
    size = getattr(args, "disk", None)
    for option in getattr(args, "storage_opt", None) or []:
        key, _, value = option.partition("=")
        if key.strip() != "size" or not value.strip():
            raise UsageError(f"invalid --storage-opt {option!r}: the only storage option is size=SIZE")
        if size is not None and size != value.strip():
            raise UsageError("--disk and --storage-opt size= disagree: give one")
        size = value.strip()
    return size


def limits_given(args: argparse.Namespace) -> LimitsRow | None:
    """The defaults with the limit options given, checked; None when none is given (the client's defaults)."""
    from ..client import limits_row

    disk = disk_option(args)
    if args.memory is None and args.cpus is None and args.pids_limit is None and disk is None:
        return None
    return limits_row(Limits().with_options(args.memory or None, args.cpus or None, args.pids_limit, disk=disk))


def run_options(args: argparse.Namespace) -> RunOptions:
    from ..client import RunOptions

    return RunOptions(
        image=args.image, command=tuple(args.command), name=args.name, limits=limits_given(args),
        memory_swap=args.memory_swap or None, entrypoint=args.entrypoint, env=tuple(args.env), workdir=args.workdir,
        user=args.user, hostname=args.hostname, volumes=tuple(args.volume), publish=tuple(args.publish),
        network=args.network, ulimits=tuple(args.ulimit), log_size=args.log_size, userns=args.userns,
        remove=args.rm)


def _tty(args: argparse.Namespace, front: Frontend, detached: bool = False) -> bool:
    if not getattr(args, "tty", False):
        return False
    if not front.has_terminal:
        raise UsageError(f"-t: there is no terminal here ({front.name}): drop -t")
    if detached:
        raise UsageError("-t with -d: a detached container has no terminal here; use exec -it to get one")
    return True


def _with_image(client: Client, args: argparse.Namespace, front: Frontend, make: Callable[[], T]) -> T:
    """docker's ``--pull``: ``missing`` (the default) pulls an image the store lacks, saying so first;
    ``always`` pulls every time; ``never`` refuses a missing one."""
    if args.pull == "always":
        pull_shown(client, front, args.image, insecure=args.insecure)
    try:
        return make()
    except ImageNotFound:
        if args.pull != "missing":
            raise
    where = f"on {client.url}" if hasattr(client, "url") else "locally"
    front.note(f"Unable to find image '{args.image}' {where}")
    pull_shown(client, front, args.image, insecure=args.insecure)
    return make()


@verb("run", "run a command in a new container", _run_arguments)
def run(client: Client, args: argparse.Namespace, front: Frontend) -> int | str:
    options = run_options(args)
    tty = _tty(args, front, args.detach)
    if args.detach:
        return str(_with_image(client, args, front, lambda: client.run(options, detach=True).id))
    output = front.output(tty)
    outcome = _with_image(client, args, front, lambda: client.run(options, output))
    if outcome.message:
        front.warning(outcome.message)
    return 1 if outcome.exit_code is None else outcome.exit_code


@verb("create", "create a container (start it with start)", _create_arguments)
def create(client: Client, args: argparse.Namespace, front: Frontend) -> str:
    _tty(args, front, detached=True)
    options = run_options(args)
    return str(_with_image(client, args, front, lambda: client.run(options, detach=True, start=False).id))


# -- exec, logs -----------------------------------------------------------------------------------------------------

def _exec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user", help="USER[:GROUP] or UID[:GID]")
    p.add_argument("-i", "--interactive", action="store_true", help="accepted: stdin is always passed")
    p.add_argument("-t", "--tty", action="store_true", help="a terminal of its own, as run -t")
    p.add_argument("container", metavar="NAME")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


@verb("exec", "run a command in a running container", _exec_arguments)
def exec_(client: Client, args: argparse.Namespace, front: Frontend) -> int:
    if not args.command:
        raise UsageError("exec needs a container and a command")
    return client.exec(args.container, list(args.command), front.output(_tty(args, front)), env=tuple(args.env),
                       user=args.user, workdir=args.workdir)


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="then the new output, until it stops")
    p.add_argument("container", metavar="NAME")


@verb("logs", "output of a detached container", _logs_arguments)
def logs(client: Client, args: argparse.Namespace, front: Frontend) -> Done:
    client.logs(args.container, front.output(), follow=args.follow)
    return Done()


# -- ps, stats, limits --------------------------------------------------------------------------------------------

def _status(row: ContainerRow) -> str:
    from .. import format as fmt

    return fmt.status_text(row.status, row.created_at, row.started_at, row.finished_at, row.exit_code)


def _ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="also stopped ones")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--json", action="store_true", help="print JSON")


@verb("ps", "list containers", _ps_arguments)
def ps(client: Client, args: argparse.Namespace, front: Frontend) -> Listing:
    from .. import format as fmt  # (here: the run path does not pay for it)

    found = client.containers(all=args.all)
    rows = [{"Id": r.id, "Names": [r.name], "Image": r.image, "Command": r.command, "Created": fmt.iso(r.created_at),
             "State": r.status, "Status": _status(r), "ExitCode": r.exit_code, "Error": r.error} for r in found]
    cells = []
    for r in found:
        command = r.command if len(r.command) <= 20 else r.command[:19] + "…"
        cells.append([r.id[:12], r.image, f'"{command}"', fmt.time_ago(fmt.iso(r.created_at)), _status(r), r.name])
    return Listing(rows, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], cells,
                   [r.id[:12] for r in found])


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="*", metavar="NAME")
    p.add_argument("--no-stream", action="store_true", help="accepted: stats always prints one snapshot")
    p.add_argument("--json", action="store_true", help="print JSON")


@verb("stats", "memory, CPU and pids of running containers (one snapshot)", _stats_arguments)
def stats(client: Client, args: argparse.Namespace, front: Frontend) -> Listing:
    names = args.containers or [r.id for r in client.containers(all=False) if r.status in ("running", "paused")]
    found = [client.stats(name) for name in names]
    rows = [{"Id": s.id, "Name": s.name, "Memory": s.memory, "MemoryPeak": s.memory_peak,
             "MemoryLimit": s.memory_limit, "CpuSeconds": s.cpu_seconds, "Cpus": s.cpus, "Pids": s.pids,
             "PidsLimit": s.pids_limit, "OomKills": s.oom_kills, "PidsLimitHits": s.pids_limit_hits} for s in found]
    cells = [[s.id[:12], s.name,
              f"{format_size(s.memory or 0, docker=True)} / "
              f"{format_size(s.memory_limit or None, docker=True, none='unlimited')}",
              format_size(s.memory_peak, docker=True, none="-"),
              "-" if s.cpu_seconds is None else f"{s.cpu_seconds:.2f}s",
              f"{'-' if s.pids is None else s.pids} / {s.pids_limit or 'unlimited'}"] for s in found]
    return Listing(rows, ["CONTAINER ID", "NAME", "MEM USAGE / LIMIT", "MEM PEAK", "CPU TIME", "PIDS"], cells,
                   [s.id[:12] for s in found])


def _limits_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="NAME")
    p.add_argument("--memory", "-m", help="a new memory limit, e.g. 256m")
    p.add_argument("--cpus", help="a new CPU limit in cores")
    p.add_argument("--pids-limit", type=int, help="a new process limit")


@verb("limits", "a container's limits; with options, change them (as update does)", _limits_arguments)
def limits(client: Client, args: argparse.Namespace, front: Frontend) -> Listing:
    current = client.limits(args.container)
    given = args.memory is not None or args.cpus is not None or args.pids_limit is not None
    row = client.set_limits(args.container, current.with_options(args.memory, args.cpus, args.pids_limit)) \
        if given else current
    return Listing([{"Container": args.container, "Memory": row.memory, "Cpus": row.cpus, "Pids": row.pids,
                     "Disk": row.disk}], ["CONTAINER", "MEMORY", "CPUS", "PIDS", "DISK"],
                   [[args.container, format_size(row.memory, none="unlimited"),  # (binary: as --memory 64m says)
                     "unlimited" if row.cpus is None else f"{row.cpus:g}",
                     "unlimited" if row.pids is None else str(row.pids), format_size(row.disk, none="-")]])


def _update_arguments(p: argparse.ArgumentParser) -> None:
    limit_arguments(p)
    p.add_argument("containers", nargs="+", metavar="NAME")


@verb("update", "change the limits of containers, running or not", _update_arguments)
def update(client: Client, args: argparse.Namespace, front: Frontend) -> Done:
    def change(name: str) -> None:
        row = client.limits(name).with_options(args.memory or None, args.cpus or None, args.pids_limit)
        client.set_limits(name, row, memory_swap=args.memory_swap or None)

    return each(front, args.containers, change)


# -- start, stop, rm, commit ----------------------------------------------------------------------------------------

def _names(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="NAME")


@verb("start", "start containers in the background", _names)
def start(client: Client, args: argparse.Namespace, front: Frontend) -> Done:
    return each(front, args.containers, client.start)


def _stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    _names(p)


@verb("stop", "stop containers: SIGTERM, then SIGKILL after a grace period", _stop_arguments)
def stop(client: Client, args: argparse.Namespace, front: Frontend) -> Done:
    def stop_one(name: str) -> None:
        front.forget(name)
        client.stop(name, timeout=args.time)

    return each(front, args.containers, stop_one)


def _rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    _names(p)


@verb("rm", "remove containers", _rm_arguments)
def rm(client: Client, args: argparse.Namespace, front: Frontend) -> Done:
    def remove(name: str) -> None:
        if args.force:
            front.forget(name)
        client.remove(name, force=args.force)

    return each(front, args.containers, remove)


def _commit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="NAME")
    p.add_argument("reference", nargs="?", metavar="REF", help="tag the new image REF")
    p.add_argument("-m", "--message", help="a comment in the image's history")
    p.add_argument("--compression", choices=["gzip", "zstd"], default="gzip",
                   help="of the new layer (default gzip: every client reads it)")


@verb("commit", "make an image of a container's changes (one new layer)", _commit_arguments)
def commit(client: Client, args: argparse.Namespace, front: Frontend) -> str:
    image_id = client.commit(args.container, args.reference, args.message, front.created_by(args.container),
                             compression=args.compression)
    front.committed(args.container)
    return image_id
