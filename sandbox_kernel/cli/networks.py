"""``network create|ls|rm``: user-defined networks (a bridge each; containers on one reach each other by name)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..runtime import Store


def _networks(args: argparse.Namespace) -> Any:
    from ..runtime import Networks

    return Networks(Store(args.root).root)


def cmd_network_create(args: argparse.Namespace) -> int:
    network = _networks(args).create(args.name, subnet=args.subnet, mtu=args.mtu, nat=args.nat,
                                     allow_host=args.allow_host)
    print(network.name)
    return 0


def cmd_network_ls(args: argparse.Namespace) -> int:
    from .. import format as fmt

    networks = _networks(args)
    rows = [{"Name": n.name, "Subnet": n.subnet, "Gateway": n.gateway, "Bridge": n.bridge, "MTU": n.mtu,
             "NAT": n.nat, "AllowHost": n.allow_host, "Containers": sorted(e.name for e in networks.endpoints(n.name))}
            for n in networks.list()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(fmt.table([[r["Name"], r["Subnet"], r["Gateway"], r["Bridge"], str(r["MTU"]),
                          "yes" if r["NAT"] else "no", "yes" if r["AllowHost"] else "no", ",".join(r["Containers"])]
                         for r in rows], ["NAME", "SUBNET", "GATEWAY", "BRIDGE", "MTU", "NAT", "HOST", "CONTAINERS"]))
    return 0


def cmd_network_rm(args: argparse.Namespace) -> int:
    from ..runtime import Containers

    networks = _networks(args)
    containers = Containers(Store(args.root))
    for name in args.names:
        networks.remove(name, running=containers.running)
        print(name)
    return 0


def add_network_commands(sub: Any, parser_class: Any) -> None:
    network = sub.add_parser("network", help="user-defined networks")
    network_sub = network.add_subparsers(dest="network_command", metavar="COMMAND", parser_class=parser_class)
    network_sub.required = True
    p = network_sub.add_parser("create", help="make a network: a bridge, a subnet, names between containers")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--subnet", metavar="CIDR", help="its IPv4 subnet (default: a free /24 of 10.89.0.0/16)")
    p.add_argument("--mtu", type=int, default=1500, help="the MTU of its bridge and veths (default 1500)")
    p.add_argument("--nat", action="store_true",
                   help="outbound NAT: its containers reach what the host reaches (an nftables masquerade rule "
                        "and IPv4 forwarding on the host; off by default)")
    p.add_argument("--allow-host", action="store_true",
                   help="let its containers reach the host's own services (whatever listens on the host's "
                        "addresses) and link-local addresses such as a cloud's metadata service; off by default")
    p.set_defaults(func=cmd_network_create)
    p = network_sub.add_parser("ls", help="list networks")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_network_ls)
    p = network_sub.add_parser("rm", help="remove networks (none of their containers may run)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_network_rm)
