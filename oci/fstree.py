"""A root filesystem modelled in memory from layer tar headers.

The model follows SPEC.md "Applying layers" as oci/unpack.py does on disk:
an entry's name is cleaned as text, its parent components resolve inside
the root (symlinks followed, confined; the last component never followed),
missing parents are created as directories, and a whiteout or opaque marker
hides only what lower layers put there (image-spec layer.md), whatever the
order of the tar.

Trees are copy-on-write: ``fork()`` gives a new version sharing every node;
a version copies a node (and its parents) the first time it changes it. Two
forks of one base therefore still share, as the very same objects, whatever
neither touched, and comparing them costs only what changed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ocikit.errors import LayerError, UnsafeLayerError
from ocikit.oci import tarstream as ts
from ocikit.oci.tarstream import Member, TarFormatError, TarReader, clean_name

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_READ_CHUNK = 1 << 20

FILE, DIR, SYMLINK, FIFO, CHAR, BLOCK = "file", "dir", "symlink", "fifo", "char", "block"
_KIND = {ts.REG: FILE, ts.AREG: FILE, ts.CONTIG: FILE, ts.DIR: DIR, ts.SYMLINK: SYMLINK,
         ts.FIFO: FIFO, ts.CHR: CHAR, ts.BLK: BLOCK}

Path = tuple[str, ...]
# Called with the real path and the node a layer removes or replaces.
DiscardFn = Callable[[Path, "Node", int, str], None]
# Given the real path of a regular file entry, its content digest or None.
HashFn = Callable[[Path], str | None]

_versions = itertools.count(1)


def show(path: Path) -> str:
    return "/" + "/".join(path)


class Node:
    """One file of the tree. ``src`` is (layer, entry ordinal) of the data it holds."""

    __slots__ = ("children", "devmajor", "devminor", "digest", "gid", "hardlink", "kind",
                 "layer", "link", "mode", "owner", "size", "src", "uid")

    def __init__(self, kind: str, owner: int, *, mode: int = 0o755, uid: int = 0, gid: int = 0,
                 size: int = 0, link: str = "", devmajor: int = 0, devminor: int = 0,
                 digest: str | None = None, layer: int = -1,
                 src: tuple[int, int] | None = None, hardlink: bool = False) -> None:
        self.kind = kind
        self.owner = owner
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.link = link
        self.devmajor = devmajor
        self.devminor = devminor
        self.digest = digest
        self.layer = layer  # the layer that wrote it; -1 for implicit directories
        self.src = src
        self.hardlink = hardlink  # a hardlink entry: its bytes are stored once, elsewhere
        self.children: dict[str, Node] | None = {} if kind == DIR else None

    def copy(self, owner: int) -> Node:
        n = Node(self.kind, owner, mode=self.mode, uid=self.uid, gid=self.gid, size=self.size,
                 link=self.link, devmajor=self.devmajor, devminor=self.devminor,
                 digest=self.digest, layer=self.layer, src=self.src, hardlink=self.hardlink)
        if self.children is not None:
            n.children = dict(self.children)
        return n

    def walk(self, path: Path) -> Iterator[tuple[Path, Node]]:
        """This node and everything below it, parents first, names sorted."""
        # A loop, not recursion: a layer may nest directories thousands deep.
        stack: list[tuple[Path, Node]] = [(path, self)]
        while stack:
            p, n = stack.pop()
            yield p, n
            if n.children:
                stack += [((*p, name), n.children[name])
                          for name in sorted(n.children, reverse=True)]


class FsTree:
    """A root filesystem; ``fork()`` for a copy-on-write sibling."""

    def __init__(self, root: Node | None = None) -> None:
        self.version = next(_versions)
        self.root = root if root is not None else Node(DIR, self.version)
        self._cache: dict[Path, tuple[Node, Path]] = {}

    def fork(self) -> FsTree:
        return FsTree(self.root)

    # -- nodes -------------------------------------------------------------
    def _own(self, parent: Node | None, name: str, node: Node) -> Node:
        if node.owner == self.version:
            return node
        mine = node.copy(self.version)
        if parent is None:
            self.root = mine
        else:
            assert parent.children is not None
            parent.children[name] = mine
        return mine

    def lookup(self, path: Path) -> Node | None:
        """The node at a real (symlink-free) path, without copying anything."""
        node: Node | None = self.root
        for c in path:
            if node is None or node.children is None:
                return None
            node = node.children.get(c)
        return node

    def resolve_dir(self, parts: Path, *, create: bool, what: str = "") -> tuple[Node, Path]:
        """The directory ``parts`` names, owned by this version, and its real path.

        Symlinks met on the way are followed inside the root: an absolute
        target restarts at the root, ``..`` stops there.
        """
        hit = self._cache.get(parts)
        if hit is not None:
            return hit
        root = self._own(None, "", self.root)
        stack: list[Node] = [root]
        path: list[str] = []
        todo = list(reversed(parts))
        hops = 0
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if path:
                    path.pop()
                    stack.pop()
                continue
            cur = stack[-1]
            assert cur.children is not None
            child = cur.children.get(c)
            if child is None:
                if not create:
                    raise LayerError(f"{show((*path, c))} does not exist{what}")
                child = Node(DIR, self.version)
                cur.children[c] = child
            elif child.kind == SYMLINK:
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise LayerError(f"too many levels of symbolic links at {show((*path, c))}")
                if child.link.startswith("/"):
                    del path[:]
                    del stack[1:]
                todo.extend(reversed(child.link.split("/")))
                continue
            elif child.kind != DIR:
                raise LayerError(f"{show((*path, c))} is not a directory{what}")
            else:
                child = self._own(cur, c, child)
            path.append(c)
            stack.append(child)
        found = (stack[-1], tuple(path))
        self._cache[parts] = found
        return found

    def forget(self) -> None:
        """Drop cached resolutions: a directory or symlink was removed or replaced."""
        self._cache.clear()


class LayerApplier:
    """Applies the entries of one layer to a tree.

    ``discard(path, node, layer, how)`` hears of every node of a lower layer
    (or an earlier entry of this one) that this layer removes or replaces;
    ``how`` is "overwritten" or "removed".
    """

    def __init__(self, tree: FsTree, layer: int, name: str,
                 discard: DiscardFn | None = None) -> None:
        self.tree = tree
        self.layer = layer
        self.name = name
        self.discard = discard
        self.touched: set[Path] = set()

    def _touch(self, path: Path) -> None:
        while path and path not in self.touched:
            self.touched.add(path)
            path = path[:-1]

    def _dropped(self, path: Path, node: Node, how: str) -> None:
        if node.kind in (DIR, SYMLINK):
            self.tree.forget()
        if self.discard is not None:
            for p, n in node.walk(path):
                self.discard(p, n, self.layer, how)

    def entry(self, m: Member, ordinal: int, content: HashFn) -> None:
        try:
            self._entry(m, ordinal, content)
        except LayerError as e:
            if e.entry:
                raise
            raise type(e)(f"layer {self.name}: {m.name}: {e}", layer=self.name,
                          entry=m.name) from None

    def _entry(self, m: Member, ordinal: int, content: HashFn) -> None:
        tree = self.tree
        parts = clean_name(m.name)
        if not parts:
            if m.type != ts.DIR:
                raise UnsafeLayerError("names the root but is not a directory")
            root = tree._own(None, "", tree.root)
            root.mode, root.uid, root.gid = m.mode, m.uid, m.gid
            return
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            d, dpath = tree.resolve_dir(parts[:-1], create=True)
            if name == OPAQUE_MARKER:
                self._touch(dpath)
                self._remove_lower_children(d, dpath)
            elif name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                pass  # whiteout metadata of other tools: nothing to apply
            elif name[len(WHITEOUT_PREFIX):] in ("", ".", ".."):
                raise UnsafeLayerError("a whiteout that names no entry")
            else:
                self._whiteout(d, dpath, name[len(WHITEOUT_PREFIX):])
            return
        if m.type == ts.LINK:
            self._hardlink(m, parts, ordinal)
            return
        kind = _KIND.get(m.type)
        if kind is None:
            return  # unknown tar types are skipped, as the extractor does
        d, dpath = tree.resolve_dir(parts[:-1], create=True)
        path = (*dpath, name)
        self._touch(path)
        assert d.children is not None
        old = d.children.get(name)
        if kind == DIR and old is not None and old.kind == DIR:
            node = tree._own(d, name, old)  # a directory entry merges into one there
            node.mode, node.uid, node.gid, node.layer = m.mode, m.uid, m.gid, self.layer
            return
        node = Node(kind, tree.version, mode=m.mode, uid=m.uid, gid=m.gid, layer=self.layer,
                    link=m.linkname if kind == SYMLINK else "",
                    devmajor=m.devmajor, devminor=m.devminor)
        if kind == FILE:
            node.size = m.size
            node.src = (self.layer, ordinal)
            node.digest = content(path)
        if old is not None:
            self._dropped(path, old, "overwritten")
        d.children[name] = node

    def _hardlink(self, m: Member, parts: Path, ordinal: int) -> None:
        tree = self.tree
        tparts = clean_name(m.linkname)
        if not tparts:
            raise UnsafeLayerError("a hardlink to the root")
        td, tdir = tree.resolve_dir(tparts[:-1], create=False, what=f" (hardlink target "
                                                                    f"{m.linkname})")
        assert td.children is not None
        target = td.children.get(tparts[-1])
        if target is None:
            raise LayerError(f"hardlink target {m.linkname} does not exist")
        if target.kind == DIR:
            raise LayerError(f"hardlink target {m.linkname} is a directory")
        d, dpath = tree.resolve_dir(parts[:-1], create=True)
        path = (*dpath, parts[-1])
        if path == (*tdir, tparts[-1]):
            return  # a link to itself
        self._touch(path)
        node = target.copy(tree.version)
        node.hardlink = True
        node.layer = self.layer
        assert d.children is not None
        old = d.children.get(parts[-1])
        if old is not None:
            self._dropped(path, old, "overwritten")
        d.children[parts[-1]] = node

    def _whiteout(self, d: Node, dpath: Path, name: str) -> None:
        path = (*dpath, name)
        assert d.children is not None
        old = d.children.get(name)
        if old is None:
            return
        if path in self.touched:
            # This layer's own entry stays; a directory loses only lower content.
            if old.kind == DIR:
                self._remove_lower_children(self.tree._own(d, name, old), path)
            return
        self._dropped(path, old, "removed")
        del d.children[name]

    def _remove_lower_children(self, d: Node, dpath: Path) -> None:
        todo = [(d, dpath)]
        while todo:
            d, dpath = todo.pop()
            assert d.children is not None
            for name in list(d.children):
                cp = (*dpath, name)
                child = d.children[name]
                if cp not in self.touched:
                    self._dropped(cp, child, "removed")
                    del d.children[name]
                elif child.kind == DIR:
                    todo.append((self.tree._own(d, name, child), cp))


def hash_member(reader: TarReader, size: int, buf: bytearray) -> str:
    """The sha256 of the current member's data, read through."""
    h = hashlib.sha256()
    view = memoryview(buf)
    left = size
    while left:
        n = reader.readinto(view)
        if not n:
            raise TarFormatError("unexpected end of the tar stream inside a file")
        h.update(view[:n])
        left -= n
    return "sha256:" + h.hexdigest()


def read_members(stream: BinaryIO, layer: str,
                 fn: Callable[[int, Member, TarReader], None]) -> None:
    """Calls ``fn(ordinal, member, reader)`` for each member; tar damage is a LayerError."""
    reader = TarReader(stream)
    ordinal = 0
    while True:
        try:
            m = reader.next()
        except TarFormatError as e:
            raise LayerError(f"layer {layer}: corrupt tar stream: {e}", layer=layer) from None
        if m is None:
            return
        try:
            fn(ordinal, m, reader)
        except TarFormatError as e:
            raise LayerError(f"layer {layer}: corrupt tar stream at {m.name}: {e}",
                             layer=layer, entry=m.name) from None
        ordinal += 1


__all__ = ["BLOCK", "CHAR", "DIR", "FIFO", "FILE", "OPAQUE_MARKER", "SYMLINK",
           "WHITEOUT_PREFIX", "FsTree", "LayerApplier", "Node", "clean_name",
           "hash_member", "read_members", "show"]
