"""OCI runtime bundles: a runtime-spec ``config.json`` derived from an image config.

The defaults are Docker's (capabilities, masked and read-only paths) and the
mounts those of ``runc spec``; the process user is resolved through the
image's own /etc/passwd and /etc/group, read with every symlink confined to
the rootfs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocikit.errors import NotFoundError, UsageError
from ocikit.oci.descriptor import ImageConfig, Manifest
from ocikit.oci.layout import Layout
from ocikit.oci.unpack import (
    ProgressFn,
    WarnFn,
    read_in_root,
    unpack_image,
    whole_or_absent,
)

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# moby's oci/caps/defaults.go
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
# moby's oci/defaults.go
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NAMESPACES = ("pid", "network", "ipc", "uts", "mount")


def default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


@dataclass(frozen=True)
class ProcessUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"
    name: str = ""


def _parse_db(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


def resolve_user(rootfs: Path, user: str) -> ProcessUser:
    """Docker's rules for ``USER``: name or uid, optionally ``:group`` (name or gid)."""
    passwd = [r for r in _parse_db(read_in_root(rootfs, "/etc/passwd")) if len(r) >= 4]
    groups = [r for r in _parse_db(read_in_root(rootfs, "/etc/group")) if len(r) >= 3]
    spec_user, _, spec_group = (user or "0").partition(":")
    spec_user = spec_user or "0"
    entry = next((r for r in passwd if r[0] == spec_user), None)
    if entry is None and spec_user.isdigit():
        entry = next((r for r in passwd if r[2] == spec_user), None)
        if entry is None:
            entry = ["", "", spec_user, "0", "", "/"]
    if entry is None:
        raise NotFoundError(f"unable to find user {spec_user}: no matching entries in passwd file")
    try:
        uid, gid = int(entry[2]), int(entry[3])
    except ValueError:
        raise NotFoundError(f"bad passwd entry for user {spec_user}") from None
    home = entry[5] if len(entry) > 5 and entry[5] else "/"
    name = entry[0]
    if spec_group:
        g = next((r for r in groups if r[0] == spec_group), None)
        if g is not None:
            gid = int(g[2])
        elif spec_group.isdigit():
            gid = int(spec_group)
        else:
            raise NotFoundError(
                f"unable to find group {spec_group}: no matching entries in group file")
    extra: list[int] = []
    if name and not spec_group:
        for r in groups:
            members = r[3].split(",") if len(r) > 3 and r[3] else []
            if name in members and r[2].isdigit() and int(r[2]) != gid:
                extra.append(int(r[2]))
    return ProcessUser(uid, gid, tuple(dict.fromkeys(extra)), home, name)


def process_args(config: ImageConfig, *, entrypoint: Sequence[str] | None = None,
                 cmd: Sequence[str] | None = None) -> list[str]:
    """Entrypoint + Cmd as docker joins them; an explicit entrypoint drops the image's Cmd."""
    ep = list(entrypoint) if entrypoint is not None else list(config.entrypoint or ())
    if cmd is not None:
        args = list(cmd)
    elif entrypoint is not None:
        args = []
    else:
        args = list(config.cmd or ())
    full = ep + args
    if not full:
        raise UsageError("no command: the image has neither Entrypoint nor Cmd")
    return full


def runtime_spec(config: ImageConfig, rootfs: Path, *, entrypoint: Sequence[str] | None = None,
                 cmd: Sequence[str] | None = None, env: Sequence[str] = (),
                 cwd: str | None = None, user: str | None = None, hostname: str = "ocikit",
                 terminal: bool = False, root_path: str = "rootfs",
                 readonly: bool = False) -> dict[str, Any]:
    """The runtime-spec config for running ``config``'s image on the unpacked ``rootfs``."""
    pu = resolve_user(rootfs, user if user is not None else config.user)
    envs: dict[str, str] = {}
    for item in (*config.env, *env):
        k, _, v = item.partition("=")
        envs[k] = v
    envs.setdefault("PATH", DEFAULT_PATH)
    envs.setdefault("HOME", pu.home)
    if terminal:
        envs.setdefault("TERM", "xterm")
    caps = list(DEFAULT_CAPABILITIES)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": pu.uid, "gid": pu.gid,
                     **({"additionalGids": list(pu.additional_gids)}
                        if pu.additional_gids else {})},
            "args": process_args(config, entrypoint=entrypoint, cmd=cmd),
            "env": [f"{k}={v}" for k, v in envs.items()],
            "cwd": cwd or config.working_dir or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": root_path, "readonly": readonly},
        "hostname": hostname,
        "mounts": default_mounts(),
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        },
    }


def write_bundle(layout: Layout, manifest: Manifest, config: ImageConfig, dest: Path, *,
                 rootless: bool | None = None, progress: ProgressFn | None = None,
                 warn: WarnFn | None = None, **spec: Any) -> Path:
    """``dest/rootfs`` (flattened) plus ``dest/config.json``; returns the config path.

    ``dest`` must be empty or absent; ``spec`` goes to ``runtime_spec``.
    """
    # A bundle is whole or absent: a rootfs without its config.json (on a
    # full disk, say) must not look like one.
    with whole_or_absent(Path(dest)) as dest:
        rootfs = dest / "rootfs"
        unpack_image(layout, manifest, config, rootfs, rootless=rootless, progress=progress,
                     warn=warn)
        doc = runtime_spec(config, rootfs, **spec)
        if rootless:
            doc["linux"]["namespaces"].append({"type": "user"})
            doc["linux"]["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(),
                                            "size": 1}]
            doc["linux"]["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(),
                                            "size": 1}]
        path = dest / "config.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
