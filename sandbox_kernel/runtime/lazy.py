"""A module imported on first use: ps, diff, commit... do not pay for the engine's start-up code."""

from __future__ import annotations

import importlib
from typing import Any


class _Module:
    def __init__(self, name: str):
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


def module(name: str) -> Any:
    """``name`` (absolute), imported when an attribute of it is first read."""
    return _Module(name)
