"""The registry test infrastructure works before the client that will rely on it exists.

Each configuration starts and challenges as real registries do, the token server's tokens are
accepted, skopeo (an independent client) pushes to and inspects every configuration, the multi-arch
layout is a valid two-platform index, and each FaultProxy fault does what it says.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import tarfile
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import registry_infra
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from registry_infra import (
    ISSUER,
    PASSWORD,
    SERVICE,
    USERNAME,
    FaultProxy,
    RegistryStartError,
    RunningRegistry,
    inspect_with_skopeo,
    push_with_skopeo,
    running_registry,
)

# the fixtures (plain_registry, token_registry, registry_factory, busybox_archive, ...) come from the plugin
pytest_plugins = ["registry_infra"]
BASIC = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def call(base_url: str, method: str, path: str, *, headers: dict[str, str] | None = None, body=None,
         context: ssl.SSLContext | None = None) -> Reply:
    """One request on a fresh connection (http.client: what we send is exactly what goes on the wire)."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(url.netloc, timeout=30, context=context)
    else:
        conn = http.client.HTTPConnection(url.netloc, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def get_token(registry: RunningRegistry, *scopes: str, auth: str | None = None) -> Reply:
    query = urllib.parse.urlencode([("service", SERVICE), *(("scope", s) for s in scopes)])
    path = urllib.parse.urlsplit(registry.token_realm).path
    return call(registry.token_realm, "GET", f"{path}?{query}", headers={"Authorization": auth} if auth else {})


def bearer(reply: Reply) -> dict[str, str]:
    assert reply.status == 200, reply.body
    return {"Authorization": "Bearer " + json.loads(reply.body)["token"]}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# Each configuration answers /v2/ as a real registry does


def test_plain_registry_answers_v2(plain_registry):
    assert plain_registry.url.startswith("http://127.0.0.1:") and plain_registry.auth == "none"
    reply = call(plain_registry.url, "GET", "/v2/")
    assert reply.status == 200
    assert reply.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


def test_tls_registry_is_trusted_only_through_its_ca(tls_registry):
    assert tls_registry.url.startswith("https://") and tls_registry.ca_file is not None
    assert call(tls_registry.url, "GET", "/v2/", context=tls_registry.ssl_context()).status == 200
    port = tls_registry.host.split(":")[1]
    assert call(f"https://localhost:{port}", "GET", "/v2/", context=tls_registry.ssl_context()).status == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        call(tls_registry.url, "GET", "/v2/", context=ssl.create_default_context())


def test_basic_registry_challenges_and_accepts_the_test_user(basic_registry):
    reg = basic_registry
    assert reg.url.startswith("https://") and (reg.username, reg.password) == (USERNAME, PASSWORD)
    reply = call(reg.url, "GET", "/v2/", context=reg.ssl_context())
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == f'Basic realm="{SERVICE}"'
    assert call(reg.url, "GET", "/v2/", headers={"Authorization": BASIC}, context=reg.ssl_context()).status == 200
    wrong = "Basic " + base64.b64encode(f"{USERNAME}:nope".encode()).decode()
    assert call(reg.url, "GET", "/v2/", headers={"Authorization": wrong}, context=reg.ssl_context()).status == 401


def test_basic_auth_also_works_over_plain_http(registry_factory):
    reg = registry_factory("basic", tls=False)
    assert reg.url.startswith("http://") and reg.ca_file is None
    assert call(reg.url, "GET", "/v2/").status == 401
    assert call(reg.url, "GET", "/v2/", headers={"Authorization": BASIC}).status == 200


def test_token_registry_challenges_and_accepts_a_token(token_registry):
    reg = token_registry
    reply = call(reg.url, "GET", "/v2/")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == f'Bearer realm="{reg.token_realm}",service="{SERVICE}"'
    assert call(reg.url, "GET", "/v2/", headers=bearer(get_token(reg))).status == 200  # anonymous, no scope
    entry = reg.token_log[-1]
    assert (entry["scope"], entry["account"], entry["authorized"], entry["access"]) == ([], None, False, [])


def test_token_server_answers_like_docker_hub(token_registry):
    reg = token_registry
    reply = get_token(reg, "repository:team/app:pull,push", auth=BASIC)
    body = json.loads(reply.body)
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    header = jwt.get_unverified_header(body["token"])
    cert = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert header["alg"] == "RS256" and header["kid"] == registry_infra.libtrust_key_id(cert.public_key())
    assert cert.public_bytes(Encoding.PEM) == reg_root_cert(reg)  # the x5c leaf is the rootcertbundle
    claims = jwt.decode(body["token"], cert.public_key(), algorithms=["RS256"], audience=SERVICE, issuer=ISSUER)
    assert claims["sub"] == USERNAME and claims["exp"] - claims["iat"] == 300
    assert {"nbf", "jti"} <= claims.keys()
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert reg.token_log[-1]["scope"] == ["repository:team/app:pull,push"]
    assert (reg.token_log[-1]["account"], reg.token_log[-1]["authorized"]) == (USERNAME, True)


def reg_root_cert(reg: RunningRegistry) -> bytes:
    """The rootcertbundle the registry was configured with."""
    config = json.loads((reg.data_dir.parent / "config.yml").read_text())
    return Path(config["auth"]["token"]["rootcertbundle"]).read_bytes()


def access_of(reply: Reply) -> list[dict]:
    return jwt.decode(json.loads(reply.body)["token"], options={"verify_signature": False})["access"]


def test_token_server_policy(token_registry):
    reg = token_registry
    # anonymous: pull on public/* only; anything else is a token with an empty access list
    assert access_of(get_token(reg, "repository:team/app:pull")) == []
    assert access_of(get_token(reg, "repository:public/tool:pull,push")) == [
        {"type": "repository", "name": "public/tool", "actions": ["pull"]}]
    # with credentials: pull and push anywhere, several scopes at once
    assert access_of(get_token(reg, "repository:a/b:pull", "repository:c:push,pull", auth=BASIC)) == [
        {"type": "repository", "name": "a/b", "actions": ["pull"]},
        {"type": "repository", "name": "c", "actions": ["push", "pull"]}]
    wrong = "Basic " + base64.b64encode(f"{USERNAME}:bad".encode()).decode()
    assert get_token(reg, "repository:a/b:pull", auth=wrong).status == 401
    assert (reg.token_log[-1]["account"], reg.token_log[-1]["authorized"]) == (USERNAME, False)


def test_registry_enforces_the_token_access_list(token_registry):
    reg = token_registry
    reply = call(reg.url, "GET", "/v2/team/app/tags/list", headers=bearer(get_token(reg, "repository:team/app:pull")))
    assert reply.status == 401
    challenge = reply.headers["WWW-Authenticate"]
    assert 'scope="repository:team/app:pull"' in challenge and 'error="insufficient_scope"' in challenge
    reply = call(reg.url, "GET", "/v2/public/tool/tags/list",
                 headers=bearer(get_token(reg, "repository:public/tool:pull")))
    assert reply.status == 404 and b"NAME_UNKNOWN" in reply.body  # authorized; the repository is just empty
    reply = call(reg.url, "GET", "/v2/team/app/tags/list",
                 headers=bearer(get_token(reg, "repository:team/app:pull", auth=BASIC)))
    assert reply.status == 404


# --------------------------------------------------------------------------------------------------
# skopeo pushes to every configuration; the multi-arch layout


@pytest.mark.parametrize("kind", ["plain", "tls", "basic", "token"])
def test_skopeo_pushes_and_inspects(kind, request, busybox_archive):
    reg: RunningRegistry = request.getfixturevalue(f"{kind}_registry")
    digest = push_with_skopeo(reg, f"oci-archive:{busybox_archive}", f"skopeo/{kind}:v1")
    with tarfile.open(busybox_archive) as tar:
        expected = json.load(tar.extractfile("index.json"))["manifests"][0]["digest"]
    assert digest == expected
    info = inspect_with_skopeo(reg, f"skopeo/{kind}:v1")
    assert (info["Digest"], info["Architecture"], info["Os"]) == (digest, "amd64", "linux")
    assert inspect_with_skopeo(reg, f"{reg.host}/skopeo/{kind}@{digest}", raw=True)["schemaVersion"] == 2
    if kind == "token":
        assert any(e["scope"] == [f"repository:skopeo/{kind}:pull,push"] and e["authorized"] for e in reg.token_log)


def test_multiarch_layout_pushes_as_an_index(token_registry, multiarch_layout):
    layout = multiarch_layout
    assert (layout.path / "oci-layout").is_file()
    assert len({layout.index_digest, layout.amd64_digest, layout.arm64_digest}) == 3
    assert push_with_skopeo(token_registry, layout.source, "multi/busybox:latest") == layout.index_digest
    index = inspect_with_skopeo(token_registry, "multi/busybox:latest", raw=True)
    assert index["mediaType"] == registry_infra.MEDIA_INDEX
    platforms = {m["digest"]: m["platform"] for m in index["manifests"]}
    assert platforms == {layout.amd64_digest: {"architecture": "amd64", "os": "linux"},
                         layout.arm64_digest: {"architecture": "arm64", "os": "linux", "variant": "v8"}}
    # skopeo inspect's "Digest" is the index's; the platform shows in Architecture and the config
    arm = inspect_with_skopeo(token_registry, "multi/busybox:latest", arch="arm64")
    assert (arm["Digest"], arm["Architecture"]) == (layout.index_digest, "arm64")
    arm_config = inspect_with_skopeo(token_registry, "multi/busybox:latest", arch="arm64", config=True)
    assert arm_config["variant"] == "v8"
    amd = inspect_with_skopeo(token_registry, "multi/busybox:latest", arch="amd64")
    assert amd["Architecture"] == "amd64" and amd["Layers"] == arm["Layers"]
    arm_manifest = inspect_with_skopeo(token_registry, f"multi/busybox@{layout.arm64_digest}", raw=True)
    amd_manifest = inspect_with_skopeo(token_registry, f"multi/busybox@{layout.amd64_digest}", raw=True)
    assert arm_manifest["layers"] == amd_manifest["layers"]
    assert arm_manifest["config"]["digest"] != amd_manifest["config"]["digest"]


# --------------------------------------------------------------------------------------------------
# Life cycle: nothing is left behind, and a failed start says why


def assert_closed(port: int | None) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_registry_leaves_nothing_behind(tmp_path):
    threads = threading.active_count()
    with running_registry("token", parent=tmp_path) as reg:
        workdir = reg.data_dir.parent
        assert processes_mentioning(str(workdir))
        assert call(reg.url, "GET", "/v2/").status == 401
    assert not workdir.exists()
    assert processes_mentioning(str(workdir)) == []
    for url in (reg.url, reg.token_realm):
        assert_closed(urllib.parse.urlsplit(url).port)
    assert threading.active_count() == threads


def test_failed_start_reports_the_registry_log(tmp_path, monkeypatch):
    real = registry_infra._registry_config

    def broken(*args, **kwargs):
        config = real(*args, **kwargs)
        config["storage"] = {"no-such-driver": {}}
        return config

    monkeypatch.setattr(registry_infra, "_registry_config", broken)
    with pytest.raises(RegistryStartError, match="no-such-driver"):
        with running_registry("plain", parent=tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# FaultProxy


@dataclass
class Pushed:
    repo: str
    manifest_digest: str
    layer_digest: str
    layer: bytes


@pytest.fixture(scope="module")
def pushed(plain_registry, busybox_archive) -> Pushed:
    """busybox in the plain registry, and its layer's bytes."""
    digest = push_with_skopeo(plain_registry, f"oci-archive:{busybox_archive}", "proxied/busybox:latest")
    with tarfile.open(busybox_archive) as tar:
        manifest = json.load(tar.extractfile(f"blobs/sha256/{digest[7:]}"))
        layer_digest = manifest["layers"][0]["digest"]
        layer = tar.extractfile(f"blobs/sha256/{layer_digest[7:]}").read()
    assert len(layer) > 100_000
    return Pushed("proxied/busybox", digest, layer_digest, layer)


@pytest.fixture
def proxy(plain_registry):
    threads = threading.active_count()
    with FaultProxy(plain_registry) as proxy:
        port = int(proxy.host.split(":")[1])
        yield proxy
    assert threading.active_count() == threads, "the proxy left threads behind"
    assert_closed(port)


def blob_path(pushed: Pushed) -> str:
    return f"/v2/{pushed.repo}/blobs/{pushed.layer_digest}"


def test_proxy_passes_reads_through(proxy, pushed):
    assert call(proxy.url, "GET", "/v2/").status == 200
    accept = "application/vnd.oci.image.manifest.v1+json"
    reply = call(proxy.url, "GET", f"/v2/{pushed.repo}/manifests/latest", headers={"Accept": accept})
    assert reply.status == 200 and sha256(reply.body) == pushed.manifest_digest
    assert reply.headers["Docker-Content-Digest"] == pushed.manifest_digest
    head = call(proxy.url, "HEAD", blob_path(pushed))
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(pushed.layer) and head.body == b""
    assert call(proxy.url, "GET", blob_path(pushed)).body == pushed.layer
    ranged = call(proxy.url, "GET", blob_path(pushed), headers={"Range": "bytes=1000-"})
    assert ranged.status == 206 and ranged.body == pushed.layer[1000:]
    assert [(r.method, r.fault) for r in proxy.requests_to(pushed.layer_digest)] == [
        ("HEAD", None), ("GET", None), ("GET", None)]
    assert proxy.requests[-1].headers["range"] == "bytes=1000-"


def test_proxy_passes_uploads_through_and_rewrites_locations(proxy, plain_registry):
    data = os.urandom(300_000)
    start = call(proxy.url, "POST", "/v2/uploads/test/blobs/uploads/")
    assert start.status == 202 and start.headers["Location"].startswith(proxy.url + "/v2/uploads/test/blobs/uploads/")
    location = urllib.parse.urlsplit(start.headers["Location"])
    chunks = (data[i:i + 70_000] for i in range(0, len(data), 70_000))  # no length: http.client sends it chunked
    patch = call(proxy.url, "PATCH", f"{location.path}?{location.query}", body=chunks,
                 headers={"Content-Type": "application/octet-stream"})
    assert patch.status == 202 and patch.headers["Range"] == f"0-{len(data) - 1}"
    assert any(r.headers.get("transfer-encoding") == "chunked" for r in proxy.requests_to("/uploads/", "PATCH"))
    location = urllib.parse.urlsplit(patch.headers["Location"])
    assert patch.headers["Location"].startswith(proxy.url)
    query = f"{location.query}&digest={urllib.parse.quote(sha256(data))}"
    done = call(proxy.url, "PUT", f"{location.path}?{query}", body=b"")
    assert done.status == 201 and done.headers["Location"].startswith(proxy.url)
    assert call(plain_registry.url, "GET", f"/v2/uploads/test/blobs/{sha256(data)}").body == data
    # monolithic: POST, then one PUT with the whole body (distribution 2.8 ignores a body on the POST itself)
    small = b"monolithic upload"
    location = urllib.parse.urlsplit(call(proxy.url, "POST", "/v2/uploads/test/blobs/uploads/").headers["Location"])
    mono = call(proxy.url, "PUT", f"{location.path}?{location.query}&digest={sha256(small)}", body=small,
                headers={"Content-Type": "application/octet-stream"})
    assert mono.status == 201 and mono.headers["Docker-Content-Digest"] == sha256(small)
    assert call(proxy.url, "GET", f"/v2/uploads/test/blobs/{sha256(small)}").body == small


def test_proxy_speaks_tls_and_passes_auth_to_upstream(basic_registry):
    with FaultProxy(basic_registry) as proxy:
        reg = proxy.registry
        assert (reg.url, reg.ca_file, reg.username) == (proxy.url, None, USERNAME)
        reply = call(proxy.url, "GET", "/v2/")
        assert reply.status == 401 and reply.headers["WWW-Authenticate"] == f'Basic realm="{SERVICE}"'
        assert call(proxy.url, "GET", "/v2/", headers={"Authorization": BASIC}).status == 200


def test_skopeo_pushes_and_inspects_through_the_proxy(proxy, busybox_archive):
    digest = push_with_skopeo(proxy.registry, f"oci-archive:{busybox_archive}", "via/proxy:v1")
    assert inspect_with_skopeo(proxy.registry, "via/proxy:v1")["Digest"] == digest
    assert proxy.requests_to("/blobs/uploads/", "POST") and proxy.requests_to("/manifests/v1", "PUT")


def test_corrupt_blob_flips_a_byte_every_time(proxy, pushed):
    proxy.corrupt_blob(pushed.layer_digest)
    for _ in range(2):
        reply = call(proxy.url, "GET", blob_path(pushed))
        assert reply.status == 200 and len(reply.body) == len(pushed.layer)
        assert sha256(reply.body) != pushed.layer_digest
        assert [i for i, (a, b) in enumerate(zip(reply.body, pushed.layer, strict=True)) if a != b] == [
            len(pushed.layer) // 2]
    assert call(proxy.url, "HEAD", blob_path(pushed)).status == 200
    assert [r.fault for r in proxy.requests_to(pushed.layer_digest)] == ["corrupt", "corrupt", None]


def test_cut_blob_once_then_a_range_request_resumes(proxy, pushed):
    proxy.cut_blob_once(pushed.layer_digest, after_bytes=50_000)
    proxy.cut_blob_once("sha256:" + "0" * 64, after_bytes=1)
    assert call(proxy.url, "GET", f"/v2/{pushed.repo}/blobs/sha256:{'0' * 64}").status == 404  # not cut: no 200
    assert call(proxy.url, "GET", blob_path(pushed), headers={"Range": "bytes=0-9"}).status == 206  # not full
    conn = http.client.HTTPConnection(proxy.host, timeout=30)
    try:
        conn.request("GET", blob_path(pushed))
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(pushed.layer)
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
    finally:
        conn.close()
    assert cut.value.partial == pushed.layer[:50_000]
    rest = call(proxy.url, "GET", blob_path(pushed), headers={"Range": "bytes=50000-"})
    assert rest.status == 206 and cut.value.partial + rest.body == pushed.layer
    assert call(proxy.url, "GET", blob_path(pushed)).body == pushed.layer  # once only
    log = proxy.requests_to(pushed.layer_digest)
    assert [(r.fault, r.headers.get("range")) for r in log] == [
        (None, "bytes=0-9"), ("cut", None), (None, "bytes=50000-"), (None, None)]
    assert [r.fault for r in proxy.requests_to("0" * 64)] == [None]


def test_throttle_once_answers_429_with_retry_after(proxy, pushed):
    proxy.throttle_once("/manifests/", retry_after=1)
    path = f"/v2/{pushed.repo}/manifests/latest"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert call(proxy.url, "HEAD", path, headers=accept).status == 200  # GET only by default
    first = call(proxy.url, "GET", path, headers=accept)
    assert first.status == 429 and first.headers["Retry-After"] == "1"
    assert json.loads(first.body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert call(proxy.url, "GET", path, headers=accept).status == 200, "once only"
    assert [r.fault for r in proxy.requests_to("/manifests/")] == [None, "throttle", None]


def test_fail_once_answers_the_status_once(proxy, pushed):
    proxy.fail_once(pushed.layer_digest, status=503)
    proxy.fail_once("/tags/list", status=500, method=None)
    assert call(proxy.url, "GET", blob_path(pushed)).status == 503
    assert call(proxy.url, "GET", blob_path(pushed)).body == pushed.layer
    assert call(proxy.url, "GET", f"/v2/{pushed.repo}/tags/list").status == 500
    assert json.loads(call(proxy.url, "GET", f"/v2/{pushed.repo}/tags/list").body)["tags"] == ["latest"]
