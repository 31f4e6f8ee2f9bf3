"""HTTP to one registry: TLS, the token dance, retries, redirects and resumable blob reads.

What containers/image's docker_client.go does, in the standard library:

* ``ping`` (``GET /v2/``) once: it picks https (or, with ``insecure``, https
  without verification and then plain http) and remembers the registry's
  challenge. ``Bearer realm=…,service=…`` means tokens: one is fetched from
  the realm per set of scopes (with basic credentials when we have them),
  cached until it expires, fetched again on a 401 (expired, or
  ``insufficient_scope``). ``Basic`` means the credentials go on every request.
* Retries with exponential backoff on connection errors and 5xx; a 429 waits
  for its ``Retry-After``; both capped (``RegistryOptions``).
* Redirects are followed; the Authorization header never goes to another host
  (blob storage behind a redirect has its own signed URL).
* :class:`BlobReader` reads a blob and, when the connection drops, asks again
  with ``Range: bytes=N-`` from where it was (a 200 instead of 206 is skipped
  forward), so that a reader above it (digest check, unpacking) never notices.

One connection per thread and host (keep-alive); a transport is safe to share
between the threads of a parallel pull.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import json
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthError, RegistryError
from . import credentials as creds_mod
from .credentials import Credentials
from .ref import DEFAULT_REGISTRY

DOCKER_HUB_API = "registry-1.docker.io"
USER_AGENT = "sandbox-kernel/0.1"
CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")  # podman's and docker's, per registry host
RETRY_STATUS = {500, 502, 503, 504}
REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries (the CLI's ``--insecure``, ``--ca-file``, ``--cert-dir``)."""

    insecure: bool = False  # allow plain http, and https without verifying the certificate
    ca_file: str | None = None  # trust this CA (PEM) as well as the system's
    cert_dir: str | None = None  # docker's layout: *.crt CAs, NAME.cert + NAME.key client pairs
    credentials: Credentials | None = field(default=None, repr=False)  # else: from the docker config file
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5  # first wait; doubles each time
    max_wait: float = 60.0  # cap on a backoff or a Retry-After
    sleep: Callable[[float], None] = time.sleep  # tests may record instead


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "bearer" or "basic"
    params: dict[str, str]


_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str | None) -> Challenge | None:
    """``Bearer realm="…",service="…",scope="…"`` → Challenge (None for anything we cannot use)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic"):
        return None
    params = {key.lower(): (quoted if quoted is not None and quoted != "" else bare or "").replace('\\"', '"')
              for key, quoted, bare in _PARAM.findall(rest)}
    return Challenge(scheme.lower(), params)


def api_host(registry: str) -> str:
    return DOCKER_HUB_API if registry == DEFAULT_REGISTRY else registry


def _error_text(status: int, reason: str, body: bytes) -> str:
    """The registry's own words for an error (``{"errors": [{"code", "message"}]}``), or the status."""
    try:
        doc = json.loads(body[:65536] or b"{}")
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = str(first.get("code") or "").lower().replace("_", " ")
            message = str(first.get("message") or "").strip()
            text = message if not code or code in message.lower() else f"{code}: {message}" if message else code
            return f"{text} ({status})"
    except (ValueError, AttributeError):
        pass
    return f"{status} {reason}".strip()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Response:
    """An answer whose body is read by the caller; :meth:`close` before the next request on this thread."""

    def __init__(self, raw: http.client.HTTPResponse, conn: http.client.HTTPConnection, url: str):
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.url = url
        self._conn = conn

    def read(self, limit: int | None = None) -> bytes:
        """The whole body; ``limit``: refuse a body larger than that many bytes."""
        if limit is None:
            return self.raw.read()
        where = urllib.parse.urlsplit(self.url)._replace(query="").geturl()  # a signed URL's query is a secret
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.close()
            raise RegistryError(f"{where}: the answer is larger than {limit} bytes")
        data = self.raw.read(limit + 1)
        if len(data) > limit:
            self.close()
            raise RegistryError(f"{where}: the answer is larger than {limit} bytes")
        return data

    def readinto(self, buffer: Any) -> int:
        return self.raw.readinto(buffer)

    def reason_phrase(self) -> str:
        return self.raw.reason or ""

    def close(self) -> None:
        if not self.raw.isclosed():
            self.raw.close()
            self._conn.close()  # a half-read body makes the connection useless


class Transport:
    """One registry's HTTP client (see the module's docstring)."""

    def __init__(self, registry: str, options: RegistryOptions | None = None):
        self.options = options or RegistryOptions()
        self.registry = creds_mod.normalize(registry)
        self.host = api_host(self.registry)
        self.credentials = self.options.credentials or creds_mod.lookup(self.registry)
        self.scheme: str | None = None
        self.challenge: Challenge | None = None
        self._contexts: dict[bool, ssl.SSLContext] = {}  # made when first needed: loading the CAs takes ~35 ms
        self._verify = True
        self._local = threading.local()
        self._lock = threading.Lock()  # tokens, the connection list
        self._ping_lock = threading.Lock()  # one ping, the others wait for its answer
        self._tokens: dict[tuple[str, str, tuple[str, ...]], tuple[str, float]] = {}
        self._every: list[http.client.HTTPConnection] = []

    # -- TLS and connections ----------------------------------------------------------------------------

    def _context(self, verify: bool) -> ssl.SSLContext:
        with self._lock:
            if verify not in self._contexts:
                self._contexts[verify] = self._tls_context(verify)
            return self._contexts[verify]

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        """The system's CAs plus ``ca_file`` and the cert dir's; unverified: none, but client certs still go."""
        if verify:
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            if self.options.ca_file and verify:
                ctx.load_verify_locations(cafile=self.options.ca_file)
            dirs = [Path(self.options.cert_dir)] if self.options.cert_dir else [Path(d) / self.host for d in CERT_DIRS]
            for directory in dirs:
                if not directory.is_dir():
                    continue
                for ca in sorted(directory.glob("*.crt")) if verify else ():
                    ctx.load_verify_locations(cafile=str(ca))
                for cert in sorted(directory.glob("*.cert")):
                    key = cert.with_suffix(".key")
                    if not key.exists():
                        raise RegistryError(f"{cert} has no matching {key.name}")
                    ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot load the TLS certificates for {self.host}: {exc}") from None
        return ctx

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        conn = pool.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                ctx = self._context(self._verify or netloc != self.host)
                conn = http.client.HTTPSConnection(netloc, timeout=self.options.timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.options.timeout)
            pool[(scheme, netloc)] = conn
            with self._lock:
                self._every.append(conn)
        return conn

    def _drop_connection(self, scheme: str, netloc: str) -> None:
        pool = self._local.__dict__.get("pool", {})
        conn = pool.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every connection, of every thread that used this transport."""
        with self._lock:
            every, self._every = self._every, []
        for conn in every:
            conn.close()
        self._local.__dict__["pool"] = {}

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        """One request on this thread's connection (reconnecting once if a kept-alive one went stale)."""
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for fresh in (False, True):
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **headers})
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection(parts.scheme, parts.netloc)
                if fresh:
                    raise
                continue
            except BaseException:
                self._drop_connection(parts.scheme, parts.netloc)
                raise
            return Response(raw, conn, url)
        raise AssertionError("unreachable")

    # -- ping: scheme and challenge ----------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: choose the scheme and learn how the registry wants us to authenticate."""
        with self._ping_lock:
            if self.scheme is not None:
                return
            # docker's way with an insecure registry: https without verifying, then plain http
            schemes = [("https", False), ("http", True)] if self.options.insecure else [("https", True)]
            last: BaseException | None = None
            for scheme, verify in schemes:
                self._verify = verify
                try:
                    resp = self._with_retries(lambda s=scheme: self._send("GET", f"{s}://{self.host}/v2/", {}, None),
                                              f"cannot reach registry {self.registry}", connect_errors_final=True)
                except ssl.SSLError as exc:
                    last = exc
                    self.close()
                    continue
                except RegistryError as exc:
                    last = exc
                    self.close()
                    if not self.options.insecure:
                        raise
                    continue
                body = resp.read(65536)
                if resp.status == 401:
                    self.challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
                elif resp.status != 200:
                    raise RegistryError(f"{self.registry} is not a registry (GET /v2/: "
                                        f"{_error_text(resp.status, resp.reason_phrase(), body)})")
                self.scheme = scheme
                return
            if isinstance(last, ssl.SSLError):
                detail = getattr(last, "verify_message", None) or last.reason or str(last)
                hint = "trust its CA with --ca-file or --cert-dir, or use --insecure" if not self.options.insecure \
                    else "it speaks neither https nor http"
                raise RegistryError(f"TLS with registry {self.registry} failed ({detail}): {hint}") from None
            raise last if last is not None else RegistryError(f"cannot reach registry {self.registry}")

    # -- requests -----------------------------------------------------------------------------------------

    def _with_retries(self, send: Callable[[], Response], what: str, *,
                      connect_errors_final: bool = False) -> Response:
        """``send`` again after connection errors, 5xx and 429, waiting as the registry asks."""
        opts = self.options
        wait = opts.backoff
        for attempt in range(opts.retries + 1):
            last_try = attempt == opts.retries
            try:
                resp = send()
            except ssl.SSLError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                if last_try or (connect_errors_final and isinstance(exc, ConnectionRefusedError)):
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc)
                    raise RegistryError(f"{what}: {reason}") from None
                opts.sleep(min(wait, opts.max_wait))
                wait *= 2
                continue
            if resp.status == 429 or resp.status in RETRY_STATUS:
                if last_try:
                    return resp
                delay = _retry_after(resp.headers.get("Retry-After")) if resp.status == 429 else None
                resp.read(1 << 20)
                opts.sleep(min(delay if delay is not None else wait, opts.max_wait))
                wait *= 2
                continue
            return resp
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, scopes: Iterable[str] = (), headers: dict[str, str] | None = None,
                body: bytes | None = None, expect: Iterable[int] = (200,), what: str = "",
                follow: bool = True) -> Response:
        """``method path`` (a path on the registry, or an absolute URL it gave), authenticated for ``scopes``.

        Returns the response once its status is in ``expect`` (its body not
        read yet); raises :class:`AuthError` or :class:`RegistryError` with the
        registry's own message otherwise.
        """
        self.ping()
        scopes = tuple(sorted(set(scopes)))
        expect = set(expect)
        what = what or f"{method} {path}"
        url = path if "://" in path else f"{self.scheme}://{self.host}{path}"
        auth_tries = 0
        redirects = 0
        while True:
            sent = dict(headers or {})
            netloc = urllib.parse.urlsplit(url).netloc
            if netloc == self.host:
                auth = self._authorization(scopes)
                if auth:
                    sent["Authorization"] = auth
            resp = self._with_retries(lambda u=url, h=sent: self._send(method, u, h, body), what)
            if resp.status in expect:
                return resp
            if resp.status in REDIRECTS and follow and "Location" in resp.headers:
                resp.read(1 << 20)
                redirects += 1
                if redirects > 5:
                    raise RegistryError(f"{what}: too many redirects")
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                continue
            data = resp.read(1 << 20) if resp.status != 204 else b""
            if resp.status == 401 and netloc == self.host and auth_tries < 2:
                auth_tries += 1
                challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
                if challenge is not None and self._reauthorize(challenge, scopes):
                    if challenge.params.get("scope"):
                        scopes = tuple(sorted(set(scopes) | set(challenge.params["scope"].split(" "))))
                    continue
            text = _error_text(resp.status, resp.reason_phrase(), data)
            if resp.status in (401, 403):
                who = f"as {self.credentials.username}" if self.credentials else "without credentials"
                hint = "" if self.credentials else f" (log in with: sandbox-kernel login {self.registry})"
                raise AuthError(f"{what}: denied {who}: {text}{hint}")
            raise RegistryError(f"{what}: {text}")

    def check_login(self) -> None:
        """Prove the credentials work (``login``): a token for no scope, or ``GET /v2/`` with basic auth."""
        self.ping()
        if self.challenge is None:
            return  # the registry asks for nothing
        if self.credentials is None:
            raise AuthError(f"registry {self.registry}: no credentials to log in with")
        if self.challenge.scheme == "bearer":
            self._fetch_token(self.challenge.params.get("realm", ""), self.challenge.params.get("service", ""), ())
            return
        self.request("GET", "/v2/", what=f"log in to {self.registry}").read(65536)

    # -- authorization ------------------------------------------------------------------------------------

    def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self.credentials.basic() if self.credentials else None
        return f"Bearer {self._token(challenge, scopes)}"

    def _reauthorize(self, challenge: Challenge, scopes: tuple[str, ...]) -> bool:
        """After a 401: True if another try may succeed (a new challenge, or a token to fetch again)."""
        with self._lock:
            self.challenge = challenge
            if challenge.scheme == "basic":
                return self.credentials is not None
            key_prefix = (challenge.params.get("realm", ""), challenge.params.get("service", ""))
            for key in [k for k in self._tokens if k[:2] == key_prefix]:
                del self._tokens[key]  # expired or too narrow: ask again
            return True

    def _token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        realm = challenge.params.get("realm", "")
        service = challenge.params.get("service", "")
        key = (realm, service, scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
        token, lifetime = self._fetch_token(realm, service, scopes)
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 10, 1))
        return token

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...]) -> tuple[str, float]:
        if not realm.startswith(("https://", "http://")):
            raise AuthError(f"registry {self.registry} names no usable token realm ({realm!r})")
        query = [("service", service)] if service else []
        query += [("scope", scope) for scope in scopes]
        if self.credentials is not None:
            query.append(("account", self.credentials.username))
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        what = f"token for {self.registry} from {urllib.parse.urlsplit(realm).netloc}"
        resp = self._with_retries(lambda: self._send("GET", url, headers, None), f"cannot get a {what}")
        data = resp.read(1 << 20)
        if resp.status in (401, 403):
            who = f"as {self.credentials.username}" if self.credentials else "anonymously"
            raise AuthError(f"{self.registry}: the token server refused us {who}: "
                            f"{_error_text(resp.status, resp.reason_phrase(), data)}")
        if resp.status != 200:
            raise AuthError(f"cannot get a {what}: {_error_text(resp.status, resp.reason_phrase(), data)}")
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(f"the {what} is not valid JSON") from None
        if not isinstance(token, str) or not token:
            raise AuthError(f"the {what} holds no token")
        return token, max(lifetime, 60.0)


class BlobReader(io.RawIOBase):
    """A blob's bytes, read once, with the download resumed (``Range``) after a dropped connection."""

    def __init__(self, transport: Transport, path: str, size: int, scopes: Iterable[str], what: str):
        super().__init__()
        self.transport = transport
        self.path = path
        self.size = size
        self.scopes = tuple(scopes)
        self.what = what
        self.pos = 0
        self.resumed = 0
        self._resp: Response | None = transport.request("GET", path, scopes=self.scopes, what=what)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        view = memoryview(buffer).cast("B")[: self.size - self.pos]
        failures = 0
        while True:
            try:
                if self._resp is None:
                    self._resp = self._reopen()
                n = self._resp.readinto(view)
                if n:
                    self.pos += n
                    return n
                raise ConnectionResetError(f"the connection closed at byte {self.pos} of {self.size}")
            except (OSError, http.client.HTTPException) as exc:
                if self._resp is not None:
                    self._resp.close()
                    self._resp = None
                failures += 1
                if failures > self.transport.options.retries:
                    raise RegistryError(f"{self.what}: the download broke off at byte {self.pos} of {self.size} "
                                        f"and could not be resumed: {exc}") from None
                self.transport.options.sleep(min(self.transport.options.backoff * 2 ** (failures - 1),
                                                  self.transport.options.max_wait))

    def _reopen(self) -> Response:
        self.resumed += 1
        resp = self.transport.request("GET", self.path, scopes=self.scopes, what=self.what,
                                      headers={"Range": f"bytes={self.pos}-"}, expect=(200, 206))
        if resp.status == 200:  # no ranges here: read up to where we were
            left = self.pos
            while left:
                chunk = resp.raw.read(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionResetError("the connection closed while skipping to the resume point")
                left -= len(chunk)
        return resp

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        super().close()

