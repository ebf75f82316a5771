"""OCI image layouts on disk, and the ocikit store built on one.

A ``Layout`` is any image-layout folder (``oci-layout``, ``index.json``,
``blobs/<alg>/<hex>``): what ``oci:DIR`` names and what skopeo and umoci
read. The ``Store`` is a layout plus ocikit's own areas beside it: ``tmp/``
(every temporary file, so renames stay on one filesystem), ``ingest/``
(partial downloads kept across runs), ``lock``, ``snapshots/``,
``containers/`` and ``volumes/``.

Every write is atomic: a blob appears under its digest only after the bytes
were verified, and ``index.json`` is replaced by rename under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ocikit.errors import NotFoundError, StoreError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor, ManifestBlob, parse_manifest
from ocikit.oci.digest import Digest, sha256_of
from ocikit.oci.storeview import GC_LOCK, SNAPSHOTS, TMP
from ocikit.oci.storeview import INDEX_DIGEST as INDEX_DIGEST
from ocikit.oci.storeview import REF_NAME as REF_NAME

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, BinaryIO

LAYOUT_VERSION = "1.0.0"
_CHUNK = 1 << 20


def _store_error(e: OSError, what: str) -> StoreError:
    if e.errno == errno.ENOSPC:
        return StoreError(f"no space left on device while writing {what}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"cannot write {what}: {e.strerror}")
    return StoreError(f"{what}: {e.strerror or e}")


def _open_lock(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+b")
    except OSError as e:
        raise _store_error(e, str(path)) from None


class _VerifiedBlob(io.RawIOBase):
    """A stored blob, hashed as it is read: reaching its end with bytes that do
    not match its name raises instead of handing back the last chunk.

    Every reader of layers reads to EOF (diff_ids cover the whole stream), so
    a blob changed on disk is never used silently, as umoci and containerd
    verify their content stores on read too.
    """

    def __init__(self, f: io.BufferedReader, layout: Layout, digest: Digest) -> None:
        super().__init__()
        self._f = f
        self._layout = layout
        self._digest = digest
        self._hash = digest.hasher()
        self._checked = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._f.fileno()

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            data = self._f.read()
            self._hash.update(data)
            self._check()
            return data
        data = self._f.read(n)
        if data:
            self._hash.update(data)
        elif n:
            self._check()
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        n = self._f.readinto(b)
        if n:
            self._hash.update(memoryview(b)[:n])
        elif len(b):
            self._check()
        return int(n or 0)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        if self._hash.hexdigest() != self._digest.hex:
            self._layout._corrupt(self._digest, os.fstat(self._f.fileno()))

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


@dataclass(frozen=True)
class IndexEntry:
    """One ``index.json`` entry: a name (may be empty) and what it points at."""

    name: str
    descriptor: Descriptor


class Layout:
    """An OCI image layout folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- structure ---------------------------------------------------------
    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def tmp_dir(self) -> Path:
        # A plain layout keeps its temporary files in its own root so renames
        # into blobs/ stay on one filesystem; dot-named so readers ignore it.
        return self.root / ".tmp"

    def exists(self) -> bool:
        return (self.root / "oci-layout").is_file()

    def init(self) -> None:
        try:
            self._create()
        except OSError as e:
            raise _store_error(e, str(self.root)) from None

    def _create(self) -> None:
        (self.blobs_dir / "sha256").mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if not (self.root / "oci-layout").exists():
            self._atomic_write(self.root / "oci-layout",
                               json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        if not (self.root / "index.json").exists():
            self._write_index_doc({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                   "manifests": []})

    def check(self) -> None:
        if not self.exists():
            raise NotFoundError(f"{self.root} is not an OCI image layout (no oci-layout file)")

    # -- blobs -------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: Digest) -> BinaryIO:
        """The blob's bytes; reading them to the end verifies them."""
        try:
            f = open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise self._missing(digest) from None
        except OSError as e:
            raise StoreError(f"cannot read blob {digest} in {self.root}: {e.strerror}") from None
        blob: Any = _VerifiedBlob(f, self, digest)  # typeshed's RawIOBase is no BinaryIO
        return blob

    def _missing(self, digest: Digest) -> NotFoundError:
        return NotFoundError(f"blob {digest} not found in {self.root}")

    def _corrupt(self, digest: Digest, seen: os.stat_result) -> None:
        """Called when a blob's bytes do not match its name; raises."""
        raise VerificationError(f"blob {digest} in {self.root} is corrupt (its bytes do not "
                                "match its digest)")

    def read_blob(self, digest: Digest, *, limit: int | None = None) -> bytes:
        with self.open_blob(digest) as f:
            if limit is None:
                return f.read()
            data = b""
            while len(data) <= limit:
                chunk = f.read(limit + 1 - len(data))
                if not chunk:
                    return data  # read to the end: verified
                data += chunk
        raise VerificationError(f"blob {digest} is larger than {limit} bytes")

    def blob_size(self, digest: Digest) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise self._missing(digest) from None

    def put_blob(self, data: bytes, media_type: str = "") -> Descriptor:
        digest = sha256_of(data)
        if not self.has_blob(digest):
            tmp = self._tmp_file()
            try:
                with tmp:
                    tmp.write(data)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                self._publish(Path(tmp.name), digest)
            except OSError as e:
                _unlink_quiet(Path(tmp.name))
                raise _store_error(e, f"blob {digest}") from None
        return Descriptor(media_type, digest, len(data))

    def put_blob_stream(self, stream: IO[bytes], expected: Descriptor,
                        progress: Callable[[int], None] | None = None) -> None:
        """Copy ``stream`` in as ``expected``, verifying size and digest first."""
        if self.has_blob(expected.digest):
            return
        tmp = self._tmp_file()
        h = expected.digest.hasher()
        n = 0
        try:
            with tmp:
                while True:
                    chunk = stream.read(_CHUNK)
                    if not chunk:
                        break
                    n += len(chunk)
                    if n > expected.size:
                        raise VerificationError(
                            f"blob {expected.digest}: more than the {expected.size} bytes "
                            f"its descriptor declares")
                    h.update(chunk)
                    tmp.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                tmp.flush()
                os.fsync(tmp.fileno())
            got = Digest(expected.digest.algorithm, h.hexdigest())
            if n != expected.size:
                raise VerificationError(
                    f"blob {expected.digest}: size mismatch (expected {expected.size} bytes, "
                    f"got {n})")
            if got != expected.digest:
                raise VerificationError(f"blob {expected.digest}: digest mismatch (got {got})")
            self._publish(Path(tmp.name), expected.digest)
        except OSError as e:
            _unlink_quiet(Path(tmp.name))
            raise _store_error(e, f"blob {expected.digest}") from None
        except BaseException:
            _unlink_quiet(Path(tmp.name))
            raise

    def adopt_verified_file(self, path: Path, digest: Digest) -> None:
        """Rename an already verified file (on this filesystem) into blobs/."""
        try:
            self._publish(path, digest)
        except OSError as e:
            raise _store_error(e, f"blob {digest}") from None

    def _publish(self, tmp: Path, digest: Digest) -> None:
        final = self.blob_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)

    def _tmp_file(self) -> Any:
        import tempfile  # only writers pay for it

        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            return tempfile.NamedTemporaryFile(dir=self.tmp_dir, prefix="blob-", delete=False)
        except OSError as e:
            raise _store_error(e, str(self.tmp_dir)) from None

    def iter_blobs(self) -> Iterator[Digest]:
        if not self.blobs_dir.is_dir():
            return
        for alg_dir in sorted(self.blobs_dir.iterdir()):
            if not alg_dir.is_dir():
                continue
            for f in sorted(alg_dir.iterdir()):
                try:
                    yield Digest.parse(f"{alg_dir.name}:{f.name}")
                except Exception:
                    continue

    # -- manifests ---------------------------------------------------------
    def read_manifest(self, desc: Descriptor) -> ManifestBlob:
        data = self.read_blob(desc.digest, limit=4 << 20)
        return parse_manifest(data, desc.media_type, what=f"manifest {desc.digest}")

    # -- index.json --------------------------------------------------------
    # Said after "index.json is corrupt": ocikit never rewrites an index it
    # cannot read (every name in it would be lost), so the user decides.
    _index_hint = ""

    def _read_index_doc(self) -> dict[str, Any]:
        """index.json, checked entry by entry; a damaged one is refused, never repaired."""
        path = self.root / "index.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise StoreError(f"{path} is corrupt (not JSON: {e}){self._index_hint}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            raise StoreError(f"{path} is corrupt (not an OCI image index: it needs a "
                             f"\"manifests\" list){self._index_hint}")
        for i, m in enumerate(doc["manifests"]):
            try:
                Descriptor.from_dict(m, f"entry {i}")
            except VerificationError as e:
                raise StoreError(f"{path} is corrupt ({e}){self._index_hint}") from None
            if not isinstance(m.get("annotations") or {}, dict):
                raise StoreError(f"{path} is corrupt (entry {i}: annotations is not an "
                                 f"object){self._index_hint}")
        return doc

    def entries(self) -> list[IndexEntry]:
        out = []
        for m in self._read_index_doc()["manifests"]:
            d = Descriptor.from_dict(m, "index.json entry")
            out.append(IndexEntry(d.annotations.get(REF_NAME, ""), d))
        return out

    def find(self, name: str) -> Descriptor | None:
        for e in self.entries():
            if e.name == name:
                return e.descriptor
        return None

    def select(self, tag: str = "") -> Descriptor:
        """The entry named ``tag``; without one, the layout's only image.

        Referrer fallback tags (``sha256-<hex>``) do not count as images.
        """
        self.check()
        entries = self.entries()
        if tag:
            matches = [e for e in entries if e.name == tag]
            if not matches:
                raise NotFoundError(f"no image tagged {tag!r} in {self.root}")
        else:
            matches = [e for e in entries if not e.name.startswith("sha256-")]
            if len(matches) != 1:
                raise NotFoundError(f"{self.root} holds {len(matches)} images: name one "
                                    f"with oci:{self.root}:TAG")
        return matches[0].descriptor

    def _write_index_doc(self, doc: dict[str, Any]) -> None:
        self._atomic_write(self.root / "index.json",
                           json.dumps(doc, indent=None, separators=(",", ":")).encode())

    def _atomic_write(self, path: Path, data: bytes) -> None:
        import tempfile  # only writers pay for it

        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=path.name + "-")
        except OSError as e:
            raise _store_error(e, str(path)) from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            _unlink_quiet(Path(tmp))
            raise _store_error(e, str(path)) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock for read-modify-write of index.json."""
        lock_path = self.root / ("lock" if isinstance(self, Store) else ".lock")
        with _open_lock(lock_path) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def set_name(self, name: str, desc: Descriptor, extra: dict[str, str] | None = None) -> None:
        """Point ``name`` at ``desc``: one entry per name, replacing any earlier one."""
        ann = {k: v for k, v in desc.annotations.items() if k not in (REF_NAME, INDEX_DIGEST)}
        ann.update(extra or {})
        if name:
            ann[REF_NAME] = name
        entry = desc.with_annotations(ann).to_dict()
        with self.locked():
            doc = self._read_index_doc()
            kept = [m for m in doc["manifests"]
                    if not (name and (m.get("annotations") or {}).get(REF_NAME) == name)]
            if not name:
                kept = [m for m in kept if not (m.get("digest") == str(desc.digest)
                                                and not (m.get("annotations") or {}).get(REF_NAME))]
            kept.append(entry)
            doc["manifests"] = kept
            doc.setdefault("schemaVersion", 2)
            doc.setdefault("mediaType", mt.OCI_INDEX)
            self._write_index_doc(doc)

    def remove_name(self, name: str) -> Descriptor:
        with self.locked():
            doc = self._read_index_doc()
            found = None
            kept = []
            for m in doc["manifests"]:
                if (m.get("annotations") or {}).get(REF_NAME) == name and found is None:
                    found = Descriptor.from_dict(m)
                else:
                    kept.append(m)
            if found is None:
                raise NotFoundError(f"no image named {name} in {self.root}")
            doc["manifests"] = kept
            self._write_index_doc(doc)
        return found


class Store(Layout):
    """The ocikit store: a layout plus ingest/, tmp/, snapshots/, containers/, volumes/."""

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP

    @property
    def ingest_dir(self) -> Path:
        return self.root / "ingest"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / SNAPSHOTS

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    _index_hint = ("; ocikit leaves it as it is: repair it or restore a copy, or move it "
                   "away to start with no image names (the blobs stay until gc)")

    def init(self) -> None:
        if (self.root.is_symlink() or self.root.exists()) and not self.root.is_dir():
            raise StoreError(f"cannot use {self.root} as the store: it is not a directory "
                             "(see OCIKIT_STORE or --store)")
        try:
            self._create()
            for d in (self.ingest_dir, self.snapshots_dir, self.containers_dir,
                      self.volumes_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _store_error(e, str(self.root)) from None
            raise StoreError(f"cannot use {self.root} as the store: "
                             f"{e.strerror or e}" + (f" ({e.filename})" if e.filename and
                                                     str(e.filename) != str(self.root)
                                                     else "")) from None

    def _missing(self, digest: Digest) -> NotFoundError:
        return NotFoundError(f"blob {digest} is missing from the store {self.root} "
                             "(pull the image again)")

    def _corrupt(self, digest: Digest, seen: os.stat_result) -> None:
        # Set the damaged file aside (gc removes it from tmp/): has_blob() is
        # then false, so the next pull fetches the blob again instead of
        # trusting it. Only the very file that was read moves; a good copy
        # that a pull renamed into place meanwhile stays.
        path = self.blob_path(digest)
        moved = False
        with contextlib.suppress(OSError):
            now = path.stat()
            if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                os.rename(path, self.tmp_dir / f"corrupt-{digest.hex}-{os.urandom(4).hex()}")
                moved = True
        raise VerificationError(
            f"blob {digest} in the store {self.root} is corrupt (its bytes do not match its "
            "digest)" + ("; it was set aside: pull the image again" if moved else ""))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        # index.json is written through tmp/, which gc empties: keep gc out.
        with self.writing(), super().locked():
            yield

    @contextlib.contextmanager
    def _gc_flock(self, mode: int) -> Iterator[None]:
        with _open_lock(self.tmp_dir / GC_LOCK) as f:
            fcntl.flock(f.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) while blobs are written that no name points at yet.

        ``gc`` takes it exclusively, so it never collects the blobs of a
        pull that is still running.
        """
        return self._gc_flock(fcntl.LOCK_SH)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        return self._gc_flock(fcntl.LOCK_EX)

    @contextlib.contextmanager
    def ingesting(self, digest: Digest) -> Iterator[Path]:
        """Exclusive use of ``digest``'s partial download, across processes.

        Two pulls sharing a layer must not append to one partial file; the
        second waits, then finds the blob stored.
        """
        partial = self.ingest_path(digest)
        lock_path = partial.with_name(partial.name + ".lock")
        while True:
            f = _open_lock(lock_path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                # The holder before us may have removed the lock file: then our
                # lock is on a dead inode and we must take the new one.
                if os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            f.close()
        try:
            yield partial
        finally:
            if not partial.exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock_path)
            f.close()

    def ingest_path(self, digest: Digest) -> Path:
        """Where a partial download of ``digest`` lives between runs."""
        return self.ingest_dir / f"{digest.algorithm}-{digest.hex}"


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
