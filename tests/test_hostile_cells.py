"""A corpus of hostile ``%%container`` cells: each is contained, reported in the cell, and the next cell answers.

Each cell tries to get out of its container or to take the host (or the kernel) down: fork bombs, memory
balloons, disk fillers, fd exhaustion, a signal storm at PID 1, forged agent frames (on stdout and on the agent's
own channel), a forged ``--out`` payload, HTML and JavaScript output, ``/proc`` and ``/sys`` probes, mount,
unshare, ptrace, ``kill -9 -1``, endless output. For each the test says what "contained and reported" means:
the text the cell must end with (its error, or what it printed), and what must not have changed on the host
(its process count, files outside, the kernel's memory, HTML with nothing that runs). Then the next cell of the
same notebook, ``print(1 + 1)``, must print 2.

Real containers (debian-python, busybox) run by IPython's shell through the magics, as in
test_container_magic.py (whose shell and sink this reuses). Every container goes at the end of its test (the
magics' shutdown, which also asserts that none is left). The last test prints how many were contained.

Found by this corpus, and fixed: bytes that are no frame written into the worker's end of the agent's channel
killed the supervisor (an uncaught ValueError: the container exited); a cell that stopped the supervisor
(SIGSTOP) hung the kernel for good, through the timeout, the interrupt and the kill; every process a Python
fork bomb forked came back from the cell into the agent, ended the cell again and read the next cells'
requests; a child of the cell killed for memory, or a container killed by a signal, was not said as such.
Contained but not kept: a signal storm at PID 1 (which passes SIGHUP, SIGTERM... on to the agent, as docker's
init does) and ``kill -9 -1`` end the container; the cell says so and the next cell starts it again.
"""

from __future__ import annotations

import base64
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from test_container_magic import last, magic_store, recorded_shell, run  # noqa: F401  (magic_store: a fixture)

from sandbox_kernel.notebook.session import CellError

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

EITHER = (CellError, UsageError, type(None))  # the cell may end either way; what it said is the point
CONTAINED: dict[str, bool] = {}  # case id -> contained and reported (the summary counts them)
PROCS_MARGIN = 64  # host processes that may come and go meanwhile (other work on the machine)
KERNEL_GROWTH_MB = 150  # what the kernel may grow by while a container floods it (test_container_magic's bound)


@dataclass
class Host:
    """What the test sees of the host before the cell, to compare after."""

    procs: int
    rss_mb: float
    outside: Path  # a directory on the host no container may write to
    files: dict[str, bytes] = field(default_factory=dict)  # host files no cell may change


def host_procs() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


WATCHED = ("/proc/sys/kernel/core_pattern", "/sys/kernel/uevent_helper", "/proc/sys/kernel/hostname")


def snapshot(outside: Path) -> Host:
    files = {}
    for path in WATCHED:
        try:
            files[path] = Path(path).read_bytes()
        except OSError:
            pass
    return Host(host_procs(), rss_mb(), outside, files)


# -- what "the host is unchanged" means, case by case ------------------------------------------------------------


def procs_back(before: Host, after: Host) -> None:
    assert after.procs <= before.procs + PROCS_MARGIN, f"host processes: {before.procs} -> {after.procs}"


def kernel_bounded(before: Host, after: Host) -> None:
    assert after.rss_mb - before.rss_mb < KERNEL_GROWTH_MB, f"the kernel grew {after.rss_mb - before.rss_mb:.0f} MB"


def nothing_outside(before: Host, after: Host) -> None:
    assert list(before.outside.iterdir()) == [], "a file appeared outside the container"
    assert after.files == before.files, "a host file a cell wrote to changed"


def always(before: Host, after: Host) -> None:
    procs_back(before, after)
    kernel_bounded(before, after)
    nothing_outside(before, after)


# -- the corpus ------------------------------------------------------------------------------------------------------


@dataclass
class Hostile:
    id: str
    cell: str | Callable[[Path], str]  # (a function of the host directory it must not reach)
    line: str = ""  # the options it runs under: its limits
    ends: Any = None  # what the cell raises (None: it ends without an error)
    said: str = ""  # a regex the cell's report (its error, output and displays) must match
    check: Callable[[Host, Host], None] = always
    image: str = "localhost/debian-python"
    xfail: str | None = None
    displays: int | None = None  # how many displays the notebook must get, when that is the point


def probe(code: str) -> str:
    """A cell that tries ``code`` (``{outside}`` is a host directory) and prints how it was refused."""
    return ("import ctypes, errno, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "def said(ok):\n    print('REFUSED' if not ok else 'DONE', errno.errorcode.get(ctypes.get_errno(), ''))\n"
            "try:\n" + "".join(f"    {line}\n" for line in code.splitlines())
            + "except OSError as exc:\n    print('REFUSED', errno.errorcode.get(exc.errno, exc.errno))\n")


FRAME = struct.Struct(">I")
FORGED_DONE = b'{"type":"done","id":1,"status":"ok","outputs":{},"wall":0,"cpu":0}'
FORGED_DISPLAY = b'{"type":"display","data":{"text/html":"<script>alert(1)</script><b>forged</b>"},"metadata":{}}'
CHANNEL = "import sys\nchannel = sys.modules['sk_agent'].WORKER.channel\n"  # the worker's end of the agent's channel


def forged_out(kind: str, payload: bytes) -> str:
    """A cell that replaces the agent's encoder: its --out value is ``payload`` of ``kind``."""
    return (f"import sys\nagent = sys.modules['sk_agent']\n"
            f"agent.encode_value = lambda name, value: {{'kind': {kind!r}, "
            f"'b64': {base64.b64encode(payload).decode()!r}}}\nv = 1\n")


class Pwn:
    def __init__(self, outside: Path):
        self.outside = outside

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.outside}/pwned",))


def objects_npy_cell(outside: Path) -> str:
    """An object array's .npy whose pickle, loaded on the host, would make a file in ``outside``."""
    import pickle

    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    return forged_out("npy", npy_header(header, pickle.dumps([Pwn(outside)])))


def pickle_of(value: Any) -> bytes:
    import pickle

    return pickle.dumps(value)


def npy_header(header: str, payload: bytes = b"") -> bytes:
    text = header.encode() + b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


HTML_CELL = '''
class Page:
    def _repr_html_(self):
        return ("<b>bold</b><script>fetch('/api/terminals', {method: 'POST'})</script>"
                "<img src=x onerror=alert(1)><a href='javascript:alert(2)'>x</a><iframe src='/lab'></iframe>"
                "<svg><script>alert(3)</script></svg><body onload=alert(4)><form action='/api'></form>")
class Script:
    def _repr_javascript_(self): return "alert(5)"
class Markdown:
    def _repr_markdown_(self): return "*md* <script>alert(6)</script> [x](javascript:alert(7))"
class Svg:
    def _repr_svg_(self): return "<svg xmlns='http://www.w3.org/2000/svg' onload='alert(8)'><script>1</script></svg>"
display(Page(), Script(), Markdown(), Svg())
Page()
'''

CASES = [
    # fork bombs: the pids limit holds them, and says so
    Hostile("fork-bomb-python", "import os\nwhile True:\n    os.fork()", "--pids-limit 48 --memory 256m",
            CellError, r"process limit \(--pids-limit 48\)"),
    Hostile("fork-bomb-shell", "b() { b | b & }; b; sleep 2; echo bombed", "--shell --pids-limit 48 --timeout 30",
            EITHER, r"Cannot fork"),
    Hostile("fork-bomb-threads", "import threading, time\nwhile True:\n"
            "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
            "--pids-limit 48", CellError, r"can't start new thread|process limit"),
    # memory balloons: the memory limit and its sentence
    Hostile("memory-balloon", "hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))", "--memory 128m",
            CellError, r"ran out of memory: the container's limit is 128 MiB"),
    Hostile("memory-balloon-child", "import subprocess\nsubprocess.run(['python3', '-c', "
            "'h = []\\nwhile True: h.append(bytearray(1 << 20))'], check=True)", "--memory 128m",
            CellError, r"A process of the cell ran out of memory: the container's limit is 128 MiB"),
    Hostile("memory-balloon-shm", "with open('/dev/shm/fill', 'wb') as f:\n    while True:\n"
            "        f.write(bytes(1 << 20))", "--memory 128m",
            CellError, r"No space left on device|ran out of memory"),
    # disk fillers: the disk limit and its sentence
    Hostile("disk-filler", "with open('/tmp/fill', 'wb') as f:\n    while True:\n        f.write(bytes(1 << 20))",
            "--disk 64m", CellError, r"The container's disk is full: its limit is 64 MiB"),
    Hostile("disk-filler-inodes", "import os\nos.makedirs('/var/many', exist_ok=True)\nfor i in range(10**7):\n"
            "    open(f'/var/many/{i}', 'w').close()", "--disk 64m --timeout 120",
            CellError, r"No space left on device"),
    # fd exhaustion: the cell's own error; the agent keeps its channel
    Hostile("fd-exhaustion", "fds = []\nwhile True:\n    fds.append(open('/dev/null'))", "",
            CellError, r"Too many open files"),
    Hostile("fd-exhaustion-pipes", "import os, subprocess\npipes = []\ntry:\n    while True:\n"
            "        pipes.append(os.pipe())\nexcept OSError as exc:\n    print('pipes refused:', exc.strerror)\n"
            "subprocess.run(['true'])", "", CellError, r"pipes refused: Too many open files(.|\n)*Too many open files"),
    # signals at PID 1 and at every process the cell may signal
    Hostile("signal-storm-pid1", "import os\nfor _ in range(500):\n"
            "    for sig in (1, 2, 3, 10, 12, 13, 14, 15, 17, 18, 20, 21, 22, 28, 29, 30, 31):\n"
            "        os.kill(1, sig)\nprint('storm over')", "", EITHER,
            r"storm over|exited with status 1\d\d \(its agent was killed by SIG[A-Z]+\)"),
    Hostile("stop-the-supervisor", "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nprint('stopped it')",
            "--timeout 5", UsageError, r"its agent did not answer the kill of the cell within 10 s; the container was "
            "stopped"),
    Hostile("kill-the-supervisor", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('killed it')",
            "", UsageError, r"exited with status 137 \(its agent was killed by SIGKILL\)"),
    Hostile("kill-9-minus-1", "import os\nos.kill(-1, 9)\nprint('still here')", "",
            UsageError, r"exited with status 137 \(its agent was killed by SIGKILL\)"),
    # forged agent frames: printed ones are text; ones on the agent's own channel are what a cell may say anyway
    Hostile("forged-frames-stdout", "import os, sys, struct\n"
            f"done, shown = {FORGED_DONE!r}, {FORGED_DISPLAY!r}\n"
            "for body in (done, shown):\n    frame = struct.pack('>I', len(body)) + body\n"
            "    os.write(1, frame)\n    sys.stdout.buffer.write(frame)\n    print(frame.decode('latin1'))\n"
            "print('after the forged frames')", "", None, r'"type":"done"(.|\n)*after the forged frames', displays=0),
    Hostile("forged-frames-channel", CHANNEL + "import struct\n"
            f"for body in ({FORGED_DISPLAY!r}, b'{{\"type\":\"done\",\"id\":999}}', b'{{\"type\":\"wat\"}}'):\n"
            "    channel.sendall(struct.pack('>I', len(body)) + body)\nprint('after the forged frames')",
            "", None, r"after the forged frames"),
    Hostile("garbage-on-the-channel", CHANNEL + "channel.sendall(b'\\xff\\xff\\xff\\xffjunk' * 100)\n"
            "import time\ntime.sleep(5)", "", CellError,
            r"The cell wrote something that is no message into the agent's channel, and was ended"),
    Hostile("channel-closed", CHANNEL + "import os\nos.close(channel.fileno())\nprint('closed')", "",
            CellError, r"variables are lost, files are kept"),
    # a forged --out payload: refused, never unpickled
    Hostile("forged-out-pickle", lambda outside: forged_out("pickle", pickle_of(Pwn(outside))), "--out v", UsageError,
            r"kind 'pickle'"),
    Hostile("forged-out-npy-objects", objects_npy_cell, "--out v", UsageError, r"array of objects .* refused"),
    Hostile("forged-out-npy-huge", forged_out("npy", npy_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }")), "--out v",
            UsageError, r"header claims \d+ bytes of data"),
    Hostile("forged-out-not-base64", forged_out("bytes", b"").replace("'b64': ''", "'b64': '!!not base64!!'"),
            "--out v", UsageError, r"not base64"),
    # HTML and JavaScript: cleaned before the page
    Hostile("html-and-javascript", HTML_CELL, "", None, r"<b>bold</b>"),
    # /proc and /sys probes, mount, unshare, ptrace
    Hostile("proc-sysrq-trigger", probe("with open('/proc/sysrq-trigger', 'w') as f:\n    f.write('h')\nsaid(True)"),
            "", None, r"REFUSED"),
    Hostile("proc-kcore", probe("with open('/proc/kcore', 'rb') as f:\n    said(len(f.read(4096)) > 0)"),
            "", None, r"REFUSED"),
    Hostile("proc-core-pattern", probe("with open('/proc/sys/kernel/core_pattern', 'w') as f:\n"
                                       "    f.write('|/tmp/x')\nsaid(True)"), "", None, r"REFUSED"),
    Hostile("sys-uevent-helper", probe("with open('/sys/kernel/uevent_helper', 'w') as f:\n"
                                       "    f.write('/tmp/x')\nsaid(True)"), "", None, r"REFUSED"),
    Hostile("sys-fs-cgroup-write", probe("import glob\nmine = glob.glob('/sys/fs/cgroup/**/pids.max', recursive=True)"
                                         " or ['/sys/fs/cgroup/pids.max']\nwith open(mine[0], 'w') as f:\n"
                                         "    f.write('max')\nsaid(True)"), "", None, r"REFUSED"),
    Hostile("mount-tmpfs", probe("said(libc.mount(b'none', b'/mnt', b'tmpfs', 0, None) == 0)"), "", None,
            r"REFUSED EPERM"),
    Hostile("mount-proc-again", probe("os.makedirs('/tmp/p', exist_ok=True)\n"
                                      "said(libc.mount(b'proc', b'/tmp/p', b'proc', 0, None) == 0)"), "", None,
            r"REFUSED EPERM"),
    Hostile("unshare-namespaces", probe("said(libc.unshare(0x00020000 | 0x40000000 | 0x20000000) == 0)"), "", None,
            r"REFUSED EPERM"),
    Hostile("ptrace-pid1", probe("said(libc.ptrace(16, 1, None, None) == 0)"), "", None, r"REFUSED EPERM"),
    Hostile("busybox-proc-probes", "echo h > /proc/sysrq-trigger || echo REFUSED; "
            "head -c 16 /proc/kcore >/dev/null 2>&1 && echo READ || echo REFUSED", "--image localhost/busybox",
            None, r"REFUSED\n(REFUSED|)", image="localhost/busybox"),
    # endless output: kept within the limit, the rest dropped and counted
    Hostile("endless-output", "while True:\n    print('x' * 4096)", "--timeout 5", CellError,
            r"of output dropped: a cell keeps 4 MiB(.|\n)*ran past --timeout 5 s"),
    Hostile("endless-output-child", "import subprocess\nsubprocess.run(['yes'])", "--timeout 5", CellError,
            r"of output dropped: a cell keeps 4 MiB(.|\n)*ran past --timeout 5 s"),
    Hostile("endless-displays", "while True:\n    display({'k': 'v' * 4096})", "--timeout 5", CellError,
            r"dropped|ran past --timeout 5 s"),
]


# -- running one ---------------------------------------------------------------------------------------------------


@pytest.fixture
def ip(magic_store):  # noqa: F811  (busybox and debian-python, as the magic's own tests have them)
    yield from recorded_shell(magic_store)


def report(ip, error: BaseException | None) -> str:
    """What the cell showed: its output and displays, then its error as the notebook renders it."""
    rec = last(ip)
    parts = [rec.text(), rec.text("stderr"), *(str(d.get("text/html", "")) for d in rec.displays())]
    if isinstance(error, CellError):
        parts.append("\n".join(error._render_traceback_()))
    elif error is not None:
        parts.append(str(error))
    return "\n".join(parts)


def assert_displays_clean(ip) -> None:
    """Nothing in what the cells displayed can run in the page: no script, no handler, no javascript: link."""
    for rec in ip.recorders:
        for shown in rec.displays():
            assert "application/javascript" not in shown
            page = str(shown.get("text/html", "")).lower()
            assert "<script" not in page and "<iframe" not in page and "<form" not in page, page
            assert not re.search(r"(href|src|action)\s*=\s*[\"']?\s*javascript:", page), page
            assert not re.search(r"<[^>]*\son\w+\s*=", page), page


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_hostile_cell_is_contained_and_reported_and_the_next_cell_answers(ip, case: Hostile, tmp_path) -> None:
    if case.xfail:
        pytest.xfail(case.xfail)
    outside = tmp_path / "outside"
    outside.mkdir()
    cell = case.cell(outside) if callable(case.cell) else case.cell
    name = "hostile"
    line = f"{name} --image {case.image} {case.line}".strip() if "--image" not in case.line else f"{name} {case.line}"
    before = snapshot(outside)
    error: BaseException | None = None
    try:
        run(ip, line, cell)
    except (CellError, UsageError) as exc:
        error = exc
    shown = report(ip, error)
    if case.ends is None:
        assert error is None, f"the cell failed: {shown[-2000:]}"
    else:
        assert isinstance(error, case.ends), f"the cell ended with {error!r}: {shown[-2000:]}"
    assert re.search(case.said, shown), f"not reported as {case.said!r}: {shown[-2000:]}"
    case.check(before, snapshot(outside))
    assert_displays_clean(ip)
    if case.displays is not None:
        assert len(last(ip).displays()) == case.displays, last(ip).displays()
    answer = "print(1 + 1)" if case.image != "localhost/busybox" else "expr 1 + 1"
    run(ip, name, answer)  # the kernel, and the notebook's container, answer the next cell
    assert last(ip).text() == "2\n", report(ip, None)
    CONTAINED[case.id] = True


def test_zz_summary(capsys) -> None:
    """The figure of issue 21: hostile cells contained of those tried (run after the corpus)."""
    tried = len(CASES)
    with capsys.disabled():
        print(f"\nhostile cells contained: {len(CONTAINED)} of {tried}")
    assert len(CONTAINED) == tried or not CONTAINED  # (all of them, when the corpus ran)
