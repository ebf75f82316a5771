"""docker-run options turned into runtime values: the process, ports, limits.

The CLI parses flags; these functions give them docker's meaning, so the
rules live in one place and can be tested without a command line.
``container_spec`` joins them with what the image says, for both ways a
container is created: from the image machinery (``ocikit.containers``) and
from the container start path (``commands/fastrun.py``), which must not
import that machinery.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from ocikit.errors import UsageError
from ocikit.oci.runtime.record import Record
from ocikit.oci.runtime.spec import ContainerSpec, Limits, PortMapping, ProcessSpec

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocikit.oci.descriptor import ImageConfig, Platform

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# Labels a container keeps so that commit can find its image's exact manifest.
MANIFEST_LABEL = "io.ocikit.image.manifest"
MANIFEST_TYPE_LABEL = "io.ocikit.image.manifest-type"


class RunOptions(Record):
    """What ``run``/``create`` take from the command line."""

    __slots__ = (
        "auto_remove",
        "command",
        "cpus",
        "entrypoint",
        "env",
        "hostname",
        "interactive",
        "labels",
        "memory",
        "name",
        "network",
        "pids_limit",
        "platform",
        "publish",
        "tty",
        "user",
        "volumes",
        "workdir",
    )
    command: tuple[str, ...]
    name: str
    entrypoint: str | None
    env: tuple[str, ...]
    volumes: tuple[str, ...]
    workdir: str | None
    user: str | None
    network: str
    publish: tuple[str, ...]
    tty: bool
    interactive: bool
    memory: str | None
    cpus: str | None
    pids_limit: int | None
    auto_remove: bool
    hostname: str
    platform: Platform | None
    labels: dict[str, str]

    def __init__(self, command: tuple[str, ...] = (), name: str = "",
                 entrypoint: str | None = None, env: tuple[str, ...] = (),
                 volumes: tuple[str, ...] = (), workdir: str | None = None,
                 user: str | None = None, network: str = "none", publish: tuple[str, ...] = (),
                 tty: bool = False, interactive: bool = False, memory: str | None = None,
                 cpus: str | None = None, pids_limit: int | None = None,
                 auto_remove: bool = False, hostname: str = "",
                 platform: Platform | None = None, labels: dict[str, str] | None = None) -> None:
        self._init(command=command, name=name, entrypoint=entrypoint, env=env, volumes=volumes,
                   workdir=workdir, user=user, network=network, publish=publish, tty=tty,
                   interactive=interactive, memory=memory, cpus=cpus, pids_limit=pids_limit,
                   auto_remove=auto_remove, hostname=hostname, platform=platform,
                   labels=dict(labels or {}))


class ImageDefaults(Record):
    """What a container takes from its image's config (``config`` in the JSON)."""

    __slots__ = ("cmd", "entrypoint", "env", "labels", "stop_signal", "user", "working_dir")
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...]
    working_dir: str
    user: str
    labels: tuple[tuple[str, str], ...]
    stop_signal: str

    def __init__(self, entrypoint: tuple[str, ...] | None = None,
                 cmd: tuple[str, ...] | None = None, env: tuple[str, ...] = (),
                 working_dir: str = "", user: str = "",
                 labels: tuple[tuple[str, str], ...] = (), stop_signal: str = "") -> None:
        self._init(entrypoint=entrypoint, cmd=cmd, env=env, working_dir=working_dir, user=user,
                   labels=labels, stop_signal=stop_signal)

    @classmethod
    def of(cls, config: ImageConfig) -> ImageDefaults:
        return cls(entrypoint=config.entrypoint, cmd=config.cmd, env=config.env,
                   working_dir=config.working_dir, user=config.user,
                   labels=tuple(config.labels.items()), stop_signal=config.stop_signal)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ImageDefaults:
        """From the parsed config JSON, read as ``ImageConfig.parse`` reads it."""
        cfg = obj.get("config") or {}
        if not isinstance(cfg, dict):
            cfg = {}

        def strs(v: Any) -> tuple[str, ...] | None:
            if v is None:
                return None
            if isinstance(v, str):
                return (v,)
            return tuple(str(x) for x in v)

        return cls(entrypoint=strs(cfg.get("Entrypoint")), cmd=strs(cfg.get("Cmd")),
                   env=strs(cfg.get("Env")) or (),
                   working_dir=str(cfg.get("WorkingDir", "") or ""),
                   user=str(cfg.get("User", "") or ""),
                   labels=tuple((str(k), str(v)) for k, v in (cfg.get("Labels") or {}).items()),
                   stop_signal=str(cfg.get("StopSignal", "") or ""))


class ImageRef(Record):
    """Which stored image a container is made from, and its layer folders."""

    __slots__ = ("image_id", "manifest_digest", "manifest_type", "name", "snapshots")
    name: str  # as the user's reference resolved: docker.io/library/busybox:latest
    image_id: str  # the config's digest
    manifest_digest: str
    manifest_type: str
    snapshots: tuple[str, ...]  # bottom layer first

    def __init__(self, name: str, image_id: str, manifest_digest: str, manifest_type: str,
                 snapshots: tuple[str, ...]) -> None:
        self._init(name=name, image_id=image_id, manifest_digest=manifest_digest,
                   manifest_type=manifest_type, snapshots=snapshots)


def merge_env(base: Sequence[str], overrides: Sequence[str],
              host_env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Image env, then ``-e`` values by key; ``-e NAME`` alone copies the host's value."""
    host = os.environ if host_env is None else host_env
    out: dict[str, str] = {}
    for item in base:
        k, _, v = item.partition("=")
        if k:
            out[k] = v
    for item in overrides:
        k, sep, v = item.partition("=")
        if not k:
            raise UsageError(f"invalid environment variable {item!r}")
        if sep:
            out[k] = v
        elif k in host:
            out[k] = host[k]
    return tuple(f"{k}={v}" for k, v in out.items())


def read_env_file(path: str) -> tuple[str, ...]:
    """docker's ``--env-file``: ``K=V`` lines taken as they are (no quoting), ``K``
    alone for the host's value, blank lines and ``#`` comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read env file {path}: {e}") from None
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key = line.partition("=")[0]
        if not key or any(ch.isspace() for ch in key):
            raise UsageError(f"{path}:{n}: invalid variable name {key!r}")
        out.append(line)
    return tuple(out)


def container_spec(image: ImageRef, defaults: ImageDefaults, opts: RunOptions,
                   volumes_dir: str | os.PathLike[str]) -> ContainerSpec:
    """The container ``docker run`` would make of this image and these options.

    Named volumes are created here (``-v name:/path``), as docker does on create.
    """
    from ocikit.oci.runtime.volumes import parse_volume_arg

    process = process_from_image(defaults, command=opts.command, entrypoint=opts.entrypoint,
                                 env=opts.env, workdir=opts.workdir, user=opts.user,
                                 tty=opts.tty, interactive=opts.interactive)
    labels = dict(defaults.labels)
    labels.update(opts.labels)
    labels[MANIFEST_LABEL] = image.manifest_digest
    labels[MANIFEST_TYPE_LABEL] = image.manifest_type
    return ContainerSpec(
        process=process,
        # overlayfs wants the topmost layer first
        lower_dirs=tuple(reversed(image.snapshots)),
        name=opts.name,
        image=image.name,
        image_id=image.image_id,
        hostname=opts.hostname,
        mounts=tuple(parse_volume_arg(v, volumes_dir) for v in opts.volumes),
        network=opts.network,
        ports=tuple(parse_publish(p) for p in opts.publish),
        limits=Limits(memory=parse_memory(opts.memory) if opts.memory else None,
                      cpus=parse_cpus(opts.cpus) if opts.cpus else None,
                      pids=opts.pids_limit),
        stop_signal=defaults.stop_signal or "SIGTERM",
        auto_remove=opts.auto_remove,
        labels=tuple(sorted(labels.items())),
    )


def process_from_image(config: ImageDefaults | None, *, command: Sequence[str] = (),
                       entrypoint: str | None = None, env: Sequence[str] = (),
                       workdir: str | None = None, user: str | None = None,
                       tty: bool = False, interactive: bool = False) -> ProcessSpec:
    """Entrypoint/Cmd/Env/WorkingDir/User of the image, overridden as ``docker run`` does.

    ``--entrypoint`` replaces the image's entrypoint and drops its Cmd (an
    empty string clears the entrypoint); a command on the line replaces Cmd.
    """
    image_ep: tuple[str, ...] = tuple(config.entrypoint or ()) if config else ()
    image_cmd: tuple[str, ...] = tuple(config.cmd or ()) if config else ()
    if entrypoint is not None:
        ep: tuple[str, ...] = (entrypoint,) if entrypoint else ()
        cmd = tuple(command)
    else:
        ep = image_ep
        cmd = tuple(command) if command else image_cmd
    args = ep + cmd
    if not args:
        raise UsageError("no command specified (the image has no Entrypoint or Cmd)")
    cwd = workdir if workdir is not None else (config.working_dir if config else "")
    if cwd and not cwd.startswith("/"):
        raise UsageError(f"the working directory {cwd!r} is not an absolute path")
    return ProcessSpec(args=args, env=merge_env(config.env if config else (), env),
                       cwd=cwd or "/", user=user if user is not None else
                       (config.user if config else ""), terminal=tty, interactive=interactive)


def parse_publish(text: str) -> PortMapping:
    """``-p [IP:]HOST:CTR[/tcp]`` (IPv6 as ``[::1]:HOST:CTR``)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto != "tcp":
        raise UsageError(f"only tcp ports can be published: {text!r}")
    ip = ""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise UsageError(f"invalid port specification {text!r}")
        ip, spec = spec[1:end], spec[end + 2:]
    parts = spec.split(":")
    if len(parts) == 3 and not ip:
        ip, host, ctr = parts
    elif len(parts) == 2:
        host, ctr = parts
    else:
        raise UsageError(f"invalid port specification {text!r} (want [IP:]HOST:CTR)")
    try:
        hp, cp = int(host), int(ctr)
    except ValueError:
        raise UsageError(f"invalid port number in {text!r}") from None
    if not (0 < hp < 65536 and 0 < cp < 65536):
        raise UsageError(f"port out of range in {text!r}")
    return PortMapping(host_port=hp, container_port=cp, host_ip=ip, protocol=proto)


def parse_memory(text: str) -> int:
    """``--memory 512m`` -> bytes (b, k, m, g, t; docker's binary units)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"invalid memory size {text!r}")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 6 * 1024 * 1024:
        raise UsageError("the minimum memory limit is 6m")
    return value


def parse_cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --cpus value {text!r}") from None
    if value <= 0 or value > (os.cpu_count() or 1) * 64:
        raise UsageError(f"--cpus {text} is out of range")
    return value
