"""What a network's containers may not reach: the host itself, link-local addresses, other networks.

One nftables table per network, family ``inet`` (IPv4 and IPv6 alike), over netlink;
what ``nft`` would print as::

    table inet sandbox_kernel_BRIDGE {
        chain input {                     # to the host itself (any of its addresses)
            type filter hook input priority filter; policy accept;
            iifname "BRIDGE" ct state established,related accept   # replies (-p's proxy, for one)
            iifname "BRIDGE" drop                                   # unless --allow-host
        }
        chain forward {                   # through the host
            type filter hook forward priority filter; policy accept;
            iifname "BRIDGE" oifname != "BRIDGE" oifname "skbr*" drop   # to another network
            iifname "BRIDGE" meta nfproto ipv4 ip daddr 169.254.0.0/16 drop   # unless --allow-host
            iifname "BRIDGE" meta nfproto ipv4 ip daddr 10.0.2.2 drop         # the same, users not root
        }
    }

So a container on a network reaches the containers of that network and, with
``--nat``, the outside; not a Jupyter server, a registry or an sshd that listens on
the host's 0.0.0.0 (through the bridge's address or any other of the host's), not
the cloud's metadata service (169.254.169.254) or other link-local addresses, and
not the containers of another network. ``network create --allow-host`` leaves out
the two rules about the host and link-local. The table goes with its network;
:func:`ensure` makes it again whenever the bridge is made sure of (after a reboot
too). An accept here cannot overrule another table's drop: only our own drops are
added to what the host already does.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

from .nat import TABLE_PREFIX, NatError, nftables, remove_table, rules, tables

NFPROTO_INET = 1
NFPROTO_IPV4 = 2
_META_IIFNAME, _META_OIFNAME, _META_NFPROTO = 6, 7, 15
_CT_STATE = 0
_ESTABLISHED_RELATED = 0x2 | 0x4
_NF_DROP, _NF_ACCEPT = 0, 1
_POLICY_ACCEPT = 1
_IFNAMSIZ = 16
LINK_LOCAL = "169.254.0.0/16"
BRIDGE_PREFIX = b"skbr"  # network.BRIDGE_PREFIX: every network's bridge


def table_name(bridge: str) -> str:
    return TABLE_PREFIX + bridge


def _nft() -> contextlib.AbstractContextManager[Any]:
    return nftables(NFPROTO_INET)


def _name(bridge: str) -> bytes:
    return bridge.encode().ljust(_IFNAMSIZ, b"\0")


def _rules(bridge: str, allow_host: bool, host: tuple[str, ...] = ()) -> list[tuple[str, list[Any]]]:
    """(chain, expressions) of every rule, in order."""
    from pyroute2.netlink.nfnetlink.nftsocket import Cmp
    from pyroute2.nftables.expressions import genex, ipv4addr, verdict

    def meta(key: int) -> Any:
        return genex("meta", {"dreg": 1, "key": key})

    def cmp(data: bytes, op: int = Cmp.NFT_CMP_EQ) -> Any:
        return genex("cmp", {"sreg": 1, "op": op, "data": {"attrs": [("NFTA_DATA_VALUE", data)]}})

    from_bridge = [meta(_META_IIFNAME), cmp(_name(bridge))]
    established = [genex("ct", {"dreg": 1, "key": _CT_STATE}),
                   genex("bitwise", {"sreg": 1, "dreg": 1, "len": 4,
                                     "mask": {"attrs": [("NFTA_DATA_VALUE", struct.pack("=I", _ESTABLISHED_RELATED))]},
                                     "xor": {"attrs": [("NFTA_DATA_VALUE", b"\0" * 4)]}}),
                   cmp(b"\0" * 4, Cmp.NFT_CMP_NEQ)]
    rules = [("input", [*from_bridge, *established, *verdict(_NF_ACCEPT)])]
    if not allow_host:
        rules.append(("input", [*from_bridge, *verdict(_NF_DROP)]))
    rules.append(("forward", [*from_bridge, meta(_META_OIFNAME), cmp(_name(bridge), Cmp.NFT_CMP_NEQ),
                              cmp(BRIDGE_PREFIX), *verdict(_NF_DROP)]))
    if not allow_host:
        for address in (LINK_LOCAL, *(f"{a}/32" for a in host)):
            rules.append(("forward", [*from_bridge, meta(_META_NFPROTO), cmp(bytes([NFPROTO_IPV4])),
                                      *ipv4addr(dst=address), *verdict(_NF_DROP)]))
    return rules


def ensure(bridge: str, allow_host: bool, host: tuple[str, ...] = ()) -> None:
    """The network's table with every rule (made again if missing or half made). ``host``: more addresses
    that are the host's, reached through a route rather than as this namespace's own (slirp4netns's gateway,
    for a user who is not root), dropped as the host's own are unless ``allow_host``."""
    table = table_name(bridge)
    wanted = _rules(bridge, allow_host, host)
    try:
        with _nft() as nft:
            if table in tables(nft):
                if len(rules(nft, table)) == len(wanted):
                    return
                nft.table("del", name=table)  # half made (a crash between two messages): start again
            nft.table("add", name=table)
            for chain in ("input", "forward"):
                nft.chain("add", table=table, name=chain, hook=chain, type="filter", priority=0,
                          policy=_POLICY_ACCEPT)
            for chain, expressions in wanted:
                nft.rule("add", table=table, chain=chain, expressions=(expressions,))
    except NatError:
        raise
    except Exception as exc:
        raise NatError(str(exc) or type(exc).__name__) from None


def remove(bridge: str) -> None:
    """The network's table goes (nothing if it is not there)."""
    remove_table(table_name(bridge), NFPROTO_INET)


def present(bridge: str) -> int:
    """How many of the network's wall rules are in place (for the tests)."""
    with contextlib.suppress(NatError), _nft() as nft:
        return len(rules(nft, table_name(bridge)))
    return 0
