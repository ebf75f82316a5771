"""What differs between two images: layers, config, and files.

Layers are compared by descriptor only (no blob is read): shared by digest,
the same content recompressed (same diff_id, another digest), or differing.

Files are compared without unpacking anything: both root filesystems are
modelled from tar headers (oci/fstree.py). The layers the two images start
with (same diff_ids) build one base tree, read once, headers only; each
image's own layers are read with their contents hashed and applied to a
copy-on-write fork of that base. Files of the base are hashed only where an
upper layer writes the same path, or later, where a comparison needs it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from ocikit.oci.descriptor import Descriptor, ImageConfig, Manifest
from ocikit.oci.digest import Digest
from ocikit.oci.fstree import (
    DIR,
    FILE,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    FsTree,
    LayerApplier,
    Node,
    Path,
    clean_name,
    hash_member,
    read_members,
    show,
)
from ocikit.oci.layer import open_layer
from ocikit.oci.tarstream import LINK, Member, TarReader

SHARED = "shared"
RECOMPRESSED = "recompressed"
ONLY_A = "only-a"
ONLY_B = "only-b"

ADDED = "added"
REMOVED = "removed"
CHANGED = "changed"

_HASH_BUF = 1 << 20
_READ_BUF = 1 << 20
# Layers read at once: each inflates in a thread of its own (zlib and isal
# release the GIL), so two keep two cores busy.
_READERS = 2


# -- layers ---------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSide:
    index: int
    descriptor: Descriptor
    diff_id: Digest | None

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size


@dataclass(frozen=True)
class LayerPair:
    status: str  # SHARED, RECOMPRESSED, ONLY_A or ONLY_B
    a: LayerSide | None
    b: LayerSide | None


@dataclass(frozen=True)
class LayerDiff:
    pairs: tuple[LayerPair, ...]
    # How many bottom layers the images have in common (by diff_id): the
    # root filesystems are identical up to there.
    common_base: int

    def count(self, status: str) -> int:
        return sum(1 for p in self.pairs if p.status == status)

    def size(self, status: str, side: str = "a") -> int:
        total = 0
        for p in self.pairs:
            s = p.a if side == "a" else p.b
            if p.status == status and s is not None:
                total += s.size
        return total


def _sides(m: Manifest, cfg: ImageConfig) -> list[LayerSide]:
    ids: Sequence[Digest | None] = cfg.diff_ids
    if len(ids) != len(m.layers):
        ids = [None] * len(m.layers)
    return [LayerSide(i, d, ids[i]) for i, d in enumerate(m.layers)]


def common_base(a: Sequence[LayerSide], b: Sequence[LayerSide]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        same = x.diff_id == y.diff_id if x.diff_id and y.diff_id else x.digest == y.digest
        if not same:
            break
        n += 1
    return n


def diff_layers(ma: Manifest, ca: ImageConfig, mb: Manifest, cb: ImageConfig) -> LayerDiff:
    """Pairs each layer of A with one of B: same digest first, else same diff_id."""
    a, b = _sides(ma, ca), _sides(mb, cb)
    free = list(b)
    pairs: list[LayerPair] = []
    for x in a:
        match = next((y for y in free if y.digest == x.digest), None)
        status = SHARED
        if match is None and x.diff_id is not None:
            match = next((y for y in free if y.diff_id == x.diff_id), None)
            status = RECOMPRESSED
        if match is None:
            pairs.append(LayerPair(ONLY_A, x, None))
            continue
        free.remove(match)
        pairs.append(LayerPair(status, x, match))
    pairs += [LayerPair(ONLY_B, None, y) for y in free]
    return LayerDiff(tuple(pairs), common_base(a, b))


# -- config ---------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigChange:
    field: str  # "Env", "Cmd", "ExposedPorts", ...
    key: str  # the variable, label or port; "" for whole-value fields
    a: Any  # None where A does not have it
    b: Any

    def to_dict(self) -> dict[str, Any]:
        return {"Field": self.field, "Key": self.key, "A": self.a, "B": self.b}


def _env(env: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in env:
        k, _, v = e.partition("=")
        out[k] = v
    return out


def _keyed(field: str, a: dict[str, Any], b: dict[str, Any]) -> list[ConfigChange]:
    return [ConfigChange(field, k, a.get(k), b.get(k))
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def diff_config(a: ImageConfig, b: ImageConfig) -> list[ConfigChange]:
    out: list[ConfigChange] = []
    for field, x, y in (("Platform", str(a.platform), str(b.platform)),
                        ("Entrypoint", a.entrypoint, b.entrypoint), ("Cmd", a.cmd, b.cmd),
                        ("User", a.user, b.user), ("WorkingDir", a.working_dir, b.working_dir),
                        ("StopSignal", a.stop_signal, b.stop_signal)):
        xv = list(x) if isinstance(x, tuple) else x
        yv = list(y) if isinstance(y, tuple) else y
        if xv != yv:
            out.append(ConfigChange(field, "", xv, yv))
    out += _keyed("Env", _env(a.env), _env(b.env))
    out += _keyed("Labels", a.labels, b.labels)
    for field, xs, ys in (("ExposedPorts", a.exposed_ports, b.exposed_ports),
                          ("Volumes", a.volumes, b.volumes)):
        out += _keyed(field, dict.fromkeys(xs, True), dict.fromkeys(ys, True))
    return out


# -- files ----------------------------------------------------------------------

@dataclass(frozen=True)
class LayerInput:
    """A layer blob to read: ``open_blob()`` gives the compressed bytes."""

    name: str  # its digest, for messages
    media_type: str
    diff_id: Digest | None
    open_blob: Callable[[], BinaryIO]


@dataclass(frozen=True)
class FileState:
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    link: str  # symlink target
    digest: str | None  # of a regular file's content, where it was read
    device: str  # "major,minor" of a device node

    @classmethod
    def of(cls, n: Node) -> FileState:
        dev = f"{n.devmajor},{n.devminor}" if n.kind in ("char", "block") else ""
        return cls(n.kind, n.size, n.mode, n.uid, n.gid, n.link, n.digest, dev)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"Type": self.type, "Size": self.size, "Mode": f"{self.mode:04o}",
                             "Uid": self.uid, "Gid": self.gid}
        if self.link:
            d["Link"] = self.link
        if self.digest:
            d["Digest"] = self.digest
        if self.device:
            d["Device"] = self.device
        return d


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # ADDED, REMOVED or CHANGED
    fields: tuple[str, ...]  # for CHANGED: type, size, mode, owner, link, device, content
    a: FileState | None
    b: FileState | None

    def to_dict(self) -> dict[str, Any]:
        return {"Path": self.path, "Change": self.change, "Fields": list(self.fields),
                "A": self.a.to_dict() if self.a else None,
                "B": self.b.to_dict() if self.b else None}


@dataclass(frozen=True)
class FileDiff:
    changes: tuple[FileChange, ...]
    layers_read: tuple[str, ...]  # digests of the layers streamed, in order

    def of(self, change: str) -> list[FileChange]:
        return [c for c in self.changes if c.change == change]

    @property
    def added_bytes(self) -> int:
        return sum(c.b.size for c in self.changes
                   if c.change == ADDED and c.b is not None and c.b.type == FILE)

    @property
    def removed_bytes(self) -> int:
        return sum(c.a.size for c in self.changes
                   if c.change == REMOVED and c.a is not None and c.a.type == FILE)


_Record = tuple[Member, str | None]


def read_layer(layer: LayerInput, fn: Callable[[int, Member, TarReader], None]) -> None:
    """Reads one layer's members through ``fn``, then to its end to verify the diff_id."""
    with contextlib.closing(layer.open_blob()) as blob, \
            open_layer(blob, layer.media_type, layer.diff_id, layer=layer.name) as s:
        # Keep the buffer referenced until verify(): collecting it closes ``s``.
        buffered = io.BufferedReader(s, _READ_BUF)
        read_members(buffered, layer.name, fn)
        s.verify()
        del buffered


def _key(layer: LayerInput) -> str:
    return str(layer.diff_id) if layer.diff_id else layer.name


def _record(layer: LayerInput, hash_only: set[Path] | None = None) -> list[_Record]:
    """Every member of the layer; regular files with their content digests, or
    with ``hash_only``, only those it names."""
    out: list[_Record] = []
    buf = bytearray(_HASH_BUF)

    def take(_ordinal: int, m: Member, reader: TarReader) -> None:
        digest = None
        if m.is_file() and (hash_only is None or clean_name(m.name) in hash_only):
            digest = hash_member(reader, m.size, buf)
        out.append((m, digest))

    read_layer(layer, take)
    return out


def _named(records: list[_Record]) -> set[Path]:
    """The paths (as written) an upper layer touches: what the base must hash."""
    out: set[Path] = set()
    for m, _ in records:
        parts = clean_name(m.name)
        if parts and parts[-1].startswith(WHITEOUT_PREFIX) and parts[-1] != OPAQUE_MARKER:
            parts = (*parts[:-1], parts[-1][len(WHITEOUT_PREFIX):])
        out.add(parts)
        if m.type == LINK:
            out.add(clean_name(m.linkname))
    return out


def _known(digest: str | None) -> Callable[[Path], str | None]:
    return lambda _path: digest


def _apply_records(tree: FsTree, records: list[_Record], layer: int, name: str) -> None:
    applier = LayerApplier(tree, layer, name)
    for ordinal, (m, digest) in enumerate(records):
        applier.entry(m, ordinal, _known(digest))


class _Comparison:
    def __init__(self) -> None:
        self.out: list[FileChange] = []
        self.pending: list[tuple[Path, Node, Node, list[str]]] = []

    def walk(self, path: Path, a: Node | None, b: Node | None) -> None:
        # A loop, not recursion: a layer may nest directories thousands deep.
        stack: list[tuple[Path, Node | None, Node | None]] = [(path, a, b)]
        while stack:
            stack += reversed(self._one(*stack.pop()))

    def _one(self, path: Path, a: Node | None, b: Node | None
             ) -> list[tuple[Path, Node | None, Node | None]]:
        """Compares one path; returns the pairs below it to compare next."""
        if a is b:
            return []  # the same object: untouched since the common base
        if a is None:
            assert b is not None
            self.out += [FileChange(show(p), ADDED, (), None, FileState.of(n))
                         for p, n in b.walk(path)]
            return []
        if b is None:
            self.out += [FileChange(show(p), REMOVED, (), FileState.of(n), None)
                         for p, n in a.walk(path)]
            return []
        # Always in this order: type, size, mode, owner, link, device, content.
        # Another type makes size, link and content meaningless to compare.
        same = a.kind == b.kind
        fields: list[str] = [] if same else ["type"]
        if same and a.size != b.size:
            fields.append("size")
        if a.mode != b.mode:
            fields.append("mode")
        if (a.uid, a.gid) != (b.uid, b.gid):
            fields.append("owner")
        if same and a.link != b.link:
            fields.append("link")
        if same and (a.devmajor, a.devminor) != (b.devmajor, b.devminor):
            fields.append("device")
        if same and a.kind == FILE:
            if a.size != b.size:
                fields.append("content")
            elif a.digest is None or b.digest is None:
                self.pending.append((path, a, b, fields))
                return []
            elif a.digest != b.digest:
                fields.append("content")
        if fields:
            self.out.append(FileChange(show(path), CHANGED, tuple(fields), FileState.of(a),
                                       FileState.of(b)))
        ac = a.children if a.kind == DIR and a.children else {}
        bc = b.children if b.kind == DIR and b.children else {}
        return [((*path, name), ac.get(name), bc.get(name))
                for name in sorted(ac.keys() | bc.keys())]

    def finish(self) -> tuple[FileChange, ...]:
        for path, a, b, fields in self.pending:
            if a.digest != b.digest:
                fields.append("content")
            if fields:
                self.out.append(FileChange(show(path), CHANGED, tuple(fields), FileState.of(a),
                                           FileState.of(b)))
        self.pending.clear()
        return tuple(sorted(self.out, key=lambda c: c.path))


def _fill_digests(base: Sequence[LayerInput], nodes: list[Node], read: list[str]) -> None:
    """Hash base files a comparison needs and the first pass skipped (rare)."""
    buf = bytearray(_HASH_BUF)
    want: dict[tuple[int, int], list[Node]] = {}
    for n in nodes:
        if n.digest is None and n.src is not None:
            want.setdefault(n.src, []).append(n)
    for layer in sorted({src[0] for src in want}):
        def take(ordinal: int, m: Member, reader: TarReader, layer: int = layer) -> None:
            waiting = want.get((layer, ordinal))
            if waiting:
                digest = hash_member(reader, m.size, buf)
                for n in waiting:
                    n.digest = digest

        read_layer(base[layer], take)
        read.append(base[layer].name)


def diff_files(base: Sequence[LayerInput], upper_a: Sequence[LayerInput],
               upper_b: Sequence[LayerInput]) -> FileDiff:
    """Files added, removed and changed from image A to image B.

    ``base`` are the bottom layers both images have (same diff_ids, in
    order); ``upper_a`` and ``upper_b`` the layers each has above them.
    """
    if not upper_a and not upper_b:
        return FileDiff((), ())  # the same layers make the same tree
    read: list[str] = []
    # Upper layers first, recorded with their digests: they say which base
    # files need hashing. A layer both images have above the base is read once.
    uppers: dict[str, LayerInput] = {}
    for layer in (*upper_a, *upper_b):
        uppers.setdefault(_key(layer), layer)
    with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="ocikit-diff") as pool:
        recorded = dict(zip(uppers, pool.map(_record, uppers.values()), strict=True))
        read += [layer.name for layer in uppers.values()]
        needed: set[Path] = set()
        for records in recorded.values():
            needed |= _named(records)
        # The base, headers only (and the few files named above), layers read
        # side by side and applied in order.
        base_records = list(pool.map(lambda layer: _record(layer, needed), base))
        read += [layer.name for layer in base]
    tree = FsTree()
    for i, (layer, records) in enumerate(zip(base, base_records, strict=True)):
        _apply_records(tree, records, i, layer.name)
    base_records.clear()

    trees = []
    offset = len(base)
    for side in (upper_a, upper_b):
        t = tree.fork()
        for layer in side:
            _apply_records(t, recorded[_key(layer)], offset, layer.name)
            offset += 1
        trees.append(t)

    cmp = _Comparison()
    cmp.walk((), trees[0].root, trees[1].root)
    if cmp.pending:
        _fill_digests(base, [n for _, a, b, _ in cmp.pending for n in (a, b)], read)
    return FileDiff(cmp.finish(), tuple(read))


__all__ = ["ADDED", "CHANGED", "ONLY_A", "ONLY_B", "RECOMPRESSED", "REMOVED", "SHARED",
           "ConfigChange", "FileChange", "FileDiff", "FileState", "LayerDiff", "LayerInput",
           "LayerPair", "LayerSide", "common_base", "diff_config", "diff_files", "diff_layers",
           "read_layer"]
