"""Layer extraction rules, whiteouts, compression, limits, and layer writing."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from sandbox_kernel.runtime import ExtractLimits, LayerError, extract_layer, write_layer
from sandbox_kernel.runtime.image.layers import apply_layer, decompressed


def tar_bytes(*entries: tuple, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """entries: (kind, name, arg, extra) with kind in d f s h c b p."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for kind, name, *rest in entries:
            arg = rest[0] if rest else None
            extra = rest[1] if len(rest) > 1 else {}
            info = tarfile.TarInfo(name)
            info.mode = extra.get("mode", 0o755 if kind == "d" else 0o644)
            info.uid = extra.get("uid", 0)
            info.gid = extra.get("gid", 0)
            info.mtime = extra.get("mtime", 1_000_000)
            if "xattrs" in extra:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in extra["xattrs"].items()}
            data = None
            if kind == "d":
                info.type = tarfile.DIRTYPE
            elif kind == "f":
                data = arg or b""
                info.size = len(data)
            elif kind == "s":
                info.type, info.linkname = tarfile.SYMTYPE, arg
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            elif kind == "c":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, *arg
            elif kind == "b":
                info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, *arg
            elif kind == "p":
                info.type = tarfile.FIFOTYPE
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def extract(tmp_path: Path, data: bytes, **kw) -> Path:
    target = tmp_path / "layer"
    extract_layer(io.BytesIO(data), target, **kw)
    return target


def rejected(tmp_path: Path, data: bytes, rule: str, **kw) -> LayerError:
    target = tmp_path / "layer"
    with pytest.raises(LayerError) as info:
        extract_layer(io.BytesIO(data), target, **kw)
    assert info.value.rule == rule, str(info.value)
    assert not target.exists(), "a rejected layer must leave nothing behind"
    return info.value


def test_regular_tree_with_metadata(tmp_path):
    data = tar_bytes(
        ("d", "usr", None, {"mode": 0o755, "mtime": 12345}),
        ("d", "usr/bin"),
        ("f", "usr/bin/tool", b"#!/bin/sh\n", {"mode": 0o755, "mtime": 777}),
        ("s", "usr/bin/alias", "tool"),
        ("h", "usr/bin/tool2", "usr/bin/tool"),
        ("p", "run-fifo"),
        ("f", "implicit/parent/file", b"x"),
    )
    root = extract(tmp_path, data)
    tool = root / "usr/bin/tool"
    assert tool.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert tool.stat().st_mtime == 777
    assert os.readlink(root / "usr/bin/alias") == "tool"
    assert (root / "usr/bin/tool2").stat().st_ino == tool.stat().st_ino
    assert stat.S_ISFIFO((root / "run-fifo").lstat().st_mode)
    assert (root / "usr").stat().st_mtime == 12345, "directory times are set after their children"
    assert (root / "implicit/parent").is_dir()


def test_result_reports_diff_id_of_uncompressed_stream(tmp_path):
    data = tar_bytes(("f", "a", b"hello"))
    target = tmp_path / "t"
    result = extract_layer(io.BytesIO(gzip.compress(data)), target)
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.entries == 1 and result.content_bytes == 5


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_compressions(tmp_path, compress):
    data = tar_bytes(("f", "a/b", b"payload" * 1000))
    blob = {"none": data, "gzip": gzip.compress(data), "zstd": zstandard.ZstdCompressor().compress(data)}[compress]
    root = tmp_path / "t"
    result = extract_layer(io.BytesIO(blob), root, expected_diff_id="sha256:" + hashlib.sha256(data).hexdigest())
    assert (root / "a/b").read_bytes() == b"payload" * 1000
    assert result.tar_bytes == len(data)


def test_wrong_diff_id_leaves_nothing(tmp_path):
    rejected(tmp_path, tar_bytes(("f", "a", b"x")), "corrupt", expected_diff_id="sha256:" + "0" * 64)


@pytest.mark.parametrize(
    "blob",
    [
        gzip.compress(tar_bytes(("f", "a", b"x" * 50000)))[:-20],  # truncated gzip
        b"\x1f\x8b\x08\x00garbage-after-gzip-magic" * 10,
        b"\x28\xb5\x2f\xfd" + b"\x00" * 50,  # zstd magic, bad frame
        b"this is not a tar file at all" * 40,
        tar_bytes(("f", "a", b"x" * 5000))[:1200],  # tar truncated inside the file data
    ],
    ids=["gzip-truncated", "gzip-garbage", "zstd-garbage", "not-tar", "tar-truncated"],
)
def test_corrupt_streams(tmp_path, blob):
    rejected(tmp_path, blob, "corrupt")


def test_empty_layer_is_valid(tmp_path):
    root = tmp_path / "t"
    result = extract_layer(io.BytesIO(b"\0" * 1024), root)
    assert result.entries == 0 and list(root.iterdir()) == []


@pytest.mark.root
def test_whiteouts_become_overlay_whiteouts(tmp_path):
    data = tar_bytes(("d", "etc"), ("f", "etc/.wh.passwd"), ("f", "var/lib/.wh..wh..opq"), ("f", "var/lib/new", b"n"))
    root = extract(tmp_path, data)
    st = (root / "etc/passwd").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(root / "var/lib", "trusted.overlay.opaque") == b"y"
    assert (root / "var/lib/new").read_bytes() == b"n"
    assert not (root / "etc/.wh.passwd").exists()


@pytest.mark.root
def test_whiteouts_for_rootless_overlay_use_user_xattrs(tmp_path):
    root = extract(tmp_path, tar_bytes(("f", "d/.wh..wh..opq")), whiteouts="userxattr")
    assert os.getxattr(root / "d", "user.overlay.opaque") == b"y"


def test_aufs_metadata_is_ignored(tmp_path):
    root = extract(tmp_path, tar_bytes(("d", ".wh..wh.plnk"), ("f", ".wh..wh.aufs"), ("f", "kept", b"k")))
    assert sorted(p.name for p in root.iterdir()) == ["kept"]


@pytest.mark.parametrize("name", [".wh.", "a/.wh.", ".wh..", "a/.wh..", ".wh...", ".wh..wh..opq"])
def test_invalid_whiteouts(tmp_path, name):
    rejected(tmp_path, tar_bytes(("f", name)), "whiteout")


def test_apply_mode_carries_out_whiteouts(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    apply_layer(io.BytesIO(tar_bytes(("f", "a/old", b"1"), ("f", "a/keep", b"2"), ("f", "b/x", b"3"))), root)
    apply_layer(io.BytesIO(tar_bytes(("f", "a/.wh.old"), ("f", "b/.wh..wh..opq"), ("f", "b/y", b"4"))), root)
    assert sorted(p.name for p in (root / "a").iterdir()) == ["keep"]
    assert sorted(p.name for p in (root / "b").iterdir()) == ["y"]


@pytest.mark.parametrize(
    ("entries", "rule"),
    [
        ((("f", "../escape"),), "dotdot"),
        ((("f", "a/../../escape"),), "dotdot"),
        ((("d", "a"), ("h", "b", "a/../../etc/passwd")), "dotdot"),
        ((("h", "b", "etc/passwd"),), "hardlink-scope"),
        (
            (
                ("d", "a"),
                ("h", "b", "a"),
            ),
            "hardlink-scope",
        ),
        ((("f", "a" * 300),), "path-length"),
        ((("f", "/".join(["d"] * 2100)),), "path-length"),
        ((("f", "x", b"", {"uid": 1 << 33}),), "owner"),
        ((("s", "", "/etc"),), "parent"),
        ((("f", "file", b"x"), ("f", "file/child", b"y")), "parent"),
    ],
    ids=[
        "dotdot",
        "deep-dotdot",
        "hardlink-dotdot",
        "hardlink-host",
        "hardlink-dir",
        "long-name",
        "long-path",
        "huge-uid",
        "root-symlink",
        "file-as-parent",
    ],
)
def test_rejections_name_entry_and_rule(tmp_path, entries, rule):
    err = rejected(tmp_path, tar_bytes(*entries), rule)
    assert "layer entry" in str(err) and f"[{rule}]" in str(err)


def test_device_nodes_are_skipped_never_made(tmp_path):
    """A root file system's /dev (mmdebstrap --mode=root, docker import): its nodes, and a hard link to one,
    are skipped; the rest of the layer is unpacked (as docker and podman unpack in a user namespace)."""
    layer = tar_bytes(("d", "dev"), ("c", "dev/console", (5, 1)), ("b", "dev/sda", (8, 0)),
                      ("c", "dev/null", (1, 3)), ("h", "dev/null2", "dev/null"), ("f", "etc/hostname", b"box\n"))
    root = tmp_path / "root"
    extract_layer(io.BytesIO(layer), root)
    assert sorted(os.listdir(root / "dev")) == []
    assert (root / "etc/hostname").read_bytes() == b"box\n"


def test_entry_and_byte_limits(tmp_path):
    many = tar_bytes(*[("f", f"f{i}", b"x") for i in range(20)])
    rejected(tmp_path, many, "entries", limits=ExtractLimits(max_entries=10))
    big = tar_bytes(("f", "big", b"x" * 10000))
    rejected(tmp_path, big, "bytes", limits=ExtractLimits(max_bytes=5000))


def test_a_zstd_bomb_streams_in_bounded_pieces_and_hits_the_byte_cap(tmp_path):
    """256 MiB of zeros in a 12 kB zstd layer: never more than 64 MiB at once, refused at the byte cap."""
    bomb = zstandard.ZstdCompressor(level=19).compress(tar_bytes(("f", "zeros", b"\0" * (256 << 20))))
    assert len(bomb) < 64 << 10
    stream = decompressed(io.BytesIO(bomb))
    biggest = max(len(chunk) for chunk in iter(stream.read, b""))
    assert biggest <= 64 << 20
    rejected(tmp_path, bomb, "bytes", limits=ExtractLimits(max_bytes=1 << 20))


@pytest.mark.root
def test_setuid_stripped_unless_trusted(tmp_path):
    data = tar_bytes(
        ("f", "su", b"x", {"mode": 0o4755}),
        ("f", "wall", b"x", {"mode": 0o2755}),
        ("d", "mail", None, {"mode": 0o2775}),
        (
            "f",
            "ping",
            b"x",
            {"mode": 0o755, "xattrs": {"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12}},
        ),
        ("f", "evil", b"x", {"xattrs": {"trusted.overlay.redirect": "/etc", "user.note": "ok"}}),
    )
    root = extract(tmp_path, data)
    assert stat.S_IMODE((root / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "wall").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "mail").stat().st_mode) == 0o2775, "setgid directories are harmless"
    assert "security.capability" not in os.listxattr(root / "ping")
    assert os.listxattr(root / "evil") == ["user.note"]
    trusted = tmp_path / "trusted"
    extract_layer(io.BytesIO(data), trusted, trusted=True)
    assert stat.S_IMODE((trusted / "su").stat().st_mode) == 0o4755
    assert "security.capability" in os.listxattr(trusted / "ping")


@pytest.mark.root
def test_ownership_from_tar(tmp_path):
    root = extract(
        tmp_path,
        tar_bytes(("f", "owned", b"x", {"uid": 1234, "gid": 5678}), ("s", "ln", "owned", {"uid": 42, "gid": 43})),
    )
    assert (root / "owned").stat().st_uid == 1234 and (root / "owned").stat().st_gid == 5678
    assert (root / "ln").lstat().st_uid == 42


def test_later_entries_replace_earlier(tmp_path):
    data = tar_bytes(
        ("d", "x"),
        ("f", "x/inner", b"1"),
        ("f", "x", b"now a file"),
        ("s", "y", "/etc"),
        ("d", "y"),
        ("f", "y/z", b"z"),
    )
    root = extract(tmp_path, data)
    assert (root / "x").read_bytes() == b"now a file"
    assert (root / "y").is_dir() and not (root / "y").is_symlink()
    assert (root / "y/z").read_bytes() == b"z"


def test_symlink_parent_is_resolved_inside_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tar_bytes(
        ("d", str(outside)),
        ("s", "link", str(outside)),
        ("f", "link/pwned", b"no"),
        ("s", "up", "../../../.."),
        ("f", "up/pwned2", b"no"),
    )
    root = extract(tmp_path, data)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"no"
    assert (root / "pwned2").read_bytes() == b"no"


# -- writing ------------------------------------------------------------------------


def _sample_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"tool")
    os.chmod(root / "bin/tool", 0o755)
    os.link(root / "bin/tool", root / "bin/tool-link")
    os.symlink("tool", root / "bin/alias")
    (root / "empty").mkdir()
    os.mkfifo(root / "fifo")


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_write_layer_is_reproducible_and_round_trips(tmp_path, compression):
    src = tmp_path / "src"
    _sample_tree(src)
    outs = []
    for i in range(2):
        buf = io.BytesIO()
        layer = write_layer(src, buf, compression=compression)
        outs.append((layer, buf.getvalue()))
        os.utime(src / "bin/tool", (i * 1000, i * 1000))  # times do not matter with epoch=0
    (l1, b1), (l2, b2) = outs
    assert b1 == b2 and l1 == l2
    assert l1.digest == "sha256:" + hashlib.sha256(b1).hexdigest()
    back = tmp_path / "back"
    result = extract_layer(io.BytesIO(b1), back, expected_diff_id=l1.diff_id)
    assert result.diff_id == l1.diff_id
    assert (back / "bin/tool").read_bytes() == b"tool"
    assert (back / "bin/tool-link").stat().st_ino == (back / "bin/tool").stat().st_ino
    assert os.readlink(back / "bin/alias") == "tool"
    assert stat.S_ISFIFO((back / "fifo").lstat().st_mode)
    with tarfile.open(fileobj=decompressed(io.BytesIO(b1)), mode="r|") as tf:
        members = list(tf)
        names = [m.name for m in members]
        assert names == sorted(names)
        assert all(m.uname == "" and m.mtime == 0 for m in members)


def test_modes_do_not_depend_on_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        root = extract(tmp_path, tar_bytes(("f", "pub", b"x", {"mode": 0o644}), ("d", "shared", None, {"mode": 0o775}),
                                           ("f", "run", b"x", {"mode": 0o1755})))
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "pub").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o775
    assert stat.S_IMODE((root / "run").stat().st_mode) == 0o1755


class _Endless(io.RawIOBase):
    """A stream of ``head`` then as many "0" bytes as asked for, counting what was read; more than
    ``most`` bytes read is a test failure (raised from the read, so the extractor cannot hide it)."""

    def __init__(self, head: bytes, most: int):
        self.head, self.most, self.consumed = head, most, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = len(buffer)
        if self.consumed + n > self.most:
            raise AssertionError(f"read {self.consumed + n} bytes of a header that claims 4 GiB")
        data = (self.head[self.consumed:self.consumed + n] + b"0" * n)[:n]
        buffer[:n] = data
        self.consumed += n
        return n


def test_huge_pax_header_is_refused_without_reading_it_into_memory(tmp_path):
    """A pax header that claims 4 GiB (and whose stream would deliver them) is refused after reading a
    few blocks, with Python's allocations staying small (tracemalloc's peak)."""
    import tracemalloc

    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 1 << 32  # claims 4 GiB
    stream = _Endless(header.tobuf(format=tarfile.USTAR_FORMAT), most=16 << 20)
    target = tmp_path / "layer"
    tracemalloc.start()
    try:
        with pytest.raises(LayerError) as info:
            extract_layer(io.BufferedReader(stream, 1 << 16), target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.rule == "corrupt", str(info.value)
    assert stream.consumed <= 4 << 20, f"read {stream.consumed} bytes"  # (it reads in chunks of 1 MiB)
    assert peak < 8 << 20, f"Python allocated {peak >> 20} MiB at most for a header it refused"
    assert not target.exists()
