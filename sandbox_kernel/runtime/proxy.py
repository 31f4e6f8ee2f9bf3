"""``-p HOST:CONTAINER``: a small userspace TCP proxy from 127.0.0.1:HOST to the container's address.

Why a proxy and not nftables DNAT: DNAT to a container from 127.0.0.1 needs
``route_localnet`` on the host's interfaces (a host-wide change) and rules in the
host's firewall; a proxy changes nothing on the host and goes when the container
goes. The caller binds the listening socket (so a port in use is an error before the
container starts) in the host network namespace; the proxy is a process of its own
(forked like a monitor, not a child of the caller) that relays connections until the
container's PID 1 exits (a pidfd says when), then exits.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
from collections.abc import Callable
from typing import NoReturn

CHUNK = 65536
PROXY_NAME = b"sandbox-proxy"


def parse_publish(text: str) -> tuple[int, int]:
    """``HOST:CONTAINER`` (docker's ``-p``, on 127.0.0.1 only)."""
    from .errors import UsageError

    host_text, sep, container_text = text.rpartition(":")
    if host_text.startswith("127.0.0.1:"):
        host_text = host_text[len("127.0.0.1:"):]
    try:
        host, container = int(host_text), int(container_text)
    except ValueError:
        host = container = -1
    if not sep or not (1 <= host <= 65535 and 1 <= container <= 65535):
        raise UsageError(f"invalid -p {text!r}: expected HOST_PORT:CONTAINER_PORT (published on 127.0.0.1)")
    return host, container


def serve(listener_fd: int, pidfd: int, target: Callable[[], tuple[str, int] | None]) -> NoReturn:
    """Relay every connection to ``listener_fd`` to ``target()`` until ``pidfd`` (the container's PID 1) is
    readable. ``target`` is asked at each connection (the container's address is known once it has one)."""
    with contextlib.suppress(Exception):
        from . import syscalls as sc

        sc.prctl(sc.PR_SET_NAME, PROXY_NAME)
    listener = socket.socket(fileno=listener_fd)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    peers: dict[socket.socket, socket.socket] = {}
    ended: set[socket.socket] = set()  # sockets whose reading side has ended (their peer was told so)

    def close(sock: socket.socket) -> None:
        other = peers.pop(sock, None)
        for s in (sock, other):
            if s is not None:
                with contextlib.suppress(Exception):
                    sel.unregister(s)
                s.close()
                peers.pop(s, None)
                ended.discard(s)

    def end_of(sock: socket.socket) -> None:
        """EOF from ``sock``: pass the half-close on; both halves done, both go."""
        other = peers.get(sock)
        with contextlib.suppress(Exception):
            sel.unregister(sock)
        ended.add(sock)
        if other is None or other in ended:
            close(sock)
            return
        with contextlib.suppress(OSError):
            other.shutdown(socket.SHUT_WR)

    while True:
        for key, _ in sel.select():
            if key.data == "exit":
                os._exit(0)
            if key.data == "accept":
                try:
                    client, _addr = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                address = target()
                try:
                    if address is None:
                        raise OSError("no address yet")
                    upstream = socket.create_connection(address, timeout=5)
                except OSError:
                    client.close()  # nothing listens in the container (yet): the client sees a closed connection
                    continue
                for s in (client, upstream):
                    s.setblocking(True)
                    s.settimeout(30)
                peers[client], peers[upstream] = upstream, client
                sel.register(client, selectors.EVENT_READ, "data")
                sel.register(upstream, selectors.EVENT_READ, "data")
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            other = peers.get(sock)
            try:
                data = sock.recv(CHUNK)
            except OSError:
                data = b""
            if other is None:
                close(sock)
                continue
            if not data:
                end_of(sock)
                continue
            try:
                other.sendall(data)
            except OSError:
                close(sock)


def run_proxy(args: tuple[str, str, str, int, str | None], fds: list[int]) -> NoReturn:
    """The proxy process (forked by the launcher, detached from the caller): ``args`` are the store root, the
    network, the container id, the container port and the host network namespace; ``fds`` the listener and
    PID 1's pidfd."""
    from pathlib import Path

    from . import syscalls as sc
    from .network import Networks, netns_path

    root, network, container, port, host_netns = args
    sc.close_all_but(fds)
    null = os.open(os.devnull, os.O_RDWR)
    for target_fd in (0, 1, 2):
        os.dup2(null, target_fd)
    os.close(null)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)  # a grandchild: nobody has to reap it, it goes with the container
    networks = Networks(Path(root), host_netns=host_netns or "")
    if host_netns:  # the bridge is there: so must this process be, to reach the container
        fd = os.open(netns_path(host_netns), os.O_RDONLY | os.O_CLOEXEC)
        sc.setns(fd, sc.CLONE_NEWNET)
        os.close(fd)
    known: list[tuple[str, int]] = []

    def target() -> tuple[str, int] | None:
        if not known:
            for endpoint in networks.endpoints(network):
                if endpoint.container == container:
                    known.append((endpoint.address, port))
        return known[0] if known else None

    serve(fds[0], fds[1], target)
