"""The image store: atomic blobs, tags, lookup, removal, concurrency, crash safety."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox_kernel.runtime import BlobError, Descriptor, ImageNotFound, Store, StoreError, load, save
from sandbox_kernel.runtime.image import media
from sandbox_kernel.runtime.image.layers import write_layer


def make_image(store: Store, ref: str, files: dict[str, bytes], created: str = "2024-01-01T00:00:00Z") -> Descriptor:
    """A one-layer image built from ``files`` (test helper)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        buf = io.BytesIO()
        layer = write_layer(root, buf)
    with store.writing():
        buf.seek(0)
        store.ingest(buf, expected_digest=layer.digest)
        config = {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": created, "created_by": f"test {ref}"}],
        }
        desc = store.put_image(config, [layer.descriptor()], ref)
    return desc


def tmp_entries(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "tmp").iterdir())


def test_layout_is_an_oci_image_layout(store):
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []


def test_ingest_checks_digest_and_size_before_publishing(store):
    data = b"hello blob"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(BlobError, match="expected"):
        store.ingest(io.BytesIO(b"other"), expected_digest=digest)
    assert not store.has_blob(digest) and tmp_entries(store) == []
    with pytest.raises(BlobError, match="bytes"):
        store.ingest(io.BytesIO(data), expected_digest=digest, expected_size=3)
    assert not store.has_blob(digest) and tmp_entries(store) == []
    assert store.ingest(io.BytesIO(data), expected_digest=digest) == (digest, len(data))
    assert store.blob_path(digest).read_bytes() == data


def test_tagging_requires_a_complete_image(store):
    manifest = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": {"mediaType": media.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2},
        "layers": [],
    }
    digest, size = store.put_json(manifest)
    with pytest.raises(BlobError, match="incomplete"):
        store.set_tag("localhost/x", Descriptor(media.OCI_MANIFEST, digest, size))
    assert store.tags() == {}


def test_resolve_by_name_digest_and_id(store):
    desc = make_image(store, "localhost/app:1", {"a": b"1"})
    image = store.resolve("localhost/app:1")
    assert image.manifest_digest == desc.digest
    assert store.resolve(f"localhost/app@{desc.digest}").id == image.id
    assert store.resolve(image.short_id).id == image.id
    assert store.resolve(image.id).id == image.id
    with pytest.raises(ImageNotFound, match="no such image: localhost/app:2"):
        store.resolve("localhost/app:2")
    with pytest.raises(ImageNotFound):
        store.resolve("busybox")


def test_ambiguous_id_prefix(store):
    for i in range(40):
        make_image(store, f"localhost/many:{i}", {"f": str(i).encode()})
    prefixes = {}
    for image in store.images():
        prefixes.setdefault(image.short_id[0], []).append(image)
    shared = next(k for k, v in prefixes.items() if len(v) > 1)
    with pytest.raises(ImageNotFound, match="ambiguous"):
        store.resolve(shared)


def test_images_lists_each_manifest_once_with_all_tags(store):
    desc = make_image(store, "localhost/a:1", {"x": b"x"})
    store.set_tag("localhost/b:2", desc)
    make_image(store, "localhost/c:1", {"y": b"y"}, created="2025-01-01T00:00:00Z")
    images = store.images()
    assert [im.tags for im in images] == [["localhost/c:1"], ["localhost/a:1", "localhost/b:2"]]


def test_rmi_untags_and_refuses_ambiguous_id(store):
    desc = make_image(store, "localhost/a:1", {"x": b"x"})
    store.set_tag("localhost/b:1", desc)
    image = store.resolve("localhost/a:1")
    with pytest.raises(StoreError, match="-f"):
        store.remove_image(image.short_id)
    names, _ = store.remove_image("localhost/a:1")
    assert names == ["localhost/a:1"]
    assert list(store.tags()) == ["localhost/b:1"]
    names, _ = store.remove_image(image.short_id)
    assert names == ["localhost/b:1"] and store.tags() == {}


def test_prune_keeps_tagged_and_removes_the_rest(store):
    make_image(store, "localhost/keep:1", {"k": b"keep"})
    gone = make_image(store, "localhost/gone:1", {"g": b"gone"})
    keep_image = store.resolve("localhost/keep:1")
    gone_image = store.resolve("localhost/gone:1")
    store.unpack(keep_image)
    store.unpack(gone_image)
    (store.root / "tmp" / "999999-dead.blob").write_bytes(b"half")
    store.remove_image("localhost/gone:1")
    removed = store.prune()
    assert removed["blobs"] == 3 and removed["layers"] == 1 and removed["tmp"] == 1
    assert not store.has_blob(gone.digest)
    assert store.verify() == []
    assert [p.name for p in (store.root / "layers").iterdir()] == [store.layer_dir(keep_image.diff_ids[0]).name]


def test_unpack_verifies_diff_id_and_reuses_layers(store):
    make_image(store, "localhost/u:1", {"bin/x": b"x"})
    image = store.resolve("localhost/u:1")
    (dirs1,) = [store.unpack(image)]
    assert (dirs1[0] / "bin/x").read_bytes() == b"x"
    mtime = dirs1[0].stat().st_mtime_ns
    assert store.unpack(image) == dirs1 and dirs1[0].stat().st_mtime_ns == mtime


def test_unpack_of_tampered_blob_fails_and_leaves_nothing(store):
    make_image(store, "localhost/t:1", {"x": b"original"})
    image = store.resolve("localhost/t:1")
    other = io.BytesIO()
    root = store.root / "scratch"
    (root / "x").parent.mkdir(parents=True)
    (root / "x").write_bytes(b"tampered")
    write_layer(root, other)
    store.blob_path(image.layers[0]["digest"]).write_bytes(other.getvalue())
    with pytest.raises(Exception, match="of the store is corrupt"):
        store.unpack(image)
    assert list((store.root / "layers").iterdir()) == [] and tmp_entries(store) == []
    assert any("corrupt" in p for p in store.verify())


def test_damaged_index_is_a_clear_error(store):
    (store.root / "index.json").write_text("{not json")
    with pytest.raises(Exception, match=r"store index .* is not valid JSON"):
        store.images()


_WORKER = """
import sys
from sandbox_kernel.runtime import Store, load
store = Store(sys.argv[1])
for i in range(int(sys.argv[4])):
    load(store, sys.argv[2], tag=f"{sys.argv[3]}:{i}")
"""


def test_concurrent_loads_into_one_store(tmp_path, store):
    make_image(store, "localhost/src:1", {"f": os.urandom(200_000)})
    archive = tmp_path / "img.tar"
    save(store, ["localhost/src:1"], archive)
    target = tmp_path / "shared"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(target), str(archive), f"localhost/w{n}", "5"])
        for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    shared = Store(target)
    assert len(shared.tags()) == 20
    assert shared.verify() == []
    assert tmp_entries(shared) == []


_CRASHER = """
import sys
from sandbox_kernel.runtime import Store, load
store = Store(sys.argv[1])
load(store, sys.argv[2], tag="localhost/crash:" + sys.argv[3])
store.unpack(store.resolve("localhost/crash:" + sys.argv[3]))
print("done", flush=True)
"""


def test_kill_9_while_writing_leaves_only_complete_images(tmp_path, store):
    files = {f"d{i}/f{j}": os.urandom(64 * 1024) for i in range(20) for j in range(20)}  # ~26 MB, 400 files
    make_image(store, "localhost/big:1", files)
    archive = tmp_path / "big.tar"
    save(store, ["localhost/big:1"], archive)
    target = tmp_path / "victim"
    Store(target)
    saw_partial = False
    for attempt, delay in enumerate([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8]):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CRASHER, str(target), str(archive), str(attempt)], stdout=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list((target / "tmp").iterdir()):
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saw_partial |= bool(list((target / "tmp").iterdir()))
        victim = Store(target)
        # Only complete images are listed, and every listed one verifies.
        for image in victim.images():
            assert victim.verify() == []
            assert all(victim.has_blob(layer["digest"]) for layer in image.layers)
        # Unpacked layers are complete or absent; half-done ones live only in tmp/.
        for layer_dir in (target / "layers").iterdir():
            assert (layer_dir / "d19" / "f19").stat().st_size == 64 * 1024
    assert saw_partial, "the kills should have hit at least one write in flight"
    victim = Store(target)
    victim.prune()
    assert tmp_entries(victim) == []
    load(victim, archive, tag="localhost/after:1")
    assert victim.verify() == []
    assert (victim.unpack(victim.resolve("localhost/after:1"))[0] / "d0/f0").stat().st_size == 64 * 1024
