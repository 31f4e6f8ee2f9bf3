"""Outbound NAT for a network made with ``--nat``: one nftables table per network, over netlink.

The table holds one rule, what ``nft`` would print as::

    table ip sandbox_kernel_BRIDGE {
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr SUBNET oifname != "BRIDGE" masquerade
        }
    }

so that what the network's containers send out through any other interface leaves with
that interface's address, and the network's own traffic between containers is left
alone. A table of its own per network makes removal one message (deleting a table
deletes its chains and rules) and never touches anyone else's rules. Forwarding must be
on in the host namespace for packets to leave at all: :func:`ensure` turns on
``net.ipv4.ip_forward`` there, as docker and podman do, and leaves it on.

Everything here runs in the calling thread's network namespace (the caller joins the
host namespace first, as it does for the bridge).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any

TABLE_PREFIX = "sandbox_kernel_"
CHAIN = "postrouting"
NFPROTO_IPV4 = 2
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
_NAT_PRIORITY = 100  # srcnat
_POLICY_ACCEPT = 1
_META_OIFNAME = 7
_IFNAMSIZ = 16


class NatError(Exception):
    """Netlink said no (no nf_tables in this kernel, no CAP_NET_ADMIN, ...)."""


def table_name(bridge: str) -> str:
    return TABLE_PREFIX + bridge


@contextlib.contextmanager
def nftables(family: int = NFPROTO_IPV4) -> Iterator[Any]:
    """A netlink nftables socket of ``family`` in this thread's network namespace (walls.py's too)."""
    try:
        from pyroute2.nftables.main import NFTables

        nft = NFTables(nfgen_family=family)
    except Exception as exc:
        raise NatError(f"nftables is not available: {exc}") from None
    try:
        yield nft
    finally:
        nft.close()



def tables(nft: Any) -> set[str]:
    return {t.get_attr("NFTA_TABLE_NAME") for t in nft.get_tables()}


def rules(nft: Any, table: str) -> list[Any]:
    return [r for r in nft.get_rules() if r.get_attr("NFTA_RULE_TABLE") == table]


def _masquerade(subnet: str, bridge: str) -> tuple[Any, ...]:
    from pyroute2.netlink.nfnetlink.nftsocket import Cmp
    from pyroute2.nftables.expressions import genex, ipv4addr, masq

    network = ipaddress.ip_network(subnet)
    name = bridge.encode().ljust(_IFNAMSIZ, b"\0")
    oifname = [genex("meta", {"dreg": 1, "key": _META_OIFNAME})]
    not_bridge = [genex("cmp", {"sreg": 1, "op": Cmp.NFT_CMP_NEQ, "data": {"attrs": [("NFTA_DATA_VALUE", name)]}})]
    return (ipv4addr(src=f"{network.network_address}/{network.prefixlen}"), oifname, not_bridge, masq())


def ensure(subnet: str, bridge: str) -> None:
    """The network's NAT table with its rule (made again if missing or half made), and forwarding on."""
    table = table_name(bridge)
    try:
        with nftables() as nft:
            if table in tables(nft):
                if rules(nft, table):
                    _forwarding_on()
                    return
                nft.table("del", name=table)  # half made (a crash between two messages): start again
            nft.table("add", name=table)
            nft.chain("add", table=table, name=CHAIN, hook="postrouting", type="nat", priority=_NAT_PRIORITY,
                      policy=_POLICY_ACCEPT)
            nft.rule("add", table=table, chain=CHAIN, expressions=_masquerade(subnet, bridge))
    except NatError:
        raise
    except Exception as exc:
        raise NatError(str(exc) or type(exc).__name__) from None
    _forwarding_on()


def remove(bridge: str) -> None:
    """The network's NAT table goes (nothing if it is not there)."""
    remove_table(table_name(bridge))


def remove_table(table: str, family: int = NFPROTO_IPV4) -> None:
    """Delete ``table`` of ``family`` (its chains and rules with it); nothing if it is not there."""
    try:
        with nftables(family) as nft:
            if table in tables(nft):
                nft.table("del", name=table)
    except NatError:
        raise
    except Exception as exc:
        raise NatError(str(exc) or type(exc).__name__) from None


def present(bridge: str) -> bool:
    """Whether the network's NAT rule is in place (for ``network ls`` and the tests)."""
    with contextlib.suppress(NatError), nftables() as nft:
        return bool(rules(nft, table_name(bridge)))
    return False


def _forwarding_on() -> None:
    try:
        with open(IP_FORWARD, "r+") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1\n")
    except OSError as exc:
        raise NatError(f"cannot turn on IPv4 forwarding: {exc.strerror}") from None
