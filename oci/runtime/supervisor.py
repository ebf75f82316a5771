"""Running a container to its end: in the foreground, or from a detached supervisor.

A ``Runner`` does what both need: hold the container's run lock, make its
cgroups and port listeners, start it, record ``running`` with the PID, wait,
and record the exit code. ``run -d`` forks a supervisor (setsid, a second
fork, every inherited descriptor closed) that is a Runner outliving the
ocikit command. Both read the container's stdout and stderr from pipes and
append them to its ``log`` (``logs.relay``), as docker's daemon does; the
foreground one also copies them to the caller.

This module is on the start path: it imports nothing heavy (no registry
client, no tarfile); ports and the pty helpers load only when used.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence

from ocikit.errors import ContainerError
from ocikit.oci.runtime import cgroups
from ocikit.oci.runtime import state as st
from ocikit.oci.runtime.logs import write_all
from ocikit.oci.runtime.process import StartError, Stdio, exit_status, spawn_container
from ocikit.oci.runtime.spec import ContainerSpec

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocikit.oci.runtime.logs import LogWriter, Source
    from ocikit.oci.runtime.ports import Forwarder

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


class Runner:
    """One run of a container, from lock to recorded exit."""

    def __init__(self, container_dir: str, spec: ContainerSpec, lower_dirs: Sequence[str]) -> None:
        self.dir = container_dir
        self.spec = spec
        self.lower_dirs = list(lower_dirs)
        self.pid = 0
        self._wait_pid = 0
        self._lock: int | None = None
        self._cgroups: list[str] = []
        self._forwarder: Forwarder | None = None

    def acquire(self) -> None:
        self._lock = st.try_lock(self.dir)
        if self._lock is None:
            raise ContainerError(f"container {self.spec.name or self.spec.id} is already running")

    def start(self, stdio: Stdio, console: str | None = None) -> int:
        try:
            self._cgroups = cgroups.create(self.spec.id, self.spec.limits)
            if self.spec.ports:
                from ocikit.oci.runtime.ports import Forwarder

                self._forwarder = Forwarder(self.spec.ports)
            self._wait_pid, self.pid = spawn_container(
                self.spec, stdio, lower_dirs=self.lower_dirs,
                cgroup_procs=cgroups.procs_files(self._cgroups),
                links_dir=os.path.join(self.dir, "l"), console=console)
        except ContainerError as e:
            self._cleanup()
            st.write_state(self.dir, st.State(
                status=st.EXITED, exit_code=getattr(e, "exit_code", 125), error=str(e),
                finished_at=st.now()))
            raise
        st.write_state(self.dir, st.State(
            status=st.RUNNING, pid=self.pid, pid_start=st.process_start_time(self.pid),
            supervisor_pid=os.getpid(), started_at=st.now(), cgroups=tuple(self._cgroups)))
        if self._forwarder is not None:
            self._forwarder.start(self.pid)
        return self.pid

    def wait(self) -> int:
        while True:
            try:
                return exit_status(os.waitpid(self._wait_pid, 0)[1])
            except InterruptedError:
                continue
            except ChildProcessError:
                return st.EXIT_UNKNOWN

    def finish(self, code: int) -> None:
        old = st.read_state(self.dir)
        oom = cgroups.oom_killed(self._cgroups)
        self._cleanup()
        st.write_state(self.dir, old.with_(status=st.EXITED, exit_code=code,
                                           finished_at=st.now(), oom_killed=oom, cgroups=()))

    def _cleanup(self) -> None:
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        cgroups.remove(self._cgroups)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


@contextlib.contextmanager
def forward_signals(pid: int, extra: dict[int, object] | None = None) -> Iterator[None]:
    """Pass signals the foreground ocikit gets on to the container's process."""
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)

    try:
        old = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    except ValueError:  # not the main thread (the API used from a thread): no forwarding
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- terminals --------------------------------------------------------------
def open_pty(size_from: Sequence[int] = ()) -> tuple[int, int, str]:
    """A new pty (master, slave, slave's name), sized like the first terminal of
    ``size_from`` before the container starts, so its first ``stty size`` is right."""
    master, slave = os.openpty()
    term = next((fd for fd in size_from if fd >= 0 and os.isatty(fd)), None)
    if term is not None:
        copy_winsize(term, master)
    return master, slave, os.ttyname(slave)


def copy_winsize(src: int, dst: int) -> None:
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        ws = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, ws)


def pty_session(master: int, pid: int, *, stdin: int | None, stdout: int,
                log: LogWriter | None = None) -> None:
    """Copy between the caller's terminal and the container's pty until it closes.

    The caller's tty (if ``stdin`` is one) goes to raw mode so keys like
    Ctrl-C reach the container's line discipline; the window size follows
    SIGWINCH. Output also goes to ``log`` (as stdout: a pty has one stream);
    a negative ``stdout`` sends it to the log only.
    """
    import select
    import termios
    import threading
    import tty

    saved = None
    if stdin is not None and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        # TCSANOW: input typed ahead of the container start must not be flushed
        tty.setraw(stdin, termios.TCSANOW)
    # as docker, the window size follows the caller's terminal with -t alone too
    term = next((fd for fd in (stdin, stdout) if fd is not None and os.isatty(fd)), None)
    old_winch = None
    if term is not None:
        copy_winsize(term, master)
        if threading.current_thread() is threading.main_thread():
            src = term
            old_winch = signal.signal(signal.SIGWINCH, lambda *_: copy_winsize(src, master))
    try:
        inputs = [master] + ([stdin] if stdin is not None else [])
        while True:
            try:
                ready, _, _ = select.select(inputs, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    return
                if log is not None:
                    from ocikit.oci.runtime.logs import STDOUT

                    log.write(STDOUT, data)
                if stdout >= 0:
                    write_all(stdout, data)
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 1 << 16)
                if data:
                    write_all(master, data)
                else:
                    # end of input: the terminal's EOF character
                    write_all(master, b"\x04")
                    inputs.remove(stdin)
    finally:
        if saved is not None and stdin is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


def start_piped(runner: Runner, stdin: int, sources: list[Source],
                out: int = -1, err: int = -1) -> int:
    """Start with stdout and stderr on pipes (added to ``sources``, for ``relay``),
    as docker's daemon reads a container's output; returns the PID."""
    from ocikit.oci.runtime.logs import STDERR, STDOUT, Source

    if out >= 0 and err >= 0 and _same_file(out, err):
        # The caller merged the two (a terminal, or 2>&1): one pipe keeps the
        # order the container wrote in, which two relayed pipes would not.
        r, w = os.pipe()
        try:
            pid = runner.start(Stdio(stdin, w, w))
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        sources.append(Source(r, STDOUT, out))
        return pid
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = runner.start(Stdio(stdin, out_w, err_w))
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    sources += [Source(out_r, STDOUT, out), Source(err_r, STDERR, err)]
    return pid


def _same_file(a: int, b: int) -> bool:
    try:
        return os.path.sameopenfile(a, b)
    except OSError:
        return False


# -- detached ---------------------------------------------------------------
def _close_inherited(keep: Sequence[int]) -> None:
    """Close every descriptor above 2 but ``keep``: a caller's capture pipes must see EOF."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 20)


def start_detached(container_dir: str, spec: ContainerSpec, lower_dirs: Sequence[str]) -> int:
    """Start the container under a supervisor that outlives this process; returns its PID.

    Raises ``StartError`` (125/126/127) when the container could not start.
    """
    ready_r, ready_w = os.pipe()
    first = os.fork()
    if first == 0:
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                _supervise(container_dir, spec, lower_dirs, ready_w)
        finally:
            os._exit(0)
    os.close(ready_w)
    while True:
        try:
            os.waitpid(first, 0)
            break
        except InterruptedError:
            continue
    chunks = []
    while True:
        data = os.read(ready_r, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(ready_r)
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("err "):
            _, code, message = line.split(" ", 2)
            raise StartError(message, int(code))
        if line.startswith("pid "):
            return int(line.split()[1])
    raise ContainerError(f"the supervisor of container {spec.name or spec.id} died at start")


def _supervise(container_dir: str, spec: ContainerSpec, lower_dirs: Sequence[str],
               ready_w: int) -> None:
    """The supervisor process: never returns."""
    code = 0
    try:
        os.chdir("/")
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        ready = os.dup2(ready_w, 3) if ready_w != 3 else 3
        os.set_inheritable(ready, False)
        _close_inherited([ready])
        for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(s, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGALRM, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        from ocikit.oci.runtime.logs import LogWriter, relay

        runner = Runner(container_dir, spec, lower_dirs)
        master = -1
        pipes: list[Source] = []
        try:
            runner.acquire()
            log = LogWriter(os.path.join(container_dir, "log"))
            if spec.process.terminal:
                master, slave, console = open_pty()
                try:
                    pid = runner.start(Stdio(slave, slave, slave, tty=True), console)
                finally:
                    os.close(slave)
            else:
                pid = start_piped(runner, 0, pipes)
        except ContainerError as e:
            os.write(ready, f"err {getattr(e, 'exit_code', 125)} {e}\n".encode())
            code = 1
            return
        os.write(ready, f"pid {pid}\n".encode())
        os.close(ready)
        if master >= 0:
            pty_session(master, pid, stdin=None, stdout=-1, log=log)
        else:
            relay(pipes, log)
        rc = runner.wait()
        runner.finish(rc)
        runner.release()
        if spec.auto_remove:
            from ocikit.oci.runtime.containers import remove_dir

            remove_dir(container_dir)
    except BaseException:
        code = 1
    finally:
        os._exit(code)
