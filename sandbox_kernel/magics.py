"""IPython magics. For now ``%container images|inspect REF``; the ``%%container``
cell magic arrives with the engine (see the magics issue)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from . import format as fmt
from .runtime import SandboxError, Store


@magics_class
class ContainerMagics(Magics):
    def __init__(self, shell: Any, store: Store | None = None):
        super().__init__(shell)
        self._store = store

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store()
        return self._store

    @line_magic
    def container(self, line: str) -> None:
        """``%container images`` lists images; ``%container inspect REF`` shows one."""
        words = shlex.split(line)
        if not words:
            raise UsageError("usage: %container images | inspect REF")
        try:
            if words[0] == "images":
                print(fmt.images_table(self.store))
            elif words[0] == "inspect" and len(words) == 2:
                print(json.dumps([fmt.inspect_image(self.store.resolve(words[1]))], indent=2))
            else:
                raise UsageError(f"%container: unknown subcommand {line!r}; try 'images' or 'inspect REF'")
        except SandboxError as exc:
            raise UsageError(str(exc)) from None


def register(ipython: Any) -> None:
    ipython.register_magics(ContainerMagics(ipython))
