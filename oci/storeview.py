"""A stored image's run-time facts, read straight from the store's files.

The container start path (``commands/fastrun.py``) needs only: which
manifest a name points at, the config's process fields, and the layer
snapshots. Reading them through ``Layout``/``Descriptor``/``ImageConfig``
would import the whole typed image model, which costs more here than
starting the container, so this module reads the same files as plain JSON.

It is a fast path, not a second implementation of the store's rules: it
answers only for the plain case (a tag name, a stored single-platform
manifest, every snapshot unpacked, every blob matching its digest) and
returns None for everything else, so the caller goes through the full image
machinery, which pulls, unpacks, selects platforms and reports errors.
Like every reader of the store, it hashes the blobs it reads.

Nothing here may import typing, pathlib or dataclasses.
"""

from __future__ import annotations

import hashlib
import json
import os

from ocikit.oci import mediatypes as mt

# index.json annotations (the store's own, see layout.py)
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_DIGEST = "io.ocikit.index.digest"
SNAPSHOTS = "snapshots"
TMP = "tmp"
GC_LOCK = "gc.lock"  # in tmp/: shared by writers, exclusive for gc

_HEX = frozenset("0123456789abcdef")


def is_sha256(text: object) -> bool:
    """``sha256:`` and 64 lowercase hex digits, the only digests the store names files by."""
    return (isinstance(text, str) and len(text) == 71 and text.startswith("sha256:")
            and _HEX.issuperset(text[7:]))


def chain_id_texts(diff_ids: list[str]) -> list[str]:
    """image-spec config.md: ChainID(L0) = DiffID(L0),
    ChainID(Ln) = SHA256(ChainID(Ln-1) + " " + DiffID(Ln)), as ``algorithm:hex``."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


class RunnableImage:
    """What a container needs of a stored image (a plain class: see the module doc)."""

    __slots__ = ("config", "config_digest", "manifest_digest", "manifest_type", "name",
                 "snapshots")

    def __init__(self, name: str, manifest_digest: str, manifest_type: str,
                 config_digest: str, config: dict[str, object],
                 snapshots: tuple[str, ...]) -> None:
        self.name = name
        self.manifest_digest = manifest_digest
        self.manifest_type = manifest_type
        self.config_digest = config_digest
        self.config = config  # the config JSON
        self.snapshots = snapshots  # bottom layer first


def _read_verified(root: str, digest: str, limit: int) -> bytes | None:
    try:
        with open(os.path.join(root, "blobs", "sha256", digest[len("sha256:"):]), "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        return None
    return data


def _json_object(data: bytes | None) -> dict[str, object] | None:
    if data is None:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def find_runnable(root: str, name: str) -> RunnableImage | None:
    """The image stored under the full reference ``name``, if it can run as it is."""
    index = _json_object(_read_file(os.path.join(root, "index.json")))
    entries = index.get("manifests") if index is not None else None
    if not isinstance(entries, list):
        return None
    entry = None
    for m in entries:
        ann = m.get("annotations") if isinstance(m, dict) else None
        if isinstance(ann, dict) and ann.get(REF_NAME) == name:
            entry = m
            break
    if entry is None or not is_sha256(entry.get("digest")):
        return None
    entry_type = entry.get("mediaType") or ""
    manifest_digest = str(entry["digest"])
    manifest = _json_object(_read_verified(root, manifest_digest, mt.MAX_MANIFEST_SIZE))
    if manifest is None or manifest.get("schemaVersion") != 2:
        return None
    body_type = manifest.get("mediaType") or ""
    if body_type and entry_type and body_type != entry_type:
        return None
    manifest_type = body_type or entry_type or mt.OCI_MANIFEST
    config_desc = manifest.get("config")
    layers = manifest.get("layers")
    if manifest_type not in mt.MANIFESTS or "manifests" in manifest or \
            not isinstance(config_desc, dict) or not isinstance(layers, list):
        return None
    config_digest = config_desc.get("digest")
    if not is_sha256(config_digest):
        return None
    assert isinstance(config_digest, str)
    config = _json_object(_read_verified(root, config_digest, mt.MAX_CONFIG_SIZE))
    rootfs = config.get("rootfs") if config is not None else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if config is None or not isinstance(diff_ids, list) or not diff_ids or \
            len(diff_ids) != len(layers) or not all(is_sha256(d) for d in diff_ids):
        return None
    # named by the hex alone, as snapshot.snapshot_path does
    snapshots = tuple(os.path.join(root, SNAPSHOTS, c.partition(":")[2])
                      for c in chain_id_texts(diff_ids))
    if not all(os.path.isdir(s) for s in snapshots):
        return None
    return RunnableImage(name, manifest_digest, manifest_type, config_digest, config, snapshots)


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
