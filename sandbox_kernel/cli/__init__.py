"""``sandbox-kernel``: docker's habits for images and containers.

Every error is one line on stderr, ``sandbox-kernel: error: ...``; exit 1,
usage errors exit 2. No traceback for bad input.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from ..runtime import SandboxError, Store, UsageError, format_size
from ..verbs import VERBS
from . import registry
from .containers import add_commands, inspect_container
from .verbs import add_verbs

PROG = "sandbox-kernel"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2."""

    commands: dict[str, argparse.ArgumentParser] = {}  # noqa: RUF012  (the top parser's: its subcommands)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _store(args: argparse.Namespace) -> Store:
    return Store(args.root)


def cmd_load(args: argparse.Namespace) -> int:
    from ..runtime import load

    for loaded in load(_store(args), args.input, tag=args.tag):
        for tag in loaded.tags:
            print(f"Loaded image: {tag}")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from ..runtime import save

    save(_store(args), args.images, args.output)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    _store(args).tag(args.source, args.target)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .. import format as fmt

    store = _store(args)
    out = []
    for name in args.names:
        container = inspect_container(args, name) if args.type != "image" else None
        out.append(container if container is not None else fmt.inspect_image(store.resolve(name)))
    print(json.dumps(out, indent=4))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:

    removed = _store(args).prune()
    print(f"Deleted {removed['blobs']} blobs and {removed['layers']} unpacked layers")
    print(f"Total reclaimed space: {format_size(removed['bytes'], docker=True)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ..runtime import check_store

    report = check_store(_store(args), repair=args.repair)
    if args.json:
        print(json.dumps({"Checked": report.checked, "Findings": [f.to_json() for f in report.findings]}, indent=4))
    else:
        for finding in report.findings:
            print(("" if finding.problem else "note: ") + finding.line())
        print(report.summary())
    if report.problems_left:
        if not args.json:
            print(f"{PROG}: error: {len(report.problems_left)} problem(s) left"
                  + ("" if args.repair else ": `check --repair` removes what is broken"), file=sys.stderr)
        return 1
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from ..runtime import RECIPES, build

    store = _store(args)
    if args.name != "all" and args.name not in RECIPES:
        raise UsageError(f"no recipe {args.name!r}: choose from {', '.join(sorted(RECIPES))} or all")
    names = sorted(RECIPES) if args.name == "all" else [args.name]
    for name in names:
        image = build(store, name, rebuild=args.rebuild, tag=args.tag if len(names) == 1 else None)
        print(f"Built {image.tags[0] if image.tags else image.id}: {image.short_id}")
    return 0


def cmd_system_delegate(args: argparse.Namespace) -> int:
    from ..runtime.delegation import delegate

    changed = delegate(args.user, remove=args.remove)
    verb = "Removed" if args.remove else "Made"
    for path in changed:
        print(f"{verb} {path}")
    if not changed:
        print(f"{args.user}: {'nothing to remove' if args.remove else 'already delegated'}")
    return 0


class _Unbuilt:
    """A command's parser not built: the command line names another one (argparse takes ~20 ms to build all
    of them, a tenth of a CLI call)."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        pass


def command_word(argv: Sequence[str]) -> str | None:
    """The command an argv names (the first word that is not a global option or its value); None for help."""
    words = iter(argv)
    for word in words:
        if word in ("--root", "-H", "--host"):
            next(words, None)
        elif word.startswith("--root=") or word.startswith("--host="):
            continue
        elif word.startswith("-"):
            return None  # (-h, or a mistake: the whole parser says what is wrong)
        else:
            return word
    return None


def build_parser(only: str | None = None) -> _Parser:
    """The CLI's parser; ``only``: just that command's (the others are named nowhere)."""
    parser = _Parser(prog=PROG, description="Containers for notebooks, with docker's habits.")
    parser.add_argument("--root", help="the store directory (default $SANDBOX_KERNEL_ROOT or /var/lib/sandbox-kernel)")
    parser.add_argument("-H", "--host", metavar="URL",
                        help="a Jupyter server with sandbox-kernel's API to work on instead of this machine "
                        "(default $SANDBOX_KERNEL_HOST; its token in $SANDBOX_KERNEL_TOKEN)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    parser.commands = sub.choices

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Unbuilt()  # type: ignore[return-value]
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func, subcommand=name)  # (not args.command: run's CMD is args.command too)
        return p

    p = add("load", cmd_load, "load images from an OCI layout dir, an oci-archive or a docker-archive")
    p.add_argument("input", metavar="PATH", help="a directory, a tar file, or - for standard input")
    p.add_argument("-t", "--tag", help="name the loaded image REF")
    p = add("save", cmd_save, "save images to an OCI archive")
    p.add_argument("images", nargs="+", metavar="REF")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p = add("tag", cmd_tag, "give an image another name")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p = add("inspect", cmd_inspect, "show containers or images as JSON")
    p.add_argument("names", nargs="+", metavar="NAME|REF")
    p.add_argument("--type", choices=["container", "image"], help="only look for this kind of object")
    add("prune", cmd_prune, "remove unused blobs and unpacked layers")
    p = add("check", cmd_check, "verify every blob, image, unpacked layer and container of the store")
    p.add_argument("--repair", action="store_true",
                   help="remove what is broken (a pull or load restores it), unpack damaged layers again")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_verbs(add)  # the verbs of every frontend (run, ps, exec, images, pull, ...): local or -H
    registry.add_commands(add)
    add_commands(add)

    if only is not None and only not in ("image", "network", "system", "kernelspec"):
        return parser
    from ..runtime import RECIPES

    image = sub.add_parser("image", help="image management (build base images)")
    image_sub = image.add_subparsers(dest="image_command", metavar="COMMAND", parser_class=_Parser)
    image_sub.required = True
    p = image_sub.add_parser("build", help="build a base image here, without a registry")
    p.add_argument("name", metavar="NAME", help=f"{', '.join(RECIPES)} or all")
    p.add_argument("-t", "--tag", help="name for the image (default localhost/NAME:latest)")
    p.add_argument("--rebuild", action="store_true", help="ignore the cache")
    p.set_defaults(func=cmd_image_build)
    system = sub.add_parser("system", help="what root sets up once for this host")
    system_sub = system.add_subparsers(dest="system_command", metavar="COMMAND", parser_class=_Parser)
    system_sub.required = True
    p = system_sub.add_parser("delegate", help="give USER a cgroup subtree of its own (cgroup v1), for its "
                              "containers' limits; idempotent")
    p.add_argument("user", metavar="USER", help="a user name or uid")
    p.add_argument("--remove", action="store_true", help="take the subtree away (refused while it is used)")
    p.set_defaults(func=cmd_system_delegate)
    from .networks import add_network_commands

    add_network_commands(sub, _Parser)
    from .kernelspecs import add_kernelspec_commands

    add_kernelspec_commands(sub, _Parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    word = command_word(argv)
    parser = build_parser(only=word)
    if word is not None and word not in parser.commands:
        parser = build_parser()  # (no such command: the whole parser lists them)
    try:
        args = parser.parse_args(argv)
        host = args.host or os.environ.get("SANDBOX_KERNEL_HOST")
        command = getattr(args, "subcommand", None) or args.command
        if host and command not in VERBS:
            raise UsageError(f"'{command}' works on this machine only, not against a remote host "
                             f"(--host / $SANDBOX_KERNEL_HOST); remote: {', '.join(sorted(VERBS))}")
        return args.func(args)
    except SandboxError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"{PROG}: error: no space left on device ({exc.filename or ''})", file=sys.stderr)
        else:
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
