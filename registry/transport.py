"""One configured HTTP session per registry endpoint: TLS, timeouts, retries.

- ``trust_env`` is off: no ``.netrc`` credentials, no proxy variables and no
  ``REQUESTS_CA_BUNDLE`` picked up behind the user's back.
- Cookies are refused, as Docker's Go client keeps no cookie jar.
- A ``ca_file`` is added to certifi's bundle (``verify=path`` would replace
  the bundle, so a CDN redirect from a private registry would fail): the
  two are concatenated into a private temporary file removed at exit.
- Connection errors, 5xx and 429 are retried with exponential backoff and
  jitter; ``Retry-After`` (seconds or an HTTP date) is honoured up to a cap,
  beyond which the answer is returned at once (waiting hours helps no one).
  So is a 429 for a used-up pull quota (Docker Hub: ``TOOMANYREQUESTS`` in a
  JSON body, or ``ratelimit-remaining: 0``, and no ``Retry-After``): its
  window is hours long, while Hub's plain-text 429 of its overall request
  limit is worth the short retries.
- Every response is streamed; bodies are read with a bound (``read_body``).
- Redirects are not followed here: the client follows them itself so that
  the registry's ``Authorization`` never reaches another host.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import http.cookiejar
import json
import os
import random
import re
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import requests
import requests.adapters
import urllib3.exceptions

from ocikit import __version__
from ocikit.errors import (
    AuthError,
    NotFoundError,
    OcikitError,
    RegistryError,
    UsageError,
    VerificationError,
)

USER_AGENT = f"ocikit/{__version__}"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ERROR_BODY_LIMIT = 64 << 10
_INSUFFICIENT_SCOPE = re.compile(r'(?:^|[\s,])error\s*=\s*"?insufficient_scope"?', re.I)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` tries per request, waits doubling from ``backoff``."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0

    def delay(self, retry: int) -> float:
        """Wait before retry number ``retry`` (0-based), with jitter against herds."""
        base = min(self.max_backoff, self.backoff * (2 ** retry))
        return base * random.uniform(0.5, 1.0)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class UnreachableError(RegistryError):
    """No HTTP answer at all: refused, reset, DNS, timeout or a TLS failure."""

    def __init__(self, message: str, *, registry: str = "", tls: bool = False,
                 reset: bool = False) -> None:
        super().__init__(message, registry=registry)
        self.tls = tls
        # the peer closed or reset the connection (what a TLS server does to
        # plain HTTP, or a plain server to a TLS hello)
        self.reset = reset


class RepositoryUnknownError(NotFoundError):
    """A 404 saying the registry does not know the repository at all (``NAME_UNKNOWN``)."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen) or len(seen) > 20:
            continue
        seen.append(e)
        todo.extend([e.__cause__, e.__context__])
        if isinstance(e, urllib3.exceptions.MaxRetryError):
            todo.append(e.reason)
        todo.extend(a for a in e.args if isinstance(a, BaseException))
    return seen


def describe_connection_error(exc: BaseException) -> str:
    """A short reason ("connection refused", "timed out", ...) for a failed request."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror | urllib3.exceptions.NameResolutionError):
            return "name does not resolve"
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({e.verify_message or e.reason})"
        if isinstance(e, ssl.SSLError):
            return f"TLS error ({e.reason or e})"
    for e in chain:
        if isinstance(e, requests.Timeout | TimeoutError | socket.timeout
                      | urllib3.exceptions.TimeoutError):
            return "timed out"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, urllib3.exceptions.ProtocolError | ConnectionAbortedError
                      | BrokenPipeError):
            return "connection closed unexpectedly"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _is_tls_error(exc: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLError | requests.exceptions.SSLError) for e in _chain(exc))


def _is_reset(exc: BaseException) -> bool:
    return any(isinstance(e, ConnectionResetError | ConnectionAbortedError
                          | urllib3.exceptions.ProtocolError | ssl.SSLEOFError)
               for e in _chain(exc))


# --- CA bundles ------------------------------------------------------------

_bundle_lock = threading.Lock()
_bundles: dict[tuple[str, int, int], str] = {}


def _remove_bundles() -> None:
    for path in _bundles.values():
        with contextlib.suppress(OSError):
            os.unlink(path)


atexit.register(_remove_bundles)


def ca_bundle(ca_file: Path) -> str:
    """A file holding certifi's CAs plus ``ca_file``'s, made once per process."""
    try:
        st = ca_file.stat()
        extra = ca_file.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read ca_file {ca_file}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise UsageError(f"ca_file {ca_file} holds no PEM certificate")
    key = (str(ca_file), st.st_mtime_ns, st.st_size)
    with _bundle_lock:
        path = _bundles.get(key)
        if path is not None and os.path.exists(path):
            return path
        with open(certifi.where(), "rb") as f:
            base = f.read()
        fd, path = tempfile.mkstemp(prefix="ocikit-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as out:
            out.write(base.rstrip(b"\n") + b"\n" + extra.rstrip(b"\n") + b"\n")
        _bundles[key] = path
        return path


# --- the session -------------------------------------------------------------

class Transport:
    """A ``requests.Session`` configured once for one endpoint, with retries.

    ``verify`` is True (certifi), False (an insecure registry) or a CA file to
    add to certifi's. Safe to share between threads for requests.
    """

    def __init__(self, *, verify: bool | Path = True, policy: RetryPolicy | None = None,
                 user_agent: str = USER_AGENT, pool_size: int = 16,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        s = requests.Session()
        s.trust_env = False
        s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        s.headers["User-Agent"] = user_agent
        if isinstance(verify, Path):
            s.verify = ca_bundle(verify)
        else:
            s.verify = verify
            if not verify:
                # the user asked for it in the config; don't nag on every request
                warnings.filterwarnings(
                    "ignore", category=urllib3.exceptions.InsecureRequestWarning)
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size,
                                                max_retries=0)
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        self.session = s

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                data: bytes | None = None, retry: bool = True,
                connect_retry: bool = True) -> requests.Response:
        """Send one request, streaming; retries transient failures.

        Returns the last response even when its status is an error (the
        caller names what failed); raises ``UnreachableError`` when no answer
        came. ``connect_retry=False`` gives up on the first connection error
        (mirrors are skipped rather than waited for).
        """
        host = urlsplit(url).netloc
        attempts = max(1, self.policy.attempts) if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = self.session.request(method, url, headers=dict(headers or {}), data=data,
                                            stream=True, allow_redirects=False,
                                            timeout=self.policy.timeout)
            except requests.RequestException as e:
                tls = _is_tls_error(e)
                if last or tls or not connect_retry:
                    hint = ""
                    if isinstance(e, requests.exceptions.SSLError) and self.session.verify:
                        hint = " (give its CA as ca_file in the config, or set insecure)"
                    raise UnreachableError(
                        f"cannot reach registry {host}: {describe_connection_error(e)}{hint}",
                        registry=host, tls=tls, reset=_is_reset(e)) from None
                self._sleep(self.policy.delay(attempt))
                continue
            if resp.status_code not in RETRY_STATUSES or last:
                return resp
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            if wait is not None and wait > self.policy.max_retry_after:
                return resp
            if resp.status_code == 429 and wait is None and quota_exhausted(resp):
                return resp
            discard(resp)
            self._sleep(wait if wait is not None else self.policy.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


# A body read ahead of the caller (to look at a 429) waits here for read_body.
_PEEKED = "_ocikit_peeked_body"


def quota_exhausted(resp: requests.Response) -> bool:
    """Whether a 429 says a pull quota is used up, rather than "slow down".

    Reads (and keeps, for ``read_body``) at most ``ERROR_BODY_LIMIT`` bytes.
    """
    remaining = resp.headers.get("ratelimit-remaining", "")
    if remaining.split(";")[0].strip() == "0":
        return True
    if resp.request.method == "HEAD":
        return False
    body = read_body(resp, ERROR_BODY_LIMIT, "error body", truncate=True)
    setattr(resp, _PEEKED, body)
    return _error_codes(body) & {"TOOMANYREQUESTS"} != set()


def _error_codes(body: bytes) -> set[str]:
    """The upper-cased ``code`` of each error in distribution's JSON error body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return set()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return set()
    return {str(e.get("code", "")).upper() for e in errors if isinstance(e, dict)}


def discard(resp: requests.Response) -> None:
    """Let go of a response we do not read (its connection is dropped, not reused)."""
    with contextlib.suppress(Exception):
        resp.close()


def read_body(resp: requests.Response, limit: int, what: str, *,
              truncate: bool = False) -> bytes:
    """The whole (decoded) body, refusing more than ``limit`` bytes.

    ``truncate``: the first ``limit`` bytes instead of an error (error bodies).
    """
    peeked: bytes | None = getattr(resp, _PEEKED, None)
    if peeked is not None:
        if len(peeked) > limit and not truncate:
            raise VerificationError(f"{what} is larger than {limit} bytes")
        return peeked[:limit]
    try:
        declared = int(resp.headers.get("Content-Length", "-1"))
    except ValueError:
        declared = -1
    if declared > limit and not truncate:
        discard(resp)
        raise VerificationError(f"{what} is larger than {limit} bytes ({declared} declared)")
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = resp.raw.read(min(1 << 20, limit + 1 - total), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                if truncate:
                    return b"".join(chunks)[:limit]
                raise VerificationError(f"{what} is larger than {limit} bytes")
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise RegistryError(f"reading {what} from {urlsplit(resp.url).netloc} failed: "
                            f"{describe_connection_error(e)}",
                            registry=urlsplit(resp.url).netloc) from None
    finally:
        resp.close()
    return b"".join(chunks)


def error_summary(resp: requests.Response, body: bytes) -> str:
    """One line from an error body: distribution's JSON errors, or plain text."""
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            errors = doc.get("errors")
            if isinstance(errors, list) and errors:
                parts = []
                for err in errors[:3]:
                    if isinstance(err, dict):
                        code = str(err.get("code") or "").strip()
                        msg = str(err.get("message") or "").strip()
                        parts.append(f"{code}: {msg}" if code and msg else code or msg)
                return "; ".join(p for p in parts if p)[:300]
            for k in ("message", "error", "details", "detail"):
                if isinstance(doc.get(k), str) and doc[k].strip():
                    return str(doc[k]).strip().splitlines()[0][:300]
    ctype = resp.headers.get("Content-Type", "")
    if text and "html" not in ctype and not text.lstrip().startswith("<"):
        return " ".join(text.split())[:300]
    return resp.reason or ""


def http_error(resp: requests.Response, what: str, registry: str) -> OcikitError:
    """The exception for an error answer about ``what`` from ``registry``."""
    try:
        body = b"" if resp.request.method == "HEAD" else read_body(
            resp, ERROR_BODY_LIMIT, "error body", truncate=True)
    except OcikitError:
        body = b""
    status = resp.status_code
    summary = error_summary(resp, body) or resp.reason or f"HTTP {status}"
    if status == 401 and _INSUFFICIENT_SCOPE.search(resp.headers.get("WWW-Authenticate", "")):
        # The token was good but does not cover the repository: Docker Hub's
        # answer for a private repository and for one that does not exist.
        return AuthError(f"unauthorized: {what} on {registry}: requested access to the "
                         f"resource is denied (the repository does not exist, or it is "
                         f"private and needs credentials that may pull it: ocikit login)",
                         registry=registry, status=status)
    if status == 401:
        return AuthError(f"unauthorized: {what} on {registry}: {summary} "
                         f"(wrong credentials, or log in first)", registry=registry, status=status)
    if status == 403:
        return AuthError(f"denied: {what} on {registry}: {summary}",
                         registry=registry, status=status)
    if status == 404:
        if "NAME_UNKNOWN" in _error_codes(body):
            return RepositoryUnknownError(f"{what}: not found on {registry} ({summary})")
        return NotFoundError(f"{what}: not found on {registry} ({summary})")
    if status == 429:
        after = resp.headers.get("Retry-After")
        hint = f"; retry after {after.strip()}" if after else ""
        return RegistryError(f"rate limited by {registry}: {what} (HTTP 429: {summary}){hint}",
                             registry=registry, status=status)
    return RegistryError(f"{registry}: {what} failed: HTTP {status} ({summary})",
                         registry=registry, status=status)
