"""The registry client: resolve, manifests, blobs (ranged, resumable), tags, ping.

Pulls go through the registry's mirrors first (``Config``), each one skipped
when it fails (unreachable, 5xx after retries, 404, a 401 we cannot satisfy),
then the registry itself, whose error is the one reported. A mirror that
does not know a repository at all (``NAME_UNKNOWN``) is not asked about it
again by the same client. Everything a
registry sends is verified against a digest we computed ourselves.

Push (blob HEAD, mount, upload, manifest PUT) belongs in ``upload.py`` and
builds on ``RegistryClient.registry_endpoint``, ``Endpoint.send`` and
``repo_scope``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from ocikit.errors import (
    AuthError,
    NotFoundError,
    OcikitError,
    RegistryError,
    StoreError,
    UnsupportedError,
    VerificationError,
)
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import MAX_MANIFEST_SIZE, Descriptor, ManifestBlob, parse_manifest
from ocikit.oci.digest import Digest
from ocikit.oci.mediatypes import MANIFEST_ACCEPT
from ocikit.oci.reference import DOCKER_HUB, DOCKER_HUB_API, Reference
from ocikit.registry.auth import Authenticator, TokenCache
from ocikit.registry.config import Config, RegistryConfig, normalize_host, split_host_port
from ocikit.registry.credentials import Credential, Credentials
from ocikit.registry.transport import (
    RepositoryUnknownError,
    RetryPolicy,
    Transport,
    UnreachableError,
    describe_connection_error,
    discard,
    http_error,
    read_body,
)

T = TypeVar("T")

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
MAX_TAG_PAGES = 10_000
TAGS_BODY_LIMIT = 16 << 20
CHUNK = 1 << 20
# Connection cuts survived while streaming one blob, in total; a cut that
# made no progress counts against ``RetryPolicy.attempts`` as well.
MAX_CUTS = 25


def repo_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def same_origin(old_url: str, new_url: str) -> bool:
    """May ``new_url`` receive the Authorization meant for ``old_url``?

    Same host and port only; an https -> http downgrade never.
    """
    a, b = urlsplit(old_url), urlsplit(new_url)
    if (a.hostname or "").lower() != (b.hostname or "").lower():
        return False
    if a.scheme == "https" and b.scheme != "https":
        return False
    pa = a.port or _default_port(a.scheme)
    pb = b.port or _default_port(b.scheme)
    # http://host -> https://host on default ports is an upgrade of the same origin
    return pa == pb or (a.scheme == "http" and b.scheme == "https" and not a.port and not b.port)


_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+(?:=(?:\"[^\"]*\"|[^;,]*))?)*)")


def parse_link_next(header: str | None) -> str | None:
    """The target of ``rel="next"`` in an RFC 8288 ``Link`` header, if any."""
    if not header:
        return None
    for m in _LINK_RE.finditer(header):
        for param in m.group(2).split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "rel" and "next" in value.strip().strip('"').split():
                return m.group(1).strip()
    return None


def _schemes(explicit: str, rc: RegistryConfig) -> tuple[str, ...]:
    """The schemes to try for an endpoint, in order.

    Loopback without a ``ca_file``: plain HTTP first (as the registries tests
    and developers start there speak it), HTTPS if that endpoint turns out to
    speak TLS. ``insecure``: HTTPS without verification, then plain HTTP,
    as Docker does for its insecure registries.
    """
    if explicit:
        return (explicit,)
    if rc.insecure:
        return ("https", "http")
    if rc.loopback and rc.ca_file is None:
        return ("http", "https")
    return ("https",)


def _speaks_tls(resp: requests.Response) -> bool:
    """A TLS server's answer to plain HTTP (Go's net/http sends exactly this)."""
    if resp.status_code != 400:
        return False
    try:
        body = read_body(resp, 4096, "probe")
    except OcikitError:
        return False
    return b"HTTPS server" in body


# What registries that predate the OCI and schema2 media types send for a
# manifest: it says nothing, so the body's mediaType (or its fields) decide.
_GENERIC_TYPES = frozenset({"application/json", "application/octet-stream", "text/plain",
                            "binary/octet-stream"})


def _manifest_type(content_type: str) -> str:
    """``Content-Type`` of a manifest answer; "" when it is a generic type."""
    base = content_type.split(";")[0].strip().lower()
    return "" if base in _GENERIC_TYPES else content_type


class _Cut(Exception):
    """The connection broke while streaming a blob; what was written is kept."""


class Endpoint:
    """One host serving the /v2/ API for a registry: the registry itself or a mirror."""

    def __init__(self, host: str, schemes: tuple[str, ...], transport: Transport,
                 auth: Authenticator, *, mirror: bool = False,
                 on_response: Callable[[requests.Response], None] | None = None) -> None:
        self.host = host
        self.schemes = schemes
        self.transport = transport
        self.auth = auth
        self.mirror = mirror
        self._on_response = on_response
        self._index = 0
        self._confirmed = len(schemes) == 1
        # set when a mirror could not be reached: skipped for the rest of the run
        self.dead = False

    @property
    def base_url(self) -> str:
        return f"{self.schemes[self._index]}://{self.host}"

    def close(self) -> None:
        self.transport.close()

    def send(self, method: str, target: str, *, scopes: tuple[str, ...] = (),
             headers: dict[str, str] | None = None, data: bytes | None = None,
             retry: bool = True, follow_redirects: bool = False) -> requests.Response:
        """Send to ``target`` (a path like ``/v2/...`` or a same-origin URL).

        Authorization is added as needed; redirects (when followed) to another
        host go there without it.
        """
        if target.startswith("/"):
            resp, url = self._send_path(method, target, scopes, headers, data, retry)
        else:
            url = target
            resp = self.auth.send(method, url, scopes=scopes, headers=headers, data=data,
                                  retry=retry, connect_retry=not self.mirror)
        if follow_redirects:
            resp = self._follow(resp, method, url, scopes, headers, retry)
        if self._on_response is not None:
            self._on_response(resp)
        return resp

    def _send_path(self, method: str, path: str, scopes: tuple[str, ...],
                   headers: dict[str, str] | None, data: bytes | None,
                   retry: bool) -> tuple[requests.Response, str]:
        first_error: UnreachableError | None = None
        start = self._index
        for idx in range(start, len(self.schemes)):
            probing = not self._confirmed and idx + 1 < len(self.schemes)
            url = f"{self.schemes[idx]}://{self.host}{path}"
            try:
                resp = self.auth.send(method, url, scopes=scopes, headers=headers, data=data,
                                      retry=retry, connect_retry=not (probing or self.mirror))
            except UnreachableError as e:
                # Without a port each scheme has its own (80, 443): any failure may
                # be the wrong one. With a port, only a TLS mismatch says so.
                if probing and (e.tls or e.reset or split_host_port(self.host)[1] is None):
                    first_error = first_error or e
                    continue
                raise (first_error or e) from None
            if probing and self.schemes[idx] == "http" and _speaks_tls(resp):
                continue
            self._index, self._confirmed = idx, True
            return resp, url
        assert first_error is not None
        raise first_error

    def _follow(self, resp: requests.Response, method: str, url: str,
                scopes: tuple[str, ...], headers: dict[str, str] | None,
                retry: bool) -> requests.Response:
        authorized = True
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location")
            if resp.status_code not in REDIRECTS or not location:
                return resp
            new = urljoin(url, location)
            discard(resp)
            if urlsplit(new).scheme not in ("http", "https"):
                raise RegistryError(f"{self.host} redirected to an unsupported URL {new!r}",
                                    registry=self.host)
            authorized = authorized and same_origin(url, new)
            url = new
            if authorized:
                resp = self.auth.send(method, url, scopes=scopes, headers=headers, retry=retry)
            else:
                # Blob storage or a CDN: the registry's credentials stay behind.
                resp = self.transport.request(method, url, headers=headers, retry=retry)
        raise RegistryError(f"{self.host}: too many redirects (last to {url})",
                            registry=self.host)


class RegistryClient:
    """Talks to registries for one process; safe to share between threads.

    ``progress_rate(registry, value)`` is called with each ``ratelimit-remaining``
    header a registry sends (Docker Hub: ``"76;w=21600"``); the last one is
    also kept in ``last_ratelimit``.
    """

    def __init__(self, config: Config | None = None, credentials: Credentials | None = None,
                 progress_rate: Callable[[str, str], None] | None = None, *,
                 policy: RetryPolicy | None = None) -> None:
        self.config = config if config is not None else Config.load()
        self.credentials = credentials if credentials is not None else Credentials.from_env()
        self.progress_rate = progress_rate
        self.policy = policy or RetryPolicy()
        self.last_ratelimit: str | None = None
        self._endpoints: dict[tuple[str, str, bool], Endpoint] = {}
        # (registry, repository) -> mirror hosts that do not have it
        self._lacking: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            eps, self._endpoints = list(self._endpoints.values()), {}
        for ep in eps:
            ep.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints ------------------------------------------------------------

    def _note_response(self, host: str) -> Callable[[requests.Response], None]:
        def note(resp: requests.Response) -> None:
            value = resp.headers.get("ratelimit-remaining")
            if value:
                self.last_ratelimit = value
                if self.progress_rate is not None:
                    self.progress_rate(host, value)
        return note

    def _make_endpoint(self, host: str, scheme: str, *, mirror: bool,
                       credential: Credential | None) -> Endpoint:
        rc = self.config.registry(host)
        verify: bool | Path = True
        if rc.insecure:
            verify = False
        elif rc.ca_file is not None:
            verify = rc.ca_file
        transport = Transport(verify=verify, policy=self.policy)
        auth = Authenticator(transport, host, credential, TokenCache())
        return Endpoint(host, _schemes(scheme, rc), transport, auth, mirror=mirror,
                        on_response=self._note_response(host))

    def _endpoint(self, host: str, scheme: str = "", *, mirror: bool = False) -> Endpoint:
        key = (host, scheme, mirror)
        with self._lock:
            ep = self._endpoints.get(key)
        if ep is not None:
            return ep
        cred = self.credentials.lookup(normalize_host(host))
        made = self._make_endpoint(host, scheme, mirror=mirror, credential=cred)
        with self._lock:
            ep = self._endpoints.setdefault(key, made)
        if ep is not made:
            made.close()
        return ep

    @staticmethod
    def api_host(registry: str) -> str:
        registry = normalize_host(registry)
        return DOCKER_HUB_API if registry == DOCKER_HUB else registry

    def registry_endpoint(self, registry: str) -> Endpoint:
        """The registry's own endpoint (for pushes, which never go to mirrors)."""
        return self._endpoint(self.api_host(registry))

    def pull_endpoints(self, registry: str) -> list[Endpoint]:
        """Mirrors that have not failed to connect, in order, then the registry."""
        rc = self.config.registry(registry)
        out: list[Endpoint] = []
        for m in rc.mirrors:
            ep = self._endpoint(m.host, m.scheme, mirror=True)
            if not ep.dead:
                out.append(ep)
        out.append(self.registry_endpoint(registry))
        return out

    def _each_endpoint(self, ref: Reference, fn: Callable[[Endpoint], T]) -> T:
        """``fn`` on each pull endpoint in turn until one answers; the registry's error decides.

        A mirror that said it does not know ``ref``'s repository at all
        (``NAME_UNKNOWN``) is not asked again about it in this client: every
        manifest and blob request would be one more 404. A mirror that lacks
        only a tag or a blob is still asked for the rest.
        """
        endpoints = self.pull_endpoints(ref.registry)
        repo = (normalize_host(ref.registry), ref.repository)
        with self._lock:
            lacking = self._lacking.get(repo, set())
            mirrors = [ep for ep in endpoints[:-1] if ep.host not in lacking]
        skipped: list[str] = []
        for ep in mirrors:
            try:
                return fn(ep)
            except UnreachableError as e:
                ep.dead = True
                skipped.append(str(e))
            except (RegistryError, NotFoundError) as e:
                # includes AuthError: a mirror that wants what we lack
                if isinstance(e, RepositoryUnknownError):
                    with self._lock:
                        self._lacking.setdefault(repo, set()).add(ep.host)
                skipped.append(f"mirror {ep.host}: {e}")
        try:
            return fn(endpoints[-1])
        except (RegistryError, NotFoundError) as e:
            raise self._with_skipped(e, skipped) from None

    @staticmethod
    def _with_skipped(e: OcikitError, skipped: list[str]) -> OcikitError:
        if skipped and e.args:
            # the registry's error decides; what the mirrors said helps to debug
            e.args = (f"{e.args[0]} (also tried: {'; '.join(skipped)})", *e.args[1:])
        return e

    def error(self, resp: requests.Response, what: str, ep: Endpoint) -> OcikitError:
        return http_error(resp, what, ep.host)

    # -- manifests ---------------------------------------------------------------

    @staticmethod
    def _manifest_path(ref: Reference) -> str:
        return f"/v2/{ref.repository}/manifests/{ref.identifier}"

    def resolve(self, ref: Reference, accept: tuple[str, ...] = MANIFEST_ACCEPT) -> Descriptor:
        """The descriptor ``ref`` points at, by HEAD where the registry says enough.

        A HEAD does not count against Docker Hub's pull quota. Falls back to a
        (verified) GET when the HEAD lacks a digest, type or size.
        """
        what = f"manifest {ref}"
        headers = {"Accept": ", ".join(accept)}

        def head(ep: Endpoint) -> requests.Response:
            resp = ep.send("HEAD", self._manifest_path(ref), scopes=(repo_scope(ref.repository),),
                           headers=headers, follow_redirects=True)
            if resp.status_code != 200:
                if resp.status_code in (404, 401, 403, 429) or ep.mirror:
                    raise self.error(resp, what, ep)
                discard(resp)  # a registry without HEAD support: try GET
                return resp
            discard(resp)
            return resp

        resp = self._each_endpoint(ref, head)
        if resp.status_code == 200:
            desc = self._descriptor_from_head(ref, resp)
            if desc is not None:
                return desc
        return self.get_manifest(ref, accept).descriptor

    @staticmethod
    def _descriptor_from_head(ref: Reference, resp: requests.Response) -> Descriptor | None:
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype in mt.SCHEMA1:
            raise UnsupportedError(f"manifest {ref} is Docker schema 1, "
                                   "which ocikit does not support")
        try:
            size = int(resp.headers.get("Content-Length", ""))
            digest = Digest.parse(resp.headers.get("Docker-Content-Digest", ""))
        except (ValueError, OcikitError):
            return None
        if ctype not in mt.MANIFESTS + mt.INDEXES or size <= 0 or size > MAX_MANIFEST_SIZE:
            return None
        if ref.digest is not None and digest != ref.digest:
            return None  # let the GET verify the body against the pinned digest
        return Descriptor(ctype, digest, size)

    def get_manifest(self, ref: Reference, accept: tuple[str, ...] = MANIFEST_ACCEPT
                     ) -> ManifestBlob:
        """Fetch, verify and parse the manifest or index ``ref`` names."""
        what = f"manifest {ref}"
        headers = {"Accept": ", ".join(accept)}

        def get(ep: Endpoint) -> tuple[bytes, str, str]:
            resp = ep.send("GET", self._manifest_path(ref), scopes=(repo_scope(ref.repository),),
                           headers=headers, follow_redirects=True)
            if resp.status_code != 200:
                raise self.error(resp, what, ep)
            ctype = _manifest_type(resp.headers.get("Content-Type", ""))
            header = resp.headers.get("Docker-Content-Digest", "").strip()
            return read_body(resp, MAX_MANIFEST_SIZE, what), ctype, header

        data, ctype, header = self._each_endpoint(ref, get)
        if ref.digest is not None:
            got = Digest.from_bytes(data, ref.digest.algorithm)
            if got != ref.digest:
                raise VerificationError(f"{what}: digest mismatch (the registry sent {got})")
        if header:
            try:
                claimed = Digest.parse(header)
            except OcikitError:
                raise VerificationError(
                    f"{what}: the registry sent an invalid Docker-Content-Digest {header!r}"
                ) from None
            got = Digest.from_bytes(data, claimed.algorithm)
            if got != claimed:
                raise VerificationError(
                    f"{what}: body hashes to {got} but the registry says {claimed}")
        return parse_manifest(data, ctype, what=what)

    # -- blobs ---------------------------------------------------------------------

    @staticmethod
    def _blob_path(ref: Reference, digest: Digest) -> str:
        return f"/v2/{ref.repository}/blobs/{digest}"

    def get_blob_bytes(self, ref: Reference, desc: Descriptor, limit: int = 16 << 20) -> bytes:
        """A small blob (a config) in memory, size and digest verified."""
        what = f"blob {desc.digest}"
        if desc.size > limit:
            raise VerificationError(f"{what} is larger than {limit} bytes ({desc.size})")

        def get(ep: Endpoint) -> bytes:
            resp = ep.send("GET", self._blob_path(ref, desc.digest),
                           scopes=(repo_scope(ref.repository),),
                           headers={"Accept-Encoding": "identity"}, follow_redirects=True)
            if resp.status_code != 200:
                raise self.error(resp, f"{what} of {ref.name}", ep)
            return read_body(resp, desc.size, what)

        data = self._each_endpoint(ref, get)
        if len(data) != desc.size:
            raise VerificationError(
                f"{what}: size mismatch (expected {desc.size} bytes, got {len(data)})")
        got = Digest.from_bytes(data, desc.digest.algorithm)
        if got != desc.digest:
            raise VerificationError(f"{what}: digest mismatch (got {got})")
        return data

    def fetch_blob(self, ref: Reference, desc: Descriptor, partial: Path,
                   progress: Callable[[int], None] | None = None) -> None:
        """Download a blob into ``partial``, resuming what an earlier try left there.

        On return ``partial`` holds exactly the blob. A digest or size mismatch
        deletes it and raises ``VerificationError``; a network failure that
        outlasts the retries keeps it (the next call resumes) and raises
        ``RegistryError``.

        ``progress(n)`` is told every change of the size of ``partial`` as a
        delta from the size it had when the call began: bytes just written,
        or a negative number when a server makes us start over (the counter
        the caller keeps, started at the resumed size, then stays right). An
        exception raised by ``progress`` aborts the download, keeping the file.
        """
        digest = desc.digest
        etag_file = partial.with_name(partial.name + ".etag")
        reported = [_file_size(partial)]

        def report(now: int) -> None:
            if progress is not None and now != reported[0]:
                delta, reported[0] = now - reported[0], now
                progress(delta)

        stalled = cuts = 0
        while True:
            have = _file_size(partial)
            if have > desc.size:
                _unlink(partial)
                have = 0
            report(have)
            hasher = _hash_prefix(partial, digest, have)
            if have == desc.size:
                if have == 0:
                    _touch(partial)  # an empty blob is still a file to adopt
                self._finish(partial, etag_file, desc, hasher)
                return
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
                etag = _read_etag(etag_file)
                if etag:
                    headers["If-Range"] = etag

            def attempt(ep: Endpoint, have: int = have, hasher: hashlib._Hash = hasher,
                        headers: dict[str, str] = headers) -> hashlib._Hash:
                return self._stream_blob(ep, ref, desc, partial, etag_file, have, hasher,
                                         headers, report)

            try:
                hasher = self._each_endpoint(ref, attempt)
            except _Cut as cut:
                now = _file_size(partial)
                report(now)
                cuts += 1
                stalled = 0 if now > have else stalled + 1
                if stalled >= max(1, self.policy.attempts) or cuts >= MAX_CUTS:
                    raise RegistryError(
                        f"download of blob {digest} from {ref.registry} failed: {cut}; "
                        f"{now} of {desc.size} bytes kept for the next try",
                        registry=ref.registry) from None
                time.sleep(self.policy.delay(stalled))
                continue
            if _file_size(partial) < desc.size:
                cuts += 1
                if cuts >= MAX_CUTS:
                    raise RegistryError(f"download of blob {digest} from {ref.registry} keeps "
                                        "ending early", registry=ref.registry)
                continue  # a clean EOF before the end: resume as after a cut
            self._finish(partial, etag_file, desc, hasher)
            return

    @staticmethod
    def _finish(partial: Path, etag_file: Path, desc: Descriptor, hasher: hashlib._Hash) -> None:
        got = Digest(desc.digest.algorithm, hasher.hexdigest())
        size = _file_size(partial)
        _unlink(etag_file)
        if size != desc.size or got != desc.digest:
            _unlink(partial)
            detail = (f"size mismatch (expected {desc.size} bytes, got {size})"
                      if size != desc.size else f"digest mismatch (got {got})")
            raise VerificationError(f"blob {desc.digest}: {detail}")

    def _stream_blob(self, ep: Endpoint, ref: Reference, desc: Descriptor, partial: Path,
                     etag_file: Path, have: int, hasher: hashlib._Hash,
                     headers: dict[str, str], report: Callable[[int], None]) -> hashlib._Hash:
        """One GET of the blob appended (206) or written afresh (200); returns the hasher."""
        what = f"blob {desc.digest}"
        resp = ep.send("GET", self._blob_path(ref, desc.digest),
                       scopes=(repo_scope(ref.repository),), headers=headers,
                       follow_redirects=True)
        status = resp.status_code
        if status == 206 and have:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                discard(resp)
                _unlink(partial)
                report(0)
                raise _Cut(f"the server sent a range starting at {start}, not {have}")
            mode = "ab"
        elif status == 200:
            mode, have = "wb", 0
            hasher = desc.digest.hasher()
            etag = resp.headers.get("ETag", "").strip()
            if etag and not etag.startswith("W/"):
                with contextlib.suppress(OSError):
                    etag_file.write_text(etag)
            else:
                _unlink(etag_file)
        elif status == 416 and have:
            discard(resp)
            _unlink(partial)
            report(0)
            raise _Cut("the server refused to resume (416)")
        else:
            raise self.error(resp, f"{what} of {ref.name}", ep)
        count = have
        try:
            with partial.open(mode) as f:
                report(count)
                while True:
                    try:
                        chunk = resp.raw.read(CHUNK, decode_content=False)
                    except (urllib3.exceptions.HTTPError, OSError) as e:
                        raise _Cut(describe_connection_error(e)) from None
                    if not chunk:
                        break
                    if count + len(chunk) > desc.size:
                        f.close()
                        _unlink(partial)
                        _unlink(etag_file)
                        report(0)
                        raise VerificationError(
                            f"{what}: size mismatch (more than the {desc.size} bytes expected)")
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise _write_error(partial, e) from None
                    hasher.update(chunk)
                    count += len(chunk)
                    report(count)
        except OSError as e:
            raise _write_error(partial, e) from None
        finally:
            resp.close()
        return hasher

    # -- tags, ping -----------------------------------------------------------------

    def list_tags(self, ref: Reference) -> list[str]:
        """Every tag of ``ref``'s repository, following ``Link`` pagination."""
        what = f"tags of {ref.name}"

        def tags(ep: Endpoint) -> list[str]:
            out: list[str] = []
            target = f"/v2/{ref.repository}/tags/list"
            seen: set[str] = set()
            for _ in range(MAX_TAG_PAGES):
                resp = ep.send("GET", target, scopes=(repo_scope(ref.repository),),
                               headers={"Accept": "application/json"})
                if resp.status_code != 200:
                    raise self.error(resp, what, ep)
                url = resp.url
                link = resp.headers.get("Link")
                body = read_body(resp, TAGS_BODY_LIMIT, what)
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                if not isinstance(doc, dict) or not isinstance(doc.get("tags") or [], list):
                    raise RegistryError(f"{ep.host}: invalid tag list for {ref.name}",
                                        registry=ep.host)
                out.extend(str(t) for t in doc.get("tags") or [])
                nxt = parse_link_next(link)
                if not nxt:
                    return out
                target = urljoin(url, nxt)
                if not same_origin(url, target):
                    raise RegistryError(f"{ep.host}: tag list pagination leads to another "
                                        f"host ({target})", registry=ep.host)
                if target in seen:
                    raise RegistryError(f"{ep.host}: tag list pagination loops at {target}",
                                        registry=ep.host)
                seen.add(target)
            raise RegistryError(f"{ep.host}: more than {MAX_TAG_PAGES} pages of tags",
                                registry=ep.host)

        return self._each_endpoint(ref, tags)

    def ping(self, host: str, credential: Credential | None = None) -> None:
        """Check ``host`` serves the registry API and accepts our credentials.

        With ``credential`` (``login``) those are checked instead of the
        configured ones: for a token registry by fetching a token with them.
        """
        api = self.api_host(host)
        ep = (self._make_endpoint(api, "", mirror=False, credential=credential)
              if credential is not None else self._endpoint(api))
        try:
            resp = ep.send("GET", "/v2/", follow_redirects=True)
            if resp.status_code == 200:
                discard(resp)
                return
            if resp.status_code == 404:
                discard(resp)
                raise RegistryError(f"{api} does not serve the registry API (/v2/ not found)",
                                    registry=api, status=404)
            err = self.error(resp, "login", ep)
            if isinstance(err, AuthError) and credential is None and ep.auth.credential is None:
                raise AuthError(f"unauthorized: {api} requires credentials (log in first)",
                                registry=api, status=resp.status_code)
            raise err
        finally:
            if credential is not None:
                ep.close()


# -- file helpers ---------------------------------------------------------------------

def _write_error(partial: Path, e: OSError) -> StoreError:
    msg = f"cannot write {partial}: {e.strerror or e}"
    if e.errno == errno.ENOSPC:
        # The part already written stays for the next pull to resume.
        msg += " (the partial download is kept to resume; `ocikit gc` removes it)"
    return StoreError(msg)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None


def _hash_prefix(path: Path, digest: Digest, size: int) -> hashlib._Hash:
    """A hasher fed the first ``size`` bytes of ``path`` (a resumed download)."""
    h = digest.hasher()
    if size <= 0:
        return h
    left = size
    try:
        with path.open("rb") as f:
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
    return h


def _read_etag(path: Path) -> str:
    try:
        etag = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return etag if etag and not etag.startswith("W/") and len(etag) < 1024 else ""


def _content_range_start(value: str) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value)
    return int(m.group(1)) if m else None
