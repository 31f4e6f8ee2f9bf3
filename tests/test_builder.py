"""Base images built here: content, reproducibility, the recipe-keyed cache."""

from __future__ import annotations

import os
import subprocess

import pytest

from sandbox_kernel.runtime import BuildError, Store, build
from sandbox_kernel.runtime.image import builder


def test_busybox_image_content(base_store):
    image = base_store.resolve("localhost/busybox")
    assert image.config["config"]["Cmd"] == ["sh"]
    assert image.config["rootfs"]["diff_ids"] == image.diff_ids
    [layer] = base_store.unpack(image)
    assert os.readlink(layer / "bin/sh") == "/bin/busybox"
    assert (layer / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert oct((layer / "tmp").stat().st_mode & 0o7777) == "0o1777"


@pytest.mark.root
def test_busybox_runs_in_a_chroot(base_store):
    [layer] = base_store.unpack(base_store.resolve("localhost/busybox"))
    out = subprocess.run(
        ["chroot", str(layer), "/bin/sh", "-c", "echo hello from $(uname -s)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "hello from Linux\n"


def test_rebuild_is_reproducible_and_cache_is_keyed(tmp_path, base_store, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SANDBOX_KERNEL_CACHE", str(cache))
    first = build(Store(tmp_path / "a"), "busybox")
    assert first.manifest_digest == base_store.resolve("localhost/busybox").manifest_digest, "same recipe, same bytes"
    [cached] = list(cache.iterdir())
    assert cached.name == f"busybox-{builder.RECIPES['busybox'].key()}.oci.tar"
    stamp = cached.stat().st_mtime_ns
    second = build(Store(tmp_path / "b"), "busybox")
    assert second.manifest_digest == first.manifest_digest and cached.stat().st_mtime_ns == stamp
    # A changed ingredient is a new key: rebuilt, and the stale entry replaced.
    recipe = builder.RECIPES["busybox"]
    monkeypatch.setitem(
        builder.RECIPES,
        "busybox",
        builder.Recipe(
            recipe.name, recipe.ref, recipe.cmd, lambda: {"busybox-static": "other-version"}, recipe.make_rootfs
        ),
    )
    build(Store(tmp_path / "c"), "busybox")
    [entry] = list(cache.iterdir())
    assert entry.name != cached.name


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_KERNEL_CACHE", str(tmp_path / "cache"))
    build(Store(tmp_path / "a"), "busybox")
    [cached] = list((tmp_path / "cache").iterdir())
    cached.write_bytes(b"garbage")
    image = build(Store(tmp_path / "b"), "busybox")
    assert image.tags == ["localhost/busybox:latest"]
    assert cached.stat().st_size > 500_000


def test_unknown_recipe(store):
    with pytest.raises(BuildError, match="no recipe named 'alpine'"):
        build(store, "alpine")


@pytest.mark.slow
@pytest.mark.root
def test_debian_python_image_runs_python(debian_store):
    image = debian_store.resolve("localhost/debian-python")
    assert image.config["config"]["Cmd"] == ["python3"]
    [layer] = debian_store.unpack(image)
    assert not (layer / "dev/null").exists(), "no device nodes in layers"
    out = subprocess.run(
        ["chroot", str(layer), "/usr/bin/python3", "-c", "import sys, json; print(sys.version_info[0])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "3\n"
    su = layer / "usr/bin/su"
    if su.exists():
        assert not su.stat().st_mode & 0o4000, "setuid stripped in an untrusted unpack"
