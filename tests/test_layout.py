"""The package's layering, checked on its source: frontends use the runtime through its facade only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sandbox_kernel"
ALLOWED = {"sandbox_kernel.runtime", "sandbox_kernel.runtime.errors"}  # the facade and the one error tree


def _imports(path: Path, package_dir: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved; ``from X import name``
    counts ``X.name`` too when that is a module."""
    module = ".".join(path.relative_to(package_dir.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base))
            for alias in node.names:
                sub = package_dir.parent / Path(*f"{base}.{alias.name}".split("."))
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    out.append((node.lineno, f"{base}.{alias.name}"))
    return out


def past_the_facade(package_dir: Path) -> list[str]:
    """Imports of runtime internals by modules outside runtime/ (the frontends)."""
    frontends = [p for p in package_dir.rglob("*.py") if "runtime" not in p.relative_to(package_dir).parts]
    return [f"{p.relative_to(package_dir.parent)}:{line}: {name}" for p in frontends
            for line, name in _imports(p, package_dir)
            if name.startswith("sandbox_kernel.runtime.") and name not in ALLOWED]


def test_frontends_import_the_runtime_through_its_facade_only():
    past = past_the_facade(PACKAGE)
    assert past == [], "import these through sandbox_kernel.runtime (add them to its facade):\n" + "\n".join(past)


def test_the_check_sees_deep_imports(tmp_path):
    """It can fail: a frontend that reaches into a runtime module, relatively or absolutely, is named."""
    package = tmp_path / "sandbox_kernel"
    for name in ("runtime/__init__.py", "runtime/errors.py", "runtime/network.py", "runtime/spec.py",
                 "server/__init__.py", "__init__.py"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("")
    (package / "server" / "x.py").write_text("from ..runtime.network import Networks\nfrom ..runtime import errors\n")
    (package / "cli.py").write_text("from .runtime import spec, Store\nimport sandbox_kernel.runtime.network\n")
    assert past_the_facade(package) == ["sandbox_kernel/cli.py:1: sandbox_kernel.runtime.spec",
                                        "sandbox_kernel/cli.py:2: sandbox_kernel.runtime.network",
                                        "sandbox_kernel/server/x.py:1: sandbox_kernel.runtime.network"]


# What image/ and the engine share; userns_keeper and inside: the user's namespace, where the layers of a user who
# is not root are unpacked (inside.call forks through the launcher, imported when it is called).
LOW_LEVEL = {"syscalls", "fsutil", "idmap", "spec", "record", "errors", "userns_keeper", "inside"}


def test_the_image_room_uses_only_the_low_level_helpers_of_the_runtime():
    image = PACKAGE / "runtime" / "image"
    reaching = [f"{p.relative_to(PACKAGE.parent)}:{line}: {name}" for p in image.glob("*.py")
                for line, name in _imports(p, PACKAGE)
                if name.startswith("sandbox_kernel.runtime.") and not name.startswith("sandbox_kernel.runtime.image")
                and name.split(".")[2] not in LOW_LEVEL]
    assert reaching == [], "\n".join(reaching)


ENGINE = {"Containers", "Store", "Networks", "pull", "push", "load", "save", "build", "login", "logout"}


def test_the_verbs_reach_the_runtime_only_through_a_client():
    """Each verb is written once for a LocalClient and a RemoteClient: one that takes the engine itself
    (Containers, the Store, pull, ...) would work on this machine only."""
    taken = []
    for path in sorted((PACKAGE / "verbs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "runtime" and node.level:
                taken += [f"{path.name}:{node.lineno}: {a.name}" for a in node.names if a.name in ENGINE]
    assert taken == [], "the verbs call the client, not the engine:\n" + "\n".join(taken)
