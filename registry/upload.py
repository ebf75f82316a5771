"""Writing to a registry: blob checks, cross-repository mounts, uploads, manifests, referrers.

The flow is the distribution spec's (spec.md, "Pushing blobs" and "Pushing
Manifests"):

- ``HEAD /v2/<name>/blobs/<digest>``: 200 means the repository has it.
- ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>``: 201 means
  mounted without sending a byte; 202 opens an ordinary upload session
  instead, which we then use.
- Small blobs: ``POST`` opens a session, one ``PUT <location>?digest=`` with
  the body closes it. Large blobs: ``PATCH`` chunks with ``Content-Range``,
  each time following the ``Location`` the registry returns (absolute or
  relative), then an empty ``PUT ?digest=``.
- A chunk that fails is not blindly resent: ``GET <location>`` answers
  ``204`` with the ``Range`` the registry holds, and we go on from there.
  A session the registry no longer knows (distribution cancels one whose
  state does not match what it stored) is started again from zero.
- Manifests go up byte for byte with their own media type, so their digest
  is the one the caller computed; the registry's ``Docker-Content-Digest``
  is checked against it.
- Referrers: ``GET /v2/<name>/referrers/<digest>`` where the registry has the
  API, else the ``sha256-<hex>`` fallback tag (an OCI index) that a pusher
  keeps up to date when the registry does not answer ``OCI-Subject``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests

from ocikit.errors import AuthError, OcikitError, RegistryError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import MAX_MANIFEST_SIZE, Descriptor, Index, parse_manifest
from ocikit.oci.digest import Digest, sha256_of
from ocikit.oci.reference import Reference
from ocikit.registry.client import Endpoint, RegistryClient, repo_scope, same_origin
from ocikit.registry.transport import UnreachableError, discard, read_body

# Blobs up to this size go up in one PUT; larger ones in PATCH chunks of it.
DEFAULT_CHUNK_SIZE = 32 << 20
MIN_CHUNK_SIZE = 64 << 10
# Failed chunks survived per upload session, and sessions started per blob.
MAX_RESUMES = 8
MAX_SESSIONS = 3
RETRYABLE = frozenset({408, 416, 429, 500, 502, 503, 504})
OCI_SUBJECT = "OCI-Subject"


class BlobReader(Protocol):
    """What an upload reads a blob from (a file, or a registry's response)."""

    def read(self, n: int, /) -> bytes: ...

    def close(self) -> None: ...


# Opens the blob's bytes at an offset; the upload reopens it after a failure.
BlobOpener = Callable[[int], BlobReader]


class SourceReadError(RegistryError):
    """Reading the source of an upload failed in a way a reopen may cure."""


class _Restart(Exception):
    """The upload session is lost: start a new one from byte zero."""


@dataclass(frozen=True)
class PushedManifest:
    digest: Digest
    # the registry handled the subject itself (the referrers API), so no
    # fallback tag needs updating
    subject_handled: bool


def referrers_tag(digest: Digest) -> str:
    """The fallback tag of the referrers of ``digest`` (``sha256-<hex>``)."""
    return f"{digest.algorithm}-{digest.hex}"


def _content_range_end(value: str | None) -> int | None:
    """``0-1023`` (or ``bytes=0-1023``) -> 1023; None when absent or malformed."""
    if not value:
        return None
    m = re.match(r"\s*(?:bytes[ =])?\s*(\d+)-(\d+)\s*$", value)
    return int(m.group(2)) if m else None


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` appended to whatever query it already has."""
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def read_exactly(reader: BlobReader, n: int) -> bytes:
    """``n`` bytes, fewer only at EOF."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        piece = reader.read(min(left, 4 << 20))
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Uploader:
    """Pushes blobs and manifests into one repository; safe to share between threads."""

    def __init__(self, client: RegistryClient, ref: Reference, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.ref = ref
        self.repo = ref.repository
        self.host = ref.registry
        self.chunk_size = max(MIN_CHUNK_SIZE, chunk_size)
        self.scopes = (repo_scope(self.repo, "pull,push"),)
        self._sleep = sleep

    @property
    def ep(self) -> Endpoint:
        return self.client.registry_endpoint(self.host)

    # -- requests ---------------------------------------------------------------

    def _send(self, method: str, target: str, *, scopes: tuple[str, ...] | None = None,
              headers: dict[str, str] | None = None, data: bytes | None = None,
              retry: bool = True, follow_redirects: bool = False) -> requests.Response:
        """A path, or a URL from a ``Location``: our credentials go only to our registry."""
        ep = self.ep
        scopes = self.scopes if scopes is None else scopes
        if target.startswith("/") or same_origin(ep.base_url, target):
            return ep.send(method, target, scopes=scopes, headers=headers, data=data,
                           retry=retry, follow_redirects=follow_redirects)
        # An upload location on another host (blob storage): no Authorization.
        return ep.transport.request(method, target, headers=headers, data=data, retry=retry)

    def _location(self, resp: requests.Response, fallback: str = "") -> str:
        loc = resp.headers.get("Location", "").strip()
        if not loc:
            if fallback:
                return fallback
            discard(resp)
            raise RegistryError(f"{self.host}: upload answer without a Location "
                                f"(HTTP {resp.status_code})", registry=self.host)
        return urljoin(resp.url or self.ep.base_url + "/", loc)

    def _error(self, resp: requests.Response, what: str) -> OcikitError:
        err = self.client.error(resp, what, self.ep)
        if isinstance(err, RegistryError) and not isinstance(err, AuthError) and \
                resp.status_code == 400 and ("DIGEST_INVALID" in str(err)
                                             or "SIZE_INVALID" in str(err)):
            return VerificationError(f"{what}: the registry refused the content "
                                     f"({err})")
        return err

    # -- blobs ----------------------------------------------------------------------

    def blob_exists(self, digest: Digest) -> bool:
        resp = self._send("HEAD", f"/v2/{self.repo}/blobs/{digest}", follow_redirects=True)
        if resp.status_code == 200:
            discard(resp)
            return True
        if resp.status_code == 404:
            discard(resp)
            return False
        raise self._error(resp, f"blob {digest} in {self.ref.name}")

    def mount(self, digest: Digest, from_repo: str) -> str | None:
        """Mount ``digest`` from ``from_repo`` of this registry.

        Returns "" when mounted, the location of an upload session the
        registry opened instead (202), or None when the attempt failed (the
        caller uploads as usual).
        """
        query = urlencode({"mount": str(digest), "from": from_repo})
        scopes = (*self.scopes, repo_scope(from_repo, "pull"))
        try:
            resp = self._send("POST", f"/v2/{self.repo}/blobs/uploads/?{query}", scopes=scopes)
        except AuthError:
            return None  # no pull on the other repository: upload instead
        if resp.status_code == 201:
            discard(resp)
            return ""
        if resp.status_code == 202 and resp.headers.get("Location"):
            loc = self._location(resp)
            discard(resp)
            return loc
        discard(resp)
        return None

    def start_upload(self, digest: Digest) -> str:
        resp = self._send("POST", f"/v2/{self.repo}/blobs/uploads/")
        if resp.status_code != 202:
            raise self._error(resp, f"upload of blob {digest} to {self.ref.name}")
        loc = self._location(resp)
        discard(resp)
        return loc

    def upload(self, desc: Descriptor, opener: BlobOpener, *, location: str = "",
               progress: Callable[[int], None] | None = None) -> None:
        """Upload the blob ``desc`` whose bytes ``opener`` gives.

        ``location`` is an upload session already open (a mount answered
        202). ``progress(n)`` gets the number of bytes the registry has
        confirmed so far (it may go back after a failure).
        """
        report = progress or (lambda _n: None)
        last: Exception | None = None
        for session in range(MAX_SESSIONS):
            if session:
                self._sleep(self.client.policy.delay(session - 1))
            url = location or self.start_upload(desc.digest)
            location = ""
            try:
                if desc.size <= self.chunk_size:
                    self._monolithic(url, desc, opener, report)
                else:
                    self._chunked(url, desc, opener, report)
                return
            except _Restart as e:
                last = e
                report(0)
        raise RegistryError(f"upload of blob {desc.digest} to {self.ref.name} failed: {last}",
                            registry=self.host)

    def _finish_url(self, url: str, digest: Digest) -> str:
        return with_query(url, digest=str(digest))

    def _monolithic(self, url: str, desc: Descriptor, opener: BlobOpener,
                    report: Callable[[int], None]) -> None:
        try:
            reader = opener(0)
            try:
                data = read_exactly(reader, desc.size + 1)
            finally:
                reader.close()
        except SourceReadError as e:
            raise _Restart(str(e)) from None
        if len(data) != desc.size:
            raise VerificationError(f"blob {desc.digest}: size mismatch (expected {desc.size} "
                                    f"bytes, the source has {len(data)})")
        self._put_final(url, desc, data, report)

    def _put_final(self, url: str, desc: Descriptor, data: bytes,
                   report: Callable[[int], None]) -> None:
        what = f"upload of blob {desc.digest} to {self.ref.name}"
        headers = {"Content-Type": "application/octet-stream"}
        try:
            # Not retried as is: the session's state moved if the body arrived.
            resp = self._send("PUT", self._finish_url(url, desc.digest), headers=headers,
                              data=data, retry=False)
        except UnreachableError as e:
            if self.blob_exists(desc.digest):
                report(desc.size)
                return
            raise _Restart(str(e)) from None
        if resp.status_code in (201, 202, 204):
            claimed = resp.headers.get("Docker-Content-Digest", "").strip()
            discard(resp)
            if claimed and claimed != str(desc.digest):
                raise VerificationError(f"{what}: the registry stored {claimed}")
            report(desc.size)
            return
        if resp.status_code in RETRYABLE or resp.status_code == 404:
            discard(resp)
            if self.blob_exists(desc.digest):
                report(desc.size)
                return
            raise _Restart(f"HTTP {resp.status_code} on the final PUT")
        raise self._error(resp, what)

    def _chunked(self, url: str, desc: Descriptor, opener: BlobOpener,
                 report: Callable[[int], None]) -> None:
        what = f"upload of blob {desc.digest} to {self.ref.name}"
        size = desc.size
        offset = 0  # what the registry has confirmed
        reader: BlobReader | None = None
        pos = 0  # where ``reader`` stands
        resumes = 0
        try:
            while offset < size:
                n = min(self.chunk_size, size - offset)
                failure = ""
                try:
                    if reader is None or pos != offset:
                        if reader is not None:
                            reader.close()
                        reader = None
                        reader = opener(offset)
                        pos = offset
                    data = read_exactly(reader, n)
                    pos += len(data)
                except SourceReadError as e:
                    if reader is not None:
                        reader.close()
                    reader, failure = None, str(e)
                    data = b""
                if not failure and len(data) != n:
                    raise VerificationError(
                        f"blob {desc.digest}: size mismatch (expected {size} bytes, the "
                        f"source ends at {offset + len(data)})")
                if not failure:
                    headers = {"Content-Type": "application/octet-stream",
                               "Content-Range": f"{offset}-{offset + n - 1}"}
                    try:
                        resp = self._send("PATCH", url, headers=headers, data=data, retry=False)
                    except UnreachableError as e:
                        failure = str(e)
                    else:
                        if resp.status_code == 202:
                            url = self._location(resp, url)
                            end = _content_range_end(resp.headers.get("Range"))
                            discard(resp)
                            offset = end + 1 if end is not None and end + 1 > offset \
                                else offset + n
                            report(offset)
                            continue
                        if resp.status_code == 404:
                            discard(resp)
                            raise _Restart("the registry forgot the upload session")
                        if resp.status_code not in RETRYABLE:
                            raise self._error(resp, what)
                        failure = f"HTTP {resp.status_code}"
                        discard(resp)
                resumes += 1
                if resumes > MAX_RESUMES:
                    raise RegistryError(f"{what} failed: {failure} (gave up after "
                                        f"{MAX_RESUMES} resumes)", registry=self.host)
                self._sleep(self.client.policy.delay(min(resumes - 1, 3)))
                status = self.upload_status(url)
                if status is None:
                    raise _Restart(f"{failure}; the registry lost the upload session")
                url, offset = status
                if offset > size:
                    raise _Restart(f"the registry holds {offset} bytes of {size}")
                report(offset)
        finally:
            if reader is not None:
                reader.close()
        self._put_final(url, desc, b"", report)

    def upload_status(self, url: str) -> tuple[str, int] | None:
        """(location, bytes held) of an upload session, or None if it is gone."""
        try:
            resp = self._send("GET", url)
        except UnreachableError:
            return None
        if resp.status_code not in (200, 202, 204):
            discard(resp)
            return None
        end = _content_range_end(resp.headers.get("Range"))
        loc = self._location(resp, url)
        discard(resp)
        # distribution answers "0-0" for an empty session as for one byte; a
        # chunked upload never stops after one byte, so read it as empty.
        return loc, (end + 1 if end else 0)

    # -- manifests ----------------------------------------------------------------

    def manifest_digest(self, identifier: str) -> Digest | None:
        """The digest ``identifier`` (a tag or digest) points at here, or None."""
        resp = self._send("HEAD", f"/v2/{self.repo}/manifests/{identifier}",
                          headers={"Accept": ", ".join(mt.MANIFEST_ACCEPT)},
                          follow_redirects=True)
        if resp.status_code == 404:
            discard(resp)
            return None
        if resp.status_code != 200:
            raise self._error(resp, f"manifest {self.ref.name}:{identifier}")
        header = resp.headers.get("Docker-Content-Digest", "").strip()
        discard(resp)
        try:
            return Digest.parse(header)
        except OcikitError:
            return None

    def put_manifest(self, data: bytes, media_type: str, identifier: str) -> PushedManifest:
        """PUT the manifest bytes as they are under ``identifier`` (tag or digest)."""
        digest = sha256_of(data)
        what = f"manifest {self.ref.name}:{identifier}" if ":" not in identifier \
            else f"manifest {self.ref.name}@{identifier}"
        resp = self._send("PUT", f"/v2/{self.repo}/manifests/{identifier}",
                          headers={"Content-Type": media_type}, data=data)
        if resp.status_code not in (200, 201, 202, 204):
            raise self._error(resp, what)
        claimed = resp.headers.get("Docker-Content-Digest", "").strip()
        subject = bool(resp.headers.get(OCI_SUBJECT, "").strip())
        discard(resp)
        if claimed and claimed != str(digest):
            raise VerificationError(f"{what}: the registry stored {claimed}, the bytes sent "
                                    f"hash to {digest}")
        return PushedManifest(digest, subject)

    def add_referrer(self, subject: Digest, referrer: Descriptor) -> None:
        """Add ``referrer`` to the fallback tag index of ``subject``."""
        tag = referrers_tag(subject)
        existing = get_referrers_index(self.client, self.ref, tag, scopes=self.scopes)
        manifests = [d.to_dict() for d in existing]
        if any(d.digest == referrer.digest for d in existing):
            return
        manifests.append(referrer.to_dict())
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.put_manifest(data, mt.OCI_INDEX, tag)


# -- referrers, read side -----------------------------------------------------------

def _index_entries(data: bytes, ctype: str, what: str) -> list[Descriptor]:
    blob = parse_manifest(data, ctype, what=what)
    if not isinstance(blob.parsed, Index):
        return []
    return list(blob.parsed.manifests)


def get_referrers_index(client: RegistryClient, ref: Reference, tag: str, *,
                        scopes: tuple[str, ...] | None = None) -> list[Descriptor]:
    """The entries of a fallback tag's index (empty when the tag does not exist)."""
    ep = client.registry_endpoint(ref.registry)
    what = f"referrers tag {ref.name}:{tag}"
    resp = ep.send("GET", f"/v2/{ref.repository}/manifests/{tag}",
                   scopes=scopes or (repo_scope(ref.repository),),
                   headers={"Accept": mt.OCI_INDEX}, follow_redirects=True)
    if resp.status_code == 404:
        discard(resp)
        return []
    if resp.status_code != 200:
        raise client.error(resp, what, ep)
    ctype = resp.headers.get("Content-Type", "")
    return _index_entries(read_body(resp, MAX_MANIFEST_SIZE, what), ctype, what)


def list_referrers(client: RegistryClient, ref: Reference, subject: Digest) -> list[Descriptor]:
    """Manifests whose ``subject`` is ``subject``: the referrers API, else the fallback tag."""
    ep = client.registry_endpoint(ref.registry)
    what = f"referrers of {ref.name}@{subject}"
    resp = ep.send("GET", f"/v2/{ref.repository}/referrers/{subject}",
                   scopes=(repo_scope(ref.repository),), headers={"Accept": mt.OCI_INDEX},
                   follow_redirects=True)
    if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(
            mt.OCI_INDEX):
        return _index_entries(read_body(resp, MAX_MANIFEST_SIZE, what), mt.OCI_INDEX, what)
    if resp.status_code not in (200, 400, 404, 405):
        raise client.error(resp, what, ep)
    discard(resp)
    return get_referrers_index(client, ref, referrers_tag(subject))


__all__ = ["DEFAULT_CHUNK_SIZE", "BlobOpener", "BlobReader", "PushedManifest",
           "SourceReadError", "Uploader", "get_referrers_index", "list_referrers",
           "read_exactly", "referrers_tag", "with_query"]
