"""Resource limits through cgroups, v1 or v2, whichever the machine has.

The machine is treated as cgroup v2 only when ``/sys/fs/cgroup`` itself is a
cgroup2 mount; on hybrid machines each v1 controller has its own mount
under ``/sys/fs/cgroup/<controller>`` and the cgroup2 mount at ``unified``
carries no controllers worth using. A cgroup is made only for a container
with limits, so the common case pays nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

from ocikit.errors import ContainerError
from ocikit.oci.runtime.spec import Limits

CGROUP_ROOT = "/sys/fs/cgroup"
_CGROUP2_MAGIC = 0x63677270
_PARENT = "ocikit"
_CPU_PERIOD = 100_000


def is_v2(root: str = CGROUP_ROOT) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == root:
                    sep = fields.index("-")
                    return fields[sep + 1] == "cgroup2"
    except OSError:
        pass
    return False


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def create(container_id: str, limits: Limits, root: str = CGROUP_ROOT) -> list[str]:
    """Make the container's cgroup(s) with ``limits`` set; returns their folders."""
    if not limits.any():
        return []
    try:
        if is_v2(root):
            return [_create_v2(container_id, limits, root)]
        return _create_v1(container_id, limits, root)
    except OSError as e:
        raise ContainerError(f"cannot set resource limits: {e.strerror}: {e.filename}") from None


def _create_v1(container_id: str, limits: Limits, root: str) -> list[str]:
    made: list[str] = []

    def group(controller: str) -> str:
        path = os.path.join(root, controller, _PARENT, container_id)
        if not os.path.isdir(os.path.join(root, controller)):
            raise OSError(2, f"cgroup controller {controller} is not mounted",
                          os.path.join(root, controller))
        os.makedirs(path, exist_ok=True)
        made.append(path)
        return path

    try:
        if limits.memory is not None:
            g = group("memory")
            _write(os.path.join(g, "memory.limit_in_bytes"), str(limits.memory))
            memsw = os.path.join(g, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, str(limits.memory))
        if limits.cpus is not None:
            g = group("cpu")
            _write(os.path.join(g, "cpu.cfs_period_us"), str(_CPU_PERIOD))
            _write(os.path.join(g, "cpu.cfs_quota_us"),
                   str(max(1000, int(limits.cpus * _CPU_PERIOD))))
        if limits.pids is not None:
            g = group("pids")
            _write(os.path.join(g, "pids.max"), str(limits.pids) if limits.pids > 0 else "max")
    except OSError:
        remove(made)
        raise
    return made


def _create_v2(container_id: str, limits: Limits, root: str) -> str:
    parent = os.path.join(root, _PARENT)
    os.makedirs(parent, exist_ok=True)
    wanted = []
    if limits.memory is not None:
        wanted.append("+memory")
    if limits.cpus is not None:
        wanted.append("+cpu")
    if limits.pids is not None:
        wanted.append("+pids")
    for d in (root, parent):
        with contextlib.suppress(OSError):
            _write(os.path.join(d, "cgroup.subtree_control"), " ".join(wanted))
    path = os.path.join(parent, container_id)
    os.makedirs(path, exist_ok=True)
    try:
        if limits.memory is not None:
            _write(os.path.join(path, "memory.max"), str(limits.memory))
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.swap.max"), "0")
        if limits.cpus is not None:
            _write(os.path.join(path, "cpu.max"),
                   f"{max(1000, int(limits.cpus * _CPU_PERIOD))} {_CPU_PERIOD}")
        if limits.pids is not None:
            _write(os.path.join(path, "pids.max"), str(limits.pids) if limits.pids > 0 else "max")
    except OSError:
        remove([path])
        raise
    return path


def procs_files(dirs: Sequence[str]) -> list[str]:
    return [os.path.join(d, "cgroup.procs") for d in dirs]


def oom_killed(dirs: Sequence[str]) -> bool:
    """Whether the OOM killer acted in the container's memory cgroup."""
    for d in dirs:
        for name, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == key and v.strip().isdigit() and int(v) > 0:
                            return True
            except OSError:
                continue
    return False


def remove(dirs: Sequence[str]) -> None:
    """rmdir the cgroups; the kernel may need a moment after the last task exits."""
    for d in dirs:
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
