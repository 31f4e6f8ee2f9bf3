"""``push``, ``login``, ``logout``: the CLI side of registries (``pull`` is a shared verb: verbs/images.py).

On a terminal every layer gets a tqdm bar on stderr (bytes, speed); elsewhere
one line per layer when it is done, as docker prints them. Passwords never
appear in output or in an error message.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from .. import progress
from ..runtime import Store, UsageError
from ..verbs.images import tls_arguments

PROG = "sandbox-kernel"


def _store(args: argparse.Namespace) -> Store:
    return Store(args.root)


def _options(args: argparse.Namespace) -> Any:
    from ..runtime import RegistryOptions

    return RegistryOptions(insecure=args.insecure, ca_file=getattr(args, "ca_file", None),
                           cert_dir=getattr(args, "cert_dir", None))


def cmd_push(args: argparse.Namespace) -> int:
    from ..runtime import push

    shown = progress.terminal("Push", args.quiet)
    try:
        result = push(_store(args), args.source, args.destination, options=_options(args),
                      progress=progress.Follow(args.source, shown))
    finally:
        shown.close()
    print(f"{result.reference.tag}: digest: {result.digest} size: {result.size}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        print(f"{PROG}: WARNING! Using --password on the command line is insecure; use --password-stdin.",
              file=sys.stderr)
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password: give --password-stdin (or run on a terminal to be asked)")
    if not password:
        raise UsageError("the password is empty")
    return password


def cmd_login(args: argparse.Namespace) -> int:
    from ..runtime import login

    username = args.username
    if not username:
        if not sys.stdin.isatty() or args.password_stdin:
            raise UsageError("no user name: give --username")
        username = input("Username: ").strip()
    _registry, path = login(args.server, username, _read_password(args), _options(args))
    print(f"Login Succeeded (credentials saved in {path})")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from ..runtime import logout

    registry, removed = logout(args.server)
    print(f"Removing login credentials for {registry}" if removed else f"Not logged in to {registry}")
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("push", cmd_push, "push an image to a registry")
    p.add_argument("source", metavar="REF")
    p.add_argument("destination", nargs="?", metavar="DEST", help="push under this name (default: REF)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    tls_arguments(p)
    p = add("login", cmd_login, "log in to a registry (saved in docker's config.json)")
    p.add_argument("server", nargs="?", metavar="SERVER", help="default: Docker Hub")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="insecure: prefer --password-stdin")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    tls_arguments(p)
    p = add("logout", cmd_logout, "forget the saved credentials of a registry")
    p.add_argument("server", nargs="?", metavar="SERVER", help="default: Docker Hub")
