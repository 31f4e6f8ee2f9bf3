"""The image corpus of test_image_corpus.py: images that other tools make on this machine, and the two views
of an image's files that the test compares.

The tools: podman (``podman build`` with RUN, COPY and USER; ``podman import``; ``podman save`` in each
format), mmdebstrap in root mode (a Debian root file system as one tar, /dev's nodes included), umoci
(``repack`` of an unpacked bundle, ``raw add-layer`` of a tar as it is) and GNU tar (``--sparse``, in its
gnu and pax formats). podman runs with a storage of its own under the test's temp dir, never the machine's,
and with no network.

A view is every path of a container's root file system with what the test compares of it (``Entry``) and
its hard-link groups: podman's from ``podman mount`` of a container it created from the image, ours from
``/proc/PID/root`` of one of our containers running it, owners shifted back by the container's id map.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

DEBIAN_SUITE = "bookworm"
# Essential: yes packages alone (about 20 s): a root file system with /dev's nodes, hard links
# (perl5.36.0, perlthanks) and setuid files (su, newgrp, unix_chkpwd).
MMDEBSTRAP = ("mmdebstrap", "--mode=root", "--variant=essential", "--format=tar")
COMMAND = ["sh", "-c", "echo ok; id -un"]  # every image's own command: it runs, as the image's user

# RUN as root (an account, owners, modes, symlinks and a symlink's owner, hard links, a fifo, a setuid file), then
# RUN that deletes a file and a directory of the layer before (whiteouts), one name of a hard-linked pair,
# empties a directory and fills it again (an opaque whiteout with podman's overlay driver), replaces a file by a
# directory, a directory by a symlink, a symlink by a file, and hard-links a file of the base layer (the layer
# holds both names), then COPY of a context with names and files tar finds awkward, then USER and a RUN as that user.
CONTAINERFILE = """\
FROM localhost/busybox:latest
RUN echo 'alice:x:1000:2000::/home/alice:/bin/sh' >> /etc/passwd && echo 'staff2:x:2000:' >> /etc/group \\
 && mkdir -p /home/alice /data/old/sub /data/keep /opaque /srv/shared /replace/dir-to-link \\
 && chown 1000:2000 /home/alice \\
 && echo one > /opaque/one && echo two > /opaque/two && echo old > /data/old/sub/f && echo gone > /gone \\
 && echo hi > /data/h1 && ln /data/h1 /data/h2 && chown -R 1000:2000 /data && chmod 0750 /data/keep \\
 && echo pair > /data/h3 && ln /data/h3 /data/h4 \\
 && ln -s /data/keep /link && ln -s ../nowhere /data/dangling && chown -h 1000:2000 /data/dangling \\
 && echo f > /replace/file-to-dir && echo x > /replace/dir-to-link/x && ln -s /bin /replace/link-to-file \\
 && echo s > /srv/suid && chmod 4755 /srv/suid && chmod 2775 /srv/shared && chmod 1777 /srv && mkfifo /srv/fifo \\
 && mkdir /srv/readonly && echo r > /srv/readonly/r && chmod 0555 /srv/readonly && touch /srv/none && chmod 0 /srv/none
RUN rm /gone && rm -r /data/old && rm -rf /opaque && mkdir /opaque && echo three > /opaque/three \\
 && rm /data/h3 && ln /bin/busybox /bin/bb-hard \\
 && rm /replace/file-to-dir && mkdir /replace/file-to-dir && echo in > /replace/file-to-dir/in \\
 && rm -r /replace/dir-to-link && ln -s /tmp /replace/dir-to-link \\
 && rm /replace/link-to-file && echo now a file > /replace/link-to-file
COPY --chown=1000:2000 ctx/ /ctx/
USER alice
RUN mkdir /home/alice/work && echo mine > /home/alice/work/f
CMD ["sh", "-c", "echo ok; id -un"]
"""

LONG_NAME = "n" * 150  # over the 100 bytes of a tar header's name field
LONG_PATH = "/".join(["d" * 60] * 5)  # over 255 bytes, the most a ustar prefix and name hold
LONG_TARGET = "../" + "t" * 120  # a symlink target over the 100 bytes of the linkname field
SPARSE_SIZE, SPARSE_AT, SPARSE_DATA = 8 << 20, 4 << 20, b"middle"


def run(*argv: str | os.PathLike[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """A tool's output; a failure says which command and what it printed."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


# -- the views -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What is compared of one path: type, permission bits, owner, and the content of its kind."""

    kind: str  # d (directory), f (regular), l (symlink), p (fifo), c, b (devices), s (socket)
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    size: int | None = None  # regular files
    sha256: str | None = None  # regular files
    target: str | None = None  # symlinks
    mtime: int | None = None  # seconds, of everything but directories (their children change theirs)
    xattrs: tuple[tuple[str, bytes], ...] = ()  # user.* only: the rest is the runtime's business


@dataclass
class View:
    """A root file system: its entries by absolute path (without "/" itself) and its hard-link groups."""

    entries: dict[str, Entry] = field(default_factory=dict)
    links: set[frozenset[str]] = field(default_factory=set)
    allocated: dict[str, int] = field(default_factory=dict)  # bytes on disk of regular files (sparseness)


_KINDS = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFIFO: "p", stat.S_IFCHR: "c",
          stat.S_IFBLK: "b", stat.S_IFSOCK: "s"}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _user_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names
                        if n.startswith("user.") and not n.startswith("user.overlay.")))


def walk(root: Path, *, skip: frozenset[str] = frozenset(), ids: tuple[int, int] = (0, 0)) -> View:
    """Every path below ``root`` but those in ``skip`` (and below them); owners less ``ids`` (uid, gid)."""
    view = View()
    inodes: dict[tuple[int, int], list[str]] = {}
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(str(root) + rel_dir) as it:
            for item in it:
                rel = f"{rel_dir}/{item.name}"
                if rel in skip:
                    continue
                st = item.stat(follow_symlinks=False)
                kind = _KINDS[stat.S_IFMT(st.st_mode)]
                entry = Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid - ids[0], st.st_gid - ids[1],
                              mtime=None if kind == "d" else int(st.st_mtime), xattrs=_user_xattrs(item.path))
                if kind == "d":
                    pending.append(rel)
                elif kind == "f":
                    entry = replace(entry, size=st.st_size, sha256=_sha256(item.path))
                    view.allocated[rel] = st.st_blocks * 512
                    if st.st_nlink > 1:
                        inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
                elif kind == "l":
                    entry = replace(entry, target=os.readlink(item.path))
                view.entries[rel] = entry
    view.links = {frozenset(paths) for paths in inodes.values() if len(paths) > 1}
    return view


@dataclass
class Comparison:
    compared: int = 0
    setuid_stripped: list[str] = field(default_factory=list)  # our default for images (extract.py)
    devices_skipped: list[str] = field(default_factory=list)  # never made (extract.py)
    differences: list[str] = field(default_factory=list)


def compare(ours: View, podman: View, skip: frozenset[str]) -> Comparison:
    """Ours against podman's, path by path and hard-link group by group, less the paths in ``skip`` (the
    runtime's own mounts: /dev, /proc, /etc/hosts, ...) and what lies below them."""

    def kept(path: str) -> bool:
        return not any(path == s or path.startswith(s + "/") for s in skip)

    result = Comparison()
    theirs = {p: e for p, e in podman.entries.items() if kept(p)}
    mine = {p: e for p, e in ours.entries.items() if kept(p)}
    for path in sorted(theirs.keys() | mine.keys()):
        want, got = theirs.get(path), mine.get(path)
        if want is not None and got is None and want.kind in "cb":
            result.devices_skipped.append(path)
        elif want is None or got is None:
            result.differences.append(f"{path}: podman has {want}, we have {got}")
        elif want == got:
            result.compared += 1
        elif want.kind != "d" and want.mode & 0o6000 and replace(want, mode=want.mode & ~0o6000) == got:
            result.setuid_stripped.append(path)
            result.compared += 1
        else:
            result.differences.append(f"{path}: podman has {want}, we have {got}")
    groups = {frozenset(filter(kept, g)) for g in podman.links} - {frozenset()}
    mine_groups = {frozenset(filter(kept, g)) for g in ours.links} - {frozenset()}
    for group in sorted(groups ^ mine_groups, key=sorted):
        who = "podman" if group in groups else "we"
        result.differences.append(f"hard links {sorted(group)}: only {who} link them")
    return result


# -- podman ----------------------------------------------------------------------------------------------------


NETAVARK_RUN = Path("/run/containers")  # podman 4.3 makes its networks/ there whatever it is told


class Podman:
    """podman with a storage of its own under ``home`` (never the machine's), no daemon, no network.

    The overlay driver, as podman's default as root: its layers are upper directories, so a directory
    emptied and filled again is an opaque whiteout (vfs would write one whiteout per name)."""

    def __init__(self, home: Path):
        self.home = home
        self.made_run_dir = not NETAVARK_RUN.exists()
        home.mkdir(parents=True, exist_ok=True)
        self.base = ["podman", "--root", str(home / "storage"), "--runroot", str(home / "run"),
                     "--tmpdir", str(home / "tmp"), "--network-config-dir", str(home / "networks"),
                     "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]

    def __call__(self, *args: str | os.PathLike[str], cwd: Path | None = None) -> str:
        return run(*self.base, *args, cwd=cwd)

    def view(self, image: str) -> View:
        """The image's files as a container of podman's has them before it starts."""
        cid = self("create", "--network", "none", image, "/bin/sh").strip()
        try:
            merged = Path(self("mount", cid).strip())
            try:
                return walk(merged)
            finally:
                self("unmount", cid)
        finally:
            self("rm", "--force", cid)

    def close(self) -> None:
        """Containers, images (which unmounts their layers), then the directories."""
        for args in (("rm", "--all", "--force"), ("rmi", "--all", "--force")):
            subprocess.run([*self.base, *args], capture_output=True, check=False)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            target = line.split()[4]
            if target.startswith(str(self.home) + "/"):  # (its overlay driver's own bind mount; a failed podman's)
                subprocess.run(["umount", "--lazy", target], check=False)
        shutil.rmtree(self.home, ignore_errors=True)
        if self.made_run_dir:  # (empty unless some other podman uses it meanwhile: then rmdir fails, and it stays)
            for empty in (NETAVARK_RUN / "networks", NETAVARK_RUN):
                with contextlib.suppress(OSError):
                    empty.rmdir()


# -- the corpus ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """One image of the corpus: an archive (or layout) of ours to load, and the same image for the tool whose
    view is the reference."""

    name: str  # what the test calls it: the tool and the format
    path: Path
    ref: str  # the reference tool's name for it
    user: str  # who its command runs as
    reference: str = "podman"  # whose view ours must match: podman's, or umoci's where podman refuses the image


ODD_NAMES = ("name with spaces", "caf\u00e9-\u00fcn\u00efcode", "-dash", "new\nline", "back\\slash")


def _make_context(ctx: Path) -> None:
    """COPY's source: a long name, a long path, a sparse file, user xattrs (a file's, a directory's), a symlink,
    hard links, names with spaces, a newline, a backslash, letters that are not ASCII."""
    ctx.mkdir(parents=True)
    for name in ODD_NAMES:
        (ctx / name).write_text(name + "\n")
    (ctx / "hard-a").write_text("hard-linked\n")
    os.link(ctx / "hard-a", ctx / "hard-b")
    (ctx / "xattr-dir").mkdir()
    os.setxattr(ctx / "xattr-dir", "user.corpus", b"a directory's")
    (ctx / LONG_NAME).write_text("a long name\n")
    (ctx / LONG_PATH).mkdir(parents=True)
    (ctx / LONG_PATH / "deep.txt").write_text("a long path\n")
    _sparse(ctx / "sparse")
    (ctx / "xattr.txt").write_text("with a user xattr\n")
    os.setxattr(ctx / "xattr.txt", "user.corpus", b"podman")
    os.symlink("xattr.txt", ctx / "link-to-xattr")


def _sparse(path: Path) -> None:
    with open(path, "wb") as fh:
        fh.seek(SPARSE_AT)
        fh.write(SPARSE_DATA)
        fh.truncate(SPARSE_SIZE)


def podman_build(podman: Podman, busybox: Path, work: Path) -> list[Image]:
    """An image podman builds FROM our busybox, saved in each format podman writes that we load."""
    podman("load", "--input", busybox)
    _make_context(work / "ctx")
    (work / "Containerfile").write_text(CONTAINERFILE)
    ref = "localhost/corpus-build:1"
    podman("build", "--network", "none", "--pull=never", "--tag", ref, "--file", work / "Containerfile", work)
    return _saved(podman, ref, "podman-build", work, "alice", ("oci-archive", "docker-archive", "oci-dir"))


def _saved(podman: Podman, ref: str, name: str, work: Path, user: str, formats: tuple[str, ...]) -> list[Image]:
    images = []
    for fmt in formats:
        out = work / f"{name}.{fmt}"
        podman("save", "--format", fmt, "--output", out, ref)
        images.append(Image(f"{name}/{fmt}", out, ref, user))
    return images


def debian_tarball(cache: Path, sources: str | None) -> Path:
    """mmdebstrap's root file system as a tar, cached under a key of its recipe (it needs the mirror)."""
    version = run("dpkg-query", "-W", "-f=${Version}", "mmdebstrap")
    recipe = "\n".join([*MMDEBSTRAP, DEBIAN_SUITE, version, Path(sources).read_text() if sources else ""])
    out = cache / f"corpus-debian-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.tar"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        run(*MMDEBSTRAP, DEBIAN_SUITE, tmp, *([sources] if sources else []),
            env=dict(os.environ, SOURCE_DATE_EPOCH="0"))
        for old in cache.glob("corpus-debian-*.tar"):
            old.unlink()
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def podman_import(podman: Podman, tarball: Path, work: Path) -> list[Image]:
    """The root file system imported by podman (which unpacks it, /dev's nodes made) and saved again."""
    ref = "localhost/corpus-import:1"
    podman("import", "--change", f"CMD {json.dumps(COMMAND)}", tarball, ref)
    return _saved(podman, ref, "podman-import", work, "root", ("oci-archive", "docker-archive"))


def _umoci_finish(layout: Path, tag: str) -> None:
    """The image's command, then only ``tag`` left in the layout (our load takes one image by name)."""
    run("umoci", "config", "--image", f"{layout}:{tag}", *(a for word in COMMAND for a in ("--config.cmd", word)))
    for other in run("umoci", "ls", "--layout", layout).split():
        if other != tag:
            run("umoci", "rm", "--image", f"{layout}:{other}")
    run("umoci", "gc", "--layout", layout)


def umoci_debian(tarball: Path, work: Path) -> Image:
    """The root file system's tar as one layer, byte for byte (``umoci raw add-layer``): mmdebstrap's GNU tar
    entries, /dev's nodes and all."""
    layout = work / "umoci-debian"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:debian")
    run("umoci", "raw", "add-layer", "--image", f"{layout}:debian", tarball)
    _umoci_finish(layout, "debian")
    return Image("mmdebstrap/umoci-layout", layout, f"oci:{layout}:debian", "root")


def _gnu_tar_layers(work: Path) -> list[Path]:
    """Two layers as GNU tar writes them, each with a long name, a long symlink target, a long path and a hard
    link: ``--format=gnu`` (././@LongLink) and ``--format=pax`` (pax headers; a sparse file, format 1.0; a user
    xattr, an owner, a name that is not ASCII, mtimes with nanoseconds). (Not an old GNU sparse entry, type
    S: podman refuses it, "unhandled tar header type 83"; test_image_corpus.py extracts it alone.)"""
    layers = []
    for fmt, options in (("gnu", ()), ("pax", ("--sparse-version=1.0", "--xattrs", "--xattrs-include=user.*"))):
        stage = work / f"stage-{fmt}"
        top = stage / f"{fmt}tar"
        (top / LONG_PATH).mkdir(parents=True)
        (top / LONG_PATH / "deep.txt").write_text(f"a long path, {fmt}\n")
        (top / LONG_NAME).write_text(f"a long name, {fmt}\n")
        os.link(top / LONG_NAME, top / ("hard-" + LONG_NAME[:120]))
        os.symlink(LONG_TARGET, top / "long-target")
        if fmt == "pax":
            _sparse(top / "sparse")
            (top / "xattr.txt").write_text("with a user xattr\n")
            os.setxattr(top / "xattr.txt", "user.corpus", b"gnu tar")
            (top / "caf\u00e9-\u00fcn\u00efcode").write_text("utf-8\n")
            os.chown(top / "xattr.txt", 1000, 2000)
        layer = work / f"{fmt}.tar"
        run("tar", f"--format={fmt}", "--sparse", "--numeric-owner", *options, "-C", stage, "-cf", layer, ".")
        layers.append(layer)
    return layers


def umoci_view(ref: str, bundle: Path) -> View:
    """The image's files as ``umoci unpack`` makes them (as root: owners kept)."""
    run("umoci", "unpack", "--image", ref, bundle)
    try:
        return walk(bundle / "rootfs")
    finally:
        shutil.rmtree(bundle)


def umoci_dir_to_symlink(busybox: Path, work: Path) -> Image:
    """Our busybox, then a layer umoci repacks after /usr/sbin became a symlink to a directory with its files:
    umoci writes the symlink, then a whiteout below it for each name the directory had. podman refuses the
    layer ("file exists": it follows the symlink); by the OCI image spec the whiteouts are moot (they would
    touch their own layer), and umoci's own unpack, the reference here, keeps every file."""
    layout, bundle = work / "umoci-moved", work / "bundle-moved"
    layout.mkdir()
    run("tar", "-xf", busybox, "-C", layout)
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    usr = bundle / "rootfs" / "usr"
    (usr / "sbin").rename(usr / "sbin-moved")
    os.symlink("sbin-moved", usr / "sbin")
    run("umoci", "repack", "--image", f"{layout}:moved", bundle)
    _umoci_finish(layout, "moved")
    return Image("umoci-dir-to-symlink/umoci-layout", layout, f"{layout}:moved", "root", reference="umoci")


def umoci_image(busybox: Path, work: Path) -> Image:
    """Our busybox, then two layers umoci repacks from a bundle (additions; then deletions, an emptied
    directory, a file replaced by a directory and a new hard link to a file of the layer before), then GNU
    tar's two layers."""
    layout, bundle = work / "umoci", work / "bundle"
    layout.mkdir()
    run("tar", "-xf", busybox, "-C", layout)  # our archive is an OCI layout in a tar
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    rootfs = bundle / "rootfs"
    data = rootfs / "data"
    for d in ("emptied", "dir-gone/sub"):
        (data / d).mkdir(parents=True)
    for name in ("emptied/a", "emptied/b", "gone", "dir-gone/sub/f", "file-to-dir"):
        (data / name).write_text(name + "\n")
    (data / "h1").write_text("linked\n")
    os.link(data / "h1", data / "h2")
    os.symlink("h1", data / "sym")
    _sparse(data / "sparse")
    (data / "xattr.txt").write_text("with a user xattr\n")
    os.setxattr(data / "xattr.txt", "user.corpus", b"umoci")
    (data / LONG_NAME).write_text("a long name\n")
    (data / LONG_PATH).mkdir(parents=True)
    (data / LONG_PATH / "deep.txt").write_text("a long path\n")
    for path in (data / "emptied", data / "emptied" / "a"):
        os.chown(path, 1000, 2000)
    os.chmod(data / "emptied", 0o700)
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:add", bundle)
    for gone in (data / "gone", rootfs / "linuxrc"):
        gone.unlink()
    shutil.rmtree(data / "dir-gone")
    for child in (data / "emptied").iterdir():
        child.unlink()
    for child in (rootfs / "sbin").iterdir():  # a directory of the base layer emptied: a whiteout per name
        child.unlink()
    (data / "file-to-dir").unlink()  # a file replaced by a directory
    (data / "file-to-dir").mkdir()
    (data / "file-to-dir" / "in").write_text("in\n")
    (data / "emptied" / "c").write_text("refilled\n")
    os.link(data / "h1", data / "h3")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:delete", bundle)
    for layer in _gnu_tar_layers(work):
        run("umoci", "raw", "add-layer", "--image", f"{layout}:delete", layer)
    _umoci_finish(layout, "delete")
    return Image("umoci+gnu-tar/umoci-layout", layout, f"oci:{layout}:delete", "root")
