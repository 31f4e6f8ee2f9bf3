"""Real registries for the registry client's tests: Debian's docker-registry, a token server, a fault proxy, skopeo.

Why real ones: a fake registry only answers what its author thought of. distribution 2.8 is the
reference implementation; its token flow is Docker Hub's; skopeo is an independent client, so a
test can check the client against images it did not push itself.

What is here:

- :func:`running_registry` (context manager) and the fixtures ``registry_factory``, ``plain_registry``,
  ``tls_registry``, ``basic_registry``, ``token_registry``: a ``docker-registry serve`` process on
  127.0.0.1 with a free port and a throwaway storage directory, as a :class:`RunningRegistry`.
- :class:`TokenServer`: Docker Hub's ``GET /token`` in a thread of the test process (RS256 JWTs with
  the signing certificate in ``x5c``).
- :class:`FaultProxy`: a plain-http reverse proxy in a thread, with programmable faults on blob GETs.
- :func:`push_with_skopeo`, :func:`inspect_with_skopeo`: skopeo writing nothing outside a temp dir (it
  still reads /etc/containers/registries.conf).
- :func:`save_busybox`, :func:`make_multiarch_layout` and the fixtures ``busybox_archive``,
  ``multiarch_layout``: the project's own busybox as an OCI archive, and a two-platform OCI layout.

Everything started here is ended here, by its own handle: processes by PID (terminate, wait, kill),
threads joined, sockets closed, directories removed, also when a test fails.

Use from a test module (tests/ is on sys.path); ``pytest_plugins`` makes the fixtures known (importing
them by name would trip ruff's F811 on every test that takes one)::

    from registry_infra import FaultProxy, push_with_skopeo

    pytest_plugins = ["registry_infra"]

(PYTEST_DONT_REWRITE: the test module imports this before pytest loads it as a plugin, and its few
asserts are internal checks, so pytest need not, and could not, rewrite them.)
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"
USERNAME = "student"
PASSWORD = "s3cret-pass"
SERVICE = "test-registry"
ISSUER = "test-issuer"
TOKEN_TTL = 300
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

Kind = Literal["plain", "tls", "basic", "token"]
# kind -> (auth, TLS by default). htpasswd works over plain http too in distribution 2.8 (pass tls=False).
KINDS: dict[str, tuple[str, bool]] = {
    "plain": ("none", False),
    "tls": ("none", True),
    "basic": ("basic", True),
    "token": ("token", False),
}

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
REF_NAME = "org.opencontainers.image.ref.name"


# --------------------------------------------------------------------------------------------------
# The registry


@dataclass
class RunningRegistry:
    """A registry a test can talk to; ``token_log`` fills while the test runs (token configuration)."""

    host: str  # "127.0.0.1:PORT": what goes in an image reference
    url: str  # "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    auth: str  # "none" | "basic" | "token"
    ca_file: Path | None  # PEM of the CA that signed the server certificate (TLS only)
    username: str | None
    password: str | None
    data_dir: Path  # the filesystem driver's root directory
    token_log: list[dict] = field(default_factory=list)
    token_realm: str | None = None  # the token server's URL (token configuration)

    def ref(self, name: str) -> str:
        """``name`` (``repo:tag`` or ``repo@digest``) as a full reference to this registry."""
        return f"{self.host}/{name}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts this registry's CA (None for plain http)."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None

    def log_text(self) -> str:
        """The registry's own log (warnings and errors): worth printing when a client test fails."""
        return (self.data_dir.parent / "registry.log").read_text(errors="replace")


def free_port() -> int:
    """A port free now on 127.0.0.1 (the caller retries if someone takes it before the bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_registry(kind: Kind = "plain", *, tls: bool | None = None, parent: Path | None = None
                     ) -> Iterator[RunningRegistry]:
    """Start a registry of ``kind`` (see :data:`KINDS`) and stop it, and remove its files, on exit."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; known: {', '.join(KINDS)}")
    auth, default_tls = KINDS[kind]
    use_tls = default_tls if tls is None else tls
    workdir = Path(tempfile.mkdtemp(prefix=f"sk-registry-{kind}-", dir=parent))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        data_dir = workdir / "data"
        data_dir.mkdir()
        ca_file = server_pair = None
        if use_tls:
            ca_file, server_pair = _write_tls_files(workdir)
        auth_config: dict[str, Any] | None = None
        token_server: TokenServer | None = None
        if auth == "basic":
            auth_config = {"htpasswd": {"realm": SERVICE, "path": str(_write_htpasswd(workdir))}}
        elif auth == "token":
            token_server = stack.enter_context(TokenServer(workdir / "token"))
            auth_config = {"token": {"realm": token_server.realm, "service": SERVICE, "issuer": ISSUER,
                                     "rootcertbundle": str(token_server.cert_file)}}
        port = _start_process(stack, workdir, data_dir, server_pair, auth_config, ca_file)
        scheme = "https" if use_tls else "http"
        yield RunningRegistry(
            host=f"127.0.0.1:{port}",
            url=f"{scheme}://127.0.0.1:{port}",
            auth=auth,
            ca_file=ca_file,
            username=USERNAME if auth != "none" else None,
            password=PASSWORD if auth != "none" else None,
            data_dir=data_dir,
            token_log=token_server.log if token_server else [],
            token_realm=token_server.realm if token_server else None,
        )


def _registry_config(port: int, data_dir: Path, server_pair: tuple[Path, Path] | None,
                     auth: dict[str, Any] | None) -> dict[str, Any]:
    """distribution's configuration: quiet, no health checks or debug server, deletes allowed."""
    http_section: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        "secret": secrets.token_hex(16),  # else each start logs a warning and invents one
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if server_pair:
        http_section["tls"] = {"certificate": str(server_pair[0]), "key": str(server_pair[1])}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http_section,
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth:
        config["auth"] = auth
    return config


def _start_process(stack: ExitStack, workdir: Path, data_dir: Path, server_pair: tuple[Path, Path] | None,
                   auth: dict[str, Any] | None, ca_file: Path | None) -> int:
    """Run ``docker-registry serve`` until ``GET /v2/`` answers; its stop goes on ``stack``. Returns the port."""
    log_file = workdir / "registry.log"
    for attempt in range(3):  # a free port can be taken between our probe and the registry's bind
        port = free_port()
        config_file = workdir / "config.yml"
        # JSON is YAML: no YAML writer needed
        config_file.write_text(json.dumps(_registry_config(port, data_dir, server_pair, auth), indent=1))
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(_with_pdeathsig([REGISTRY_BIN, "serve", str(config_file)]),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_registry_env(),
                                    cwd=workdir)
        stack.callback(stop_process, proc)
        scheme = "https" if server_pair else "http"
        try:
            _wait_until_ready(proc, f"{scheme}://127.0.0.1:{port}/v2/", ca_file)
            return port
        except RegistryStartError:
            stop_process(proc)
            text = log_file.read_text(errors="replace")
            if "address already in use" not in text or attempt == 2:
                raise RegistryStartError(f"docker-registry did not start (exit {proc.returncode}):\n{text}") from None
    raise AssertionError("unreachable")


class RegistryStartError(RuntimeError):
    """The registry process exited or never answered ``/v2/``; the message holds its log."""


PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def _registry_env() -> dict[str, str]:
    """The environment without REGISTRY_* variables (distribution reads them as configuration overrides)
    and without proxy settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("REGISTRY_") and k.lower() not in PROXY_VARIABLES}


def _with_pdeathsig(argv: list[str]) -> list[str]:
    """``argv`` under ``setpriv --pdeathsig KILL`` when possible: the registry dies with the test process.

    The kernel sends the signal when the *thread* that forked exits, so only the main thread asks for it.
    setpriv execs the program, so the PID we hold is the registry's.
    """
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", *argv]
    return argv


def _wait_until_ready(proc: subprocess.Popen, url: str, ca_file: Path | None) -> None:
    """Poll ``url`` until it answers 200 or 401, the process exits, or the deadline passes.

    http.client, not urllib: urllib would honour an http_proxy variable, and nothing may leave 127.0.0.1.
    """
    split = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RegistryStartError(f"exited with status {proc.returncode}")
        if split.scheme == "https":
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(split.netloc, timeout=2, context=context)
        else:
            conn = http.client.HTTPConnection(split.netloc, timeout=2)
        try:
            conn.request("GET", split.path)
            if conn.getresponse().status in (200, 401):
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.02)
    raise RegistryStartError(f"no answer from {url} within {START_TIMEOUT:.0f} s")


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """End a process we started, by its PID: SIGTERM, wait, SIGKILL if it lingers, reap."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------------------------------
# Keys and certificates (imported lazily: only the TLS and token configurations need them)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _self_signed_ca(common_name: str, key: Any) -> Any:
    """A CA certificate for ``key``, valid from a day ago (clock skew) for a week."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(days=1))
        .not_valid_after(_now() + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_tls_files(workdir: Path) -> tuple[Path, tuple[Path, Path]]:
    """A test CA and a server certificate it signed for IP 127.0.0.1 and DNS localhost (EC keys: fast)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _self_signed_ca("sandbox-kernel test CA", ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(days=1))
        .not_valid_after(_now() + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls_dir = workdir / "tls"
    tls_dir.mkdir()
    ca_file, cert_file, key_file = tls_dir / "ca.pem", tls_dir / "server.crt", tls_dir / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_file, (cert_file, key_file)


def _write_htpasswd(workdir: Path) -> Path:
    """An htpasswd file with the test user; bcrypt cost 4 because the registry checks it on every request."""
    import bcrypt

    path = workdir / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{USERNAME}:{hashed}\n")
    return path


def libtrust_key_id(public_key: Any) -> str:
    """docker/libtrust's key ID: SHA-256 of the DER public key, first 240 bits, base32, 12 groups of 4.

    distribution looks a token's ``kid`` up among its trusted keys only when the header has neither
    ``x5c`` nor ``jwk``; we send it anyway, as Docker Hub's token server does.
    """
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


_signing_key_lock = threading.Lock()
_signing_key: Any = None


def _token_signing_key() -> Any:
    """One RSA key per test process: generating 2048-bit keys costs ~0.1 s each, and sharing one is harmless."""
    global _signing_key
    with _signing_key_lock:
        if _signing_key is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            _signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _signing_key


# --------------------------------------------------------------------------------------------------
# Threaded HTTP servers that end cleanly


class _ClosingServer(ThreadingHTTPServer):
    """A threaded server that can end all its connections: no handler thread or socket outlives ``stop``."""

    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)
        self._thread: threading.Thread | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._open_lock:
            self._open.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, cut open connections (handlers blocked in recv wake up), join every thread."""
        self.shutdown()
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        if self._thread is not None:
            self._thread.join()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection ends after a minute even if nobody stops the server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence: pytest shows stderr of failing tests, and the request log has it all anyway."""

    def send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


# --------------------------------------------------------------------------------------------------
# Token server


class TokenServer:
    """Docker Hub's token endpoint, ``GET /token?service=S&scope=repository:NAME:pull,push``, in a thread.

    Basic credentials ``student``/``s3cret-pass`` get what they ask of pull and push on any repository;
    anonymous requests get ``pull`` on ``public/*`` only, and a token with an empty access list for
    anything else (as Docker Hub does: the registry then refuses the request, not the token server).
    Wrong credentials get 401. Every request is appended to :attr:`log`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert_file = directory / "token-signer.pem"
        self.log: list[dict] = []
        self._server: _ClosingServer | None = None

    @property
    def realm(self) -> str:
        assert self._server is not None, "the token server is not running"
        return f"http://127.0.0.1:{self._server.port}/token"

    def __enter__(self) -> TokenServer:
        from cryptography.hazmat.primitives import serialization

        self.directory.mkdir(parents=True, exist_ok=True)
        key = _token_signing_key()
        cert = _self_signed_ca("sandbox-kernel test token signer", key)
        # the registry's rootcertbundle: distribution checks that the x5c leaf chains to it (it *is* it)
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key = key
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._kid = libtrust_key_id(key.public_key())
        handler = type("TokenHandler", (_TokenHandler,), {"token_server": self})
        self._server = _ClosingServer(handler)
        self._server.start("token-server")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()

    def grant(self, scopes: list[str], account: str | None) -> list[dict]:
        """The access list for ``scopes``: see the class docstring for the policy."""
        access: list[dict] = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue  # registry:catalog:* and the like: nobody gets them
            name, wanted = ":".join(parts[1:-1]), parts[-1].split(",")
            allowed = {"pull", "push"} if account else ({"pull"} if name.startswith("public/") else set())
            actions = [a for a in wanted if a in allowed]
            if actions:
                access.append({"type": "repository", "name": name, "actions": actions})
        return access

    def issue(self, account: str | None, access: list[dict], service: str) -> str:
        """An RS256 JWT with the claims and header distribution 2.8 verifies."""
        import jwt

        now = int(time.time())
        claims = {"iss": ISSUER, "sub": account or "", "aud": service, "exp": now + TOKEN_TTL, "nbf": now - 5,
                  "iat": now, "jti": secrets.token_hex(16), "access": access}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"x5c": self._x5c, "kid": self._kid})


class _TokenHandler(_QuietHandler):
    token_server: ClassVar[TokenServer]

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self.send_json(404, {"details": "not found"})
            return
        query = urllib.parse.parse_qs(url.query)
        scopes = [s for value in query.get("scope", []) for s in value.split()]  # repeated, or space-joined
        service = query.get("service", [SERVICE])[0]
        account, authorized = self._credentials()
        entry = {"scope": scopes, "account": account, "authorized": authorized, "service": service,
                 "access": [], "time": time.monotonic()}
        server = self.token_server
        server.log.append(entry)
        if account is not None and not authorized:
            self.send_json(401, {"details": "incorrect username or password"},
                           {"WWW-Authenticate": 'Basic realm="test-token"'})
            return
        if service != SERVICE:
            self.send_json(400, {"details": f"unknown service {service!r}"})
            return
        entry["access"] = access = server.grant(scopes, account)
        token = server.issue(account, access, service)
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.send_json(200, {"token": token, "access_token": token, "expires_in": TOKEN_TTL, "issued_at": issued})

    def _credentials(self) -> tuple[str | None, bool]:
        """(account, whether the password is right); (None, False) for an anonymous request."""
        header = self.headers.get("Authorization")
        if not header:
            return None, False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return "", False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return "", False
        ok = secrets.compare_digest(user, USERNAME) and secrets.compare_digest(password, PASSWORD)
        return user, ok


# --------------------------------------------------------------------------------------------------
# Fault proxy


class ProxyRequest(NamedTuple):
    """One request the proxy saw, in the order it came. ``headers`` has lower-case names."""

    method: str
    path: str  # as sent: path and query
    headers: dict[str, str]
    fault: str | None  # the fault applied to it, if any: "corrupt", "cut", "throttle", "fail"


@dataclass
class _Faults:
    corrupt: dict[str, int | None] = field(default_factory=dict)  # digest -> byte offset (None: the middle)
    cut: dict[str, int] = field(default_factory=dict)  # digest -> bytes sent before the cut
    status: list[tuple[str, str | None, int, dict[str, str]]] = field(default_factory=list)


BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[A-Za-z0-9_+.-]+:[A-Za-z0-9=_-]+)$")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "host"}
# Expect: 100-continue is answered by the proxy itself (BaseHTTPRequestHandler), not passed on
NOT_FORWARDED = HOP_BY_HOP | {"expect"}
CHUNK = 64 * 1024


class FaultProxy:
    """A plain-http reverse proxy to a registry, with faults a test switches on; a context manager.

    Every method, header and body passes through (request bodies stream, ``Transfer-Encoding:
    chunked`` ones too; responses stream); ``Location`` headers that point at the registry are
    rewritten to point at the proxy. Faults on ``GET /v2/<name>/blobs/<digest>``:
    :meth:`corrupt_blob`, :meth:`cut_blob_once`; on any path containing a substring (GET by
    default): :meth:`throttle_once`, :meth:`fail_once`. :attr:`requests` logs all requests.

    ``proxy.registry`` is the upstream :class:`RunningRegistry` as seen through the proxy (same
    credentials and token log, the proxy's host and URL, no CA: the proxy speaks plain http).
    """

    def __init__(self, upstream: RunningRegistry | str, ca_file: Path | None = None) -> None:
        self.upstream = upstream if isinstance(upstream, RunningRegistry) else None
        self.upstream_url = (upstream.url if isinstance(upstream, RunningRegistry) else upstream).rstrip("/")
        if ca_file is None and isinstance(upstream, RunningRegistry):
            ca_file = upstream.ca_file
        self.ca_file = ca_file
        split = urllib.parse.urlsplit(self.upstream_url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {self.upstream_url!r}")
        self._upstream_host = split.netloc
        self._upstream_addr = (split.hostname, split.port or (443 if split.scheme == "https" else 80))
        self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) \
            if split.scheme == "https" else None
        self.requests: list[ProxyRequest] = []
        self._faults = _Faults()
        self._lock = threading.Lock()
        self._server: _ClosingServer | None = None

    # -- life cycle

    def __enter__(self) -> FaultProxy:
        handler = type("FaultProxyHandler", (_ProxyHandler,), {"proxy": self})
        self._server = _ClosingServer(handler)
        self._server.start("fault-proxy")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def host(self) -> str:
        assert self._server is not None, "the proxy is not running (use it as a context manager)"
        return f"127.0.0.1:{self._server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def registry(self) -> RunningRegistry:
        """The upstream registry, reached through the proxy."""
        if self.upstream is None:
            raise ValueError("the proxy was given a URL, not a RunningRegistry")
        return replace(self.upstream, host=self.host, url=self.url, ca_file=None)

    # -- faults

    def corrupt_blob(self, digest: str, offset: int | None = None) -> None:
        """Every GET of blob ``digest`` gets one byte flipped (XOR 0xFF): at ``offset`` of the response body,
        else in its middle. The length stays the same, so only a digest check notices."""
        with self._lock:
            self._faults.corrupt[digest] = offset

    def cut_blob_once(self, digest: str, after_bytes: int) -> None:
        """The next full (200) GET of blob ``digest`` sends the full Content-Length, ``after_bytes`` bytes of the
        body, and closes the connection. Requests after it (a ``Range: bytes=N-`` resume) pass untouched."""
        with self._lock:
            self._faults.cut[digest] = after_bytes

    def throttle_once(self, path_substring: str, retry_after: int = 1, method: str | None = "GET") -> None:
        """The next request (of ``method``; None: any) whose path contains ``path_substring`` gets
        ``429 Too Many Requests`` with ``Retry-After: retry_after``."""
        with self._lock:
            self._faults.status.append((path_substring, method, 429, {"Retry-After": str(retry_after)}))

    def fail_once(self, path_substring: str, status: int = 503, method: str | None = "GET") -> None:
        """The next request (of ``method``; None: any) whose path contains ``path_substring`` gets ``status``."""
        with self._lock:
            self._faults.status.append((path_substring, method, status, {}))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def requests_to(self, path_substring: str, method: str | None = None) -> list[ProxyRequest]:
        """The logged requests whose path contains ``path_substring`` (and of ``method``, if given)."""
        return [r for r in self.requests if path_substring in r.path and (method is None or r.method == method)]

    # -- used by the handler

    def _take_status_fault(self, method: str, path: str) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            for i, (sub, want, status, headers) in enumerate(self._faults.status):
                if sub in path and (want is None or want == method):
                    del self._faults.status[i]
                    return status, headers
        return None

    def _blob_digest(self, method: str, path: str) -> str | None:
        """The digest of a ``GET /v2/<name>/blobs/<digest>`` (the requests blob faults apply to)."""
        match = BLOB_PATH.match(urllib.parse.urlsplit(path).path)
        return match["digest"] if method == "GET" and match else None

    def _corruption(self, digest: str | None) -> tuple[bool, int | None]:
        """(whether to corrupt this blob, the byte offset or None for the middle)."""
        with self._lock:
            return digest in self._faults.corrupt, self._faults.corrupt.get(digest or "")

    def _pending_cut(self, digest: str | None) -> bool:
        with self._lock:
            return digest in self._faults.cut

    def _take_cut(self, digest: str | None) -> int | None:
        """The cut for ``digest``, used up: only one of two concurrent GETs gets it."""
        with self._lock:
            return self._faults.cut.pop(digest or "", None)

    def _connect(self) -> http.client.HTTPConnection:
        host, port = self._upstream_addr
        if self._context is not None:
            return http.client.HTTPSConnection(host, port, timeout=60, context=self._context)
        return http.client.HTTPConnection(host, port, timeout=60)

    def _rewrite_location(self, value: str) -> str:
        if value.startswith(self.upstream_url):
            return self.url + value[len(self.upstream_url):]
        return value


class _ProxyHandler(_QuietHandler):
    proxy: ClassVar[FaultProxy]

    def do_GET(self) -> None:
        """Every method lands here: log the request, then answer a status fault or forward it."""
        proxy = self.proxy
        headers = {k.lower(): v for k, v in self.headers.items()}
        status_fault = proxy._take_status_fault(self.command, self.path)
        if status_fault:
            kind = "throttle" if status_fault[0] == 429 else "fail"
            proxy.requests.append(ProxyRequest(self.command, self.path, headers, kind))
            self._answer_fault(*status_fault)
            return
        digest = proxy._blob_digest(self.command, self.path)
        # a cut applies to the first full GET: one without Range that the registry answers 200 (checked later)
        cut_wanted = digest is not None and "range" not in headers and proxy._pending_cut(digest)
        corrupt, offset = proxy._corruption(digest)
        fault = "cut" if cut_wanted else "corrupt" if corrupt else None
        record = ProxyRequest(self.command, self.path, headers, fault)
        proxy.requests.append(record)  # at arrival: a test measures waits between requests
        self._forward(record, digest if cut_wanted else None, corrupt, offset)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _answer_fault(self, status: int, headers: dict[str, str]) -> None:
        self._drain_body()
        code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
        self.send_json(status, {"errors": [{"code": code, "message": "injected by FaultProxy"}]}, headers)

    def _forward(self, record: ProxyRequest, cut_digest: str | None, corrupt: bool, offset: int | None) -> None:
        """Pass the request upstream and stream the answer back, with the blob faults that apply."""
        proxy = self.proxy
        upstream = proxy._connect()
        responding = False
        try:
            self._forward_request(upstream)
            response = upstream.getresponse()
            responding = True
            cut = proxy._take_cut(cut_digest) if cut_digest and response.status == 200 else None
            if cut_digest and cut is None:  # not applied after all (an error status): log what really happened
                proxy.requests[proxy.requests.index(record)] = record._replace(fault="corrupt" if corrupt else None)
            self._relay_response(response, cut, corrupt and response.status in (200, 206), offset)
        except (OSError, http.client.HTTPException) as exc:
            self.close_connection = True  # mid-stream trouble on either side: the client sees a cut
            if not responding:
                with contextlib.suppress(OSError):
                    self.send_json(502, {"errors": [{"code": "UNKNOWN", "message": f"FaultProxy: {exc}"}]},
                                   {"Connection": "close"})
        finally:
            upstream.close()

    # -- request

    def _forward_request(self, upstream: http.client.HTTPConnection) -> None:
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        upstream.putheader("Host", self.proxy._upstream_host)
        for name, value in self.headers.items():
            if name.lower() not in NOT_FORWARDED:
                upstream.putheader(name, value)
        chunked = self._is_chunked()
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        upstream.endheaders()
        if chunked:
            for chunk in self._read_chunked():
                upstream.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            upstream.send(b"0\r\n\r\n")
        else:
            for chunk in self._read_sized(int(self.headers.get("Content-Length") or 0)):
                upstream.send(chunk)

    def _is_chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _read_sized(self, length: int) -> Iterator[bytes]:
        while length > 0:
            chunk = self.rfile.read(min(CHUNK, length))
            if not chunk:
                raise ConnectionError("the client closed the connection mid-body")
            length -= len(chunk)
            yield chunk

    def _read_chunked(self) -> Iterator[bytes]:
        """Decode a chunked request body (trailers are read and dropped)."""
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("the client closed the connection mid-body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from self._read_sized(size)
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _drain_body(self) -> None:
        """Read and drop a request body, so the keep-alive connection stays in step."""
        chunks = self._read_chunked() if self._is_chunked() else \
            self._read_sized(int(self.headers.get("Content-Length") or 0))
        for _ in chunks:
            pass

    # -- response

    def _relay_response(self, response: http.client.HTTPResponse, cut: int | None, corrupt: bool,
                        offset: int | None) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue
            if lower == "location":
                value = self.proxy._rewrite_location(value)
            self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        chunked_out = not no_body and length is None
        if chunked_out:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        flip_at = offset if offset is not None else (int(length) // 2 if length else 0)
        sent = 0
        while chunk := response.read1(CHUNK):
            if corrupt and sent <= flip_at < sent + len(chunk):
                i = flip_at - sent
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
            if cut is not None and sent + len(chunk) >= cut:
                self.wfile.write(chunk[:cut - sent])
                self._cut_connection()
                return
            self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked_out else chunk)
            sent += len(chunk)
        if chunked_out:
            self.wfile.write(b"0\r\n\r\n")
        elif length is not None and sent < int(length):
            self.close_connection = True  # the upstream fell short: the client must see it too

    def _cut_connection(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------------
# skopeo


def skopeo_env(tmp: Path) -> dict[str, str]:
    """An environment in which skopeo reads and writes only under ``tmp``.

    As root, containers/image keeps its blob-info cache in /var/lib/containers/cache; with
    ``_CONTAINERS_ROOTLESS_UID`` set it uses ``$XDG_DATA_HOME/containers/cache`` instead (c/image's
    ``blobinfocache.DefaultCache``); the auth file is ``REGISTRY_AUTH_FILE``. Checked with strace: the only
    host files skopeo 1.9 then opens are /etc/containers/registries.conf{,.d} and /etc/docker/certs.d, to read.
    """
    for sub in ("home", "data", "config", "run", "tmp", "registries.d"):
        (tmp / sub).mkdir(mode=0o700, exist_ok=True)
    (tmp / "auth.json").write_text('{"auths": {}}')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REGISTRY_", "CONTAINERS_", "DOCKER_")) and k.lower() not in PROXY_VARIABLES}
    env.update({
        "HOME": str(tmp / "home"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "TMPDIR": str(tmp / "tmp"),
        "REGISTRY_AUTH_FILE": str(tmp / "auth.json"),
        "_CONTAINERS_ROOTLESS_UID": str(os.getuid() or 65534),
    })
    return env


def _skopeo_registry_options(registry: RunningRegistry, tmp: Path, side: Literal["src", "dest"] | None
                             ) -> list[str]:
    """TLS and credential options for ``registry``: of one side of ``copy``, or (None) of ``inspect``."""
    prefix = f"--{side}-" if side else "--"
    options: list[str] = []
    if registry.ca_file:
        cert_dir = tmp / f"certs-{side or 'inspect'}"
        cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(registry.ca_file, cert_dir / "ca.crt")  # c/image reads *.crt in the dir as CAs
        options += [f"{prefix}cert-dir={cert_dir}", f"{prefix}tls-verify=true"]
    else:
        options.append(f"{prefix}tls-verify=false")
    if registry.username:
        options.append(f"{prefix}creds={registry.username}:{registry.password}")
    return options


def _run_skopeo(args: list[str], tmp: Path, timeout: float) -> subprocess.CompletedProcess:
    argv = [SKOPEO_BIN, "--insecure-policy", f"--tmpdir={tmp / 'tmp'}", f"--registries.d={tmp / 'registries.d'}",
            *args]
    proc = subprocess.run(argv, env=skopeo_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SkopeoError(f"skopeo {args[0]} failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stderr}")
    return proc


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; the message holds its command line and stderr."""


def _full_ref(registry: RunningRegistry, ref: str) -> str:
    """``docker://HOST/NAME`` for ``ref`` given with or without the registry's host or ``docker://``."""
    ref = ref.removeprefix("docker://")
    if not ref.startswith(registry.host + "/"):
        ref = registry.ref(ref)
    return "docker://" + ref


def _source_is_index(source: str) -> bool:
    """Whether an ``oci:`` or ``oci-archive:`` source names an image index (then ``--all`` copies all of it)."""
    transport, _, rest = source.partition(":")
    if transport not in ("oci", "oci-archive"):
        return False
    path, _, ref = rest.partition(":")
    try:
        if transport == "oci":
            index = json.loads((Path(path) / "index.json").read_text())
        else:
            with tarfile.open(path) as tar:
                member = tar.extractfile("index.json")
                index = json.load(member) if member else {}
    except (OSError, ValueError, KeyError, tarfile.TarError):
        return False
    entries = index.get("manifests", [])
    if ref:
        entries = [e for e in entries if e.get("annotations", {}).get(REF_NAME) == ref]
    return any(e.get("mediaType") in (MEDIA_INDEX, MEDIA_DOCKER_LIST) for e in entries)


def push_with_skopeo(registry: RunningRegistry, source: str, dest_ref: str, *, all_images: bool | None = None,
                     timeout: float = 120) -> str:
    """Copy ``source`` (``oci-archive:/x.tar``, ``oci:/dir[:ref]``, ...) to ``dest_ref`` in ``registry``;
    returns the pushed manifest's digest.

    ``dest_ref`` is ``repo:tag`` (or already prefixed with the registry's host). ``all_images`` (skopeo
    ``--all``) defaults to whether the source is an index. Digests are preserved, so a layout's
    manifest digests are the registry's.
    """
    if all_images is None:
        all_images = _source_is_index(source)
    with tempfile.TemporaryDirectory(prefix="sk-skopeo-") as tmp_name:
        tmp = Path(tmp_name)
        digest_file = tmp / "digest"
        args = ["copy", "--quiet", "--preserve-digests", f"--digestfile={digest_file}",
                *(["--all"] if all_images else []),
                *_skopeo_registry_options(registry, tmp, "dest"), source, _full_ref(registry, dest_ref)]
        _run_skopeo(args, tmp, timeout)
        return digest_file.read_text().strip()


def inspect_with_skopeo(registry: RunningRegistry, ref: str, *, raw: bool = False, config: bool = False,
                        arch: str | None = None, timeout: float = 60) -> dict:
    """``skopeo inspect`` of ``ref`` in ``registry`` as JSON: the summary, the ``--raw`` manifest or the
    ``--config``; ``arch`` picks a platform of an index (``--override-arch``)."""
    with tempfile.TemporaryDirectory(prefix="sk-skopeo-") as tmp_name:
        tmp = Path(tmp_name)
        # --override-arch is a global option: it comes before the subcommand
        args = [*(["--override-arch", arch] if arch else []), "inspect",
                *(["--raw"] if raw else []), *(["--config"] if config else []),
                *_skopeo_registry_options(registry, tmp, None), _full_ref(registry, ref)]
        return json.loads(_run_skopeo(args, tmp, timeout).stdout)


# --------------------------------------------------------------------------------------------------
# Images: the project's busybox as an archive, and a two-platform layout made from it


def sandbox_kernel_cli(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``sandbox-kernel --root ROOT ARGS`` with this interpreter; raises with its stderr on failure."""
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel", "--root", str(root), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"sandbox-kernel {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def save_busybox(store_root: Path, out_file: Path, ref: str = "localhost/busybox:latest") -> Path:
    """``sandbox-kernel save``: ``ref`` of the store at ``store_root`` as an OCI archive at ``out_file``."""
    sandbox_kernel_cli(store_root, "save", ref, "-o", str(out_file))
    return out_file


@dataclass
class MultiArchLayout:
    """An OCI image layout whose index.json names (``ref``) an image index of two platform manifests."""

    path: Path
    index_digest: str
    amd64_digest: str  # the busybox manifest as the project built it
    arm64_digest: str  # same layers; config says arm64/v8
    ref: str = "latest"

    @property
    def source(self) -> str:
        """The skopeo source name of the index."""
        return f"oci:{self.path}:{self.ref}"


def _put_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def make_multiarch_layout(store_root: Path, out_dir: Path, ref: str = "localhost/busybox:latest",
                          tag: str = "latest") -> MultiArchLayout:
    """Build at ``out_dir`` a layout with an index of linux/amd64 (busybox of ``store_root``) and linux/arm64/v8.

    The arm64 manifest shares the layers and has a copy of the config with ``architecture: arm64`` and
    ``variant: v8``, so its config digest, and hence its manifest digest, differ from amd64's.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sk-multiarch-") as tmp:
        archive = save_busybox(store_root, Path(tmp) / "busybox.tar", ref)
        with tarfile.open(archive) as tar:
            tar.extractall(out_dir, filter="data")  # our own archive, and the data filter on top
    [entry] = json.loads((out_dir / "index.json").read_text())["manifests"]
    amd64_digest = entry["digest"]
    manifest = json.loads(_blob(out_dir, amd64_digest))
    config = json.loads(_blob(out_dir, manifest["config"]["digest"]))
    if config.get("architecture") != "amd64":
        raise RuntimeError(f"expected an amd64 busybox, got {config.get('architecture')!r}")
    arm_config = json.dumps({**config, "architecture": "arm64", "variant": "v8"}, separators=(",", ":")).encode()
    arm_manifest = {**manifest, "config": {**manifest["config"], "digest": _put_blob(out_dir, arm_config),
                                           "size": len(arm_config)}}
    arm_bytes = json.dumps(arm_manifest, separators=(",", ":")).encode()
    arm64_digest = _put_blob(out_dir, arm_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {"mediaType": MEDIA_MANIFEST, "digest": amd64_digest, "size": entry["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": MEDIA_MANIFEST, "digest": arm64_digest, "size": len(arm_bytes),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    }
    index_bytes = json.dumps(index, separators=(",", ":")).encode()
    index_digest = _put_blob(out_dir, index_bytes)
    top = {"schemaVersion": 2, "mediaType": MEDIA_INDEX,
           "manifests": [{"mediaType": MEDIA_INDEX, "digest": index_digest, "size": len(index_bytes),
                          "annotations": {REF_NAME: tag}}]}
    (out_dir / "index.json").write_text(json.dumps(top, separators=(",", ":")))
    (out_dir / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return MultiArchLayout(out_dir, index_digest, amd64_digest, arm64_digest, tag)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def registry_factory(tmp_path_factory) -> Iterator[Callable[..., RunningRegistry]]:
    """``make(kind, tls=None)``: a fresh registry for this test alone; all of them stop when it ends."""
    parent = tmp_path_factory.getbasetemp()
    with ExitStack() as stack:

        def make(kind: Kind = "plain", *, tls: bool | None = None) -> RunningRegistry:
            return stack.enter_context(running_registry(kind, tls=tls, parent=parent))

        yield make


def _module_registry(kind: Kind) -> Callable[..., Iterator[RunningRegistry]]:
    def fixture(tmp_path_factory) -> Iterator[RunningRegistry]:
        with running_registry(kind, parent=tmp_path_factory.getbasetemp()) as registry:
            yield registry

    fixture.__name__ = f"{kind}_registry"
    fixture.__doc__ = f"A {kind!r} registry shared by the tests of one module: use distinct repository names."
    return pytest.fixture(scope="module", name=f"{kind}_registry")(fixture)


plain_registry = _module_registry("plain")
tls_registry = _module_registry("tls")
basic_registry = _module_registry("basic")
token_registry = _module_registry("token")


@contextmanager
def _scratch_dir(tmp_path_factory, prefix: str) -> Iterator[Path]:
    """A directory under pytest's base temp that is gone after the fixture, whatever pytest's retention policy."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path_factory.getbasetemp()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_archive(root, tmp_path_factory) -> Iterator[Path]:
    """The project's busybox (from conftest's session store ``root``) as an OCI archive (read-only: shared)."""
    with _scratch_dir(tmp_path_factory, "sk-busybox-archive-") as tmp:
        yield save_busybox(root, tmp / "busybox.tar")


@pytest.fixture(scope="session")
def multiarch_layout(root, tmp_path_factory) -> Iterator[MultiArchLayout]:
    """A two-platform (linux/amd64, linux/arm64/v8) busybox index in an OCI layout (read-only: shared)."""
    with _scratch_dir(tmp_path_factory, "sk-multiarch-") as tmp:
        yield make_multiarch_layout(root, tmp / "layout")
