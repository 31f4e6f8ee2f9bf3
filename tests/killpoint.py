"""Run the CLI and kill it with SIGKILL at its Nth call into the package: ``python killpoint.py N ARGS...``.

The Nth Python function call made in sandbox_kernel's own code (any thread of the controlling process) is
where it dies, so N picks a point anywhere in a command without touching the code. ``N = 0`` runs the command
whole and writes how many such calls it made to ``$KILLPOINT_COUNT``: the range to spread kill points over.
Forked children (a container's monitor, its init) drop the hook: only the controlling process is killed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import sandbox_kernel

PACKAGE = os.path.dirname(os.path.abspath(sandbox_kernel.__file__)) + os.sep


def main() -> int:
    target = int(sys.argv[1])
    me = os.getpid()
    count = 0

    def hook(frame, event, arg):  # (sys.setprofile's signature)
        nonlocal count
        if event != "call" or not frame.f_code.co_filename.startswith(PACKAGE):
            return
        count += 1
        if count == target and os.getpid() == me:
            os.kill(me, signal.SIGKILL)

    def drop_hook() -> None:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]

    os.register_at_fork(after_in_child=drop_hook)
    threading.setprofile(hook)
    sys.setprofile(hook)
    from sandbox_kernel.cli import main as cli

    try:
        return cli(sys.argv[2:])
    finally:
        drop_hook()
        if target == 0:
            with open(os.environ["KILLPOINT_COUNT"], "w") as fh:
                fh.write(str(count))


if __name__ == "__main__":
    sys.exit(main())
