"""The image verbs every frontend offers: images, pull, history, rmi."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..runtime import format_size, parse_reference
from . import Done, Frontend, Listing, each, familiar, pull_shown, verb

if TYPE_CHECKING:
    from ..client import Client


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def _images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]", help="only images of this repository")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")


@verb("images", "list images", _images_arguments)
def images(client: Client, args: argparse.Namespace, front: Frontend) -> Listing:
    from .. import format as fmt
    wanted = parse_reference(args.reference, default_tag=False) if args.reference else None
    rows = []
    for row in client.images():  # (one row per tag, newest image first)
        ref = parse_reference(row.ref, default_tag=False)
        if wanted is not None and (ref.name != wanted.name or wanted.tag not in (None, ref.tag)):
            continue
        rows.append({"Repository": ref.familiar_name, "Tag": ref.tag, "Id": row.id, "Digest": row.digest,
                     "Created": row.created, "Size": row.size})
    return Listing(rows, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                   [[r["Repository"], r["Tag"] or "<none>", _short(r["Id"]), fmt.time_ago(r["Created"]),
                     format_size(r["Size"], docker=True)] for r in rows],
                   list(dict.fromkeys(_short(r["Id"]) for r in rows)))


def tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="allow plain http, or https with a certificate that is not verified")
    p.add_argument("--ca-file", metavar="FILE", help="also trust this CA certificate (PEM)")
    p.add_argument("--cert-dir", metavar="DIR",
                   help="docker's layout: *.crt CA certificates, NAME.cert/NAME.key client certificates")


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", metavar="REF")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-arch index (default: "
                   "this machine's)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the reference")
    tls_arguments(p)


@verb("pull", "pull an image from a registry", _pull_arguments)
def pull(client: Client, args: argparse.Namespace, front: Frontend) -> str:
    pull_shown(client, front, args.reference, quiet=args.quiet, platform=args.platform, insecure=args.insecure,
               ca_file=args.ca_file, cert_dir=args.cert_dir)
    return str(parse_reference(args.reference))


def _history_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="REF")
    p.add_argument("--json", action="store_true", help="print JSON")


@verb("history", "show an image's history", _history_arguments)
def history(client: Client, args: argparse.Namespace, front: Frontend) -> Listing:
    from .. import format as fmt

    rows = client.history(args.image)
    cells = []
    for r in rows:
        created_by = r["CreatedBy"] if len(r["CreatedBy"]) <= 45 else r["CreatedBy"][:44] + "…"
        rid = _short(r["Id"]) if r["Id"].startswith("sha256:") else r["Id"]
        cells.append([rid, fmt.time_ago(r["Created"]), created_by, format_size(r["Size"], docker=True),
                      r["Comment"]])
    return Listing(rows, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], cells)


def _rmi_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="REF")
    p.add_argument("-f", "--force", action="store_true", help="remove an image tagged in several repositories")


@verb("rmi", "remove images", _rmi_arguments)
def rmi(client: Client, args: argparse.Namespace, front: Frontend) -> Done:
    """Untag each image; once no tag is left, it is deleted (its blobs go unless a container still uses them)."""

    def remove(ref: str) -> list[str]:
        removal = client.remove_image(ref, force=args.force)
        deleted = [f"Deleted: {removal.deleted}"] if removal.deleted is not None else []
        return [f"Untagged: {familiar(tag)}" for tag in removal.untagged] + deleted

    return each(front, args.images, remove)
