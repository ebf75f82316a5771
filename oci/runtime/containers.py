"""Containers on disk and their lifecycle: create, run, start, stop, exec, rm, list.

Each container is a folder ``<containers_root>/<64-hex id>/``::

    config.json   the ContainerSpec (what to run, which layers)
    state.json    created|running|exited, PID, exit code, times
    lock          flock-ed by whoever runs the container, for its lifetime
    upper/ work/  overlayfs upper and work dirs: the container's only writes
    merged/       where the root is mounted (inside the container's mount
                  namespace only, so it vanishes with the container)
    init/         mount-point placeholders the image lacks (a lower layer)
    etc/          hostname, hosts, resolv.conf, bind-mounted into the root
    log           what every run wrote, stdout and stderr apart (logs.py)

The files ocikit writes for a container live outside ``upper/`` so that
``container diff`` and ``commit`` show only what the container changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import time
from collections.abc import Iterator

from ocikit.errors import ConflictError, ContainerError, NotFoundError, UsageError
from ocikit.oci.runtime import state as st
from ocikit.oci.runtime.mounts import BASE_TARGETS, prepare_init_layer
from ocikit.oci.runtime.spec import ContainerSpec, ProcessSpec, parse_signal

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_ADJECTIVES = ("brave", "calm", "eager", "fond", "happy", "jolly", "keen", "lucid", "merry",
               "nifty", "proud", "quiet", "sharp", "tender", "vivid", "wise", "zen", "bold")
_NAMES = ("babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "kepler",
          "lovelace", "noether", "pascal", "ritchie", "shannon", "turing", "wozniak", "yalow")

HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
         "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
         "ff02::2\tip6-allrouters\n")


class Container:
    """A container folder; ``spec`` is its config.json, ``state()`` its live state."""

    def __init__(self, directory: str | os.PathLike[str], spec: ContainerSpec) -> None:
        # plain strings, not pathlib: a container start does not import it (fastrun.py)
        self.dir = os.fspath(directory)
        self.spec = spec

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def short_id(self) -> str:
        return self.spec.id[:12]

    @property
    def init_dir(self) -> str:
        return os.path.join(self.dir, "init")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "log")

    def lower_dirs(self) -> list[str]:
        """Every lower layer of the root, topmost first, with the init layer on top."""
        init = self.init_dir
        return ([init] if os.path.isdir(init) else []) + list(self.spec.lower_dirs)

    def state(self) -> st.State:
        return st.live_state(self.dir)

    def inspect(self) -> dict[str, Any]:
        """``container inspect`` JSON, with docker's and podman's key names."""
        s = self.state()
        p = self.spec.process
        return {
            "Id": self.id,
            "Name": self.name,
            "Created": self.spec.created,
            "Path": p.args[0] if p.args else "",
            "Args": list(p.args[1:]),
            "Image": self.spec.image_id or self.spec.image,
            "ImageName": self.spec.image,
            "State": {
                "Status": s.status, "Running": s.status == st.RUNNING,
                "Pid": s.pid if s.status == st.RUNNING else 0, "ExitCode": s.exit_code,
                "OOMKilled": s.oom_killed, "Error": s.error, "StartedAt": s.started_at,
                "FinishedAt": s.finished_at,
                # who runs it (podman calls its supervisor ConmonPid)
                "SupervisorPid": s.supervisor_pid if s.status == st.RUNNING else 0,
            },
            "Config": {
                "Hostname": self.spec.hostname, "User": p.user, "Env": list(p.env),
                "Cmd": list(p.args), "WorkingDir": p.cwd, "Tty": p.terminal,
                "OpenStdin": p.interactive, "Image": self.spec.image,
                "StopSignal": self.spec.stop_signal, "StopTimeout": self.spec.stop_timeout,
                "Labels": dict(self.spec.labels),
            },
            "HostConfig": {
                "NetworkMode": self.spec.network, "AutoRemove": self.spec.auto_remove,
                "Memory": self.spec.limits.memory or 0,
                "NanoCpus": int((self.spec.limits.cpus or 0) * 1e9),
                "PidsLimit": self.spec.limits.pids or 0,
                "PortBindings": {
                    f"{pm.container_port}/{pm.protocol}": [
                        {"HostIp": pm.host_ip, "HostPort": str(pm.host_port)}]
                    for pm in self.spec.ports},
            },
            "Mounts": [{"Type": m.kind, "Name": m.name, "Source": m.source,
                        "Destination": m.destination, "RW": not m.readonly}
                       for m in self.spec.mounts],
            "LogPath": self.log_path,
            "Storage": {
                "Driver": "overlay", "UpperDir": self.spec.upper_dir,
                "LowerDirs": list(self.spec.lower_dirs), "WorkDir": self.spec.work_dir,
                "MergedDir": self.spec.merged_dir,
                "InitDir": self.init_dir if os.path.isdir(self.init_dir) else "",
            },
            "GraphDriver": {"Name": "overlay", "Data": {
                "LowerDir": ":".join(self.lower_dirs()), "UpperDir": self.spec.upper_dir,
                "WorkDir": self.spec.work_dir, "MergedDir": self.spec.merged_dir}},
        }


# -- the containers folder ---------------------------------------------------
@contextlib.contextmanager
def _root_lock(root: str) -> Iterator[None]:
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(directory: str) -> Container | None:
    try:
        with open(os.path.join(directory, "config.json"), "rb") as f:
            spec = ContainerSpec.from_json(f.read())
    except (OSError, ValueError, KeyError):
        return None
    return Container(directory, spec)


def list_containers(containers_root: str | os.PathLike[str], *,
                    all: bool = True) -> list[Container]:
    """Containers newest first; ``all=False`` keeps running ones only (``ps``)."""
    root = os.fspath(containers_root)
    out = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    for name in names:
        if not _ID_RE.match(name):
            continue
        c = _load(os.path.join(root, name))
        if c is None:
            continue
        if not all and c.state().status != st.RUNNING:
            continue
        out.append(c)
    out.sort(key=lambda c: c.spec.created, reverse=True)
    return out


def get_container(containers_root: str | os.PathLike[str], ref: str) -> Container:
    """By full id, name, or unique id prefix, as docker resolves them."""
    root = os.fspath(containers_root)
    ref = ref.lstrip("/")
    if _ID_RE.match(ref):
        c = _load(os.path.join(root, ref))
        if c is not None:
            return c
    everything = list_containers(root)
    for c in everything:
        if c.name == ref:
            return c
    if re.fullmatch(r"[0-9a-f]+", ref):
        matches = [c for c in everything if c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"container id prefix {ref} is ambiguous")
    raise NotFoundError(f"no such container: {ref}")


def _random_name(taken: set[str]) -> str:
    raw = os.urandom(3)
    base = f"{_ADJECTIVES[raw[0] % len(_ADJECTIVES)]}_{_NAMES[raw[1] % len(_NAMES)]}"
    name, n = base, raw[2]
    while name in taken:
        n += 1
        name = f"{base}{n}"
    return name


def _host_hostname() -> str:
    return os.uname().nodename


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _write_etc(etc_dir: str, hostname: str, network: str) -> None:
    os.makedirs(etc_dir, exist_ok=True)
    _write(os.path.join(etc_dir, "hostname"), hostname.encode() + b"\n")
    hosts = HOSTS.encode()
    if network == "host":
        with contextlib.suppress(OSError):
            hosts = _read("/etc/hosts")
    _write(os.path.join(etc_dir, "hosts"), hosts)
    try:
        resolv = _read("/etc/resolv.conf")
    except OSError:
        resolv = b""
    _write(os.path.join(etc_dir, "resolv.conf"), resolv)


def create_container(containers_root: str | os.PathLike[str], spec: ContainerSpec) -> Container:
    """Make the container's folder and records; nothing runs yet.

    Empty ``id``, ``name``, ``hostname`` and folder fields get docker's
    defaults (random 64-hex id, a generated name, the short id as hostname).
    Bind-mount sources that do not exist are created, as ``docker run -v``
    does.
    """
    root = os.fspath(containers_root)
    if not spec.lower_dirs:
        raise UsageError("a container needs at least one lower layer")
    for d in spec.lower_dirs:
        if not os.path.isdir(d):
            raise ContainerError(f"layer folder {d} does not exist")
    if spec.network not in ("none", "host"):
        raise UsageError(f"unsupported network mode {spec.network!r} (use none or host)")
    if spec.network == "host" and spec.ports:
        raise UsageError("published ports make no sense with --network host")
    if spec.name and not _NAME_RE.match(spec.name):
        raise UsageError(f"invalid container name {spec.name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                         "are allowed")
    try:
        parse_signal(spec.stop_signal)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for m in spec.mounts:
        if not m.destination.startswith("/"):
            raise UsageError(f"mount destination {m.destination!r} is not an absolute path")
        if m.kind == "bind" and not os.path.exists(m.source):
            os.makedirs(m.source, 0o755, exist_ok=True)
    cid = spec.id or os.urandom(32).hex()
    if not _ID_RE.match(cid):
        raise UsageError(f"invalid container id {cid!r}")
    cdir = os.path.join(root, cid)
    with _root_lock(root):
        existing = list_containers(root)
        taken = {c.name for c in existing}
        if spec.name and spec.name in taken:
            other = next(c for c in existing if c.name == spec.name)
            raise ContainerError(f'the container name "{spec.name}" is already in use by '
                                 f'container "{other.id}"; remove that container to reuse it')
        name = spec.name or _random_name(taken)
        hostname = spec.hostname or (_host_hostname() if spec.network == "host" else cid[:12])
        try:
            os.mkdir(cdir, 0o710)
            for sub in ("upper", "work", "merged"):
                os.mkdir(os.path.join(cdir, sub), 0o755)
            _write_etc(os.path.join(cdir, "etc"), hostname, spec.network)
            targets = list(BASE_TARGETS)
            targets += [(m.destination, os.path.isdir(m.source)) for m in spec.mounts]
            if spec.process.cwd and spec.process.cwd != "/":
                targets.append((spec.process.cwd, True))
            init = os.path.join(cdir, "init")
            os.mkdir(init)
            if not prepare_init_layer(init, spec.lower_dirs, targets):
                os.rmdir(init)
            full = spec.with_(
                id=cid, name=name, hostname=hostname,
                upper_dir=spec.upper_dir or os.path.join(cdir, "upper"),
                work_dir=spec.work_dir or os.path.join(cdir, "work"),
                merged_dir=spec.merged_dir or os.path.join(cdir, "merged"),
                etc_dir=spec.etc_dir or os.path.join(cdir, "etc"),
                created=spec.created or st.now())
            tmp = os.path.join(cdir, "config.json.tmp")
            _write(tmp, full.to_json().encode())
            os.replace(tmp, os.path.join(cdir, "config.json"))
            st.write_state(cdir, st.State())
        except OSError as e:
            remove_dir(cdir)
            raise ContainerError(f"cannot create container {name}: {e.strerror}: "
                                 f"{e.filename or cdir}") from None
    return Container(cdir, full)


def remove_dir(directory: str | os.PathLike[str]) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


# -- running -------------------------------------------------------------------
def run_foreground(container: Container, *, stdin: int = 0, stdout: int = 1, stderr: int = 2,
                   remove: bool | None = None) -> int:
    """Start the container attached to these descriptors and return its exit code.

    ``-i`` (``spec.process.interactive``) passes ``stdin`` through, else the
    container reads /dev/null; ``-t`` (``spec.process.terminal``) gives it a
    pseudo-terminal copied to and from ``stdin``/``stdout``. Signals this
    process receives are forwarded. Raises ``StartError`` (125/126/127) when
    it cannot start. ``remove`` (default: the spec's ``auto_remove``) deletes
    the container afterwards, as ``run --rm``.
    """
    from ocikit.oci.runtime.logs import LogWriter, Source, relay
    from ocikit.oci.runtime.process import Stdio
    from ocikit.oci.runtime.supervisor import (
        Runner,
        forward_signals,
        open_pty,
        pty_session,
        start_piped,
    )

    spec = container.spec
    remove = spec.auto_remove if remove is None else remove
    runner = Runner(container.dir, spec, container.lower_dirs())
    runner.acquire()
    null = -1
    master = -1
    log: LogWriter | None = None
    pipes: list[Source] = []
    try:
        # as docker's daemon, keep what the container writes for ``logs`` (not
        # worth the write when --rm deletes it right after)
        log = None if remove else LogWriter(container.log_path)
        try:
            if spec.process.terminal:
                master, slave, console = open_pty(size_from=(stdin, stdout))
                try:
                    pid = runner.start(Stdio(slave, slave, slave, tty=True), console)
                finally:
                    os.close(slave)
            else:
                if not spec.process.interactive:
                    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                pid = start_piped(runner, stdin if null < 0 else null, pipes, stdout, stderr)
        finally:
            if null >= 0:
                os.close(null)
        with forward_signals(pid):
            if master >= 0:
                pty_session(master, pid, stdin=stdin if spec.process.interactive else None,
                            stdout=stdout, log=log)
            else:
                relay(pipes, log)
            code = runner.wait()
        runner.finish(code)
    finally:
        if master >= 0:
            os.close(master)
        if log is not None:
            log.close()
        runner.release()
        if remove:
            remove_dir(container.dir)
    return code


def start_detached(container: Container) -> int:
    """Start the container under a supervisor; returns its PID once it runs (``-d``)."""
    from ocikit.oci.runtime.supervisor import start_detached as _start

    if container.state().status == st.RUNNING:
        raise ContainerError(f"container {container.name} is already running")
    try:
        return _start(container.dir, container.spec, container.lower_dirs())
    except ContainerError:
        # as docker: --rm removes a container that could not start, too
        if container.spec.auto_remove and not st.is_locked(container.dir):
            remove_dir(container.dir)
        raise


def _wait_pid_gone(pid: int, start: int, timeout: float) -> bool:
    import select

    if not st.process_alive(pid, start):
        return True
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        if not st.process_alive(pid, start):
            return True
        return bool(select.select([pidfd], [], [], max(0.0, timeout))[0])
    finally:
        os.close(pidfd)


def _wait_unlocked(container: Container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while st.is_locked(container.dir) and time.monotonic() < deadline:
        time.sleep(0.005)


def kill(container: Container, sig: int | str = signal.SIGKILL) -> None:
    """Send ``sig`` to the container's PID 1 (``ocikit kill``)."""
    s = container.state()
    if s.status != st.RUNNING:
        raise ConflictError(f"cannot kill container {container.name}: it is not running")
    try:
        signum = parse_signal(sig)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if st.process_alive(s.pid, s.pid_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signum)


def stop(container: Container, timeout: float | None = None) -> None:
    """The stop signal (image's StopSignal, else SIGTERM), then SIGKILL after ``timeout`` s.

    Returns once the exit is recorded; stopping a stopped container is a no-op.
    """
    s = container.state()
    if s.status != st.RUNNING:
        return
    wait = container.spec.stop_timeout if timeout is None else timeout
    with contextlib.suppress(ProcessLookupError):
        if st.process_alive(s.pid, s.pid_start):
            os.kill(s.pid, parse_signal(container.spec.stop_signal))
    if not _wait_pid_gone(s.pid, s.pid_start, wait):
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGKILL)
        _wait_pid_gone(s.pid, s.pid_start, 10)
    _wait_unlocked(container, 10)


def remove(container: Container, *, force: bool = False) -> None:
    """Delete the container and its writable layer (``rm [-f]``); the image stays."""
    s = container.state()
    if s.status == st.RUNNING:
        if not force:
            raise ConflictError(f"cannot remove container {container.name}: container is "
                                "running: stop the container before removing or force remove")
        with contextlib.suppress(ProcessLookupError):
            if st.process_alive(s.pid, s.pid_start):
                os.kill(s.pid, signal.SIGKILL)
        _wait_pid_gone(s.pid, s.pid_start, 10)
        _wait_unlocked(container, 10)
        from ocikit.oci.runtime import cgroups

        cgroups.remove(container.state().cgroups)
    remove_dir(container.dir)


def exec_in(container: Container, process: ProcessSpec, *, stdin: int = 0, stdout: int = 1,
            stderr: int = 2) -> int:
    """Run ``process`` in the running container (``exec``); returns its exit code.

    The environment is the container's with ``process.env`` on top; an empty
    ``cwd`` or ``user`` means the container's.
    """
    from ocikit.oci.runtime import cgroups
    from ocikit.oci.runtime.process import Stdio, spawn_exec
    from ocikit.oci.runtime.supervisor import forward_signals, open_pty, pty_session

    s = container.state()
    if s.status != st.RUNNING:
        raise ContainerError(f"container {container.name} is not running")
    base = container.spec.process
    env = dict(e.partition("=")[::2] for e in base.env)
    env.update(e.partition("=")[::2] for e in process.env)
    proc = ProcessSpec(args=process.args, env=tuple(f"{k}={v}" for k, v in env.items()),
                       cwd=process.cwd or base.cwd, user=process.user or base.user,
                       additional_gids=process.additional_gids, terminal=process.terminal,
                       interactive=process.interactive)
    null = -1
    master = -1
    try:
        if proc.terminal:
            master, slave, _console = open_pty(size_from=(stdin, stdout))
            stdio = Stdio(slave, slave, slave, tty=True)
        else:
            if not proc.interactive:
                null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            stdio = Stdio(stdin if null < 0 else null, stdout, stderr)
            slave = -1
        try:
            helper, inner = spawn_exec(s.pid, proc, stdio, hostname=container.spec.hostname,
                                       cgroup_procs=cgroups.procs_files(s.cgroups))
        finally:
            if slave >= 0:
                os.close(slave)
        with forward_signals(inner):
            if master >= 0:
                pty_session(master, inner, stdin=stdin if proc.interactive else None,
                            stdout=stdout)
            while True:
                try:
                    status = os.waitpid(helper, 0)[1]
                    break
                except InterruptedError:
                    continue
        from ocikit.oci.runtime.process import exit_status

        return exit_status(status)
    finally:
        if null >= 0:
            os.close(null)
        if master >= 0:
            os.close(master)


def read_logs(container: Container) -> bytes:
    """Everything the container wrote, stdout and stderr together, in order."""
    from ocikit.oci.runtime.logs import payloads, read_records

    return payloads(read_records(container.log_path))


def write_logs(container: Container, out: int = 1, err: int = 2, *,
               follow: bool = False) -> None:
    """``logs [-f]``: stdout records to ``out``, stderr ones to ``err``; with
    ``follow``, keep going until the container stops."""
    from ocikit.oci.runtime import logs

    logs.follow(container.log_path, out=out, err=err,
                running=lambda: follow and container.state().status == st.RUNNING)
