"""The container's root filesystem: overlayfs over shared layers, then the usual mounts.

Everything after ``mount_overlay`` runs inside the container's own mount
namespace (made with the container process), so nothing mounted here is
visible on the host and all of it disappears with the namespace: no stale
mounts after a crash.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from ocikit.oci.runtime import libc
from ocikit.oci.runtime.spec import Mount

# One page: the kernel copies mount(2)'s data argument into a single page.
_OPTIONS_LIMIT = 4095
# A portable upper dir: no redirect or metacopy xattrs only this kernel understands.
_OVERLAY_FIXED = "redirect_dir=off,metacopy=off,index=off"

# Docker's defaults (moby oci/defaults.go).
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
# name, major, minor (all 0666 as runc creates them)
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
              ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))

# Mount points every container needs: (path, is_dir).
BASE_TARGETS: tuple[tuple[str, bool], ...] = (
    ("proc", True), ("sys", True), ("dev", True),
    ("etc/hostname", False), ("etc/hosts", False), ("etc/resolv.conf", False),
)
ETC_FILES = ("hostname", "hosts", "resolv.conf")

_NOSUID_NODEV_NOEXEC = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC


# -- looking at layers -----------------------------------------------------
def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def layer_lookup(lower_dirs: Sequence[str], rel: str) -> os.stat_result | None:
    """``lstat`` of ``rel`` in the overlay of ``lower_dirs`` (topmost first), or None.

    Whiteouts and opaque parent directories in the layers hide what is below
    them, as overlayfs does. Symlinks in parent components are not followed
    (callers use this for plain paths only).
    """
    rel = rel.strip("/")
    parts = rel.split("/")
    for layer in lower_dirs:
        path = os.path.join(layer, rel)
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None:
            return None if _is_whiteout(st) else st
        # an opaque or whited-out ancestor in this layer hides every layer below
        for i in range(len(parts) - 1, 0, -1):
            anc = os.path.join(layer, *parts[:i])
            try:
                ast = os.lstat(anc)
            except OSError:
                continue
            if _is_whiteout(ast) or not stat.S_ISDIR(ast.st_mode) or _is_opaque(anc):
                return None
            break
    return None


def prepare_init_layer(init_dir: str, lower_dirs: Sequence[str],
                       targets: Sequence[tuple[str, bool]]) -> bool:
    """Create mount-point placeholders the image lacks in ``init_dir``.

    The init layer sits above the image layers, so the mount points ocikit
    needs never get created in the container's upper dir (where they would
    show up in ``container diff`` and ``commit``). Parent directories copy
    the image's owner, mode and times so the init layer changes nothing
    else. Returns whether anything was created (no init layer otherwise).
    """
    made = False
    for rel, is_dir in targets:
        rel = os.path.normpath(rel).strip("/")
        if not rel or rel.startswith(".."):
            continue
        if layer_lookup(lower_dirs, rel) is not None:
            continue
        parts = rel.split("/")
        for i in range(1, len(parts)):
            sub = "/".join(parts[:i])
            dst = os.path.join(init_dir, sub)
            if os.path.lexists(dst):
                continue
            os.makedirs(dst, exist_ok=True)
            st = layer_lookup(lower_dirs, sub)
            if st is not None and stat.S_ISDIR(st.st_mode):
                os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            else:
                os.chmod(dst, 0o755)
        dst = os.path.join(init_dir, rel)
        if not os.path.lexists(dst):
            if is_dir:
                os.makedirs(dst, 0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
                os.close(os.open(dst, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            made = True
    if made:
        # the init layer's own root must not change the image's / attributes
        st = _root_stat(lower_dirs)
        if st is not None:
            os.chown(init_dir, st.st_uid, st.st_gid)
            os.chmod(init_dir, stat.S_IMODE(st.st_mode))
            os.utime(init_dir, ns=(st.st_atime_ns, st.st_mtime_ns))
    return made


def _root_stat(lower_dirs: Sequence[str]) -> os.stat_result | None:
    for layer in lower_dirs:
        try:
            return os.stat(layer)
        except OSError:
            continue
    return None


# -- overlayfs -------------------------------------------------------------
def _escape_lower(path: str) -> str:
    if "," in path:
        raise OSError(errno.EINVAL, "a layer path for overlayfs cannot contain ','", path)
    return path.replace("\\", "\\\\").replace(":", "\\:")


def overlay_options(lower_dirs: Sequence[str], upper: str, work: str,
                    links_dir: str | None = None) -> tuple[str, str]:
    """(folder to mount from, option string) for ``lower_dirs`` topmost first.

    Lower dirs are named relative to the folder most of them share (the
    snapshots folder), so about 60 layers of 64-hex names fit in the one
    page the kernel accepts. Beyond that, ``links_dir`` gets short numbered
    symlinks to every layer and the options name those.
    """
    for d in (upper, work):
        if "," in d or ":" in d:
            raise OSError(errno.EINVAL, "overlay upper/work paths cannot contain ',' or ':'", d)
    parents: dict[str, int] = {}
    for d in lower_dirs:
        p = os.path.dirname(os.path.abspath(d))
        parents[p] = parents.get(p, 0) + 1
    base = max(parents, key=lambda p: parents[p])
    rel = [os.path.relpath(os.path.abspath(d), base) for d in lower_dirs]
    opts = (f"lowerdir={':'.join(_escape_lower(r) for r in rel)},upperdir={upper},"
            f"workdir={work},{_OVERLAY_FIXED}")
    if len(opts) <= _OPTIONS_LIMIT or links_dir is None:
        if len(opts) > _OPTIONS_LIMIT:
            raise OSError(errno.E2BIG, f"{len(lower_dirs)} layers exceed the overlayfs "
                                       "mount option limit")
        return base, opts
    os.makedirs(links_dir, exist_ok=True)
    names = []
    for i, d in enumerate(lower_dirs):
        link = os.path.join(links_dir, str(i))
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.abspath(d), link)
        names.append(str(i))
    opts = f"lowerdir={':'.join(names)},upperdir={upper},workdir={work},{_OVERLAY_FIXED}"
    if len(opts) > _OPTIONS_LIMIT:
        raise OSError(errno.E2BIG, f"{len(lower_dirs)} layers exceed the overlayfs "
                                   "mount option limit")
    return links_dir, opts


def mount_overlay(lower_dirs: Sequence[str], upper: str, work: str, target: str,
                  links_dir: str | None = None) -> None:
    """Mount the overlay on ``target``; changes this process's working directory."""
    base, opts = overlay_options(lower_dirs, os.path.abspath(upper), os.path.abspath(work),
                                 links_dir)
    os.chdir(base)
    libc.mount("overlay", os.path.abspath(target), "overlay", 0, opts)


# -- paths inside the root -------------------------------------------------
def secure_join(root: str, path: str) -> str:
    """``root/path`` with symlinks resolved as if ``root`` were ``/``.

    Mount targets come from the image, which may hold symlinks such as
    ``etc/hosts -> /etc/shadow``; resolving them against the host's ``/``
    would mount over host files.
    """
    pending = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, "too many symlinks", os.path.join(root, path))
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p and p != "."] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _ensure_target(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def bind(source: str, target: str, *, readonly: bool = False, recursive: bool = True,
         extra: int = 0) -> None:
    flags = libc.MS_BIND | (libc.MS_REC if recursive else 0)
    libc.mount(source, target, None, flags)
    if readonly or extra:
        # the bind itself ignores MS_RDONLY: a second remount applies it
        libc.mount(None, target, None,
                   libc.MS_REMOUNT | libc.MS_BIND | extra | (libc.MS_RDONLY if readonly else 0))


# -- the whole root --------------------------------------------------------
def make_private_root() -> None:
    """Stop mount events propagating between the host and the container."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def _mount_dev(root: str, console: str | None) -> None:
    dev = secure_join(root, "/dev")
    _ensure_target(dev, True)
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_STRICTATIME,
               "mode=755,size=65536k")
    old = os.umask(0)
    try:
        for name, major, minor in _DEVICES:
            os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        for name, target in _DEV_LINKS:
            os.symlink(target, os.path.join(dev, name))
        for sub in ("pts", "shm", "mqueue"):
            os.mkdir(os.path.join(dev, sub), 0o755)
    finally:
        os.umask(old)
    libc.mount("devpts", os.path.join(dev, "pts"), "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620,gid=5")
    libc.mount("shm", os.path.join(dev, "shm"), "tmpfs", _NOSUID_NODEV_NOEXEC,
               "mode=1777,size=65536k")
    libc.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", _NOSUID_NODEV_NOEXEC)
    if console is not None:
        target = os.path.join(dev, "console")
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        bind(console, target, recursive=False)


def _fill_volume(src_in_root: str, volume_dir: str) -> None:
    """Docker's copy-up: an empty named volume first gets the image's files there."""
    import shutil

    if not os.path.isdir(src_in_root) or os.listdir(volume_dir):
        return
    for name in os.listdir(src_in_root):
        s = os.path.join(src_in_root, name)
        d = os.path.join(volume_dir, name)
        if os.path.isdir(s) and not os.path.islink(s):
            shutil.copytree(s, d, symlinks=True, copy_function=shutil.copy2)
        else:
            shutil.copy2(s, d, follow_symlinks=False)
        os.lchown(d, os.lstat(s).st_uid, os.lstat(s).st_gid)
    st = os.stat(src_in_root)
    os.chown(volume_dir, st.st_uid, st.st_gid)
    os.chmod(volume_dir, stat.S_IMODE(st.st_mode))


def setup_rootfs(root: str, *, etc_dir: str, mounts: Sequence[Mount],
                 console: str | None = None) -> None:
    """Mount /proc, /dev, /sys, the /etc files and volumes under ``root`` (pre-pivot)."""
    proc = secure_join(root, "/proc")
    _ensure_target(proc, True)
    libc.mount("proc", proc, "proc", _NOSUID_NODEV_NOEXEC)
    _mount_dev(root, console)
    sys_dir = secure_join(root, "/sys")
    _ensure_target(sys_dir, True)
    libc.mount("sysfs", sys_dir, "sysfs", _NOSUID_NODEV_NOEXEC | libc.MS_RDONLY)
    for name in ETC_FILES:
        src = os.path.join(etc_dir, name)
        if not os.path.exists(src):
            continue
        target = secure_join(root, "/etc/" + name)
        _ensure_target(target, False)
        if os.path.isdir(target):
            continue
        bind(src, target, recursive=False)
    for m in sorted(mounts, key=lambda m: m.destination.rstrip("/").count("/")):
        target = secure_join(root, m.destination)
        src_is_dir = os.path.isdir(m.source)
        if m.kind == "volume":
            _fill_volume(target, m.source)
        _ensure_target(target, src_is_dir)
        bind(m.source, target, readonly=m.readonly)


def pivot(root: str) -> None:
    """Make ``root`` the process's ``/``; the old root is detached, not kept anywhere."""
    os.chdir(root)
    # pivot_root(".", ".") stacks the old root on the new one; no put_old
    # folder is needed inside the image (it would land in the upper dir).
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def mask_paths() -> None:
    """Docker's masked and read-only paths (after pivot, so /dev/null is ours)."""
    for path in MASKED_PATHS:
        try:
            if os.path.isdir(path):
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, "size=0")
            else:
                libc.mount("/dev/null", path, None, libc.MS_BIND)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
    for path in READONLY_PATHS:
        if not os.path.exists(path):
            continue
        bind(path, path, readonly=True, extra=_NOSUID_NODEV_NOEXEC)
