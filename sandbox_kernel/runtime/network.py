"""User-defined networks: a Linux bridge each, a veth pair per container, addresses from a small IPAM on disk.

Everything is netlink through pyroute2 (no ``ip`` command). The bridges and the host
ends of the veth pairs live in the *host network namespace*: the caller's own, or the
one named by ``$SANDBOX_KERNEL_NETNS`` (a name under /run/netns or a path), which is
how the tests keep every bridge off the real host's interfaces.

On disk, under ``ROOT/networks/``::

    NAME/network.json            {name, subnet, gateway, bridge, mtu, created, nat, allow_host}
    NAME/endpoints/CID.json      {container, name, address, host_ifname}
    .lock                        flock: one allocation at a time, across processes
    .nft.lock                    flock: one nftables set-up at a time (walls.py, nat.py)

Every network is walled (runtime/walls.py): its containers reach each other, not the
host's own services, not link-local addresses (the cloud's metadata service), not
another network's containers; ``--allow-host`` at create lifts the first two. On the
network named ``default``, which every kernel's containers share, each container's
bridge port is isolated as well: containers there reach the gateway (and, with NAT,
the outside) but not each other, and each one's /etc/hosts names only itself.

An address is taken by writing its endpoint file under the lock, so concurrent
connects never get the same address. A record is written before its link is made and
removed after the link is deleted, so only links this store recorded are ever deleted
(another store's bridges on the same host are not ours), and :meth:`Networks.reconcile`
removes what dead containers left: their endpoints and veths.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import syscalls as sc
from . import userns_keeper
from .errors import ContainerError, UsageError
from .fsutil import private_dir, write_private

POOL = ipaddress.ip_network("10.89.0.0/16")  # networks without --subnet get the first free /24 of it
DEFAULT_MTU = 1500
NETNS_ENV = "SANDBOX_KERNEL_NETNS"
BRIDGE_PREFIX = "skbr"
VETH_PREFIX = "skv"
DEFAULT_NETWORK = "default"
HOSTS_HEADER = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class NetworkError(ContainerError):
    """A network operation that could not be done (netlink said no, the network is in use, ...)."""


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    gateway: str
    bridge: str
    mtu: int = DEFAULT_MTU
    created: float = 0.0
    nat: bool = False  # outbound NAT (runtime/nat.py): its containers reach what the host reaches
    allow_host: bool = False  # its containers may reach the host's services and link-local addresses (walls.py)

    @property
    def shared(self) -> bool:
        """The network every kernel's containers share: none of them reaches another."""
        return self.name == DEFAULT_NETWORK

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


@dataclass(frozen=True)
class Endpoint:
    network: str
    container: str  # the container's id
    name: str  # the container's name: what the others on the network call it
    address: str
    host_ifname: str
    hostname: str = ""  # its own hostname, which its /etc/hosts maps to its address too


def _check_name(name: str) -> None:
    if (not name or len(name) > 64 or not name.isascii() or not name[0].isalnum()
            or not all(c.isalnum() or c in "_.-" for c in name)):
        raise UsageError(f"invalid network name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]* (64 at most)")
    if name in ("none", "host", "bridge"):  # (``bridge`` is the network called default)
        raise UsageError(f"{name!r} is a network mode, not a network name")


def _ifname(prefix: str, key: str) -> str:
    """An interface name (15 bytes at most) for ``key``: the prefix and a hash."""
    return prefix + hashlib.sha256(key.encode()).hexdigest()[: 15 - len(prefix)]


def _off_the_loop(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` in a thread of its own when this thread runs an asyncio loop (an IPython kernel's cells):
    pyroute2's blocking calls drive an event loop of their own, which cannot run inside a running one. (A
    monitor, which may not start threads, never runs a loop.)"""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        import asyncio

        if asyncio._get_running_loop() is None:
            return method(*args, **kwargs)
        result: list[Any] = []

        def run() -> None:
            try:
                result.append((True, method(*args, **kwargs)))
            except BaseException as exc:
                result.append((False, exc))

        thread = threading.Thread(target=run, name="sk-netlink")
        thread.start()
        thread.join()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    return call


def netns_path(netns: str) -> str:
    """A network namespace as a path: itself, or a name under /run/netns."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


@contextlib.contextmanager
def joined(netns: str | None) -> Iterator[None]:
    """This thread in network namespace ``netns`` for the block (none given: where it is); then back.

    setns changes only the calling thread's network namespace, so other threads are not affected. A process
    in the user namespace of a user who is not root (a monitor, a helper of inside.py) cannot go back to the
    host's network namespace (that takes the host's CAP_SYS_ADMIN): it stays, and needs nothing there after.
    """
    if not netns:
        yield
        return
    if userns_keeper.joined():
        _enter(netns)
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(netns)
        try:
            yield
        finally:
            sc.setns(home, sc.CLONE_NEWNET)
    finally:
        os.close(home)


def _enter(netns: str) -> None:
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(f"cannot open the network namespace {netns}: {exc.strerror}") from None
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    finally:
        os.close(fd)


def default_netns() -> str | None:
    """Where the bridges are: for a user who is not root, its own network namespace (its keeper's:
    userns_keeper.py); else ``$SANDBOX_KERNEL_NETNS``, or None for the caller's."""
    if userns_keeper.rootless():
        return userns_keeper.ensure().netns
    return os.environ.get(NETNS_ENV) or None


def _in_users_namespace(method: Callable[..., Any]) -> Callable[..., Any]:
    """For a user who is not root, run ``method`` in a child inside its user namespace (inside.py): the
    bridges, veths and nftables tables are in a network namespace that namespace owns, which only a process in
    it may enter. (A monitor is in it already.)"""

    @functools.wraps(method)
    def call(self: Networks, *args: Any, **kwargs: Any) -> Any:
        from . import inside

        if not inside.needed():
            return method(self, *args, **kwargs)
        return inside.call(_call, str(self.root.parent), self.host_netns or "", method.__name__, args, kwargs)

    return call


def _call(root: str, host_netns: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return getattr(Networks(Path(root), host_netns=host_netns), name)(*args, **kwargs)


class Networks:
    def __init__(self, root: Path, host_netns: str | None = None):
        self.root = Path(root) / "networks"
        private_dir(self.root)  # (inside the private store: the store's owner's alone, as all of it)
        self.host_netns = host_netns if host_netns is not None else default_netns()

    # -- the host side, over netlink ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _ipr(self, netns: str | None = None) -> Iterator[Any]:
        """A netlink socket in ``netns`` (a path or a name under /run/netns; default the host namespace).

        Made while this thread is in that namespace (a socket stays in the namespace it was made in).
        Not pyroute2's own netns support: it forks a helper, and a monitor whose container's PID 1 has
        exited can no longer fork (ENOMEM), nor start a thread.
        """
        from pyroute2 import IPRoute

        with joined(netns if netns is not None else self.host_netns):
            ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def _in_host_netns(self) -> contextlib.AbstractContextManager[None]:
        """This thread in the host network namespace for a moment (sockets made now stay there)."""
        return joined(self.host_netns)

    def listener(self, port: int) -> socket.socket:
        """A listening TCP socket on 127.0.0.1:``port`` of the host namespace (``-p``); a clear error if taken.
        (A user who is not root publishes on the host's own 127.0.0.1, not in its network namespace.)"""
        with contextlib.nullcontext() if userns_keeper.rootless() else self._in_host_netns():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise NetworkError(f"cannot publish port {port} on 127.0.0.1: {exc.strerror}") from None
        return sock

    def _ensure_bridge(self, net: Network) -> int:
        with self._ipr() as ipr:
            found = ipr.link_lookup(ifname=net.bridge)
            if not found:
                try:
                    ipr.link("add", ifname=net.bridge, kind="bridge")
                except Exception as exc:
                    raise NetworkError(f"network {net.name}: cannot create bridge {net.bridge}: {exc}") from None
                found = ipr.link_lookup(ifname=net.bridge)
            index = found[0]
            ipr.link("set", index=index, mtu=net.mtu)
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
            if net.gateway not in have:
                ipr.addr("add", index=index, address=net.gateway, prefixlen=net.prefixlen)
            ipr.link("set", index=index, state="up")
        self._ensure_rules(net)
        return index

    def _ensure_rules(self, net: Network) -> None:
        """The network's walls, then (``--nat``) its NAT rule: a network never routes out unwalled."""
        from . import nat, walls

        rootless = userns_keeper.rootless()
        if net.nat and rootless and not userns_keeper.ensure().outbound:
            raise NetworkError(f"network {net.name}: --nat for a user who is not root goes out through "
                               f"slirp4netns, which is not running (as root: apt-get install slirp4netns; it starts "
                               f"with your next user namespace)")
        # (a user's network namespace reaches the host's 127.0.0.1 at slirp4netns's gateway: walled too)
        host = (userns_keeper.SLIRP_GATEWAY,) if rootless else ()
        try:  # (its own lock: create() holds the IPAM lock here, and concurrent connects must not both add)
            with self._locked(".nft.lock"), self._in_host_netns():
                try:
                    walls.ensure(net.bridge, net.allow_host, host)
                except nat.NatError as exc:
                    raise NetworkError(f"network {net.name}: cannot set up its firewall rules: {exc}") from None
                if net.nat:
                    try:
                        nat.ensure(net.subnet, net.bridge)
                    except nat.NatError as exc:
                        raise NetworkError(f"network {net.name}: cannot set up outbound NAT: {exc}") from None
        except OSError as exc:
            raise NetworkError(f"network {net.name}: cannot set up its rules: {exc}") from None

    def _remove_rules(self, net: Network) -> None:
        """NAT first, then the walls: the network is never routed out without them."""
        from . import nat, walls

        with self._in_host_netns():
            try:
                nat.remove(net.bridge)
            except nat.NatError as exc:
                raise NetworkError(f"network {net.name}: cannot remove its NAT rule: {exc}") from None
            try:
                walls.remove(net.bridge)
            except nat.NatError as exc:
                raise NetworkError(f"network {net.name}: cannot remove its firewall rules: {exc}") from None

    @_in_users_namespace
    def walled(self, name: str) -> int:
        """How many of network ``name``'s firewall rules are in place in the host namespace."""
        from . import walls

        with self._in_host_netns():
            return walls.present(self.get(name).bridge)

    @_in_users_namespace
    def nat_active(self, name: str) -> bool:
        """Whether network ``name``'s outbound NAT rule is in place in the host namespace."""
        from . import nat

        with self._in_host_netns():
            return nat.present(self.get(name).bridge)

    def _delete_link(self, ifname: str) -> None:
        with self._ipr() as ipr:
            for index in ipr.link_lookup(ifname=ifname):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=index)

    # -- the store ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str = ".lock") -> Iterator[None]:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _dir(self, name: str) -> Path:
        _check_name(name)
        return self.root / name

    def get(self, name: str) -> Network:
        path = self._dir(name) / "network.json"
        try:
            return Network(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise NetworkError(f"no such network: {name}") from None

    def list(self) -> list[Network]:
        out = []
        for path in sorted(self.root.glob("*/network.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(Network(**json.loads(path.read_text())))
        return out

    def endpoints(self, name: str) -> list[Endpoint]:
        out = []
        for path in sorted((self._dir(name) / "endpoints").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(Endpoint(**json.loads(path.read_text())))
        return out

    def _free_subnet(self, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
        for candidate in POOL.subnets(new_prefix=24):
            if not any(candidate.overlaps(other) for other in taken):
                return candidate
        raise NetworkError(f"no free /24 left in {POOL}: remove a network or give --subnet")

    @_off_the_loop
    @_in_users_namespace
    def create(self, name: str, subnet: str | None = None, mtu: int = DEFAULT_MTU, nat: bool = False,
               allow_host: bool = False) -> Network:
        """``network create NAME [--subnet CIDR] [--nat] [--allow-host]``: the record, and its bridge in the
        host namespace with its firewall rules (and, with ``nat``, its outbound NAT rule)."""
        path = self._dir(name)
        if not 576 <= mtu <= 65535:
            raise UsageError(f"invalid --mtu {mtu}: 576 to 65535")
        with self._locked():
            if (path / "network.json").exists():
                raise NetworkError(f"network {name} already exists")
            taken = [ipaddress.ip_network(n.subnet) for n in self.list()]
            if subnet is None:
                net_ip = self._free_subnet(taken)
            else:
                try:
                    net_ip = ipaddress.ip_network(subnet, strict=True)
                except ValueError as exc:
                    raise UsageError(f"invalid --subnet {subnet!r}: {exc}") from None
                if net_ip.version != 4 or net_ip.prefixlen > 29:
                    raise UsageError(f"invalid --subnet {subnet!r}: an IPv4 network of /29 or larger")
                clash = [str(t) for t in taken if t.overlaps(net_ip)]
                if clash:
                    raise NetworkError(f"subnet {subnet} overlaps network subnet {clash[0]}")
            network = Network(name=name, subnet=str(net_ip), gateway=str(next(net_ip.hosts())),
                              bridge=_ifname(BRIDGE_PREFIX, f"{self.root}/{name}"), mtu=mtu, created=time.time(),
                              nat=nat, allow_host=allow_host)
            (path / "endpoints").mkdir(parents=True, exist_ok=True)  # (left by a create that failed: no record)
            try:
                tmp = path / "network.json.tmp"  # the record first: a crash leaves a record, not a stray bridge
                write_private(tmp, json.dumps(asdict(network)).encode())
                os.replace(tmp, path / "network.json")
                self._ensure_bridge(network)
            except BaseException:
                (path / "network.json").unlink(missing_ok=True)
                with contextlib.suppress(Exception):
                    self._remove_rules(network)
                    self._delete_link(network.bridge)
                with contextlib.suppress(OSError):
                    (path / "endpoints").rmdir()
                    path.rmdir()
                raise
        return network

    @_off_the_loop
    def remove(self, name: str, running: Callable[[str], bool] | None = None) -> None:
        """``network rm NAME``: refused while containers are on it. With ``running`` (is this container
        id running?), what containers that are not left behind goes first: a ``run --rm`` that has just
        returned, whose monitor is still taking it off the network, does not hold the network."""
        network = self.get(name)
        if running is not None:
            for endpoint in self.endpoints(name):
                if not running(endpoint.container):
                    self.disconnect(name, endpoint.container)
        self._remove(network)

    @_in_users_namespace
    def _remove(self, network: Network) -> None:
        name = network.name
        with self._locked():
            users = [e.name for e in self.endpoints(name)]
            if users:
                raise NetworkError(f"network {name} is in use by container(s) {', '.join(users)}")
            self._remove_rules(network)
            self._delete_link(network.bridge)
            path = self._dir(name)
            (path / "network.json").unlink()
            with contextlib.suppress(OSError):
                (path / "endpoints").rmdir()
                path.rmdir()

    # -- containers on a network ----------------------------------------------------------------------------------

    @_off_the_loop
    def connect(self, name: str, container: str, container_name: str, netns: str, hostname: str = "") -> Endpoint:
        """Give the container whose network namespace is ``netns`` (a path) an ``eth0`` on network ``name``:
        an address, a default route through the bridge, the bridge's MTU."""
        network = self.get(name)
        subnet = ipaddress.ip_network(network.subnet)
        host_ifname = _ifname(VETH_PREFIX, f"{self.root}/{name}/{container}")
        with self._locked():
            used = {e.address for e in self.endpoints(name)} | {network.gateway}
            address = next((str(a) for a in subnet.hosts() if str(a) not in used), None)
            if address is None:
                raise NetworkError(f"network {name} has no free address left in {network.subnet}")
            endpoint = Endpoint(name, container, container_name, address, host_ifname, hostname)
            record = self._dir(name) / "endpoints" / f"{container}.json"
            if record.exists():
                raise NetworkError(f"container {container_name} is already on network {name}")
            write_private(record, json.dumps(asdict(endpoint)).encode())
        try:
            self._plug(network, endpoint, netns)
        except BaseException:
            self._delete_link(host_ifname)
            record.unlink(missing_ok=True)
            raise
        return endpoint

    def _plug(self, network: Network, endpoint: Endpoint, netns: str) -> None:
        bridge = self._ensure_bridge(network)
        try:
            ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetworkError(f"container {endpoint.name}: its network namespace is gone ({exc.strerror})") from None
        try:
            with self._ipr() as ipr:
                try:
                    ipr.link("add", ifname=endpoint.host_ifname, kind="veth", mtu=network.mtu,
                             peer={"ifname": "eth0", "net_ns_fd": ns_fd, "mtu": network.mtu})
                except Exception as exc:
                    raise NetworkError(f"container {endpoint.name}: cannot add its veth pair: {exc}") from None
                index = ipr.link_lookup(ifname=endpoint.host_ifname)[0]
                ipr.link("set", index=index, master=bridge)
                if network.shared:  # (before it is up: no frame passes between two containers there)
                    ipr.brport("set", index=index, isolated=1)
                ipr.link("set", index=index, state="up")
        finally:
            os.close(ns_fd)
        with self._ipr(netns) as ipr:
            for lo in ipr.link_lookup(ifname="lo"):
                ipr.link("set", index=lo, state="up")
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=endpoint.address, prefixlen=network.prefixlen)
            ipr.link("set", index=eth0, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=network.gateway)

    @_off_the_loop
    @_in_users_namespace
    def disconnect(self, name: str, container: str) -> None:
        """Take the container off the network: its veth goes (the peer with it), its address is free again."""
        record = self._dir(name) / "endpoints" / f"{container}.json"
        try:
            endpoint = Endpoint(**json.loads(record.read_text()))
        except FileNotFoundError:
            return
        self._delete_link(endpoint.host_ifname)
        with self._locked():
            record.unlink(missing_ok=True)

    def hosts(self, name: str, own: Endpoint | None = None) -> str:
        """/etc/hosts for a container on network ``name``: every container on it by name (and the
        container ``own`` by its hostname too); on the shared default network, ``own`` alone."""
        lines = [HOSTS_HEADER]
        endpoints = self.endpoints(name)
        if self.get(name).shared:
            endpoints = [e for e in endpoints if own is not None and e.container == own.container]
        for e in sorted(endpoints, key=lambda e: (e.name, e.container)):
            names = [e.name] + ([e.hostname] if own is not None and e.container == own.container
                                and e.hostname and e.hostname != e.name else [])
            lines.append(f"{e.address}\t{' '.join(names)}\n")
        return "".join(lines)

    def write_hosts(self, name: str, containers: Path) -> None:
        """Bring the /etc/hosts of every container on network ``name`` up to date (``containers``: the
        store's containers directory; each has its ``hosts`` file bind-mounted, so it is rewritten in
        place: a rename would leave the container with the old file)."""
        for endpoint in self.endpoints(name):
            path = containers / endpoint.container / "hosts"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # removed meanwhile
            try:
                data = self.hosts(name, endpoint).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)

    @_off_the_loop
    def reconcile(self, alive: Callable[[str], bool]) -> list[str]:
        """Remove what dead containers left: the endpoints (address and veth) of containers that are not
        running. Returns what went. (Only links this store recorded are ever deleted: the record is
        written before a link is made and removed after it is deleted, so a crash leaves a record.)"""
        gone = []
        for network in self.list():
            for endpoint in self.endpoints(network.name):
                if not alive(endpoint.container):
                    self.disconnect(network.name, endpoint.container)
                    gone.append(f"endpoint {endpoint.name} on {network.name}")
        return gone
