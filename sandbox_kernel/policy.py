"""What an admin allows notebooks: which images, what limits by default and at most, volumes, host networking.

Set in Jupyter's config files, for the kernels' ``%%container`` cells
(``ipython_config.py``) and for the server's REST API and the cells it runs for
remote kernels (``jupyter_server_config.py``)::

    c.SandboxPolicy.allowed_images = ["localhost/*", "docker.io/library/*"]
    c.SandboxPolicy.default_memory = "1g"        # what a container gets when the cell does not say
    c.SandboxPolicy.max_memory = "4g"            # what a cell may ask for at most
    c.SandboxPolicy.default_disk = "2g"          # each container's writable layer (root only, see below)
    c.ServerPolicy.allow_volumes = False         # the REST API: off unless the admin says so

The panel, the line magics and the REST API go through one client
(client.LocalClient), which applies the policy; ``%%container`` cells apply
it as they make their container. In a kernel that the notebook's user
controls (they can run any Python there), the policy is a guard rail that
keeps a cell from asking for more than the admin meant, not a wall: the REST
API, and the sandboxed kernel, are where a user cannot change it.
"""

from __future__ import annotations

import fnmatch

from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import Configurable

from .runtime import (
    ContainerSpec,
    Limits,
    UsageError,
    format_size,
    limit_refusal,
    parse_reference,
    parse_size,
    rootless,
)


class SandboxPolicy(Configurable):
    """What the notebooks of this kernel (or server) may ask containers for."""

    allowed_images = List(Unicode(), default_value=["*"], config=True,
                          help="Patterns (fnmatch) of the images notebooks may run and pull, matched against the "
                               "full reference (docker.io/library/python:3.12) and its repository "
                               "(docker.io/library/python), e.g. ['localhost/*', 'registry.school.example/*'].")
    default_memory = Unicode("1g", allow_none=True, config=True,
                             help="Memory of a container whose cell does not say (None: unlimited).")
    default_cpus = Float(1.0, allow_none=True, config=True, help="CPUs of a container whose cell does not say.")
    default_pids = Integer(1024, allow_none=True, config=True,
                           help="Processes at once in a container whose cell does not say.")
    default_disk = Unicode("4g", allow_none=True, config=True,
                           help="Size of the writable layer of a container whose cell does not say (None: no limit). "
                                "The store's file system must have room for every container's at once: a new "
                                "container is refused when it has not. Only where the runtime runs as root "
                                "(a loop-mounted file system per container); elsewhere containers have none.")
    max_memory = Unicode(None, allow_none=True, config=True,
                         help="The most memory a cell may ask for (None: what the host has).")
    max_cpus = Float(None, allow_none=True, config=True, help="The most CPUs a cell may ask for.")
    max_pids = Integer(None, allow_none=True, config=True, help="The most processes a cell may ask for.")
    max_disk = Unicode(None, allow_none=True, config=True, help="The largest writable layer a cell may ask for.")
    allow_volumes = Bool(True, config=True, help="Whether cells may mount host directories (-v).")
    allow_host_network = Bool(True, config=True,
                              help="Whether cells may share the host's network (--network host: its ports, "
                                   "its interfaces, the services it listens on), and networks made with "
                                   "--allow-host.")

    def check_image(self, reference: str) -> None:
        """UsageError unless ``reference`` matches one of ``allowed_images``."""
        ref = parse_reference(reference)
        names = {str(ref), ref.name, reference}
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self.allowed_images):
            raise UsageError(f"image {ref} is not among the images this server allows "
                             f"({', '.join(self.allowed_images) or 'none'}: c.SandboxPolicy.allowed_images)")

    def defaults(self) -> Limits:
        """The limits of a container whose cell asks for none: none where the host cannot set them (a user who
        is not root with no cgroup delegated; then a ``max_*`` refuses every cell, as it must)."""
        if limit_refusal() is not None:
            limits = Limits()
        else:
            memory = parse_size(self.default_memory, "default_memory") if self.default_memory else None
            disk = parse_size(self.default_disk, "default_disk") if self.default_disk and _disk_limits() else None
            limits = Limits(memory=memory, cpus=self.default_cpus, pids=self.default_pids, disk=disk)
        self.check_limits(limits)
        return limits

    def check_limits(self, limits: Limits) -> None:
        """UsageError for a limit above the admin's maximum (or none where there is a maximum)."""
        if self.max_memory:
            most = parse_size(self.max_memory, "max_memory")
            if limits.memory is None or limits.memory > most:
                shown = format_size(limits.memory, none="unlimited")
                raise UsageError(f"memory {shown} is more than this server allows "
                                 f"({self.max_memory}: c.SandboxPolicy.max_memory)")
        if self.max_cpus is not None and (limits.cpus is None or limits.cpus > self.max_cpus):
            raise UsageError(f"{limits.cpus if limits.cpus is not None else 'unlimited'} CPUs is more than this "
                             f"server allows ({self.max_cpus:g}: c.SandboxPolicy.max_cpus)")
        if self.max_pids is not None and (limits.pids is None or limits.pids > self.max_pids):
            raise UsageError(f"{limits.pids if limits.pids is not None else 'unlimited'} processes is more than "
                             f"this server allows ({self.max_pids}: c.SandboxPolicy.max_pids)")
        if self.max_disk and _disk_limits():
            most = parse_size(self.max_disk, "max_disk")
            if limits.disk is None or limits.disk > most:
                shown = format_size(limits.disk, none="unlimited")
                raise UsageError(f"a disk of {shown} is more than this server allows "
                                 f"({self.max_disk}: c.SandboxPolicy.max_disk)")

    def check(self, spec: ContainerSpec, *, own_mounts: int = 0) -> None:
        """Everything about a new container: image, limits, volumes (past the first ``own_mounts``, which
        the caller makes itself: the agent's), host networking."""
        self.check_image(spec.image)
        self.check_limits(spec.limits)
        if spec.mounts[own_mounts:] and not self.allow_volumes:
            raise UsageError("volumes (-v) are off here (c.SandboxPolicy.allow_volumes)")
        if spec.network.mode == "host" and not self.allow_host_network:
            raise UsageError("--network host is off here (c.SandboxPolicy.allow_host_network)")


class ServerPolicy(SandboxPolicy):
    """The REST API's: as the notebooks', but host directories and host networking are off unless allowed."""

    allow_volumes = Bool(False, config=True, help="Whether REST clients may mount the server's directories.")
    allow_host_network = Bool(False, config=True,
                              help="Whether REST clients may share the server's network (--network host).")


def _disk_limits() -> bool:
    """Whether this process can give containers a disk limit (root: loop devices; see runtime/disk.py)."""
    return not rootless()
