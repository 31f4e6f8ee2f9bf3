"""Container state on disk (runtime/state.py): no root needed."""

from __future__ import annotations

import os

from sandbox_kernel.runtime.state import CREATED, RUNNING, ContainerDir, ProcRef


def test_a_created_container_has_no_state_file_and_its_config_time(tmp_path):
    cdir = ContainerDir(tmp_path / "c1")
    cdir.make("host")
    cdir.write_config({"id": "c1"})
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
