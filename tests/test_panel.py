"""The panel (notebook/widgets.py) without a browser: ipywidgets with a dummy comm, driving real containers.

What a click or a slider does is checked where it lands: in the container's
cgroup files, in the store, in the registry.
"""

from __future__ import annotations

import pytest
from conftest import busybox_copy
from ipywidgets.widgets.tests.utils import setup_test_comm, teardown_test_comm
from leftovers import cgroup_limits, wait_for

from sandbox_kernel.client import LimitsRow, LocalClient
from sandbox_kernel.notebook.widgets import NEW, Panel
from sandbox_kernel.runtime import Containers, ContainerSpec, Limits, Store, UsageError
from sandbox_kernel.runtime.host import HostCapacity, check_limits

pytest_plugins = ["registry_infra"]
pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
BUSYBOX = "localhost/busybox:latest"
MIB = 1 << 20


@pytest.fixture(autouse=True)
def dummy_comm():
    setup_test_comm()
    yield
    teardown_test_comm()


@pytest.fixture
def client(tmp_path, base_store) -> LocalClient:
    """A store of the test's own with busybox in it (loaded from the session's store), cleaned up after."""
    store = busybox_copy(base_store, tmp_path / "copy")
    client = LocalClient(store)
    yield client
    for info in Containers(store).list(all=True):
        Containers(store).remove(info.id, force=True)


@pytest.fixture
def panel(client):
    made = Panel(client, refresh=0.2)
    yield made
    made.close()
    made._timer.join(5)
    assert not made._timer.is_alive(), "the refresh timer stops when the panel closes"


def cgroup_memory_limit(client: LocalClient, name: str) -> int | None:
    """What the kernel holds for the container (not what the config says)."""
    return cgroup_limits(client.runtime._find(name).record().cgroup)["memory"]


def test_tables_show_images_and_live_containers(panel, client):
    assert "localhost/busybox:latest" in panel.images_table.value
    assert panel.image_select.value == "localhost/busybox:latest"
    client.runtime.run_detached(ContainerSpec(image=BUSYBOX, name="ticker", limits=Limits(memory=64 * MIB),
                                              command=("sh", "-c", "while :; do :; done")))
    # the timer picks it up, and a second look gives a CPU figure (a busy loop: far above zero)
    wait_for(lambda: "ticker" in panel.containers_table.value and "running" in panel.containers_table.value,
             what="the container in the table")
    wait_for(lambda: any(r.cpu_percent and r.cpu_percent > 20 for r in panel._rows), what="a CPU percentage")
    row = next(r for r in panel._rows if r.name == "ticker")
    assert row.memory_limit == 64 * MIB and row.pids and row.uptime is not None
    assert "64 MiB" in panel.containers_table.value
    assert panel.container_select.value == "ticker" and "ticker" in panel.limits_target.options


def test_a_slider_changes_the_running_containers_cgroup_and_a_bad_value_changes_nothing(panel, client):
    client.runtime.run_detached(ContainerSpec(
        image=BUSYBOX, name="hog", limits=Limits(memory=128 * MIB),
        command=("sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 2>/dev/null; sleep 60")))
    wait_for(lambda: (client.runtime.stats("hog").usage.memory_current or 0) > 40 * MIB, what="40 MiB in use")
    panel.refresh()
    panel.limits_target.value = "hog"
    assert panel.memory.value == 128
    panel.memory.value = 96  # as a let-go slider does
    assert cgroup_memory_limit(client, "hog") == 96 * MIB
    assert client.limits("hog").memory == 96 * MIB and panel.error.value == ""
    assert "memory 96 MiB" in panel.limits_note.value
    panel.memory.value = 16  # below the 40 MiB it holds: refused, nothing changes, the slider goes back
    assert "below what the container uses now" in panel.error.value
    assert cgroup_memory_limit(client, "hog") == 96 * MIB and client.limits("hog").memory == 96 * MIB
    assert panel.memory.value == 96
    panel.pids.value = 50
    assert client.limits("hog").pids == 50 and panel.error.value == ""
    panel.cpus.value = 0.5
    assert client.limits("hog").cpus == 0.5
    # the defaults for new containers change nothing that runs
    panel.limits_target.value = NEW
    panel.memory.value = 32
    assert panel.new_container_limits().memory == 32 * MIB and client.limits("hog").memory == 96 * MIB


def test_limits_above_the_host_are_refused():
    host = HostCapacity(memory=1 << 30, cpus=2, pids=1000)
    check_limits(Limits(memory=512 * MIB, cpus=2, pids=1000), memory_used=100 * MIB, pids_used=3, host=host)
    for limits, message in [(Limits(memory=2 << 30), "more than this host has"),
                            (Limits(cpus=3), "more than this host has"),
                            (Limits(pids=1001), "more than this host allows"),
                            (Limits(memory=64 * MIB), "below what the container uses now"),
                            (Limits(pids=2), "below the container's processes now")]:
        with pytest.raises(UsageError, match=message):
            check_limits(limits, memory_used=100 * MIB, pids_used=3, host=host)


def test_set_limits_on_a_stopped_container_checks_the_host(client):
    cid = client.create(BUSYBOX, name="idle", command=("true",), start=False)
    with pytest.raises(UsageError, match="more than this host has"):
        client.set_limits(cid, LimitsRow(memory=client.host().memory + MIB, cpus=None, pids=None))
    assert client.set_limits(cid, LimitsRow(memory=64 * MIB, cpus=1.0, pids=10)) == LimitsRow(64 * MIB, 1.0, 10)


def test_pull_fills_the_bars_and_the_image_appears(client, plain_registry, tmp_path):
    from sandbox_kernel.runtime import RegistryOptions, push

    remote = plain_registry.ref("panel/busybox:1")
    push(client.store, BUSYBOX, remote, options=RegistryOptions(insecure=True))
    fresh = Panel(LocalClient(Store(tmp_path / "fresh")), refresh=60)
    try:
        seen: list[float] = []
        fresh.pull_bar.observe(lambda change: seen.append(change["new"]), names="value")
        assert "none" in fresh.images_table.value
        fresh.reference.value = remote
        fresh.insecure.value = True
        fresh.pull_button.click()
        fresh.wait_pull()
        assert fresh.pull_bar.value == 1.0 and fresh.pull_bar.bar_style == "success", fresh.error.value
        assert seen[-1] == 1.0 and seen == sorted(seen), "the bar only goes forward"
        assert fresh.layer_bars.children and all(bar.value == 1.0 for bar in fresh.layer_bars.children)
        assert "pulled" in fresh.pull_label.value and remote in fresh.images_table.value
        # a registry that is not there: one line in the panel, nothing raised
        fresh.reference.value = "127.0.0.1:9/nothing:1"
        fresh.pull_button.click()
        fresh.wait_pull()
        assert fresh.pull_bar.bar_style == "danger" and "cannot reach registry" in fresh.error.value
        assert "Traceback" not in fresh.error.value and "\n" not in fresh.error.value
    finally:
        fresh.close()


def test_buttons_stop_snapshot_start_remove_and_history(panel, client):
    client.runtime.run_detached(ContainerSpec(image=BUSYBOX, name="work",
                                              command=("sh", "-c", "echo hi > /note; sleep 60")))
    wait_for(lambda: client.runtime.running("work"), what="work running")
    panel.refresh()
    panel.container_select.value = "work"
    panel.snapshot_ref.value = "localhost/lesson:step1"
    panel.snapshot_button.click()
    assert panel.error.value == "" and "localhost/lesson:step1" in panel.images_table.value
    panel.stop_button.click()
    assert "exited" in panel.containers_table.value
    panel.start_button.click()
    assert client.runtime.running("work")
    panel.image_select.value = "localhost/lesson:step1"
    panel.history_button.click()
    assert "sk-history" in panel.history_view.value
    panel.remove_image_button.click()  # its image is in use by nobody: it goes
    assert "localhost/lesson:step1" not in panel.images_table.value
    panel.remove_button.click()
    assert "work" not in panel.containers_table.value and panel.error.value == ""
    panel.remove_button.click()  # nothing selected now: a sentence, not a traceback
    assert "no container selected" in panel.error.value
    panel.snapshot_ref.value = ""
    panel.snapshot_button.click()
    assert "type a reference" in panel.error.value


def test_percent_container_panel_shows_the_kernels_store_and_sets_its_defaults(client):
    from sandbox_kernel.notebook.magics import ContainerMagics

    magics = ContainerMagics(None, store=client.store)
    shown = magics._cmd_panel(["--refresh", "30"])
    try:
        assert isinstance(shown, Panel) and shown.refresh_every == 30
        assert "localhost/busybox:latest" in shown.images_table.value
        defaults = magics.policy.defaults()  # the admin's (c.SandboxPolicy), shown
        assert shown.limits_target.value == NEW and shown.pids.value == defaults.pids
        shown.memory.value = 200
        wanted = Limits(memory=200 * MIB, cpus=defaults.cpus, pids=defaults.pids, disk=defaults.disk)
        assert magics.default_limits == wanted, "new %%container containers get them"
        again = magics._cmd_panel([])
        assert shown.closed and not again.closed, "running the cell again closes the old panel (and its timer)"
    finally:
        shown.close()
        magics.shutdown()
