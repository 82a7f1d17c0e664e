"""HTTP transport: one :class:`requests.Session`, auth, timeouts, caps, redaction.

Every request gets the headers of :attr:`Auth.get_headers`, connect and read
timeouts, an overall deadline (a server that drips its answer byte by byte
cannot hold a request longer), TLS verification, and a cap on the response
size.  Answers are strict JSON: ``NaN``/``Infinity`` and bodies nested too
deeply to parse are refused like any malformed body.  Redirects are
followed only within ``base_url``'s origin.  A 401 calls
:attr:`Auth.on_auth_error` once per burst (concurrent 401s share one refresh)
and retries with fresh headers, up to ``max_auth_retries``; after that
:class:`~sqla_sync.AuthRequiredError` says push must pause.  Secret header
values never reach a log line or an exception message: :meth:`Transport.redact`
scrubs them from any text the library keeps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from .errors import AuthRequiredError, ConfigurationError, ForbiddenRedirectError, TransportError

__all__ = ["NO_BODY", "Answer", "Auth", "AuthFailure", "Transport"]

log = logging.getLogger(__name__)

#: Sentinel: send no body.
NO_BODY: Any = object()

_DEFAULT_SECRETS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token")
_REDACTED = "[REDACTED]"
#: Characters a header value may not hold (requests refuses them, quoting the value).
_BAD_HEADER_CHARS = frozenset("\r\n\0")
#: How much of an error page is kept, after redaction.
_EXCERPT_CHARS = 500


def _refuse_constant(name: str) -> Any:
    """``json.loads`` hook: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    """``json.loads`` hook: a number like ``1e999`` would become infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a JSON value a float can hold")
    return value


def _variants(secret: str) -> list[str]:
    """The forms a secret takes in text: raw, stripped, and escaped by ``repr`` or JSON."""
    forms = {secret, secret.strip(), repr(secret)[1:-1], json.dumps(secret)[1:-1]}
    return [f for f in forms if len(f) >= 4]


@dataclasses.dataclass(frozen=True)
class AuthFailure:
    """What ``on_auth_error`` is told: the status and the path that was refused."""

    status: int
    method: str
    path: str


@dataclasses.dataclass(frozen=True)
class Auth:
    """Credentials for every request.

    :param get_headers: called before every request; returns headers such as
        ``{"Authorization": "Bearer ..."}``.
    :param on_auth_error: called with an :class:`AuthFailure` on a 401, once
        per burst of them; refresh the token here.
    :param max_auth_retries: refreshes tried for one request before push pauses.
    :param secret_headers: header names whose values are never logged or stored.
    """

    get_headers: Callable[[], Mapping[str, str]] | None = None
    on_auth_error: Callable[[AuthFailure], Any] | None = None
    max_auth_retries: int = 3
    secret_headers: tuple[str, ...] = _DEFAULT_SECRETS


@dataclasses.dataclass(frozen=True)
class Answer:
    """A response read in full (up to the cap) and parsed.

    :ivar body: the parsed JSON body, or None for an empty one.  The body of
        an answer outside 2xx has every secret header value seen so far
        redacted from its strings (servers echo requests in error answers).
    """

    status: int
    headers: CaseInsensitiveDict[str]
    body: Any
    method: str
    path: str
    elapsed: float


class Transport:
    """Sends requests to ``base_url`` on one pooled, keep-alive session."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        deadline: float | None = None,
        max_response_bytes: int = 16 * 2**20,
        pool_size: int = 10,
        session: requests.Session | None = None,
        verify: bool | str = True,
        clock: Callable[[], float] = time.monotonic,
        on_answer: Callable[[int | None, float | None], None] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"base_url {base_url!r} must be an absolute http(s) URL such as "
                "'https://api.example.com'"
            )
        self.base_url = base_url.rstrip("/")
        self.origin = (parts.scheme, parts.netloc.lower())
        self.auth = auth or Auth()
        self.timeout = timeout
        #: Seconds one request may take from sending to the last byte of its
        #: answer, redirects included; by default connect + read timeout.
        self.deadline = deadline if deadline is not None else float(sum(timeout))
        self.max_response_bytes = max_response_bytes
        self.verify = verify
        self._clock = clock
        self._session = session or requests.Session()
        self._owns_session = session is None
        if self._owns_session:
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4))
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
            self._read_environment()
        self._secret_names = {h.lower() for h in self.auth.secret_headers}
        self._secrets: deque[str] = deque(maxlen=32)
        self._secret_lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._auth_generation = 0
        #: How many times ``on_auth_error`` was called.
        self.auth_refreshes = 0
        #: Called after every attempt with (status, seconds); (None, None) when
        #: no answer came (connection error, timeout).
        self.on_answer = on_answer
        #: True after an answer, False after a failure to reach the server.
        self.reachable: bool | None = None

    def _read_environment(self) -> None:
        """Take the environment's proxies, CA bundle and ``.netrc`` credentials
        for ``base_url`` once, as requests would for every request.

        requests reads them on each request (``trust_env``): the proxy variables
        and ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` and a stat
        of ``~/.netrc`` -- measured, a fifth of the client's CPU per push
        request.  Every request here goes to ``base_url``'s origin (redirects
        elsewhere are refused), so one reading gives the same settings; a
        change to the environment is seen by the next engine.  A session the
        application passes in is left as it is.
        """
        session = self._session
        if not session.trust_env:
            return
        session.trust_env = False
        for scheme, proxy in requests.utils.get_environ_proxies(self.base_url).items():
            session.proxies.setdefault(scheme, proxy)
        if session.auth is None:
            session.auth = requests.utils.get_netrc_auth(self.base_url)
        if self.verify is True:
            self.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                           or os.environ.get("CURL_CA_BUNDLE") or True)

    # -- secrets ---------------------------------------------------------------

    def _remember_secrets(self, headers: Mapping[str, str]) -> None:
        for name, value in headers.items():
            if name.lower() in self._secret_names and value:
                text = str(value)
                with self._secret_lock:
                    if text in self._secrets:
                        continue
                    _, _, token = text.strip().partition(" ")
                    for form in [*_variants(text), *(_variants(token) if token else [])]:
                        if form not in self._secrets:
                            self._secrets.append(form)

    def redact(self, text: str) -> str:
        """``text`` with every secret header value seen so far replaced (also
        in the escaped forms ``repr`` and JSON give it)."""
        with self._secret_lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def redact_value(self, value: Any) -> Any:
        """A parsed JSON value with :meth:`redact` applied to every string in it."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self.redact_value(v) for v in value]
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact_value(v) for k, v in value.items()}
        return value

    def _check_auth_headers(self, headers: Mapping[str, Any], method: str, url: str) -> None:
        """Refuse credentials requests would refuse -- naming the header, never the value."""
        for name, value in headers.items():
            if isinstance(value, str) and not (_BAD_HEADER_CHARS & set(value)) \
                    and value == value.strip():
                continue
            problem = (f"is a {type(value).__name__}, not a str" if not isinstance(value, str)
                       else "holds a line break, NUL or surrounding whitespace (a token read "
                       "from a file keeps its newline: strip it)")
            raise AuthRequiredError(
                f"{method} {urlsplit(url).path}: the value Auth.get_headers returned for the "
                f"{name!r} header {problem}; sync is paused until get_headers returns "
                "a usable value"
            )

    # -- urls ------------------------------------------------------------------

    def resolve(self, url: str, base: str | None = None) -> str:
        """An absolute URL for a path or URL (relative to ``base``, a redirect's
        request URL); another origin, or a URL that does not parse, raises
        :class:`ForbiddenRedirectError`."""
        try:
            if base is not None:
                absolute = urljoin(base, url)
            elif "://" in url or url.startswith("//"):
                absolute = urljoin(self.base_url + "/", url)
            else:
                absolute = self.base_url + ("" if url.startswith("/") else "/") + url
            parts = urlsplit(absolute)
            netloc = parts.netloc.lower()
            _ = parts.port  # raises ValueError for a port out of range
        except ValueError as exc:
            raise ForbiddenRedirectError(
                self.redact(f"refusing the malformed URL {url[:200]!r}: {exc}")
            ) from None
        if (parts.scheme, netloc) != self.origin:
            raise ForbiddenRedirectError(
                f"refusing {parts.scheme}://{parts.netloc}: only {self.origin[0]}://"
                f"{self.origin[1]} (the origin of base_url) is contacted"
            )
        return absolute

    # -- requests --------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = NO_BODY,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request and read its answer.

        A 401 goes through the auth refresh described in the module docstring.
        Raises :class:`TransportError` when no usable answer came (retry it),
        :class:`AuthRequiredError` when credentials keep failing, and
        :class:`ForbiddenRedirectError` for a redirect to another origin.
        """
        absolute = self.resolve(url)
        auth_attempts = 0
        while True:
            generation = self._auth_generation
            answer = self._send(method, absolute, params, json_body, headers)
            if answer.status != 401:
                return answer
            if auth_attempts >= self.auth.max_auth_retries or self.auth.on_auth_error is None:
                paused = "push is paused" if method != "GET" else "the pull stops"
                raise AuthRequiredError(
                    f"{method} {answer.path} was refused with 401 after {auth_attempts} "
                    f"credential refresh(es); {paused} until Auth.get_headers returns "
                    "working credentials"
                )
            auth_attempts += 1
            self._refresh(generation, AuthFailure(401, method, answer.path))

    def _refresh(self, generation: int, failure: AuthFailure) -> None:
        with self._auth_lock:
            if self._auth_generation != generation:
                return  # another request of this burst refreshed already
            self.auth_refreshes += 1
            assert self.auth.on_auth_error is not None
            try:
                self.auth.on_auth_error(failure)
            finally:
                self._auth_generation += 1

    def _send(
        self,
        method: str,
        absolute: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        extra: Mapping[str, str] | None,
    ) -> Answer:
        headers: dict[str, str] = {"Accept": "application/json"}
        if extra:
            headers.update(extra)
        if self.auth.get_headers is not None:
            credentials = self.auth.get_headers()
            self._remember_secrets(credentials)
            self._check_auth_headers(credentials, method, absolute)
            headers.update(credentials)
        self._remember_secrets(headers)
        data: bytes | None = None
        if json_body is not NO_BODY:
            data = json.dumps(json_body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        url = absolute
        started = self._clock()
        for _ in range(6):
            path = urlsplit(url).path
            self._check_deadline(started, method, path, None)
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=self.timeout,
                    verify=self.verify,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                self._answered(None, None)
                raise TransportError(
                    self.redact(f"{method} {path}: {type(exc).__name__}: {exc}")
                ) from None
            except ValueError as exc:  # requests parses a redirect's Location up front
                raise ForbiddenRedirectError(self.redact(
                    f"{method} {path}: refusing the answer, whose redirect URL does not "
                    f"parse: {exc}")) from None
            try:
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    try:
                        url = self.resolve(location, base=url)
                    except ForbiddenRedirectError as exc:
                        raise ForbiddenRedirectError(
                            f"{method} {path} was redirected ({response.status_code}): {exc}"
                        ) from None
                    params = None  # the Location carries its own query
                    if response.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
                        raise TransportError(
                            f"{method} {path} was redirected with {response.status_code}; "
                            "a redirect would change the method, so it is not followed",
                            status=response.status_code,
                        )
                    continue
                content = self._read(response, method, path, started)
            finally:
                response.close()
            elapsed = self._clock() - started
            self._answered(response.status_code, elapsed)
            body = self._parse(content, response, method, path)
            log.debug("%s %s -> %s in %.1f ms", method, path, response.status_code,
                      elapsed * 1000)
            return Answer(response.status_code, response.headers, body,
                          method, path, elapsed)
        raise TransportError(f"{method} {urlsplit(absolute).path}: too many redirects")

    def _answered(self, status: int | None, seconds: float | None) -> None:
        self.reachable = status is not None
        if self.on_answer is not None:
            self.on_answer(status, seconds)

    def _check_deadline(self, started: float, method: str, path: str,
                        status: int | None) -> None:
        if self._clock() - started > self.deadline:
            raise TransportError(
                f"{method} {path}: no complete answer within the deadline of "
                f"{self.deadline:g} s (Timeout; SyncConfig.deadline)", status=status)

    def _chunks(self, response: requests.Response) -> Iterator[bytes]:
        """The body as it arrives: each chunk is what one read of the socket gave,
        so that the deadline is checked while a server drips its answer."""
        raw = response.raw
        if not isinstance(raw, urllib3.HTTPResponse):  # a custom adapter's response
            yield from response.iter_content(65536)
            return
        while True:
            chunk = raw.read1(65536, decode_content=True)
            if not chunk:
                return
            yield chunk

    def _read(self, response: requests.Response, method: str, path: str,
              started: float) -> bytes:
        cap = self.max_response_bytes
        status = response.status_code
        declared = response.headers.get("Content-Length")
        length: int | None = None
        if declared is not None and declared.isascii() and declared.isdigit():
            length = int(declared)
            if length > cap:
                raise TransportError(
                    f"{method} {path}: response of {declared} bytes exceeds the cap of {cap}",
                    status=status,
                )
            if "Content-Encoding" in response.headers or "Transfer-Encoding" in response.headers:
                length = None  # the bytes read are not the bytes declared
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in self._chunks(response):
                size += len(chunk)
                if size > cap:
                    raise TransportError(
                        f"{method} {path}: response exceeds the cap of {cap} bytes",
                        status=status,
                    )
                chunks.append(chunk)
                self._check_deadline(started, method, path, status)
                if size == length:
                    # The whole declared body, usually in the first read: no
                    # further read to meet its end (the connection is back in
                    # the pool already).
                    break
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransportError(
                self.redact(f"{method} {path}: answer cut short: {type(exc).__name__}: {exc}"),
                status=status,
            ) from None
        return b"".join(chunks)

    def _parse(self, content: bytes, response: requests.Response, method: str, path: str) -> Any:
        if not content.strip():
            return None
        status = response.status_code
        ctype = response.headers.get("Content-Type", "")
        is_json = "json" in ctype.lower()
        try:
            body = json.loads(content, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            if 200 <= status < 300:
                what = "malformed JSON" if is_json else f"a non-JSON body ({ctype or 'no type'})"
                why = ("nested too deeply" if isinstance(exc, RecursionError)
                       else str(exc) if "JSON value" in str(exc) else "")
                raise TransportError(
                    f"{method} {path}: server answered {status} with {what}"
                    + (f" ({why})" if why else ""),
                    status=status,
                ) from None
            return self._excerpt(content)
        if 200 <= status < 300:
            return body
        try:
            return self.redact_value(body)
        except RecursionError:
            return self._excerpt(content)

    def _excerpt(self, content: bytes) -> str:
        """A short, redacted excerpt of an error page, for the record.  Redacted
        first, then cut, so that no secret is cut in two and kept in half."""
        text = content[: _EXCERPT_CHARS + 8192].decode("utf-8", "replace")
        return self.redact(text)[:_EXCERPT_CHARS]

    def close(self) -> None:
        """Close the pooled connections (if this transport created the session)."""
        if self._owns_session:
            self._session.close()
