"""Images other tools make load, run, and hold the same files for us as for podman.

The corpus (tests/corpus.py) is made on this machine: podman builds an image FROM our busybox with RUN, COPY
and USER (symlinks, hard links, a fifo, a setuid file, deleted files and directories, a directory emptied and
filled again, files replaced by directories and back, long and odd names, a sparse file, user xattrs) and
saves it as oci-archive, docker-archive and oci-dir; mmdebstrap in root mode makes a Debian root file system
(/dev's nodes, hard links, setuid files), which podman imports and saves, and umoci adds byte for byte as a
layer; umoci repacks a bundle twice (its own whiteouts and pax headers) and adds two layers GNU tar wrote
(gnu and pax formats, a sparse file).

For each image in each format: it loads into a store of its own, its command runs (as the image's user), and
every path of a running container's root file system matches the same path in a container podman made of
the same image: type, permission bits, owner, size, sha256, symlink target, mtime, user xattrs, and hard-link
groups. The runtime's own mounts (/dev, /proc, /sys, /etc/hosts, ...) are not the image's and are left out.
One umoci image podman refuses (a directory that became a symlink: umoci writes whiteouts below the
symlink); there umoci's own unpack is the reference. Two documented differences are counted, not failed:
setuid and setgid bits of files are removed (images are not trusted), and device nodes are never made.

Two fixes came from the corpus (tested alone at the end): sparse files, which GNU tar writes and the
extractor refused, are unpacked sparse; a whiteout below a symlink of its own layer is moot, not followed.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import need_tool
from corpus import (
    LONG_NAME,
    LONG_PATH,
    ODD_NAMES,
    SPARSE_SIZE,
    Image,
    Podman,
    View,
    compare,
    debian_tarball,
    podman_build,
    podman_import,
    umoci_debian,
    umoci_dir_to_symlink,
    umoci_image,
    umoci_view,
    walk,
)
from leftovers import assert_nothing_left, cgroups

from sandbox_kernel.runtime import Containers, ContainerSpec, LayerError, Store, extract_layer, load, save
from sandbox_kernel.runtime.fsutil import cache_dir
from sandbox_kernel.runtime.image.builder import _host_sources
from sandbox_kernel.runtime.image.extract import apply_layer

pytestmark = pytest.mark.root

NAMES = ("podman-build/oci-archive", "podman-build/docker-archive", "podman-build/oci-dir",
         "podman-import/oci-archive", "podman-import/docker-archive", "mmdebstrap/umoci-layout",
         "umoci+gnu-tar/umoci-layout", "umoci-dir-to-symlink/umoci-layout")


@dataclass(frozen=True)
class Expect:
    """What must be so in our view of an image: proof that the corpus exercised what it was made for."""

    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()  # removed by a later layer (whiteouts)
    links: tuple[frozenset[str], ...] = ()  # hard-link groups
    xattrs: tuple[str, ...] = ()  # files with user.corpus
    sparse: tuple[str, ...] = ()  # files that stay sparse
    stripped: tuple[str, ...] = ()  # setuid or setgid files


GNU_TAR = tuple(f"/{fmt}tar/{name}" for fmt in ("gnu", "pax") for name in (LONG_NAME, f"{LONG_PATH}/deep.txt"))
EXPECT = {
    "podman-build": Expect(
        present=("/opaque/three", f"/ctx/{LONG_NAME}", f"/ctx/{LONG_PATH}/deep.txt", "/srv/fifo", "/link",
                 "/data/dangling", "/data/h4", "/home/alice/work/f", "/replace/file-to-dir/in",
                 *(f"/ctx/{name}" for name in ODD_NAMES)),
        absent=("/gone", "/data/old", "/opaque/one", "/opaque/two", "/data/h3", "/replace/dir-to-link/x"),
        links=(frozenset({"/data/h1", "/data/h2"}), frozenset({"/bin/busybox", "/bin/bb-hard"}),
               frozenset({"/ctx/hard-a", "/ctx/hard-b"})),
        xattrs=("/ctx/xattr.txt", "/ctx/xattr-dir"), stripped=("/srv/suid",)),
    "podman-import": Expect(present=("/usr/bin/su",), links=(frozenset({"/usr/bin/perl", "/usr/bin/perl5.36.0"}),),
                            stripped=("/usr/bin/su", "/usr/sbin/unix_chkpwd")),
    "mmdebstrap": Expect(present=("/usr/bin/su",), links=(frozenset({"/usr/bin/perl", "/usr/bin/perl5.36.0"}),),
                         stripped=("/usr/bin/su", "/usr/sbin/unix_chkpwd")),
    "umoci+gnu-tar": Expect(
        present=("/data/emptied/c", "/data/sym", "/data/file-to-dir/in",
                 f"/data/{LONG_NAME}", f"/data/{LONG_PATH}/deep.txt",
                 "/gnutar/long-target", "/paxtar/caf\u00e9-\u00fcn\u00efcode", *GNU_TAR),
        absent=("/data/gone", "/data/dir-gone", "/data/emptied/a", "/data/emptied/b", "/linuxrc", "/sbin/init"),
        links=(frozenset({"/data/h1", "/data/h2", "/data/h3"}),
               *(frozenset({f"/{fmt}tar/{LONG_NAME}", f"/{fmt}tar/hard-{LONG_NAME[:120]}"}) for fmt in ("gnu", "pax"))),
        xattrs=("/data/xattr.txt", "/paxtar/xattr.txt"), sparse=("/paxtar/sparse",)),
    "umoci-dir-to-symlink": Expect(present=("/usr/sbin", "/usr/sbin-moved/chroot")),
}


class Corpus:
    """The images, and the reference view of each (made once)."""

    def __init__(self, podman: Podman, images: list[Image], work: Path):
        self.podman = podman
        self.images = {image.name: image for image in images}
        self.work = work
        self._views: dict[str, View] = {}

    def view(self, image: Image) -> View:
        if image.ref not in self._views:
            if image.reference == "umoci":
                self._views[image.ref] = umoci_view(image.ref, self.work / "umoci-view")
            elif image.ref.startswith("oci:"):  # a layout of umoci's: podman copies it into its storage first
                self._views[image.ref] = self.podman.view(self.podman("pull", "--quiet", image.ref).strip())
            else:
                self._views[image.ref] = self.podman.view(image.ref)
        return self._views[image.ref]


@pytest.fixture(scope="module")
def corpus(base_store, tmp_path_factory):
    for tool in ("podman", "umoci", "mmdebstrap", "tar"):
        need_tool(tool)
    work = tmp_path_factory.mktemp("corpus")
    busybox = work / "busybox.oci.tar"
    save(base_store, ["localhost/busybox:latest"], busybox)
    podman = Podman(work / "podman")
    try:
        tarball = debian_tarball(cache_dir(), _host_sources())
        images = [*podman_build(podman, busybox, work), *podman_import(podman, tarball, work),
                  umoci_debian(tarball, work), umoci_image(busybox, work), umoci_dir_to_symlink(busybox, work)]
        yield Corpus(podman, images, work)
    finally:
        podman.close()


def _mount_points(pid: int) -> frozenset[str]:
    """Where the runtime mounted something in the container (its view's paths): not the image's files."""
    points = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        point = line.split()[4]
        for code in ("\\040", "\\011", "\\012", "\\134"):  # the kernel's escapes of space, tab, newline, \
            point = point.replace(code, chr(int(code[1:], 8)))
        if point != "/":
            points.add(point)
    return frozenset(points)


def _first_id(path: str) -> int:
    """The host id of the container's id 0 (the line "0 BASE SIZE" of a uid_map or gid_map)."""
    inside, outside, _ = Path(path).read_text().split()[:3]
    assert inside == "0"
    return int(outside)


def our_view(store: Store, ref: str) -> tuple[View, frozenset[str]]:
    """The files of a running container of ours (from the host, through its root), and its mount points."""
    containers = Containers(store, warm_slots=False)
    cid = containers.run_detached(ContainerSpec(image=ref, command=("sleep", "600"), remove=True))
    try:
        pid = containers.get(cid).state.pid
        assert pid > 0
        skip = _mount_points(pid)
        ids = (_first_id(f"/proc/{pid}/uid_map"), _first_id(f"/proc/{pid}/gid_map"))
        return walk(Path(f"/proc/{pid}/root"), skip=skip, ids=ids), skip
    finally:
        containers.remove(cid, force=True)


def test_the_corpus_has_every_image(corpus):
    assert sorted(corpus.images) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_an_image_other_tools_made_loads_runs_and_matches_their_view(corpus, name, tmp_path):
    image = corpus.images[name]
    before = cgroups()
    store = Store(tmp_path / "store")
    ref = "localhost/corpus:" + name.replace("/", "-").replace("+", "-")
    load(store, image.path, tag=ref)

    chunks: list[bytes] = []
    result = Containers(store, warm_slots=False).run(ContainerSpec(image=ref, remove=True), stdin=None,
                                                     stdout=chunks.append, stderr=chunks.append)
    out = b"".join(chunks).decode()
    assert (result.exit_code, out) == (0, f"ok\n{image.user}\n")  # the image's own command, as its user

    ours, skip = our_view(store, ref)
    theirs = corpus.view(image)
    found = compare(ours, theirs, skip)
    devices = sum(entry.kind in "cb" for entry in theirs.entries.values())  # (in /dev: the runtime's at run time)
    print(f"{name}: {found.compared} paths compared with {image.reference}'s, {len(ours.links)} hard-link groups, "
          f"{len(found.setuid_stripped)} setuid/setgid bits removed, {devices} device nodes not made")
    assert found.differences == []

    expect = EXPECT[name.split("/")[0]]
    for path in expect.present:
        assert path in ours.entries, path
    for path in expect.absent:
        assert path not in ours.entries, path
    for group in expect.links:
        assert group in ours.links, sorted(group)
    for path in expect.xattrs:
        assert dict(ours.entries[path].xattrs).get("user.corpus"), path
    for path in expect.sparse:
        assert ours.entries[path].size == SPARSE_SIZE and ours.allocated[path] < SPARSE_SIZE // 2, path
    assert set(expect.stripped) <= set(found.setuid_stripped)
    assert_nothing_left(store.root, before)
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp_path) in line]


@pytest.mark.parametrize("fmt", ["gnu", "pax/0.0", "pax/0.1", "pax/1.0"])
def test_a_sparse_file_in_each_gnu_tar_format_unpacks_sparse(tmp_path, fmt):
    """GNU tar --sparse writes four formats (old GNU's type S; pax 0.0, 0.1, 1.0): each unpacks to the same
    bytes with its holes kept. (podman refuses the first, so the corpus cannot carry it.)"""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as fh:  # data, a hole, data, a hole at the end
        fh.write(b"head")
        fh.seek(3 << 20)
        fh.write(b"middle")
        fh.truncate(8 << 20)
    kind, _, version = fmt.partition("/")
    layer = tmp_path / "layer.tar"
    subprocess.run(["tar", f"--format={kind}", "--sparse", *([f"--sparse-version={version}"] if version else []),
                    "-C", src, "-cf", layer, "sparse"], check=True)
    with tarfile.open(layer) as tf:
        assert tf.getmember("sparse").sparse, "tar wrote it sparse"
    with open(layer, "rb") as fh:
        extract_layer(fh, tmp_path / "out")
    out = tmp_path / "out" / "sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert out.stat().st_blocks * 512 < 1 << 20


def test_a_sparse_region_outside_its_file_is_refused(tmp_path):
    info = tarfile.TarInfo("bad")
    info.size = 10  # the stored data: one region of 10 bytes at offset 100 of a 50-byte file
    info.pax_headers = {"GNU.sparse.map": "100,10", "GNU.sparse.size": "50"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"x" * 10))
    buf.seek(0)
    with pytest.raises(LayerError, match=r"sparse data region lies outside the file.*\[corrupt\]"):
        extract_layer(buf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tar(*members: tuple[str, str, str]) -> io.BytesIO:
    """A layer of (kind, name, content or link target): d, f, l (symlink) or w (an empty whiteout file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, text in members:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, text
            info.size = len(text) if kind == "f" else 0
            tf.addfile(info, io.BytesIO(text.encode()) if kind == "f" else None)
    buf.seek(0)
    return buf


# umoci's layer when /usr/sbin became a symlink to usr/sbin-moved: the symlink, then whiteouts below it
MOVED = (("d", "usr", ""), ("d", "usr/sbin-moved", ""), ("f", "usr/sbin-moved/chroot", "applet\n"),
         ("l", "usr/sbin", "sbin-moved"), ("w", "usr/sbin/.wh.chroot", ""), ("w", "usr/sbin/.wh..wh..opq", ""))


def test_a_whiteout_below_a_symlink_of_its_own_layer_is_moot(tmp_path):
    """Followed, the whiteout would hide usr/sbin-moved/chroot, a file of the same layer (it did: the name
    was listed and could not be opened), and the opaque marker would hide whatever lower layers have there."""
    extract_layer(_tar(*MOVED), tmp_path / "layer")
    moved = tmp_path / "layer" / "usr" / "sbin-moved"
    assert (moved / "chroot").read_text() == "applet\n"
    assert os.readlink(tmp_path / "layer" / "usr" / "sbin") == "sbin-moved"
    assert "trusted.overlay.opaque" not in os.listxattr(moved)


def test_a_whiteout_below_a_symlink_of_its_own_layer_deletes_nothing_when_flattened(tmp_path):
    """Flattened onto the layers below (apply_layer), the same whiteouts would delete the target's files."""
    tree = tmp_path / "tree"
    (tree / "usr" / "sbin").mkdir(parents=True)
    (tree / "usr" / "sbin" / "chroot").write_text("lower\n")
    (tree / "usr" / "sbin-moved").mkdir()
    (tree / "usr" / "sbin-moved" / "kept").write_text("lower\n")
    apply_layer(_tar(*MOVED), tree)
    assert sorted(os.listdir(tree / "usr" / "sbin-moved")) == ["chroot", "kept"]
    assert os.readlink(tree / "usr" / "sbin") == "sbin-moved"
