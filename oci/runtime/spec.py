"""What a container runs, as typed values with a JSON form for state on disk.

``ContainerSpec`` is written once to ``config.json`` when a container is
created and read back by every later command (start, exec, diff, commit), so
its JSON must stay readable across versions: unknown keys are ignored and
missing ones take their defaults.
"""

from __future__ import annotations

import json

from ocikit.oci.runtime.record import Record

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set (moby oci/caps/defaults.go), by number.
DEFAULT_CAPS: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}


class ProcessSpec(Record):
    """The command a container (or an exec in it) runs.

    An empty ``cwd`` is ``/`` (for an exec: the container's working directory).
    ``user`` is docker's ``-u`` text (``NAME|UID[:GROUP|GID]``, empty for
    root); it is resolved against the container's own ``/etc/passwd`` and
    ``/etc/group`` when the process starts, because only then is that root
    filesystem visible.
    """

    __slots__ = ("additional_gids", "args", "cwd", "env", "interactive", "terminal", "user")
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str
    additional_gids: tuple[int, ...]
    terminal: bool
    interactive: bool

    def __init__(self, args: tuple[str, ...], env: tuple[str, ...] = (), cwd: str = "",
                 user: str = "", additional_gids: tuple[int, ...] = (), terminal: bool = False,
                 interactive: bool = False) -> None:
        self._init(args=args, env=env, cwd=cwd, user=user, additional_gids=additional_gids,
                   terminal=terminal, interactive=interactive)

    def to_dict(self) -> dict[str, Any]:
        return {"args": list(self.args), "env": list(self.env), "cwd": self.cwd,
                "user": self.user, "additional_gids": list(self.additional_gids),
                "terminal": self.terminal, "interactive": self.interactive}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessSpec:
        return cls(args=tuple(d.get("args") or ()), env=tuple(d.get("env") or ()),
                   cwd=d.get("cwd") or "", user=d.get("user") or "",
                   additional_gids=tuple(int(g) for g in d.get("additional_gids") or ()),
                   terminal=bool(d.get("terminal")), interactive=bool(d.get("interactive")))


class Mount(Record):
    """A bind mount (``kind="bind"``, host path) or a named volume's folder."""

    __slots__ = ("destination", "kind", "name", "readonly", "source")
    source: str
    destination: str
    readonly: bool
    kind: str
    name: str

    def __init__(self, source: str, destination: str, readonly: bool = False,
                 kind: str = "bind", name: str = "") -> None:
        self._init(source=source, destination=destination, readonly=readonly, kind=kind,
                   name=name)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination,
                "readonly": self.readonly, "kind": self.kind, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mount:
        return cls(source=d["source"], destination=d["destination"],
                   readonly=bool(d.get("readonly")), kind=d.get("kind") or "bind",
                   name=d.get("name") or "")


class PortMapping(Record):
    """``-p [IP:]HOST:CTR[/tcp]``: a host listener forwarded into the container."""

    __slots__ = ("container_port", "host_ip", "host_port", "protocol")
    host_port: int
    container_port: int
    host_ip: str
    protocol: str

    def __init__(self, host_port: int, container_port: int, host_ip: str = "",
                 protocol: str = "tcp") -> None:
        self._init(host_port=host_port, container_port=container_port, host_ip=host_ip,
                   protocol=protocol)

    def to_dict(self) -> dict[str, Any]:
        return {"host_port": self.host_port, "container_port": self.container_port,
                "host_ip": self.host_ip, "protocol": self.protocol}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PortMapping:
        return cls(int(d["host_port"]), int(d["container_port"]), d.get("host_ip") or "",
                   d.get("protocol") or "tcp")


class Limits(Record):
    """Resource limits; ``None`` leaves a resource unlimited (and no cgroup is made)."""

    __slots__ = ("cpus", "memory", "pids")
    memory: int | None
    cpus: float | None
    pids: int | None

    def __init__(self, memory: int | None = None, cpus: float | None = None,
                 pids: int | None = None) -> None:
        self._init(memory=memory, cpus=cpus, pids=pids)

    def any(self) -> bool:
        return self.memory is not None or self.cpus is not None or self.pids is not None

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "cpus": self.cpus, "pids": self.pids}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Limits:
        return cls(memory=d.get("memory"), cpus=d.get("cpus"), pids=d.get("pids"))


class ContainerSpec(Record):
    """Everything needed to start a container.

    ``lower_dirs`` are read-only layer folders, topmost first (overlayfs
    order); they are shared and never written. ``upper_dir``, ``work_dir``,
    ``merged_dir`` and ``etc_dir`` are the container's own; ``create_container``
    fills them in under the container's folder when left empty.
    """

    __slots__ = (
        "auto_remove",
        "created",
        "etc_dir",
        "hostname",
        "id",
        "image",
        "image_id",
        "labels",
        "limits",
        "lower_dirs",
        "merged_dir",
        "mounts",
        "name",
        "network",
        "ports",
        "process",
        "stop_signal",
        "stop_timeout",
        "upper_dir",
        "work_dir",
    )
    process: ProcessSpec
    lower_dirs: tuple[str, ...]
    id: str
    name: str
    image: str
    image_id: str
    hostname: str
    upper_dir: str
    work_dir: str
    merged_dir: str
    etc_dir: str
    mounts: tuple[Mount, ...]
    network: str
    ports: tuple[PortMapping, ...]
    limits: Limits
    stop_signal: str
    stop_timeout: int
    auto_remove: bool
    created: str
    labels: tuple[tuple[str, str], ...]

    def __init__(self, process: ProcessSpec, lower_dirs: tuple[str, ...], id: str = "",
                 name: str = "", image: str = "", image_id: str = "", hostname: str = "",
                 upper_dir: str = "", work_dir: str = "", merged_dir: str = "",
                 etc_dir: str = "", mounts: tuple[Mount, ...] = (), network: str = "none",
                 ports: tuple[PortMapping, ...] = (), limits: Limits | None = None,
                 stop_signal: str = "SIGTERM", stop_timeout: int = 10,
                 auto_remove: bool = False, created: str = "",
                 labels: tuple[tuple[str, str], ...] = ()) -> None:
        self._init(process=process, lower_dirs=lower_dirs, id=id, name=name, image=image,
                   image_id=image_id, hostname=hostname, upper_dir=upper_dir,
                   work_dir=work_dir, merged_dir=merged_dir, etc_dir=etc_dir, mounts=mounts,
                   network=network, ports=ports,
                   limits=limits if limits is not None else Limits(),
                   stop_signal=stop_signal, stop_timeout=stop_timeout,
                   auto_remove=auto_remove, created=created, labels=labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "image": self.image, "image_id": self.image_id,
            "hostname": self.hostname, "process": self.process.to_dict(),
            "lower_dirs": list(self.lower_dirs), "upper_dir": self.upper_dir,
            "work_dir": self.work_dir, "merged_dir": self.merged_dir, "etc_dir": self.etc_dir,
            "mounts": [m.to_dict() for m in self.mounts], "network": self.network,
            "ports": [p.to_dict() for p in self.ports], "limits": self.limits.to_dict(),
            "stop_signal": self.stop_signal, "stop_timeout": self.stop_timeout,
            "auto_remove": self.auto_remove, "created": self.created,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerSpec:
        return cls(
            process=ProcessSpec.from_dict(d.get("process") or {}),
            lower_dirs=tuple(d.get("lower_dirs") or ()),
            id=d.get("id") or "", name=d.get("name") or "", image=d.get("image") or "",
            image_id=d.get("image_id") or "", hostname=d.get("hostname") or "",
            upper_dir=d.get("upper_dir") or "", work_dir=d.get("work_dir") or "",
            merged_dir=d.get("merged_dir") or "", etc_dir=d.get("etc_dir") or "",
            mounts=tuple(Mount.from_dict(m) for m in d.get("mounts") or ()),
            network=d.get("network") or "none",
            ports=tuple(PortMapping.from_dict(p) for p in d.get("ports") or ()),
            limits=Limits.from_dict(d.get("limits") or {}),
            stop_signal=d.get("stop_signal") or "SIGTERM",
            stop_timeout=int(d.get("stop_timeout", 10)),
            auto_remove=bool(d.get("auto_remove")), created=d.get("created") or "",
            labels=tuple(sorted((d.get("labels") or {}).items())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ContainerSpec:
        return cls.from_dict(json.loads(text))


def parse_signal(name: str | int) -> int:
    """``SIGTERM``, ``TERM``, ``15`` -> 15 (docker's StopSignal spellings)."""
    import signal as _signal

    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(getattr(_signal, text))
    except AttributeError:
        raise ValueError(f"unknown signal {name!r}") from None
