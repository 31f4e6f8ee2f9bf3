"""Pull and push against a real registry (Debian's docker-registry, started by tests/registry_infra.py).

Plain http with --insecure, TLS with the test's CA, htpasswd basic auth and Docker Hub's token flow;
a multi-arch index; faults injected by a proxy (a corrupt blob, a cut connection, 429, 503); a dead
registry; two pulls at once; and the peers (skopeo, podman) reading what we pushed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_tool
from registry_infra import PASSWORD, USERNAME, FaultProxy, free_port, inspect_with_skopeo, push_with_skopeo

from sandbox_kernel.runtime import AuthError, BlobError, ImageError, RegistryError, Store, load
from sandbox_kernel.runtime.image import credentials, registry
from sandbox_kernel.runtime.image.credentials import Credentials
from sandbox_kernel.runtime.image.pull import ProgressEvent, pull
from sandbox_kernel.runtime.image.push import push
from sandbox_kernel.runtime.image.transport import RegistryOptions, parse_challenge

pytest_plugins = ["registry_infra"]
BUSYBOX = "localhost/busybox:latest"
INSECURE = RegistryOptions(insecure=True)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def source(tmp_path, busybox_archive) -> Store:
    """A store of our own holding busybox (loaded from the session's archive), safe to tag in."""
    src = Store(tmp_path / "source")
    load(src, busybox_archive)
    return src


def cli(store_root: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(store_root), *args],
                          capture_output=True, text=True, timeout=120, input=input,
                          env={**os.environ, **(env or {})})


def leftovers(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "tmp").iterdir())


# --- plain http, TLS ----------------------------------------------------------------------------------------


def test_push_then_pull_into_a_fresh_store_keeps_every_digest(plain_registry, source, store):
    ref = plain_registry.ref("test/busybox:1")
    events: list[ProgressEvent] = []
    pushed = push(source, BUSYBOX, ref, options=INSECURE, progress=events.append)
    original = source.resolve(BUSYBOX)
    assert pushed.digest == original.manifest_digest and pushed.uploaded == 2, "config and one layer"
    assert {e.status for e in events} >= {"waiting", "complete", "resolved"}
    again = push(source, BUSYBOX, ref, options=INSECURE)
    assert again.uploaded == 0, "blobs the repository has are not sent again"
    assert inspect_with_skopeo(plain_registry, "test/busybox:1")["Digest"] == original.manifest_digest

    result = pull(store, ref, options=INSECURE)
    image = store.resolve(ref)
    assert (image.manifest_digest, image.config_digest) == (original.manifest_digest, original.config_digest)
    assert [layer["digest"] for layer in image.layers] == [layer["digest"] for layer in original.layers]
    assert result.downloaded == 1 and all(store.layer_dir(d).is_dir() for d in image.diff_ids), "unpacked"
    assert pull(store, ref, options=INSECURE).downloaded == 0, "a layer the store has is not fetched again"
    assert leftovers(store) == []


def test_plain_http_needs_insecure(plain_registry, source):
    with pytest.raises(RegistryError, match="--insecure"):
        push(source, BUSYBOX, plain_registry.ref("test/refused:1"))


def test_tls_with_the_tests_ca(tls_registry, source, store):
    ref = tls_registry.ref("test/tls:1")
    with pytest.raises(RegistryError, match="--ca-file"):
        push(source, BUSYBOX, ref)
    with_ca = RegistryOptions(ca_file=str(tls_registry.ca_file))
    assert push(source, BUSYBOX, ref, options=with_ca).digest == source.resolve(BUSYBOX).manifest_digest
    assert pull(store, ref, options=with_ca).image.manifest_digest == source.resolve(BUSYBOX).manifest_digest
    unverified = Store(store.root.parent / "unverified")
    assert pull(unverified, ref, options=INSECURE).downloaded == 1, "--insecure: a certificate not verified"


def test_cert_dir_in_dockers_layout(tls_registry, source, tmp_path):
    certs = tmp_path / "certs.d"
    certs.mkdir()
    shutil.copy(tls_registry.ca_file, certs / "ca.crt")
    ref = tls_registry.ref("test/certdir:1")
    assert push(source, BUSYBOX, ref, options=RegistryOptions(cert_dir=str(certs))).uploaded == 2


def test_chunked_upload_and_cross_repository_mount(plain_registry, source, store, monkeypatch):
    monkeypatch.setattr(registry, "CHUNK_UPLOAD", 64 * 1024)  # the 1 MB layer goes up in PATCH chunks
    first = plain_registry.ref("team/a:1")
    source.tag(BUSYBOX, first)
    assert push(source, first, options=INSECURE).uploaded == 2
    assert pull(store, first, options=INSECURE).image.manifest_digest == source.resolve(BUSYBOX).manifest_digest
    second = plain_registry.ref("team/b:1")
    source.tag(BUSYBOX, second)
    events: list[ProgressEvent] = []
    result = push(source, second, options=INSECURE, progress=events.append)
    assert result.uploaded == 0 and {e.status for e in events if e.status == "mounted"} == {"mounted"}, \
        "the blobs were mounted from team/a, not sent again"
    assert inspect_with_skopeo(plain_registry, "team/b:1")["Digest"] == result.digest


# --- authentication -----------------------------------------------------------------------------------------


def test_basic_auth_login_pull_logout(basic_registry, source, tmp_path):
    docker_config = tmp_path / "docker"
    env = {"DOCKER_CONFIG": str(docker_config)}
    ca = ["--ca-file", str(basic_registry.ca_file)]
    ref = basic_registry.ref("private/busybox:1")
    creds = RegistryOptions(ca_file=str(basic_registry.ca_file), credentials=Credentials(USERNAME, PASSWORD))
    push(source, BUSYBOX, ref, options=creds)
    with pytest.raises(AuthError, match="login"):
        pull(Store(tmp_path / "anonymous"), ref, options=RegistryOptions(ca_file=str(basic_registry.ca_file)))

    wrong = cli(tmp_path / "s", "login", basic_registry.host, "-u", USERNAME, "--password-stdin", *ca, env=env,
                input="wrong-password\n")
    assert wrong.returncode == 1 and "wrong-password" not in wrong.stdout + wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1 and not (docker_config / "config.json").exists()

    ok = cli(tmp_path / "s", "login", basic_registry.host, "-u", USERNAME, "--password-stdin", *ca, env=env,
             input=PASSWORD + "\n")
    assert ok.returncode == 0 and "Login Succeeded" in ok.stdout and PASSWORD not in ok.stdout + ok.stderr
    saved = json.loads((docker_config / "config.json").read_text())
    assert base64.b64decode(saved["auths"][basic_registry.host]["auth"]).decode() == f"{USERNAME}:{PASSWORD}"
    assert (docker_config / "config.json").stat().st_mode & 0o077 == 0, "only its owner reads it"

    pulled = cli(tmp_path / "s", "pull", *ca, ref, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == ref and PASSWORD not in pulled.stderr

    out = cli(tmp_path / "s", "logout", basic_registry.host, env=env)
    assert out.returncode == 0 and basic_registry.host not in json.loads((docker_config / "config.json")
                                                                          .read_text())["auths"]


def test_token_auth_as_docker_hub_does_it(token_registry, source, tmp_path):
    private = token_registry.ref("school/busybox:1")
    public = token_registry.ref("public/busybox:1")
    anonymous = RegistryOptions(insecure=True)
    with pytest.raises(AuthError, match="login"):
        push(source, BUSYBOX, private, options=anonymous)
    student = RegistryOptions(insecure=True, credentials=Credentials(USERNAME, PASSWORD))
    push(source, BUSYBOX, private, options=student)
    push(source, BUSYBOX, public, options=student)
    before = len(token_registry.token_log)
    result = pull(Store(tmp_path / "anon"), public, options=anonymous)
    assert result.image.manifest_digest == source.resolve(BUSYBOX).manifest_digest
    fetched = token_registry.token_log[before:]
    assert len(fetched) == 1, "one token for the repository's scope, cached for the manifest and every blob"
    assert fetched[0]["account"] is None and fetched[0]["scope"] == ["repository:public/busybox:pull"]
    with pytest.raises(AuthError, match="denied without credentials"):
        pull(Store(tmp_path / "anon2"), private, options=anonymous)
    assert pull(Store(tmp_path / "student"), private, options=student).downloaded == 1
    with pytest.raises(AuthError, match="refused"):
        pull(Store(tmp_path / "bad"), private,
             options=RegistryOptions(insecure=True, credentials=Credentials(USERNAME, "nope")))


# --- multi-arch ---------------------------------------------------------------------------------------------


def test_the_index_entry_for_the_platform_is_chosen(plain_registry, multiarch_layout, tmp_path):
    push_with_skopeo(plain_registry, multiarch_layout.source, "multi/busybox:latest")
    ref = plain_registry.ref("multi/busybox:latest")
    here = pull(Store(tmp_path / "here"), ref, options=INSECURE)
    assert here.digest == multiarch_layout.index_digest
    assert here.image.manifest_digest == multiarch_layout.amd64_digest
    arm = pull(Store(tmp_path / "arm"), ref, platform="linux/arm64/v8", options=INSECURE)
    assert arm.image.manifest_digest == multiarch_layout.arm64_digest
    assert arm.image.config["architecture"] == "arm64"
    with pytest.raises(ImageError, match=r"no image for linux/s390x \(it has: linux/amd64, linux/arm64/v8\)"):
        pull(Store(tmp_path / "none"), ref, platform="linux/s390x", options=INSECURE)
    missing = cli(tmp_path / "cli", "pull", "--insecure", "--platform", "linux/riscv64", ref)
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    assert "no image for linux/riscv64" in missing.stderr


# --- faults -------------------------------------------------------------------------------------------------


def test_a_corrupt_blob_is_refused_and_nothing_is_stored(plain_registry, source, store):
    image = source.resolve(BUSYBOX)
    push(source, BUSYBOX, plain_registry.ref("fault/corrupt:1"), options=INSECURE)
    layer = image.layers[0]["digest"]
    with FaultProxy(plain_registry) as proxy:
        proxy.corrupt_blob(layer)
        with pytest.raises(BlobError, match=f"not the .* bytes of {layer[:19]}"):
            pull(store, proxy.registry.ref("fault/corrupt:1"), options=INSECURE)
    assert not store.has_blob(layer) and not store.layer_dir(image.diff_ids[0]).exists()
    assert store.tags() == {} and leftovers(store) == []


def test_a_connection_cut_mid_blob_resumes_with_range(plain_registry, source, store):
    image = source.resolve(BUSYBOX)
    push(source, BUSYBOX, plain_registry.ref("fault/cut:1"), options=INSECURE)
    layer = image.layers[0]["digest"]
    with FaultProxy(plain_registry) as proxy:
        proxy.cut_blob_once(layer, after_bytes=100_000)
        result = pull(store, proxy.registry.ref("fault/cut:1"), options=INSECURE)
        ranges = [r.headers["range"] for r in proxy.requests_to(layer) if "range" in r.headers]
    assert result.image.manifest_digest == image.manifest_digest
    assert ranges and ranges[0].startswith("bytes=") and int(ranges[0][6:].rstrip("-")) > 0, "resumed mid-blob"


def test_429_waits_for_retry_after_and_503_is_retried(plain_registry, source, store):
    push(source, BUSYBOX, plain_registry.ref("fault/busy:1"), options=INSECURE)
    waits: list[float] = []
    options = RegistryOptions(insecure=True, sleep=waits.append)
    with FaultProxy(plain_registry) as proxy:
        proxy.throttle_once("/manifests/", retry_after=1)
        proxy.fail_once("/blobs/", status=503)
        result = pull(store, proxy.registry.ref("fault/busy:1"), options=options)
        statuses = [r.fault for r in proxy.requests if r.fault]
    assert result.image.manifest_digest == source.resolve(BUSYBOX).manifest_digest
    assert 1.0 in waits, "the 429's Retry-After: 1 was honoured"
    assert len(statuses) == 2


def test_a_dead_registry_is_one_line(tmp_path):
    port = free_port()
    out = cli(tmp_path / "s", "pull", "--insecure", f"127.0.0.1:{port}/nothing/here:1")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"sandbox-kernel: error: cannot reach registry 127.0.0.1:{port}: "
                                       "Connection refused"]


def test_a_wrong_reference_is_one_line(plain_registry, tmp_path):
    out = cli(tmp_path / "s", "pull", "--insecure", plain_registry.ref("no/such:image"))
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and "manifest unknown" in out.stderr


def test_two_processes_pulling_the_same_image_store_one_copy(plain_registry, source, tmp_path):
    ref = plain_registry.ref("race/busybox:1")
    push(source, BUSYBOX, ref, options=INSECURE)
    shared = tmp_path / "shared"
    Store(shared)
    argv = [sys.executable, "-m", "sandbox_kernel", "--root", str(shared), "pull", "-q", "--insecure", ref]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    store = Store(shared)
    assert store.resolve(ref).manifest_digest == source.resolve(BUSYBOX).manifest_digest
    assert leftovers(store) == [] and len(list((shared / "layers").iterdir())) == 1


# --- the peers read what we push -----------------------------------------------------------------------------


@pytest.mark.slow
def test_podman_pulls_what_we_pushed(plain_registry, source, tmp_path):
    """podman, in a mount namespace of its own: what it writes whatever its --root says (containers/image's
    blob-info cache in /var/lib/containers, /run/containers, its shared-memory locks) lands on tmpfs there."""
    need_tool("podman")
    need_tool("unshare")
    ref = plain_registry.ref("peer/busybox:1")
    push(source, BUSYBOX, ref, options=INSECURE)
    auth = tmp_path / "auth.json"
    auth.write_text("{}")
    hide = "/var/lib/containers" if os.path.isdir("/var/lib/containers") else "/var/lib"
    # (the run root goes on the namespace's /run tmpfs: podman refuses one longer than 50 characters)
    podman = (f"podman --root {tmp_path}/root --runroot /run/sk-podman --tmpdir /run/sk-podman-tmp"
              " --storage-driver vfs --cgroup-manager cgroupfs")
    script = (f"mount -t tmpfs none {hide} && mount -t tmpfs none /run && mount -t tmpfs none /dev/shm && "
              f"{podman} pull -q --tls-verify=false {ref} && "
              f"{podman} images --digests --format '{{{{.Digest}}}}'")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True,
                         text=True, timeout=180, env={**os.environ, "REGISTRY_AUTH_FILE": str(auth)})
    assert out.returncode == 0, out.stderr
    assert source.resolve(BUSYBOX).manifest_digest in out.stdout.split()


# --- unit: credentials file and challenges ------------------------------------------------------------------


def test_credentials_file_in_dockers_format(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1")
                                                                                  .decode()}},
                                "credsStore": "desktop", "psFormat": "table"}))
    assert credentials.lookup("docker.io", path) == Credentials("hub", "pw1")
    assert credentials.lookup("index.docker.io", path) == Credentials("hub", "pw1")
    assert credentials.lookup("ghcr.io", path) is None
    credentials.store("ghcr.io", Credentials("me", "pw:with:colons"), path)
    assert credentials.lookup("https://ghcr.io/", path) == Credentials("me", "pw:with:colons")
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table" and doc["credsStore"] == "desktop", "other keys are kept"
    assert "pw:with" not in repr(credentials.lookup("ghcr.io", path)), "a secret never shows in a repr"
    assert credentials.remove("ghcr.io", path) and not credentials.remove("ghcr.io", path)
    path.write_text(json.dumps({"auths": {"bad.example": {"auth": "***"}}}))
    with pytest.raises(AuthError, match="not valid base64"):
        credentials.lookup("bad.example", path)


def test_challenges_are_parsed_like_docker_does():
    c = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                        'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:samalba/my-app:pull,push", "error": "insufficient_scope"}
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"  # type: ignore[union-attr]
    assert parse_challenge("Negotiate abc") is None and parse_challenge(None) is None


def test_a_redirect_to_another_host_gets_no_authorization(tmp_path):
    """Blob storage behind a redirect has its own signed URL: our credentials must not go there."""
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    blob = b"layer bytes" * 1000
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    seen: dict[str, list[str | None]] = {"registry": [], "storage": []}

    class Storage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["storage"].append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args: object) -> None:
            pass

    class Registry(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["registry"].append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
            elif self.path == "/v2/":
                self.send_response(200)
                self.send_header("Content-Length", "0")
            else:
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{storage.server_port}/signed/blob?sig=x")
                self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (storage, server)]
    for thread in threads:
        thread.start()
    try:
        client = registry.RegistryClient(f"127.0.0.1:{server.server_port}",
                                         RegistryOptions(insecure=True, credentials=Credentials("u", "secret")))
        try:
            assert client.get_blob("repo", digest, 1 << 20) == blob
        finally:
            client.close()
    finally:
        for s in (server, storage):
            s.shutdown()
            s.server_close()
    assert seen["registry"][-1] is not None, "the registry got the credentials"
    assert seen["storage"] == [None], "the storage host did not"


def test_an_expired_token_is_fetched_again(token_registry, source):
    push(source, BUSYBOX, token_registry.ref("public/expiring:1"),
         options=RegistryOptions(insecure=True, credentials=Credentials(USERNAME, PASSWORD)))
    client = registry.RegistryClient(token_registry.host, RegistryOptions(insecure=True))
    try:
        before = len(token_registry.token_log)
        client.get_manifest("public/expiring", "1")
        client.get_manifest("public/expiring", "1")
        assert len(token_registry.token_log) == before + 1, "cached"
        transport = client.transport
        transport._tokens = {key: (token, 0.0) for key, (token, _) in transport._tokens.items()}  # time passes
        client.get_manifest("public/expiring", "1")
        assert len(token_registry.token_log) == before + 2, "fetched again once expired"
    finally:
        client.close()


def test_zstd_gzip_and_plain_layers_pull_and_unpack(plain_registry, source, store, tmp_path):
    """One image with a layer of each compression: pushed, pulled, unpacked, and the files are there."""
    import io

    from sandbox_kernel.runtime.image.layers import write_layer

    base = source.resolve(BUSYBOX)
    layers = list(base.layers)
    diff_ids = list(base.diff_ids)
    with source.writing():
        for compression in ("zstd", "none"):
            tree = tmp_path / compression
            (tree / "data").mkdir(parents=True)
            (tree / "data" / f"{compression}.txt").write_text(f"made with {compression}\n" * 100)
            buffer = io.BytesIO()
            written = write_layer(tree, buffer, compression=compression)  # type: ignore[arg-type]
            buffer.seek(0)
            source.ingest(buffer, expected_digest=written.digest)
            layers.append(written.descriptor())
            diff_ids.append(written.diff_id)
        config = {**base.config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        source.put_image(config, layers, "localhost/mixed:1")
    ref = plain_registry.ref("mixed/compressions:1")
    push(source, "localhost/mixed:1", ref, options=INSECURE)
    image = pull(store, ref, options=INSECURE).image
    assert [layer["mediaType"].rsplit(".", 1)[-1] for layer in image.layers] == ["tar+gzip", "tar+zstd", "tar"]
    for compression, diff_id in zip(("zstd", "none"), image.diff_ids[1:], strict=True):
        assert (store.layer_dir(diff_id) / "data" / f"{compression}.txt").read_text().startswith("made with")


def test_a_huge_manifest_is_refused(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Huge(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"{}" if self.path == "/v2/" else b" " * (5 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Quiet(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # we hang up on it mid-body: that is the point

    server = Quiet(("127.0.0.1", 0), Huge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(RegistryError, match="larger than 4194304 bytes"):
            pull(Store(tmp_path / "s"), f"127.0.0.1:{server.server_port}/big/manifest:1", options=INSECURE)
    finally:
        server.shutdown()
        server.server_close()


def test_pull_by_digest_of_an_index_keeps_the_image(plain_registry, multiarch_layout, tmp_path):
    push_with_skopeo(plain_registry, multiarch_layout.source, "multi/bydigest:latest")
    store = Store(tmp_path / "s")
    ref = plain_registry.ref(f"multi/bydigest@{multiarch_layout.index_digest}")
    result = pull(store, ref, options=INSECURE)
    assert result.image.manifest_digest == multiarch_layout.amd64_digest
    name = plain_registry.ref(f"multi/bydigest@{multiarch_layout.amd64_digest}")
    assert store.tags() == {name: multiarch_layout.amd64_digest}, "kept (prune leaves it), shown without a tag"
    assert store.resolve(name).manifest_digest == multiarch_layout.amd64_digest
    store.prune()
    assert store.resolve(name).manifest_digest == multiarch_layout.amd64_digest
    both = pull(store, plain_registry.ref(f"multi/bydigest:v1@{multiarch_layout.index_digest}"), options=INSECURE)
    assert plain_registry.ref("multi/bydigest:v1") in store.tags() and both.downloaded == 0


@pytest.mark.root
def test_run_pulls_a_missing_image_as_docker_does(plain_registry, base_store, tmp_path):
    """``run`` of an image the store lacks says so and pulls it (``--pull missing``, the default);
    ``--pull never`` refuses it in one line; the pulled image then runs."""
    ref = plain_registry.ref("runpull/busybox:1")
    push(base_store, "localhost/busybox:latest", ref, options=INSECURE)
    never = cli(tmp_path / "s", "run", "--rm", "--pull", "never", ref, "true")
    assert never.returncode == 1 and never.stderr.strip() == f"sandbox-kernel: error: no such image: {ref}"
    ran = cli(tmp_path / "s", "run", "--rm", "--insecure", ref, "echo", "pulled and ran")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "pulled and ran\n"
    assert ran.stderr.startswith(f"Unable to find image '{ref}' locally\n") and "Digest: sha256:" in ran.stderr
    again = cli(tmp_path / "s", "run", "--rm", ref, "true")
    assert (again.returncode, again.stderr) == (0, ""), "present now: no pull"
