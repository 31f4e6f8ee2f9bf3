"""Run a command (the VM of scripts/test-vm.sh), pass on what it prints as it comes, and end it if it goes quiet.

    python scripts/vm_watch.py IDLE_SECONDS COMMAND...

A guest under qemu's software emulation can stop making progress as a whole (seen once in CI: the suite stopped
in the middle of a test for over an hour, pytest's own per-test timeout never fired because the guest's clock
stood too). When the command prints nothing for IDLE_SECONDS (more than pytest's per-test timeout, so that a test
that merely hangs is reported by pytest first), the command and everything it started (its own session: vng,
virtme-run, qemu) get SIGTERM, then SIGKILL, and this exits 124 after one line on stderr that says so.
Otherwise it exits with the command's status.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    idle, command = float(argv[0]), argv[1:]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    os.set_blocking(out, False)
    with selectors.DefaultSelector() as sel:
        sel.register(out, selectors.EVENT_READ)
        last = time.monotonic()
        while True:
            left = idle - (time.monotonic() - last)
            if left <= 0:
                print(f"\ntest-vm: the guest printed nothing for {idle:.0f} s: ending it", file=sys.stderr,
                      flush=True)
                _end(proc)
                return 124
            if not sel.select(timeout=left):
                continue
            data = os.read(out, 65536)
            if not data:
                break
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            last = time.monotonic()
    return proc.wait()


def _end(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's session (its group: it and all it started), SIGKILL after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the group may outlive its leader for a moment: qemu is a grandchild
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
