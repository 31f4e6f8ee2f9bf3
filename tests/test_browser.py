"""The panel in a real JupyterLab, in headless Chromium (Debian's), driven by Playwright.

JupyterLab on 127.0.0.1 with a token and a store of the test's own; a notebook
whose one cell shows the panel. The test runs the cell, types a reference of
the test's registry, clicks Pull, watches the bar reach 100% and the image
appear in the table, moves the memory slider of a running container (and
checks its cgroup), and saves a screenshot. It asserts on the DOM.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import pytest
from conftest import IS_ROOT, busybox_copy
from jupyter_infra import jupyter_server

from sandbox_kernel.runtime import Containers, ContainerSpec, Limits, RegistryOptions, push

pytest_plugins = ["registry_infra"]
pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]
CHROMIUM = "/usr/bin/chromium"
BUSYBOX = "localhost/busybox:latest"
MIB = 1 << 20
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]


def notebook(*sources: str) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {}, "outputs": [],
                       "source": source} for i, source in enumerate(sources)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def need_chromium() -> None:
    """Debian's chromium; as root (CI) a missing one is a failed set-up, not a skip."""
    if not os.path.exists(CHROMIUM):
        if IS_ROOT:
            pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh should have installed it")
        pytest.skip(f"{CHROMIUM} is not installed")


def launch(pw, home: Path):
    """Debian's chromium, headless; what it writes (crash reports, dconf) stays in ``home``."""
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env=env)


@contextlib.contextmanager
def lab(tmp_path: Path, store_root: Path, name: str, *cells: str):
    """JupyterLab on a notebook of ``cells`` (named ``name``), in headless chromium: yields its page."""
    work = tmp_path / "lab"
    (work / "notebooks").mkdir(parents=True)
    (work / "notebooks" / name).write_text(json.dumps(notebook(*cells)))
    from playwright.sync_api import sync_playwright

    with jupyter_server(work, store_root, lab=True) as server, sync_playwright() as pw:
        browser = launch(pw, tmp_path / "browser-home")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{server.url}/lab/tree/{name}?token={server.token}")
            yield page
        finally:
            browser.close()


def run_cells(page, count: int) -> None:
    """Shift+Enter through the notebook's first ``count`` cells, each to its end, once the kernel is idle."""
    from playwright.sync_api import expect

    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=90_000)
    page.locator(".jp-CodeCell").first.locator(".cm-content").click()
    for n in range(1, count + 1):
        page.keyboard.press("Shift+Enter")
        prompt = page.locator(".jp-CodeCell").nth(n - 1).locator(".jp-InputArea-prompt")
        expect(prompt).to_have_text(re.compile(rf"\[{n}\]"), timeout=120_000)


@pytest.fixture
def output_dir(request, tmp_path) -> Path:
    """Where the screenshot goes: $SANDBOX_KERNEL_TEST_OUTPUT/<test> if set, else the test's temp dir."""
    base = os.environ.get("SANDBOX_KERNEL_TEST_OUTPUT")
    out = Path(base) / request.node.name if base else tmp_path / "output"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_pull_and_slider_in_jupyterlab(base_store, plain_registry, tmp_path, output_dir):
    need_chromium()
    from playwright.sync_api import expect

    store = busybox_copy(base_store, tmp_path / "copy")
    remote = plain_registry.ref("browser/busybox:1")
    push(store, BUSYBOX, remote, options=RegistryOptions(insecure=True))
    containers = Containers(store)
    containers.run_detached(ContainerSpec(image=BUSYBOX, name="lab-demo", limits=Limits(memory=128 * MIB),
                                          command=("sleep", "600")))
    try:
        with lab(tmp_path, store.root, "panel.ipynb",
                 "import sandbox_kernel\npanel = sandbox_kernel.Panel(refresh=1)\npanel") as page:
            cell = page.locator(".jp-CodeCell").first
            expect(cell).to_be_visible()
            # the kernel is up and idle (its name and state in the status bar) before the cell runs
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=90_000)
            cell.locator(".cm-content").click()
            page.keyboard.press("Shift+Enter")
            expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[1\]"), timeout=90_000)
            panel = page.locator(".sk-panel")
            try:
                expect(panel).to_be_visible(timeout=60_000)
            except AssertionError:
                page.screenshot(path=str(output_dir / "no-panel.png"), full_page=True)
                raise AssertionError(f"no panel; the cell's output: {cell.locator('.jp-OutputArea').inner_text()!r}"
                                     ) from None
            expect(panel.locator("table.sk-images")).to_contain_text("localhost/busybox:latest")
            expect(panel.locator("table.sk-containers")).to_contain_text("lab-demo")

            # Pull: the bar goes to 100% and the image shows up in the table
            panel.get_by_placeholder("busybox:latest or registry/name:tag").fill(remote)
            panel.get_by_text("insecure (http)").click()
            panel.get_by_role("button", name="Pull").click()
            bar = panel.locator(".sk-pull-bar .progress-bar")
            expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"), timeout=60_000)
            expect(panel.locator("table.sk-images")).to_contain_text(remote)
            expect(panel.locator(".widget-label", has_text="pulled")).to_be_visible()
            page.screenshot(path=str(output_dir / "pulled.png"), full_page=True)

            # Limits: pick the running container, set the memory slider to 96 MiB
            panel.get_by_role("tab", name="Limits").click()
            panel.locator(".widget-dropdown select").last.select_option("lab-demo")
            memory = panel.locator(".widget-slider", has_text="Memory MiB")
            readout = memory.locator(".widget-readout")
            expect(readout).to_have_text("128")
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("96")
            page.keyboard.press("Enter")
            expect(panel.locator(".widget-label", has_text="applied: memory 96 MiB")).to_be_visible()
            assert containers.get("lab-demo").spec.limits.memory == 96 * MIB
            assert containers.stats("lab-demo").limits.memory == 96 * MIB
            expect(panel.locator(".sk-error")).not_to_contain_text("Traceback")

            page.screenshot(path=str(output_dir / "panel.png"), full_page=True)
            assert (output_dir / "panel.png").stat().st_size > 10_000
    finally:
        for info in containers.list(all=True):
            containers.remove(info.id, force=True)


# The container's output, trusted (--trust-output) and not. Each script tries to mark the notebook's page.
TRUSTED_CELL = """%%container frames --trust-output
class Page:
    def _repr_html_(self):
        return ("<p id='inner'>not run</p><script>var p = document.getElementById('inner');"
                "p.textContent = 'ran in the frame';"
                "try { parent.document.body.dataset.owned = 'html'; } catch (e) { p.textContent += ' / ' + e.name; }"
                "</script>")

class Code:
    def _repr_javascript_(self):
        return ("try { parent.document.body.dataset.owned = 'js'; } catch (e) {}"
                "document.body.textContent = 'javascript ran in its frame';")

display(Page())
display(Code())
"""
UNTRUSTED_CELL = """%%container plain
class Evil:
    def _repr_html_(self):
        return ("<b id='evil'>bold</b><img src=x onerror=\\"document.body.dataset.owned = 'onerror'\\">"
                "<img src='http://127.0.0.1:9/tracker-html.png'>")

class Notes:
    def _repr_markdown_(self):
        return ("**notes** [click](javascript:document.body.dataset.owned='md') "
                "<img src=y onerror=\\"document.body.dataset.owned = 'md-onerror'\\"> "
                "![remote](http://127.0.0.1:9/tracker-md.png) "
                "<script>document.body.dataset.owned = 'md-script'</script>")

display(Evil())
display(Notes())
"""


def test_container_scripts_never_run_in_the_notebooks_page(debian_store, tmp_path, output_dir):
    """Trusted HTML and JavaScript run, in sandboxed frames that cannot touch the page; untrusted HTML and
    Markdown run nothing and fetch no remote image. Checked in the page itself."""
    need_chromium()
    from playwright.sync_api import expect

    containers = Containers(debian_store)
    fetched: list[str] = []
    try:
        with lab(tmp_path, debian_store.root, "frames.ipynb", "%load_ext sandbox_kernel", TRUSTED_CELL,
                 UNTRUSTED_CELL) as page:
            page.on("request", lambda request: fetched.append(request.url) if "tracker" in request.url else None)
            run_cells(page, 3)
            cells = page.locator(".jp-CodeCell")
            try:
                expect(cells.nth(1).locator("iframe.sk-frame")).to_have_count(2)
                expect(cells.nth(2).locator("b", has_text="bold")).to_be_visible()
            except AssertionError:
                page.screenshot(path=str(output_dir / "frames-missing.png"), full_page=True)
                outputs = [cells.nth(i).locator(".jp-OutputArea").inner_text() for i in (1, 2)]
                raise AssertionError(f"outputs: {outputs}") from None
            frames = cells.nth(1).frame_locator("iframe.sk-frame")
            expect(frames.first.locator("#inner")).to_have_text("ran in the frame / SecurityError")
            expect(frames.nth(1).locator("body")).to_have_text("javascript ran in its frame")
            # our sizer (in the page) took the frame's height from its message
            first = cells.nth(1).locator("iframe.sk-frame").first
            expect(first).not_to_have_attribute("style", re.compile(r"height:\s*320px"))
            expect(cells.nth(2).locator("strong", has_text="notes")).to_be_visible()
            expect(cells.nth(2).locator("a")).to_have_count(0)  # the javascript: link is text, nothing else
            cells.nth(2).get_by_text("click", exact=False).first.click()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(output_dir / "frames.png"), full_page=True)
            assert page.evaluate("document.body.dataset.owned") is None
            assert page.evaluate("document.title") != "owned"
            assert fetched == [], "a remote image in an untrusted output was fetched"
    finally:
        for name in ("frames", "plain"):
            with contextlib.suppress(Exception):
                containers.remove(name, force=True)


def test_the_sandboxed_kernel_in_jupyterlab(science_store, tmp_path, output_dir, monkeypatch):
    """Pick "Python 3 (sandbox)" in JupyterLab's launcher, run a cell that plots, interrupt a sleeping cell,
    restart: each as a user does it, checked in the page; the kernel's container is gone with the server."""
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    from sandbox_kernel.kernel import kernelspec
    from sandbox_kernel.kernel.provisioner import KERNEL_LABEL

    work = tmp_path / "lab"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(work / "data"))
    kernelspec.install("sandbox", kernelspec.settings("localhost/debian-science:latest", memory="1g"),
                       display_name="Python 3 (sandbox)", user=True)
    containers = Containers(science_store)

    def kernel_containers() -> list:
        return [c for c in containers.list(all=True) if KERNEL_LABEL in dict(c.spec.labels)]

    def run(cell: int, code: str, *, wait: bool = True) -> None:
        """Type ``code`` into the notebook's last cell (cell ``cell``), run it with Shift+Enter."""
        editor = page.locator(".jp-CodeCell").nth(cell).locator(".cm-content")
        editor.click()
        page.keyboard.insert_text(code)
        page.keyboard.press("Shift+Enter")
        if wait:
            prompt = page.locator(".jp-CodeCell").nth(cell).locator(".jp-InputArea-prompt")
            expect(prompt).to_have_text(re.compile(r"\[\d+\]"), timeout=120_000)

    with jupyter_server(work, science_store.root, lab=True) as server, sync_playwright() as pw:
        browser = launch(pw, tmp_path / "browser-home")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{server.url}/lab?token={server.token}")
            page.locator(".jp-LauncherCard", has_text="Python 3 (sandbox)").first.click()
            expect(page.get_by_text("Python 3 (sandbox) | Idle")).to_be_visible(timeout=120_000)
            assert len(kernel_containers()) == 1
            cells = page.locator(".jp-CodeCell")
            try:
                run(0, "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9]); plt.show()")
                expect(cells.nth(0).locator(".jp-RenderedImage img")).to_be_visible()
                run(1, "x = 41\nimport time; time.sleep(300)", wait=False)
                expect(cells.nth(1).locator(".jp-InputArea-prompt")).to_have_text("[*]:")
                page.wait_for_timeout(1000)  # (the cell is running in the kernel, not just queued)
                page.keyboard.press("Escape")
                page.keyboard.press("i")
                page.keyboard.press("i")
                expect(cells.nth(1).locator(".jp-OutputArea")).to_contain_text("KeyboardInterrupt")
                run(2, "print(x + 1)")
                expect(cells.nth(2).locator(".jp-OutputArea")).to_have_text("42")
                page.keyboard.press("Escape")
                page.keyboard.press("0")
                page.keyboard.press("0")
                page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click()  # "Restart"
                expect(page.get_by_text("Python 3 (sandbox) | Idle")).to_be_visible(timeout=120_000)
                run(3, "print('x' in globals())")
                expect(cells.nth(3).locator(".jp-OutputArea")).to_have_text("False")
                assert len(kernel_containers()) == 1  # a new container, the old one gone
            finally:
                page.screenshot(path=str(output_dir / "sandboxed-kernel.png"), full_page=True)
        finally:
            browser.close()
    assert kernel_containers() == []
