"""The REST API (sandbox_kernel/server) in a real Jupyter server on 127.0.0.1, over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import busybox_copy
from fuzzing import schemathesis_args
from jupyter_infra import jupyter_server
from leftovers import cgroup_pids, wait_for

from sandbox_kernel.runtime import Containers, ContainerSpec, RegistryOptions, push

pytest_plugins = ["registry_infra"]
pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]
BUSYBOX = "localhost/busybox:latest"
PYTHON_IMAGE = "localhost/debian-python:latest"
MIB = 1 << 20
DEFAULT_DISK = 4 << 30  # ServerPolicy.default_disk: what a container made over REST gets when it does not say


@pytest.fixture(scope="module")
def served(base_store, debian_store, tmp_path_factory):
    """A Jupyter server with the extension on a store of its own holding busybox and debian-python; its
    containers go after."""
    from sandbox_kernel.runtime import load, save

    work = tmp_path_factory.mktemp("server")
    store = busybox_copy(base_store, work / "copy")
    save(debian_store, [PYTHON_IMAGE], work / "debian.tar")
    load(store, work / "debian.tar")
    (work / "debian.tar").unlink()
    with jupyter_server(work, store.root, env={"SANDBOX_KERNEL_SSE_HEARTBEAT": "0.3"}) as server:
        yield server, store
    containers = Containers(store)
    for info in containers.list(all=True):
        containers.remove(info.id, force=True)


class Seen(list):
    """What cells and commands sent, across them: (stream, text) pairs and ("display", html). It is its
    own sink factory: ``magics.sink_factory = seen``."""

    def __init__(self) -> None:
        super().__init__()
        self.when: dict[str, Callable[[], None]] = {}  # text -> what to do once it is seen (an event)

    def __call__(self, trusted: bool) -> Seen:
        return self

    def stream(self, name: str, text: str) -> None:
        self.append((name, text))
        for seen in [key for key in self.when if key in text]:
            self.when.pop(seen)()

    def display(self, data: dict, metadata: dict) -> None:
        self.append(("display", data.get("text/html", "")))


def quoted(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def _operations() -> list[tuple[str, str]]:
    """Every (method, path) the extension serves, from its own route table: a new route is tried too."""
    from sandbox_kernel.server import handlers as module

    ops = []
    for pattern, handler in module.handlers("/"):
        path = pattern.split(module.BASE + "/", 1)[1].replace(module.REF, "nobody")
        for concrete in (path.replace("(start|stop)", "start"), path.replace("(start|stop)", "stop")):
            for method in ("get", "post", "put", "delete"):
                if any(method in vars(cls) for cls in handler.__mro__ if cls.__module__ == module.__name__):
                    ops.append((method.upper(), concrete))
    ops = sorted(set(ops))
    return ops


BODIES = {("POST", "containers"): {"image": BUSYBOX, "name": "intruder"}, ("POST", "images/pull"): {"reference": "x"},
          ("POST", "cells"): {"line": "intruder", "cell": "print(1)"}}


def test_every_route_wants_the_token(served):
    """Every operation of the route table, without a token: 403, and nothing happened."""
    server, store = served
    ops = _operations()
    assert len(ops) >= 20 and ("DELETE", "containers/nobody") in ops and ("POST", "cells/interrupt") in ops
    for method, path in ops:
        status, reply = server.request(method, path, BODIES.get((method, path), {}) if method != "GET" else None,
                                       token=False)
        assert status == 403, (method, path, status, reply)
    assert "intruder" not in [i.name for i in Containers(store).list(all=True)], "a refused request made nothing"
    assert store.resolve(BUSYBOX), "and removed nothing"
    status, _ = server.request("GET", "images", None, token=True)
    assert status == 200


def test_a_login_cookie_without_xsrf_changes_nothing(served):
    """A browser's session cookie (as a page of another site would send it) reads, but every other method
    needs the _xsrf token too: without it 403, with it the request goes through (the control)."""
    import http.cookiejar

    server, store = served
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{server.url}/login", timeout=30).read()
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    form = urllib.parse.urlencode({"password": server.token, "_xsrf": xsrf}).encode()
    opener.open(urllib.request.Request(f"{server.url}/login", data=form, method="POST"), timeout=30).read()
    assert any(c.name.startswith("username-") for c in jar), "logged in: a session cookie"

    def call(method: str, path: str, with_xsrf: bool) -> int:
        data = json.dumps(BODIES.get((method, path), {})).encode() if method != "GET" else None
        req = urllib.request.Request(f"{server.url}/sandbox-kernel/api/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if with_xsrf:
            req.add_header("X-XSRFToken", xsrf)
        try:
            with opener.open(req, timeout=60) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert call("GET", "images", with_xsrf=False) == 200, "the cookie alone reads"
    for method, path in _operations():
        if method != "GET":
            assert call(method, path, with_xsrf=False) == 403, (method, path)
    assert "intruder" not in [i.name for i in Containers(store).list(all=True)]
    assert call("PUT", "containers/nobody/limits", with_xsrf=True) == 404, "with _xsrf it goes through"


def test_bad_input_is_a_400_with_a_message(served):
    server, _ = served
    status, reply = server.request("POST", "containers", raw=b"{not json")
    assert status == 400 and "not JSON" in reply["message"]
    status, reply = server.request("POST", "containers", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in reply["message"]
    status, reply = server.request("POST", "containers", {"image": BUSYBOX, "command": "echo hi"})
    assert status == 400 and "command" in reply["message"]
    status, reply = server.request("POST", "containers", {"image": "Not A Ref!"})
    assert status == 400, reply
    status, reply = server.request("POST", "images/pull", {"reference": "not a reference!"})
    assert status == 400, reply
    status, reply = server.request("PUT", "containers/nobody/limits", {"memory": "lots"})
    assert status == 400 and "memory" in reply["message"]
    status, reply = server.request("GET", "containers/nobody")
    assert status == 404 and reply["message"] == "no such container: nobody"
    status, reply = server.request("GET", f"images/{quoted('localhost/none:1')}/history")
    assert status == 404


def test_list_run_exec_streams_limits_commit_stop_rm(served):
    server, _ = served
    status, images = server.request("GET", "images")
    assert status == 200 and sorted(i["ref"] for i in images) == [BUSYBOX, PYTHON_IMAGE]
    status, host = server.request("GET", "host")
    assert status == 200 and host["cpus"] >= 1 and host["memory"] > 0
    status, created = server.request("POST", "containers", {
        "image": BUSYBOX, "name": "api-web", "command": ["sh", "-c", "echo state > /state; sleep 60"],
        "limits": {"memory": 64 * MIB, "pids": 100}})
    assert status == 201, created
    status, rows = server.request("GET", "containers")
    row = next(r for r in rows if r["name"] == "api-web")
    assert row["status"] == "running" and row["memory_limit"] == 64 * MIB and row["pids_limit"] == 100
    status, one = server.request("GET", "containers/api-web")
    assert status == 200 and one["id"] == created["id"]
    status, stats = server.request("GET", "containers/api-web/stats")
    assert status == 200 and stats["memory_limit"] == 64 * MIB and stats["pids"] >= 1 and stats["oom_kills"] == 0

    # exec: output streams as it is written: the command waits for a file that the test makes only once it has
    # seen the first line (held back to the end, the command would wait 60 s and say "timed out")
    def released(script: str, when: tuple[str, object], comments: bool = False) -> list[tuple[str, object]]:
        waits = "i=0; while [ ! -e /tmp/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; rm -f /tmp/go"
        seen: list[tuple[str, object]] = []
        for event, data in server.events("containers/api-web/exec",
                                         {"argv": ["sh", "-c", script.replace("WAIT", waits)]}, comments):
            if (event, data) == when and when not in seen:
                assert server.request("POST", "containers/api-web/exec", {"argv": ["touch", "/tmp/go"]})[0] == 200
            seen.append((event, data))
        return seen

    seen = released("echo one; WAIT; [ $i -lt 1200 ] && echo two >&2 || echo timed out >&2; exit 3",
                    ("stdout", {"text": "one\n"}))
    assert seen == [("stdout", {"text": "one\n"}), ("stderr", {"text": "two\n"}), ("done", {"exit_code": 3})]
    # a quiet command: the stream says it is alive (a comment line), which clients skip; the command waits for it
    seen = released("WAIT; [ $i -lt 1200 ] && echo late", (":", "still working"), comments=True)
    assert (":", "still working") in seen and seen[-2:] == [("stdout", {"text": "late\n"}),
                                                             ("done", {"exit_code": 0})]
    assert server.request("POST", "containers/nobody/exec", {"argv": ["true"]})[0] == 404
    assert server.request("POST", "containers/api-web/exec", {"argv": []})[0] == 400

    # limits: applied live, and refused (nothing changed) below what it uses or above the host
    status, limits = server.request("PUT", "containers/api-web/limits", {"memory": 32 * MIB, "cpus": 0.5,
                                                                           "pids": 50})
    assert status == 200 and limits == {"memory": 32 * MIB, "cpus": 0.5, "pids": 50, "disk": DEFAULT_DISK}
    status, reply = server.request("PUT", "containers/api-web/limits", {"memroy": 64 * MIB})
    assert status == 400 and reply["message"].startswith("limits: unknown field 'memroy'")
    status, reply = server.request("PUT", "containers/api-web/limits", {"disk": 8 << 30})
    assert status == 400 and "the disk limit is fixed when a container is made" in reply["message"]
    status, reply = server.request("PUT", "containers/api-web/limits", {"memory": host["memory"] + MIB})
    assert status == 400 and "more than this host has" in reply["message"]
    assert server.request("GET", "containers/api-web/limits")[1]["memory"] == 32 * MIB

    status, committed = server.request("POST", "containers/api-web/commit", {"reference": "localhost/api:snap"})
    assert status == 201 and committed["id"].startswith("sha256:")
    assert "localhost/api:snap" in [i["ref"] for i in server.request("GET", "images")[1]]
    status, history = server.request("GET", f"images/{quoted('localhost/api:snap')}/history")
    assert status == 200 and len(history) >= 2

    assert server.request("DELETE", "containers/api-web")[0] == 409  # running: needs force
    assert server.request("POST", "containers/api-web/stop", {"timeout": 1})[0] == 200
    assert server.request("GET", "containers/api-web")[1]["status"] == "exited"
    assert server.request("GET", "containers/api-web/stats")[0] == 409  # not running
    assert server.request("POST", "containers/api-web/start")[0] == 200
    assert server.request("DELETE", "containers/api-web?force=1")[0] == 200
    assert server.request("GET", "containers/api-web")[0] == 404
    status, removed = server.request("DELETE", f"images/{quoted('localhost/api:snap')}")
    assert status == 200 and removed["untagged"] == ["localhost/api:snap"]


def test_pull_streams_progress_from_the_local_registry(served, plain_registry):
    server, store = served
    remote = plain_registry.ref("api/busybox:1")
    push(store, BUSYBOX, remote, options=RegistryOptions(insecure=True))
    events = list(server.events("images/pull", {"reference": remote, "insecure": True}))
    progress = [d for e, d in events if e == "progress"]
    assert progress and progress[-1]["fraction"] == 1.0 and progress[-1]["done"] == progress[-1]["total"] > 0
    assert [f["fraction"] for f in progress] == sorted(f["fraction"] for f in progress)
    assert events[-1] == ("done", {"reference": remote, "digest": store.resolve(BUSYBOX).manifest_digest})
    assert remote in [i["ref"] for i in server.request("GET", "images")[1]]
    dead = list(server.events("images/pull", {"reference": "127.0.0.1:9/nothing:1", "insecure": True}))
    assert [e for e, _ in dead] == ["error"] and "cannot reach registry" in dead[0][1]["message"]
    # docker's run --pull missing against the server: an image it lacks is pulled there first, then run
    fresh = plain_registry.ref("api/busybox:run")
    push(store, BUSYBOX, fresh, options=RegistryOptions(insecure=True))
    env = {**os.environ, "SANDBOX_KERNEL_HOST": server.url, "SANDBOX_KERNEL_TOKEN": server.token}
    ran = subprocess.run([sys.executable, "-m", "sandbox_kernel", "run", "--rm", "--insecure", fresh, "echo", "ran"],
                         capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert (ran.returncode, ran.stdout) == (0, "ran\n"), ran.stderr
    assert ran.stderr.startswith(f"Unable to find image '{fresh}' on {server.url}\n")
    assert "Digest: sha256:" in ran.stderr
    assert fresh in [i["ref"] for i in server.request("GET", "images")[1]], "pulled into the server's store"
    never = subprocess.run([sys.executable, "-m", "sandbox_kernel", "run", "--rm", "--pull", "never",
                            plain_registry.ref("api/absent:1"), "true"], capture_output=True, text=True, timeout=60,
                           env=env, stdin=subprocess.DEVNULL)
    assert never.returncode == 1 and "Unable to find" not in never.stderr and "no such image" in never.stderr.lower()


def test_remote_client_does_what_the_local_one_does(served):
    from sandbox_kernel.client import ImageRemoval, LimitsRow, LocalClient
    from sandbox_kernel.remote import RemoteClient, RemoteError
    from sandbox_kernel.runtime import ContainerNotFound, ImageNotFound, UsageError

    server, store = served
    remote, local = RemoteClient(server.url, server.token), LocalClient(store)
    assert remote.images() == local.images() and remote.host() == local.host()
    cid = remote.create(BUSYBOX, name="remote-one", command=("sleep", "60"), limits=LimitsRow(64 * MIB, None, 30))
    assert local.runtime.get("remote-one").id == cid
    assert local.limits(cid) == LimitsRow(64 * MIB, None, 30, DEFAULT_DISK)  # (the disk: the admin's default)
    chunks: list[tuple[str, str]] = []
    assert remote.exec("remote-one", ["sh", "-c", "echo out; sleep 1; echo err >&2; exit 4"],
                       lambda stream, text: chunks.append((stream, text))) == 4
    assert chunks == [("stdout", "out\n"), ("stderr", "err\n")]
    assert remote.set_limits("remote-one", LimitsRow(48 * MIB, 1.0, 40)) == LimitsRow(48 * MIB, 1.0, 40, DEFAULT_DISK)
    assert remote.stats("remote-one").memory_limit == 48 * MIB and remote.stats("remote-one").pids_limit == 40
    with pytest.raises(UsageError, match="more than this host has"):
        remote.set_limits("remote-one", LimitsRow(remote.host().memory + MIB, None, None))
    image_id = remote.commit("remote-one", "localhost/remote:1", "from afar", created_by="echo made")
    assert store.resolve("localhost/remote:1").id == image_id
    assert any(h.get("CreatedBy") == "echo made" for h in remote.history("localhost/remote:1"))
    assert [r.name for r in remote.containers(all=False)] == [r.name for r in local.containers(all=False)]
    assert remote.container(cid[:12]).name == "remote-one" == local.container("remote-one").name
    logged: list[tuple[str, str]] = []
    assert remote.logs("remote-one", lambda stream, text: logged.append((stream, text))) is None  # still running
    assert logged == []  # (sleep prints nothing)
    remote.stop("remote-one", timeout=1)
    assert next(r for r in remote.containers() if r.name == "remote-one").status == "exited"
    assert remote.remove("remote-one") == cid
    assert remote.remove_image("localhost/remote:1") == ImageRemoval(["localhost/remote:1"], image_id), \
        "its last tag gone and no container left on it: deleted"
    # errors come back as the runtime's, one line each
    with pytest.raises(ContainerNotFound, match="no such container: remote-one"):
        remote.start("remote-one")
    with pytest.raises(ImageNotFound):
        remote.history("localhost/none:1")
    with pytest.raises(RemoteError, match="wrong or missing token"):
        RemoteClient(server.url, "not-the-token").images()
    with pytest.raises(RemoteError, match=r"cannot reach http://127\.0\.0\.1:9"):
        RemoteClient("http://127.0.0.1:9", "x").images()
    with pytest.raises(UsageError, match="invalid remote URL"):
        RemoteClient("127.0.0.1:8888")
    with pytest.raises(RemoteError, match="without the sandbox-kernel API's JSON"):  # a Jupyter page, not the API
        RemoteClient(f"{server.url}/elsewhere", server.token).images()


def test_magics_and_cli_against_the_server(served, tmp_path, capsys):
    from IPython.core.error import UsageError as MagicUsageError

    from sandbox_kernel.notebook.magics import ContainerMagics
    from sandbox_kernel.runtime import Store

    server, store = served
    magics = ContainerMagics(None, store=Store(tmp_path / "empty"))  # nothing here: all of it is there
    try:
        assert magics._use_remote(["--remote", server.url, "--token", server.token]) == f"remote: {server.url}"
        assert "localhost/busybox" in [r["Repository"] for r in magics.container_line("images")]
        Containers(store).run_detached(ContainerSpec(image=BUSYBOX, name="far", command=("sleep", "60")))
        assert [r["Names"] for r in magics.container_line("ps")] == [["far"]]
        seen = magics.sink_factory = Seen()
        assert magics.container_line("exec far sh -c 'echo over there'") == 0 and seen == [("stdout", "over there\n")]
        assert magics.container_line("limits far --memory 40m")[0]["Memory"] == 40 * MIB
        assert magics.container_line("stats far")[0]["Name"] == "far"
        seen.clear()
        assert magics.container_line("run --rm localhost/busybox sh -c 'echo ran there; exit 2'") == 2
        assert seen == [("stdout", "ran there\n")]
        with pytest.raises(MagicUsageError, match="works on this kernel's machine only"):
            magics.container_line("diff far")
        with pytest.raises(MagicUsageError, match="wrong or missing token"):
            magics._use_remote(["--remote", server.url, "--token", "nope"])
        magics.container_line("rm -f far")
        assert magics.container_line("--local") == "local runtime" and len(magics.container_line("images")) == 0
    finally:
        magics.shutdown()

    env = {**os.environ, "SANDBOX_KERNEL_HOST": server.url, "SANDBOX_KERNEL_TOKEN": server.token,
           "SANDBOX_KERNEL_ROOT": str(tmp_path / "empty")}
    cli = [sys.executable, "-m", "sandbox_kernel"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60, env=env)

    assert "localhost/busybox" in run("images").stdout
    started = run("run", "-d", "--name", "cli-far", "-m", "32m", BUSYBOX, "sleep", "60")
    assert started.returncode == 0, started.stderr
    assert "cli-far" in run("ps").stdout
    executed = run("exec", "cli-far", "sh", "-c", "echo from the server; exit 3")
    assert (executed.returncode, executed.stdout) == (3, "from the server\n")
    assert run("update", "--memory", "48m", "cli-far").returncode == 0
    no_tty = run("exec", "-t", "cli-far", "true")
    assert no_tty.returncode == 2 and "-t is not available against a remote host" in no_tty.stderr
    assert Containers(store).get("cli-far").spec.limits.memory == 48 * MIB
    assert run("rm", "-f", "cli-far").stdout.strip() == "cli-far"
    # a foreground run there: its output here as it comes, its exit code ours, --rm removes it
    foreground = run("run", "--rm", "--name", "cli-fg", BUSYBOX, "sh", "-c", "echo a; sleep 1; echo b >&2; exit 5")
    assert (foreground.returncode, foreground.stdout, foreground.stderr) == (5, "a\n", "b\n")
    assert "cli-fg" not in run("ps", "-a").stdout
    # Ctrl-C in a foreground run stops the container there (SIGTERM to its command: 143)
    interrupted = subprocess.Popen([*cli, "run", "--rm", "--name", "cli-int", BUSYBOX, "sleep", "60"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while "cli-int" not in run("ps").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(30) == 143, interrupted.stderr.read()
    assert "cli-int" not in run("ps", "-a").stdout
    assert run("run", "-d", "--name", "cli-log", BUSYBOX, "sh", "-c", "echo logged; sleep 60").returncode == 0
    followed = run("logs", "cli-log")
    assert (followed.returncode, followed.stdout) == (0, "logged\n"), followed.stderr
    assert run("rm", "-f", "cli-log").returncode == 0
    refused = run("diff", "cli-far")
    assert refused.returncode == 2 and "works on this machine only" in refused.stderr
    assert run("--host", "http://127.0.0.1:9", "ps").stderr.strip().startswith(
        "sandbox-kernel: error: cannot reach http://127.0.0.1:9")


def test_container_cells_run_on_the_server(served):
    """%%container against a server: output streams, state persists, values go in and out as data, the
    container's traceback shows once, and an interrupt here stops the cell there."""
    import _thread
    import types

    from IPython.core.error import UsageError as MagicUsageError

    from sandbox_kernel.notebook.magics import ContainerMagics, RemoteCellError
    from sandbox_kernel.runtime import Store

    server, store = served
    seen = Seen()
    namespace: dict = {}
    magics = ContainerMagics(types.SimpleNamespace(user_ns=namespace), store=Store(store.root.parent / "none"))
    magics.sink_factory = seen
    try:
        magics._use_remote(["--remote", server.url, "--token", server.token])
        value = magics.container_cell(f"rdemo --image {PYTHON_IMAGE} --memory 128m",
                                      "x = 20\nprint('hello from there')\nx + 1")
        assert value._repr_mimebundle_()[0]["text/plain"] == "21" and seen == [("stdout", "hello from there\n")]
        assert Containers(store).get("rdemo").spec.limits.memory == 128 << 20, "the container is the server's"
        assert magics.container_cell("rdemo", "x * 2")._repr_mimebundle_()[0]["text/plain"] == "40"
        namespace["a"] = [1, 2]
        assert magics.container_cell("rdemo --in a --out b", "b = a + [3]") is None and namespace["b"] == [1, 2, 3]
        shown = magics.container_cell("rdemo", "class Page:\n"
                                      "    def _repr_html_(self):\n"
                                      "        return '<b>bold</b><script>alert(1)</script>'\n"
                                      "Page()")
        html = shown._repr_mimebundle_()[0]["text/html"]
        assert "<b>bold</b>" in html and "script" not in html, "cleaned here, as a local cell's output is"
        with pytest.raises(RemoteCellError) as failed:
            magics.container_cell("rdemo", "1 / 0")
        assert "ZeroDivisionError" in "\n".join(failed.value._render_traceback_())
        seen.when["armed"] = _thread.interrupt_main  # Ctrl-C once the cell there says it sleeps
        with pytest.raises(RemoteCellError) as stopped:
            magics.container_cell("rdemo", "import time\nprint('armed', flush=True)\ntime.sleep(60)\nprint('done')")
        assert "KeyboardInterrupt" in "\n".join(stopped.value._render_traceback_())
        assert ("stdout", "done\n") not in seen, "interrupted there (else it ends after 60 s, with no error)"
        assert magics.container_cell("rdemo", "x")._repr_mimebundle_()[0]["text/plain"] == "20", "state kept"
        seen.clear()
        assert magics.container_cell(f"rbox --image {BUSYBOX}", "echo from busybox") is None
        assert seen == [("stdout", "from busybox\n")]
        # a shell cell's timeout on the server: its cell ends (else after 60 s, with no error), the server lives on
        with pytest.raises(RemoteCellError) as expired:
            magics.container_cell("rbox --timeout 1", "sleep 60; echo done")
        assert "1" in str(expired.value) and ("stdout", "done\n") not in seen
        assert server.request("GET", "host")[0] == 200
        with pytest.raises(MagicUsageError, match="-v is not available"):
            magics.container_cell("rdemo -v /etc:/host", "pass")
    finally:
        for name in ("rdemo", "rbox"):
            with contextlib.suppress(Exception):
                magics.container_line(f"rm -f {name}")
        magics.shutdown()


def _open_stream(server, method: str, path: str, body: object = None):
    """A raw HTTP request whose reply is read (or not) by the test: (socket, the reply's first bytes)."""
    import json
    import socket

    url = urllib.parse.urlsplit(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    data = json.dumps(body).encode() if body is not None else b""
    sock.sendall(f"{method} /sandbox-kernel/api/{path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Authorization: token {server.token}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200") and b"text/event-stream" in first, first[:200]
    return sock, first


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _running_commands(server, name: str) -> str:
    """What `ps` in the container says, through the API (the exec's own output, as SSE)."""
    text = ""
    for event, data in server.events(f"containers/{name}/exec", {"argv": ["ps", "-o", "args"]}):
        if event == "stdout":
            text += data["text"]
    return text


def _held_back(pid: int, limit: int) -> bool:
    """Whether a writer is asleep and has written the same bytes at two looks (the kernel's count, /proc/PID/io);
    past ``limit`` bytes it was never held back: fail."""
    def look() -> tuple[str, int]:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state, int(dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())["wchar"])

    first = look()
    time.sleep(0.05)
    second = look()
    assert second[1] < limit, f"it wrote {second[1] >> 20} MiB to a client that reads nothing"
    return first[0] == second[0] == "S" and first[1] == second[1]


def test_a_slow_client_holds_the_work_back_and_the_server_does_not_grow(served):
    """An exec that prints without end to a client that does not read: the command is held back (asleep, its
    count of bytes written stands still below 64 MiB: what waits is in pipes and a few events), the server's memory
    stays put; closing ends the command."""
    server, store = served
    containers = Containers(store)
    cid = containers.run_detached(ContainerSpec(image=BUSYBOX, command=("sleep", "3600"), name="slowreader"))
    cgroup = containers._find(cid).record().cgroup
    try:
        before = _rss_mb(server.proc.pid)
        sock, _ = _open_stream(server, "POST", "containers/slowreader/exec",
                               {"argv": ["yes", "a line of output that repeats without end"]})
        yes: list[int] = []
        wait_for(lambda: yes.extend(p for p in cgroup_pids(cgroup) if Path(f"/proc/{p}/comm").read_text() == "yes\n")
                 or yes, what="the command to start")
        wait_for(lambda: _held_back(yes[0], 64 << 20), what="the command to be held back")
        grown = _rss_mb(server.proc.pid) - before
        assert grown < 60, f"the server grew by {grown:.0f} MB for a client that does not read"
        sock.close()
        wait_for(lambda: not Path(f"/proc/{yes[0]}").exists(), what="the exec to end once its client went away")
    finally:
        containers.remove(cid, force=True)


def test_clients_that_go_away_free_their_threads(served):
    """Silent execs and log follows whose clients close: the work stops, and the server's worker threads
    (a handful) are free for the next requests; held, the next request would wait for a container's end."""
    server, store = served
    containers = Containers(store)
    cid = containers.run_detached(ContainerSpec(image=BUSYBOX, command=("sleep", "3600"), name="goaway"))

    def threads() -> int:
        return len(os.listdir(f"/proc/{server.proc.pid}/task"))

    try:
        _running_commands(server, "goaway")  # (the server's pools as they will be)
        samples = []
        for _ in range(10):  # the floor: that request's worker thread may still be finishing
            samples.append(threads())
            time.sleep(0.05)
        before = min(samples)
        socks = [_open_stream(server, "POST", "containers/goaway/exec", {"argv": ["sleep", "300"]})[0]
                 for _ in range(8)]
        socks += [_open_stream(server, "GET", "containers/goaway/logs?follow=1")[0] for _ in range(8)]
        wait_for(lambda: threads() >= before + 16, what="each stream to have a thread while its client listens")
        for sock in socks:
            sock.close()
        wait_for(lambda: "sleep 300" not in _running_commands(server, "goaway") and threads() <= before + 1,
                 what="the work to stop and the threads to go once the clients went away")
        status, _ = server.request("GET", "containers", timeout=20)
        assert status == 200
    finally:
        containers.remove(cid, force=True)


def test_a_read_only_user_can_look_but_not_run_pull_commit_or_remove(base_store, tmp_path):
    """The handlers ask the server's authorizer (resource sandbox-kernel): one that lets users only read."""
    store = busybox_copy(base_store, tmp_path / "copy")
    tests = str(Path(__file__).resolve().parent)
    with jupyter_server(tmp_path, store.root, env={"PYTHONPATH": tests},
                        args=("--ServerApp.authorizer_class=readonly_authorizer.ReadOnly",)) as server:
        for path in ("images", "containers", "host", f"images/{quoted(BUSYBOX)}/history"):
            status, reply = server.request("GET", path)
            assert status == 200, (path, reply)
        for method, path, body in [("POST", "containers", {"image": BUSYBOX, "command": ["true"]}),
                                   ("POST", "images/pull", {"reference": BUSYBOX}),
                                   ("POST", "cells", {"line": "x", "cell": "pass"}),
                                   ("DELETE", f"images/{quoted(BUSYBOX)}", None),
                                   ("POST", "containers/x/exec", {"argv": ["true"]}),
                                   ("POST", "containers/x/commit", {}), ("PUT", "containers/x/limits", {}),
                                   ("DELETE", "containers/x", None)]:
            status, reply = server.request(method, path, body)
            assert status == 403, (method, path, status, reply)
        assert Containers(store).list(all=True) == [] and store.resolve(BUSYBOX)


def test_every_route_applies_the_same_rules(base_store, tmp_path):
    """A remote cell may not do what POST /containers may not: host volumes and host networking are off over
    REST unless the admin allows them, and the admin's images and maxima hold on every route."""
    store = busybox_copy(base_store, tmp_path / "copy")
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"ServerPolicy": {
        "allowed_images": ["localhost/busybox*"], "max_memory": "256m", "default_memory": "64m"}}))
    with jupyter_server(tmp_path, store.root, env={"JUPYTER_CONFIG_DIR": str(config)}) as server:
        def cell_error(line: str) -> str:
            events = list(server.events("cells", {"line": line, "cell": "pass", "inputs": {}}))
            errors = [data for event, data in events if event == "error"]
            assert errors, events
            return errors[0]["message"]

        assert "volumes (-v) are off here" in cell_error("r1 --image localhost/busybox -v /:/host --shell")
        assert "--network host is off here" in cell_error("r2 --image localhost/busybox --network host --shell")
        assert "is more than this server allows (256m" in cell_error("r3 --image localhost/busybox -m 1g --shell")
        assert "not among the images this server allows" in cell_error("r4 --image localhost/debian-python")
        status, reply = server.request("POST", "containers", {"image": "localhost/debian-python"})
        assert status == 400 and "not among the images this server allows" in reply["message"]
        status, reply = server.request("POST", "containers", {"image": BUSYBOX, "limits": {"memory": 1 << 30}})
        assert status == 400 and "more than this server allows" in reply["message"]
        status, reply = server.request("POST", "images/pull", {"reference": "docker.io/library/alpine"})
        assert status == 200 and "not among the images" in str(reply)
        status, reply = server.request("POST", "containers", {"image": BUSYBOX, "command": ["sleep", "60"],
                                                              "name": "withdefaults"})
        assert status == 201
        status, limits = server.request("GET", "containers/withdefaults/limits")
        assert limits["memory"] == 64 << 20, "the admin's default memory"
        status, reply = server.request("PUT", "containers/withdefaults/limits", {"memory": 512 << 20})
        assert status == 400 and "more than this server allows" in reply["message"]
        server.request("DELETE", "containers/withdefaults?force=1")
    assert Containers(store).list(all=True) == []


def test_the_openapi_description_and_the_routes_agree():
    """Every path and method the description names has a handler that implements it, and no route is undocumented."""
    import json
    import re
    from importlib import resources

    from jupyter_server.base.handlers import APIHandler

    from sandbox_kernel.server.handlers import REF, handlers

    spec = json.loads(resources.files("sandbox_kernel.server").joinpath("openapi.json").read_text())
    documented = {re.sub(r"\{[a-z]+\}", REF, path): set(ops) for path, ops in spec["paths"].items()}
    routes: dict[str, type] = {}
    for pattern, handler in handlers("/"):
        path = "/" + pattern.removeprefix("/sandbox-kernel/api/")
        for expanded in ([path.replace("(start|stop)", a) for a in ("start", "stop")] if "(start|stop)" in path
                         else [path]):
            routes[expanded] = handler
    assert set(routes) == set(documented)
    for path, methods in documented.items():
        handler = routes[path]
        for method in methods:
            assert getattr(handler, method) is not getattr(APIHandler, method), f"{method.upper()} {path}"


def test_the_panel_works_on_a_remote_client(served):
    """The panel makes the same calls over HTTP: it lists the server's images and changes a container's limits."""
    from ipywidgets.widgets.tests.utils import setup_test_comm, teardown_test_comm

    from sandbox_kernel.notebook.widgets import Panel
    from sandbox_kernel.remote import RemoteClient

    server, store = served
    Containers(store).run_detached(ContainerSpec(image=BUSYBOX, name="panel-far", command=("sleep", "60")))
    setup_test_comm()
    try:
        panel = Panel(RemoteClient(server.url, server.token), refresh=60)
        try:
            assert BUSYBOX in panel.images_table.value and "panel-far" in panel.containers_table.value
            panel.limits_target.value = "panel-far"
            panel.memory.value = 72
            assert panel.error.value == "" and Containers(store).get("panel-far").spec.limits.memory == 72 * MIB
        finally:
            panel.close()
    finally:
        teardown_test_comm()
        Containers(store).remove("panel-far", force=True)


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_server_error(served, tmp_path):
    """Generated requests for every operation of the OpenAPI description (but pull, which would go out to
    registries on the internet for a generated name, and cells, which would run generated code for a
    while: both have tests of their own): none gets a 5xx. Last in the module: it removes what
    it finds (busybox too)."""
    server, store = served
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a test dependency"
    # real things for the path parameters, so that requests reach more than "no such container"
    Containers(store).run_detached(ContainerSpec(image=BUSYBOX, name="fuzz", command=("sleep", "3600")))
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\ncontainer = "fuzz"\nimage = "localhost/busybox:latest"\n'
        'follow = "0"\n')  # (following the logs of a container that sleeps an hour would end in a timeout)
    run = subprocess.run(
        [schemathesis, "run", f"{server.url}/sandbox-kernel/api/openapi.json", "--url",
         f"{server.url}/sandbox-kernel/api", "-H", f"Authorization: token {server.token}",
         "--checks", "not_a_server_error", "--exclude-path", "/images/pull", "--exclude-path", "/cells",
         "--exclude-path", "/cells/interrupt", *schemathesis_args(30),
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--no-color"],
        capture_output=True, text=True, timeout=580, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    print(run.stdout[-1500:])  # (with -s: the examples tried, for the record)
