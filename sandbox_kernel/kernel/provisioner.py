"""A kernel provisioner: a Jupyter kernel whose every cell runs in a container of our runtime.

jupyter_client starts a kernel through the provisioner its kernelspec names
(``metadata.kernel_provisioner``; ours is registered as ``sandbox-kernel`` under
the ``jupyter_client.kernel_provisioners`` entry point). This one runs the
kernelspec's argv (ipykernel) in a new container:

- **No network.** The kernel speaks ZeroMQ over the ``ipc`` transport: its
  sockets are files in a directory of the store (``kernels/ID``), mounted into
  the container at ``/run/jupyter``, with a copy of the connection file that
  names them there. The container's network is ``none`` unless the kernelspec
  says otherwise.
- **What the runtime promises holds**: its own user namespace, seccomp,
  limits (from the kernelspec, within the admin's ``c.SandboxPolicy``), bounded
  logs. The kernel gets no variable of the server's environment (JupyterHub's
  API token lives there): only the kernelspec's ``env`` and Jupyter's session
  name.
- **Files**: the kernel's working directory (the notebook's, on the host) is
  mounted at ``/work`` (``mount_cwd``, ``workdir``), plus the kernelspec's
  ``volumes``.
- **Life**: interrupt is SIGINT to the kernel (PID 1 passes it on); restart
  makes a new container from the image (``keep_files``: starts the same
  container again, so that its files stay); shutdown removes the container.
  Each container is labelled with its owner (this process, owners.py): a
  server killed with SIGKILL leaves containers that the next start removes.
- **Death explained**: when the container ends on its own, the reason (an OOM
  kill with its limit, a signal, a status) goes to the server's log, and the
  restarted kernel prints it on the first cell it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Bool, Float, Integer, List, Unicode

from ..owners import OWNER_LABEL, orphaned, owner_alive, owner_id

if TYPE_CHECKING:
    from jupyter_client.connect import KernelConnectionInfo

    from ..client import LocalClient
    from ..runtime import State

INSIDE = "/run/jupyter"  # the kernel's directory in its container: connection file, sockets, notice
KERNEL_LABEL = "sandbox-kernel.kernel"  # the Jupyter kernel id a container runs
OWNER_SUFFIX = ".owner"  # kernels/ID.owner: the PID:START of the process that made kernels/ID
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; "-NNNNN" and the NUL are added to the prefix
_BASE_SETTINGS = {"kernel_id", "kernel_spec", "parent", "config", "log", "connection_info"}


class SandboxProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Starts the kernel in a container; settings come from the kernelspec's provisioner ``config``."""

    image = Unicode(help="The image the kernel runs in: it must have the kernelspec's argv (python3 with "
                         "ipykernel; `sandbox-kernel image build debian-kernel` makes one).").tag(config=True)
    memory = Unicode(None, allow_none=True, help="Memory limit (256m, 1g); none: the admin's default."
                     ).tag(config=True)
    cpus = Float(None, allow_none=True, help="CPUs (0.5, 2); none: the admin's default.").tag(config=True)
    pids_limit = Integer(None, allow_none=True, help="Processes at once; none: the admin's default.").tag(config=True)
    disk = Unicode(None, allow_none=True, help="Size of the container's writable layer (root only).").tag(config=True)
    network = Unicode("none", help="none (the default: no network at all), bridge, or a network's name."
                      ).tag(config=True)
    volumes = List(Unicode(), help="Host directories, as -v takes them: SRC:DST[:ro].").tag(config=True)
    mount_cwd = Bool(True, help="Mount the kernel's working directory (the notebook's) at `workdir`."
                     ).tag(config=True)
    workdir = Unicode("/work", help="Where the kernel starts, and where its working directory is mounted."
                      ).tag(config=True)
    keep_files = Bool(False, help="On restart, start the same container again (its files stay) instead of a "
                                  "new one from the image.").tag(config=True)
    root = Unicode(None, allow_none=True, help="The store (default: the caller's, as the CLI's)."
                   ).tag(config=True)

    def __init__(self, **kwargs: Any):
        known = _BASE_SETTINGS | set(self.class_trait_names(config=True))
        unknown = sorted(set(kwargs) - known)
        if unknown:
            settings = sorted(self.class_trait_names(config=True))
            raise ValueError(f"unknown setting {unknown[0]!r} in the kernelspec's sandbox-kernel provisioner config "
                             f"(known: {', '.join(settings)})")
        super().__init__(**kwargs)
        self.container: str | None = None  # its id while one exists
        self.exit_code: int | None = None
        self.death: str | None = None  # why the last container ended on its own, one sentence
        self._client: LocalClient | None = None
        self._stopping = False

    # -- where things are -------------------------------------------------------------------------------------------

    @property
    def client(self) -> LocalClient:
        if self._client is None:
            from ..client import LocalClient
            from ..policy import SandboxPolicy
            from ..runtime import Store

            policy = SandboxPolicy(parent=self.parent)
            self._client = LocalClient(Store(self.root), policy=policy, warm_slots=False)
        return self._client

    @property
    def directory(self) -> Path:
        """The kernel's directory on the host (private to this user: in the store)."""
        return self.client.store.root / "kernels" / self.kernel_id[:12]

    # -- start --------------------------------------------------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self.container is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if not self.image:
            raise ValueError("the kernelspec's sandbox-kernel provisioner config names no image")
        await asyncio.to_thread(self._sweep)
        directory = self.directory
        await asyncio.to_thread(_kernel_directory, directory)
        prefix = str(directory / "k")
        if len(prefix) > SOCKET_PATH_MAX:
            raise ValueError(f"the kernel's socket path {prefix} is longer than a socket's {SOCKET_PATH_MAX} bytes: "
                             "use a store with a shorter path (--root, $SANDBOX_KERNEL_ROOT)")
        km.transport = "ipc"
        km.ip = prefix
        env = kwargs.pop("env", {})
        km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
        self.connection_info = km.get_connection_info()
        inside = dict(self.connection_info, ip=f"{INSIDE}/k")
        inside["key"] = inside["key"].decode() if isinstance(inside["key"], bytes) else inside["key"]
        await asyncio.to_thread(_write_private, directory / "connection.json", json.dumps(inside, indent=1))
        await asyncio.to_thread(_write_private, directory / "notice.py", _notice(self.death))
        self.death = None
        cmd = [arg.replace("{connection_file}", f"{INSIDE}/connection.json") for arg in self.kernel_spec.argv]
        cmd += kwargs.pop("extra_arguments", [])
        if any("ipykernel" in arg for arg in cmd):
            cmd.append(f"--IPKernelApp.exec_files={INSIDE}/notice.py")
        kernel_env = dict(self.kernel_spec.env or {})
        if env.get("JPY_SESSION_NAME"):
            kernel_env["JPY_SESSION_NAME"] = env["JPY_SESSION_NAME"]
        kwargs["cmd"] = cmd
        kwargs["kernel_env"] = kernel_env
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        from ..runtime import ContainerNotFound

        cwd = kwargs.get("cwd")
        env = kwargs.get("kernel_env", {})
        self.exit_code = None
        self._stopping = False
        if self.container is not None and self.keep_files:
            try:
                await asyncio.to_thread(self.client.start, self.container)
            except ContainerNotFound:  # (removed meanwhile: a new one, its files are gone anyway)
                self.container = None
        if self.container is None or not self.keep_files:
            self.container = await asyncio.to_thread(self._create, cmd, env, cwd)
        self.log.info("sandbox-kernel: kernel %s runs in container %s (%s)", self.kernel_id, self.container[:12],
                      self.image)
        return self.connection_info

    def _create(self, cmd: list[str], env: dict[str, str], cwd: str | None) -> str:
        from ..obtain import obtain
        from ..runtime import ContainerSpec, Mount, NetSpec

        policy = self.client.policy
        assert policy is not None
        policy.check_image(self.image)
        obtain(self.client.store, self.image, self.log.info)
        limits = policy.defaults().with_options(
            memory=self.memory, cpus=None if self.cpus is None else str(self.cpus), pids=self.pids_limit,
            disk=self.disk)
        own = [Mount(str(self.directory), INSIDE)]
        if self.mount_cwd and cwd:
            # (a directory of root's is read-only there: a container's root never writes as the host's root)
            cwd = os.path.realpath(cwd)
            own.append(Mount(cwd, self.workdir, readonly=os.stat(cwd).st_uid == 0))
        spec = ContainerSpec(
            image=self.image, command=tuple(cmd), entrypoint=(), env=tuple(env.items()), workdir=self.workdir,
            limits=limits, mounts=(*own, *(Mount.parse(v) for v in self.volumes)), network=NetSpec(self.network),
            labels=((OWNER_LABEL, owner_id()), (KERNEL_LABEL, self.kernel_id)))
        policy.check(spec, own_mounts=len(own))
        return self.client.runtime.run_detached(spec)

    def _sweep(self) -> None:
        """Remove the kernel containers (and directories) that a server gone without a shutdown left."""
        from ..runtime import SandboxError

        kept = set()
        for info in self.client.runtime.list(all=True):
            labels = dict(info.spec.labels)
            if KERNEL_LABEL not in labels:
                continue
            if orphaned(labels):
                with contextlib.suppress(SandboxError):
                    self.client.runtime.remove(info.id, force=True)
                    self.log.info("sandbox-kernel: removed container %s of a kernel whose server is gone",
                                  info.short_id)
                    continue
            kept.add(labels[KERNEL_LABEL][:12])
        for directory in (self.client.store.root / "kernels").glob("*"):
            # (a directory without a container yet may be a kernel starting now, in this server or another)
            owner = directory.with_name(directory.name + OWNER_SUFFIX)
            if directory.is_dir() and directory.name not in kept and not owner_alive(_read(owner)):
                _remove_directory(directory)

    # -- while it runs ------------------------------------------------------------------------------------------------

    async def poll(self) -> int | None:
        if self.exit_code is not None:
            return self.exit_code
        if self.container is None:
            return 0
        return await asyncio.to_thread(self._poll)

    def _poll(self) -> int | None:
        from ..runtime import ContainerNotFound

        try:
            info = self.client.runtime.get(self.container or "")
        except ContainerNotFound:
            self.exit_code = -int(signal.SIGKILL)
            if not self._stopping:
                self.death = "The kernel's container was removed (sandbox-kernel rm, or an admin)."
                self.log.warning("sandbox-kernel: kernel %s: %s", self.kernel_id, self.death)
            return self.exit_code
        if info.running:
            return None
        state = info.state
        self.exit_code = state.exit_code if state.exit_code is not None else -int(signal.SIGKILL)
        if not self._stopping:
            disk = self._disk_full()
            self.death = _death(state, info.spec.limits.memory) + (f" Also, {disk}" if disk else "")
            self.log.warning("sandbox-kernel: kernel %s: %s", self.kernel_id, self.death)
        return self.exit_code

    async def wait(self) -> int | None:
        while await self.poll() is None:
            await asyncio.sleep(0.05)
        return self.exit_code

    async def send_signal(self, signum: int) -> None:
        if self.container is None:
            return
        from ..runtime import ContainerError

        with contextlib.suppress(ContainerError):  # (it has just ended: nothing to signal)
            await asyncio.to_thread(self.client.runtime.kill, self.container, signum)

    async def kill(self, restart: bool = False) -> None:
        await self._stop(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self._stop(signal.SIGTERM)

    async def _stop(self, signum: int) -> None:
        await self._stopped()
        await self.send_signal(signum)

    async def _stopped(self) -> None:
        """The kernel is being stopped (by its manager): first say whether a limit had been hit (a fork bomb
        leaves a kernel that cannot answer; the grader, or JupyterLab, then stops it: this is where the reason
        shows)."""
        if not self._stopping and self.container is not None:
            said = await asyncio.to_thread(self._limits_hit)
            if said is not None:
                self.log.warning("sandbox-kernel: kernel %s: %s", self.kernel_id, said)
        self._stopping = True

    def _limits_hit(self) -> str | None:
        """What limit the running kernel's container has hit (its processes, its disk), or None."""
        from ..runtime import SandboxError

        said = []
        with contextlib.suppress(SandboxError, OSError):
            stats = self.client.runtime.stats(self.container or "")
            if stats.usage.pids_limit_hits:
                said.append(f"its container reached its process limit ({stats.limits.pids} processes): new "
                            "processes were refused.")
        disk = self._disk_full()
        if disk:
            said.append(disk)
        return " ".join(said) or None

    def _disk_full(self) -> str | None:
        from ..runtime import SandboxError, format_size

        with contextlib.suppress(SandboxError, OSError):
            usage = self.client.runtime.disk_usage(self.container or "", attach=False)
            if usage is not None and usage.full:
                return (f"its container's disk is full ({format_size(usage.size)}, --disk): writes fail with "
                        "'No space left on device'.")
        return None

    async def shutdown_requested(self, restart: bool = False) -> None:
        await self._stopped()

    # -- end ----------------------------------------------------------------------------------------------------------

    async def cleanup(self, restart: bool = False) -> None:
        if self.container is not None and not (restart and self.keep_files):
            await asyncio.to_thread(self._remove)
        if not restart:
            _remove_directory(self.directory)

    def _remove(self) -> None:
        from ..runtime import ContainerNotFound

        with contextlib.suppress(ContainerNotFound):
            self.client.runtime.remove(self.container or "", force=True)
        self.container = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return recommended

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["container"] = self.container
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container = provisioner_info.get("container")


def _death(state: State, memory: int | None) -> str:
    """One sentence: why a kernel's container ended when nobody asked it to."""
    from ..runtime import format_size

    forks = " Its container had also reached its process limit (a fork bomb?)." if state.pids_limit_hit else ""
    if state.oom_killed:
        limit = f" (its container's limit is {format_size(memory)})" if memory else ""
        return f"The kernel ran out of memory{limit} and the kernel's OOM killer ended it.{forks}"
    if state.error:
        return f"The kernel's container ended: {state.error}."
    code = state.exit_code
    if code is not None and code > 128:
        with contextlib.suppress(ValueError):
            return f"The kernel was killed by {signal.Signals(code - 128).name}.{forks}"
    return f"The kernel exited with status {code}.{forks}"


def _notice(death: str | None) -> str:
    """The kernel's startup file: it prints why the previous kernel died on the first cell run after."""
    if death is None:
        return ""
    text = f"{death} It was restarted: variables are lost."
    return ("def _sandbox_kernel_notice(ip=get_ipython()):\n"
            "    import sys\n"
            "    def once(*_):\n"
            f"        print({text!r}, file=sys.stderr)\n"
            "        ip.events.unregister('pre_run_cell', once)\n"
            "    ip.events.register('pre_run_cell', once)\n"
            "_sandbox_kernel_notice()\n"
            "del _sandbox_kernel_notice\n")


def _kernel_directory(directory: Path) -> None:
    """The kernel's directory, the container's root's alone (0700): it makes its sockets there. Beside it, the
    name of the process that made it (``ID.owner``: out of the container's reach), for another server's sweep."""
    from ..runtime import root_ids

    directory.parent.mkdir(mode=0o700, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory.parent / f"{directory.name}{OWNER_SUFFIX}").write_text(owner_id())
    uid, gid = root_ids()
    st = directory.stat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(directory, uid, gid)


def _remove_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.with_name(directory.name + OWNER_SUFFIX).unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write_private(path: Path, text: str) -> None:
    """A file for the kernel's container alone (its root's, 0600), replaced whole."""
    from ..runtime import root_ids

    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as fh:
        fh.write(text)
        os.fchown(fh.fileno(), *root_ids())
    os.replace(tmp, path)
