"""Networks (runtime/network.py) against real bridges and veths, all inside namespaces the tests make.

Each test makes its own "host" network namespace (where the bridges go, as
``$SANDBOX_KERNEL_NETNS`` would say) and a namespace per "container", and removes
them at the end: the real host's interfaces are never touched (checked).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sandbox_kernel.runtime.errors import UsageError
from sandbox_kernel.runtime.network import BRIDGE_PREFIX, VETH_PREFIX, NetworkError, Networks, joined

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@pytest.fixture
def namespaces():
    """Named network namespaces made on demand, all removed at the end; the host's links unchanged."""
    from pyroute2 import netns

    before = _host_links()
    made: list[str] = []

    def make(role: str) -> str:
        from pyroute2 import IPRoute

        name = f"sk-test-{role}-{uuid.uuid4().hex[:8]}"
        netns.create(name)
        made.append(name)
        with IPRoute(netns=name) as ipr:  # as on a real host: 127.0.0.1 works
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    yield make
    for name in made:
        netns.remove(name)
    assert _host_links() == before, "the real host's interfaces changed"


@pytest.fixture
def nets(tmp_path, namespaces) -> Networks:
    return Networks(tmp_path, host_netns=namespaces("host"))


def at_once(task, count: int) -> list[BaseException]:
    """``task(i)`` for i in range(count), all in threads at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            task(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def links_in(netns_name: str) -> dict[str, dict]:
    from pyroute2 import IPRoute

    with IPRoute(netns=netns_name) as ipr:
        out = {}
        for link in ipr.get_links():
            index = link["index"]
            out[link.get_attr("IFLA_IFNAME")] = {
                "mtu": link.get_attr("IFLA_MTU"),
                "up": bool(link["flags"] & 1),
                "addresses": [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)],
            }
        return out


def in_netns(netns_name: str, code: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run Python in a network namespace (as a container's process would)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns_name}", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_create_list_remove(nets):
    network = nets.create("web")
    assert network.subnet == "10.89.0.0/24" and network.gateway == "10.89.0.1"
    assert network.bridge.startswith(BRIDGE_PREFIX) and len(network.bridge) <= 15
    bridge = links_in(nets.host_netns)[network.bridge]
    assert bridge["up"] and bridge["addresses"] == ["10.89.0.1"] and bridge["mtu"] == 1500
    other = nets.create("db", subnet="172.30.5.0/24", mtu=1400)
    assert other.gateway == "172.30.5.1" and links_in(nets.host_netns)[other.bridge]["mtu"] == 1400
    assert [n.name for n in nets.list()] == ["db", "web"]
    assert nets.create("third").subnet == "10.89.1.0/24"
    with pytest.raises(NetworkError, match="already exists"):
        nets.create("web")
    with pytest.raises(NetworkError, match="overlaps"):
        nets.create("clash", subnet="10.89.0.0/16")
    with pytest.raises(UsageError, match="invalid --subnet"):
        nets.create("bad", subnet="10.0.0.1/24")
    with pytest.raises(UsageError, match="network mode"):
        nets.create("host")
    nets.remove("web")
    assert network.bridge not in links_in(nets.host_netns)
    with pytest.raises(NetworkError, match="no such network"):
        nets.get("web")


def test_two_containers_reach_each_other_and_another_network_does_not(nets, namespaces):
    nets.create("app")
    nets.create("other")
    server_ns, client_ns, stranger_ns = namespaces("server"), namespaces("client"), namespaces("stranger")
    server = nets.connect("app", "c" * 64, "server", f"/run/netns/{server_ns}")
    client = nets.connect("app", "d" * 64, "client", f"/run/netns/{client_ns}")
    nets.connect("other", "e" * 64, "stranger", f"/run/netns/{stranger_ns}")
    assert (server.address, client.address) == ("10.89.0.2", "10.89.0.3")
    eth0 = links_in(server_ns)["eth0"]
    assert eth0["up"] and eth0["addresses"] == ["10.89.0.2"] and eth0["mtu"] == 1500
    assert "10.89.0.3\tclient\n10.89.0.2\tserver\n" in nets.hosts("app")  # by name

    listener = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{server_ns}", sys.executable, "-c",
         "import socket\ns = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen()\nprint('up', flush=True)\n"
         "while True:\n    c, _ = s.accept(); c.sendall(b'hello from server'); c.close()"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "up"
        fetch = ("import socket\ns = socket.create_connection(('10.89.0.2', 8080), timeout=3)\n"
                 "print(s.recv(100).decode())")
        done = in_netns(client_ns, fetch)
        assert done.stdout.strip() == "hello from server", done.stderr
        blocked = in_netns(stranger_ns, fetch)
        assert blocked.returncode != 0 and "hello" not in blocked.stdout
    finally:
        listener.kill()
        listener.wait()


def test_twenty_concurrent_connects_get_distinct_addresses(nets, namespaces, tmp_path):
    nets.create("busy")
    spaces = [namespaces(f"c{i}") for i in range(20)]
    results: list[str] = []

    def connect(i: int) -> None:  # each thread its own Networks (its own lock fd), as separate processes would have
        mine = Networks(tmp_path, host_netns=nets.host_netns)
        results.append(mine.connect("busy", f"{i:064x}", f"c{i}", f"/run/netns/{spaces[i]}").address)

    assert not at_once(connect, 20)
    assert len(set(results)) == 20 and "10.89.0.1" not in results
    assert len([n for n in links_in(nets.host_netns) if n.startswith(VETH_PREFIX)]) == 20


def test_disconnect_remove_in_use_and_reconcile_after_a_crash(nets, namespaces):
    nets.create("net")
    a, b = namespaces("a"), namespaces("b")
    first = nets.connect("net", "a" * 64, "a", f"/run/netns/{a}")
    second = nets.connect("net", "b" * 64, "b", f"/run/netns/{b}")
    with pytest.raises(NetworkError, match="in use by container"):
        nets.remove("net")
    nets.disconnect("net", "a" * 64)
    assert first.host_ifname not in links_in(nets.host_netns) and "eth0" not in links_in(a)
    # the address is free again
    assert nets.connect("net", "c" * 64, "c", f"/run/netns/{a}").address == first.address
    # "b" dies without a disconnect (its caller was killed): the next reconcile cleans up after it
    gone = nets.reconcile(alive=lambda cid: cid != "b" * 64)
    assert gone == ["endpoint b on net"]
    assert second.host_ifname not in links_in(nets.host_netns)
    assert [e.name for e in nets.endpoints("net")] == ["c"]
    # rm with a view of what runs: a running container holds the network, a stopped one's endpoint goes
    with pytest.raises(NetworkError, match=r"in use by container\(s\) c$"):
        nets.remove("net", running=lambda cid: cid == "c" * 64)
    nets.remove("net", running=lambda cid: False)
    assert not [n for n in links_in(nets.host_netns) if n.startswith((VETH_PREFIX, BRIDGE_PREFIX))]


def test_a_connect_that_fails_leaves_nothing(nets, namespaces):
    nets.create("net")
    with pytest.raises(NetworkError, match="network namespace is gone"):
        nets.connect("net", "f" * 64, "ghost", "/run/netns/does-not-exist")
    assert nets.endpoints("net") == []
    assert not [n for n in links_in(nets.host_netns) if n.startswith(VETH_PREFIX)]
    assert Path(nets.root / "net" / "endpoints").is_dir()


OUTSIDE_SERVER = ("import socket\ns = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen()\nprint('up', flush=True)\n"
                  "while True:\n    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()")
ASK_OUTSIDE = ("import socket\ntry:\n    s = socket.create_connection(('192.0.2.2', 9000), timeout=3)\n"
               "    print('seen as', s.recv(100).decode())\nexcept OSError as exc:\n    print('unreachable')\n")


METADATA = "169.254.169.254"


def serve(netns_name: str, code: str) -> subprocess.Popen:
    """A server (Python ``code`` that prints 'up' once it listens) in a network namespace, up."""
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns_name}", sys.executable, "-c", code],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "up"
    return server


def stop(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.kill()
        server.wait()


@pytest.fixture
def outside(namespaces):
    """An "outside world" for a test's host namespace: a namespace behind a veth pair (192.0.2.1 on the
    host's side, 192.0.2.2 and 169.254.169.254 outside, routed to from the host) with no route back to any
    container subnet, and a server there on port 9000 that answers with the address it sees.
    ``outside(host)`` links them and starts the server."""
    from pyroute2 import IPRoute

    servers: list[subprocess.Popen] = []

    def make(host: str) -> None:
        world = namespaces("outside")
        fd = os.open(f"/run/netns/{world}", os.O_RDONLY)
        try:
            with IPRoute(netns=host) as ipr:
                ipr.link("add", ifname="sk-up", kind="veth", peer={"ifname": "sk-world", "net_ns_fd": fd})
                index = ipr.link_lookup(ifname="sk-up")[0]
                ipr.addr("add", index=index, address="192.0.2.1", prefixlen=24)
                ipr.link("set", index=index, state="up")
        finally:
            os.close(fd)
        with IPRoute(netns=world) as ipr:
            index = ipr.link_lookup(ifname="sk-world")[0]
            ipr.addr("add", index=index, address="192.0.2.2", prefixlen=24)
            ipr.addr("add", index=index, address=METADATA, prefixlen=32)  # a cloud's metadata service, out there
            ipr.link("set", index=index, state="up")
        with IPRoute(netns=host) as ipr:
            ipr.route("add", dst=f"{METADATA}/32", gateway="192.0.2.2")
        servers.append(serve(world, OUTSIDE_SERVER))

    yield make
    stop(servers)


def test_a_nat_network_reaches_outside_with_the_hosts_address_and_a_plain_one_does_not(nets, namespaces, outside):
    from sandbox_kernel.runtime import nat

    outside(nets.host_netns)
    natted = nets.create("natted", nat=True)
    plain = nets.create("plain")
    assert natted.nat and not plain.nat and nets.get("natted").nat
    a, b = namespaces("a"), namespaces("b")
    nets.connect("natted", "a" * 64, "a", f"/run/netns/{a}")
    nets.connect("plain", "b" * 64, "b", f"/run/netns/{b}")
    assert in_netns(a, ASK_OUTSIDE).stdout.strip() == "seen as 192.0.2.1", "masqueraded behind the host's address"
    assert in_netns(b, ASK_OUTSIDE).stdout.strip() == "unreachable", "no NAT: the outside cannot answer"
    assert in_netns(nets.host_netns, f"print(open('{nat.IP_FORWARD}').read().strip())").stdout.strip() == "1"
    assert nets.nat_active("natted") and not nets.nat_active("plain")
    # a NAT table that lost its rule (a crash between two messages) is made again by the next connect
    with joined(nets.host_netns), nat.nftables() as nft:
        nft.rule("del", table=nat.table_name(natted.bridge), chain=nat.CHAIN)
    assert not nets.nat_active("natted")
    nets.disconnect("natted", "a" * 64)
    nets.connect("natted", "a" * 64, "a", f"/run/netns/{a}")
    assert nets.nat_active("natted")
    assert in_netns(a, ASK_OUTSIDE).stdout.strip() == "seen as 192.0.2.1"
    nets.disconnect("natted", "a" * 64)
    nets.remove("natted")
    with joined(nets.host_netns), nat.nftables() as nft:
        assert not [t for t in nft.get_tables() if t.get_attr("NFTA_TABLE_NAME").startswith(nat.TABLE_PREFIX)]


def reach(address: str, port: int) -> str:
    """Python for a namespace: prints what a server at address:port says, or 'unreachable'."""
    return (f"import socket\ntry:\n    s = socket.create_connection(({address!r}, {port}), timeout=2)\n"
            "    print(s.recv(100).decode() or 'connected')\nexcept OSError:\n    print('unreachable')\n")


@pytest.fixture
def listen():
    """``listen(netns, port, reply)``: a TCP server on 0.0.0.0:port in the namespace that sends ``reply``."""
    servers: list[subprocess.Popen] = []

    def start(netns_name: str, port: int, reply: str) -> None:
        code = (f"import socket\ns = socket.socket(); s.bind(('0.0.0.0', {port})); s.listen()\n"
                "print('up', flush=True)\n"
                f"while True:\n    c, _ = s.accept(); c.sendall({reply.encode()!r}); c.close()")
        servers.append(serve(netns_name, code))

    yield start
    stop(servers)


def test_walls_keep_a_network_from_the_host_link_local_and_other_networks_unless_allowed(
        nets, namespaces, outside, listen):
    """A service on the host's 0.0.0.0 (through the gateway or the host's other address), the metadata
    address and another network's containers are out of reach, also with --nat (forwarding on); the outside
    is not. --allow-host lets the host and link-local in, never another network."""
    from sandbox_kernel.runtime import nat, walls

    host = nets.host_netns
    outside(host)
    listen(host, 9100, "host service")
    walled = nets.create("walled", nat=True)
    opened = nets.create("opened", nat=True, allow_host=True)
    nets.create("neighbour")
    assert not walled.allow_host and opened.allow_host and nets.get("opened").allow_host
    a, b, c = namespaces("a"), namespaces("b"), namespaces("c")
    nets.connect("walled", "a" * 64, "a", f"/run/netns/{a}")
    nets.connect("opened", "b" * 64, "b", f"/run/netns/{b}")
    neighbour = nets.connect("neighbour", "c" * 64, "c", f"/run/netns/{c}")
    listen(c, 9200, "neighbour")
    assert nets.walled("walled") == 4 and nets.walled("opened") == 2 and nets.walled("neighbour") == 4

    def probe(netns_name: str, gateway: str) -> list[str]:
        return [in_netns(netns_name, reach(address, port)).stdout.strip() for address, port in
                ((gateway, 9100), ("192.0.2.1", 9100), (METADATA, 9000), (neighbour.address, 9200),
                 ("192.0.2.2", 9000))]

    assert probe(a, walled.gateway) == ["unreachable", "unreachable", "unreachable", "unreachable", "192.0.2.1"]
    assert probe(b, opened.gateway) == ["host service", "host service", "192.0.2.1", "unreachable", "192.0.2.1"]
    assert in_netns(c, reach(walled.gateway, 9100)).stdout.strip() == "unreachable"  # no NAT: walled all the same
    # a table that lost a rule (a crash between two messages) is made whole by the next connect
    with joined(host), walls._nft() as nft:
        rule = next(r for r in nft.get_rules() if r.get_attr("NFTA_RULE_TABLE") == walls.table_name(walled.bridge))
        nft.rule("del", table=walls.table_name(walled.bridge), chain=rule.get_attr("NFTA_RULE_CHAIN"),
                 handle=rule.get_attr("NFTA_RULE_HANDLE"))
    assert nets.walled("walled") == 3
    nets.disconnect("walled", "a" * 64)
    nets.connect("walled", "a" * 64, "a", f"/run/netns/{a}")
    assert nets.walled("walled") == 4
    assert in_netns(a, reach(walled.gateway, 9100)).stdout.strip() == "unreachable"
    for name, cid in (("walled", "a"), ("opened", "b"), ("neighbour", "c")):
        nets.disconnect(name, cid * 64)
        nets.remove(name)
    with joined(host), walls._nft() as nft:  # (an inet socket lists every family's tables)
        assert not [t for t in nft.get_tables() if t.get_attr("NFTA_TABLE_NAME").startswith(nat.TABLE_PREFIX)]


def test_containers_on_the_default_network_reach_the_gateway_not_each_other(nets, namespaces, listen):
    """Every kernel's containers share the default network: its bridge ports are isolated, and each one's
    /etc/hosts names itself alone. On a network of one's own they do reach each other (the test above)."""
    nets.create("default")
    mine, theirs = namespaces("mine"), namespaces("theirs")
    me = nets.connect("default", "a" * 64, "mine", f"/run/netns/{mine}")
    them = nets.connect("default", "b" * 64, "theirs", f"/run/netns/{theirs}")
    listen(theirs, 9300, "their notebook")
    assert in_netns(mine, reach(them.address, 9300)).stdout.strip() == "unreachable"
    hosts = nets.hosts("default", me)
    assert f"{me.address}\tmine" in hosts and "theirs" not in hosts and them.address not in hosts
    # the control: the same two on a network of their own talk
    nets.disconnect("default", "a" * 64)
    nets.disconnect("default", "b" * 64)
    nets.create("team")
    nets.connect("team", "a" * 64, "mine", f"/run/netns/{mine}")
    them = nets.connect("team", "b" * 64, "theirs", f"/run/netns/{theirs}")
    assert in_netns(mine, reach(them.address, 9300)).stdout.strip() == "their notebook"
    nets.disconnect("team", "a" * 64)
    nets.disconnect("team", "b" * 64)


# -- containers on networks ---------------------------------------------------------------------------------------


@pytest.fixture
def net_containers(debian_store, namespaces, monkeypatch):
    """Containers of the debian-python store whose bridges go into a namespace of the test."""
    from sandbox_kernel.runtime import Containers

    host = namespaces("host")
    monkeypatch.setenv("SANDBOX_KERNEL_NETNS", host)
    containers = Containers(debian_store)
    networks = Networks(debian_store.root)
    yield containers, networks, host
    for info in containers.list(all=True):
        containers.remove(info.id, force=True)
    for network in networks.list():
        networks.remove(network.name)
    assert not [n for n in links_in(host) if n.startswith((VETH_PREFIX, BRIDGE_PREFIX))]


def test_containers_reach_each_other_by_name_and_not_across_networks(net_containers):
    from sandbox_kernel.runtime import ContainerSpec

    containers, networks, _host = net_containers
    networks.create("tier")
    networks.create("elsewhere")
    containers.run_detached(ContainerSpec(image="localhost/debian-python", name="web", network=_net("tier"),
                                          command=("python3", "-m", "http.server", "8000")))
    fetch = ("import time, urllib.request\n"
             "for _ in range(50):\n"
             "    try:\n"
             "        print(urllib.request.urlopen('http://web:8000/', timeout=2).status); break\n"
             "    except OSError as exc:\n"
             "        error = exc; time.sleep(0.1)\n"
             "else:\n"
             "    print('failed', error)\n")
    seen: list[bytes] = []
    result = containers.run(ContainerSpec(image="localhost/debian-python", name="client", network=_net("tier"),
                                          command=("python3", "-c", fetch), remove=True),
                            stdin=None, stdout=seen.append, stderr=seen.append)
    assert result.exit_code == 0 and b"".join(seen).strip() == b"200", b"".join(seen)
    web = next(e for e in networks.endpoints("tier") if e.name == "web")
    seen.clear()
    probe = (f"import socket\ntry:\n    socket.create_connection(('{web.address}', 8000), timeout=2)\n"
             "    print('reached')\nexcept OSError as exc:\n    print('unreachable')\n")
    containers.run(ContainerSpec(image="localhost/debian-python", network=_net("elsewhere"), remove=True,
                                 command=("python3", "-c", probe)), stdin=None, stdout=seen.append, stderr=None)
    assert b"".join(seen).strip() == b"unreachable"
    # the client is gone: its name left the others' /etc/hosts, its address is free
    assert [e.name for e in networks.endpoints("tier")] == ["web"]
    hosts = (containers.root / web.container / "hosts").read_text()
    assert f"{web.address}\tweb" in hosts and "client" not in hosts


def test_a_killed_caller_leaves_no_veth_behind(net_containers, debian_store):
    containers, networks, host = net_containers
    networks.create("doomed")
    script = ("import sys\nfrom sandbox_kernel.runtime import Containers, ContainerSpec, NetSpec, Store\n"
              f"c = Containers(Store({str(debian_store.root)!r}))\n"
              "c.run(ContainerSpec(image='localhost/debian-python', name='victim', network=NetSpec('doomed'),"
              " command=('sleep', '100')), stdin=None, stdout=None, stderr=None)\n")
    caller = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    deadline = time.monotonic() + 30
    while not networks.endpoints("doomed") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.name for e in networks.endpoints("doomed")] == ["victim"]
    caller.kill()  # kill -9: no clean-up of its own
    caller.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        containers.list(all=True)  # the next call reconciles
        if not networks.endpoints("doomed") and not [n for n in links_in(host) if n.startswith(VETH_PREFIX)]:
            break
        time.sleep(0.1)
    assert networks.endpoints("doomed") == []
    assert not [n for n in links_in(host) if n.startswith(VETH_PREFIX)]


def _net(name: str):
    from sandbox_kernel.runtime import NetSpec

    return NetSpec(name)


def listeners(netns_name: str, port: int) -> list[str]:
    """The addresses of TCP sockets listening on ``port`` in a namespace (its /proc/net/tcp and tcp6)."""
    code = ("import ipaddress, socket\n"
            "for name, size in (('tcp', 4), ('tcp6', 16)):\n"
            "    for line in open('/proc/net/' + name).read().splitlines()[1:]:\n"
            "        local, state = line.split()[1], line.split()[3]\n"
            "        address, port = local.split(':')\n"
            "        raw = bytes.fromhex(address)\n"
            "        raw = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))\n"
            f"        if state == '0A' and int(port, 16) == {port}:\n"
            "            print(ipaddress.ip_address(raw))\n")
    return in_netns(netns_name, code).stdout.split()


def firewall_and_sysctls(netns_name: str) -> tuple[str, str, dict[str, str]]:
    """A namespace's nftables ruleset, its iptables rules, and its net sysctls (the settings, not counters such as
    nf_conntrack_count: global ones and those of lo, all and default)."""
    nft = subprocess.run(["nsenter", f"--net=/run/netns/{netns_name}", "nft", "list", "ruleset"],
                         capture_output=True, text=True, check=True).stdout
    iptables = subprocess.run(["nsenter", f"--net=/run/netns/{netns_name}", "iptables-save"],
                              capture_output=True, text=True, check=True).stdout
    code = ("import json, pathlib\nout = {}\n"
            "for path in sorted(pathlib.Path('/proc/sys/net').rglob('*')):\n"
            "    parts = path.parts\n"
            "    if path.is_file() and path.stat().st_mode & 0o200\\\n"
            "            and (len(parts) < 7 or parts[5] != 'conf' or parts[6] in ('all', 'default', 'lo'))"
            " and 'neigh' not in parts:\n"
            "        try:\n            out[str(path)] = path.read_text()\n"
            "        except OSError:\n            pass\n"
            "print(json.dumps(out))\n")
    sysctls = json.loads(in_netns(netns_name, code).stdout)
    def rules(text: str) -> str:  # (without the comment lines: iptables-save dates its output)
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    return rules(nft), rules(iptables), sysctls


def test_a_published_port_is_reachable_on_127_0_0_1_of_the_host_namespace_and_gone_after_rm(net_containers):
    from sandbox_kernel.runtime import ContainerSpec

    containers, networks, host = net_containers
    network = networks.create("pub")
    before = firewall_and_sysctls(host)
    cid = containers.run_detached(ContainerSpec(
        image="localhost/debian-python", name="site", network=_net("pub"), ports=((18080, 8000),),
        command=("python3", "-c", "import http.server, socketserver\n"
                 "class H(http.server.BaseHTTPRequestHandler):\n"
                 "    def do_GET(self):\n"
                 "        self.send_response(200); self.end_headers(); self.wfile.write(b'published')\n"
                 "http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n")))
    fetch = ("import time, urllib.request\n"
             "for _ in range(100):\n"
             "    try:\n"
             "        print(urllib.request.urlopen('http://127.0.0.1:18080/', timeout=2).read().decode()); break\n"
             "    except OSError as exc:\n"
             "        time.sleep(0.1)\n"
             "else:\n"
             "    print('failed')\n")
    assert in_netns(host, fetch).stdout.strip() == "published"
    assert listeners(host, 18080) == ["127.0.0.1"], "bound to 127.0.0.1 only: no 0.0.0.0, no IPv6"
    refused = (f"import socket\ntry:\n    socket.create_connection(({network.gateway!r}, 18080), timeout=5)\n"
               "    print('reached')\nexcept OSError as exc:\n    print(type(exc).__name__)\n")
    assert in_netns(host, refused).stdout.strip() == "ConnectionRefusedError", "not on the bridge's address"
    after = firewall_and_sysctls(host)
    changed = {k: (before[2].get(k), v) for k, v in after[2].items() if before[2].get(k) != v}
    assert after[:2] == before[:2] and not changed, f"a userspace proxy: no firewall rule, no sysctl changed: {changed}"
    with pytest.raises(NetworkError, match=r"cannot publish port 18080 on 127\.0\.0\.1"):
        containers.run_detached(ContainerSpec(image="localhost/debian-python", network=_net("pub"),
                                              ports=((18080, 80),), command=("true",)))
    containers.remove(cid, force=True)
    probe = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 18080), timeout=2)\n"
             "    print('still there')\nexcept OSError:\n    print('gone')\n")
    deadline = time.monotonic() + 60
    while in_netns(host, probe).stdout.strip() != "gone" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_netns(host, probe).stdout.strip() == "gone"
    assert not subprocess.run(["pgrep", "-x", "sandbox-proxy"], capture_output=True).stdout
    with pytest.raises(UsageError, match=r"-p needs a network"):
        ContainerSpec(image="localhost/debian-python", ports=((1, 2),))


def test_network_host_shares_the_callers_namespace(debian_store, namespaces):
    """``--network host``: the container sees its caller's interfaces (here a namespace of the test, entered
    by the CLI with nsenter, holding a veth pair) and exec joins the same; the default sees only lo."""
    from pyroute2 import IPRoute

    ns = namespaces("caller")
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="sk-a", kind="veth", peer="sk-b")
    cli = ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "sandbox_kernel", "--root",
           str(debian_store.root)]
    show = ("python3", "-c", "import os; print(sorted(os.listdir('/sys/class/net')))")
    shared = subprocess.run([*cli, "run", "--rm", "--network", "host", "localhost/debian-python", *show],
                            capture_output=True, text=True, timeout=60)
    assert shared.stdout.strip() == "['lo', 'sk-a', 'sk-b']", shared.stderr
    alone = subprocess.run([*cli, "run", "--rm", "localhost/debian-python", *show], capture_output=True, text=True,
                           timeout=60)
    assert alone.stdout.strip() == "['lo']", alone.stderr
    started = subprocess.run([*cli, "run", "-d", "--network", "host", "localhost/debian-python", "sleep", "60"],
                             capture_output=True, text=True, timeout=60)
    cid = started.stdout.strip()
    try:
        inside = subprocess.run([*cli, "exec", cid, *show], capture_output=True, text=True, timeout=60)
        assert inside.stdout.strip() == "['lo', 'sk-a', 'sk-b']", inside.stderr
    finally:
        subprocess.run([*cli, "rm", "-f", cid], capture_output=True, timeout=60)


def test_twenty_containers_started_at_once_on_one_network_get_distinct_addresses(net_containers):
    from sandbox_kernel.runtime import ContainerSpec

    containers, networks, host = net_containers
    networks.create("crowd")
    ids: list[str] = []

    def start(i: int) -> None:
        ids.append(containers.run_detached(ContainerSpec(image="localhost/debian-python", name=f"crowd{i}",
                                                         network=_net("crowd"), command=("sleep", "60"))))

    assert not at_once(start, 20) and len(ids) == 20
    addresses = [e.address for e in networks.endpoints("crowd")]
    assert len(addresses) == 20 and len(set(addresses)) == 20
    assert len([n for n in links_in(host) if n.startswith(VETH_PREFIX)]) == 20


def test_cli_nat_network_takes_a_container_outside_and_rm_removes_its_rule(debian_store, namespaces, outside,
                                                                          listen):
    """A real container on a --nat network reaches the outside, not a service on the host's 0.0.0.0 nor the
    metadata address; rm takes the network's tables away."""
    from sandbox_kernel.runtime import nat

    host = namespaces("host")
    outside(host)
    listen(host, 9100, "host service")
    env = {**os.environ, "SANDBOX_KERNEL_NETNS": host}
    cli = [sys.executable, "-m", "sandbox_kernel", "--root", str(debian_store.root)]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, env=env)

    assert run("network", "create", "--nat", "out").returncode == 0
    try:
        listed = json.loads(run("network", "ls", "--json").stdout)
        assert [(n["Name"], n["NAT"]) for n in listed] == [("out", True)]
        assert "yes" in run("network", "ls").stdout.splitlines()[1].split()
        fetched = run("run", "--rm", "--network", "out", "localhost/debian-python", "python3", "-c", ASK_OUTSIDE)
        assert fetched.stdout.strip() == "seen as 192.0.2.1", fetched.stderr
        for address, port in ((listed[0]["Gateway"], 9100), ("192.0.2.1", 9100), (METADATA, 9000)):
            probed = run("run", "--rm", "--network", "out", "localhost/debian-python", "python3", "-c",
                         reach(address, port))
            assert probed.stdout.strip() == "unreachable", (address, probed.stdout, probed.stderr)
    finally:
        removed = run("network", "rm", "out")
    assert removed.returncode == 0, removed.stderr
    with joined(host), nat.nftables() as nft:
        assert not [t for t in nft.get_tables() if t.get_attr("NFTA_TABLE_NAME").startswith(nat.TABLE_PREFIX)]


def test_rm_takes_a_container_off_its_network_before_it_returns(net_containers):
    """After rm -f, its address and veth are gone already (not when its monitor gets to it): a network rm
    right after succeeds. (Before, the teardown of another test lost that race in CI.)"""
    from sandbox_kernel.runtime import ContainerSpec

    containers, networks, host = net_containers
    for round_ in range(10):
        networks.create("brief")
        cid = containers.run_detached(ContainerSpec(image="localhost/debian-python", name=f"brief{round_}",
                                                    network=_net("brief"), command=("sleep", "60")))
        containers.remove(cid, force=True)
        assert networks.endpoints("brief") == [], f"round {round_}"
        networks.remove("brief")
    assert not [n for n in links_in(host) if n.startswith((VETH_PREFIX, BRIDGE_PREFIX))]
