"""What a container sends the kernel is bounded: frames checked before they are decoded, output kept per period.

These feed the session's reader directly (no container): the flood test with a real container is in
test_container_magic.py.
"""

from __future__ import annotations

import json
import struct

from sandbox_kernel.notebook.session import MAX_CONTROL, MAX_FRAME, OutputLimits, Session


def frame(message: object) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">I", len(body)) + body


def queued(session: Session) -> list[tuple[str, object]]:
    out = []
    while not session.queue.empty():
        out.append(session.queue.get_nowait())
    return out


def test_output_past_the_limit_is_dropped_and_counted_not_decoded():
    session = Session(None, "t", OutputLimits(stream=100_000, display=200_000))  # type: ignore[arg-type]
    line = {"type": "stream", "name": "stdout", "text": "x" * 10_000}
    for _ in range(30):
        session._on_stdout(frame(line))
    kept = [value for kind, value in queued(session) if kind == "msg"]
    assert len(kept) == 9, "about 100 kB kept, the rest dropped"
    assert session.budget.dropped["stream"] > 200_000
    session._note_pending()  # a cell begins: the notice goes out after what was kept
    assert session.pending[-1][0] == "dropped"
    notice = session.pending[-1][1]
    assert "dropped: the time between two cells keeps 97.7 KiB (c.ContainerMagics.output_limit)" in notice
    session._on_stdout(frame(line))
    assert [kind for kind, _ in queued(session)] == ["msg"], "the cell has its own budget"


def test_control_messages_are_kept_past_the_output_limit_but_not_without_end():
    session = Session(None, "t", OutputLimits(stream=10, display=10))  # type: ignore[arg-type]
    session._on_stdout(frame({"type": "stream", "name": "stdout", "text": "x" * 100}))
    session._on_stdout(frame({"type": "done", "id": 1, "status": "ok"}))
    assert [value["type"] for _, value in queued(session)] == ["done"], "a cell's end is never dropped"
    session._on_stdout(frame({"type": "done", "id": 1}) * (MAX_CONTROL + 1))
    items = queued(session)
    assert items[-1] == ("bad", f"the agent sent more than {MAX_CONTROL} control messages at once")


def test_a_frame_is_refused_by_its_header_before_its_body_is_kept():
    session = Session(None, "t")  # type: ignore[arg-type]
    session._on_stdout(struct.pack(">I", MAX_FRAME + 1) + b"x" * 1000)
    assert queued(session) == [("bad", f"the agent sent a message of {MAX_FRAME + 1} bytes (more than {MAX_FRAME})")]
    assert len(session._buf) == 0
    session._on_stdout(b"x" * (1 << 20))
    assert queued(session) == [] and len(session._buf) == 0, "after a bad frame nothing more is read"


def test_a_frame_that_would_decode_into_millions_of_objects_is_refused():
    """1 MiB of ``[0,0,0,...]`` would become half a million objects; strings are one object each."""
    session = Session(None, "t")  # type: ignore[arg-type]
    body = b'{"type":"display","data":[' + b",".join([b"0"] * 500_000) + b"]}"
    session._on_stdout(struct.pack(">I", len(body)) + body)
    [(kind, why)] = queued(session)
    assert kind == "bad" and "with more than 200000 values" in str(why)
    session = Session(None, "t")  # type: ignore[arg-type]
    session._on_stdout(frame({"type": "display", "data": {"text/plain": ",[{" * 300_000}}))  # inside a string
    assert [kind for kind, _ in queued(session)] == ["msg"]
