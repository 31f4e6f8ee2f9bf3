"""The CLI against a server (``--host URL`` or ``$SANDBOX_KERNEL_HOST``, token in ``$SANDBOX_KERNEL_TOKEN``).

The commands that the server's REST API offers run there, through
:class:`~sandbox_kernel.remote.RemoteClient`, printing what the local commands
print: images, pull, rmi, history, ps, run, start, stop, rm, exec, logs, commit,
update, stats. Any other command is refused with one line: it needs this
machine's runtime (files, terminals, networks).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from .. import format as fmt
from .. import progress
from ..client import Client, LimitsRow, limits_row
from ..runtime import ImageNotFound, Limits, SandboxError, UsageError, format_size

PROG = "sandbox-kernel"


def _images(client: Client, args: argparse.Namespace) -> int:
    rows = [r for r in client.images() if not args.reference or args.reference in (r.ref, fmt.split_ref(r.ref)[0])]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    elif args.quiet:
        for short in dict.fromkeys(r.id.split(":", 1)[1][:12] for r in rows):
            print(short)
    else:
        print(fmt.table([[fmt.split_ref(r.ref)[0], fmt.split_ref(r.ref)[1] or "<none>", r.id.split(":", 1)[1][:12],
                          fmt.time_ago(r.created), format_size(r.size, docker=True)] for r in rows],
                        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]))
    return 0


def _pull(client: Client, args: argparse.Namespace) -> int:
    shown = progress.terminal("Pull", args.quiet)
    try:
        digest = client.pull(args.reference, platform=args.platform, insecure=args.insecure, progress=shown)
    finally:
        shown.close()
    if not args.quiet:
        print(f"Digest: {digest}", file=sys.stderr)
    print(args.reference)
    return 0


def _pull_for_run(client: Client, args: argparse.Namespace) -> None:
    """docker's ``run --pull``: the server pulls the image, its progress shown here as a pull's."""
    shown = progress.terminal("Pull")
    try:
        client.pull(args.image, insecure=args.insecure, progress=shown)
    finally:
        shown.close()


def _rmi(client: Client, args: argparse.Namespace) -> int:
    for ref in args.images:
        for tag in client.remove_image(ref, force=args.force):
            print(f"Untagged: {tag}")
    return 0


def _history(client: Client, args: argparse.Namespace) -> int:
    rows = client.history(args.image)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(fmt.table([[fmt.time_ago(r.get("Created")), (r.get("CreatedBy") or "")[:60],
                          format_size(r.get("Size") or 0, docker=True), r.get("Comment") or ""] for r in rows],
                        ["CREATED", "CREATED BY", "SIZE", "COMMENT"]))
    return 0


def _ps(client: Client, args: argparse.Namespace) -> int:
    rows = client.containers(all=args.all)
    if args.quiet:
        for row in rows:
            print(row.id[:12])
    elif args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(fmt.table([[r.id[:12], r.image, fmt.status_text(r.status, r.created_at, r.started_at, r.finished_at,
                                                               r.exit_code), r.name] for r in rows],
                        ["CONTAINER ID", "IMAGE", "STATUS", "NAMES"]))
    return 0


def _limits(args: argparse.Namespace, base: Limits | None = None) -> LimitsRow | None:
    """What the limit options say, on ``base`` (default: the defaults); None when none is given."""
    from .containers import _disk

    disk = _disk(args)
    if args.memory is None and args.cpus is None and args.pids_limit is None and disk is None:
        return None
    return limits_row((base or Limits()).with_options(args.memory or None, args.cpus or None, args.pids_limit,
                                                      disk=disk))


def _write(stream: str, text: str) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.write(text)
    out.flush()


def _run(client: Client, args: argparse.Namespace) -> int:
    """``run -d`` prints the id; ``run`` follows the container's output there and exits with its code
    (Ctrl-C stops it, as docker's signal proxy would); ``--rm`` removes it after."""
    ignored = [flag for flag, used in (("-v", args.volume), ("-p", args.publish), ("-e", args.env),
                                       ("--network", args.network != "none")) if used]
    if ignored:
        raise UsageError(f"{ignored[0]} is not available against a remote host")
    if args.detach and args.rm:
        raise UsageError("-d and --rm together are not available against a remote host")
    if args.pull == "always":
        _pull_for_run(client, args)
    try:
        cid = client.create(args.image, name=args.name, command=tuple(args.command), limits=_limits(args))
    except ImageNotFound:
        if args.pull != "missing":
            raise
        print(f"Unable to find image '{args.image}' on {getattr(client, 'url', 'the server')}", file=sys.stderr)
        _pull_for_run(client, args)
        cid = client.create(args.image, name=args.name, command=tuple(args.command), limits=_limits(args))
    if args.detach:
        print(cid)
        return 0
    try:
        try:
            code = client.logs(cid, _write, follow=True)
        except KeyboardInterrupt:
            client.stop(cid, timeout=10)
            code = client.logs(cid, lambda *_: None)  # (its output was shown; now its exit code)
    finally:
        if args.rm:
            client.remove(cid, force=True)
    return 1 if code is None else code


def _logs(client: Client, args: argparse.Namespace) -> int:
    client.logs(args.container, _write, follow=args.follow)
    return 0


def _each(client: Client, args: argparse.Namespace, action: Callable[[str], object]) -> int:
    status = 0
    for name in args.containers:
        try:
            action(name)
        except UsageError:
            raise
        except SandboxError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(name)
    return status


def _exec(client: Client, args: argparse.Namespace) -> int:
    if args.env or args.user or args.workdir:
        raise UsageError("-e, -u and -w are not available against a remote host")
    return client.exec(args.container, list(args.command), _write)


def _commit(client: Client, args: argparse.Namespace) -> int:
    print(client.commit(args.container, args.reference, args.message))
    return 0


def _update(client: Client, args: argparse.Namespace) -> int:
    for name in args.containers:
        current = client.limits(name)
        client.set_limits(name, current.with_options(args.memory or None, args.cpus or None, args.pids_limit))
        print(name)
    return 0


def _stats(client: Client, args: argparse.Namespace) -> int:
    rows = [r for r in client.containers(all=False)
            if not args.containers or r.name in args.containers or r.id[:12] in args.containers]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(fmt.table([[r.id[:12], r.name, "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}%",
                          f"{format_size(r.memory or 0, docker=True)} / "
                          f"{format_size(r.memory_limit or None, docker=True)}", str(r.pids or 0)]
                         for r in rows], ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS"]))
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "images": _images, "pull": _pull, "rmi": _rmi, "history": _history, "ps": _ps, "run": _run,
    "start": lambda c, a: _each(c, a, c.start), "stop": lambda c, a: _each(c, a, lambda n: c.stop(n, a.time)),
    "rm": lambda c, a: _each(c, a, lambda n: c.remove(n, force=a.force)), "exec": _exec, "commit": _commit,
    "update": _update, "stats": _stats, "logs": _logs,
}


def run_remote(command: str, client: Client, args: argparse.Namespace) -> int:
    handler = COMMANDS.get(command)
    if handler is None:
        raise UsageError(f"'{command}' works on this machine only, not against a remote host "
                         f"(--host / $SANDBOX_KERNEL_HOST); remote: {', '.join(sorted(COMMANDS))}")
    return handler(client, args)
