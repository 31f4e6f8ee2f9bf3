"""Fuzz target for the agent protocol decoder: the bytes a container's agent sends the kernel, and ``--out`` values.

The decoder is the kernel's own code, driven as a notebook drives it: ``Session._on_stdout`` (the container's
reader thread: frames out of the agent's stdout, size-checked and budgeted, onto the queue) and then, in the main
thread and deeper in its stack as under IPython, ``Session._handle`` (each message to the cell: its output through
``sanitize`` as the notebook shows it, its ``--out`` values through ``values.decode``). What goes in: any bytes;
frames as the agent writes them; the same frames with hostile contents (unknown types, fields of the wrong type,
deep nesting, huge counts, bad UTF-8); huge length headers; truncated streams; all of it split at any points.

Properties:

* the decoder gives messages, or one error of the project's tree (a ``SandboxError``, one line) that stops the
  container, and never raises anything else, in the reader thread or in the cell;
* memory stays bounded by the input (tracemalloc's peak): no header, count or shape claim is believed before
  the bytes are there;
* valid frames come out the same, in order, however the stream is split;
* a ``--out`` value is JSON, bytes or an array without objects, or ``ValueRefused`` in one line: a pickle (as a
  kind, or inside a ``.npy``) is never loaded.

A fixed set of examples by default (about 10 s), fresh ones with ``pytest --fuzz N`` (fuzzing.py).

Found by the first runs (fixed in session.py): a ``done`` frame whose ``wall`` or ``cpu`` was a string or a
list raised ValueError or TypeError in the cell (a 400-digit integer, OverflowError). Found while writing the
target, by reading the decoder with it (pinned by the regressions at the end, and in the strategies):
a frame over 64 KiB with an unclosed string of escaped quotes (``"\\"\\"\\"...``) made the value counter's
regex quadratic (70 KB: 22 s, holding the GIL, so the whole kernel froze; 16 MiB: years); JSON nested near
the recursion limit decoded in the reader thread and raised RecursionError in the cell (``str`` of an error's
fields, ``json.dumps`` of an ``--out`` value); control frames (done, ready, ...) were counted but not sized,
so 10,000 of 16 MiB each could pile up between two cells; a ``.npy`` whose header claimed a huge shape made
numpy allocate it before reading a byte (values.py).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import struct
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy
import pytest
from fuzzing import fuzz_settings
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from sandbox_kernel.notebook import sanitize, values
from sandbox_kernel.notebook.session import MAX_FRAME, CellResult, OutputLimits, Session
from sandbox_kernel.runtime.errors import SandboxError

FUZZ = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
HEADER = struct.Struct(">I")
LIMITS = OutputLimits(stream=4096, display=65536)  # the magics' smallest: drops are exercised too
IPYTHON_DEPTH = 150  # frames under the cell in a kernel (ipykernel, asyncio, IPython, the magic): a bound, roomy
CELL_ID = 7


# -- the decoder, driven as the notebook drives it -----------------------------------------------------------------


class Sink:
    """A cell's output as the notebook gets it: streams as text, displays cleaned by ``sanitize``."""

    def __init__(self) -> None:
        self.streams: list[tuple[str, str]] = []
        self.displays: list[dict[str, Any]] = []

    def stream(self, name: str, text: str) -> None:
        assert name in ("stdout", "stderr") and isinstance(text, str)
        self.streams.append((name, text))

    def display(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.displays.append(sanitize.sanitize(data, metadata)[0])


def read_in_thread(session: Session, chunks: list[bytes]) -> None:
    """The container's reader thread: each chunk as it would come off the agent's stdout pipe."""
    failed: list[BaseException] = []

    def reader() -> None:
        try:
            for chunk in chunks:
                session._on_stdout(chunk)
        except BaseException as exc:  # re-raised in the test: the reader thread must never raise
            failed.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def at_depth(depth: int, call: Callable[[], Any]) -> Any:
    """``call()`` ``depth`` frames deeper: the cell's thread under a kernel, not the reader's shallow stack."""
    return call() if depth <= 0 else at_depth(depth - 1, call)


class Outcome:
    def __init__(self) -> None:
        self.sink = Sink()
        self.messages: list[dict[str, Any]] = []
        self.error: SandboxError | None = None
        self.values: dict[str, Any] = {}
        self.refused: list[values.ValueRefused] = []


def cell(session: Session, outcome: Outcome) -> None:
    """What the cell's thread does with what was queued, until the queue is empty or the container is stopped."""
    result = CellResult()
    while not session.queue.empty():
        kind, value = session.queue.get_nowait()
        if kind == "msg":
            outcome.messages.append(value)
        try:
            done = session._handle(kind, value, result, outcome.sink)
        except SandboxError as exc:  # ("bad": the container is stopped, said in one line)
            outcome.error = exc
            return
        if done:
            if result.result is not None:
                sanitize.sanitize(*result.result)
            for name, item in result.outputs.items():  # (the magics decode those that --out names)
                try:
                    outcome.values[name] = values.decode(name, item)
                except values.ValueRefused as exc:
                    outcome.refused.append(exc)
            result = CellResult()


def decode_stream(chunks: list[bytes], limits: OutputLimits = LIMITS) -> Outcome:
    session = Session(None, "fuzz", limits)  # type: ignore[arg-type]
    session.counter = CELL_ID
    outcome = Outcome()
    read_in_thread(session, chunks)
    at_depth(IPYTHON_DEPTH, lambda: cell(session, outcome))
    if outcome.error is not None:
        assert "\n" not in str(outcome.error), str(outcome.error)
        assert session.queue.empty() and not session._buf, "after the error nothing more is kept"
    for refused in outcome.refused:
        assert "\n" not in str(refused), str(refused)
    return outcome


def bounded(size: int, run: Callable[[], Any], per_byte: int = 100) -> Any:
    """``run()``, checking that its peak allocation stays within ``per_byte`` times the input, plus 1 MiB."""
    tracemalloc.start()
    try:
        out = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= (1 << 20) + per_byte * size, f"{peak} bytes allocated for {size} bytes of input"
    return out


def warm_up() -> None:
    """What the first call imports (nh3, markdown-it, numpy's format module) is not the input's allocation."""
    mimes = ["text/html", "text/markdown", "image/png", "image/svg+xml", "application/javascript", "text/latex"]
    for trusted in (False, True):
        sanitize.sanitize({mime: "<b>x</b>" for mime in mimes}, {}, trusted)
    values.decode("w", {"kind": "npy", "b64": base64.b64encode(npy_bytes(numpy.arange(2))).decode()})
    decode_stream([frame(b'{"type":"error","traceback":' + nested(300, "[") + b"}")])


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def agent_body(message: dict[str, Any]) -> bytes:
    """A body as the agent's ``send`` writes it."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- what the agent sends, and hostile variants ----------------------------------------------------------------------

TEXT = st.text(max_size=40)
MIME = st.sampled_from(["text/plain", "text/html", "text/markdown", "image/png", "image/svg+xml",
                        "application/json", "application/javascript", "text/latex", "x/unknown"])
HOSTILE_HTML = st.sampled_from(["<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
                                "<a href='javascript:alert(1)'>x</a>", "<svg onload=alert(1)>", "<b>ok</b>"])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | TEXT, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)


def _value_items() -> st.SearchStrategy[dict[str, Any]]:
    """--out values as the agent's wire_value makes them."""
    arrays = st.sampled_from([numpy.arange(6, dtype=numpy.float32).reshape(2, 3), numpy.array(3),
                              numpy.array(["a", "bc"]), numpy.zeros((0, 4))])
    return (JSON.map(lambda v: {"kind": "json", "value": v})
            | st.binary(max_size=40).map(lambda b: {"kind": "bytes", "b64": base64.b64encode(b).decode()})
            | arrays.map(lambda a: {"kind": "npy", "b64": base64.b64encode(npy_bytes(a)).decode()}))


VALID = st.one_of(
    st.fixed_dictionaries({"type": st.just("stream"), "name": st.sampled_from(["stdout", "stderr"]), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("display"), "data": st.dictionaries(MIME, TEXT | HOSTILE_HTML, max_size=3),
                           "metadata": st.just({})}),
    st.fixed_dictionaries({"type": st.just("result"), "data": st.dictionaries(MIME, TEXT, max_size=3),
                           "metadata": st.just({}), "count": st.integers(0, 100)}),
    st.fixed_dictionaries({"type": st.just("error"), "ename": st.sampled_from(["ValueError", "KeyboardInterrupt"]),
                           "evalue": TEXT, "traceback": st.lists(TEXT, max_size=3)}),
    st.fixed_dictionaries({"type": st.just("done"), "id": st.sampled_from([CELL_ID, CELL_ID, CELL_ID - 1]),
                           "status": st.sampled_from(["ok", "error"]),
                           "outputs": st.dictionaries(st.sampled_from(["a", "b", "c"]), _value_items(), max_size=2),
                           "wall": st.floats(0, 1e6), "cpu": st.floats(0, 1e6)}),
    st.fixed_dictionaries({"type": st.just("died"), "reason": st.sampled_from(["died", "killed"]),
                           "signal": st.none() | st.integers(1, 64), "code": st.none() | st.integers(0, 255)}),
    st.fixed_dictionaries({"type": st.just("ready"), "pid": st.integers(1, 99), "python": st.just("3.11.2")}),
)
FIELDS = ["type", "name", "text", "data", "metadata", "ename", "evalue", "traceback", "id", "status", "outputs",
          "wall", "cpu", "reason", "signal", "code", "count"]
ODD = st.sampled_from([None, True, -1, 2**70, 1e308, "x", "1e400", "nan", "-inf", [], [1, "a"], {}, {"k": [None]},
                       "stream", "done", "\x00\u202e", "\ud800"])


def _hostile_messages() -> st.SearchStrategy[dict[str, Any]]:
    """A valid message with one of its fields set to a value of any type, and maybe other fields added."""
    def mutate(message: dict[str, Any], index: int, value: Any, extra: list[tuple[str, Any]]) -> dict[str, Any]:
        key = sorted(message)[index % len(message)]
        return {**message, key: value, **dict(extra)}

    odd = ODD | JSON | st.sampled_from(["unknown", "input_request", "comm_open", ""])
    return st.builds(mutate, VALID, st.integers(0, 10), odd, st.lists(st.tuples(st.sampled_from(FIELDS), odd),
                                                                          max_size=2))


def nested(depth: int, kind: str) -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "[" else (b'{"a":' * depth + b"1" + b"}" * depth)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """Bodies the agent would never write: deep nesting, huge counts, bad UTF-8, not JSON, not objects."""
    choice = draw(st.integers(0, 7))
    field = draw(st.sampled_from(["ename", "evalue", "traceback", "data", "text", "outputs", "wall", "metadata"]))
    what = draw(st.sampled_from(["error", "stream", "display", "result", "done", "ready"]))
    head = b'{"type":"%s","id":%d,"%s":' % (what.encode(), CELL_ID, field.encode())
    if choice == 0:  # nesting around the recursion limit
        depth = draw(st.sampled_from([50, 700, 850, 900, 950, 980, 990, 1000, 3000]))
        return head + nested(depth, draw(st.sampled_from(["[", "{"]))) + b"}"
    if choice == 1:  # many values in one frame (past 64 KiB, the counter's threshold)
        count = draw(st.sampled_from([1000, 22_000, 40_000, 70_000]))
        return head + b"[" + b",".join([draw(st.sampled_from([b"0", b"[]", b"{}", b'""']))] * count) + b"]}"
    if choice == 2:  # strings the value counter must skip, and ones it must not hang on
        piece = draw(st.sampled_from([b'\\"', b"\\\\", b'"', b",[{", b"\\"]))
        count = draw(st.sampled_from([10, 1000, 40_000]))
        closed = draw(st.booleans())
        return head + b'"' + piece * count + (b'"}' if closed else b"")
    if choice == 3:  # bad UTF-8 and other encodings
        body = agent_body(draw(VALID))
        where = draw(st.integers(0, len(body)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf"]))
        return body[:where] + junk + body[where:]
    if choice == 4:
        return json.dumps(draw(VALID)).encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-8-sig"])))
    if choice == 5:  # JSON that is not an object, or numbers that do not fit
        return draw(st.sampled_from([b"[]", b"1", b'"done"', b"null", b"1e999", b"-" + b"9" * 5000,
                                     b'{"type":"done","id":7,"wall":1e999}', b"NaN", b'{"type":"done","id":NaN}']))
    if choice == 6:
        return agent_body(draw(_hostile_messages()))
    return draw(st.binary(max_size=64))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Frames, valid and hostile, then maybe a huge header or a cut."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            parts.append(frame(agent_body(draw(VALID))))
        elif kind == 1:
            parts.append(frame(draw(hostile_bodies())))
        else:
            parts.append(frame(agent_body(draw(_hostile_messages()))))
    data = b"".join(parts)
    tail = draw(st.integers(0, 3))
    if tail == 1:  # a length header that claims more than may come, or than ever comes
        size = draw(st.sampled_from([MAX_FRAME, MAX_FRAME + 1, 2**32 - 1, 2**31]) | st.integers(0, 2**32 - 1))
        data += HEADER.pack(size) + draw(st.binary(max_size=32))
    elif tail == 2:  # truncated
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif tail == 3:
        data += draw(st.binary(max_size=16))
    return data


@pytest.fixture(autouse=True, scope="module")
def _warm() -> None:
    warm_up()


@fuzz_settings(400, **FUZZ)
@given(streams(), st.lists(st.integers(0, 1 << 20), max_size=6))
def test_any_stream_gives_messages_or_one_error_within_bounded_memory(data: bytes, cuts: list[int]) -> None:
    outcome = bounded(len(data), lambda: decode_stream(split(data, cuts)))
    for name, value in outcome.values.items():
        assert_plain(name, value)
    for shown in outcome.sink.displays:
        html = shown.get("text/html", "").lower()
        assert "<script" not in html and "onerror" not in html and "onload" not in html and "javascript:" not in html


@fuzz_settings(300, **FUZZ)
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=4))
def test_any_bytes_give_messages_or_one_error(data: bytes, cuts: list[int]) -> None:
    bounded(len(data), lambda: decode_stream(split(data, cuts)))


@fuzz_settings(300, **FUZZ)
@given(st.lists(VALID, min_size=1, max_size=6), st.lists(st.integers(0, 1 << 16), max_size=12))
def test_valid_frames_survive_any_split(messages: list[dict[str, Any]], cuts: list[int]) -> None:
    """However the pipe cuts the stream (one byte at a time included), the same messages in the same order."""
    data = b"".join(frame(agent_body(m)) for m in messages)
    roomy = OutputLimits(stream=1 << 20, display=1 << 20)
    whole = decode_stream([data], roomy)
    pieces = decode_stream(split(data, cuts), roomy)
    assert whole.error is None and pieces.error is None
    assert pieces.messages == whole.messages == json.loads(json.dumps(messages))
    assert pieces.sink.streams == whole.sink.streams and pieces.sink.displays == whole.sink.displays


def test_valid_frames_survive_a_byte_at_a_time() -> None:
    messages = [{"type": "stream", "name": "stdout", "text": "é\n"}, {"type": "done", "id": CELL_ID, "status": "ok",
                "outputs": {"a": {"kind": "bytes", "b64": "AAE="}}, "wall": 0.1, "cpu": 0.0}]
    data = b"".join(frame(agent_body(m)) for m in messages)
    outcome = decode_stream([data[i:i + 1] for i in range(len(data))])
    assert outcome.messages == messages and outcome.values == {"a": b"\x00\x01"}


# -- regressions of what the fuzzing found -------------------------------------------------------------------------


def test_an_unclosed_string_of_escaped_quotes_is_counted_in_linear_time() -> None:
    """70 KB of it took 22 s in the value counter's regex (quadratic, holding the GIL); 16 MiB now takes
    about as long as reading it. (No time asserted: before the fix this test would not end.)"""
    body = b'{"type":"display","data":"' + b'\\"' * ((MAX_FRAME - 64) // 2)
    outcome = decode_stream([frame(body)], OutputLimits(display=MAX_FRAME))  # (kept, so counted and decoded)
    assert outcome.error is not None and "not JSON" in str(outcome.error)


def test_nesting_that_decodes_in_the_reader_fails_nowhere_in_the_cell() -> None:
    for field in ("ename", "evalue", "traceback", "outputs", "data"):
        body = b'{"type":"error","%s":' % field.encode() + nested(980, "[") + b"}"
        outcome = decode_stream([frame(body)])
        assert outcome.error is not None and "nested" in str(outcome.error)


def test_a_done_frame_with_times_of_any_type_ends_the_cell() -> None:
    for wall in ('"x"', "[1]", "{}", "1e400", '"inf"', "true", "-5"):
        body = b'{"type":"done","id":%d,"status":"ok","wall":%s,"cpu":%s}' % (CELL_ID, wall.encode(), wall.encode())
        outcome = decode_stream([frame(body)])
        assert outcome.error is None and outcome.messages[0]["type"] == "done"


def test_control_frames_are_bounded_in_bytes_too() -> None:
    """A ``ready`` frame of 16 MiB is a control frame (never dropped, a cell's end must come): many of them
    between two cells stopped nothing, and each was kept."""
    body = b'{"type":"ready","pad":"' + b"x" * (MAX_FRAME - 40) + b'"}'
    session = Session(None, "fuzz")  # type: ignore[arg-type]
    for _ in range(8):
        session._on_stdout(frame(body))
    kinds = [session.queue.get_nowait()[0] for _ in range(session.queue.qsize())]
    assert kinds[-1] == "bad" and kinds.count("msg") <= 2


# -- --out values --------------------------------------------------------------------------------------------------


def npy_bytes(array: numpy.ndarray) -> bytes:
    buf = io.BytesIO()
    numpy.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class Pwned:
    """Unpickled, it would call ``mark`` (it never is: the test patches pickle's loaders too)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (mark, ())


MARKS: list[int] = []


def mark() -> None:
    MARKS.append(1)


def npy_with_header(header: str, version: bytes = b"\x01\x00", payload: bytes = b"") -> bytes:
    """A .npy made by hand: any header text (padded as numpy pads it), any version, any data after it."""
    text = header.encode("latin1", "replace")
    wide = version != b"\x01\x00"
    size_bytes = 4 if wide else 2
    pad = (-(10 + size_bytes - 2 + len(text) + 1)) % 64
    text += b" " * pad + b"\n"
    size = struct.pack("<I" if wide else "<H", len(text) % (1 << (8 * size_bytes)))
    return b"\x93NUMPY" + version + size + text + payload


NPY_HEADERS = st.builds(
    lambda descr, fortran, shape: f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}",
    st.sampled_from(["'<f8'", "'|u1'", "'|O'", "'<V0'", "'<U0'", "'|S0'", "[('a', '|O')]", "[('a', '<i4')]",
                     "'<M8[s]'", "'x'", "1", "{'names': ['a'], 'formats': ['O']}", "'<f8'" * 2]),
    st.sampled_from(["False", "True", "1", "'x'"]),
    st.sampled_from(["()", "(3,)", "(0,)", "(2, 3)", "(1 << 40,)", "(2**33,)", "(8589934592,)", "(-1,)",
                     "(4611686018427387904, 4)", "(1e9,)", "('a',)", "[3]", "(3, 1099511627776)"]))


def _payloads() -> st.SearchStrategy[bytes]:
    good = st.sampled_from([numpy.arange(4), numpy.eye(2), numpy.array(["x"]), numpy.zeros(0),
                            numpy.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])]).map(npy_bytes)
    crafted = st.builds(npy_with_header, NPY_HEADERS, st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00",
                                                                        b"\x09\x09"]),
                        st.sampled_from([b"", bytes(48), pickle.dumps([Pwned()]), b"\x00" * 7]))
    mangled = st.builds(lambda raw, at, junk, cut: (raw[:at] + junk + raw[at:])[:cut], good, st.integers(0, 200),
                        st.binary(max_size=8), st.integers(0, 400))
    return good | crafted | mangled | st.just(pickle.dumps(Pwned())) | st.binary(max_size=64)


def _items() -> st.SearchStrategy[Any]:
    kinds = st.sampled_from(["npy", "bytes", "json", "pickle", "", None, 1, ["npy"]])
    b64 = _payloads().map(lambda raw: base64.b64encode(raw).decode()) | st.sampled_from(
        ["", "!!!", "AAE", "AA==\n", "\u00e9"]) | ODD
    deep = st.integers(1, 990).map(lambda depth: _deep_list(depth))
    return (st.builds(lambda kind, text: {"kind": kind, "b64": text}, kinds, b64)
            | st.builds(lambda value: {"kind": "json", "value": value}, JSON | ODD | deep)
            | ODD | st.dictionaries(TEXT, JSON, max_size=3))


def _deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def assert_plain(name: str, value: Any) -> None:
    if isinstance(value, numpy.ndarray):
        assert not value.dtype.hasobject, f"{name}: an array of objects came through"
    elif not isinstance(value, bytes):
        json.dumps(value)  # (plain JSON data)


def _refuse_pickle(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a value from a container was unpickled")


@fuzz_settings(600, **FUZZ)
@given(_items())
def test_an_out_value_is_plain_data_or_refused_in_one_line(item: Any) -> None:
    size = len(json.dumps(item))
    with mock.patch.object(pickle, "load", _refuse_pickle), mock.patch.object(pickle, "loads", _refuse_pickle):
        try:
            value = bounded(size, lambda: at_depth(IPYTHON_DEPTH, lambda: values.decode("v", item)), per_byte=16)
        except values.ValueRefused as exc:
            assert "\n" not in str(exc), str(exc)
            return
    assert not MARKS
    assert_plain("v", value)


def test_an_npy_that_claims_a_huge_shape_is_refused_before_numpy_allocates_it() -> None:
    raw = npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (8589934592,), }")
    item = {"kind": "npy", "b64": base64.b64encode(raw).decode()}
    try:
        bounded(len(raw), lambda: values.decode("v", item))
    except values.ValueRefused as exc:
        assert "8589934592" in str(exc) or "more" in str(exc), str(exc)
    else:
        raise AssertionError("a claim of 8 GiB with no data was loaded")
