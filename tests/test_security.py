"""The seccomp program itself, checked without running it."""

from __future__ import annotations

import pytest

from sandbox_kernel.runtime import security


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_filter_is_well_formed(machine):
    prog = security.build_filter(machine)
    assert len(prog) < 4096
    audit = security.ARCHES[machine][0]
    assert prog[0] == (security.LD_W_ABS, 0, 0, security.OFFSET_ARCH)
    assert prog[1][0] == security.JEQ_K and prog[1][3] == audit
    returns = {k for code, _, _, k in prog if code == security.RET_K}
    assert security.RET_KILL_PROCESS in returns and security.RET_ALLOW in returns
    for i, (code, jt, jf, _) in enumerate(prog):
        if code != security.RET_K:
            assert i + 1 + max(jt, jf) < len(prog), "every jump lands inside the program"
    assert prog[-1][0] == security.RET_K, "the program cannot fall off its end"


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_dangerous_syscalls_are_denied(machine):
    denied = security.denied_syscalls(machine)
    for name in ("mount", "unshare", "setns", "ptrace", "bpf", "keyctl", "kexec_load", "init_module", "reboot",
                 "open_tree", "fsopen", "io_uring_setup", "userfaultfd", "pivot_root"):
        assert name in denied
    numbers = {k for code, _, _, k in security.build_filter(machine) if code == security.JEQ_K}
    assert set(denied.values()) <= numbers


def test_unknown_architecture():
    with pytest.raises(OSError):
        security.build_filter("mips")
