"""load/save: round trips, the peers (skopeo, umoci) and broken archives."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import need_tool

from sandbox_kernel.runtime import ArchiveError, Store, load, save

BUSYBOX = "localhost/busybox:latest"


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)


def snapshot(store: Store) -> tuple:
    return (dict(store.tags()), store.verify())


def test_save_then_load_gives_same_digests(tmp_path, base_store):
    out = tmp_path / "bb.tar"
    save(base_store, [BUSYBOX], out)
    other = Store(tmp_path / "second")
    [loaded] = load(other, out)
    original = base_store.resolve(BUSYBOX)
    assert loaded.tags == [BUSYBOX]
    assert loaded.image.manifest_digest == original.manifest_digest
    assert loaded.image.id == original.id
    assert [layer["digest"] for layer in loaded.image.layers] == [layer["digest"] for layer in original.layers]
    out2 = tmp_path / "bb2.tar"
    save(other, [BUSYBOX], out2)
    assert out.read_bytes() == out2.read_bytes(), "save is deterministic"


def test_load_with_tag_and_by_id(tmp_path, base_store):
    out = tmp_path / "bb.tar"
    save(base_store, [base_store.resolve(BUSYBOX).short_id], out)
    other = Store(tmp_path / "s")
    [loaded] = load(other, out, tag="example.com/team/tool:v1")
    assert loaded.tags == ["example.com/team/tool:v1"]


def test_skopeo_and_umoci_accept_our_archive(tmp_path, base_store):
    skopeo, umoci = need_tool("skopeo"), need_tool("umoci")
    out = tmp_path / "bb.tar"
    save(base_store, [BUSYBOX], out)
    info = json.loads(run(skopeo, "inspect", f"oci-archive:{out}").stdout)
    image = base_store.resolve(BUSYBOX)
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == [layer["digest"] for layer in image.layers]
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(out) as tf:
        tf.extractall(layout, filter="data")  # our own archive, for umoci's benefit
    bundle = tmp_path / "bundle"
    run(umoci, "unpack", "--image", f"{layout}:latest", str(bundle))
    assert (bundle / "rootfs/bin/busybox").stat().st_size > 100_000
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == ["sh"]


def test_load_docker_archive_written_by_skopeo(tmp_path, base_store):
    skopeo = need_tool("skopeo")
    out = tmp_path / "bb.tar"
    save(base_store, [BUSYBOX], out)
    docker_tar = tmp_path / "docker.tar"
    run(skopeo, "copy", "-q", f"oci-archive:{out}", f"docker-archive:{docker_tar}:example.org/bb:docker")
    with tarfile.open(docker_tar) as tf:
        assert "manifest.json" in tf.getnames()
    other = Store(tmp_path / "s")
    [loaded] = load(other, docker_tar)
    assert loaded.tags == ["example.org/bb:docker"]
    original = base_store.resolve(BUSYBOX)
    assert loaded.image.diff_ids == original.diff_ids
    [layer_dir] = other.unpack(loaded.image)
    assert (layer_dir / "bin/busybox").stat().st_size == (base_store.unpack(original)[0] / "bin/busybox").stat().st_size


def test_load_oci_layout_dir_written_by_skopeo(tmp_path, base_store):
    skopeo = need_tool("skopeo")
    out = tmp_path / "bb.tar"
    save(base_store, [BUSYBOX], out)
    layout = tmp_path / "layout"
    run(skopeo, "copy", "-q", f"oci-archive:{out}", f"oci:{layout}:stable")
    other = Store(tmp_path / "s")
    with pytest.raises(ArchiveError, match="only by the tag 'stable'; give a repository with -t"):
        load(other, layout)
    assert other.tags() == {}
    [loaded] = load(other, layout, tag="localhost/from-layout:stable")
    assert loaded.image.id == base_store.resolve(BUSYBOX).id


def test_load_handwritten_docker_save_format(tmp_path, base_store):
    """The legacy layout `docker save` writes: <id>/layer.tar, <config>.json, manifest.json, repositories."""
    image = base_store.resolve(BUSYBOX)
    import gzip

    with base_store.open_blob(image.layers[0]["digest"]) as fh:
        layer_tar = gzip.decompress(fh.read())
    config = base_store.read_blob(image.config_digest)
    cfg_name = image.config_digest.split(":")[1] + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": ["busybox:legacy"], "Layers": ["abc/layer.tar"]}]).encode()
    path = tmp_path / "legacy.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in [
            ("abc/layer.tar", layer_tar),
            (cfg_name, config),
            ("manifest.json", manifest),
            ("abc/VERSION", b"1.0"),
            ("repositories", b"{}"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("def/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../abc/layer.tar"
        tf.addfile(link)
    other = Store(tmp_path / "s")
    [loaded] = load(other, path)
    assert loaded.tags == ["docker.io/library/busybox:legacy"]
    assert loaded.image.id == image.id
    assert loaded.image.layers[0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert (other.unpack(loaded.image)[0] / "bin/busybox").exists()


def _docker_archive(path: Path, base_store: Store, members: list[tarfile.TarInfo | tuple[str, bytes]],
                    layers: list[str], config: str | None = None) -> None:
    """A docker-archive of busybox's config whose manifest names ``layers``, holding ``members`` (links as
    TarInfo, files as (name, data)) and the config (unless ``config`` names another member)."""
    image = base_store.resolve(BUSYBOX)
    cfg_name = image.config_digest.split(":")[1] + ".json"
    manifest = json.dumps([{"Config": config or cfg_name, "RepoTags": ["hostile:1"], "Layers": layers}]).encode()
    with tarfile.open(path, "w") as tf:
        for member in [(cfg_name, base_store.read_blob(image.config_digest)), ("manifest.json", manifest),
                       *members]:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            info = tarfile.TarInfo(member[0])
            info.size = len(member[1])
            tf.addfile(info, io.BytesIO(member[1]))


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


@pytest.mark.parametrize("case", ["absolute-symlink", "escaping-symlink", "hard-link-out", "dotdot-layer-path",
                                  "dotdot-config-path", "symlink-loop", "dotdot-member"])
def test_a_hostile_docker_archive_reads_nothing_of_the_host(tmp_path, base_store, case):
    """Outer members that point out of the archive (symlinks, hard links, ``..`` paths) at a valid layer and
    config on the host: the archive is read as a stream and its names stay inside it, so each is refused in
    one line (it follows no host path), writes nothing outside the store and leaves the store as it was."""
    import gzip

    image = base_store.resolve(BUSYBOX)
    outside = tmp_path / "outside"
    outside.mkdir()
    with base_store.open_blob(image.layers[0]["digest"]) as fh:
        (outside / "layer.tar").write_bytes(gzip.decompress(fh.read()))  # what a host file would give, if read
    (outside / "config.json").write_bytes(base_store.read_blob(image.config_digest))
    host_layer = str(outside / "layer.tar")
    up = "../" * (len(outside.parts) + 2)
    members, layers, config, message = [], ["evil/layer.tar"], None, "is not in the archive"
    if case == "absolute-symlink":
        members = [_link("evil/layer.tar", host_layer)]
    elif case == "escaping-symlink":
        members = [_link("evil/layer.tar", up + host_layer.lstrip("/"))]
    elif case == "hard-link-out":
        members = [_link("evil/layer.tar", host_layer, hard=True)]
    elif case == "dotdot-layer-path":
        layers = [up + host_layer.lstrip("/")]
    elif case == "dotdot-config-path":
        layers, config = [], up + str(outside / "config.json").lstrip("/")
    elif case == "symlink-loop":
        members = [_link("evil/layer.tar", "../loop/layer.tar"), _link("loop/layer.tar", "../evil/layer.tar")]
    elif case == "dotdot-member":
        planted = tmp_path / "planted.json"
        members = [(up + str(planted).lstrip("/"), b"{}")]
        layers = [up + host_layer.lstrip("/")]
    archive = tmp_path / "hostile.tar"
    _docker_archive(archive, base_store, members, layers, config)
    target = Store(tmp_path / "target")
    before = snapshot(target)
    with pytest.raises(ArchiveError, match=message) as info:
        load(target, archive)
    assert "\n" not in str(info.value)
    assert snapshot(target) == before and list((target.root / "tmp").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar", "outside", "target"], "nothing planted"


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy a tar, letting ``edit(name, data)`` change or drop (None) members."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isreg() else None
            if data is not None:
                data = edit(member.name, data)
                if data is None:
                    continue
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", "not a readable tar archive|lacks blob|corrupt"),
        ("flipped-blob", "digest"),
        ("missing-blob", "lacks blob"),
        ("bad-index", "index.json is not valid JSON"),
        ("ambiguous-manifest", "ambiguous"),
        ("not-an-archive", "not a readable tar archive|neither index.json nor manifest.json"),
        ("missing-file", "cannot open"),
    ],
)
def test_broken_archives_fail_cleanly_and_change_nothing(tmp_path, base_store, case, message):
    good = tmp_path / "good.tar"
    save(base_store, [BUSYBOX], good)
    image = base_store.resolve(BUSYBOX)
    layer_hex = image.layers[0]["digest"].split(":")[1]
    manifest_hex = image.manifest_digest.split(":")[1]
    bad = tmp_path / "bad.tar"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "flipped-blob":

        def flip(name, data):
            return data[:100] + bytes([data[100] ^ 1]) + data[101:] if name.endswith(layer_hex) else data

        _rewrite(good, bad, flip)
    elif case == "missing-blob":
        _rewrite(good, bad, lambda name, data: None if name.endswith(layer_hex) else data)
    elif case == "bad-index":
        _rewrite(good, bad, lambda name, data: b"{oops" if name == "index.json" else data)
    elif case == "ambiguous-manifest":
        # A manifest that is also an index (CVE-2021-41190): we store the changed manifest under its new digest.
        def both(name, data):
            return data

        _rewrite(good, bad, both)
        with tarfile.open(bad) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}
        doc = json.loads(members[f"blobs/sha256/{manifest_hex}"])
        doc["manifests"] = []
        new = json.dumps(doc).encode()
        import hashlib

        new_hex = hashlib.sha256(new).hexdigest()
        members[f"blobs/sha256/{new_hex}"] = new
        index = json.loads(members["index.json"])
        index["manifests"][0].update(digest=f"sha256:{new_hex}", size=len(new))
        members["index.json"] = json.dumps(index).encode()
        with tarfile.open(bad, "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    elif case == "not-an-archive":
        bad.write_bytes(b"just some text\n" * 100)
    elif case == "missing-file":
        bad = tmp_path / "nope.tar"
    target = Store(tmp_path / "target")
    before = snapshot(target)
    with pytest.raises(ArchiveError, match=message) as info:
        load(target, bad)
    assert "\n" not in str(info.value)
    assert snapshot(target) == before
    assert list((target.root / "tmp").iterdir()) == []
