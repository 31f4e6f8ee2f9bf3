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


@pytest.mark.parametrize(("body", "message"), [
    ({"memory": 1 << 20}, "limits: invalid --memory: the minimum is 4m"),
    ({"cpus": 2000}, "limits: invalid --cpus 2000: must be between 0.01 and 1024"),
    ({"pids": 0}, "limits: invalid --pids-limit: must be at least 1"),
    ({"disk": 1 << 20}, "limits: invalid --disk: the minimum is 64m"),
    ({"memroy": 1}, "limits: unknown field 'memroy'"),
])
def test_the_rest_api_refuses_limits_by_the_runtimes_rules(body, message):
    """The server checks a limits body with spec.Limits, the rules the CLI and the magics use, not a copy."""
    from tornado.web import HTTPError

    from sandbox_kernel.server.handlers import _limits

    with pytest.raises(HTTPError) as info:
        _limits(body)
    assert info.value.status_code == 400 and (info.value.log_message % info.value.args).startswith(message)
