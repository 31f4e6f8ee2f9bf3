"""``kernelspec install|list|remove``: Jupyter kernels whose cells all run in a container (sandbox_kernel/kernel)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any


def cmd_kernelspec_install(args: argparse.Namespace) -> int:
    from ..kernel import kernelspec

    config = kernelspec.settings(args.image, memory=args.memory, cpus=args.cpus, pids_limit=args.pids_limit,
                                 disk=args.disk, network=args.network, volumes=tuple(args.volume),
                                 keep_files=args.keep_files)
    prefix = args.prefix
    if args.sys_prefix:
        import sys

        prefix = sys.prefix
    path = kernelspec.install(args.name, config, display_name=args.display_name, user=args.user, prefix=prefix)
    print(f"Installed kernelspec {args.name} in {path}")
    return 0


def cmd_kernelspec_list(args: argparse.Namespace) -> int:
    from .. import format as fmt
    from ..kernel import kernelspec

    rows = kernelspec.installed()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(fmt.table([[r.name, r.image or "-", r.path] for r in rows], ["NAME", "IMAGE", "PATH"]))
    return 0


def cmd_kernelspec_remove(args: argparse.Namespace) -> int:
    from ..kernel import kernelspec

    for name in args.names:
        print(f"Removed {kernelspec.remove(name)}")
    return 0


def add_kernelspec_commands(sub: Any, parser_class: Any) -> None:
    kernelspec = sub.add_parser("kernelspec", help="Jupyter kernels whose every cell runs in a container")
    kernelspec_sub = kernelspec.add_subparsers(dest="kernelspec_command", metavar="COMMAND",
                                               parser_class=parser_class)
    kernelspec_sub.required = True
    p = kernelspec_sub.add_parser("install", help="write a kernelspec that starts ipykernel in a container of IMAGE")
    p.add_argument("name", metavar="NAME", help="the kernel's name (letters, digits, '.', '_', '-')")
    p.add_argument("--image", required=True, metavar="REF",
                   help="an image with python3 and ipykernel (`sandbox-kernel image build debian-kernel`)")
    p.add_argument("--display-name", help="what JupyterLab's launcher shows (default: Python 3 (sandbox: REF))")
    p.add_argument("-m", "--memory", help="memory limit (256m, 1g; default: the admin's)")
    p.add_argument("--cpus", help="CPUs (0.5, 2; default: the admin's)")
    p.add_argument("--pids-limit", type=int, help="processes at once (default: the admin's)")
    p.add_argument("--disk", help="size of the container's writable layer (root only)")
    p.add_argument("--network", default="none", help="none (the default: no network), bridge or a network's name")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="a host directory for every kernel of this spec")
    p.add_argument("--keep-files", action="store_true",
                   help="a restart starts the same container again (its files stay) instead of a new one")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for you alone (Jupyter's user data dir)")
    where.add_argument("--sys-prefix", action="store_true", help="in this Python environment (sys.prefix)")
    where.add_argument("--prefix", metavar="DIR", help="under DIR/share/jupyter/kernels")
    p.set_defaults(func=cmd_kernelspec_install)
    p = kernelspec_sub.add_parser("list", help="the kernelspecs Jupyter finds, with the image of the sandboxed ones")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_kernelspec_list)
    p = kernelspec_sub.add_parser("remove", help="remove sandboxed kernelspecs")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_kernelspec_remove)
