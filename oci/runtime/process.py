"""Starting the container's process (and exec'd ones) in their namespaces.

The parent clones the container process straight into new mount, UTS, IPC,
PID (and network) namespaces, so it is PID 1 at once. The child sets up the
root filesystem, drops privileges and calls execve; a close-on-exec status
pipe tells the parent whether that worked: EOF means the command runs, a
message means setup failed (125), the command cannot be executed (126) or
was not found (127), docker's codes.

Code in a child never returns into the caller's Python stack: it ends in
``execve`` or ``os._exit``, so no atexit handler, test framework or buffered
stdout of the parent runs twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import termios
from collections.abc import Sequence

from ocikit.errors import ContainerError
from ocikit.oci.runtime import libc
from ocikit.oci.runtime.record import Record
from ocikit.oci.runtime.spec import DEFAULT_CAPS, DEFAULT_PATH, ContainerSpec, ProcessSpec

EXIT_SETUP = 125
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127


class StartError(ContainerError):
    """The container's process did not start; ``exit_code`` is docker's 125/126/127."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stdio(Record):
    """Descriptors that become the process's 0, 1 and 2; ``tty`` when they are a pty slave."""

    __slots__ = ("stderr", "stdin", "stdout", "tty")
    stdin: int
    stdout: int
    stderr: int
    tty: bool

    def __init__(self, stdin: int, stdout: int, stderr: int, tty: bool = False) -> None:
        self._init(stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)


class User(Record):
    __slots__ = ("gid", "groups", "home", "name", "uid")
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...], home: str,
                 name: str) -> None:
        self._init(uid=uid, gid=gid, groups=groups, home=home, name=name)


def exit_status(status: int) -> int:
    """A waitpid status as docker reports it: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128 + os.WSTOPSIG(status)


# -- /etc/passwd and /etc/group of the container -----------------------------
def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f
                    if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(spec: str, root: str = "/") -> User:
    """docker's ``-u NAME|UID[:GROUP|GID]`` against ``root``'s passwd and group files."""
    user_part, _, group_part = spec.partition(":")
    user_part = user_part or "0"
    passwd = [e for e in _read_db(os.path.join(root, "etc/passwd")) if len(e) >= 7]
    groups = [e for e in _read_db(os.path.join(root, "etc/group")) if len(e) >= 3]
    entry = None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((e for e in passwd if e[2] == user_part), None)
    else:
        entry = next((e for e in passwd if e[0] == user_part), None)
        if entry is None:
            raise StartError(f"unable to find user {user_part}: no matching entries in "
                             "passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and entry[5] else "/"
    name = entry[0] if entry is not None else ""
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            g = next((e for e in groups if e[0] == group_part), None)
            if g is None:
                raise StartError(f"unable to find group {group_part}: no matching entries in "
                                 "group file")
            gid = int(g[2])
    extra: list[int] = []
    if name:
        for g in groups:
            members = g[3].split(",") if len(g) > 3 else []
            if name in members and g[2].isdigit() and int(g[2]) not in extra:
                extra.append(int(g[2]))
    # runc's rule: without any membership the primary group is the only one
    return User(uid, gid, tuple(extra) or (gid,), home, name)


def build_env(env: Sequence[str], *, home: str, hostname: str, terminal: bool) -> dict[str, str]:
    """The process environment as docker builds it: PATH, HOSTNAME, HOME, TERM defaults."""
    out: dict[str, str] = {"PATH": DEFAULT_PATH}
    if hostname:
        out["HOSTNAME"] = hostname
    if terminal:
        out["TERM"] = "xterm"
    for item in env:
        k, sep, v = item.partition("=")
        if k and sep:
            out[k] = v
    out.setdefault("HOME", home)
    return out


# -- the child side ---------------------------------------------------------
def _report(status_w: int, code: int, message: str) -> None:
    try:
        os.write(status_w, f"err {code} {message}\n".encode(errors="replace"))
    except OSError:
        pass


def _die(status_w: int, code: int, message: str) -> None:
    _report(status_w, code, message)
    os._exit(code)


def _setup_stdio(stdio: Stdio) -> None:
    os.setsid()
    for target, fd in enumerate((stdio.stdin, stdio.stdout, stdio.stderr)):
        if fd != target:
            os.dup2(fd, target)
        else:
            os.set_inheritable(target, True)
    if stdio.tty:
        # termios is imported at the top: an exec runs this after joining the
        # container's mount namespace, where the host's Python modules are gone
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _loopback_up() -> None:
    import _socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM, 0)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
    finally:
        s.close()


def _join_cgroups(procs_files: Sequence[str]) -> None:
    for path in procs_files:
        # "0" is the writing process itself, whatever PID namespace it is in
        with open(path, "w") as f:
            f.write("0")


def _drop_privileges(user: User, extra_gids: Sequence[int]) -> None:
    keep = 0
    for bit in DEFAULT_CAPS.values():
        keep |= 1 << bit
    for cap in range(libc.last_cap() + 1):
        if not keep & (1 << cap):
            libc.capbset_drop(cap)
    groups = list(dict.fromkeys([*user.groups, *extra_gids]))
    os.setgroups(groups)
    os.setgid(user.gid)
    # setuid to non-root clears permitted and effective sets (no KEEP_CAPS)
    os.setuid(user.uid)
    if user.uid == 0:
        libc.capset(keep, keep, 0)
    libc.set_no_new_privs()


def _exec(process: ProcessSpec, env: dict[str, str], status_w: int) -> None:
    """execve the command (PATH search as docker/runc do); reports 126/127 and exits."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                signal.SIGQUIT, signal.SIGCHLD, signal.SIGWINCH, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    libc.cloexec_from(3)
    cmd = process.args[0]
    if "/" in cmd:
        candidates = [cmd]
    else:
        candidates = [os.path.join(d or ".", cmd)
                      for d in env.get("PATH", DEFAULT_PATH).split(":")]
    denied: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, list(process.args), env)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if e.errno == errno.EACCES:
                denied = denied or e
                continue
            _die(status_w, EXIT_CANNOT_EXEC, f'exec: "{cmd}": {os.strerror(e.errno or 0)}')
    if denied is not None:
        _die(status_w, EXIT_CANNOT_EXEC, f'exec: "{cmd}": permission denied')
    if "/" in cmd:
        _die(status_w, EXIT_NOT_FOUND, f'exec: "{cmd}": stat {cmd}: no such file or directory')
    _die(status_w, EXIT_NOT_FOUND, f'exec: "{cmd}": executable file not found in $PATH')


def start_process(process: ProcessSpec, *, hostname: str, status_w: int) -> None:
    """In the container's root: become the user, chdir and execve. Never returns."""
    if not process.args:
        _die(status_w, EXIT_SETUP, "no command specified")
    user = resolve_user(process.user)
    env = build_env(process.env, home=user.home, hostname=hostname, terminal=process.terminal)
    cwd = process.cwd or "/"
    try:
        if not os.path.isdir(cwd) and not os.path.lexists(cwd):
            # docker creates a missing working directory
            os.makedirs(cwd, 0o755)
            os.chown(cwd, user.uid, user.gid)
    except OSError as e:
        _die(status_w, EXIT_SETUP, f"cannot create working directory {cwd}: {e.strerror}")
    _drop_privileges(user, process.additional_gids)
    try:
        os.chdir(cwd)
    except OSError as e:
        code = EXIT_CANNOT_EXEC if e.errno == errno.EACCES else EXIT_SETUP
        _die(status_w, code, f"chdir to cwd ({cwd!r}) set in config.json failed: "
                             f"{e.strerror}")
    _exec(process, env, status_w)


def _container_child(spec: ContainerSpec, stdio: Stdio, status_w: int,
                     cgroup_procs: Sequence[str], links_dir: str | None,
                     lower_dirs: Sequence[str], console: str | None) -> None:
    from ocikit.oci.runtime import mounts

    try:
        libc.set_pdeathsig(signal.SIGKILL)
        _setup_stdio(stdio)
        _join_cgroups(cgroup_procs)
        mounts.make_private_root()
        mounts.mount_overlay(lower_dirs, spec.upper_dir, spec.work_dir, spec.merged_dir,
                             links_dir)
        mounts.setup_rootfs(spec.merged_dir, etc_dir=spec.etc_dir, mounts=spec.mounts,
                            console=console)
        if spec.network != "host":
            _loopback_up()
        if spec.hostname:
            libc.sethostname(spec.hostname)
        mounts.pivot(spec.merged_dir)
        mounts.mask_paths()
        start_process(spec.process, hostname=spec.hostname, status_w=status_w)
    except StartError as e:
        _die(status_w, e.exit_code, str(e))
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        _die(status_w, EXIT_SETUP, f"{e.strerror or e}{':' if where else ''}{where}")
    except BaseException as e:
        _die(status_w, EXIT_SETUP, f"container setup failed: {e!r}")
    os._exit(EXIT_SETUP)


# -- the parent side --------------------------------------------------------
def _read_status(status_r: int) -> list[str]:
    chunks = []
    while True:
        try:
            data = os.read(status_r, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
    os.close(status_r)
    return b"".join(chunks).decode(errors="replace").splitlines()


def _raise_from_status(lines: Sequence[str]) -> None:
    for line in lines:
        if line.startswith("err "):
            _, code, message = line.split(" ", 2)
            raise StartError(message, int(code))


def namespace_flags(spec: ContainerSpec) -> int:
    flags = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWPID
    if spec.network != "host":
        flags |= libc.CLONE_NEWNET
    return flags


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def spawn_container(spec: ContainerSpec, stdio: Stdio, *, lower_dirs: Sequence[str],
                    cgroup_procs: Sequence[str] = (), links_dir: str | None = None,
                    console: str | None = None) -> tuple[int, int]:
    """Start the container's PID 1 and wait until it has exec'd.

    Returns (PID to ``waitpid`` for, host PID of the container's PID 1): the
    same process normally. A raw ``clone`` skips glibc's fork bookkeeping
    (malloc and stdio locks), which is safe only in a single-threaded
    process; a threaded caller first forks a helper (glibc's fork, so the
    helper is single-threaded and sound) that clones the container, waits
    for it and exits with its docker-style status.

    Raises ``StartError`` (125/126/127) when it could not start; the child has
    then been reaped.
    """
    args = (spec, stdio, lower_dirs, cgroup_procs, links_dir, console)
    if _single_threaded():
        pid = _spawn_direct(*args)
        return pid, pid
    status_r, status_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(status_r)
        try:
            libc.set_pdeathsig(signal.SIGKILL)
            for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            inner = _spawn_direct(*args)
            os.write(status_w, f"pid {inner}\n".encode())
            os.close(status_w)
            os._exit(exit_status(_reap(inner)))
        except StartError as e:
            _die(status_w, e.exit_code, str(e))
        except BaseException as e:
            _die(status_w, EXIT_SETUP, f"container start failed: {e!r}")
        os._exit(EXIT_SETUP)
    os.close(status_w)
    lines = _read_status(status_r)
    try:
        _raise_from_status(lines)
    except StartError:
        _reap(helper)
        raise
    inner = next((int(line.split()[1]) for line in lines if line.startswith("pid ")), 0)
    if not inner:
        _reap(helper)
        raise StartError("the container's start helper died")
    return helper, inner


def _spawn_direct(spec: ContainerSpec, stdio: Stdio, lower_dirs: Sequence[str],
                  cgroup_procs: Sequence[str], links_dir: str | None,
                  console: str | None) -> int:
    status_r, status_w = os.pipe()
    try:
        pid = libc.clone_fork(namespace_flags(spec))
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        raise StartError(f"cannot create the container's namespaces: {e.strerror}") from None
    if pid == 0:
        os.close(status_r)
        _container_child(spec, stdio, status_w, cgroup_procs, links_dir, lower_dirs, console)
        os._exit(EXIT_SETUP)
    os.close(status_w)
    lines = _read_status(status_r)
    try:
        _raise_from_status(lines)
    except StartError:
        _reap(pid)
        raise
    return pid


def _reap(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


_NAMESPACES = (("ipc", libc.CLONE_NEWIPC), ("uts", libc.CLONE_NEWUTS),
               ("net", libc.CLONE_NEWNET), ("pid", libc.CLONE_NEWPID),
               ("mnt", libc.CLONE_NEWNS))


def _exec_child(target_pid: int, process: ProcessSpec, stdio: Stdio, status_w: int,
                cgroup_procs: Sequence[str], hostname: str) -> None:
    try:
        libc.set_pdeathsig(signal.SIGKILL)
        fds = [(os.open(f"/proc/{target_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag)
               for name, flag in _NAMESPACES]
        _join_cgroups(cgroup_procs)
        # this is a fresh fork, so single-threaded: setns(CLONE_NEWNS) is allowed;
        # joining the mount namespace also moves / and cwd to the container's root
        for fd, flag in fds:
            libc.setns(fd, flag)
            os.close(fd)
        pid = os.fork()
        if pid == 0:
            libc.set_pdeathsig(signal.SIGKILL)
            _setup_stdio(stdio)
            start_process(process, hostname=hostname, status_w=status_w)
            os._exit(EXIT_SETUP)
        os.write(status_w, f"pid {pid}\n".encode())
        os.close(status_w)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        os._exit(exit_status(_reap(pid)))
    except StartError as e:
        _die(status_w, e.exit_code, str(e))
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        _die(status_w, EXIT_SETUP, f"cannot enter the container: {e.strerror or e}{where}")
    except BaseException as e:
        _die(status_w, EXIT_SETUP, f"exec failed: {e!r}")
    os._exit(EXIT_SETUP)


def spawn_exec(target_pid: int, process: ProcessSpec, stdio: Stdio, *, hostname: str = "",
               cgroup_procs: Sequence[str] = ()) -> tuple[int, int]:
    """Run ``process`` inside the namespaces of ``target_pid``.

    Returns (helper PID to wait for, host PID of the process for signals). The
    helper stays outside the container's PID namespace (joining one only
    applies to children) and exits with the process's docker-style status.
    """
    status_r, status_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(status_r)
        _exec_child(target_pid, process, stdio, status_w, cgroup_procs, hostname)
        os._exit(EXIT_SETUP)
    os.close(status_w)
    lines = _read_status(status_r)
    try:
        _raise_from_status(lines)
    except StartError:
        _reap(helper)
        raise
    inner = next((int(line.split()[1]) for line in lines if line.startswith("pid ")), helper)
    return helper, inner
