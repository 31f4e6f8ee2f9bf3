"""Docker-like views of images and containers: the times, tables and inspect objects the verbs show."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from .runtime import parse_reference

if TYPE_CHECKING:
    from .runtime import ContainerInfo, Image, Store


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


def image_rows(store: Store) -> list[dict[str, Any]]:
    """One row per tag (docker's ``images``), newest image first."""
    rows = []
    for image in store.images():
        for tag in image.tags:
            ref = parse_reference(tag)
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


def inspect_image(image: Image) -> dict[str, Any]:
    """``docker inspect`` for an image."""
    config = image.config
    return {
        "Id": image.id,
        "RepoTags": [parse_reference(t).familiar() for t in image.tags if parse_reference(t).tag is not None],
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


# -- containers -----------------------------------------------------------------------------------------------------

def iso(timestamp: float | None) -> str | None:
    if not timestamp:
        return None
    return _dt.datetime.fromtimestamp(timestamp, _dt.UTC).isoformat().replace("+00:00", "Z")


def status_text(status: str, created_at: float, started_at: float | None, finished_at: float | None,
                exit_code: int | None, now: float | None = None) -> str:
    """docker ps's STATUS: ``Up 3 minutes``, ``Exited (0) 2 seconds ago``, ``Created``."""
    now_dt = _dt.datetime.fromtimestamp(now, _dt.UTC) if now else None
    if status in ("running", "paused", "starting"):
        up = time_ago(iso(started_at or created_at), now_dt).removesuffix(" ago")
        return f"Up {up}" + (" (Paused)" if status == "paused" else "")
    if status == "exited":
        return f"Exited ({exit_code}) {time_ago(iso(finished_at), now_dt)}"
    return "Created"


def inspect_container(info: ContainerInfo) -> dict[str, Any]:
    """docker inspect's shape for a container (the fields a user reads)."""
    state, spec = info.state, info.spec
    return {
        "Id": info.id,
        "Name": "/" + info.name,
        "Created": iso(state.created_at),
        "Path": info.command[0],
        "Args": list(info.command[1:]),
        "State": {
            "Status": state.status,
            "Running": state.status in ("running", "paused"),
            "Paused": state.status == "paused",
            "OOMKilled": state.oom_killed,
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error or "",
            "StartedAt": iso(state.started_at),
            "FinishedAt": iso(state.finished_at),
        },
        "Image": info.image_id,
        "Config": {
            "Image": info.image,
            "Hostname": spec.hostname or info.id[:12],
            "User": spec.user or "",
            "Env": [f"{k}={v}" for k, v in spec.env],
            "Cmd": list(spec.command) or None,
            "Entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
            "WorkingDir": spec.workdir or "",
        },
        "HostConfig": {
            "Memory": spec.limits.memory or 0,
            "MemorySwap": spec.limits.memory_swap or 0,
            "NanoCpus": int((spec.limits.cpus or 0) * 1e9),
            "PidsLimit": spec.limits.pids,
            "StorageOpt": {"size": str(spec.limits.disk)} if spec.limits.disk is not None else None,
            "AutoRemove": spec.remove,
            "NetworkMode": spec.network.mode,
            "Binds": [f"{m.source}:{m.target}{':ro' if m.readonly else ''}" for m in spec.mounts],
            "Ulimits": [{"Name": n, "Soft": s, "Hard": h} for n, s, h in spec.ulimits],
            "UsernsMode": spec.userns,
        },
    }
