"""The compiled command process of a warm container (sk_exec.c), and the plan it reads.

A warm container's command process waits in the container for its job, then
drops privileges and execs. Done by a fork of PID 1 (a Python process) that
takes about 2 ms on this kind of machine: a millisecond of Python for the
privilege drop, and most of another for execve to unmap a copy of a Python
process. ``sk-exec``, spawned by PID 1 instead (posix_spawn), is a 20 KB
program that does the same steps in the same order in microseconds
(the code between fork and exec is a fixed syscall sequence, with no Python in it).

It is compiled from the source shipped in the package, once, with the
system's C compiler, into the cache directory (``$SANDBOX_KERNEL_CACHE/bin``, default
``~/.cache/sandbox-kernel/bin``) that only its owner can write
(it runs as root); the file name carries a hash of the source and flags, so
a changed source builds a new helper. Without a compiler the runtime uses
the Python path (process._warm_command), which does the same with the same
result, only slower. ``SANDBOX_KERNEL_EXEC_HELPER=0`` forces that path.

Nobody else can swap it: the file, its directory and every directory above
them must belong to root or to us and be writable by nobody else (a sticky
``/tmp`` only above something of ours), or it is not used. What passes is
copied once per process into a sealed memfd (no writes, no resizing, ever),
and that copy is what runs (``/proc/self/fd/N``): the file can change on disk
afterwards, the helper that runs cannot, and the container never gets a
handle on a host file (CVE-2019-5736; runc does the same with itself).

    python -m sandbox_kernel.runtime.exec_helper   # build it now (scripts/setup.sh does), print its path
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import stat
import struct
import sys
from pathlib import Path

from . import fsutil
from .errors import SandboxError

SOURCE = Path(__file__).with_name("sk_exec.c")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2")
ENV_SWITCH = "SANDBOX_KERNEL_EXEC_HELPER"
MAGIC = b"SKX1"
HEADER = struct.Struct("=4s7IQ")
RLIMIT = struct.Struct("=IIQQ")
RLIM_INFINITY = 0xFFFFFFFFFFFFFFFF


class HelperError(SandboxError):
    """The helper could not be built or is not safe to run."""


def cache_dir() -> Path:
    return fsutil.cache_dir() / "bin"


def _name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join(CFLAGS).encode()).hexdigest()
    return f"sk-exec-{digest[:16]}"


def _check_owned(path: Path) -> None:
    """Refuse a file or directory that someone else could have changed: root would run it."""
    st = path.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise HelperError(f"{path} is writable by another user or not ours; not running it")
    why = fsutil.unsafe_ancestor(path)
    if why is not None:
        raise HelperError(f"{path} could be replaced by another user ({why}); not running it")


def build(directory: Path | None = None) -> Path:
    """The helper's path, compiled first if it is not in ``directory`` (default: :func:`cache_dir`)."""
    directory = directory or cache_dir()
    target = directory / _name()
    if target.exists():
        _check_owned(directory)
        _check_owned(target)
        return target
    import shutil  # only for a build: every container start imports this module
    import subprocess
    import tempfile

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HelperError("no C compiler (cc) to build the exec helper; install gcc")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HelperError(f"cannot make {directory}: {exc.strerror}") from None
    _check_owned(directory)
    fd, tmp = tempfile.mkstemp(prefix=".build-", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                timeout=120, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["no output"])[0]
            raise HelperError(f"building the exec helper failed: {first}")
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)  # atomic: two builders at once both end with a whole file
    except (OSError, subprocess.SubprocessError) as exc:
        raise HelperError(f"building the exec helper failed: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


MFD_EXEC = 0x10  # (Linux 6.3: memfds are executable only when asked; older kernels refuse the flag)
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_sealed: dict[str, tuple[int, int, int]] = {}  # the memfd of this process: fd, st_dev, st_ino


def sealed_copy(source: Path) -> int:
    """A close-on-exec memfd holding ``source``'s bytes, sealed against any change."""
    with open(source, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_CLOEXEC)) as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            raise HelperError(f"{source} is writable by another user or not ours; not running it")
        data = fh.read()
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create("sk-exec", flags | MFD_EXEC)
    except OSError:
        fd = os.memfd_create("sk-exec", flags)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o500)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        # Above the fds the helper is given (3 and 4: process._spawn_helper moves them there before the exec)
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
    finally:
        os.close(fd)
    return high


def path() -> str | None:
    """What to spawn (a sealed copy, ``/proc/self/fd/N``), or None to use the Python path (no compiler, a
    helper someone else could have changed, or switched off).

    Made once per process; a forked child that closed the copy's fd (a
    detached monitor closes everything) gets a new one.
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    known = _sealed.get("helper")
    if known is not None:
        fd, dev, ino = known
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (dev, ino):
                return f"/proc/self/fd/{fd}"
        except OSError:
            pass
    if _unusable():
        return None
    try:
        fd = sealed_copy(build())
    except (HelperError, OSError):
        return None
    st = os.fstat(fd)
    _sealed["helper"] = (fd, st.st_dev, st.st_ino)
    return f"/proc/self/fd/{fd}"


@functools.cache
def _unusable() -> bool:
    """No helper to be had in this process (asked once: building it again on every start would be slow)."""
    try:
        build()
    except (HelperError, OSError):
        return True
    return False


def sealed_state() -> dict[str, tuple[int, int, int]]:
    """This process's sealed copies, for a process it execs with their fds (adopt_sealed)."""
    return dict(_sealed)


def adopt_sealed(state: dict[str, tuple[int, int, int]]) -> None:
    """Take over the sealed copies the process that exec'ed us made (their fds came with the exec), so that
    nothing is checked again here: a fork server in a user's namespace sees every host directory of
    another owner as nobody's, and could not tell a safe path from an unsafe one."""
    for name, (fd, dev, ino) in state.items():
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.set_inheritable(fd, False)
            _sealed[name] = (fd, dev, ino)


def kept_fds() -> list[int]:
    """The fds a forked child that will spawn the helper keeps (so that it need not copy it again)."""
    return [known[0] for known in _sealed.values()]


def encode(argv: tuple[str, ...], env: tuple[tuple[str, str], ...], cwd: str, uid: int, gid: int,
           groups: tuple[int, ...], caps: int, rlimits: tuple[tuple[int, int, int], ...], seccomp: bytes) -> bytes:
    """The plan as sk_exec.c reads it (see the layout at the top of that file)."""
    if not argv:
        raise ValueError("empty command")
    if not seccomp or len(seccomp) % 8:
        raise ValueError("the seccomp filter is missing or malformed")
    strings = [os.fsencode(text) for text in (cwd, *argv, *(f"{key}={value}" for key, value in env))]
    if any(b"\0" in text for text in strings):
        raise ValueError("embedded null byte")
    parts = [HEADER.pack(MAGIC, uid, gid, len(groups), len(rlimits), len(argv), len(env), len(seccomp), caps)]
    parts.append(struct.pack(f"={len(groups)}I", *groups))
    for which, soft, hard in rlimits:
        parts.append(RLIMIT.pack(which, 0, soft & RLIM_INFINITY, hard & RLIM_INFINITY))
    parts.append(seccomp)
    parts.extend(text + b"\0" for text in strings)
    return b"".join(parts)


def main() -> int:
    try:
        print(build())
    except HelperError as exc:
        print(f"sandbox-kernel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
