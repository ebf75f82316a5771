"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens, Basic.

The flow is distribution's token spec (docs/spec/auth/token.md and oauth.md):
a request answered 401 carries a challenge; for ``Bearer`` we ask its
``realm`` for a token (GET with Basic credentials, or an OAuth2
``refresh_token`` POST for an identity token, or anonymously), and send the
request again once. After the first challenge the scheme and realm of the
endpoint are known, so later requests carry a token from the start (one
round trip instead of two for every blob of a pull).

Anonymous requests carry no ``Authorization`` header at all: public ECR
rejects ``Bearer None`` and some registries treat an empty Basic as a login.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlencode, urlsplit

import requests

from ocikit.errors import AuthError, OcikitError, RegistryError
from ocikit.registry.credentials import Credential
from ocikit.registry.transport import Transport, discard, error_summary, read_body

DEFAULT_EXPIRES_IN = 60
_TOKEN_BODY_LIMIT = 1 << 20
# Renew a token this long before it expires, so it does not lapse in flight.
_EXPIRY_MARGIN = 10.0
CLIENT_ID = "ocikit"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        """The ``scope`` parameter: space-separated scopes (each may contain commas)."""
        return tuple(s for s in self.params.get("scope", "").split(" ") if s)

    def without_scope(self) -> Challenge:
        return Challenge(self.scheme, MappingProxyType(
            {k: v for k, v in self.params.items() if k not in ("scope", "error")}))


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _token(text: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] not in ' \t,="':
        j += 1
    return text[i:j], j


def _quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted-string starting at text[i] == '"'; backslash escapes a character."""
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i  # unterminated: take what there is


def parse_www_authenticate(header: str) -> list[Challenge]:
    """All challenges in a ``WWW-Authenticate`` value (RFC 7235 auth-params).

    Commas inside quoted values (``scope="repository:a:pull,push"``) belong to
    the value; several challenges may share one header (``Basic realm="x",
    Bearer realm="y"``), as requests joins repeated headers with ", ".
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    i = 0
    while i < len(header):
        i = _skip(header, i, " \t,")
        if i >= len(header):
            break
        name, j = _token(header, i)
        if not name:  # a stray quote or '='; skip one character
            i += 1
            continue
        k = _skip(header, j, " \t")
        if k < len(header) and header[k] == "=" and challenges:
            k = _skip(header, k + 1, " \t")
            if k < len(header) and header[k] == '"':
                value, i = _quoted(header, k)
            else:
                value, i = _token(header, k)
                # token68 padding such as "abc==" is not a parameter; ignore it
                i = _skip(header, i, "=")
            challenges[-1][1][name.lower()] = value
        else:
            challenges.append((name.lower(), {}))
            i = j
    return [Challenge(s, MappingProxyType(p)) for s, p in challenges]


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens per (realm, service, scope set); thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, frozenset[str]], Token] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(realm: str, service: str, scopes: Iterable[str]
            ) -> tuple[str, str, frozenset[str]]:
        return (realm, service, frozenset(scopes))

    def get(self, key: tuple[str, str, frozenset[str]]) -> str | None:
        with self._lock:
            tok = self._tokens.get(key)
            if tok is None:
                return None
            if tok.expires_at - _EXPIRY_MARGIN <= self._clock():
                del self._tokens[key]
                return None
            return tok.value

    def put(self, key: tuple[str, str, frozenset[str]], value: str, expires_in: float) -> None:
        with self._lock:
            self._tokens[key] = Token(value, self._clock() + expires_in)

    def drop(self, key: tuple[str, str, frozenset[str]], value: str) -> None:
        """Forget a token the registry refused (unless another thread renewed it)."""
        with self._lock:
            tok = self._tokens.get(key)
            if tok is not None and tok.value == value:
                del self._tokens[key]


class Authenticator:
    """Authorization for one registry endpoint: knows its challenge, caches tokens."""

    def __init__(self, transport: Transport, host: str, credential: Credential | None = None,
                 tokens: TokenCache | None = None) -> None:
        self.transport = transport
        self.host = host
        self.credential = credential if credential is not None and not credential.empty else None
        self.tokens = tokens or TokenCache()
        self._challenge: Challenge | None = None
        self._fetch_lock = threading.Lock()

    # -- public ------------------------------------------------------------

    def send(self, method: str, url: str, *, scopes: tuple[str, ...] = (),
             headers: Mapping[str, str] | None = None, data: bytes | None = None,
             retry: bool = True, connect_retry: bool = True) -> requests.Response:
        """Send with whatever authorization the endpoint needs; re-challenge once on 401."""
        hdrs = dict(headers or {})
        sent = self.authorization(scopes)
        if sent is not None:
            hdrs["Authorization"] = sent
        resp = self.transport.request(method, url, headers=hdrs, data=data, retry=retry,
                                      connect_retry=connect_retry)
        if resp.status_code != 401:
            return resp
        fresh = self.on_unauthorized(resp, scopes, sent)
        if fresh is None:
            return resp
        discard(resp)
        hdrs["Authorization"] = fresh
        return self.transport.request(method, url, headers=hdrs, data=data, retry=retry,
                                      connect_retry=connect_retry)

    def authorization(self, scopes: tuple[str, ...]) -> str | None:
        """The header value to send before any challenge of this request, if known."""
        ch = self._challenge
        if ch is None:
            return None
        return self._header_for(ch, scopes)

    def on_unauthorized(self, resp: requests.Response, scopes: tuple[str, ...],
                        sent: str | None) -> str | None:
        """After a 401: learn the challenge, renew, and return a header to retry with.

        None when a retry cannot help (no usable challenge, Basic without
        credentials, or the credentials we sent were the ones refused).
        """
        chals = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
        ch = next((c for c in chals if c.scheme == "bearer" and c.realm), None)
        if ch is None:
            ch = next((c for c in chals if c.scheme == "basic"), None)
        if ch is None:
            return None
        self._challenge = ch.without_scope()
        if ch.scheme == "basic":
            fresh = self._header_for(ch, scopes)
            return None if fresh is None or fresh == sent else fresh
        want = tuple(dict.fromkeys((*scopes, *ch.scopes)))
        refused = sent[7:] if sent is not None and sent.startswith("Bearer ") else None
        if refused is not None:
            self.tokens.drop(TokenCache.key(ch.realm, ch.service, want), refused)
            self.tokens.drop(TokenCache.key(ch.realm, ch.service, scopes), refused)
        fresh = self._header_for(ch, want, refused=refused)
        return None if fresh == sent else fresh

    # -- internals ----------------------------------------------------------

    def _header_for(self, ch: Challenge, scopes: tuple[str, ...], *,
                    refused: str | None = None) -> str | None:
        cred = self.credential
        if ch.scheme == "basic":
            if cred is None or not cred.username:
                return None
            return basic_header(cred.username, cred.password)
        if ch.scheme != "bearer":
            return None
        key = TokenCache.key(ch.realm, ch.service, scopes)
        cached = self.tokens.get(key)
        if cached is not None and cached != refused:
            return f"Bearer {cached}"
        with self._fetch_lock:
            # another thread may have fetched (or renewed) it while we waited
            cached = self.tokens.get(key)
            if cached is not None and cached != refused:
                return f"Bearer {cached}"
            token, expires_in = self.fetch_token(ch, scopes)
            if not token:
                return None
            self.tokens.put(key, token, expires_in)
            return f"Bearer {token}"

    def fetch_token(self, ch: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        """Ask the challenge's realm for a token: (token, seconds it lives)."""
        realm = ch.realm
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"registry {self.host} sent an invalid token realm {realm!r}",
                            registry=self.host)
        cred = self.credential
        what = " ".join(scopes) or "login"
        query: list[tuple[str, str]] = []
        if ch.service:
            query.append(("service", ch.service))
        headers: dict[str, str] = {}
        if cred is not None and cred.identity_token:
            form = [("grant_type", "refresh_token"), ("refresh_token", cred.identity_token),
                    ("client_id", CLIENT_ID), *query]
            if scopes:
                form.append(("scope", " ".join(scopes)))
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = self.transport.request("POST", realm, headers=headers,
                                          data=urlencode(form).encode())
        else:
            query.extend(("scope", s) for s in scopes)
            if cred is not None and cred.username:
                query.append(("account", cred.username))
                headers["Authorization"] = basic_header(cred.username, cred.password)
            sep = "&" if parts.query else "?"
            url = realm + (sep + urlencode(query) if query else "")
            resp = self.transport.request("GET", url, headers=headers)
        auth_host = parts.netloc
        if resp.status_code != 200:
            try:
                body = read_body(resp, 64 << 10, "token error")
            except OcikitError:
                body = b""
            summary = error_summary(resp, body) or f"HTTP {resp.status_code}"
            if resp.status_code in (400, 401, 403):
                who = "credentials" if cred is not None else "anonymous access"
                raise AuthError(f"unauthorized: token server {auth_host} refused {who} "
                                f"for {what} on {self.host}: {summary}",
                                registry=self.host, status=resp.status_code)
            raise RegistryError(f"token server {auth_host} failed for {self.host}: "
                                f"HTTP {resp.status_code} ({summary})",
                                registry=self.host, status=resp.status_code)
        body = read_body(resp, _TOKEN_BODY_LIMIT, f"token from {auth_host}")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise AuthError(f"token server {auth_host} sent an invalid answer for {self.host}",
                            registry=self.host)
        token = doc.get("token") or doc.get("access_token") or ""
        if not isinstance(token, str):
            raise AuthError(f"token server {auth_host} sent an invalid token for {self.host}",
                            registry=self.host)
        expires = doc.get("expires_in")
        if not isinstance(expires, int | float) or isinstance(expires, bool) or expires <= 0:
            expires = DEFAULT_EXPIRES_IN
        return token, float(expires)
