"""The panel: images, containers and their limits, in plain ipywidgets (no front-end build).

``sandbox_kernel.Panel()`` (or ``%container panel``) shows three tabs:

* Images: the local images; a reference box and Pull, with a bar per layer and
  one for the whole pull (bytes and speed); Remove; History.
* Containers: name, image, status, uptime, CPU %, memory used / limit, pids;
  Start, Stop, Snapshot (to the reference typed beside it), Remove. A
  background timer refreshes the table while the panel is open.
* Limits: memory, CPU and pids sliders for the selected container, applied to
  its cgroup as soon as a slider is let go, or defaults for new containers.
  What cannot be applied (below what the container uses, above what the host
  has) is refused by the runtime: the slider goes back and the error shows.

Every action goes through a :class:`~sandbox_kernel.client.Client` (the same
calls the server and the remote magics make) and every error lands in the
panel's error line as one readable sentence, never as a traceback.
"""

from __future__ import annotations

import functools
import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from ..client import Client, ContainerRow, LimitsRow, LocalClient, limits_row
from ..progress import Progress
from ..runtime import Limits, format_size

NEW = "(defaults for new containers)"
_MIB = 1 << 20


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _table(css: str, headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}"><i>none</i></td></tr>'
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Panel(w.VBox):
    """Images, containers and limits of a client (this machine's runtime by default)."""

    def __init__(self, client: Client | None = None, refresh: float = 2.0, *,
                 defaults: LimitsRow | None = None, on_defaults: Callable[[LimitsRow], None] | None = None,
                 **kwargs: Any):
        """``defaults``: the limits new containers get, which the Limits tab shows and changes
        (``on_defaults`` hears each change: ``%container panel`` gives the kernel's new cells them)."""
        self.client: Client = client or LocalClient()
        self.refresh_every = refresh
        self._closed = threading.Event()
        self._busy = threading.Lock()
        self._syncing = False
        self._rows: list[ContainerRow] = []
        self.defaults = defaults or limits_row(Limits())  # (pids are limited by default)
        self._on_defaults = on_defaults
        self._pull_thread: threading.Thread | None = None
        host = self.client.host()
        self.host = host

        self.error = w.HTML(value="", layout=w.Layout(min_height="1.5em"))
        self.error.add_class("sk-error")

        # -- images
        self.reference = w.Text(placeholder="busybox:latest or registry/name:tag", description="Image")
        self.insecure = w.Checkbox(value=False, description="insecure (http)", indent=False)
        self.pull_button = w.Button(description="Pull", button_style="primary", icon="download")
        self.pull_bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, description="Pull")
        self.pull_bar.add_class("sk-pull-bar")
        self.pull_label = w.Label(value="")
        self.layer_bars = w.VBox()
        self.images_table = w.HTML()
        self.image_select = w.Dropdown(description="Selected", options=[])
        self.remove_image_button = w.Button(description="Remove", icon="trash")
        self.history_button = w.Button(description="History", icon="history")
        self.history_view = w.HTML()
        images_tab = w.VBox([
            w.HBox([self.reference, self.insecure, self.pull_button]),
            w.HBox([self.pull_bar, self.pull_label]), self.layer_bars,
            self.images_table,
            w.HBox([self.image_select, self.remove_image_button, self.history_button]),
            self.history_view,
        ])

        # -- containers
        self.containers_table = w.HTML()
        self.container_select = w.Dropdown(description="Selected", options=[])
        self.start_button = w.Button(description="Start", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop")
        self.snapshot_ref = w.Text(placeholder="snapshot as repo:tag", layout=w.Layout(width="14em"))
        self.snapshot_button = w.Button(description="Snapshot", icon="camera")
        self.remove_button = w.Button(description="Remove", icon="trash")
        containers_tab = w.VBox([
            self.containers_table,
            w.HBox([self.container_select, self.start_button, self.stop_button, self.remove_button]),
            w.HBox([self.snapshot_ref, self.snapshot_button]),
        ])

        # -- limits
        wide = {"description_width": "7em"}
        memory_max = max(4, host.memory // _MIB)
        pids_max = min(host.pids, 65536)
        self.limits_target = w.Dropdown(description="For", options=[NEW], value=NEW, style=wide)
        self.memory = w.IntSlider(value=memory_max, min=4, max=memory_max, step=4, description="Memory MiB",
                                  continuous_update=False, style=wide, layout=w.Layout(width="32em"))
        self.cpus = w.FloatSlider(value=float(host.cpus), min=0.05, max=float(host.cpus), step=0.05,
                                  description="CPUs", continuous_update=False, style=wide,
                                  layout=w.Layout(width="32em"))
        self.pids = w.IntSlider(value=pids_max, min=1, max=pids_max, description="PIDs", continuous_update=False,
                                style=wide, layout=w.Layout(width="32em"))
        self.limits_note = w.Label(value="")
        limits_tab = w.VBox([self.limits_target, self.memory, self.cpus, self.pids, self.limits_note])

        self.tabs = w.Tab(children=[images_tab, containers_tab, limits_tab])
        for i, title in enumerate(("Images", "Containers", "Limits")):
            self.tabs.set_title(i, title)
        super().__init__([self.tabs, self.error], **kwargs)
        self.add_class("sk-panel")

        self.pull_button.on_click(self._guarded(self._on_pull))
        self.remove_image_button.on_click(self._guarded(self._on_remove_image))
        self.history_button.on_click(self._guarded(self._on_history))
        self.start_button.on_click(self._guarded(lambda _: self._act(self.client.start)))
        self.stop_button.on_click(self._guarded(lambda _: self._act(self.client.stop)))
        self.remove_button.on_click(self._guarded(lambda _: self._act(lambda ref: self.client.remove(ref, force=True))))
        self.snapshot_button.on_click(self._guarded(self._on_snapshot))
        self.limits_target.observe(self._guarded(self._on_target), names="value")
        for slider in (self.memory, self.cpus, self.pids):
            slider.observe(self._guarded(self._on_slider), names="value")

        self._guarded(lambda: self.refresh(images=True))()
        self._guarded(self._show_limits)()
        self._timer = threading.Thread(target=self._tick, name="sandbox-kernel-panel", daemon=True)
        self._timer.start()

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _guarded(self, handler: Callable[..., Any]) -> Callable[..., None]:
        """``handler`` with its errors shown on the error line (one sentence), never raised into the log."""

        @functools.wraps(handler)
        def call(*args: Any) -> None:
            try:
                handler(*args)
            except Exception as exc:  # a panel never throws at the user: it says what went wrong
                self.show_error(exc)

        return call

    def show_error(self, exc: BaseException | str | None) -> None:
        if not exc:
            self.error.value = ""
            return
        text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
        self.error.value = f'<span style="color:#b00020">{html.escape(text.splitlines()[0])}</span>'

    def _tick(self) -> None:
        while not self._closed.wait(self.refresh_every):
            try:
                self.refresh()
            except Exception as exc:
                self.show_error(exc)

    def close(self) -> None:
        """Stop the timer and close the panel's widgets (a closed box leaves its children open)."""
        self._closed.set()
        stack: list[Any] = list(self.children)
        while stack:
            widget = stack.pop()
            stack.extend(getattr(widget, "children", ()))
            widget.close()
        super().close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- refreshing -----------------------------------------------------------------------------------------------

    def refresh(self, images: bool = False) -> None:
        """Read the containers (and the images) again and show them."""
        with self._busy:
            if images:
                self._show_images()
            self._rows = self.client.containers(all=True)
            self._show_containers()

    def _show_images(self) -> None:
        rows = self.client.images()
        self.images_table.value = _table(
            "sk-images", ["image", "id", "size", "created"],
            [[r.ref, r.id.split(":", 1)[-1][:12], _shown(r.size), (r.created or "")[:19].replace("T", " ")]
             for r in rows])
        refs = [r.ref for r in rows]
        keep = self.image_select.value if self.image_select.value in refs else (refs[0] if refs else None)
        self.image_select.options = refs
        self.image_select.value = keep

    def _show_containers(self) -> None:
        rows = self._rows
        self.containers_table.value = _table(
            "sk-containers", ["name", "image", "status", "uptime", "CPU %", "memory", "pids"],
            [[r.name, r.image, r.status, _duration(r.uptime),
              "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}",
              f"{_shown(r.memory)} / {_shown(r.memory_limit) if r.memory_limit else 'no limit'}",
              "-" if r.pids is None else f"{r.pids} / {r.pids_limit or 'no limit'}"] for r in rows])
        names = [r.name for r in rows]
        if list(self.container_select.options) != names:
            keep = self.container_select.value if self.container_select.value in names else None
            self.container_select.options = names
            self.container_select.value = keep if keep is not None else (names[0] if names else None)
        targets = [NEW, *[r.name for r in rows if r.status in ("running", "paused", "created", "exited")]]
        if list(self.limits_target.options) != targets:
            keep = self.limits_target.value if self.limits_target.value in targets else NEW
            self._syncing = True
            try:
                self.limits_target.options = targets
                self.limits_target.value = keep
            finally:
                self._syncing = False
            self._show_limits()

    # -- images ---------------------------------------------------------------------------------------------------

    def _on_pull(self, _button: Any = None) -> None:
        reference = self.reference.value.strip()
        if not reference:
            raise ValueError("type an image reference to pull, such as busybox:latest")
        self.show_error(None)
        self.pull_button.disabled = True
        self.pull_bar.value = 0.0
        self.pull_bar.bar_style = ""
        self.pull_label.value = f"resolving {reference}"
        for bar in self.layer_bars.children:
            bar.close()
        self.layer_bars.children = ()
        thread = threading.Thread(target=self._pull, args=(reference, self.insecure.value), daemon=True,
                                  name="sandbox-kernel-pull")
        self._pull_thread = thread
        thread.start()

    def _pull(self, reference: str, insecure: bool) -> None:
        bars: dict[str, w.FloatProgress] = {}
        last = [0.0]

        def progress(state: Progress) -> None:
            now = time.monotonic()
            if not state.finished and now - last[0] < 0.1:
                return
            last[0] = now
            for digest, (done, total) in state.layers.items():
                bar = bars.get(digest)
                if bar is None:
                    bar = bars[digest] = w.FloatProgress(value=0.0, min=0.0, max=1.0,
                                                         description=digest.split(":", 1)[-1][:12])
                    bar.add_class("sk-layer-bar")
                    self.layer_bars.children = tuple(bars.values())
                bar.value = done / total if total else 0.0
            self.pull_bar.value = state.fraction
            self.pull_label.value = f"{_shown(state.done)} of {_shown(state.total)}, {_shown(state.speed)}/s"

        try:
            digest = self.client.pull(reference, insecure=insecure, progress=progress)
            self.pull_bar.value = 1.0
            self.pull_bar.bar_style = "success"
            self.pull_label.value = f"pulled {reference} ({digest.split(':', 1)[-1][:12]})"
            self.refresh(images=True)
        except Exception as exc:
            self.pull_bar.bar_style = "danger"
            self.pull_label.value = "pull failed"
            self.show_error(exc)
        finally:
            self.pull_button.disabled = False

    def wait_pull(self, timeout: float = 60.0) -> None:
        """Wait for the pull the Pull button started (for scripts and tests)."""
        thread = self._pull_thread
        if thread is not None:
            thread.join(timeout)

    def _on_remove_image(self, _button: Any = None) -> None:
        if not self.image_select.value:
            raise ValueError("no image selected")
        self.client.remove_image(self.image_select.value)
        self.show_error(None)
        self.history_view.value = ""
        self.refresh(images=True)

    def _on_history(self, _button: Any = None) -> None:
        if not self.image_select.value:
            raise ValueError("no image selected")
        rows = self.client.history(self.image_select.value)
        self.history_view.value = _table(
            "sk-history", ["created", "created by", "size", "comment"],
            [[(r.get("Created") or "")[:19].replace("T", " "), r.get("CreatedBy") or "", _shown(r.get("Size") or 0),
              r.get("Comment") or ""] for r in rows])

    # -- containers -----------------------------------------------------------------------------------------------

    def _selected(self) -> str:
        if not self.container_select.value:
            raise ValueError("no container selected")
        return str(self.container_select.value)

    def _act(self, action: Callable[[str], Any]) -> None:
        action(self._selected())
        self.show_error(None)
        self.refresh()

    def _on_snapshot(self, _button: Any = None) -> None:
        target = self.snapshot_ref.value.strip()
        if not target:
            raise ValueError("type a reference for the snapshot, such as lesson:step1")
        name = self._selected()
        image_id = self.client.commit(name, target)
        self.show_error(None)
        self.refresh(images=True)
        self.history_view.value = f"snapshot of {html.escape(name)}: {html.escape(target)} ({image_id[:19]})"

    # -- limits ---------------------------------------------------------------------------------------------------

    def _current_limits(self) -> LimitsRow:
        target = self.limits_target.value
        if target == NEW or target is None:
            return self.defaults
        return self.client.limits(target)

    def _show_limits(self) -> None:
        limits = self._current_limits()
        self._syncing = True
        try:
            self.memory.value = self.memory.max if limits.memory is None else max(
                self.memory.min, min(self.memory.max, limits.memory // _MIB))
            self.cpus.value = self.cpus.max if limits.cpus is None else max(
                self.cpus.min, min(self.cpus.max, limits.cpus))
            self.pids.value = self.pids.max if limits.pids is None else max(
                self.pids.min, min(self.pids.max, limits.pids))
        finally:
            self._syncing = False
        self.limits_note.value = _limits_text(limits)

    def _on_target(self, _change: Any = None) -> None:
        if not self._syncing:
            self._show_limits()

    def _slider_limits(self) -> LimitsRow:
        return LimitsRow(memory=None if self.memory.value >= self.memory.max else self.memory.value * _MIB,
                         cpus=None if self.cpus.value >= self.cpus.max else round(self.cpus.value, 2),
                         pids=None if self.pids.value >= self.pids.max else self.pids.value)

    def _on_slider(self, _change: Any = None) -> None:
        if self._syncing:
            return
        wanted = self._slider_limits()
        target = self.limits_target.value
        try:
            if target == NEW or target is None:
                if self._on_defaults is not None:
                    self._on_defaults(wanted)  # (a Limits that cannot be: raises, nothing changes)
                self.defaults = wanted
                applied = wanted
            else:
                applied = self.client.set_limits(target, wanted)
        except Exception:
            self._show_limits()  # back to what holds
            raise
        self.show_error(None)
        self.limits_note.value = _limits_text(applied)

    def new_container_limits(self) -> LimitsRow:
        """The limits the panel's defaults give a new container."""
        return self.defaults


def _limits_text(limits: LimitsRow) -> str:
    memory = "no limit" if limits.memory is None else _shown(limits.memory)
    cpus = "no limit" if limits.cpus is None else f"{limits.cpus:g}"
    pids = "no limit" if limits.pids is None else str(limits.pids)
    return f"applied: memory {memory}, cpus {cpus}, pids {pids}"


def _shown(n: float | None) -> str:
    return format_size(n, none="-")
