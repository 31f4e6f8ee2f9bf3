"""The container commands of ``sandbox-kernel``: run, create, start, exec, ps, stats, logs, stop, kill, rm, ...

Same contract as cli/__init__.py: one-line errors, docker's flags and exit statuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime import (
    DEFAULT_ULIMITS,
    ContainerSpec,
    ImageNotFound,
    Limits,
    Mount,
    NetSpec,
    SandboxError,
    Store,
    UsageError,
    parse_env,
    parse_publish,
    parse_size,
    parse_ulimit,
)

if TYPE_CHECKING:  # the engine is imported by the commands that use it (pull, images... do not)
    from ..runtime import Containers

PROG = "sandbox-kernel"
Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _containers(args: argparse.Namespace) -> Containers:
    from ..runtime import Containers

    return Containers(Store(args.root), warm_slots=False)  # a CLI call runs one container and exits


def _limits(args: argparse.Namespace, base: Limits | None = None) -> Limits:
    """``base`` (default: the defaults) with the limit options given (an empty one keeps the base's)."""
    return (base or Limits()).with_options(args.memory or None, args.cpus or None, args.pids_limit,
                                           getattr(args, "memory_swap", None) or None, _disk(args))


def _disk(args: argparse.Namespace) -> str | None:
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


def _spec(args: argparse.Namespace) -> ContainerSpec:
    return ContainerSpec(
        image=args.image,
        command=tuple(args.command),
        entrypoint=(args.entrypoint,) if args.entrypoint is not None else None,
        env=parse_env(args.env),
        workdir=args.workdir,
        user=args.user,
        hostname=args.hostname,
        name=args.name,
        limits=_limits(args),
        mounts=tuple(Mount.parse(v) for v in args.volume),
        network=NetSpec(args.network),
        ports=tuple(parse_publish(p) for p in args.publish),
        remove=args.rm,
        ulimits=DEFAULT_ULIMITS + tuple(parse_ulimit(u) for u in args.ulimit),
        log_size=parse_size(args.log_size, "--log-size") if args.log_size else ContainerSpec.log_size,
        userns=args.userns,
    )


def _no_tty(args: argparse.Namespace) -> None:
    if getattr(args, "tty", False):
        raise UsageError("-t: containers get no terminal yet; drop -t (stdin is passed as it is)")


def _ensure_image(args: argparse.Namespace) -> None:
    """docker's ``--pull``: ``missing`` (the default) pulls an image the store lacks, saying so first;
    ``always`` pulls every time; ``never`` refuses a missing one."""
    from .registry import pull_image

    if args.pull == "missing":
        try:
            Store(args.root).resolve(args.image)
            return
        except ImageNotFound:
            print(f"Unable to find image '{args.image}' locally", file=sys.stderr)
    if args.pull != "never":
        pull_image(args, args.image)


def cmd_run(args: argparse.Namespace) -> int:
    _no_tty(args)
    spec = _spec(args)
    _ensure_image(args)
    containers = _containers(args)
    if args.detach:
        print(containers.run_detached(spec))
        return 0
    sys.stdout.flush()
    result = containers.run(spec)  # passes Ctrl-C, SIGTERM and SIGHUP on to the container
    if result.message():
        print(f"{PROG}: {result.message()}", file=sys.stderr)
    return result.exit_code


def cmd_create(args: argparse.Namespace) -> int:
    _no_tty(args)
    spec = _spec(args)
    _ensure_image(args)
    print(_containers(args).create(spec))
    return 0


def _each(args: argparse.Namespace, action: Callable[[Containers, str], Any], quiet: bool = False) -> int:
    """Apply ``action`` to every named container; print each name done, errors as one line each."""
    containers = _containers(args)
    status = 0
    for name in args.containers:
        try:
            action(containers, name)
        except UsageError:
            raise  # the same for every container: once, exit 2
        except SandboxError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        if not quiet:
            print(name)
    return status


def cmd_start(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.start(n))


def cmd_exec(args: argparse.Namespace) -> int:
    _no_tty(args)
    sys.stdout.flush()
    return _containers(args).exec(args.container, args.command, env=parse_env(args.env), user=args.user,
                                  workdir=args.workdir)


def cmd_ps(args: argparse.Namespace) -> int:
    from .. import format as fmt

    infos = _containers(args).list(all=args.all)
    if args.quiet:
        for info in infos:
            print(info.short_id)
    elif args.json:
        print(json.dumps([fmt.container_row(info) for info in infos], indent=2))
    else:
        print(fmt.containers_table(infos))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .. import format as fmt

    containers = _containers(args)
    names = args.containers or [info.id for info in containers.list()]
    stats = [containers.stats(name) for name in names]
    if args.json:
        print(json.dumps([{"Id": s.id, "Name": s.name, "Usage": s.usage.__dict__, "Limits": s.limits.__dict__}
                          for s in stats], indent=2))
    else:
        print(fmt.stats_table(stats))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    for stream, data in _containers(args).logs(args.container, follow=args.follow):
        out[stream].write(data)
        out[stream].flush()
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.stop(n, timeout=args.time))


def cmd_kill(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.kill(n, args.signal))


def cmd_rm(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.remove(n, force=args.force))


def cmd_pause(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.pause(n))


def cmd_unpause(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.resume(n))


def cmd_update(args: argparse.Namespace) -> int:
    return _each(args, lambda c, n: c.update(n, _limits(args, c.get(n).spec.limits)))


def cmd_wait(args: argparse.Namespace) -> int:
    containers = _containers(args)
    for name in args.containers:
        print(containers.wait(name).exit_code)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    for change in _containers(args).diff(args.container):
        print(change)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    image = _containers(args).commit(args.container, args.reference, message=args.message,
                                     compression=args.compression)
    print(image.config_digest)
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    """``cp CONTAINER:PATH DEST`` or ``cp SRC CONTAINER:PATH`` (runtime/copying.py says what is safe and how)."""
    from ..runtime import split_location

    (src_in, src), (dest_in, dest) = split_location(args.source), split_location(args.destination)
    if (src_in is None) == (dest_in is None):
        raise UsageError("cp copies between the host and a container: exactly one of SRC and DEST is CONTAINER:PATH")
    containers = _containers(args)
    if src_in is not None:
        done = containers.copy_from(src_in, src, dest, follow=args.follow_link)
    else:
        assert dest_in is not None
        done = containers.copy_to(dest_in, src, dest, keep_owners=args.archive)
    for line in done.skipped:
        print(f"{PROG}: cp: skipped {line}", file=sys.stderr)
    return 0


def inspect_container(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    """The container's inspect object, or None when no container has that name or id."""
    from .. import format as fmt
    from ..runtime import ContainerNotFound

    try:
        return fmt.inspect_container(_containers(args).get(name))
    except ContainerNotFound:
        return None


def _add_create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="a name for the container")
    p.add_argument("--memory", "-m", help="memory limit, e.g. 256m")
    p.add_argument("--memory-swap", help="memory + swap limit (-1: unlimited swap)")
    p.add_argument("--cpus", help="CPU limit in cores, e.g. 0.5")
    p.add_argument("--pids-limit", type=int, help="process limit (default 2048)")
    p.add_argument("--disk", help="size of its writable layer, e.g. 2g (a file system of its own; root only)")
    p.add_argument("--storage-opt", action="append", metavar="size=SIZE", help="docker's spelling of --disk")
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
    p.add_argument("-t", "--tty", action="store_true", help="not supported yet")
    p.add_argument("--pull", default="missing", choices=("missing", "always", "never"),
                   help="pull the image before the run: when the store lacks it (default), always, or never")
    p.add_argument("--insecure", action="store_true", help="for that pull: allow plain http or an unverified https")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


def add_commands(add: Add) -> None:
    p = add("run", cmd_run, "run a command in a new container")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background; print the id")
    _add_create_options(p)
    _add_create_options(add("create", cmd_create, "create a container (start it with start)"))
    p = add("cp", cmd_cp, "copy files between a running container and the host (CONTAINER:PATH on one side)")
    p.add_argument("-a", "--archive", action="store_true", help="keep the files' owners (as the container sees them)")
    p.add_argument("-L", "--follow-link", action="store_true", help="copy what a source symlink points to")
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DEST")
    p = add("start", cmd_start, "start containers in the background")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("exec", cmd_exec, "run a command in a running container")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user", help="USER[:GROUP] or UID[:GID]")
    p.add_argument("-i", "--interactive", action="store_true", help="accepted: stdin is always passed")
    p.add_argument("-t", "--tty", action="store_true", help="not supported yet")
    p.add_argument("container", metavar="NAME")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")
    p = add("ps", cmd_ps, "list containers")
    p.add_argument("-a", "--all", action="store_true", help="also stopped ones")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("stats", cmd_stats, "memory, CPU and pids of running containers (one snapshot)")
    p.add_argument("containers", nargs="*", metavar="NAME")
    p.add_argument("--no-stream", action="store_true", help="accepted: stats always prints one snapshot")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add("logs", cmd_logs, "output of a detached container")
    p.add_argument("-f", "--follow", action="store_true", help="then the new output, until it stops")
    p.add_argument("container", metavar="NAME")
    p = add("stop", cmd_stop, "stop containers: SIGTERM, then SIGKILL after a grace period")
    p.add_argument("-t", "--time", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("kill", cmd_kill, "send a signal to containers (default SIGKILL)")
    p.add_argument("-s", "--signal", default="KILL")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("rm", cmd_rm, "remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("pause", cmd_pause, "freeze every process of containers")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("unpause", cmd_unpause, "thaw paused containers")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("update", cmd_update, "change the limits of containers, running or not")
    p.add_argument("--memory", "-m")
    p.add_argument("--memory-swap")
    p.add_argument("--cpus")
    p.add_argument("--pids-limit", type=int)
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("wait", cmd_wait, "wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+", metavar="NAME")
    p = add("diff", cmd_diff, "files a container added (A), changed (C) or deleted (D)")
    p.add_argument("container", metavar="NAME")
    p = add("commit", cmd_commit, "make an image of a container's changes (one new layer)")
    p.add_argument("container", metavar="NAME")
    p.add_argument("reference", nargs="?", metavar="REF", help="tag the new image REF")
    p.add_argument("-m", "--message", help="a comment in the image's history")
    p.add_argument("--compression", choices=["gzip", "zstd"], default="gzip",
                   help="of the new layer (default gzip: every client reads it)")


__all__ = ["add_commands", "inspect_container"]
