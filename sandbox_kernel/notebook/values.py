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
import math
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
        try:  # (it came out of json.loads: plain data by construction, but maybe nested past this stack's limit)
            json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            raise ValueRefused(f"--out {name}: the container sent a JSON value nested too deep") from None
        return value
    if kind not in ("bytes", "npy"):
        raise ValueRefused(f"--out {name}: the container sent a value of kind {kind!r:.60}; "
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
    return _load_npy(name, numpy, raw)


def _load_npy(name: str, numpy: Any, raw: bytes) -> Any:
    """An array from ``.npy`` bytes, its header checked first: no objects (pickle), and no more data claimed than
    follows (numpy allocates what the header claims before it reads a byte: 8 GiB for a 100-byte payload)."""
    from numpy.lib import format as npy

    stream = io.BytesIO(raw)
    try:
        version = npy.read_magic(stream)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _fortran, dtype = read_header(stream)
        claimed = math.prod(shape) * dtype.itemsize
    except Exception as exc:
        raise ValueRefused(f"--out {name}: the container sent a malformed .npy ({_said(exc)})") from None
    if dtype.hasobject:
        raise ValueRefused(f"--out {name}: the container sent an array of objects (it would need pickle); "
                           "refused")
    if claimed > len(raw) - stream.tell():
        raise ValueRefused(f"--out {name}: the container sent a .npy whose header claims {claimed} bytes of data, "
                           f"and {len(raw) - stream.tell()} follow")
    try:
        return numpy.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:
        raise ValueRefused(f"--out {name}: the container sent a malformed .npy ({_said(exc)})") from None


def _said(exc: Exception) -> str:
    """An exception's message as one short line (numpy's may run over several)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]
