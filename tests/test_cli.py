"""The CLI as a user runs it: docker's output shapes, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel.runtime import Store, StoreError, save


def cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_kernel", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def loaded(tmp_path, base_store) -> Path:
    archive = tmp_path / "bb.tar"
    save(base_store, ["localhost/busybox:latest"], archive)
    root = tmp_path / "root"
    out = cli(root, "load", str(archive)).stdout
    assert out == "Loaded image: localhost/busybox:latest\n"
    return root


def test_images_table_and_json(loaded):
    lines = cli(loaded, "images").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:2] == ["localhost/busybox", "latest"]
    rows = json.loads(cli(loaded, "images", "--json").stdout)
    assert rows[0]["Repository"] == "localhost/busybox" and rows[0]["Id"].startswith("sha256:")
    assert cli(loaded, "images", "-q").stdout.strip() == rows[0]["Id"][7:19]
    cli(loaded, "tag", "localhost/busybox", "teach/tool:v2")
    assert [r["Tag"] for r in json.loads(cli(loaded, "images", "--json", "teach/tool").stdout)] == ["v2"]
    assert json.loads(cli(loaded, "images", "--json", "teach/tool:v9").stdout) == []
    assert len(cli(loaded, "images", "localhost/busybox:latest").stdout.splitlines()) == 2


def test_inspect_is_a_list_of_one_docker_like_object(loaded):
    [obj] = json.loads(cli(loaded, "inspect", "localhost/busybox").stdout)
    assert obj["RepoTags"] == ["localhost/busybox:latest"]
    assert obj["RepoDigests"][0].startswith("localhost/busybox@sha256:")
    assert obj["Config"]["Cmd"] == ["sh"]
    assert obj["RootFS"]["Type"] == "layers" and len(obj["RootFS"]["Layers"]) == 1
    assert obj["Os"] == "linux"


def test_tag_rmi_history_save_prune(loaded, tmp_path):
    cli(loaded, "tag", "localhost/busybox", "teach/busybox:v1")
    assert "teach/busybox" in cli(loaded, "images").stdout
    history = cli(loaded, "history", "teach/busybox:v1").stdout.splitlines()
    assert history[0].split()[:3] == ["IMAGE", "CREATED", "CREATED"]
    assert "sandbox-kernel image build busybox" in history[1]
    assert cli(loaded, "rmi", "teach/busybox:v1").stdout == "Untagged: teach/busybox:v1\n"
    out = tmp_path / "again.tar"
    cli(loaded, "save", "localhost/busybox", "-o", str(out))
    assert out.stat().st_size > 500_000
    removed = cli(loaded, "rmi", "localhost/busybox").stdout.splitlines()
    assert removed[0] == "Untagged: localhost/busybox:latest" and removed[1].startswith("Deleted: sha256:")
    assert list((loaded / "blobs/sha256").iterdir()) == []
    assert "Total reclaimed space" in cli(loaded, "prune").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["inspect", "nothere"], 1, "no such image: nothere"),
        (["rmi", "nothere"], 1, "no such image: nothere"),
        (["tag", "localhost/busybox", "Bad:Name"], 1, "invalid reference"),
        (["inspect", "busybox@sha256:1234"], 1, "invalid digest"),
        (["load", "/nonexistent/x.tar"], 1, "cannot open /nonexistent/x.tar"),
        (["save", "localhost/busybox", "-o", "/nonexistent/dir/x.tar"], 1, "cannot write"),
        (["frobnicate"], 2, "invalid choice"),
        (["load"], 2, "required"),
        (["image", "build", "nonsense"], 2, "no recipe"),
    ],
)
def test_errors_are_one_line(loaded, args, code, message):
    proc = cli(loaded, *args, check=False)
    assert proc.returncode == code
    assert proc.stderr.startswith("sandbox-kernel: error: ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    proc = cli(blocker / "store", "images", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("sandbox-kernel: error: cannot open the store")


def test_root_from_environment(loaded):
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_kernel", "images", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "SANDBOX_KERNEL_ROOT": str(loaded)},
    )
    assert proc.returncode == 0 and len(proc.stdout.strip()) == 12


def test_load_from_standard_input(tmp_path, base_store):
    archive = tmp_path / "bb.tar"
    save(base_store, ["localhost/busybox:latest"], archive)
    with open(archive, "rb") as fh:
        proc = subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(tmp_path / "r"), "load", "-"],
                              stdin=fh, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Loaded image: localhost/busybox:latest\n"


@pytest.mark.root
def test_full_disk_is_one_line_and_loses_nothing(tmp_path, base_store):
    archive = tmp_path / "bb.tar"
    save(base_store, ["localhost/busybox:latest"], archive)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "sk-test-full", str(small)], check=True)
    try:
        root = small / "store"
        cli(root, "load", str(archive), "-t", "localhost/first:1")
        tags_before = (root / "index.json").read_bytes()
        filler = small / "filler"
        vfs = os.statvfs(small)
        with open(filler, "wb") as fh:  # leave 400 kB: less than the layer unpacked or the 1 MB blob
            fh.write(b"\0" * (vfs.f_bavail * vfs.f_frsize - 400 * 1024))
        store = Store(root)
        with pytest.raises(StoreError, match=r"^cannot unpack layer sha256:[0-9a-f]{12}: no space left on the device"):
            store.unpack(store.resolve("localhost/first:1"))
        assert list((root / "tmp").iterdir()) == [] and list((root / "layers").iterdir()) == []
        other = small / "other"
        cli(other, "images")  # an empty store fits
        proc = cli(other, "load", str(archive), check=False)  # a 1 MB blob does not
        assert proc.returncode == 1, proc.stdout
        assert proc.stderr.startswith("sandbox-kernel: error: cannot write a blob: no space left on the device")
        assert proc.stderr.count("\n") == 1
        assert (root / "index.json").read_bytes() == tags_before
        assert list((other / "tmp").iterdir()) == []
        assert cli(other, "images", "-q").stdout == "\n"
        # Blobs that arrived before the disk filled are garbage, not images: prune frees them.
        cli(other, "prune")
        assert list((other / "blobs/sha256").iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_one_size_formatter_for_every_frontend():
    """Limits and messages in binary units, docker's tables in decimal ones; never an exponent."""
    from sandbox_kernel.runtime import format_size

    assert [format_size(n) for n in (None, 512, 4 << 20, 1536 << 20, 1000 << 20, 100_000, 5000 << 40)] == [
        "no limit", "512 B", "4 MiB", "1.5 GiB", "0.977 GiB", "97.7 KiB", "5000 TiB"]
    assert [format_size(n, docker=True) for n in (999, 4_260_000, 999_700, 67_108_864)] == [
        "999B", "4.26MB", "1MB", "67.1MB"]
    assert format_size(None, none="unlimited") == "unlimited"


def test_progress_lines_say_each_layer_once_as_docker_does(capsys):
    """The one line renderer (the CLI off a terminal, the magics): a layer's end once, from the runtime's
    events or from a server's byte counts."""
    import types

    from sandbox_kernel import progress
    from sandbox_kernel.progress import Progress

    lines = progress.Lines("Pull")
    on_event = progress.Follow("r", lines)
    for status, digest, total, done in [("resolved", "sha256:top", 0, 0), ("waiting", "sha256:" + "a" * 64, 10, 0),
                                        ("downloading", "sha256:" + "a" * 64, 10, 5),
                                        ("exists", "sha256:" + "b" * 64, 3, 3),
                                        ("complete", "sha256:" + "a" * 64, 10, 10),
                                        ("complete", "sha256:" + "a" * 64, 10, 10)]:
        on_event(types.SimpleNamespace(status=status, digest=digest, total=total, done=done))
    remote = Progress("r", layers={"sha256:" + "c" * 64: [7, 7], "sha256:" + "d" * 64: [1, 9]})
    progress.Lines("Pull")(remote)
    assert capsys.readouterr().out.splitlines() == ["bbbbbbbbbbbb: Already exists", "aaaaaaaaaaaa: Pull complete",
                                                    "cccccccccccc: Pull complete"]


def test_the_parser_is_built_for_the_command_named_and_whole_otherwise(capsys):
    """A call builds only its command's parser (argparse takes a tenth of a CLI call to build them all); an
    unknown word or a help request gets the whole parser, which names every command."""
    from sandbox_kernel.cli import build_parser, command_word, main

    assert [command_word(a) for a in (["ps"], ["--root", "/x", "ps", "-a"], ["--root=/x", "-H", "u", "run", "b"],
                                       ["-h"], [], ["--root", "/x"])] == ["ps", "ps", "run", None, None, None]
    assert list(build_parser(only="ps").commands) == ["ps"]
    assert {"ps", "run", "cp", "image", "network", "limits"} <= set(build_parser().commands)
    assert main(["frob"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frob'" in err and "'cp'" in err and "'network'" in err
