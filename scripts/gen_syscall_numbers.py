"""Write sandbox_kernel/runtime/syscall_numbers.py from the kernel's own headers (Debian's linux-libc-dev).

    python3 scripts/gen_syscall_numbers.py   # needs gcc and linux-libc-dev; run again when the headers change

x86_64 from asm/unistd_64.h; aarch64 from asm-generic/unistd.h, read as arm64 reads it (64-bit, with the
__ARCH_WANT_* that arch/arm64/include/uapi/asm/unistd.h defines). The numbers are the kernel's ABI:
they never change once a release has them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "sandbox_kernel" / "runtime" / "syscall_numbers.py"
ARM64_WANTS = ("RENAMEAT", "NEW_STAT", "SET_GET_RLIMIT", "TIME32_SYSCALLS", "SYS_CLONE3", "MEMFD_SECRET")
HEADERS = {
    "x86_64": ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", []),
    "aarch64": ("/usr/include/asm-generic/unistd.h", [f"-D__ARCH_WANT_{w}" for w in ARM64_WANTS]),
}


def numbers(header: str, flags: list[str]) -> dict[str, int]:
    macros = subprocess.run(["gcc", "-E", "-dM", *flags, header], capture_output=True, text=True, check=True).stdout
    raw = dict(re.findall(r"^#define (__NR(?:3264)?_\w+) (\S+)$", macros, re.MULTILINE))
    out: dict[str, int] = {}
    for name, value in raw.items():
        while value in raw:  # an alias: __NR_fcntl __NR3264_fcntl
            value = raw[value]
        if name.startswith("__NR_") and value.isdigit() and name != "__NR_syscalls":
            out[name[len("__NR_"):]] = int(value)
    return dict(sorted(out.items(), key=lambda item: (item[1], item[0])))


def main() -> None:
    tables = {machine: numbers(header, flags) for machine, (header, flags) in HEADERS.items()}
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "linux-libc-dev"], capture_output=True,
                             text=True).stdout.strip() or "unknown"
    lines = [
        '"""System call numbers by name, as the kernel headers give them (generated: do not edit).',
        "",
        f"Made by scripts/gen_syscall_numbers.py from Debian's linux-libc-dev {version}.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
    ]
    for machine, table in tables.items():
        lines.append(f"{machine.upper()}: dict[str, int] = {{")
        lines += [f'    "{name}": {number},' for name, number in table.items()]
        lines.append("}")
        lines.append("")
    OUT.write_text("\n".join(lines))
    print(f"{OUT}: " + ", ".join(f"{m} {len(t)} syscalls (last {max(t.values())})" for m, t in tables.items()))


if __name__ == "__main__":
    main()
