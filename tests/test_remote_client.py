"""What a server answers is checked before it becomes a row: a field this client does not know is refused."""

from __future__ import annotations

import pytest

from sandbox_kernel.remote import RemoteClient, RemoteError
from sandbox_kernel.runtime.host import HostCapacity


def client_answering(reply: object) -> RemoteClient:
    client = RemoteClient("http://127.0.0.1:9")
    client._request = lambda *args, **kwargs: reply  # type: ignore[method-assign]
    return client


def test_a_known_reply_becomes_a_row():
    assert client_answering({"memory": 1 << 30, "cpus": 2, "pids": 4096}).host() == HostCapacity(1 << 30, 2, 4096)


@pytest.mark.parametrize(("reply", "message"), [
    ({"memory": 1, "cpus": 1, "pids": 1, "extra": "x"}, r"does not know \(HostCapacity.extra\)"),
    ({"memory": 1}, "a HostCapacity without all of its fields"),
    (["not", "a", "row"], "not the API's HostCapacity"),
])
def test_an_unknown_or_short_reply_is_one_line(reply, message):
    with pytest.raises(RemoteError, match=message) as info:
        client_answering(reply).host()
    assert "\n" not in str(info.value)


def test_a_list_route_wants_a_list():
    with pytest.raises(RemoteError, match="not the API's list"):
        client_answering({"images": []}).images()
