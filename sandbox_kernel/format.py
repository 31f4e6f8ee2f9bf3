"""Docker-like text and JSON views of images, shared by the CLI and the magics."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from .runtime import Image, Store, parse_reference


def human_size(n: float) -> str:
    """Docker's sizes: decimal units, three significant digits (``4.26MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}PB"  # pragma: no cover


def _parse_time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def time_ago(text: str | None, now: _dt.datetime | None = None) -> str:
    when = _parse_time(text)
    if when is None:
        return "N/A"
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    now = now or _dt.datetime.now(_dt.UTC)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (
        ("year", 365 * 86400),
        ("month", 30 * 86400),
        ("week", 7 * 86400),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def image_rows(store: Store, match: str | None = None) -> list[dict[str, Any]]:
    """One row per tag (docker's ``images [REPOSITORY[:TAG]]``), newest image first."""
    wanted = parse_reference(match, default_tag=False) if match else None
    rows = []
    for image in store.images():
        for tag in image.tags:
            ref = parse_reference(tag)
            if wanted is not None and (ref.name != wanted.name or wanted.tag not in (None, ref.tag)):
                continue
            rows.append(
                {
                    "Repository": ref.familiar_name,
                    "Tag": ref.tag,
                    "Id": image.id,
                    "Digest": image.manifest_digest,
                    "Created": image.created,
                    "Size": image.size,
                }
            )
    return rows


def images_table(store: Store, match: str | None = None) -> str:
    rows = [
        [r["Repository"], r["Tag"], r["Id"].split(":", 1)[1][:12], time_ago(r["Created"]), human_size(r["Size"])]
        for r in image_rows(store, match)
    ]
    return table(rows, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"])


def inspect_image(image: Image) -> dict[str, Any]:
    """``docker inspect`` for an image."""
    config = image.config
    return {
        "Id": image.id,
        "RepoTags": [parse_reference(t).familiar() for t in image.tags],
        "RepoDigests": [parse_reference(d).familiar() for d in image.repo_digests],
        "Parent": "",
        "Comment": (config.get("history") or [{}])[-1].get("comment", ""),
        "Created": image.created,
        "Author": config.get("author", ""),
        "Config": config.get("config", {}),
        "Architecture": config.get("architecture", ""),
        "Variant": config.get("variant", ""),
        "Os": config.get("os", ""),
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Manifest": {"Digest": image.manifest_digest, "MediaType": image.manifest.get("mediaType", "")},
        "Metadata": {"LastTagTime": ""},
    }


def history_rows(image: Image) -> list[dict[str, Any]]:
    """Config history, newest first, with layer sizes matched to non-empty steps."""
    history = image.config.get("history") or []
    layers = list(image.layers)
    rows = []
    layer_i = 0
    for step in history:
        if not isinstance(step, dict):
            continue
        size = 0
        if not step.get("empty_layer") and layer_i < len(layers):
            size = layers[layer_i]["size"]
            layer_i += 1
        rows.append(
            {
                "CreatedBy": step.get("created_by", ""),
                "Created": step.get("created"),
                "Size": size,
                "Comment": step.get("comment", ""),
            }
        )
    for layer in layers[layer_i:]:  # layers with no history entry
        rows.append({"CreatedBy": "", "Created": None, "Size": layer["size"], "Comment": ""})
    rows.reverse()
    for i, row in enumerate(rows):
        row["Id"] = image.id if i == 0 else "<missing>"
    return rows


def history_table(image: Image) -> str:
    rows = []
    for r in history_rows(image):
        created_by = r["CreatedBy"] if len(r["CreatedBy"]) <= 45 else r["CreatedBy"][:44] + "…"
        rid = r["Id"].split(":", 1)[1][:12] if r["Id"].startswith("sha256:") else r["Id"]
        rows.append([rid, time_ago(r["Created"]), created_by, human_size(r["Size"]), r["Comment"]])
    return table(rows, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"])
