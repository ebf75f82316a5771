"""The one careful extractor: layer tar streams into a root filesystem.

Every path is resolved component by component through directory file
descriptors, never by joining strings: an entry's name is cleaned as text
(``..`` stops at the root), its parent components are looked up with
``O_NOFOLLOW``, symlinks met on the way are followed but confined to the root
(an absolute target restarts at the root, ``..`` stops there), and its last
component is never followed (SPEC.md "Applying layers"; the class of bug of
CVE-2018-15664, CVE-2019-14271 and umoci's CVE-2021-29136).

Two outputs share this code:

* flat: every layer applied in turn to one tree, whiteouts carried out;
* overlay: one layer written into its own snapshot directory, on top of the
  read-only snapshots below it. Parent components resolve against the merged
  view (this snapshot over the lower ones, as overlayfs merges them), and
  parents that exist only below are created here with their metadata copied,
  so a container sees the tree that the flat form writes. Whiteouts become
  0/0 character devices and opaque directories get
  ``trusted.overlay.opaque=y``.

Whiteouts hide only lower layers (image-spec layer.md): an entry of the same
layer stays, whatever the order of the tar.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ocikit.errors import LayerError, UnsafeLayerError, UsageError, VerificationError
from ocikit.oci import tarstream as ts
from ocikit.oci.descriptor import Descriptor, ImageConfig, Manifest
from ocikit.oci.digest import Digest
from ocikit.oci.layer import open_layer
from ocikit.oci.layout import Layout
from ocikit.oci.tarstream import Member, TarFormatError, TarReader, clean_name

WarnFn = Callable[[str], None]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE = "trusted.overlay.opaque"
_OVERLAY_XATTR = "trusted.overlay."
_MAX_SYMLINK_HOPS = 40
_MAX_CACHED_DIRS = 2048
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_BUF = 1 << 20


def escape_xattr(name: str) -> str:
    """Overlay's own xattrs inside a layer are stored escaped, so they forge nothing."""
    if name.startswith(_OVERLAY_XATTR):
        return _OVERLAY_XATTR + "overlay." + name[len(_OVERLAY_XATTR):]
    return name


def is_whiteout_stat(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OVERLAY_OPAQUE) == b"y"
    except OSError:
        return False


def _lstat(name: str, dirfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(dirfd: int, name: str) -> None:
    """Remove ``name`` in ``dirfd`` and, for a directory, all below it, never following links."""
    st = _lstat(name, dirfd)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
    try:
        if os.geteuid() != 0 and st.st_mode & 0o300 != 0o300:
            os.chmod(fd, 0o700)  # a read-only dir stops a non-root user
        for child in os.listdir(fd):
            remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


class _Dir:
    """A directory of the merged view: its real path and the layers that hold it.

    ``fds`` are (layer index, directory fd), topmost first; index 0 is the
    tree being written.
    """

    __slots__ = ("fds", "path")

    def __init__(self, path: tuple[str, ...], fds: list[tuple[int, int]]) -> None:
        self.path = path
        self.fds = fds

    @property
    def upper(self) -> int | None:
        return self.fds[0][1] if self.fds[0][0] == 0 else None


@dataclass(slots=True)
class _Found:
    kind: str  # "dir", "link", "other", "none"
    layer: int = -1
    dirfd: int = -1
    st: os.stat_result | None = None
    dirs: list[tuple[int, int]] | None = None
    whiteout: bool = False


class _Tree:
    """Path resolution in the tree being written, over read-only lower trees."""

    def __init__(self, upper_fd: int, lower_fds: Sequence[int], overlay: bool) -> None:
        self.overlay = overlay
        self._root_fds = {upper_fd, *lower_fds}
        self.root = _Dir((), [(0, upper_fd)] + [(i + 1, fd) for i, fd in enumerate(lower_fds)])
        # Interned by real path, so a copy-up seen through one name is seen
        # through every name; text -> dir caches resolutions of entry parents.
        self.dirs: dict[tuple[str, ...], _Dir] = {(): self.root}
        self._by_text: dict[tuple[str, ...], _Dir] = {}
        self.links: set[tuple[str, ...]] = set()
        # Filled by the applier: copy-ups whose metadata is set at the end.
        self.copied_up: dict[tuple[str, ...], os.stat_result] = {}

    # -- cache -------------------------------------------------------------
    def invalidate(self, keep: _Dir | None = None) -> None:
        """Forget every resolution (something in the view changed); ``keep`` stays open."""
        kept = {fd for _, fd in keep.fds} if keep is not None else set()
        for d in self.dirs.values():
            for _, fd in d.fds:
                if fd not in self._root_fds and fd not in kept:
                    os.close(fd)
        self.dirs = {(): self.root}
        if keep is not None:
            self.dirs[keep.path] = keep
        self._by_text.clear()
        self.links.clear()

    def changing(self, parent: _Dir, path: tuple[str, ...]) -> None:
        """Call before ``path`` is removed, replaced or hidden."""
        if path in self.dirs or path in self.links:
            self.invalidate(keep=parent)

    def close(self) -> None:
        self.invalidate()

    def tidy(self) -> None:
        """Bound the open descriptors; only between entries."""
        if len(self.dirs) > _MAX_CACHED_DIRS:
            self.invalidate()

    # -- lookup ------------------------------------------------------------
    def lookup(self, d: _Dir, name: str) -> _Found:
        """What the merged view has at ``name`` in ``d`` (the last component, not followed)."""
        dirs: list[tuple[int, int]] = []
        for i, dfd in d.fds:
            st = _lstat(name, dfd)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                dirs.append((i, fd))
                if self.overlay and _is_opaque(fd):
                    break
                continue
            if dirs:
                break  # a non-directory below a directory ends the merge, as in overlayfs
            if self.overlay and is_whiteout_stat(st):
                return _Found("none", layer=i, whiteout=True)
            kind = "link" if stat.S_ISLNK(st.st_mode) else "other"
            return _Found(kind, layer=i, dirfd=dfd, st=st)
        if dirs:
            return _Found("dir", dirs=dirs)
        return _Found("none")

    def resolve_dir(self, parts: tuple[str, ...], *, create: bool) -> _Dir:
        d = self._by_text.get(parts)
        if d is None:
            d = self._walk(parts, create=create)
            self._by_text[parts] = d
        return d

    def dir_at(self, path: tuple[str, ...]) -> _Dir:
        """The directory at a real (symlink-free) path."""
        d = self.dirs.get(path)
        return d if d is not None else self._walk(path, create=False)

    def _walk(self, parts: tuple[str, ...], *, create: bool) -> _Dir:
        d = self.root
        todo = list(reversed(parts))
        hops = 0
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if d.path:
                    d = self.dir_at(d.path[:-1])
                continue
            cand = (*d.path, c)
            nd = self.dirs.get(cand)
            if nd is not None:
                d = nd
                continue
            f = self.lookup(d, c)
            if f.kind == "dir":
                assert f.dirs is not None
                nd = _Dir(cand, f.dirs)
                self.dirs[cand] = nd
                d = nd
            elif f.kind == "link":
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise LayerError(f"too many levels of symbolic links at /{'/'.join(cand)}")
                target = os.readlink(c, dir_fd=f.dirfd)
                self.links.add(cand)
                if target.startswith("/"):
                    d = self.root
                todo.extend(reversed(target.split("/")))
            elif f.kind == "other":
                raise LayerError(f"/{'/'.join(cand)} is not a directory")
            elif not create:
                raise LayerError(f"/{'/'.join(cand)} does not exist")
            else:
                up = self.ensure_upper(d)
                if f.whiteout and f.layer == 0:
                    os.unlink(c, dir_fd=up)
                os.mkdir(c, 0o755, dir_fd=up)
                fd = os.open(c, _DIR_FLAGS, dir_fd=up)
                if f.whiteout and f.layer == 0:
                    # This layer deleted it before: the lower one stays hidden.
                    os.setxattr(fd, OVERLAY_OPAQUE, b"y")
                nd = _Dir(cand, [(0, fd)])
                self.dirs[cand] = nd
                d = nd
        return d

    def ensure_upper(self, d: _Dir) -> int:
        """The directory in the tree being written, created (copied up) if only below."""
        up = d.upper
        if up is not None:
            return up
        parent_up = self.ensure_upper(self.dir_at(d.path[:-1]))
        name = d.path[-1]
        src = d.fds[0][1]
        st = os.fstat(src)
        os.mkdir(name, 0o700, dir_fd=parent_up)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_up)
        for x in _listxattr(src):
            if x.startswith(_OVERLAY_XATTR) and not x.startswith(_OVERLAY_XATTR + "overlay."):
                continue  # overlay's own state of the lower dir, not content
            with contextlib.suppress(OSError):
                os.setxattr(fd, x, os.getxattr(src, x))
        d.fds.insert(0, (0, fd))
        self.copied_up[d.path] = st
        return fd


def _listxattr(fd: int) -> list[str]:
    try:
        return os.listxattr(fd)
    except OSError:
        return []


class _Applier:
    """Applies the entries of one layer."""

    def __init__(self, tree: _Tree, *, rootless: bool, layer: str, warn: WarnFn | None) -> None:
        self.tree = tree
        self.overlay = tree.overlay
        self.rootless = rootless
        self.layer = layer
        self.warn = warn or (lambda _msg: None)
        self.touched: set[tuple[str, ...]] = set()
        self.dir_meta: dict[tuple[str, ...], Member] = {}
        self._buf = bytearray(_COPY_BUF)

    # -- driving -----------------------------------------------------------
    def run(self, reader: TarReader) -> None:
        while True:
            try:
                m = reader.next()
            except TarFormatError as e:
                raise LayerError(f"layer {self.layer}: corrupt tar stream: {e}",
                                 layer=self.layer) from None
            if m is None:
                return
            self.tree.tidy()
            try:
                self.entry(m, reader)
            except LayerError as e:
                if not e.entry:
                    raise type(e)(f"layer {self.layer}: {m.name}: {e}", layer=self.layer,
                                  entry=m.name) from None
                raise
            except TarFormatError as e:
                raise LayerError(f"layer {self.layer}: corrupt tar stream at {m.name}: {e}",
                                 layer=self.layer, entry=m.name) from None
            except OSError as e:
                raise LayerError(f"layer {self.layer}: {m.name}: {e.strerror or e}",
                                 layer=self.layer, entry=m.name) from None

    def _touch(self, path: tuple[str, ...]) -> None:
        while path and path not in self.touched:
            self.touched.add(path)
            path = path[:-1]

    # -- one entry ---------------------------------------------------------
    def entry(self, m: Member, reader: TarReader) -> None:
        parts = clean_name(m.name)
        if not parts:
            if m.type != ts.DIR:
                raise UnsafeLayerError(f"layer {self.layer}: entry {m.name!r} names the root "
                                       "but is not a directory", layer=self.layer, entry=m.name)
            self.dir_meta[()] = m
            self._set_xattrs_fd(self.tree.root.fds[0][1], m)
            return
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            d = self.tree.resolve_dir(parts[:-1], create=True)
            if name == OPAQUE_MARKER:
                self._opaque(d)
            elif name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                self.warn(f"layer {self.layer}: ignored whiteout metadata {m.name}")
            elif name[len(WHITEOUT_PREFIX):] in ("", ".", ".."):
                # ".wh..." would name the parent of the directory: never.
                raise UnsafeLayerError(f"layer {self.layer}: whiteout {m.name!r} names no entry",
                                       layer=self.layer, entry=m.name)
            else:
                self._whiteout(d, name[len(WHITEOUT_PREFIX):])
            return
        t = m.type
        if t == ts.LINK:
            self._hardlink(m, parts)
            return
        d = self.tree.resolve_dir(parts[:-1], create=True)
        path = (*d.path, name)
        up = self.tree.ensure_upper(d)
        self._touch(path)
        if t in ts.REGULAR:
            self._file(m, d, up, name, path, reader)
        elif t == ts.DIR:
            self._dir(m, d, up, name, path)
        elif t == ts.SYMLINK:
            self.tree.changing(d, path)
            self._create(up, name, d, lambda: os.symlink(m.linkname, name, dir_fd=up))
            self._meta_path(up, name, m, link=True)
        elif t in (ts.FIFO, ts.CHR, ts.BLK):
            self._node(m, d, up, name, path)
        else:
            self.warn(f"layer {self.layer}: skipped {m.name} of unknown tar type {t!r}")

    def _create(self, up: int, name: str, d: _Dir, make: Callable[[], None]) -> None:
        try:
            make()
        except FileExistsError:
            self.tree.changing(d, (*d.path, name))
            remove_at(up, name)
            make()

    def _file(self, m: Member, d: _Dir, up: int, name: str, path: tuple[str, ...],
              reader: TarReader) -> None:
        self.tree.changing(d, path)
        try:
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=up)
        except FileExistsError:
            remove_at(up, name)
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=up)
        try:
            left = m.size
            buf = memoryview(self._buf)
            while left:
                n = reader.readinto(buf)
                if not n:
                    raise TarFormatError("unexpected end of the tar stream inside a file")
                left -= n
                view = buf[:n]
                while view:
                    w = os.write(fd, view)
                    view = view[w:]
            if not self.rootless:
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode)
            self._set_xattrs_fd(fd, m)
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)

    def _dir(self, m: Member, d: _Dir, up: int, name: str, path: tuple[str, ...]) -> None:
        st = _lstat(name, up)
        if st is not None and stat.S_ISDIR(st.st_mode):
            pass  # merge into it (a lower dir copied up, or this layer's)
        else:
            was_whiteout = st is not None and self.overlay and is_whiteout_stat(st)
            if st is not None:
                self.tree.changing(d, path)
                remove_at(up, name)
            elif path in self.tree.dirs:
                self.tree.invalidate(keep=d)  # a lower dir gains an upper half
            os.mkdir(name, 0o700, dir_fd=up)
            if was_whiteout:
                fd = os.open(name, _DIR_FLAGS, dir_fd=up)
                try:
                    os.setxattr(fd, OVERLAY_OPAQUE, b"y")
                finally:
                    os.close(fd)
        if m.xattrs:
            fd = os.open(name, _DIR_FLAGS, dir_fd=up)
            try:
                self._set_xattrs_fd(fd, m)
            finally:
                os.close(fd)
        self.dir_meta[path] = m

    def _node(self, m: Member, d: _Dir, up: int, name: str, path: tuple[str, ...]) -> None:
        if m.type == ts.FIFO:
            kind, dev = stat.S_IFIFO, 0
        else:
            if self.rootless:
                self.warn(f"layer {self.layer}: skipped device node {m.name} (not root)")
                return
            kind = stat.S_IFCHR if m.type == ts.CHR else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
            if self.overlay and kind == stat.S_IFCHR and dev == 0:
                # In a snapshot a 0/0 device would read as a whiteout.
                self.warn(f"layer {self.layer}: skipped 0/0 device node {m.name}")
                return
        self.tree.changing(d, path)
        self._create(up, name, d, lambda: os.mknod(name, 0o600 | kind, dev, dir_fd=up))
        self._meta_path(up, name, m, link=False)

    def _hardlink(self, m: Member, parts: tuple[str, ...]) -> None:
        tparts = clean_name(m.linkname)
        if not tparts:
            raise UnsafeLayerError(f"layer {self.layer}: hardlink {m.name!r} points at the root",
                                   layer=self.layer, entry=m.name)
        # Targets resolve as names do: confined to the root, last part not followed.
        tpath = (*self.tree.resolve_dir(tparts[:-1], create=False).path, tparts[-1])
        d = self.tree.resolve_dir(parts[:-1], create=True)
        name = parts[-1]
        path = (*d.path, name)
        if path == tpath:
            return  # a link to itself
        up = self.tree.ensure_upper(d)
        self._touch(path)
        self.tree.changing(d, path)
        remove_at(up, name)
        # Removing may have reset the resolution cache: look the target up anew.
        td = self.tree.resolve_dir(tparts[:-1], create=False)
        f = self.tree.lookup(td, tparts[-1])
        if f.kind == "dir":
            for _, fd in f.dirs or ():
                os.close(fd)
            raise LayerError(f"hardlink target {m.linkname} is a directory")
        if f.kind == "none":
            raise LayerError(f"hardlink target {m.linkname} does not exist")
        if f.layer == 0:
            os.link(tparts[-1], name, src_dir_fd=f.dirfd, dst_dir_fd=up, follow_symlinks=False)
        else:
            # The original lives in a lower snapshot: a copy, as containerd does.
            self._copy_lower(f, tparts[-1], up, name)

    def _copy_lower(self, f: _Found, src: str, up: int, name: str) -> None:
        st = f.st
        assert st is not None
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src, dir_fd=f.dirfd), name, dir_fd=up)
        elif stat.S_ISREG(st.st_mode):
            sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=f.dirfd)
            try:
                dfd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=up)
                try:
                    left = st.st_size
                    while left > 0:
                        n = os.sendfile(dfd, sfd, None, min(left, 1 << 30))
                        if n == 0:
                            break
                        left -= n
                    for x in _listxattr(sfd):
                        os.setxattr(dfd, x, os.getxattr(sfd, x))
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        else:
            os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=up)
        if not self.rootless:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=up, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=up)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=up, follow_symlinks=False)

    # -- whiteouts ---------------------------------------------------------
    def _opaque(self, d: _Dir) -> None:
        self.tree.invalidate(keep=d)
        up = self.tree.ensure_upper(d)
        self._touch(d.path)
        if self.overlay:
            os.setxattr(up, OVERLAY_OPAQUE, b"y")
            del d.fds[1:]
        else:
            self._remove_lower_children(up, d.path)

    def _whiteout(self, d: _Dir, name: str) -> None:
        path = (*d.path, name)
        up = self.tree.ensure_upper(d)
        # The marker's directory is this layer's too: a whiteout of it keeps it.
        self._touch(d.path)
        st = _lstat(name, up)
        if path in self.touched:
            # Hide only what lower layers have there; this layer's entries stay.
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.tree.invalidate(keep=d)
                if self.overlay:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=up)
                    try:
                        os.setxattr(fd, OVERLAY_OPAQUE, b"y")
                    finally:
                        os.close(fd)
                else:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=up)
                    try:
                        self._remove_lower_children(fd, path)
                    finally:
                        os.close(fd)
            return
        self.tree.changing(d, path)
        if st is not None:
            remove_at(up, name)
        if self.overlay:
            os.mknod(name, 0o600 | stat.S_IFCHR, 0, dir_fd=up)

    def _remove_lower_children(self, fd: int, path: tuple[str, ...]) -> None:
        for child in os.listdir(fd):
            cp = (*path, child)
            if cp not in self.touched:
                remove_at(fd, child)
                continue
            st = _lstat(child, fd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                cfd = os.open(child, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._remove_lower_children(cfd, cp)
                finally:
                    os.close(cfd)

    # -- metadata ----------------------------------------------------------
    def _meta_path(self, up: int, name: str, m: Member, *, link: bool) -> None:
        # Owner before mode (chown clears setuid); no chmod through a link.
        if not self.rootless:
            os.chown(name, m.uid, m.gid, dir_fd=up, follow_symlinks=False)
        if not link:
            os.chmod(name, m.mode, dir_fd=up)
        if m.xattrs:
            # setxattr has no dir_fd form; /proc/self/fd/N is our verified
            # directory, and the last component is not followed.
            for k, v in m.xattrs.items():
                self._setxattr(f"/proc/self/fd/{up}/{name}", k, v, m.name, follow=False)
        os.utime(name, ns=(m.mtime_ns, m.mtime_ns), dir_fd=up, follow_symlinks=False)

    def _set_xattrs_fd(self, fd: int, m: Member) -> None:
        # security.capability last: chown (done before) would clear it.
        for k in sorted(m.xattrs, key=lambda k: k == "security.capability"):
            self._setxattr(fd, k, m.xattrs[k], m.name, follow=True)

    def _setxattr(self, target: int | str, key: str, value: bytes, entry: str, *,
                  follow: bool) -> None:
        try:
            os.setxattr(target, escape_xattr(key), value, follow_symlinks=follow)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                self.warn(f"layer {self.layer}: {entry}: xattr {key} not set ({e.strerror})")
            else:
                raise

    def finish(self) -> None:
        """Directory owners, modes and times, after their contents (read-only dirs unpack)."""
        todo: list[tuple[tuple[str, ...], int, int, int, int]] = [
            (p, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            for p, st in self.tree.copied_up.items() if p not in self.dir_meta]
        todo += [(p, m.uid, m.gid, m.mode, m.mtime_ns) for p, m in self.dir_meta.items()]
        root = self.tree.root.fds[0][1]
        for path, uid, gid, mode, mtime_ns in todo:
            fd = _open_real(root, path)
            if fd is None:
                continue  # replaced later in the layer
            try:
                if not self.rootless:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                if fd != root:
                    os.close(fd)


def _open_real(root: int, path: tuple[str, ...]) -> int | None:
    """Open a directory by its real path, following nothing; None if it is gone."""
    fd = root
    try:
        for c in path:
            nfd = os.open(c, _DIR_FLAGS, dir_fd=fd)
            if fd != root:
                os.close(fd)
            fd = nfd
    except (FileNotFoundError, NotADirectoryError, OSError) as e:
        if fd != root:
            os.close(fd)
        if isinstance(e, (FileNotFoundError, NotADirectoryError)) or e.errno == errno.ELOOP:
            return None
        raise
    return fd


def is_rootless() -> bool:
    return os.geteuid() != 0


def apply_tar(tar: BinaryIO, root: Path, *, lowers: Sequence[Path] = (), overlay: bool = False,
              rootless: bool | None = None, layer: str = "", warn: WarnFn | None = None,
              verify: Callable[[], object] | None = None) -> None:
    """Apply one uncompressed layer tar stream to ``root``.

    Flat form (``overlay=False``): whiteouts are carried out in ``root``.
    Overlay form: ``root`` is the new snapshot over ``lowers`` (topmost first,
    read-only). ``verify`` runs after the last entry and before directory
    metadata (the diff_id check), so a bad stream fails before it looks done.
    """
    if rootless is None:
        rootless = is_rootless()
    if overlay and rootless:
        raise LayerError("overlay snapshots need root (whiteouts are device nodes)",
                         layer=layer)
    root_fd = os.open(root, _DIR_FLAGS)
    lower_fds: list[int] = []
    tree: _Tree | None = None
    try:
        for lo in lowers:
            lower_fds.append(os.open(lo, _DIR_FLAGS))
        tree = _Tree(root_fd, lower_fds, overlay)
        applier = _Applier(tree, rootless=rootless, layer=layer, warn=warn)
        if overlay:
            _init_snapshot_root(root_fd, lower_fds[0] if lower_fds else None, rootless)
        applier.run(TarReader(tar))
        if verify is not None:
            verify()
        applier.finish()
    except OSError as e:
        raise LayerError(f"layer {layer}: {e.strerror or e}", layer=layer) from None
    finally:
        if tree is not None:
            tree.close()
        for fd in lower_fds:
            os.close(fd)
        os.close(root_fd)


def _init_snapshot_root(root_fd: int, top_lower: int | None, rootless: bool) -> None:
    """A snapshot's root looks like the root below it until the layer says otherwise."""
    if top_lower is None:
        os.fchmod(root_fd, 0o755)
        return
    st = os.fstat(top_lower)
    if not rootless:
        os.fchown(root_fd, st.st_uid, st.st_gid)
    os.fchmod(root_fd, stat.S_IMODE(st.st_mode))
    os.utime(root_fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def clear_dir(path: Path) -> None:
    """Remove everything inside ``path`` (not following links), keeping ``path``."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        for child in os.listdir(fd):
            remove_at(fd, child)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and all under it; fine on read-only dirs and odd modes."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    clear_dir(path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)




# -- whole images -----------------------------------------------------------

@dataclass(frozen=True)
class LayerProgress:
    """One progress event: layer ``index`` of ``count``, uncompressed bytes so far."""

    index: int
    count: int
    digest: str
    size: int  # compressed size from the manifest
    done: int  # uncompressed bytes applied so far


ProgressFn = Callable[[LayerProgress], None]


def apply_layer_blob(blob: BinaryIO, media_type: str, digest: str, diff_id: Digest | None,
                     root: Path, *, lowers: Sequence[Path] = (), overlay: bool = False,
                     rootless: bool | None = None, warn: WarnFn | None = None,
                     progress: Callable[[int], None] | None = None) -> None:
    """Decompress, verify and apply one layer blob (see ``apply_tar``)."""
    with open_layer(blob, media_type, diff_id, layer=digest, progress=progress) as stream:
        buffered = io.BufferedReader(stream, _COPY_BUF)
        apply_tar(buffered, root, lowers=lowers, overlay=overlay, rootless=rootless,
                  layer=digest, warn=warn, verify=stream.verify)


def check_layers(manifest: Manifest, config: ImageConfig) -> None:
    if len(manifest.layers) != len(config.diff_ids):
        raise VerificationError(
            f"image has {len(manifest.layers)} layers but its config lists "
            f"{len(config.diff_ids)} diff_ids")


@contextlib.contextmanager
def whole_or_absent(dest: Path) -> Iterator[Path]:
    """``dest`` must be empty or absent; on any failure it is left that way again."""
    created = False
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise UsageError(f"{dest} exists and is not a directory")
    if dest.exists():
        if any(dest.iterdir()):
            raise UsageError(f"{dest} is not empty")
    else:
        dest.mkdir(parents=True)
        os.chmod(dest, 0o755)
        created = True
    try:
        yield dest
    except BaseException:
        with contextlib.suppress(OSError):
            if created:
                remove_tree(dest)
            else:
                clear_dir(dest)
        raise


def unpack_image(layout: Layout, manifest: Manifest, config: ImageConfig, dest: Path, *,
                 rootless: bool | None = None, progress: ProgressFn | None = None,
                 warn: WarnFn | None = None) -> None:
    """Write the image's flattened root filesystem at ``dest`` (empty or absent).

    On any failure ``dest`` is left as it was found (absent, or empty).
    """
    check_layers(manifest, config)
    with whole_or_absent(Path(dest)) as dest:
        n = len(manifest.layers)
        for i, (desc, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
            report = None
            if progress is not None:
                done = [0]

                def report(k: int, i: int = i, desc: Descriptor = desc,
                           done: list[int] = done) -> None:
                    done[0] += k
                    progress(LayerProgress(i, n, str(desc.digest), desc.size, done[0]))
            with layout.open_blob(desc.digest) as blob:
                apply_layer_blob(blob, desc.media_type, str(desc.digest), diff_id, dest,
                                 rootless=rootless, warn=warn, progress=report)


def read_in_root(root: Path, name: str, *, limit: int = 4 << 20) -> bytes | None:
    """Read a file of an unpacked root filesystem as the container would see it.

    Every symlink, the last one included, resolves inside ``root`` (an image's
    /etc/passwd may well be a link to the host's /etc/shadow). None if absent.
    """
    root_fd = os.open(root, _DIR_FLAGS)
    tree = _Tree(root_fd, [], overlay=False)
    try:
        parts = clean_name(name)
        for _ in range(_MAX_SYMLINK_HOPS):
            if not parts:
                return None
            try:
                d = tree.resolve_dir(parts[:-1], create=False)
            except LayerError:
                return None
            f = tree.lookup(d, parts[-1])
            if f.kind == "link":
                target = os.readlink(parts[-1], dir_fd=f.dirfd)
                base = () if target.startswith("/") else d.path
                parts = clean_name("/".join((*base, target)))
                continue
            if f.kind != "other" or f.st is None or not stat.S_ISREG(f.st.st_mode):
                for _, fd in f.dirs or ():
                    os.close(fd)
                return None
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=f.dirfd)
            with os.fdopen(fd, "rb") as fh:
                return fh.read(limit)
        return None
    finally:
        tree.close()
        os.close(root_fd)
