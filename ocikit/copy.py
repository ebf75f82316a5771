"""``copy``: an image from one place to another, manifests byte for byte.

Places are sources and sinks: a registry, an OCI layout (``oci:DIR[:TAG]``,
the store being one), a docker archive (``docker-archive:FILE``). The walk is
the same for every pair: the top manifest (an index keeps all its platforms
unless one is picked), children before their index, every blob before the
manifest that names it, blobs in parallel. Registry to registry is streamed:
each blob goes from the source's GET into the destination's upload without
touching the disk.

Digests change only where a format forces it: a docker archive has no
manifest (one is made: Docker schema2 for a registry, OCI for a layout), and
a Docker-typed image written to an OCI layout is converted to OCI types so
that skopeo and umoci read it. ``CopyResult.converted`` says so.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import urllib3.exceptions

from ocikit.errors import (
    NotFoundError,
    OcikitError,
    StoreError,
    UnsupportedError,
    UsageError,
    VerificationError,
)
from ocikit.oci import mediatypes as mt
from ocikit.oci.archive import (
    FORMAT_DOCKER,
    FORMAT_OCI,
    ArchiveEntry,
    DockerArchive,
    repo_tag,
    synthesize_manifest,
    write_archive,
)
from ocikit.oci.descriptor import (
    MAX_CONFIG_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    ManifestBlob,
    Platform,
    parse_manifest,
)
from ocikit.oci.digest import Digest, HashingReader
from ocikit.oci.layout import INDEX_DIGEST, Layout, Store
from ocikit.oci.location import (
    ArchiveLocation,
    LayoutLocation,
    Location,
    parse_location,
)
from ocikit.oci.reference import Reference
from ocikit.parallel import run_all
from ocikit.progress import (
    BLOB_DONE,
    BLOB_EXISTS,
    BLOB_PROGRESS,
    BLOB_START,
    INFO,
    RESOLVED,
    STORED,
    Progress,
    ProgressEvent,
    no_progress,
)
from ocikit.registry.client import RegistryClient, repo_scope
from ocikit.registry.transport import UnreachableError, describe_connection_error, discard
from ocikit.registry.upload import (
    DEFAULT_CHUNK_SIZE,
    BlobReader,
    SourceReadError,
    Uploader,
    list_referrers,
    referrers_tag,
)

MAX_PARALLEL = 4
MAX_REFERRER_DEPTH = 4
MountHints = Callable[[Digest], list[tuple[str, str]]]

EXISTS = "exists"
MOUNTED = "mounted"
UPLOADED = "uploaded"

_FOREIGN = (mt.DOCKER_FOREIGN_LAYER, mt.OCI_LAYER_NONDIST, mt.OCI_LAYER_NONDIST_GZIP,
            mt.OCI_LAYER_NONDIST_ZSTD)


@dataclass(frozen=True)
class CopyResult:
    source: str
    dest: str
    digest: Digest  # of the top manifest (or index) at the destination
    source_digest: Digest | None  # at the source; None when the source had no manifest
    media_type: str
    uploaded: int = 0  # blobs whose bytes were sent
    mounted: int = 0
    existing: int = 0
    manifests: int = 0
    referrers: int = 0
    up_to_date: bool = False

    @property
    def converted(self) -> bool:
        return self.source_digest != self.digest


class _Cancelled(OcikitError):
    pass


# -- sources -----------------------------------------------------------------------

class Source:
    """Where an image is read from."""

    label = ""
    # the manifest was made here (docker archive), so it has no digest to keep
    synthesized = False

    def top(self) -> ManifestBlob:
        raise NotImplementedError

    def manifest(self, desc: Descriptor) -> ManifestBlob:
        raise NotImplementedError

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobReader:
        raise NotImplementedError

    def read_blob(self, desc: Descriptor, limit: int = MAX_CONFIG_SIZE) -> bytes:
        reader = self.open_blob(desc)
        try:
            data = reader.read(limit + 1)
            while len(data) <= limit:
                more = reader.read(limit + 1 - len(data))
                if not more:
                    break
                data += more
        finally:
            reader.close()
        if len(data) > limit:
            raise VerificationError(f"blob {desc.digest} is larger than {limit} bytes")
        if Digest.from_bytes(data, desc.digest.algorithm) != desc.digest:
            raise VerificationError(f"blob {desc.digest} from {self.label}: digest mismatch")
        return data

    def referrers(self, digest: Digest) -> list[Descriptor]:
        return []

    def mount_from(self, digest: Digest) -> list[tuple[str, str]]:
        """(registry, repository) pairs that hold ``digest``, as far as we know."""
        return []

    def repo_tags(self) -> list[str]:
        """Names for a docker archive written from this source."""
        return []

    def close(self) -> None:
        return None


class _FileReader:
    def __init__(self, path: Path, offset: int, what: str) -> None:
        try:
            self._f = open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{what} is missing ({path})") from None
        self._f.seek(offset)

    def read(self, n: int, /) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


class LayoutSource(Source):
    """An image in an OCI layout folder (or the store)."""

    def __init__(self, layout: Layout, desc: Descriptor, label: str, *,
                 ref: Reference | None = None, hints: MountHints | None = None) -> None:
        self.layout = layout
        self.desc = desc
        self.label = label
        self.ref = ref
        self._hints = hints

    def top(self) -> ManifestBlob:
        return self.manifest(self.desc)

    def manifest(self, desc: Descriptor) -> ManifestBlob:
        if not self.layout.has_blob(desc.digest):
            raise NotFoundError(f"manifest {desc.digest} is not in {self.label}")
        return self.layout.read_manifest(desc)

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobReader:
        return _FileReader(self.layout.blob_path(desc.digest), offset,
                           f"blob {desc.digest} of {self.label}")

    def mount_from(self, digest: Digest) -> list[tuple[str, str]]:
        return self._hints(digest) if self._hints is not None else []

    def referrers(self, digest: Digest) -> list[Descriptor]:
        out: list[Descriptor] = []
        tag = referrers_tag(digest)
        for e in self.layout.entries():
            d = e.descriptor
            try:
                blob = self.layout.read_manifest(d)
            except OcikitError:
                continue
            if e.name == tag and isinstance(blob.parsed, Index):
                out.extend(blob.parsed.manifests)
            elif blob.parsed.subject is not None and blob.parsed.subject.digest == digest:
                at = d.artifact_type or (blob.parsed.artifact_type
                                         if isinstance(blob.parsed, Manifest) else "")
                out.append(Descriptor(d.media_type, d.digest, d.size, blob.parsed.annotations,
                                      artifact_type=at))
        unique: dict[Digest, Descriptor] = {}
        for d in out:
            unique.setdefault(d.digest, d)
        return list(unique.values())

    def repo_tags(self) -> list[str]:
        return [repo_tag(self.ref)] if self.ref is not None else []


class _HttpReader:
    """A blob streamed out of a registry's GET response."""

    def __init__(self, resp: Any, what: str, registry: str) -> None:
        self._resp = resp
        self._what = what
        self._registry = registry

    def read(self, n: int, /) -> bytes:
        try:
            data: bytes = self._resp.raw.read(n, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise SourceReadError(f"reading {self._what} failed: "
                                  f"{describe_connection_error(e)}",
                                  registry=self._registry) from None
        return data

    def close(self) -> None:
        discard(self._resp)


class RegistrySource(Source):
    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref
        self.label = str(ref)

    def top(self) -> ManifestBlob:
        return self.client.get_manifest(self.ref)

    def manifest(self, desc: Descriptor) -> ManifestBlob:
        return self.client.get_manifest(self.ref.with_digest(desc.digest))

    def read_blob(self, desc: Descriptor, limit: int = MAX_CONFIG_SIZE) -> bytes:
        return self.client.get_blob_bytes(self.ref, desc, limit)

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobReader:
        what = f"blob {desc.digest} of {self.ref.name}"
        ep = self.client.registry_endpoint(self.ref.registry)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = ep.send("GET", f"/v2/{self.ref.repository}/blobs/{desc.digest}",
                           scopes=(repo_scope(self.ref.repository),), headers=headers,
                           follow_redirects=True)
        except UnreachableError as e:
            raise SourceReadError(str(e), registry=self.ref.registry) from None
        if resp.status_code == 206 and offset:
            return _HttpReader(resp, what, self.ref.registry)
        if resp.status_code != 200:
            if resp.status_code >= 500:
                discard(resp)
                raise SourceReadError(f"{what}: HTTP {resp.status_code}",
                                      registry=self.ref.registry)
            raise self.client.error(resp, what, ep)
        reader = _HttpReader(resp, what, self.ref.registry)
        left = offset
        while left > 0:  # the server ignored the Range: skip to the offset
            piece = reader.read(min(left, 1 << 20))
            if not piece:
                reader.close()
                raise SourceReadError(f"{what} ended early", registry=self.ref.registry)
            left -= len(piece)
        return reader

    def referrers(self, digest: Digest) -> list[Descriptor]:
        return list_referrers(self.client, self.ref, digest)

    def mount_from(self, digest: Digest) -> list[tuple[str, str]]:
        return [(self.ref.registry, self.ref.repository)]

    def repo_tags(self) -> list[str]:
        return [repo_tag(self.ref)] if self.ref.tag else []


class ArchiveSource(Source):
    """An image in a docker archive, its manifest made in ``fmt`` (docker or oci)."""

    def __init__(self, loc: ArchiveLocation, fmt: str) -> None:
        self.label = str(loc)
        self.archive = DockerArchive(loc.path)
        try:
            self.image = self.archive.select(loc.ref)
            self.config = self.archive.config_bytes(self.image)
            config_digest = Digest.from_bytes(self.config)
            self._members: dict[Digest, str] = {config_digest: self.image.config}
            stored = self.archive.stored_manifest(self.image, config_digest)
            if stored is not None:
                self._top = stored
                assert isinstance(stored.parsed, Manifest)
                for d in stored.parsed.layers:
                    name = self.archive.blob_member(d.digest)
                    if name is None:
                        raise NotFoundError(f"{self.label} lacks layer {d.digest}")
                    self._members[d.digest] = name
            else:
                cfg = ImageConfig.parse(self.config, f"{self.label}: config")
                layers = self.archive.layer_descriptors(self.image, cfg, fmt)
                for layer in layers:
                    self._members[layer.descriptor.digest] = layer.member
                self._top = synthesize_manifest(self.config, [x.descriptor for x in layers],
                                                fmt)
                self.synthesized = True
        except BaseException:
            self.archive.close()
            raise

    def top(self) -> ManifestBlob:
        return self._top

    def manifest(self, desc: Descriptor) -> ManifestBlob:
        if desc.digest != self._top.digest:
            raise NotFoundError(f"{self.label} has no manifest {desc.digest}")
        return self._top

    def open_blob(self, desc: Descriptor, offset: int = 0) -> BlobReader:
        name = self._members.get(desc.digest)
        if name is None:
            raise NotFoundError(f"{self.label} has no blob {desc.digest}")
        return self.archive.open_at(name, offset)

    def repo_tags(self) -> list[str]:
        return list(self.image.repo_tags)

    def close(self) -> None:
        self.archive.close()


# -- sinks --------------------------------------------------------------------------

class _BlobProgress:
    def __init__(self, progress: Progress, ref: str, desc: Descriptor, verb: str,
                 cancel: threading.Event) -> None:
        self.progress = progress
        self.ref = ref
        self.desc = desc
        self.verb = verb
        self.cancel = cancel
        self.current = 0

    def _ev(self, kind: str, current: int, message: str = "") -> None:
        self.progress(ProgressEvent(kind, self.ref, str(self.desc.digest), current,
                                    self.desc.size, message))

    def start(self) -> None:
        self._ev(BLOB_START, 0, self.verb)

    def at(self, n: int) -> None:
        if self.cancel.is_set():
            raise _Cancelled("cancelled")
        self.current = n
        self._ev(BLOB_PROGRESS, n)

    def add(self, n: int) -> None:
        self.at(self.current + n)

    def done(self) -> None:
        self._ev(BLOB_DONE, self.desc.size)

    def exists(self, message: str) -> None:
        self._ev(BLOB_EXISTS, self.desc.size, message)


class Sink:
    label = ""
    # a docker archive holds one platform's image
    single_image = False
    verb = "copying"

    def up_to_date(self, top: ManifestBlob) -> bool:
        return False

    def has_manifest(self, blob: ManifestBlob) -> bool:
        return False

    def blob_exists(self, desc: Descriptor) -> bool:
        return False

    def put_blob(self, desc: Descriptor, source: Source, bp: _BlobProgress) -> str:
        raise NotImplementedError

    def adapt(self, blob: ManifestBlob, written: dict[Digest, Descriptor]) -> ManifestBlob:
        """The manifest as this sink stores it (a format conversion may change it)."""
        return blob

    def put_manifest(self, blob: ManifestBlob, *, top: bool) -> None:
        raise NotImplementedError

    def add_referrer(self, subject: Descriptor, referrer: Descriptor) -> None:
        return None

    def commit(self, top: ManifestBlob, platform: Platform | None) -> None:
        return None

    def close(self) -> None:
        return None


class RegistrySink(Sink):
    verb = "uploading"

    def __init__(self, client: RegistryClient, ref: Reference, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, hints: MountHints | None = None) -> None:
        self.ref = ref
        self.label = str(ref)
        self.uploader = Uploader(client, ref, chunk_size=chunk_size)
        self._hints = hints
        self._subject_handled: set[Digest] = set()

    def _identifier(self, top: ManifestBlob) -> str:
        if self.ref.digest is not None:
            if self.ref.digest != top.digest:
                raise VerificationError(f"{self.ref}: the image's digest is {top.digest}")
            return str(top.digest)
        return self.ref.tag

    def up_to_date(self, top: ManifestBlob) -> bool:
        return self.uploader.manifest_digest(self._identifier(top)) == top.digest

    def has_manifest(self, blob: ManifestBlob) -> bool:
        return self.uploader.manifest_digest(str(blob.digest)) == blob.digest

    def blob_exists(self, desc: Descriptor) -> bool:
        return self.uploader.blob_exists(desc.digest)

    def _candidates(self, source: Source, digest: Digest) -> list[str]:
        pairs = list(source.mount_from(digest))
        if self._hints is not None:
            pairs += self._hints(digest)
        repos: list[str] = []
        for registry, repo in pairs:
            if registry.lower() == self.ref.registry.lower() and \
                    repo != self.ref.repository and repo not in repos:
                repos.append(repo)
        return repos[:3]

    def put_blob(self, desc: Descriptor, source: Source, bp: _BlobProgress) -> str:
        location = ""
        for repo in self._candidates(source, desc.digest):
            got = self.uploader.mount(desc.digest, repo)
            if got == "":
                bp.exists(f"mounted from {repo}")
                return MOUNTED
            if got:
                location = got
                break
        bp.start()
        self.uploader.upload(desc, lambda offset: source.open_blob(desc, offset),
                             location=location, progress=bp.at)
        bp.done()
        return UPLOADED

    def put_manifest(self, blob: ManifestBlob, *, top: bool) -> None:
        identifier = self._identifier(blob) if top else str(blob.digest)
        pushed = self.uploader.put_manifest(blob.data, blob.media_type, identifier)
        if pushed.subject_handled:
            self._subject_handled.add(blob.digest)

    def add_referrer(self, subject: Descriptor, referrer: Descriptor) -> None:
        if referrer.digest not in self._subject_handled:
            self.uploader.add_referrer(subject.digest, referrer)


def to_oci(blob: ManifestBlob, written: dict[Digest, Descriptor]) -> ManifestBlob:
    """``blob`` with Docker media types turned into OCI ones (children as ``written``)."""
    layer_types = {mt.DOCKER_LAYER: mt.OCI_LAYER, mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
                   mt.DOCKER_FOREIGN_LAYER: mt.OCI_LAYER_NONDIST_GZIP}
    doc = json.loads(blob.data)
    changed = False
    if blob.media_type == mt.DOCKER_MANIFEST:
        doc["mediaType"] = mt.OCI_MANIFEST
        if doc["config"].get("mediaType") == mt.DOCKER_CONFIG:
            doc["config"]["mediaType"] = mt.OCI_CONFIG
        for layer in doc.get("layers") or []:
            layer["mediaType"] = layer_types.get(layer.get("mediaType"), layer.get("mediaType"))
        changed = True
    elif blob.media_type in mt.INDEXES:
        if blob.media_type == mt.DOCKER_MANIFEST_LIST:
            doc["mediaType"] = mt.OCI_INDEX
            changed = True
        for m in doc.get("manifests") or []:
            new = written.get(Digest.parse(m["digest"]))
            if new is not None and new.digest != Digest.parse(m["digest"]):
                m.update(mediaType=new.media_type, digest=str(new.digest), size=new.size)
                changed = True
    if not changed:
        return blob
    data = json.dumps(doc, indent=3).encode()
    return parse_manifest(data, str(doc["mediaType"]), what="converted manifest")


class LayoutSink(Sink):
    verb = "writing"

    def __init__(self, loc: LayoutLocation) -> None:
        self.layout = Layout(loc.path)
        self.tag = loc.tag
        self.label = str(loc)
        if self.layout.root.exists() and any(self.layout.root.iterdir()) and \
                not self.layout.exists():
            raise UsageError(f"{loc.path} exists and is not an OCI image layout")
        self.layout.init()

    def blob_exists(self, desc: Descriptor) -> bool:
        return self.layout.has_blob(desc.digest)

    def put_blob(self, desc: Descriptor, source: Source, bp: _BlobProgress) -> str:
        bp.start()
        for attempt in range(3):
            bp.current = 0
            try:
                reader = source.open_blob(desc)
                try:
                    self.layout.put_blob_stream(cast(IO[bytes], reader), desc,
                                                progress=bp.add)
                finally:
                    reader.close()
                break
            except SourceReadError:
                if attempt == 2:
                    raise
        bp.done()
        return UPLOADED

    def adapt(self, blob: ManifestBlob, written: dict[Digest, Descriptor]) -> ManifestBlob:
        # skopeo 1.9 and umoci 0.4 read only OCI-typed layouts (SPEC, "Store layout")
        return to_oci(blob, written)

    def put_manifest(self, blob: ManifestBlob, *, top: bool) -> None:
        self.layout.put_blob(blob.data, blob.media_type)

    def add_referrer(self, subject: Descriptor, referrer: Descriptor) -> None:
        self.layout.set_name("", referrer)

    def commit(self, top: ManifestBlob, platform: Platform | None) -> None:
        self.layout.set_name(self.tag, Descriptor(top.media_type, top.digest, len(top.data),
                                                  platform=platform))


class ArchiveSink(Sink):
    """A ``docker save`` archive: one image, layers stored uncompressed."""

    single_image = True
    verb = "writing"

    def __init__(self, loc: ArchiveLocation, repo_tags: list[str]) -> None:
        self.path = loc.path
        self.label = str(loc)
        self.repo_tags = tuple(repo_tags)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise NotFoundError(f"{parent} is not a directory")
        try:
            self._tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.path.name}."))
        except OSError as e:
            raise StoreError(f"cannot write in {parent}: {e.strerror or e}") from None
        self._small: dict[Digest, bytes] = {}
        self._layers: dict[Digest, tuple[Digest, Path]] = {}
        self._lock = threading.Lock()

    def put_blob(self, desc: Descriptor, source: Source, bp: _BlobProgress) -> str:
        from ocikit.oci.layer import open_layer

        bp.start()
        if desc.media_type not in (*mt.GZIP_LAYERS, *mt.ZSTD_LAYERS, *mt.PLAIN_LAYERS):
            data = source.read_blob(desc)
            with self._lock:
                self._small[desc.digest] = data
            bp.done()
            return UPLOADED
        out = self._tmp / desc.digest.hex
        reader = source.open_blob(desc)
        try:
            hashing = HashingReader(cast(Any, reader), desc.digest.algorithm)
            with open_layer(cast(Any, hashing), desc.media_type, None,
                            layer=str(desc.digest)) as layer, open(out, "wb") as f:
                last = 0
                while chunk := layer.read(1 << 20):
                    f.write(chunk)
                    if hashing.count - last >= 1 << 20:
                        last = hashing.count
                        bp.at(last)
                diff_id = layer.verify()
            hashing.drain()
        finally:
            reader.close()
        if hashing.count != desc.size or hashing.digest() != desc.digest:
            raise VerificationError(f"blob {desc.digest} from {source.label}: digest or size "
                                    f"mismatch (got {hashing.digest()}, {hashing.count} bytes)")
        with self._lock:
            self._layers[desc.digest] = (diff_id, out)
        bp.done()
        return UPLOADED

    def put_manifest(self, blob: ManifestBlob, *, top: bool) -> None:
        return None  # the archive's manifest.json is written by commit()

    def commit(self, top: ManifestBlob, platform: Platform | None) -> None:
        m = top.parsed
        if not isinstance(m, Manifest):
            raise UnsupportedError(f"{self.label}: a docker archive holds an image, "
                                   f"not {top.media_type}")
        config = self._small[m.config.digest]
        cfg = ImageConfig.parse(config, f"config {m.config.digest}")
        layers = tuple(self._layers[d.digest] for d in m.layers)
        got = tuple(d for d, _ in layers)
        if got != cfg.diff_ids:
            raise VerificationError(f"{self.label}: the layers' diff_ids do not match the "
                                    f"image config {m.config.digest}")
        write_archive(self.path, [ArchiveEntry(config, layers, self.repo_tags)])

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


# -- the walk ---------------------------------------------------------------------------

def _distributable(desc: Descriptor) -> bool:
    return not (desc.urls and desc.media_type in _FOREIGN)


class _Copier:
    def __init__(self, source: Source, sink: Sink, progress: Progress,
                 max_workers: int) -> None:
        self.source = source
        self.sink = sink
        self.progress = progress
        self.max_workers = max(1, max_workers)
        self.counts = {EXISTS: 0, MOUNTED: 0, UPLOADED: 0}
        self.manifests = 0
        self.written: dict[Digest, Descriptor] = {}
        self._done_blobs: set[Digest] = set()

    def plan(self, top: ManifestBlob) -> list[ManifestBlob]:
        """Manifests to write, children before the index naming them."""
        out: list[ManifestBlob] = []
        seen: set[Digest] = set()

        def walk(blob: ManifestBlob, depth: int) -> None:
            if blob.digest in seen:
                return
            seen.add(blob.digest)
            if isinstance(blob.parsed, Index):
                if depth > 4:
                    raise UnsupportedError(f"{self.source.label}: indexes nested too deep")
                for d in blob.parsed.manifests:
                    child = self.source.manifest(d)
                    if child.media_type in mt.MANIFESTS and self.sink.has_manifest(child):
                        self.written[child.digest] = child.descriptor
                        continue
                    walk(child, depth + 1)
            out.append(blob)

        walk(top, 0)
        return out

    def copy_blobs(self, blobs: list[Descriptor]) -> None:
        todo: list[Descriptor] = []
        for d in blobs:
            if d.digest not in self._done_blobs and _distributable(d):
                self._done_blobs.add(d.digest)
                todo.append(d)
        if not todo:
            return
        cancel = threading.Event()
        lock = threading.Lock()

        def one(desc: Descriptor) -> None:
            bp = _BlobProgress(self.progress, self.sink.label, desc, self.sink.verb, cancel)
            if self.sink.blob_exists(desc):
                bp.exists("already exists")
                how = EXISTS
            else:
                how = self.sink.put_blob(desc, self.source, bp)
            with lock:
                self.counts[how] += 1

        run_all(one, todo, max_workers=self.max_workers, cancel=cancel, name="ocikit-copy")

    def copy_graph(self, top: ManifestBlob) -> ManifestBlob:
        """Blobs and manifests of ``top``; returns ``top`` as written (maybe converted)."""
        plan = self.plan(top)
        blobs: list[Descriptor] = []
        for blob in plan:
            if isinstance(blob.parsed, Manifest):
                blobs += [blob.parsed.config, *blob.parsed.layers]
        self.copy_blobs(blobs)
        out = top
        for blob in plan:
            out = self.sink.adapt(blob, self.written)
            is_top = blob is plan[-1]
            if not is_top:
                self.sink.put_manifest(out, top=False)
                self.manifests += 1
            self.written[blob.digest] = Descriptor(out.media_type, out.digest, len(out.data))
        return out

    def copy_referrers(self, subjects: list[Digest], depth: int = 0) -> int:
        count = 0
        if depth >= MAX_REFERRER_DEPTH:
            return 0
        for subject in subjects:
            dest_subject = self.written.get(subject)
            if dest_subject is None:
                continue
            for r in self.source.referrers(subject):
                blob = self.source.manifest(r)
                out = self.copy_graph(blob)
                self.sink.put_manifest(out, top=False)
                self.manifests += 1
                dest = Descriptor(out.media_type, out.digest, len(out.data), r.annotations,
                                  artifact_type=r.artifact_type)
                self.sink.add_referrer(dest_subject, dest)
                self.progress(ProgressEvent(INFO, self.sink.label, str(out.digest),
                                            message=f"referrer {out.digest} "
                                                    f"({r.artifact_type or out.media_type}) "
                                                    f"of {subject} copied"))
                count += 1 + self.copy_referrers([blob.digest], depth + 1)
        return count


def transfer(source: Source, sink: Sink, *, platform: Platform | None = None,
             referrers: bool = False, progress: Progress = no_progress,
             max_workers: int = MAX_PARALLEL) -> CopyResult:
    """Copy ``source``'s image into ``sink``."""
    top = source.top()
    source_digest: Digest | None = None if source.synthesized else top.digest
    progress(ProgressEvent(RESOLVED, source.label, str(top.digest), message=top.media_type))
    chosen_platform: Platform | None = None
    if isinstance(top.parsed, Index) and (platform is not None or sink.single_image):
        chosen = top.parsed.choose(platform, source.label)
        chosen_platform = chosen.platform
        top = source.manifest(chosen)
        source_digest = top.digest
    copier = _Copier(source, sink, progress, max_workers)
    up_to_date = sink.up_to_date(top)
    if up_to_date:
        copier.written[top.digest] = top.descriptor
        out = top
        if isinstance(top.parsed, Index):
            for d in top.parsed.manifests:
                copier.written[d.digest] = d
    else:
        out = copier.copy_graph(top)
    if not up_to_date:
        sink.put_manifest(out, top=True)
        copier.manifests += 1
        sink.commit(out, chosen_platform)
    n_referrers = 0
    if referrers:
        n_referrers = copier.copy_referrers(list(copier.written))
    progress(ProgressEvent(STORED, sink.label, str(out.digest)))
    return CopyResult(source=source.label, dest=sink.label, digest=out.digest,
                      source_digest=source_digest, media_type=out.media_type,
                      uploaded=copier.counts[UPLOADED], mounted=copier.counts[MOUNTED],
                      existing=copier.counts[EXISTS], manifests=copier.manifests,
                      referrers=n_referrers, up_to_date=up_to_date)


# -- opening places ------------------------------------------------------------------------

def store_hints(store: Layout) -> MountHints:
    """Which repositories the store's images came from hold a blob (for mounts)."""
    table: dict[Digest, list[tuple[str, str]]] = {}
    built = threading.Event()
    lock = threading.Lock()

    def build() -> None:
        for e in store.entries()[:500]:
            try:
                ref = Reference.parse(e.name)
                m = store.read_manifest(e.descriptor).parsed
            except OcikitError:
                continue
            if isinstance(m, Manifest):
                for d in (m.config, *m.layers):
                    pairs = table.setdefault(d.digest, [])
                    if (ref.registry, ref.repository) not in pairs:
                        pairs.append((ref.registry, ref.repository))

    def hints(digest: Digest) -> list[tuple[str, str]]:
        with lock:
            if not built.is_set():
                build()
                built.set()
        return list(table.get(digest, []))

    return hints


def _complete(store: Layout, index: ManifestBlob) -> bool:
    """Every platform of ``index`` is in the store (a pull keeps only one)."""
    assert isinstance(index.parsed, Index)
    for d in index.parsed.manifests:
        if not store.has_blob(d.digest):
            return False
        try:
            m = store.read_manifest(d).parsed
        except OcikitError:
            return False
        if isinstance(m, Manifest) and not all(
                store.has_blob(b.digest) for b in (m.config, *m.layers) if _distributable(b)):
            return False
    return True


def stored_source(store: Store, ref: Reference, progress: Progress = no_progress
                  ) -> LayoutSource | None:
    """The stored image ``ref`` names, as a source; None if the store lacks it."""
    from ocikit.resolve import find_stored

    desc = find_stored(store, ref)
    if desc is None:
        return None
    top = Descriptor(desc.media_type, desc.digest, desc.size)
    index_digest = desc.annotations.get(INDEX_DIGEST)
    if index_digest:
        digest = Digest.parse(index_digest)
        if store.has_blob(digest):
            index = store.read_manifest(Descriptor("", digest, store.blob_size(digest)))
            if _complete(store, index):
                top = Descriptor(index.media_type, digest, len(index.data))
            else:
                progress(ProgressEvent(INFO, str(ref), str(desc.digest), message=(
                    f"{ref}: only platform {desc.platform or '?'} of index {digest} is "
                    f"stored; that one is copied ({desc.digest})")))
    return LayoutSource(store, top, str(ref), ref=ref, hints=store_hints(store))


def open_source(loc: Location, store: Store | None, client: Callable[[], RegistryClient],
                dest_kind: str, progress: Progress = no_progress) -> Source:
    if isinstance(loc, LayoutLocation):
        layout = Layout(loc.path)
        d = layout.select(loc.tag)
        return LayoutSource(layout, Descriptor(d.media_type, d.digest, d.size), str(loc))
    if isinstance(loc, ArchiveLocation):
        fmt = FORMAT_DOCKER if dest_kind == "registry" else FORMAT_OCI
        return ArchiveSource(loc, fmt)
    if not loc.explicit and store is not None:
        found = stored_source(store, loc.ref, progress)
        if found is not None:
            return found
    return RegistrySource(client(), loc.ref)


def open_sink(loc: Location, client: Callable[[], RegistryClient], source: Source, *,
              chunk_size: int = DEFAULT_CHUNK_SIZE, hints: MountHints | None = None) -> Sink:
    if isinstance(loc, LayoutLocation):
        return LayoutSink(loc)
    if isinstance(loc, ArchiveLocation):
        tags = [repo_tag(Reference.parse(loc.ref))] if loc.ref else source.repo_tags()
        return ArchiveSink(loc, tags)
    return RegistrySink(client(), loc.ref, chunk_size=chunk_size, hints=hints)


def _kind(loc: Location) -> str:
    if isinstance(loc, LayoutLocation):
        return "oci"
    if isinstance(loc, ArchiveLocation):
        return "archive"
    return "registry"


@contextlib.contextmanager
def _opened(src: Location, dest: Location, store: Store | None,
            client: Callable[[], RegistryClient], chunk_size: int,
            progress: Progress) -> Iterator[tuple[Source, Sink]]:
    source = open_source(src, store, client, _kind(dest), progress)
    try:
        hints = source.mount_from if isinstance(source, LayoutSource) else None
        sink = open_sink(dest, client, source, chunk_size=chunk_size, hints=hints)
        try:
            yield source, sink
        finally:
            sink.close()
    finally:
        source.close()


def copy(src: str | Location, dest: str | Location, *, store: Store | None = None,
         client: Callable[[], RegistryClient] | None = None, platform: Platform | None = None,
         referrers: bool = False, progress: Progress = no_progress,
         chunk_size: int = DEFAULT_CHUNK_SIZE, max_workers: int = MAX_PARALLEL) -> CopyResult:
    """Copy an image from ``src`` to ``dest`` (registry, ``oci:``, ``docker-archive:``)."""
    src_loc = parse_location(src) if isinstance(src, str) else src
    dest_loc = parse_location(dest) if isinstance(dest, str) else dest
    made: list[RegistryClient] = []

    def get_client() -> RegistryClient:
        if client is not None:
            return client()
        if not made:
            made.append(RegistryClient())
        return made[0]

    with _opened(src_loc, dest_loc, store, get_client, chunk_size, progress) as (source, sink):
        return transfer(source, sink, platform=platform, referrers=referrers,
                        progress=progress, max_workers=max_workers)


__all__ = ["ArchiveSink", "ArchiveSource", "CopyResult", "LayoutSink", "LayoutSource",
           "RegistrySink", "RegistrySource", "Sink", "Source", "copy", "open_sink",
           "open_source", "store_hints", "stored_source", "to_oci", "transfer"]
