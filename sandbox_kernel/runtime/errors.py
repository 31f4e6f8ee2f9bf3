"""One exception tree for the whole runtime.

Frontends (CLI, magics, server) catch :class:`SandboxError` and show its
message as one line; anything else is a bug and may show a traceback.

    SandboxError                     every error the runtime raises on purpose
    ├── UsageError                   bad arguments from a caller (CLI exit 2)
    ├── ReferenceFormatError         an image reference or digest that does not parse
    ├── ImageError                   image content and metadata
    │   ├── ImageNotFound            no such image or tag in the store
    │   ├── ImageInUse               removing an image that something still needs
    │   ├── BlobError                missing blob, digest or size mismatch, bad JSON
    │   ├── ArchiveError             an OCI layout / oci-archive / docker-archive is unusable
    │   ├── LayerError               a layer that is unsafe or corrupt (names entry and rule)
    │   └── RegistryError            talking to a registry: unreachable, refused, bad answer
    │       └── AuthError            no or wrong credentials, or not allowed
    ├── StoreError                   the on-disk store: locks, full disk, permissions
    ├── BuildError                   building a base image (missing tool, failed recipe)
    └── ContainerError               container lifecycle
        ├── ContainerNotFound        no container with that name or id
        ├── ExecError                the command could not be executed (CLI exit 126/127, as docker)
        ├── ExecCancelled            an exec whose caller went away: its command was ended
        ├── CgroupError              creating, limiting, killing or removing a cgroup
        └── UserNamespaceError       no usable id range for containers' user namespaces

Every message is meant to be read by a person in one line: it says what was
being done, with which object, and what went wrong.

Each class says what it is to every frontend, here and nowhere else: the CLI's
exit status (``exit_code``), the REST API's HTTP status (``http_status``), and,
back in a remote client, :func:`from_reply` turns a reply into the same class.
(The magics show any of them as IPython's one-line UsageError.)
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every error the runtime raises on purpose."""

    exit_code = 1
    http_status = 409  # the container or image is in a state that forbids it (running, stopped, ...)


class UsageError(SandboxError):
    """The caller asked for something that does not make sense."""

    exit_code = 2
    http_status = 400


class ReferenceFormatError(SandboxError, ValueError):
    """An image reference or digest is malformed."""

    http_status = 400


class ImageError(SandboxError):
    """Something is wrong with an image's content or metadata."""


class ImageNotFound(ImageError, LookupError):
    """No image with that reference or id in the store."""

    http_status = 404


class ImageInUse(ImageError):
    """The image is still needed (by a tag or a container)."""


class BlobError(ImageError):
    """A blob is missing, has the wrong digest or size, or does not parse."""


class ArchiveError(ImageError):
    """An image archive or layout directory cannot be read."""


class LayerError(ImageError):
    """A layer tar is unsafe or corrupt.

    ``entry`` names the tar entry and ``rule`` the check that refused it, so
    that the one-line message says both.
    """

    def __init__(self, message: str, *, entry: str | None = None, rule: str | None = None):
        self.entry = entry
        self.rule = rule
        if entry is not None:
            message = f"layer entry {entry!r}: {message}"
        if rule is not None:
            message = f"{message} [{rule}]"
        super().__init__(message)


class RegistryError(ImageError):
    """A registry could not be reached, refused a request or answered something unusable."""

    http_status = 502  # the registry's fault, not the caller's or the server's


class AuthError(RegistryError):
    """A registry wants credentials we do not have, or refused the ones we gave."""


class StoreError(SandboxError):
    """The store on disk cannot be used (permissions, full disk, locks)."""


class BuildError(SandboxError):
    """A base image recipe could not be built."""


class ContainerError(SandboxError):
    """A container operation failed."""


class ContainerNotFound(ContainerError, LookupError):
    """No container with that name, id or id prefix."""

    http_status = 404


class ExecError(ContainerError):
    """The container started but its command could not be executed."""

    def __init__(self, message: str, exit_code: int = 127):
        super().__init__(message)
        self.exit_code = exit_code


class CgroupError(ContainerError):
    """A cgroup could not be created, limited, read, frozen, killed or removed."""


class UserNamespaceError(ContainerError):
    """Containers' ids cannot be mapped: no id range, or one that overlaps another's."""


class ExecCancelled(ContainerError):
    """Whoever waited for an exec went away (a client that disconnected): its command was ended."""


def from_reply(status: int, kind: str, message: str) -> SandboxError | None:
    """The error a REST reply stands for: the class it names (``kind``, one of this tree), else the one its
    status means (404 not found, 502 registry, other 4xx usage); None when neither says (the caller's to word)."""
    cls = globals().get(kind) if kind else None
    if isinstance(cls, type) and issubclass(cls, SandboxError):
        try:
            return cls(message)
        except TypeError:  # (one that wants more than a message)
            pass
    if status == 404:
        return ContainerNotFound(message)
    if status == 502:
        return RegistryError(message)
    if 400 <= status < 500:
        return UsageError(message)
    return None


def from_os_error(exc: OSError) -> SandboxError | None:
    """The sentence for an OSError of the process itself, not of one file (out of file descriptors), else None."""
    import errno

    if exc.errno not in (errno.EMFILE, errno.ENFILE):
        return None
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    where = "this process has" if exc.errno == errno.EMFILE else "the system has"
    return ContainerError(f"{where} too many files open to start one more container ({soft} allowed to this "
                          "process, `ulimit -n`; each container of a notebook holds about 6): remove containers "
                          "that are no longer needed, or raise the limit")
