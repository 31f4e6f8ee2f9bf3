"""Kernelspecs that start their kernel in a container: install, list, remove (``sandbox-kernel kernelspec``).

A sandboxed kernelspec is a plain ipykernel kernelspec whose metadata names
our provisioner and its settings::

    {"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
     "display_name": "Python 3 (sandbox)", "language": "python", "interrupt_mode": "signal",
     "metadata": {"kernel_provisioner": {"provisioner_name": "sandbox-kernel",
                                         "config": {"image": "localhost/debian-kernel:latest", "memory": "1g"}}}}

It is installed where jupyter's own ``kernelspec install`` puts one (the
user's data dir with ``--user``, the environment's with ``--sys-prefix``, else
the system's), so that JupyterLab, nbclient, nbconvert and nbgrader find it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime import Limits, Mount, NetSpec, UsageError

PROVISIONER = "sandbox-kernel"
ARGV = ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@dataclass(frozen=True)
class Installed:
    name: str
    path: str
    display_name: str
    image: str | None  # None: not a sandboxed kernelspec


def settings(image: str, *, memory: str | None = None, cpus: str | None = None, pids_limit: int | None = None,
             disk: str | None = None, network: str = "none", volumes: tuple[str, ...] = (),
             keep_files: bool = False) -> dict[str, Any]:
    """The provisioner's config for these options, each checked as the CLI checks it (a bad one is refused
    here, not at the first start)."""
    config: dict[str, Any] = {"image": image}
    limits = Limits().with_options(memory=memory, cpus=cpus, pids=pids_limit, disk=disk)  # (every limit's rules)
    if memory is not None:
        config["memory"] = memory
    if cpus is not None:
        config["cpus"] = limits.cpus
    if pids_limit is not None:
        config["pids_limit"] = pids_limit
    if disk is not None:
        config["disk"] = disk
    if network != "none":
        NetSpec(network)
        config["network"] = network
    if volumes:
        for volume in volumes:
            Mount.parse(volume)
        config["volumes"] = list(volumes)
    if keep_files:
        config["keep_files"] = True
    return config


def install(name: str, config: dict[str, Any], *, display_name: str | None = None, user: bool = False,
            prefix: str | None = None) -> str:
    """Write the kernelspec; its directory."""
    from jupyter_client.kernelspec import KernelSpecManager, _is_valid_kernel_name

    if not _is_valid_kernel_name(name):
        raise UsageError(f"invalid kernel name {name!r}: letters, digits, '.', '_' and '-' only")
    spec = {
        "argv": ARGV,
        "display_name": display_name or f"Python 3 (sandbox: {config['image']})",
        "language": "python",
        "interrupt_mode": "signal",
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"},  # (no debugger warning on every start)
        "metadata": {"kernel_provisioner": {"provisioner_name": PROVISIONER, "config": config}},
    }
    with tempfile.TemporaryDirectory(prefix="sk-kernelspec-") as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        try:
            return KernelSpecManager().install_kernel_spec(tmp, name, user=user, prefix=prefix)
        except PermissionError as exc:
            raise UsageError(f"cannot write the kernelspec in {exc.filename}: use --user (yours alone) or run "
                             "as a user who may write there") from None


def installed() -> list[Installed]:
    """Every kernelspec Jupyter finds (as ``jupyter kernelspec list``), with the image of the sandboxed ones."""
    from jupyter_client.kernelspec import KernelSpecManager

    rows = []
    for name, found in sorted(KernelSpecManager().get_all_specs().items()):
        spec = found.get("spec", {})
        provisioner = spec.get("metadata", {}).get("kernel_provisioner", {})
        image = provisioner.get("config", {}).get("image") if provisioner.get("provisioner_name") == PROVISIONER \
            else None
        rows.append(Installed(name, found["resource_dir"], spec.get("display_name", name), image))
    return rows


def remove(name: str) -> str:
    """Remove a sandboxed kernelspec; its directory. Others are refused (``jupyter kernelspec remove``)."""
    from jupyter_client.kernelspec import KernelSpecManager

    row = next((r for r in installed() if r.name == name), None)
    if row is None:
        raise UsageError(f"no kernelspec named {name!r}")
    if row.image is None:
        raise UsageError(f"{name} is not a sandbox-kernel kernelspec: `jupyter kernelspec remove {name}` removes it")
    try:
        return KernelSpecManager().remove_kernel_spec(name)
    except PermissionError as exc:
        raise UsageError(f"cannot remove {exc.filename}: it belongs to another user (root's?)") from None
