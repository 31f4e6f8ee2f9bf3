"""Base images built on this machine, with no registry.

    busybox         Debian's busybox-static, its applets as symlinks, a minimal /etc
    debian-python   Debian bookworm (mmdebstrap, minbase) with python3
    debian-kernel   the same with ipykernel: the sandboxed kernel's image
    debian-science  the same with ipykernel, numpy and matplotlib (plots in cells and kernels)

Each recipe has a key: a hash of what goes into it (this file, the tools'
versions, the package list). A built image is cached as an OCI archive in
``$SANDBOX_KERNEL_CACHE`` (default ``~/.cache/sandbox-kernel``) under that key and
simply loaded again while the key is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..fsutil import cache_dir
from . import archive, media
from .layers import gzip_writer_id, write_layer
from .store import Image, Store

EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3",)
KERNEL_PACKAGES = ("python3", "python3-ipykernel")  # a kernel in a container (sandbox_kernel/kernel)
SCIENCE_PACKAGES = (*KERNEL_PACKAGES, "python3-numpy", "python3-matplotlib")  # plots and arrays
BUSYBOX_BINARY = "/bin/busybox"


def _tool_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return "unknown"
    return out.stdout.strip() or "missing"


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BuildError(f"{tool} is not installed (Debian package {package}); run scripts/setup.sh")
    return path


@dataclass(frozen=True)
class Recipe:
    name: str
    ref: str
    cmd: tuple[str, ...]
    ingredients: Callable[[], dict[str, str]]
    make_rootfs: Callable[[Path], None]

    def key(self) -> str:
        h = hashlib.sha256()
        h.update(Path(__file__).read_bytes())
        h.update(gzip_writer_id().encode())  # another compressor writes other bytes: another image
        for k, v in sorted(self.ingredients().items()):
            h.update(f"{k}={v}\n".encode())
        return h.hexdigest()[:16]


def _elf_interpreter(path: str) -> bool:
    """True when the ELF file asks for a dynamic loader (has a PT_INTERP header)."""
    import struct

    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF":
            raise BuildError(f"{path} is not an ELF executable")
        is64, little = head[4] == 2, head[5] == 1
        end = "<" if little else ">"
        if is64:
            (phoff,) = struct.unpack(end + "Q", head[32:40])
            phentsize, phnum = struct.unpack(end + "HH", head[54:58])
        else:
            (phoff,) = struct.unpack(end + "I", head[28:32])
            phentsize, phnum = struct.unpack(end + "HH", head[42:46])
        for i in range(phnum):
            fh.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(end + "I", fh.read(4))
            if p_type == 3:  # PT_INTERP
                return True
    return False


def _busybox_rootfs(root: Path) -> None:
    busybox = _require("busybox", "busybox-static")
    real = os.path.realpath(busybox)
    if _elf_interpreter(real):
        raise BuildError(f"{real} is dynamically linked; install Debian's busybox-static")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys", "dev", "var", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copyfile(real, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = subprocess.run([real, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        target = root / applet
        if applet == "bin/busybox" or target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", target)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


def _debian_rootfs(root: Path, packages: tuple[str, ...] = DEBIAN_PACKAGES) -> None:
    mmdebstrap = _require("mmdebstrap", "mmdebstrap")
    sources = _host_sources()
    cmd = [
        mmdebstrap,
        "--variant=minbase",
        "--include=" + ",".join(packages),
        "--format=directory",
        "--skip=output/dev",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        DEBIAN_SUITE,
        str(root),
    ]
    if sources:
        cmd.append(sources)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"mmdebstrap failed (exit {proc.returncode}): {tail}")


def _host_sources() -> str | None:
    """The host's own apt sources, so that the build uses the mirror apt uses."""
    for candidate in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        if "debian" in candidate.name:
            return str(candidate)
    plain = Path("/etc/apt/sources.list")
    if plain.is_file() and plain.read_text().strip():
        return str(plain)
    return None


RECIPES: dict[str, Recipe] = {
    "busybox": Recipe(
        "busybox",
        "localhost/busybox:latest",
        ("sh",),
        lambda: {"busybox-static": _tool_version("busybox-static")},
        _busybox_rootfs,
    ),
    "debian-python": Recipe(
        "debian-python",
        "localhost/debian-python:latest",
        ("python3",),
        lambda: {
            "mmdebstrap": _tool_version("mmdebstrap"),
            "suite": DEBIAN_SUITE,
            "packages": ",".join(DEBIAN_PACKAGES),
        },
        _debian_rootfs,
    ),
    "debian-kernel": Recipe(
        "debian-kernel",
        "localhost/debian-kernel:latest",
        ("python3",),
        lambda: {
            "mmdebstrap": _tool_version("mmdebstrap"),
            "suite": DEBIAN_SUITE,
            "packages": ",".join(KERNEL_PACKAGES),
        },
        lambda root: _debian_rootfs(root, KERNEL_PACKAGES),
    ),
    "debian-science": Recipe(
        "debian-science",
        "localhost/debian-science:latest",
        ("python3",),
        lambda: {
            "mmdebstrap": _tool_version("mmdebstrap"),
            "suite": DEBIAN_SUITE,
            "packages": ",".join(SCIENCE_PACKAGES),
        },
        lambda root: _debian_rootfs(root, SCIENCE_PACKAGES),
    ),
}


def build(store: Store, name: str, *, rebuild: bool = False, tag: str | None = None) -> Image:
    """Build (or load from the cache) base image ``name`` into ``store``."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise BuildError(f"no recipe named {name!r}; known: {', '.join(sorted(RECIPES))}")
    cached = cache_dir() / f"{recipe.name}-{recipe.key()}.oci.tar"
    ref = tag or recipe.ref
    if cached.is_file() and not rebuild:
        try:
            return archive.load(store, cached, tag=ref)[0].image
        except Exception:
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt below
    image = _build_into(store, recipe, ref)
    cached.parent.mkdir(parents=True, exist_ok=True)
    for old in cached.parent.glob(f"{recipe.name}-*.oci.tar"):
        if old != cached:
            old.unlink(missing_ok=True)
    archive.save(store, [ref], cached)
    return image


def _build_into(store: Store, recipe: Recipe, ref: str) -> Image:
    with tempfile.TemporaryDirectory(prefix=f"sk-build-{recipe.name}-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        recipe.make_rootfs(rootfs)
        with store.writing():
            layer_tmp = Path(tmp) / "layer.tar.gz"
            with open(layer_tmp, "wb") as out:
                layer = write_layer(rootfs, out, compression="gzip", epoch=EPOCH)
            with open(layer_tmp, "rb") as fh:
                store.ingest(fh, expected_digest=layer.digest, expected_size=layer.size)
            plat = media.host_platform()
            config = {
                "created": CREATED,
                "architecture": plat["architecture"],
                "os": plat["os"],
                "config": {"Env": [PATH_ENV], "Cmd": list(recipe.cmd), "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                "history": [
                    {
                        "created": CREATED,
                        "created_by": f"sandbox-kernel image build {recipe.name}",
                        "comment": f"recipe {recipe.key()}",
                    }
                ],
            }
            if "variant" in plat:
                config["variant"] = plat["variant"]
            store.put_image(config, [layer.descriptor()], ref)
    return store.resolve(ref)
