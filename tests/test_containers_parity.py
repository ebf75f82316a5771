"""The container commands behave as a docker user expects (SPEC.md wins where they differ).

Every check runs the CLI as a separate process, against a busybox image from
the seeded registry.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.registry import free_port
from fixtures.seed import SeedSet
from tests.cli import Result, assert_one_line_error, ocikit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root here")


@pytest.fixture
def img(seeded_registry: SeedSet) -> str:
    ref = seeded_registry.busybox.ref
    assert ocikit("pull", "-q", ref).code == 0
    return ref


def inspect(name: str) -> dict:
    r = ocikit("container", "inspect", name)
    assert r.code == 0, r
    return json.loads(r.out)[0]


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def ocikit_in(cwd: Path, *args: str) -> Result:
    r = subprocess.run([sys.executable, "-m", "ocikit", *args], capture_output=True, text=True,
                       cwd=cwd, timeout=60)
    return Result(r.returncode, r.stdout, r.stderr)


def in_pty(*args: str, typed: bytes = b"", rows: int = 33, cols: int = 77,
           timeout: float = 20) -> tuple[int, bytes]:
    """Run ocikit with a pseudo-terminal as its stdin/stdout/stderr, as from a shell."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            os.execv(sys.executable, [sys.executable, "-m", "ocikit", *args])
        finally:
            os._exit(127)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    if typed:
        os.write(master, typed)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    return os.waitstatus_to_exitcode(status), bytes(out)


def test_run_i_pipes_stdin_and_logs_keep_every_run_and_stderr_apart(img: str) -> None:
    r = ocikit("run", "-i", "--rm", img, "cat", input="hi\n")
    assert (r.code, r.out) == (0, "hi\n"), r
    r = ocikit("run", "--rm", img, "cat", input="hi\n")  # no -i: stdin stays closed
    assert (r.code, r.out) == (0, ""), r
    # docker logs shows a foreground run's output too, stderr on stderr
    r = ocikit("run", "--name", "fg", img, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.code, r.out, r.err) == (3, "out\n", "err\n"), r
    r = ocikit("logs", "fg")
    assert (r.code, r.out, r.err) == (0, "out\n", "err\n"), r
    assert ocikit("start", "-a", "fg").code == 3
    assert ocikit("logs", "fg").out == "out\nout\n"  # every run, as docker keeps them


def test_tty_in_a_terminal_run_and_exec(img: str) -> None:
    code, out = in_pty("run", "-t", "--rm", img, "sh", "-c", "test -t 1 && echo tty; stty size;"
                       " exit 5")
    assert code == 5, out
    # the pty has the caller's size at once, with -t alone too; nothing of ocikit's
    # own (progress cursor codes) comes before the container's output
    assert out.startswith(b"tty\r"), out
    assert b"33 77" in out, out
    code, out = in_pty("run", "-it", "--rm", img, "sh", typed=b"echo in $((1+2))\nexit 3\n")
    assert code == 3 and b"in 3" in out, out

    assert ocikit("run", "-d", "--name", "box", img, "sleep", "60").code == 0
    try:
        # exec -t used to fail with 125: termios was imported after entering the container
        code, out = in_pty("exec", "-t", "box", "sh", "-c", "test -t 0 && echo tty; stty size;"
                           " exit 4")
        assert code == 4 and out.startswith(b"tty\r") and b"33 77" in out, out
        code, out = in_pty("exec", "-it", "box", "sh", typed=b"echo in $((2+2))\nexit 6\n")
        assert code == 6 and b"in 4" in out, out
        r = ocikit("exec", "-i", "box", "cat", input="piped\n")
        assert (r.code, r.out) == (0, "piped\n"), r
    finally:
        ocikit("rm", "-f", "box")


def test_start_restarts_with_the_same_layer_and_start_is_idempotent(img: str) -> None:
    r = ocikit("run", "--name", "again", img, "sh", "-c", "echo x >> /count; wc -l < /count; "
               "exit 3")
    assert (r.code, r.out.strip()) == (3, "1"), r
    r = ocikit("start", "-a", "again")
    assert (r.code, r.out.strip()) == (3, "2"), r
    r = ocikit("start", "again")
    assert (r.code, r.out) == (0, "again\n"), r
    assert wait_for(lambda: inspect("again")["State"]["Status"] == "exited")
    assert ocikit("logs", "again").out.split() == ["1", "2", "3"]

    assert ocikit("run", "-d", "--name", "up", img, "sleep", "60").code == 0
    try:
        pid = inspect("up")["State"]["Pid"]
        r = ocikit("start", "up")  # docker: starting a running container is a no-op
        assert (r.code, r.out) == (0, "up\n"), r
        assert inspect("up")["State"]["Pid"] == pid
    finally:
        ocikit("rm", "-f", "up")
    # without -a a failed start is exit 1 (run and start -a give 127)
    assert ocikit("create", "--name", "bad", img, "nosuch").code == 0
    assert_one_line_error(ocikit("start", "bad"), 1, "nosuch")
    assert_one_line_error(ocikit("start", "-a", "bad"), 127, "nosuch")
    assert_one_line_error(ocikit("start", "missing"), 1, "no such container: missing")


def test_detached_rm_and_logs_follow(img: str) -> None:
    r = ocikit("run", "-d", "--rm", "--name", "gone", img, "sh", "-c", "exit 2")
    assert r.code == 0, r
    assert wait_for(lambda: ocikit("ps", "-aq").out == "")
    # --rm also removes a container that could not start
    assert_one_line_error(ocikit("run", "-d", "--rm", img, "nosuch"), 127, "nosuch")
    assert ocikit("ps", "-aq").out == ""

    r = ocikit("run", "-d", "--name", "f", img, "sh", "-c",
               "echo one; sleep 0.5; echo two >&2; sleep 0.5; echo three")
    assert r.code == 0, r
    t0 = time.monotonic()
    r = ocikit("logs", "-f", "f", timeout=30)
    assert time.monotonic() - t0 < 20  # it ended with the container
    assert (r.code, r.out, r.err) == (0, "one\nthree\n", "two\n"), r


def test_stop_kill_rm_and_inspect_errors(img: str) -> None:
    assert ocikit("run", "-d", "--name", "t", img, "sh", "-c",
                  "trap 'echo got-term; exit 7' TERM; echo ready; "
                  "while :; do sleep 0.1; done").code == 0
    assert wait_for(lambda: ocikit("logs", "t").out == "ready\n")  # the trap is set
    r = ocikit("rm", "t")
    assert_one_line_error(r, 1, "t", "running")
    assert len(r.err.strip().splitlines()) == 1
    assert_one_line_error(ocikit("kill", "-s", "NOSUCH", "t"), 2, "NOSUCH")
    r = ocikit("kill", "-s", "TERM", "t")
    assert (r.code, r.out) == (0, "t\n"), r
    assert wait_for(lambda: inspect("t")["State"]["Status"] == "exited")
    assert inspect("t")["State"]["ExitCode"] == 7
    assert ocikit("logs", "t").out == "ready\ngot-term\n"
    r = ocikit("stop", "t")  # docker: stopping a stopped container is fine
    assert (r.code, r.out) == (0, "t\n"), r
    assert_one_line_error(ocikit("kill", "t"), 1, "not running")
    # docker goes on with the other names and exits 1 at the end
    r = ocikit("stop", "nope", "t")
    assert (r.code, r.out) == (1, "t\n") and "no such container: nope" in r.err, r
    assert_one_line_error(ocikit("container", "inspect", "nope"), 1, "no such container: nope")
    assert ocikit("rm", "t").code == 0
    assert ocikit("create", "--name", "t", img, "true").code == 0  # the name is free again


def test_killed_supervisor_shows_exited(img: str) -> None:
    assert ocikit("run", "-d", "--name", "orphan", img, "sleep", "60").code == 0
    state = inspect("orphan")["State"]
    sup = state["SupervisorPid"]
    assert sup > 0 and state["Pid"] > 0
    os.kill(sup, signal.SIGKILL)
    # the container dies with it (a zombie nobody may reap), and ps must say so
    assert wait_for(lambda: json.loads(ocikit("ps", "--json").out) == [])
    info = inspect("orphan")["State"]
    assert (info["Status"], info["Running"], info["ExitCode"]) == ("exited", False, 255)
    assert "Exited (255)" in ocikit("ps", "-a").out
    assert ocikit("rm", "orphan").code == 0


def test_ps_columns_and_published_ports(img: str) -> None:
    port = free_port()
    assert ocikit("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", img,
                  "sleep", "60").code == 0
    try:
        r = ocikit("run", "-d", "--name", "web2", "-p", f"{port}:80", img, "sleep", "60")
        assert_one_line_error(r, 125, f"cannot publish port 0.0.0.0:{port}")
        assert ocikit("create", "--name", "idle", img, "echo", "a long command line here").code == 0
        lines = ocikit("ps").out.splitlines()
        assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                    "PORTS", "NAMES"]
        assert len(lines) == 2, lines
        row = lines[1]
        assert '"sleep 60"' in row and " ago " in row and " Up " in row, row
        assert f"127.0.0.1:{port}->80/tcp" in row and row.endswith("web"), row
        rows = {ln.split()[-1]: ln for ln in ocikit("ps", "-a").out.splitlines()[1:]}
        assert set(rows) == {"web", "web2", "idle"}
        assert "Created" in rows["idle"] and '"echo a long command…"' in rows["idle"]
        assert "Exited (125)" in rows["web2"]
    finally:
        ocikit("rm", "-f", "web", "web2", "idle")


def test_env_user_hostname_entrypoint_workdir(img: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nA=1\n  B=two words\nFROM_HOST\nC=file\n")
    script = 'echo "$A|$B|$FROM_HOST|$C|$ALSO_HOST|${UNSET_ON_HOST-x}"'
    r = ocikit("run", "--rm", "--env-file", str(env_file), "-e", "C=flag", "-e", "ALSO_HOST",
               "-e", "UNSET_ON_HOST", img, "sh", "-c", script,
               env={**os.environ, "FROM_HOST": "h1", "ALSO_HOST": "h2"})
    assert (r.code, r.out) == (0, "1|two words|h1|flag|h2|x\n"), r
    assert ocikit("run", "--rm", "--env-file", str(tmp_path / "nope"), img, "true").code == 2
    r = ocikit("run", "--rm", "-u", "1000:1000", img, "sh", "-c", "id -u; id -g")
    assert r.out.split() == ["1000", "1000"], r
    r = ocikit("run", "--rm", "-u", "nobody", img, "id", "-un")
    assert r.out.strip() == "nobody", r
    assert_one_line_error(ocikit("run", "--rm", "-u", "nosuch", img, "true"), 125, "nosuch")
    r = ocikit("run", "--rm", "--hostname", "myhost", img, "sh", "-c",
               "hostname; cat /etc/hostname; echo $HOSTNAME")
    assert r.out.split() == ["myhost"] * 3, r
    r = ocikit("run", "--rm", "--entrypoint", "", img, "echo", "hi")
    assert (r.code, r.out) == (0, "hi\n"), r
    assert_one_line_error(ocikit("run", "--rm", "-w", "rel", img, "pwd"), 2, "rel")


def test_limits_are_applied(img: str) -> None:
    from ocikit.oci.runtime import cgroups

    r = ocikit("run", "-d", "--name", "lim", "--cpus", "0.5", "--pids-limit", "20",
               "--memory", "64m", img, "sleep", "60")
    assert r.code == 0, r
    cid = r.out.strip()
    try:
        root = Path("/sys/fs/cgroup")
        if cgroups.is_v2():
            g = root / "ocikit" / cid
            assert (g / "cpu.max").read_text().split() == ["50000", "100000"]
            assert (g / "pids.max").read_text().strip() == "20"
            assert (g / "memory.max").read_text().strip() == str(64 << 20)
        else:
            assert (root / "cpu/ocikit" / cid / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (root / "pids/ocikit" / cid / "pids.max").read_text().strip() == "20"
            assert (root / "memory/ocikit" / cid /
                    "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        r = ocikit("exec", "lim", "sh", "-c", "for i in $(seq 30); do sleep 5 & done")
        assert r.code != 0 and "can't fork" in r.err, r
    finally:
        ocikit("rm", "-f", "lim")
    assert_one_line_error(ocikit("run", "--rm", "--memory", "64x", img, "true"), 2, "64x")


def test_volumes_as_docker(img: str, tmp_path: Path) -> None:
    assert ocikit("volume", "create", "v").code == 0
    assert ocikit("volume", "create", "v").code == 0  # docker: idempotent
    assert ocikit("create", "--name", "user", "-v", "v:/data", img, "true").code == 0
    assert_one_line_error(ocikit("volume", "rm", "v"), 1, "in use", "user")
    assert ocikit("rm", "user").code == 0
    assert ocikit("volume", "rm", "v").code == 0
    assert_one_line_error(ocikit("volume", "rm", "v"), 1, "no such volume")
    # ./path is a bind mount relative to the current folder (docker CLI 23+), a bare
    # name a named volume
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "f").write_text("bound\n")
    r = ocikit_in(tmp_path, "run", "--rm", "-v", "./rel:/r:ro", "-v", "named:/n", img,
                  "sh", "-c", "cat /r/f; touch /r/x 2>/dev/null || echo ro; touch /n/y")
    assert (r.code, r.out) == (0, "bound\nro\n"), r
    assert [v["Name"] for v in json.loads(ocikit("volume", "ls", "--json").out)] == ["named"]


def test_commit_of_a_running_container(img: str) -> None:
    assert ocikit("run", "-d", "--name", "live", img, "sh", "-c",
                  "echo made > /made; sleep 60").code == 0
    try:
        assert wait_for(lambda: "A /made" in ocikit("container", "diff", "live").out)
        r = ocikit("commit", "live", "local/live:1")
        assert r.code == 0 and r.out.startswith("sha256:"), r
        assert inspect("live")["State"]["Status"] == "running"
    finally:
        ocikit("rm", "-f", "live")
    r = ocikit("run", "--rm", "local/live:1", "cat", "/made")
    assert (r.code, r.out) == (0, "made\n"), r


def test_merged_stdout_and_stderr_keep_their_order(img: str) -> None:
    # `ocikit run … 2>&1` (or a terminal): the lines arrive as the container wrote them.
    import subprocess
    import sys

    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"
    r = subprocess.run([sys.executable, "-m", "ocikit", "run", "--rm", img, "sh", "-c", script],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
    want = "".join(f"out{i}\nerr{i}\n" for i in range(1, 6))
    assert r.stdout.endswith(want), r.stdout
