"""Images other tools make: what they put in layers that we would not, and that must still load and run.

A root file system tarred as it is (mmdebstrap --mode=root, `docker import` of a debootstrap root) carries
/dev's character and block devices: they are skipped when the layer is unpacked (never made), as docker
and podman do in a user namespace, and the container gets the runtime's own /dev.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from conftest import busybox_copy

from sandbox_kernel.runtime import Containers, ContainerSpec

pytestmark = pytest.mark.root

BUSYBOX = "localhost/busybox:latest"
TAR = "application/vnd.oci.image.layer.v1.tar"


def _layer(*members: tuple) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif kind in ("c", "b"):
                info.type = tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE
                info.devmajor, info.devminor = rest[0]
                info.mode = 0o666
                tf.addfile(info)
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
                tf.addfile(info)
            else:
                info.size, info.mode = len(rest[0]), 0o644
                tf.addfile(info, io.BytesIO(rest[0]))
    return buf.getvalue()


def test_an_image_with_dev_nodes_in_a_layer_loads_and_runs(base_store, tmp_path):
    store = busybox_copy(base_store, tmp_path / "copy")
    base = store.resolve(BUSYBOX)
    config = json.loads(store.read_blob(base.config_digest))
    layer = _layer(("d", "dev"), ("c", "dev/console", (5, 1)), ("c", "dev/null", (1, 3)),
                   ("b", "dev/sda", (8, 0)), ("h", "dev/null-again", "dev/null"),
                   ("d", "etc"), ("f", "etc/made-by", b"a root file system's tar\n"))
    digest, size = store.ingest(io.BytesIO(layer))
    assert digest == "sha256:" + hashlib.sha256(layer).hexdigest()
    config["rootfs"]["diff_ids"].append(digest)
    store.put_image(config, [*base.layers, {"mediaType": TAR, "digest": digest, "size": size}], "localhost/rootfs:1")
    chunks: list[bytes] = []
    result = Containers(store, warm_slots=False).run(
        ContainerSpec(image="localhost/rootfs:1", remove=True,
                      command=("sh", "-c", "cat /etc/made-by; ls /dev; ls -l /dev/sda /dev/null-again 2>&1 | wc -l")),
        stdin=None, stdout=chunks.append, stderr=chunks.append)
    out = b"".join(chunks).decode()
    assert result.exit_code == 0, out
    lines = out.splitlines()
    assert lines[0] == "a root file system's tar"
    assert "console" not in lines[1:-1] and "sda" not in lines[1:-1] and "null" in lines[1:-1]  # the runtime's /dev
    assert lines[-1].strip() == "2"  # (two "No such file" lines: neither was made)
