"""``%%container`` through IPython's InteractiveShell: state, streaming, rich output, errors, interrupts, limits.

Real containers from the project's own images (debian-python for Python cells,
busybox for a shell-only container, debian-science for numpy and matplotlib).
Every container a test makes is removed at the end (the magics' shutdown).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from leftovers import cgroup_limits, wait_for

from sandbox_kernel.notebook.magics import ContainerMagics, Table
from sandbox_kernel.notebook.session import CellError, CellKilled
from sandbox_kernel.runtime import Containers, Store, build

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]
pytest_plugins = ["registry_infra"]


WATCHERS: list[Any] = []  # called with (stream, text) for each piece any Recorder gets, as it comes


class Recorder:
    """A sink that keeps what a cell sent, with the time each piece came."""

    def __init__(self, trusted: bool = False):
        from sandbox_kernel.notebook import sanitize

        self.trusted = trusted
        self.sanitize = sanitize
        self.events: list[tuple[str, Any]] = []  # in the order they came

    def stream(self, name: str, text: str) -> None:
        self.events.append((name, text))
        for watcher in list(WATCHERS):
            watcher(name, text)

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.events.append(("display", self.sanitize.sanitize(data, metadata, self.trusted)[0]))

    def text(self, name: str = "stdout") -> str:
        return "".join(e[1] for e in self.events if e[0] == name)

    def displays(self) -> list[dict[str, Any]]:
        return [e[1] for e in self.events if e[0] == "display"]


@pytest.fixture(scope="module")
def magic_store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("magic") / "store")
    build(store, "busybox")
    build(store, "debian-python")
    return store


def recorded_shell(store: Store):
    """IPython's shell with fresh container magics on ``store`` whose cells' output is recorded
    (``shell.recorders``); at the end the magics shut down and no container of ``store`` is left."""
    shell = start_ipython() or get_ipython()
    magics = ContainerMagics(shell, store=store)
    shell.register_magics(magics)
    recorders: list[Recorder] = []

    def factory(trusted: bool) -> Recorder:
        recorders.append(Recorder(trusted))
        return recorders[-1]

    magics.sink_factory = factory
    shell.recorders = recorders
    shell.sk = magics
    yield shell
    magics.shutdown()
    left = [i.name for i in Containers(store).list(all=True)]
    assert left == [], f"containers left: {left}"


@pytest.fixture
def ip(magic_store):
    yield from recorded_shell(magic_store)


def run(ip, line: str, cell: str) -> Any:
    return ip.run_cell_magic("container", line, cell)


def last(ip) -> Recorder:
    return ip.recorders[-1]


class when_seen:  # (a context manager, named for how it reads)
    """``with when_seen("armed", action):`` runs ``action()`` (in a thread) the first time a cell's output
    contains "armed": an event, not a delay, orders what the test does after what the cell did."""

    def __init__(self, text: str, action: Any):
        self.text, self.action, self.fired = text, action, threading.Event()

    def __call__(self, _name: str, text: str) -> None:
        if self.text in text and not self.fired.is_set():
            self.fired.set()
            threading.Thread(target=self.action, daemon=True).start()

    def __enter__(self) -> when_seen:
        WATCHERS.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        WATCHERS.remove(self)


def interrupt() -> None:
    """A real SIGINT to this process, as the notebook's interrupt sends one to the kernel."""
    os.kill(os.getpid(), signal.SIGINT)


def release(ip, container: str, flag: str = "/tmp/release") -> Any:
    """An action that makes ``flag`` in the container (a cell waiting for it goes on)."""
    return lambda: ip.sk.containers.exec(container, ["touch", flag], stdin=None, stdout=None, stderr=None)


def test_state_persists_and_last_value_is_the_result(ip):
    assert run(ip, "a", "x = 41\nimport json") is None
    value = run(ip, "a", "x + 1")
    assert value.data["text/plain"] == "42"
    assert run(ip, "a", "json.dumps([x]);") is None  # a trailing ; hides the value, as in IPython
    run(ip, "a", "open('/tmp/kept', 'w').write('files stay')")
    assert run(ip, "a", "open('/tmp/kept').read()").data["text/plain"] == "'files stay'"


def test_streams_arrive_before_the_cell_ends(ip):
    """The cell waits until the test has seen its partial line (no newline yet): the test lets it go on only
    then. Output kept until the cell's end would leave the cell waiting: it gives up after 60 s and says so."""
    run(ip, "s", "pass")
    cell = ("import os, sys, time\nprint('first', flush=True)\nsys.stdout.write('partial')\n"
            "deadline = time.monotonic() + 60\n"
            "while not os.path.exists('/tmp/release') and time.monotonic() < deadline:\n    time.sleep(0.01)\n"
            "print(' line' if os.path.exists('/tmp/release') else ' NEVER RELEASED')\n"
            "import subprocess; subprocess.run(['echo', 'from a child'])\nprint('to stderr', file=sys.stderr)")
    with when_seen("partial", release(ip, "s")) as seen:
        run(ip, "s", cell)
    assert seen.fired.is_set()
    rec = last(ip)
    assert rec.text() == "first\npartial line\nfrom a child\n", "the partial line came before the cell went on"
    assert rec.text("stderr") == "to stderr\n"


def test_output_keeps_its_order_around_display(ip):
    run(ip, "o", "print('a')\ndisplay(1)\nprint('b')")
    kinds: list[tuple[str, str]] = []
    for name, text in last(ip).events:  # (print writes the text and the newline apart)
        text = text if name != "display" else text["text/plain"]
        if kinds and name == "stdout" == kinds[-1][0]:
            kinds[-1] = (name, kinds[-1][1] + text)
        else:
            kinds.append((name, text))
    assert kinds == [("stdout", "a\n"), ("display", "1"), ("stdout", "b\n")]


def test_rich_display_types(ip):
    cell = '''
class Rich:
    def _repr_html_(self): return "<b>bold</b><script>alert(1)</script><img src=x onerror=alert(2)>"
    def _repr_markdown_(self): return "**md**"
    def _repr_svg_(self): return "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(3)</script></svg>"
    def _repr_png_(self): return b"\\x89PNG fake"
    def __repr__(self): return "Rich()"
display(Rich())
Rich()
'''
    value = run(ip, "r", cell)
    shown = last(ip).displays()[0]
    assert shown["text/plain"] == "Rich()"
    assert "<b>bold</b>" in shown["text/html"] and "script" not in shown["text/html"]
    assert "onerror" not in shown["text/html"]
    assert "text/markdown" not in shown  # (Markdown is rendered and cleaned here; the HTML wins anyway)
    assert base64.b64decode(shown["image/png"]) == b"\x89PNG fake"
    assert "image/svg+xml" not in shown  # an SVG comes back only as an <img> (text/html here already)
    assert "script" not in value.data["text/html"]
    trusted = run(ip, "r --trust-output", "Rich()")
    frame = trusted.data["text/html"]  # the script runs, in a frame of an opaque origin of its own
    assert frame.startswith('<iframe ') and 'sandbox="allow-scripts"' in frame
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in frame


def test_svg_alone_becomes_an_image(ip):
    value = run(ip, "v", "class S:\n    def _repr_svg_(self): return '<svg onload=\"alert(1)\"></svg>'\nS()")
    assert value.data["text/html"].startswith('<img src="data:image/svg+xml;base64,')
    assert "image/svg+xml" not in value.data


def test_traceback_is_the_containers_and_shown_once(ip):
    with pytest.raises(CellError) as info:
        run(ip, "e", "def f():\n    return 1 / 0\n\nf()")
    lines = info.value._render_traceback_()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert any('File "<cell-' in line and "line 2, in f" in line for line in lines)
    assert "agent.py" not in "\n".join(lines)
    assert sum("ZeroDivisionError" in line for line in lines) == 1
    with pytest.raises(CellError, match=r"invalid syntax|was never closed"):
        run(ip, "e", "def (:")
    assert run(ip, "e", "1 + 1").data["text/plain"] == "2"  # the container goes on


def test_lines_students_paste_from_books_run_without_ipython_in_the_image(ip):
    """debian-python has no IPython: the agent itself runs !cmd (expanding $name and {expression} as IPython
    does), x = !cmd, %time, %timeit, %%timeit, %matplotlib inline, %pwd; another magic is refused in one
    sentence, with its exception's name."""
    value = run(ip, "books --image localhost/debian-python", "\n".join([
        "%matplotlib inline",
        "!echo from the shell",
        "files = !ls /",
        "print('etc' in files)",
        "%timeit -n 3 -r 2 sum(range(100))",
        "for n in (1, 2):",
        "    !echo line $n {n * 10} $$HOME",  # (expanded as IPython does: $name, {expression}, $$)
        "%time total = sum(range(10))",
        "%pwd",
    ]))
    out = last(ip).text()
    assert "from the shell\nTrue\n" in out
    assert re.search(r"\d \S+ ± \d.* per loop \(mean ± std\. dev\. of 2 runs, 3 loops each\)", out)
    assert "line 1 10 /root\nline 2 20 /root\n" in out
    assert "CPU times: user" in out and "Wall time:" in out and ip.sk.sessions["books"].alive
    assert value.data["text/plain"] == "'/'"
    run(ip, "books", "%%timeit -n 2 -r 1 x = 3\ny = x * 2")
    assert "(mean ± std. dev. of 1 run, 2 loops each)" in last(ip).text()
    with pytest.raises(CellError) as info:
        run(ip, "books", "%who")
    assert info.value.ename == "UsageError"
    assert str(info.value).startswith("%who is not available in this container: its image has no IPython")


def test_ipython_in_the_image_runs_every_magic(kernel_store):
    """debian-kernel has IPython: it runs the cell's magics (here %who_ls and %%capture, which the agent alone
    does not know), with the cells' namespace; displays still reach the notebook."""
    for shell in recorded_shell(kernel_store):
        run(shell, "ipy --image localhost/debian-kernel", "x = 1\n!echo $x from ipython")
        assert last(shell).text() == "1 from ipython\n"  # IPython expands $x
        value = run(shell, "ipy", "%who_ls int")
        assert value.data["text/plain"] == "['x']"
        run(shell, "ipy", "%%capture kept\nprint('hidden')")
        run(shell, "ipy", "print(kept.stdout.strip()); from IPython.display import HTML; display(HTML('<b>b</b>'))")
        assert last(shell).text() == "hidden\n" and last(shell).displays()[0]["text/html"] == "<b>b</b>"


def test_a_containers_exception_name_is_the_type_name_of_the_error_raised():
    """IPython and ipykernel take a failed cell's ename from the exception's type: the container's name, then
    (nbgrader and nbval read it), on a subclass of CellError; a name that is no identifier keeps CellError."""
    from sandbox_kernel.notebook.session import named_error

    error = named_error(CellError, "ModuleNotFoundError", "No module named 'x'", [])
    assert type(error).__name__ == "ModuleNotFoundError" and isinstance(error, CellError)
    assert str(error) == "No module named 'x'" and error.ename == "ModuleNotFoundError"
    assert type(named_error(CellError, "ModuleNotFoundError", "again", [])) is type(error)
    for bad in ("1x", "a.b", "x" * 200, "", "CellError"):
        assert type(named_error(CellError, bad, "v", [])) is CellError


def test_interrupt_stops_sleep_and_child_processes(ip):
    """The interrupt is sent once the cell says its child runs; the cell ends with KeyboardInterrupt (without
    it the cell would end after 60 s with no error)."""
    run(ip, "i", "import subprocess, time")
    with when_seen("armed", interrupt), pytest.raises(CellError) as info:
        run(ip, "i", "child = subprocess.Popen(['sleep', '100'])\nprint('armed', flush=True)\ntime.sleep(60)")
    assert info.value._render_traceback_()[-1] == "KeyboardInterrupt"
    # the cell's child is gone, the state is not
    assert run(ip, "i", "child.wait(timeout=5)").data["text/plain"] in ("-2", "-9")
    assert run(ip, "i", "time.__name__").data["text/plain"] == "'time'"


def test_a_cell_that_ignores_sigint_is_killed_and_the_agent_restarted(ip):
    run(ip, "k", "x = 1")
    with when_seen("armed", interrupt), \
            pytest.raises(CellKilled, match=r"did not stop within 3 s .* variables are lost, files are kept"):
        run(ip, "k", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                     "open('/tmp/file', 'w').write('kept')\nprint('armed', flush=True)\nwhile True:\n"
                     "    time.sleep(0.05)")
    with pytest.raises(CellError, match="name 'x' is not defined"):
        run(ip, "k", "x")
    assert run(ip, "k", "open('/tmp/file').read()").data["text/plain"] == "'kept'"


@pytest.mark.cgroups
def test_timeout(ip):
    """The timeout fires (the cell would end after 60 s with no error otherwise)."""
    with pytest.raises(CellError, match=r"ran past --timeout 1 s and was interrupted"):
        run(ip, "t --timeout 1", "import time\ntime.sleep(60)")
    with pytest.raises(CellKilled, match=r"ran past --timeout 1 s and did not stop"):
        run(ip, "t --timeout 1", "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                  "while True: time.sleep(0.05)")


@pytest.mark.cgroups
def test_oom_is_one_sentence_with_the_limit(ip):
    run(ip, "m --memory 64m", "x = 1")
    with pytest.raises(CellKilled) as info:
        run(ip, "m", "hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))")
    text = str(info.value)
    assert text.startswith("The cell ran out of memory: the container's limit is 64 MiB")
    assert info.value._render_traceback_() == [text]
    assert run(ip, "m", "'alive'").data["text/plain"] == "'alive'"


def test_pids_limit_is_said(ip):
    run(ip, "p --pids-limit 12", "import subprocess")
    with pytest.raises(CellError) as info:
        run(ip, "p", "procs = [subprocess.Popen(['sleep', '3']) for _ in range(30)]")
    lines = info.value._render_traceback_()
    assert lines[-1] == ("The container reached its process limit (--pids-limit 12): new processes were refused.")


def test_a_disk_filler_is_stopped_by_its_disk_and_the_cell_says_so(ip, magic_store, capsys):
    run(ip, "d --disk 96m", "import os")
    with pytest.raises(CellError) as info:
        run(ip, "d", "with open('/tmp/fill', 'wb') as f:\n    while True:\n        f.write(bytes(1 << 20))")
    lines = info.value._render_traceback_()
    assert lines[-2].startswith("OSError: [Errno 28] No space left on device"), lines[-3:]
    assert lines[-1] == ("The container's disk is full: its limit is 96 MiB (--disk), so writes fail with 'No space "
                         "left on device'. Free space in it, or make a container with a larger --disk.")
    usage = Containers(magic_store).disk_usage("d")
    assert usage is not None and usage.full and usage.size <= 96 << 20
    # a cell that frees space works, and the sentence is not said again for the same fill
    assert run(ip, "d", "os.remove('/tmp/fill'); 'freed'").data["text/plain"] == "'freed'"
    run(ip, "d --disk 1g", "open('/tmp/small', 'w').write('x')")  # (an existing container keeps its disk)
    assert "(container d exists: --disk applies to new containers only)" in capsys.readouterr().err
    run(ip, "d --disk 96m", "pass")  # the same as it was made with: nothing to say
    assert "exists" not in capsys.readouterr().err


def test_repeating_a_containers_options_says_nothing_and_changing_them_says_which(ip, capsys):
    """A notebook that repeats --image in every cell is not told each time that it applies to new containers
    only; a cell that asks for another image or hostname is, naming them."""
    run(ip, "same --image localhost/busybox:latest --hostname h1", "true")
    capsys.readouterr()
    run(ip, "same --image localhost/busybox --hostname h1", "true")
    assert "exists" not in capsys.readouterr().err
    run(ip, "same --image localhost/debian-python --hostname h2", "true")
    assert "(container same exists: --image, --hostname apply to new containers only)" in capsys.readouterr().err


def test_stats_line(ip, capsys):
    run(ip, "st --stats", "s = sum(range(3_000_000))")
    out = capsys.readouterr().out
    assert out.startswith("wall ") and " ms, CPU " in out and "peak memory" in out


@pytest.mark.cgroups
def test_limits_change_live(ip):
    """A later cell's limits reach the running container's cgroup (read from the cgroup's own files)."""
    run(ip, "l --memory 128m", "x = 1")
    cgroup = ip.sk.containers.get("l").id[:32]
    assert cgroup_limits(cgroup)["memory"] == 128 << 20
    run(ip, "l --memory 96m --pids-limit 50", "x")
    assert {k: v for k, v in cgroup_limits(cgroup).items() if k != "cpu_quota_us"} == {"memory": 96 << 20,
                                                                                       "pids": 50}
    table = ip.run_line_magic("container", "limits l --cpus 0.5")
    assert (table[0]["Memory"], table[0]["Pids"], table[0]["Cpus"]) == (96 << 20, 50, 0.5)
    assert "96 MiB" in repr(table), "a limit in the units --memory takes"
    assert cgroup_limits(cgroup)["cpu_quota_us"] == 50_000, "0.5 CPU: 50 ms of each 100 ms"
    assert "<table>" in table._repr_html_()


def test_values_in_and_out(ip):
    ip.user_ns.update(numbers=[1, 2.5, {"k": None}], blob=b"\x00\xffbytes")
    run(ip, "io --in numbers,blob --out total,back", "total = len(numbers) + len(blob)\nback = blob[::-1]")
    assert ip.user_ns["total"] == 10 and ip.user_ns["back"] == b"setyb\xff\x00"
    with pytest.raises(UsageError, match="no variable named 'nothere'"):
        run(ip, "io --in nothere", "pass")
    ip.user_ns["func"] = len
    with pytest.raises(UsageError, match="a builtin_function_or_method cannot go into a container"):
        run(ip, "io --in func", "pass")
    with pytest.raises(CellError, match="only JSON values, bytes and numpy arrays can leave"):
        run(ip, "io --out obj", "obj = object()")


def test_a_crafted_pickle_from_the_container_does_nothing(ip, tmp_path):
    """The container replaces the agent's encoder and sends a pickle (as a kind, and inside a .npy)."""
    marker = tmp_path / "pwned"
    evil = f'''
import base64, io, pickle, struct, sys
class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch {marker}",))
payload = pickle.dumps(Evil())
header = "{{'descr': '|O', 'fortran_order': False, 'shape': (1,), }}"
header = header + " " * (118 - len(header)) + "\\n"
npy = b"\\x93NUMPY\\x01\\x00" + struct.pack("<H", len(header)) + header.encode() + pickle.dumps([Evil()])
agent = sys.modules["sk_agent"]
kinds = iter(["pickle", "npy"])
def encode_value(name, value):
    kind = next(kinds)
    return {{"kind": kind, "b64": base64.b64encode(payload if kind == "pickle" else npy).decode()}}
agent.encode_value = encode_value
c = 1
'''
    run(ip, "evil", evil)
    with pytest.raises(UsageError, match="kind 'pickle'"):
        run(ip, "evil --out c", "c")
    assert not marker.exists() and "c" not in ip.user_ns
    with pytest.raises(UsageError, match=r"array of objects .* refused"):  # (numpy: a test dependency)
        run(ip, "evil --out c", "c")
    assert not marker.exists() and "c" not in ip.user_ns


def test_print_of_10_mb_does_not_hang(ip):
    """One print past the output limit: the cell ends (the module's timeout would say if it hung), keeps what
    the limit allows and says, once, that it dropped the rest."""
    run(ip, "big", "print('x' * (10 << 20)); print('after')")
    assert last(ip).text().endswith("after\n") and len(last(ip).text()) <= 4 << 20
    assert last(ip).text("stderr").count(" MiB of output dropped: a cell keeps 4 MiB") == 1


def test_shell_cells_and_a_shell_only_image(ip):
    run(ip, "sh", "x = 1")
    run(ip, "sh --shell", "echo from sh; echo err >&2")
    assert last(ip).text() == "from sh\n" and last(ip).text("stderr") == "err\n"
    with pytest.raises(CellError, match="the shell exited with status 3"):
        run(ip, "sh --shell", "exit 3")
    run(ip, "bb --image localhost/busybox", "echo busybox here; cat /etc/hostname > /dev/null")
    assert last(ip).text() == "busybox here\n"
    with pytest.raises(UsageError, match="has no python3"):
        run(ip, "bb --out x", "x=1")


def test_line_magics(ip, capsys):
    run(ip, "lm", "open('/root/made.txt', 'w').write('hi')")
    images = ip.run_line_magic("container", "images")
    assert isinstance(images, Table) and any(r["Repository"] == "localhost/busybox" for r in images.rows)
    ps = ip.run_line_magic("container", "ps")
    assert any(r["Names"] == ["lm"] for r in ps.rows)
    diff = ip.run_line_magic("container", "diff lm")
    assert {"kind": "A", "path": "/root/made.txt"} in diff.rows
    image_id = ip.run_line_magic("container", "commit lm localhost/lm-snap:1 -m first")
    assert image_id.startswith("sha256:")
    history = ip.run_line_magic("container", "history localhost/lm-snap:1")
    assert "open('/root/made.txt', 'w')" in history[0]["CreatedBy"] and history[0]["Comment"] == "first"
    assert ip.run_line_magic("container", "exec lm cat /root/made.txt") == 0
    assert last(ip).text() == "hi"
    code = ip.run_line_magic("container", "run --rm localhost/lm-snap:1 cat /root/made.txt")
    assert code == 0 and last(ip).text() == "hi"
    stats = ip.run_line_magic("container", "stats lm")
    assert stats[0]["Name"] == "lm"
    with pytest.raises(UsageError, match="unknown subcommand"):
        ip.run_line_magic("container", "frob")
    with pytest.raises(UsageError, match="no terminal here"):
        ip.run_line_magic("container", "exec -it lm sh")
    with pytest.raises(UsageError, match="no such container"):
        ip.run_line_magic("container", "diff nothere")
    ip.run_line_magic("container", "rm -f lm")
    with pytest.raises(UsageError, match="no such container"):
        ip.run_line_magic("container", "diff lm")
    ip.sk.store.remove_image("localhost/lm-snap:1")


def test_bad_options_are_usage_errors(ip):
    with pytest.raises(UsageError):
        run(ip, "--frob", "pass")
    with pytest.raises(UsageError, match="timeout"):
        run(ip, "x --timeout -1", "pass")
    with pytest.raises(UsageError, match=r"invalid --memory|memory"):
        run(ip, "x --memory lots", "pass")
    with pytest.raises(UsageError, match=r"no such image|not found|cannot"):
        run(ip, "x --image localhost/nothere:1", "pass")


def test_kernel_exit_removes_containers_and_the_next_kernel_reconciles(magic_store, tmp_path):
    shell = start_ipython() or get_ipython()
    first = ContainerMagics(shell, store=magic_store)
    first.sink_factory = Recorder
    shell.register_magics(first)
    run(shell, "gone", "x = 1")
    run(shell, "kept --keep", "x = 1")
    first.shutdown()
    names = {i.name for i in Containers(magic_store).list(all=True)}
    assert names == {"kept"}
    # a container whose kernel died without cleaning up (a made-up owner that is not running)
    containers = Containers(magic_store)
    from sandbox_kernel.notebook.magics import KEEP_LABEL, OWNER_LABEL
    from sandbox_kernel.runtime import ContainerSpec

    containers.create(ContainerSpec(image="localhost/busybox", name="orphan",
                                    labels=((OWNER_LABEL, "999999999:1"), (KEEP_LABEL, "0"))))
    second = ContainerMagics(shell, store=magic_store)
    second.sink_factory = Recorder
    assert second.containers is not None
    names = {i.name for i in Containers(magic_store).list(all=True)}
    assert names == {"kept"}
    # the kept container comes back with its files in the next kernel
    shell.register_magics(second)
    run(shell, "kept", "y = 2")
    second.shutdown()
    Containers(magic_store).remove("kept", force=True)
    assert Path(magic_store.root).exists()


def test_a_container_that_forges_the_channel_is_stopped_not_believed(ip):
    """The channel to the kernel is the host's: a cell (root in its container, not on the host) cannot
    open the supervisor's pipes that the host made, to write into them. Whatever still writes a forged,
    oversized frame header there (a subverted supervisor; here the test, from the host) is refused: the
    kernel stops the container and says so in one line."""
    run(ip, "forge", "x = 1")
    probe = '''
import os
sup = os.getppid()
opened = []
for fd in os.listdir("/proc/%d/fd" % sup):
    target = "/proc/%d/fd/%s" % (sup, fd)
    if os.readlink(target).startswith("pipe:"):
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
            opened.append(int(fd))
        except OSError:
            pass
print(sorted(opened))
'''  # (a list of ints: its repr is JSON)
    run(ip, "forge", probe)
    opened = json.loads(last(ip).text())
    state = Containers(ip.sk.store).get(ip.sk.sessions["forge"].cid).state
    [supervisor] = Path(f"/proc/{state.pid}/task/{state.pid}/children").read_text().split()
    pipes = {int(fd): os.stat(f"/proc/{supervisor}/fd/{fd}").st_uid for fd in os.listdir(f"/proc/{supervisor}/fd")
             if os.readlink(f"/proc/{supervisor}/fd/{fd}").startswith("pipe:")}
    hosts = {fd for fd, owner in pipes.items() if owner == 0}
    assert hosts, f"the channel is pipes the host made: {pipes}"
    assert not hosts & set(opened), f"a cell opened the host's end of its channel: fds {sorted(hosts & set(opened))}"
    for fd in pipes:  # what a subverted supervisor could do: a forged frame into every pipe it has
        pipe = os.open(f"/proc/{supervisor}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(pipe, b"\xff\xff\xff\xf0" + b"junk" * 100)
        finally:
            os.close(pipe)
    with pytest.raises(UsageError, match=r"the agent sent a message of \d+ bytes .*the container was stopped"):
        run(ip, "forge", "import time; time.sleep(5)")
    assert not ip.sk.sessions["forge"].alive


@pytest.fixture
def sci(science_store):
    yield from recorded_shell(science_store)


def test_numpy_arrays_in_and_out(sci):
    import numpy  # (a test dependency)
    sci.user_ns["grid"] = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
    run(sci, "np --image localhost/debian-science --in grid --out doubled,total",
        "import numpy as np\ndoubled = grid * 2\ntotal = float(grid.sum())")
    doubled = sci.user_ns["doubled"]
    assert isinstance(doubled, numpy.ndarray) and doubled.dtype == numpy.float32 and doubled.shape == (3, 4)
    assert (doubled == sci.user_ns["grid"] * 2).all() and sci.user_ns["total"] == 66.0
    with pytest.raises(CellError, match="array of objects: only plain dtypes can leave"):
        run(sci, "np --out objs", "objs = np.array([object()])")


def test_matplotlib_figures_are_images(sci):
    run(sci, "plot --image localhost/debian-science",
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('shown')\nplt.show()\n"
        "fig = plt.figure()\nplt.bar([1, 2], [3, 4])")
    figures = [d for d in last(sci).displays() if "image/png" in d]
    assert len(figures) == 2  # plt.show() and the figure still open at the end of the cell
    for shown in figures:
        assert base64.b64decode(shown["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    run(sci, "plot", "plt.get_fignums()")  # figures were closed once shown
    assert not [d for d in last(sci).displays() if "image/png" in d]


def test_pull_and_push_line_magics(ip, plain_registry, capsys):
    """%container push/pull against a real registry (Debian's docker-registry on 127.0.0.1)."""
    remote = plain_registry.ref("magic/busybox:1")
    pushed = ip.run_line_magic("container", f"push localhost/busybox {remote} --insecure")
    assert pushed.startswith(remote + "@sha256:")
    image = ip.sk.store.resolve("localhost/busybox")
    fresh = ContainerMagics(ip, store=Store(ip.sk.store.root.parent / "fresh-store"))
    ref = fresh.container_line(f"pull {remote} --insecure")
    out = capsys.readouterr().out
    assert ref == remote and f"Digest: {image.manifest_digest}" in out and ": Pull complete" in out
    assert fresh.store.resolve(remote).id == image.id
    with pytest.raises(UsageError, match="cannot reach registry"):
        ip.run_line_magic("container", "pull 127.0.0.1:9/nothing:1 --insecure")


def test_shell_only_container_interrupt_and_timeout(ip):
    run(ip, "bbi --image localhost/busybox", "echo ready")
    with when_seen("armed", interrupt), pytest.raises(CellError):
        run(ip, "bbi", "echo armed; sleep 60; echo not reached")
    assert "not reached" not in last(ip).text()
    with pytest.raises(CellError, match=r"ran past --timeout 1 s"):
        run(ip, "bbi --timeout 1", "sleep 60")
    run(ip, "bbi", "echo still here")
    assert last(ip).text() == "still here\n"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


FLOOD_BOUND_MB = 150  # what the kernel may grow by while a container prints without end (it grew by 2.7 GB)


def test_a_container_that_prints_without_end_does_not_fill_the_kernel(ip):
    """The issue's flood: a background thread prints 1 MiB lines forever, and no cell runs until the kernel
    has dropped 256 MiB of it (its own count). It keeps 4 MiB and drops the rest unread; the next cell says how
    much was dropped, once."""
    run(ip, "flood --memory 512m", "import threading, sys\n"
        "threading.Thread(target=lambda: [sys.stdout.write('x' * (1 << 20) + '\\n') for _ in iter(int, 1)],"
        " daemon=True).start()")
    before = _rss_mb()
    peaks = [before]

    def dropped_plenty() -> bool:  # the kernel's own count of what it dropped, not a time: 256 MiB of it
        peaks.append(_rss_mb())
        return ip.sk.sessions["flood"].budget.dropped["stream"] > 256 << 20

    wait_for(dropped_plenty, timeout=300, what="256 MiB dropped")
    peak = max(peaks)
    assert peak - before < FLOOD_BOUND_MB, f"the kernel grew by {peak - before:.0f} MB while the container printed"
    run(ip, "flood", "print('next cell')")
    text = last(ip).text("stderr")
    assert text.count("of output dropped: the time between two cells keeps 4 MiB") == 1, text[-300:]
    assert "next cell\n" in last(ip).text()
    assert len(last(ip).text()) <= (8 << 20) + 100, "a cell and the time before it keep 4 MiB each"
    print(f"flood: the kernel grew by {peak - before:.1f} MB while 256 MiB were dropped")


def test_a_cell_that_prints_more_than_the_limit_says_so_once(ip):
    ip.sk.output_limit = 1 << 20
    try:
        run(ip, "big", "import sys\nfor _ in range(160): sys.stdout.write('y' * 65536)\nprint('end')")
    finally:
        ip.sk.output_limit = 4 << 20
    out, err = last(ip).text(), last(ip).text("stderr")
    assert (1 << 19) < len(out) <= (1 << 20) + 4096 and out.startswith("y"), len(out)
    assert err.count("of output dropped: a cell keeps 1 MiB (c.ContainerMagics.output_limit)") == 1, err
