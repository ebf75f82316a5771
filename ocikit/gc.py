"""Garbage collection: blobs no name reaches, leftovers of killed commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass

from ocikit.errors import OcikitError, StoreError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor, Index, Manifest
from ocikit.oci.digest import Digest
from ocikit.oci.layout import INDEX_DIGEST, Layout, Store

# A command reading an archive or a remote layer keeps files in tmp/ without
# holding the store's write lock (it may run long); what a killed command
# left there is old. So gc leaves recent entries alone.
TMP_GRACE = 3600.0


@dataclass(frozen=True)
class GcResult:
    blobs_removed: int
    bytes_freed: int
    partials_removed: int
    snapshots_removed: int = 0


def _unreadable(name: str, desc: Descriptor, why: str) -> StoreError:
    who = f"image {name}" if name else "an unnamed index.json entry"
    return StoreError(f"gc: {who} points at manifest {desc.digest}, which {why}, so what it "
                      f"uses is unknown; nothing was removed (pull it again or rmi it)")


def reachable(layout: Layout) -> set[Digest]:
    """Every blob some index.json entry reaches (manifests, configs, layers).

    A named manifest that is missing or unreadable raises StoreError: the
    layers below it cannot be known, and guessing would delete them.
    """
    keep: set[Digest] = set()
    entries = layout.entries()
    todo: list[tuple[str, Descriptor, bool]] = [(e.name, e.descriptor, True) for e in entries]
    for e in entries:
        idx = e.descriptor.annotations.get(INDEX_DIGEST)
        if idx:
            with contextlib.suppress(OcikitError):
                d = Digest.parse(idx)
                if layout.has_blob(d):
                    todo.append((e.name, Descriptor("", d, layout.blob_size(d)), False))
    while todo:
        name, desc, required = todo.pop()
        if desc.digest in keep:
            continue
        keep.add(desc.digest)
        if desc.media_type and desc.media_type not in mt.MANIFESTS + mt.INDEXES:
            continue  # an entry for a plain blob: nothing below it
        if not layout.has_blob(desc.digest):
            if required:
                raise _unreadable(name, desc, "is missing")
            continue
        try:
            parsed = layout.read_manifest(desc).parsed
        except OcikitError as e:
            if required or desc.media_type:
                raise _unreadable(name, desc, f"cannot be read ({e})") from None
            continue  # the optional index copy, not a manifest after all
        if isinstance(parsed, Index):
            # Platforms that were not pulled are simply absent.
            todo.extend((name, d, False) for d in parsed.manifests
                        if layout.has_blob(d.digest))
        elif isinstance(parsed, Manifest):
            keep.add(parsed.config.digest)
            keep.update(d.digest for d in parsed.layers)
            if parsed.subject is not None:
                keep.add(parsed.subject.digest)
    return keep


def _snapshots_in_use(store: Store) -> set[str]:
    """Snapshot folder names some stored image or some container needs."""
    from ocikit.oci.descriptor import ImageConfig
    from ocikit.oci.snapshot import chain_ids

    names: set[str] = set()
    for e in store.entries():
        try:
            m = store.read_manifest(e.descriptor).parsed
            if isinstance(m, Manifest):
                cfg = ImageConfig.parse(store.read_blob(m.config.digest))
                names.update(c.hex for c in chain_ids(cfg.diff_ids))
        except OcikitError:
            continue
    containers = store.containers_dir
    if containers.is_dir():
        for d in containers.iterdir():
            try:
                spec = json.loads((d / "config.json").read_text())
            except (OSError, ValueError):
                continue
            names.update(os.path.basename(p) for p in spec.get("lower_dirs") or ())
    return names


def _collect_snapshots(store: Store) -> tuple[int, int]:
    if not store.snapshots_dir.is_dir():
        return 0, 0
    keep = _snapshots_in_use(store)
    removed = freed = 0
    for d in store.snapshots_dir.iterdir():
        if d.name in keep or not d.is_dir() or d.is_symlink():
            continue
        freed += sum(f.lstat().st_size for f in d.rglob("*") if not f.is_dir())
        shutil.rmtree(d, ignore_errors=True)
        removed += 1
    return removed, freed


def collect(store: Store, *, partials: bool = True, snapshots: bool = True) -> GcResult:
    removed = freed = partial_count = snap_count = 0
    with store.collecting():
        keep = reachable(store)
        for digest in list(store.iter_blobs()):
            if digest in keep:
                continue
            path = store.blob_path(digest)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            freed += size
        if partials and store.ingest_dir.is_dir():
            for p in store.ingest_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    freed += p.stat().st_size
                    p.unlink()
                    partial_count += 1
        if snapshots:
            snap_count, snap_bytes = _collect_snapshots(store)
            freed += snap_bytes
        if store.tmp_dir.is_dir():
            now = time.time()
            for p in store.tmp_dir.iterdir():
                if p.name == "gc.lock":
                    continue
                try:
                    if now - p.lstat().st_mtime < TMP_GRACE:
                        continue
                except FileNotFoundError:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
    return GcResult(removed, freed, partial_count, snap_count)
