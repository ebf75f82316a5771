"""What an image's layers store that its root filesystem never shows.

Two measures, from one read of every layer's tar headers:

* wasted bytes: regular files a later layer (or a later entry of the same
  layer) overwrites or removes, found by applying the layers as the
  extractor does (oci/fstree.py). Those bytes are in the layers and pulled,
  never seen.
* dive's efficiency score, computed as dive (wagoodman/dive,
  ``filetree.Efficiency``) does: every leaf of every layer's own tree is a
  sighting of its path, of its header size; a whiteout is a sighting of
  size 0, or of the whole size of the directory it removes; the score is the
  sum over paths of the smallest sighting divided by the sum of all
  sightings (1.0 when there is nothing). dive's "wasted bytes" are the
  sightings of paths seen more than once, all of them. As in dive, paths
  are taken as written (no symlinks followed) and opaque markers are not
  sightings; a whiteout of a path dive cannot find counts 0, where dive
  stops visiting the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ocikit.oci.diff import LayerInput, read_layer
from ocikit.oci.fstree import (
    FILE,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    FsTree,
    LayerApplier,
    Node,
    Path,
    clean_name,
    show,
)
from ocikit.oci.tarstream import DIR, Member, TarReader


@dataclass(frozen=True)
class WastedFile:
    path: str
    size: int
    layer: int  # the layer that wrote it (0 = bottom)
    by_layer: int  # the layer that overwrote or removed it
    how: str  # "overwritten" or "removed"


@dataclass(frozen=True)
class Inefficiency:
    """dive's view: one path seen in more than one layer."""

    path: str
    count: int
    cumulative_size: int


@dataclass(frozen=True)
class Efficiency:
    score: float  # dive's efficiency
    total_bytes: int  # regular file bytes in all layers
    user_bytes: int  # of the layers above the first (dive's "user" size)
    wasted_bytes: int  # regular file bytes overwritten or removed later
    dive_wasted_bytes: int
    wasted: tuple[WastedFile, ...]  # largest first
    inefficiencies: tuple[Inefficiency, ...]  # largest first
    layer_bytes: tuple[int, ...] = field(default=())

    @property
    def user_wasted_ratio(self) -> float:
        """dive's ``highestUserWastedPercent`` measure (a fraction)."""
        return self.dive_wasted_bytes / self.user_bytes if self.user_bytes else 0.0


class _DNode:
    """A path of dive's per-layer or stacked tree."""

    __slots__ = ("children", "is_dir", "size", "whiteout")

    def __init__(self) -> None:
        self.size = 0
        self.is_dir = True  # a parent that only children imply
        self.whiteout = False
        self.children: dict[str, _DNode] = {}

    def add(self, parts: Path) -> _DNode:
        node = self
        for c in parts:
            child = node.children.get(c)
            if child is None:
                child = node.children[c] = _DNode()
            node = child
        return node

    def get(self, parts: Path) -> _DNode | None:
        node: _DNode | None = self
        for c in parts:
            if node is None:
                return None
            node = node.children.get(c)
        return node

    def remove(self, parts: Path) -> None:
        parent = self.get(parts[:-1])
        if parent is not None:
            parent.children.pop(parts[-1], None)

    def total(self) -> int:
        return sum(n.size for _, n in self.walk(()))

    def walk(self, path: Path) -> list[tuple[Path, _DNode]]:
        """Children before parents, as dive's VisitDepthChildFirst (a loop: a
        layer may nest directories thousands deep)."""
        out: list[tuple[Path, _DNode]] = []
        stack: list[tuple[Path, _DNode]] = [(path, self)]
        while stack:
            p, n = stack.pop()
            out.append((p, n))
            stack += [((*p, name), n.children[name]) for name in sorted(n.children)]
        out.reverse()
        return out


class _Dive:
    def __init__(self) -> None:
        self.stacked = _DNode()
        # path -> [sightings, cumulative size, smallest size]
        self.seen: dict[Path, list[int]] = {}

    def layer_tree(self, members: list[Member]) -> _DNode:
        tree = _DNode()
        for m in members:
            parts = clean_name(m.name)
            if not parts:
                continue
            name = parts[-1]
            if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                tree.add(parts[:-1])  # dive keeps the directory, not the marker
                continue
            node = tree.add(parts)
            if name.startswith(WHITEOUT_PREFIX):
                node.whiteout = True
                node.is_dir = False
            else:
                node.size = m.size if m.is_file() else 0
                node.is_dir = m.type == DIR
        return tree

    def layer(self, members: list[Member]) -> None:
        tree = self.layer_tree(members)
        visits = [(p, n) for p, n in tree.walk(()) if p and not n.children]
        for path, node in visits:
            key = _plain(path)
            if node.whiteout:
                prev = self.stacked.get(key)
                size = prev.total() if prev is not None and prev.is_dir else 0
            else:
                size = node.size
            s = self.seen.get(key)
            if s is None:
                self.seen[key] = [1, size, size]
            else:
                s[0] += 1
                s[1] += size
                s[2] = min(s[2], size)
        for path, node in tree.walk(()):
            if not path:
                continue
            key = _plain(path)
            if node.whiteout:
                self.stacked.remove(key)
            else:
                target = self.stacked.add(key)
                target.size, target.is_dir = node.size, node.is_dir

    def result(self) -> tuple[float, int, list[Inefficiency]]:
        smallest = sum(s[2] for s in self.seen.values())
        cumulative = sum(s[1] for s in self.seen.values())
        score = smallest / cumulative if cumulative else 1.0
        inefficient = [Inefficiency(show(p), s[0], s[1]) for p, s in self.seen.items()
                       if s[0] > 1]
        inefficient.sort(key=lambda x: (-x.cumulative_size, x.path))
        return score, sum(x.cumulative_size for x in inefficient), inefficient


def _plain(path: Path) -> Path:
    name = path[-1]
    if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE_MARKER:
        return (*path[:-1], name[len(WHITEOUT_PREFIX):])
    return path


def efficiency(layers: Sequence[LayerInput]) -> Efficiency:
    """Reads every layer once (headers only) and measures both."""
    tree = FsTree()
    dive = _Dive()
    wasted: list[WastedFile] = []
    layer_bytes: list[int] = []

    def discard(path: Path, node: Node, by: int, how: str) -> None:
        # A hardlink's bytes are stored once, under its first name.
        if node.kind == FILE and not node.hardlink and node.size:
            wasted.append(WastedFile(show(path), node.size, node.layer, by, how))

    for i, layer in enumerate(layers):
        applier = LayerApplier(tree, i, layer.name, discard)
        members: list[Member] = []

        def take(ordinal: int, m: Member, _reader: TarReader,
                 applier: LayerApplier = applier, members: list[Member] = members) -> None:
            members.append(m)
            applier.entry(m, ordinal, lambda _p: None)

        read_layer(layer, take)
        dive.layer(members)
        layer_bytes.append(sum(m.size for m in members if m.is_file()))
    score, dive_wasted, inefficient = dive.result()
    wasted.sort(key=lambda w: (-w.size, w.path))
    return Efficiency(score=score, total_bytes=sum(layer_bytes),
                      user_bytes=sum(layer_bytes[1:]),
                      wasted_bytes=sum(w.size for w in wasted),
                      dive_wasted_bytes=dive_wasted, wasted=tuple(wasted),
                      inefficiencies=tuple(inefficient), layer_bytes=tuple(layer_bytes))


__all__ = ["Efficiency", "Inefficiency", "WastedFile", "efficiency"]
