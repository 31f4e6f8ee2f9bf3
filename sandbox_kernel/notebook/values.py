"""Values that cross the container boundary (``--in``/``--out``): JSON, bytes, or ``.npy`` without pickle.

Nothing that comes out of a container is ever unpickled or evaluated: a value is
JSON (``json.loads``), bytes (base64), or a numpy array read with
``allow_pickle=False`` (an array of objects, which would need pickle, is refused).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from ..runtime import UsageError

MAX_VALUE = 64 << 20


class ValueRefused(UsageError):
    """A value the container sent that is not plain data."""


def encode(name: str, value: Any) -> dict[str, Any]:
    """A notebook value for ``--in`` (by the agent's own rule, :func:`wire_value`); a clear error for what cannot go."""
    from ..agent.agent import NotData, wire_value

    try:
        return wire_value(value)
    except NotData as exc:
        if exc.kind == "objects":
            raise UsageError(f"--in {name}: an array of Python objects cannot go into a container") from None
        raise UsageError(f"--in {name}: a {exc.kind} cannot go into a container "
                         "(JSON values, bytes and numpy arrays can)") from None


def decode(name: str, item: Any) -> Any:
    """A value the container sent back for ``--out``: data only."""
    if not isinstance(item, dict):
        raise ValueRefused(f"--out {name}: the container sent something that is not a value")
    kind = item.get("kind")
    if kind == "json":
        value = item.get("value")
        json.dumps(value)  # (it came out of json.loads: plain data by construction)
        return value
    if kind not in ("bytes", "npy"):
        raise ValueRefused(f"--out {name}: the container sent a value of kind {kind!r}; "
                           "only json, bytes and npy are accepted")
    text = item.get("b64")
    if not isinstance(text, str) or len(text) > MAX_VALUE * 4 // 3 + 4:
        raise ValueRefused(f"--out {name}: the container sent a malformed or oversized value")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueRefused(f"--out {name}: the container sent bytes that are not base64") from None
    if kind == "bytes":
        return raw
    try:
        import numpy
    except ImportError:
        raise ValueRefused(f"--out {name} is a numpy array, and numpy is not installed in the kernel") from None
    try:
        return numpy.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueRefused(f"--out {name}: the container sent an array of objects (it would need pickle); "
                               "refused") from None
        raise ValueRefused(f"--out {name}: the container sent a malformed .npy ({exc})") from None
    except Exception as exc:
        raise ValueRefused(f"--out {name}: the container sent a malformed .npy ({exc})") from None
