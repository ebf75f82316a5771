"""Docker archives: what ``docker save`` writes and ``docker load`` reads.

A docker-archive is a tar holding ``manifest.json``, a list of images::

    [{"Config": "<hex>.json", "RepoTags": ["busybox:latest"],
      "Layers": ["<id>/layer.tar", ...]}]

with the config and the layer tars beside it. Two shapes exist: the classic
one (``<hex>.json``, ``<id>/layer.tar``, a ``repositories`` file) and, since
Docker 25, an OCI layout inside the tar (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``) whose ``manifest.json`` names blobs. Both are read;
the classic one is written, uncompressed, as ``docker save`` does.

An archive has no manifest in the classic shape, so one is made from the
config and the layers (``synthesize_manifest``); its digest is new. In the
OCI shape the stored manifest is used as it is, keeping its digest.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from ocikit.errors import NotFoundError, StoreError, UsageError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    ManifestBlob,
    parse_manifest,
)
from ocikit.oci.digest import Digest, sha256_of
from ocikit.oci.reference import Reference

MANIFEST_JSON = "manifest.json"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Fixed so that writing the same image twice gives the same archive.
ARCHIVE_MTIME = 0
FORMAT_DOCKER = "docker"
FORMAT_OCI = "oci"


def _norm(name: str) -> str:
    name = posixpath.normpath(name.lstrip("/"))
    return "" if name == "." else name


@dataclass(frozen=True)
class ArchiveImage:
    """One entry of ``manifest.json``."""

    config: str  # member name of the config
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]  # member names of the layer tars, bottom first


@dataclass(frozen=True)
class ArchiveLayer:
    """A layer blob inside the archive: where it is and what it is."""

    member: str
    descriptor: Descriptor


class DockerArchive:
    """Reads a docker-archive file (plain, or compressed as a whole)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tmp: Path | None = None
        try:
            self._tmp = _decompressed_copy(self.path)
            self._tar = tarfile.open(self._tmp or self.path, "r:")
            self._members = {_norm(m.name): m for m in self._tar.getmembers()}
        except FileNotFoundError:
            raise NotFoundError(f"docker-archive {self.path} does not exist") from None
        except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as e:
            self.close()
            raise VerificationError(f"{self.path} is not a readable tar archive: {e}") from None
        self.what = f"docker-archive {self.path}"
        self.images = self._read_manifest_json()

    def close(self) -> None:
        tar = getattr(self, "_tar", None)
        if tar is not None:
            tar.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def __enter__(self) -> DockerArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- members ------------------------------------------------------------
    def _member(self, name: str) -> tarfile.TarInfo:
        m = self._members.get(_norm(name))
        if m is None:
            raise NotFoundError(f"{self.what} has no {name}")
        return m

    def has(self, name: str) -> bool:
        return _norm(name) in self._members

    def open(self, name: str) -> BinaryIO:
        """A member's bytes (a link is followed to its target)."""
        try:
            f = self._tar.extractfile(self._member(name))
        except (tarfile.TarError, KeyError) as e:
            raise VerificationError(f"{self.what}: cannot read {name}: {e}") from None
        if f is None:
            raise VerificationError(f"{self.what}: {name} is not a file")
        return cast(BinaryIO, f)

    def _resolve(self, name: str) -> tarfile.TarInfo:
        m = self._member(name)
        for _ in range(40):
            if not (m.islnk() or m.issym()):
                return m
            target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name),
                                                                  m.linkname)
            m = self._member(target)
        raise VerificationError(f"{self.what}: too many links at {name}")

    def size(self, name: str) -> int:
        return self._resolve(name).size

    def open_at(self, name: str, offset: int = 0) -> BinaryIO:
        """A member's bytes from ``offset``, readable beside other readers (threads)."""
        m = self._resolve(name)
        if not m.isfile():
            raise VerificationError(f"{self.what}: {name} is not a file")
        f = open(self._tmp or self.path, "rb")
        f.seek(m.offset_data + offset)
        return _Slice(f, m.size - offset)  # type: ignore[return-value]

    def read(self, name: str, limit: int) -> bytes:
        if self.size(name) > limit:
            raise VerificationError(f"{self.what}: {name} is larger than {limit} bytes")
        with self.open(name) as f:
            return f.read()

    # -- manifest.json ----------------------------------------------------------
    def _read_manifest_json(self) -> list[ArchiveImage]:
        if not self.has(MANIFEST_JSON):
            raise VerificationError(f"{self.what} has no manifest.json (not a docker save "
                                    "archive)")
        try:
            doc = json.loads(self.read(MANIFEST_JSON, MAX_MANIFEST_SIZE))
        except ValueError as e:
            raise VerificationError(f"{self.what}: invalid manifest.json: {e}") from None
        if not isinstance(doc, list) or not doc:
            raise VerificationError(f"{self.what}: manifest.json lists no image")
        out = []
        for i, entry in enumerate(doc):
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or \
                    not isinstance(entry.get("Layers"), list):
                raise VerificationError(f"{self.what}: manifest.json entry {i} lacks Config "
                                        "or Layers")
            out.append(ArchiveImage(str(entry["Config"]),
                                    tuple(str(t) for t in entry.get("RepoTags") or ()),
                                    tuple(str(x) for x in entry["Layers"])))
        return out

    def select(self, ref: str = "") -> ArchiveImage:
        """The image tagged ``ref`` (``name:tag`` or ``@N`` for the N-th), or the only one."""
        if not ref:
            if len(self.images) != 1:
                tags = ", ".join(t for img in self.images for t in img.repo_tags) or "untagged"
                raise UsageError(f"{self.what} holds {len(self.images)} images ({tags}): "
                                 f"name one as docker-archive:{self.path}:REF")
            return self.images[0]
        if ref.startswith("@") and ref[1:].isdigit():
            i = int(ref[1:])
            if i >= len(self.images):
                raise NotFoundError(f"{self.what} has no image @{i}")
            return self.images[i]
        want = _normalize_tag(ref)
        for img in self.images:
            if any(_normalize_tag(t) == want for t in img.repo_tags):
                return img
        raise NotFoundError(f"{self.what} has no image tagged {ref}")

    # -- the image as OCI or Docker content ------------------------------------
    def config_bytes(self, img: ArchiveImage) -> bytes:
        return self.read(img.config, MAX_CONFIG_SIZE)

    def stored_manifest(self, img: ArchiveImage, config_digest: Digest) -> ManifestBlob | None:
        """The OCI manifest an OCI-shaped archive keeps for ``img``, if any."""
        if not (self.has("index.json") and self.has("oci-layout")):
            return None
        try:
            doc = json.loads(self.read("index.json", MAX_MANIFEST_SIZE))
        except ValueError:
            return None
        todo = [Descriptor.from_dict(m) for m in (doc.get("manifests") or [])
                if isinstance(m, dict)]
        seen: set[Digest] = set()
        while todo:
            desc = todo.pop(0)
            if desc.digest in seen or len(seen) > 1000:
                continue
            seen.add(desc.digest)
            name = f"blobs/{desc.digest.algorithm}/{desc.digest.hex}"
            if not self.has(name):
                continue
            data = self.read(name, MAX_MANIFEST_SIZE)
            if sha256_of(data) != desc.digest:
                raise VerificationError(f"{self.what}: {name} does not match its digest")
            try:
                blob = parse_manifest(data, desc.media_type, what=f"{self.what}: {name}")
            except (VerificationError, UsageError):
                continue
            except Exception:
                continue
            if isinstance(blob.parsed, Index):
                todo.extend(blob.parsed.manifests)
            elif isinstance(blob.parsed, Manifest) and blob.parsed.config.digest == config_digest:
                return blob
        return None

    def blob_member(self, digest: Digest) -> str | None:
        name = f"blobs/{digest.algorithm}/{digest.hex}"
        return name if self.has(name) else None

    def sniff(self, name: str) -> str:
        with self.open(name) as f:
            head = f.read(4)
        if head.startswith(GZIP_MAGIC):
            return "gzip"
        if head.startswith(ZSTD_MAGIC):
            return "zstd"
        return "none"

    def layer_descriptors(self, img: ArchiveImage, config: ImageConfig,
                          fmt: str) -> list[ArchiveLayer]:
        """Descriptors of the layer tars as blobs, in the media types of ``fmt``."""
        if len(config.diff_ids) != len(img.layers):
            raise VerificationError(
                f"{self.what}: {len(img.layers)} layers but the config lists "
                f"{len(config.diff_ids)} diff_ids")
        out = []
        for name, diff_id in zip(img.layers, config.diff_ids, strict=True):
            compression = self.sniff(name)
            size = self.size(name)
            if compression == "none":
                # An uncompressed layer's digest is its diff_id: where the copy
                # lands (registry, layout) checks it against the bytes.
                digest = diff_id
            else:
                digest = _hash_member(self, name)
            out.append(ArchiveLayer(name, Descriptor(layer_media_type(compression, fmt),
                                                     digest, size)))
        return out


def _decompressed_copy(path: Path) -> Path | None:
    """A plain tar copy of an archive compressed as a whole (``docker save | gzip``).

    Members are then read at their offsets, several at once; None when the
    archive is a plain tar already.
    """
    with open(path, "rb") as f:
        head = f.read(6)
    opener: Callable[[BinaryIO], Any]
    if head.startswith(GZIP_MAGIC):
        opener = lambda f: gzip.GzipFile(fileobj=f)  # noqa: E731
    elif head.startswith(b"BZh"):
        opener = bz2.BZ2File
    elif head.startswith(b"\xfd7zXZ"):
        opener = lambda f: lzma.LZMAFile(f)  # noqa: E731
    elif head.startswith(ZSTD_MAGIC):
        opener = lambda f: zstandard.ZstdDecompressor().stream_reader(  # noqa: E731
            f, read_across_frames=True)
    else:
        return None
    fd, tmp = tempfile.mkstemp(prefix="ocikit-archive-", suffix=".tar")
    try:
        with open(path, "rb") as src, opener(src) as inner, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(inner, out, 1 << 20)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


class _Slice:
    """``size`` bytes of an open file from where it stands."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = max(0, size)

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n) if n else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _Slice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hash_member(archive: DockerArchive, name: str) -> Digest:
    h = hashlib.sha256()
    with archive.open(name) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return Digest("sha256", h.hexdigest())


def _normalize_tag(text: str) -> str:
    try:
        return str(Reference.parse(text))
    except Exception:
        return text


def layer_media_type(compression: str, fmt: str) -> str:
    if fmt == FORMAT_DOCKER and compression != "zstd":
        return mt.DOCKER_LAYER_GZIP if compression == "gzip" else mt.DOCKER_LAYER
    return {"gzip": mt.OCI_LAYER_GZIP, "zstd": mt.OCI_LAYER_ZSTD}.get(compression, mt.OCI_LAYER)


def synthesize_manifest(config: bytes, layers: Sequence[Descriptor], fmt: str) -> ManifestBlob:
    """A schema2 (``fmt`` "docker") or OCI manifest over a config and layer blobs."""
    docker = fmt == FORMAT_DOCKER and all(d.media_type.startswith("application/vnd.docker")
                                          for d in layers)
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
                   "size": len(config), "digest": str(sha256_of(config))},
        "layers": [{"mediaType": d.media_type, "size": d.size, "digest": str(d.digest)}
                   for d in layers],
    }
    data = json.dumps(doc, indent=3).encode()
    return parse_manifest(data, str(doc["mediaType"]), what="converted manifest")


# -- writing -------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveEntry:
    """One image to write: its config bytes, uncompressed layer files, tags."""

    config: bytes
    layers: tuple[tuple[Digest, Path], ...]  # (diff_id, file of the uncompressed tar)
    repo_tags: tuple[str, ...]


def _tarinfo(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = ARCHIVE_MTIME
    ti.uid = ti.gid = 0
    if directory:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
    else:
        ti.size = size
        ti.mode = 0o644
    return ti


def write_archive(path: Path, images: Sequence[ArchiveEntry]) -> None:
    """Write a classic ``docker save`` archive atomically (a temporary file, then rename)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w",
                                                      format=tarfile.PAX_FORMAT) as tf:
            manifest = []
            repositories: dict[str, dict[str, str]] = {}
            written: set[str] = set()
            for img in images:
                config_name = f"{sha256_of(img.config).hex}.json"
                if config_name not in written:
                    tf.addfile(_tarinfo(config_name, len(img.config)), io.BytesIO(img.config))
                    written.add(config_name)
                layer_names = []
                for diff_id, file in img.layers:
                    layer_dir = diff_id.hex
                    name = f"{layer_dir}/layer.tar"
                    if name not in written:
                        tf.addfile(_tarinfo(layer_dir, 0, directory=True))
                        with open(file, "rb") as f:
                            tf.addfile(_tarinfo(name, os.fstat(f.fileno()).st_size), f)
                        tf.addfile(_tarinfo(f"{layer_dir}/VERSION", 3), io.BytesIO(b"1.0"))
                        written.add(name)
                    layer_names.append(name)
                manifest.append({"Config": config_name, "RepoTags": list(img.repo_tags),
                                 "Layers": layer_names})
                for t in img.repo_tags:
                    repo, _, tag = t.rpartition(":")
                    if repo and img.layers:
                        repositories.setdefault(repo, {})[tag] = img.layers[-1][0].hex
            _add_json(tf, MANIFEST_JSON, manifest)
            if repositories:
                _add_json(tf, "repositories", repositories)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _add_json(tf: tarfile.TarFile, name: str, obj: object) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def repo_tag(ref: Reference) -> str:
    """How ``docker save`` names an image in RepoTags (familiar form, with a tag)."""
    tag = ref.tag or "latest"
    name = Reference(ref.registry, ref.repository, tag).familiar()
    return name


__all__ = ["FORMAT_DOCKER", "FORMAT_OCI", "ArchiveEntry", "ArchiveImage", "ArchiveLayer",
           "DockerArchive", "layer_media_type", "repo_tag", "synthesize_manifest",
           "write_archive"]
