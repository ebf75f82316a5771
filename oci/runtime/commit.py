"""A container's changes, read from its overlayfs upper dir: ``diff`` lines and a layer tar.

In an upper dir a deleted file is a whiteout, a 0/0 character device (the
kernel may give many whiteouts one inode, so they are recognised before
hardlinks are grouped), and a directory that replaced a lower one carries
``trusted.overlay.opaque=y``. An OCI layer spells these ``.wh.NAME`` and
``DIR/.wh..wh..opq``. overlayfs keeps its own ``trusted.overlay.*`` xattrs
on upper files and stores one that a container wrote itself escaped as
``trusted.overlay.overlay.*``: the former are dropped, the latter unescaped.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ocikit.oci.digest import Digest
from ocikit.oci.runtime.mounts import layer_lookup

_OVERLAY_XATTR = "trusted.overlay."
_ESCAPED_XATTR = "trusted.overlay.overlay."
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


@dataclass(frozen=True)
class Change:
    """One ``docker diff`` line: ``kind`` is A (added), C (changed) or D (deleted)."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) in (b"y",)
    except OSError:
        return False


def _walk(upper: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, absolute path, lstat) depth-first, parents first, names sorted."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(upper, rel_dir)
        try:
            names = sorted(os.listdir(abs_dir))
        except OSError:
            continue
        subdirs = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(abs_dir, name)
            st = os.lstat(path)
            yield rel, path, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        # reversed so the stack pops them in sorted order
        stack.extend(reversed(subdirs))


def _lower_children(lower_dirs: Sequence[str], rel: str) -> set[str]:
    """Names visible in directory ``rel`` of the lower layers' overlay."""
    seen: set[str] = set()
    hidden: set[str] = set()
    for layer in lower_dirs:
        d = os.path.join(layer, rel)
        try:
            entries = list(os.scandir(d))
        except OSError:
            entries = []
        for e in entries:
            if e.name in seen or e.name in hidden:
                continue
            try:
                if is_whiteout(e.stat(follow_symlinks=False)):
                    hidden.add(e.name)
                    continue
            except OSError:
                continue
            seen.add(e.name)
        if entries and is_opaque(d):
            break
    return seen


def container_diff(upper_dir: str, lower_dirs: Sequence[str]) -> list[Change]:
    """``docker diff``: what the upper dir adds (A), changes (C) or deletes (D), sorted."""
    changes: list[Change] = []
    for rel, path, st in _walk(upper_dir):
        if is_whiteout(st):
            changes.append(Change("D", "/" + rel))
            continue
        in_lower = layer_lookup(lower_dirs, rel) is not None
        changes.append(Change("C" if in_lower else "A", "/" + rel))
        if stat.S_ISDIR(st.st_mode) and in_lower and is_opaque(path):
            present = set(os.listdir(path))
            for name in sorted(_lower_children(lower_dirs, rel) - present):
                changes.append(Change("D", f"/{rel}/{name}"))
    changes.sort(key=lambda c: c.path)
    return changes


class _HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        import hashlib

        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def _xattrs(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if name.startswith(_ESCAPED_XATTR):
            key = _OVERLAY_XATTR + name[len(_ESCAPED_XATTR):]
        elif name.startswith(_OVERLAY_XATTR):
            continue
        else:
            key = name
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return out


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.mtime = int(st.st_mtime)
    return ti


def upper_to_layer_tar(upper_dir: str, out: BinaryIO) -> tuple[Digest, int]:
    """Write the upper dir as an uncompressed OCI layer to ``out``; returns (diff_id, size)."""
    w = _HashingWriter(out)
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for rel, path, st in _walk(upper_dir):
            if is_whiteout(st):
                # checked before hardlink grouping: whiteouts may share an inode
                parent, _, name = rel.rpartition("/")
                wh = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name
                ti = tarfile.TarInfo(wh)
                ti.mode = 0o644
                ti.mtime = int(st.st_mtime)
                tf.addfile(ti)
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                ti = _info(rel, st, tarfile.DIRTYPE)
                ti.pax_headers = _xattrs(path)
                tf.addfile(ti)
                if is_opaque(path):
                    marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
                    marker.mode = 0o644
                    marker.mtime = int(st.st_mtime)
                    tf.addfile(marker)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    ti = _info(rel, st, tarfile.LNKTYPE)
                    ti.linkname = links[key]
                    tf.addfile(ti)
                    continue
                if st.st_nlink > 1:
                    links[key] = rel
                ti = _info(rel, st, tarfile.REGTYPE)
                ti.size = st.st_size
                ti.pax_headers = _xattrs(path)
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
            elif stat.S_ISLNK(mode):
                ti = _info(rel, st, tarfile.SYMTYPE)
                ti.linkname = os.readlink(path)
                ti.pax_headers = _xattrs(path)
                tf.addfile(ti)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                ti = _info(rel, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tf.addfile(ti)
            elif stat.S_ISFIFO(mode):
                tf.addfile(_info(rel, st, tarfile.FIFOTYPE))
            # sockets cannot be carried in a tar; docker skips them too
    return Digest("sha256", w.hash.hexdigest()), w.size
