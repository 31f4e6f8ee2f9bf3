"""`sandbox-kernel check [--repair]`: every kind of damage to a store is found, never silently used, and repaired.

A damaged blob is refused by every reader (run, save, inspect) with the same sentence, removed by --repair and
restored by a load; a damaged or deleted unpacked layer is found by unpacking its blob afresh and is unpacked
again; what killed processes leave is a harmless note that --repair removes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import busybox_copy

from sandbox_kernel.cli import main
from sandbox_kernel.runtime import Containers, ContainerSpec, Store, save

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"


def sk(store: Store, capfd, *args: str) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(["--root", str(store.root), *args])
    out, err = capfd.readouterr()
    return code, out, err


def check(store: Store, capfd, *args: str) -> tuple[int, list[dict]]:
    code, out, _ = sk(store, capfd, "check", "--json", *args)
    return code, json.loads(out)["Findings"]


def flip_byte(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def copy(base_store, tmp_path):
    store = busybox_copy(base_store, tmp_path / "copy")
    archive = tmp_path / "busybox.tar"
    save(store, [BUSYBOX], archive)
    yield store, archive
    containers = Containers(store, warm_slots=False)
    for info in containers.list(all=True):
        containers.remove(info.id, force=True)


def test_a_sound_store_passes(copy, capfd):
    store, _ = copy
    assert sk(store, capfd, "run", "--name", "c1", BUSYBOX, "true")[0] == 0
    code, out, err = sk(store, capfd, "check")
    assert (code, err) == (0, "")
    assert out == "Checked 3 blobs, 1 image, 1 unpacked layer and 1 container: 0 problems, 0 notes\n"


def test_a_corrupt_layer_blob_is_refused_everywhere_removed_and_restored_by_a_load(copy, capfd, tmp_path):
    store, archive = copy
    image = store.resolve(BUSYBOX)
    layer = image.layers[0]["digest"]
    flip_byte(store.blob_path(layer))
    code, findings = check(store, capfd)
    assert code == 1
    assert [(f["Kind"], f["Problem"]) for f in findings] == [("blob", True), ("image", True)]
    assert "corrupt" in findings[0]["Text"] and "pull or load it again" in findings[1]["Text"]
    # never silently used: an unpack from it and a save of it are refused with the same sentence
    code, _, err = sk(store, capfd, "run", "--rm", BUSYBOX, "true")
    assert code == 1 and "of the store is corrupt" in err and "check --repair" in err, err
    code, _, err = sk(store, capfd, "save", BUSYBOX, "-o", str(tmp_path / "out.tar"))
    assert code == 1 and "of the store is corrupt" in err, err
    assert not (tmp_path / "out.tar").exists() and not list(tmp_path.glob(".out.tar*"))
    code, findings = check(store, capfd, "--repair")
    assert findings[0]["Repaired"].startswith("removed") and not store.has_blob(layer)
    assert code == 1  # the image still lacks the layer: that is what a load restores
    assert sk(store, capfd, "load", str(archive))[0] == 0
    assert check(store, capfd) == (0, [])
    assert sk(store, capfd, "run", "--rm", BUSYBOX, "true")[0] == 0


def test_a_manifest_that_still_parses_after_damage_is_refused(copy, capfd):
    store, _ = copy
    image = store.resolve(BUSYBOX)
    path = store.blob_path(image.config_digest)
    doc = json.loads(path.read_bytes())
    doc["config"]["Env"] = ["PATH=/tmp/evil"]  # valid JSON, another image: never used as this one
    path.write_bytes(json.dumps(doc).encode())
    code, _, err = sk(Store(store.root), capfd, "inspect", BUSYBOX)
    assert code == 1 and "of the store is corrupt" in err, err
    assert check(store, capfd)[0] == 1


def test_a_damaged_unpacked_layer_is_found_and_unpacked_again(copy, capfd):
    store, _ = copy
    assert sk(store, capfd, "run", "--rm", BUSYBOX, "true")[0] == 0
    (layer,) = (store.root / "layers").iterdir()
    (layer / "etc" / "passwd").write_text("root::0:0::/:/bin/sh\n")  # an edit, as someone with access might
    (layer / "planted").write_text("x")
    os.chmod(layer / "bin", 0o777)
    code, findings = check(store, capfd)
    assert code == 1
    (finding,) = findings
    assert finding["Kind"] == "layer" and "differs from what its blob unpacks to" in finding["Text"]
    for what in ("etc/passwd is changed", "planted should not be there", "bin is changed"):
        assert what in finding["Text"]
    code, findings = check(store, capfd, "--repair")
    assert code == 0 and findings[0]["Repaired"] == "unpacked again from its blob"
    assert check(store, capfd) == (0, [])
    code, out, _ = sk(store, capfd, "run", "--rm", BUSYBOX, "sh", "-c", "head -1 /etc/passwd; ls /planted")
    assert code == 1 and out.startswith("root:x:0:0:")


def test_a_deleted_layer_of_a_container_is_found_and_unpacked_again(copy, capfd):
    store, _ = copy
    assert sk(store, capfd, "create", "--name", "c1", BUSYBOX, "true")[0] == 0
    for layer in (store.root / "layers").iterdir():
        os.system(f"rm -rf {layer}")
    code, _, err = sk(store, capfd, "start", "c1")
    assert code != 0 and "is gone" in err and "check --repair" in err, err
    code, findings = check(store, capfd)
    assert code == 1 and [f["Kind"] for f in findings if f["Problem"]] == ["container"]
    code, findings = check(store, capfd, "--repair")
    assert code == 0, findings
    assert sk(store, capfd, "start", "c1")[0] == 0
    assert check(store, capfd) == (0, [])


def test_what_killed_processes_leave_is_a_note_that_repair_removes(copy, capfd):
    store, _ = copy
    assert sk(store, capfd, "run", "--rm", BUSYBOX, "true")[0] == 0
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # a pid no process can have
    (store.root / "tmp" / f"{dead}-0123456789ab.blob").write_bytes(b"half a blob")
    (store.root / "tmp" / f"{dead}-0123456789ac.layer").mkdir()
    os.symlink("../layers/" + "0" * 64, store.root / "l" / "0123456789abcdef")
    os.symlink("f" * 64, store.root / "containers" / "names" / "ghost")
    live = store.root / "tmp" / f"{os.getpid()}-0123456789ad.w"  # a write in flight: not touched
    live.write_bytes(b"")
    code, findings = check(store, capfd)
    assert code == 0
    assert sorted(f["Kind"] for f in findings) == ["link", "name", "tmp", "tmp"]
    assert not any(f["Problem"] for f in findings)
    code, findings = check(store, capfd, "--repair")
    assert code == 0 and all(f["Repaired"] == "removed" for f in findings)
    assert [p.name for p in (store.root / "tmp").iterdir()] == [live.name]
    live.unlink()
    assert check(store, capfd) == (0, [])


def test_repair_leaves_a_running_containers_layer_alone(copy, capfd):
    store, _ = copy
    containers = Containers(store, warm_slots=False)
    cid = containers.create(ContainerSpec(image=BUSYBOX, command=("sleep", "60")))
    containers.start(cid)
    try:
        (layer,) = (store.root / "layers").iterdir()
        (layer / "planted").write_text("x")
        code, findings = check(store, capfd, "--repair")
        assert code == 1 and "a running container uses it" in findings[0]["Text"]
        assert (layer / "planted").exists()
    finally:
        containers.remove(cid, force=True)
