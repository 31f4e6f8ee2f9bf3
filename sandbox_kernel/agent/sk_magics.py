# ruff: noqa: UP031  (%-formatting on purpose: this file runs under the image's python3, maybe old)
"""IPython's syntax in ``%%container`` cells (``!ls``, ``%timeit``, ``%matplotlib inline``...). Standard library only.

The agent runs a cell as plain Python; only a cell that does not parse comes
here. When the image has IPython, IPython itself turns the cell into Python
(``get_ipython().run_line_magic(...)``) and runs every magic, with a shell whose
namespace is the cells' and whose displays go to the notebook. Without IPython,
the lines students paste from books work the same way: ``!cmd`` (also ``x = !cmd``),
``%time``, ``%timeit``, ``%%time``, ``%%timeit``, ``%matplotlib inline``,
``%pip``, ``%cd`` and ``%pwd``; any other magic is refused in one sentence
that says so.
"""

import base64
import math
import os
import re
import shlex
import subprocess
import sys
import time
import timeit

KNOWN = "!cmd, %time, %timeit, %%time, %%timeit, %matplotlib inline, %pip, %cd, %pwd"
HELPER = "__sk_magics__"
_MAGIC_LINE = re.compile(r"^(\s*)(%{1,2}|!)(.*)$")
_TIMEIT_OPTIONS = re.compile(r"\s*((?:-[nr]\s*\d+\s*|-[qo]\s+)*)(.*)$", re.S)
_EXPANSION = re.compile(r"\$\$|\$([A-Za-z_]\w*)|\{([^{}]+)\}")
_ASSIGN_SYSTEM = re.compile(r"^(\s*)([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)\s*=\s*!(.*)$")


class UsageError(Exception):
    """A magic this container cannot run (the name IPython gives its own)."""


class Magics:
    """One per worker: the IPython shell once made, or the agent's own few magics."""

    def __init__(self, worker):
        self.worker = worker
        self.shell = None
        self.no_ipython = False

    def transform(self, code):
        """The cell as Python code to run in the cells' namespace."""
        shell = self.ipython()
        if shell is not None:
            return shell.transform_cell(code)
        self.worker.ns[HELPER] = self
        return plain_transform(code)

    # -- with IPython ----------------------------------------------------------------------------------------------

    def ipython(self):
        if self.shell is not None or self.no_ipython:
            return self.shell
        try:
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config
        except ImportError:
            self.no_ipython = True
            return None
        config = Config()
        config.HistoryManager.enabled = False  # (no sqlite file in the container for every worker)
        worker = self.worker
        shell = InteractiveShell.instance(config=config, user_ns=worker.ns)

        def publish(data, metadata=None, source=None, transient=None, update=False, **kwargs):
            data = dict((k, base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in data.items())
            worker.send({"type": "display", "data": data, "metadata": metadata or {}})

        shell.display_pub.publish = publish
        shell.system = shell.system_raw  # (!cmd straight to the cell's pipes, as the agent's own: no pty, no \r\n)

        def matplotlib(line=""):
            """Figures already show as images (the agent's backend): ``%matplotlib inline`` changes nothing."""
            check_matplotlib(line)

        shell.register_magic_function(matplotlib, "line", "matplotlib")
        import builtins

        builtins.display = worker.display  # (the agent's display, as before the shell was made)
        worker.ns["display"] = worker.display
        self.shell = shell
        return shell

    # -- without IPython: the calls plain_transform writes -----------------------------------------------------------

    def system(self, command):
        """``!cmd``: the shell's output streams into the cell; its status goes to ``_exit_code`` (as IPython's)."""
        status = subprocess.call(["/bin/sh", "-c", expand(command, self.worker.ns)], stdin=subprocess.DEVNULL)
        self.worker.ns["_exit_code"] = status
        return None

    def getoutput(self, command):
        """``x = !cmd``: its output's lines (stderr too, as IPython's)."""
        proc = subprocess.run(["/bin/sh", "-c", expand(command, self.worker.ns)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.worker.ns["_exit_code"] = proc.returncode
        return proc.stdout.decode(errors="replace").splitlines()

    def line(self, name, arg):
        ns = self.worker.ns
        if name == "time":
            return timed(arg, ns)
        if name == "timeit":
            return time_it(arg, "", ns)
        if name == "matplotlib":
            return check_matplotlib(arg)
        if name == "pip":
            return self.system(" ".join(shlex.quote(a) for a in [sys.executable, "-m", "pip", *shlex.split(arg)]))
        if name == "cd":
            os.chdir(os.path.expanduser(arg.strip() or "~"))
            print(os.getcwd())
            return None
        if name == "pwd":
            return os.getcwd()
        raise unavailable("%" + name)

    def cell(self, name, arg, body):
        ns = self.worker.ns
        if name == "time":
            return timed(body, ns, cell=True)
        if name == "timeit":
            return time_it(arg, body, ns, cell=True)
        raise unavailable("%%" + name)


def expand(command, ns):
    """IPython's expansion of a shell line: ``$name`` and ``{expression}`` of the cells' namespace (what is not
    found is left to the shell: ``$HOME``), ``$$`` a plain ``$``."""
    def value(match):
        if match.group(0) == "$$":
            return "$"
        name, expression = match.group(1), match.group(2)
        if name is not None:
            return str(ns[name]) if name in ns else match.group(0)
        try:
            return str(eval(expression, ns))
        except Exception:
            return match.group(0)

    return _EXPANSION.sub(value, command)


def unavailable(magic):
    return UsageError("%s is not available in this container: its image has no IPython (here: %s). "
                      "An image with IPython runs every magic." % (magic, KNOWN))


def check_matplotlib(line):
    if line.strip() not in ("", "inline"):
        raise UsageError("%%matplotlib %s is not available in a container: figures show as images "
                         "(%%matplotlib inline)" % line.strip())


def plain_transform(code):
    """Each magic line becomes a call of the helper, at the same indentation and on the same line (tracebacks keep
    their line numbers); a cell magic on the first line takes the rest of the cell."""
    lines = code.split("\n")
    first = lines[0].strip() if lines else ""
    if first.startswith("%%"):
        name, _, arg = first[2:].partition(" ")
        return "%s.cell(%r, %r, %r)" % (HELPER, name, arg.strip(), "\n" + "\n".join(lines[1:]))
    out = []
    for text in lines:
        assign = _ASSIGN_SYSTEM.match(text)
        if assign:
            indent, names, command = assign.groups()
            out.append("%s%s = %s.getoutput(%r)" % (indent, names, HELPER, command))
            continue
        match = _MAGIC_LINE.match(text)
        if not match:
            out.append(text)
            continue
        indent, kind, rest = match.groups()
        if kind == "!":
            out.append("%s%s.system(%r)" % (indent, HELPER, rest))
        elif kind == "%%":
            raise UsageError("cell magic %%%%%s must be on the cell's first line" % rest.split(" ")[0])
        else:
            name, _, arg = rest.partition(" ")
            out.append("%s%s.line(%r, %r)" % (indent, HELPER, name, arg.strip()))
    return "\n".join(out)


def _compiled(source, mode):
    return compile(source, "<magic>", mode)


def timed(source, ns, cell=False):
    """``%time``: runs it once; CPU and wall time as IPython prints them. An expression's value is returned."""
    source = source.strip("\n") if not cell else source
    try:
        code, mode = _compiled(source.strip(), "eval"), "eval"
    except SyntaxError:
        code, mode = _compiled(source, "exec"), "exec"
    cpu0, wall0 = os.times(), time.perf_counter()
    try:
        value = eval(code, ns) if mode == "eval" else exec(code, ns)
    finally:
        wall, cpu1 = time.perf_counter() - wall0, os.times()
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        print("CPU times: user %s, sys: %s, total: %s" % (format_time(user), format_time(system),
                                                          format_time(user + system)))
        print("Wall time: %s" % format_time(wall))
    return value


def time_it(arg, body, ns, cell=False):
    """``%timeit [-n N] [-r R] STMT`` (and ``%%timeit [-n N] [-r R] SETUP`` over the cell): IPython's summary line."""
    options, rest = _TIMEIT_OPTIONS.match(arg).groups()
    number = int((re.findall(r"-n\s*(\d+)", options) or [0])[-1])
    repeat = int((re.findall(r"-r\s*(\d+)", options) or [7])[-1])
    setup, stmt = (rest.strip() or "pass", body) if cell else ("pass", rest.strip() or "pass")
    timer = timeit.Timer(stmt, setup, globals=ns)
    if not number:
        number = timer.autorange()[0]
    runs = [t / number for t in timer.repeat(repeat=repeat, number=number)]
    mean = sum(runs) / len(runs)
    dev = math.sqrt(sum((r - mean) ** 2 for r in runs) / len(runs))
    print("%s ± %s per loop (mean ± std. dev. of %d run%s, %d loop%s each)" % (
        format_time(mean), format_time(dev), repeat, "" if repeat == 1 else "s", number, "" if number == 1 else "s"))
    return None


def format_time(seconds):
    """As IPython's _format_time: 3 significant digits and a unit (s, ms, µs, ns)."""
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return "%dmin %.0f s" % (minutes, rest) if minutes < 60 else "%dh %dmin" % divmod(minutes, 60)
    for unit, scale in (("s", 1.0), ("ms", 1e3), ("µs", 1e6), ("ns", 1e9)):
        if seconds >= 1.0 / scale or unit == "ns":
            return "%.3g %s" % (seconds * scale, unit)
    return "%.3g s" % seconds
