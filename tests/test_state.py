"""Container state on disk (runtime/state.py): no root needed."""

from __future__ import annotations

import os

from sandbox_kernel.runtime.state import CREATED, RUNNING, ContainerDir, ProcRef


def test_a_created_container_has_no_state_file_and_its_config_time(tmp_path):
    cdir = ContainerDir(tmp_path / "c1")
    cdir.make("host")
    cdir.config_path.write_text("{}")  # (what state needs of it: its time)
    os.utime(cdir.config_path, (1_000_000, 1_000_000))
    state = cdir.read_state()
    assert (state.status, state.created_at) == (CREATED, 1_000_000)
    with cdir.locked() as changing:
        changing.status = RUNNING
    assert (cdir.read_state().status, cdir.read_state().created_at) == (RUNNING, 1_000_000), "kept once written"


def test_proc_ref_of_this_process_is_asked_once_per_process():
    me = ProcRef.me()
    assert me is not None and me == ProcRef.of(os.getpid()) and me.alive()
    assert ProcRef.me() is me


def _record(**changes):
    from sandbox_kernel.runtime import ContainerSpec
    from sandbox_kernel.runtime.idmap import IdMap
    from sandbox_kernel.runtime.record import ContainerRecord, ProcessRecord

    record = ContainerRecord(
        id="c" * 64, name="web", image_id="sha256:" + "1" * 64, image_manifest="sha256:" + "2" * 64,
        idmap=IdMap(100000, 100000), spec=ContainerSpec(image="localhost/busybox", command=("sh",)), cgroup="c" * 32,
        hostname="web", lowerdirs=("/s/layers/a", "/s/layers/b"),
        process=ProcessRecord(("sh",), (("PATH", "/bin"), ("HOME", "/root")), "/", 0, 0, (0, 10)))
    return record.__class__(**{**record.__dict__, **changes})


def test_a_container_record_round_trips_through_its_config_json(tmp_path):
    from sandbox_kernel.runtime import Limits
    from sandbox_kernel.runtime.record import load, save

    record = _record()
    save(tmp_path / "config.json", record)
    assert load(tmp_path / "config.json") == record
    assert oct(os.stat(tmp_path / "config.json").st_mode & 0o777) == "0o600"
    updated = record.with_limits(Limits(memory=64 << 20))
    save(tmp_path / "config.json", updated)
    assert load(tmp_path / "config.json").spec.limits.memory == 64 << 20
    assert record.mount_points() == {"etc/hostname", "etc/hosts", "etc/resolv.conf"}


def test_a_record_from_before_user_namespaces_stays_one_when_saved(tmp_path):
    """No "idmap" key: it ran as the host's root. Saved again (an update), it must not become --userns=host."""
    import json

    from sandbox_kernel.runtime.record import load, save

    data = _record().to_json()
    del data["idmap"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    legacy = load(tmp_path / "config.json")
    assert legacy.legacy and legacy.idmap is None
    save(tmp_path / "config.json", legacy)
    assert "idmap" not in json.loads((tmp_path / "config.json").read_text())


def test_a_broken_config_is_one_line_naming_the_container(tmp_path):
    import pytest

    from sandbox_kernel.runtime.errors import StoreError
    from sandbox_kernel.runtime.record import load

    cdir = tmp_path / ("a" * 64)
    cdir.mkdir()
    for text in ("{not json", '{"id": "x"}', "[]"):
        (cdir / "config.json").write_text(text)
        with pytest.raises(StoreError, match=r"^container aaaaaaaaaaaa: cannot read its config") as info:
            load(cdir / "config.json")
        assert "\n" not in str(info.value)
