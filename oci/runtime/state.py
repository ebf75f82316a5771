"""A container's state on disk, and how to tell a live one from a stale record.

``state.json`` is rewritten atomically by whoever runs the container (the
foreground ``run`` or a detached supervisor). That process holds an
exclusive ``flock`` on the container's ``lock`` file for its whole life: the
kernel drops it when the process dies, however it dies, so a record saying
"running" without a lock holder is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

from ocikit.oci.runtime.record import Record

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CREATED = "created"
RUNNING = "running"
EXITED = "exited"
# docker's code for a container whose end nobody saw
EXIT_UNKNOWN = 255


def now() -> str:
    """RFC 3339 UTC with nanoseconds, as docker prints times."""
    t = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 1_000_000_000)) + \
        f".{t % 1_000_000_000:09d}Z"


class State(Record):
    __slots__ = (
        "cgroups",
        "error",
        "exit_code",
        "finished_at",
        "oom_killed",
        "pid",
        "pid_start",
        "started_at",
        "status",
        "supervisor_pid",
    )
    status: str
    pid: int
    pid_start: int
    supervisor_pid: int
    exit_code: int
    started_at: str
    finished_at: str
    error: str
    oom_killed: bool
    cgroups: tuple[str, ...]

    def __init__(self, status: str = CREATED, pid: int = 0, pid_start: int = 0,
                 supervisor_pid: int = 0, exit_code: int = 0, started_at: str = "",
                 finished_at: str = "", error: str = "", oom_killed: bool = False,
                 cgroups: tuple[str, ...] = ()) -> None:
        self._init(status=status, pid=pid, pid_start=pid_start, supervisor_pid=supervisor_pid,
                   exit_code=exit_code, started_at=started_at, finished_at=finished_at,
                   error=error, oom_killed=oom_killed, cgroups=cgroups)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "pid": self.pid, "pid_start": self.pid_start,
                "supervisor_pid": self.supervisor_pid, "exit_code": self.exit_code,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "error": self.error, "oom_killed": self.oom_killed,
                "cgroups": list(self.cgroups)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> State:
        return cls(status=d.get("status") or CREATED, pid=int(d.get("pid") or 0),
                   pid_start=int(d.get("pid_start") or 0),
                   supervisor_pid=int(d.get("supervisor_pid") or 0),
                   exit_code=int(d.get("exit_code") or 0),
                   started_at=d.get("started_at") or "", finished_at=d.get("finished_at") or "",
                   error=d.get("error") or "", oom_killed=bool(d.get("oom_killed")),
                   cgroups=tuple(d.get("cgroups") or ()))


def read_state(container_dir: str) -> State:
    try:
        with open(os.path.join(container_dir, "state.json"), "rb") as f:
            return State.from_dict(json.load(f))
    except (OSError, ValueError):
        return State()


def write_state(container_dir: str, state: State) -> None:
    path = os.path.join(container_dir, "state.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state.to_dict(), f)
    os.replace(tmp, path)


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (0 if gone): tells a PID from a reused one.

    A zombie counts as gone: a container whose supervisor was killed is
    reparented to an init that may never reap it, and its /proc entry (with
    the same start time) then outlives the process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return 0
    return int(rest[19]) if len(rest) > 19 else 0


def process_alive(pid: int, start: int) -> bool:
    return pid > 0 and start > 0 and process_start_time(pid) == start


def lock_path(container_dir: str) -> str:
    return os.path.join(container_dir, "lock")


def try_lock(container_dir: str) -> int | None:
    """Take the run lock (non-blocking); returns the held descriptor or None if taken."""
    fd = os.open(lock_path(container_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(container_dir: str) -> bool:
    """Whether a live process (foreground run or supervisor) holds the run lock."""
    try:
        fd = os.open(lock_path(container_dir), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def live_state(container_dir: str) -> State:
    """The recorded state, corrected when whoever ran the container died unseen."""
    st = read_state(container_dir)
    if st.status != RUNNING or is_locked(container_dir):
        return st
    # re-read: the runner may have just recorded the exit and let go of the lock
    st = read_state(container_dir)
    if st.status != RUNNING:
        return st
    if process_alive(st.pid, st.pid_start):
        return st
    with contextlib.suppress(OSError):
        st = st.with_(status=EXITED, exit_code=EXIT_UNKNOWN, finished_at=st.finished_at or now(),
                      error=st.error or "the process supervising the container died")
        write_state(container_dir, st)
    return st
