"""Real containers over a busybox lower dir, as root: output, exit codes, isolation."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from fixtures.images import busybox_entries, tar_bytes
from ocikit.errors import ContainerError, NotFoundError, UsageError
from ocikit.oci.runtime import containers as rt
from ocikit.oci.runtime.mounts import overlay_options, secure_join
from ocikit.oci.runtime.process import StartError, resolve_user
from ocikit.oci.runtime.spec import ContainerSpec, Limits, ProcessSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def make_busybox(root: Path) -> Path:
    """Extract the busybox fixture layer (a test may use tarfile for this)."""
    lower = root / "snapshots" / ("b" * 64)
    lower.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(busybox_entries()))) as tf:
        tf.extractall(lower, filter="fully_trusted")
    # tarfile re-applies each hardlink entry's mode to the shared busybox inode
    os.chmod(lower / "bin" / "busybox", 0o755)
    return lower


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)} {st.st_mode} {st.st_uid} {st.st_gid} "
                     f"{st.st_mtime_ns}\n".encode())
            if os.path.isfile(p) and not os.path.islink(p):
                h.update(Path(p).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox(tmp_path_factory.mktemp("bb"))


@pytest.fixture
def croot(tmp_path: Path) -> Path:
    return tmp_path / "containers"


def new(croot: Path, lower: Path, *args: str, **kw) -> rt.Container:
    proc_kw = {k: kw.pop(k) for k in ("env", "cwd", "user", "terminal", "interactive")
               if k in kw}
    spec = ContainerSpec(process=ProcessSpec(args=args, **proc_kw), lower_dirs=(str(lower),),
                         **kw)
    return rt.create_container(croot, spec)


def run(c: rt.Container, **kw) -> tuple[int, str]:
    with tempfile.TemporaryFile() as out:
        code = rt.run_foreground(c, stdout=out.fileno(), stderr=out.fileno(), **kw)
        out.seek(0)
        return code, out.read().decode()


def test_output_exit_code_pid1_hostname(croot, busybox):
    c = new(croot, busybox, "sh", "-c", 'echo hello; echo "pid=$$"; hostname; exit 3')
    code, out = run(c)
    assert code == 3
    assert out.splitlines() == ["hello", "pid=1", c.id[:12]]
    s = c.state()
    assert (s.status, s.exit_code) == ("exited", 3)
    assert c.inspect()["State"]["ExitCode"] == 3


def test_env_user_cwd(croot, busybox):
    c = new(croot, busybox, "sh", "-c", 'echo "$FOO|$HOME|$PATH"; id; pwd',
            env=("FOO=bar baz",), user="app", cwd="/tmp", hostname="box")
    code, out = run(c)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == ("bar baz|/home/app|"
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    assert lines[1] == "uid=1000(app) gid=1000(app) groups=50(staff)"
    assert lines[2] == "/tmp"
    code, out = run(new(croot, busybox, "id", user="1:50"))
    assert out.strip().startswith("uid=1(daemon) gid=50(staff)")
    code, out = run(new(croot, busybox, "hostname", hostname="box"))
    assert out.strip() == "box"


def test_missing_workdir_is_created_outside_upper(croot, busybox):
    c = new(croot, busybox, "pwd", cwd="/work/dir")
    assert run(c) == (0, "/work/dir\n")
    assert os.listdir(c.spec.upper_dir) == []


@pytest.mark.parametrize(("args", "user", "code", "text"), [
    (("nosuch",), "", 127, "executable file not found"),
    (("/bin/nosuch",), "", 127, "no such file"),
    (("/etc",), "", 126, "permission denied"),
    (("/etc/passwd",), "", 126, "permission denied"),
    (("true",), "ghost", 125, "unable to find user ghost"),
])
def test_start_failures(croot, busybox, args, user, code, text):
    c = new(croot, busybox, *args, user=user)
    with pytest.raises(StartError) as ei:
        run(c)
    assert ei.value.exit_code == code
    assert text in str(ei.value)
    assert c.state().status == "exited"
    assert c.state().exit_code == code


def test_killed_by_signal_maps_to_128_plus_n(croot, busybox):
    # PID 1 ignores signals it has no handler for, except SIGKILL from outside
    c = new(croot, busybox, "sh", "-c", "trap 'exit 0' USR1; kill -TERM $$; sleep 0; "
            "echo alive")
    assert run(c) == (0, "alive\n")
    c = new(croot, busybox, "sleep", "30")
    pid = rt.start_detached(c)
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while c.state().status == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.state().exit_code == 137


def test_isolation_and_upper_dir(croot, busybox):
    before = tree_hash(busybox)
    a = new(croot, busybox, "sh", "-c",
            "echo data > /etc/newfile; rm /bin/wc; echo x >> /etc/passwd")
    assert run(a) == (0, "")
    b = new(croot, busybox, "sh", "-c", "cat /etc/newfile; ls /bin/wc; tail -1 /etc/passwd")
    code, out = run(b)
    assert code == 0
    assert "No such file" in out and "/bin/wc" in out
    assert out.endswith("app:x:1000:1000:app:/home/app:/bin/sh\n")
    assert tree_hash(busybox) == before
    info = a.inspect()
    upper = Path(info["Storage"]["UpperDir"])
    assert (upper / "etc" / "newfile").read_text() == "data\n"
    assert info["Storage"]["LowerDirs"] == [str(busybox)]
    assert info["Storage"]["MergedDir"] == os.path.join(a.dir, "merged")
    # hostname, hosts and resolv.conf are bind mounts, not upper-dir files
    assert sorted(os.listdir(upper / "etc")) == ["newfile", "passwd"]


def test_namespaces_caps_and_mounts(croot, busybox):
    script = ("grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls /sys/class/net; "
              "echo 1 > /proc/sys/kernel/ns_last_pid || echo ro-proc; "
              "touch /sys/x 2>/dev/null || echo ro-sys; ls /dev/pts; "
              "cat /etc/hostname; ps -o pid,comm | wc -l")
    code, out = run(new(croot, busybox, "sh", "-c", script))
    assert code == 0
    assert "CapEff:\t00000000a80425fb" in out
    assert "CapBnd:\t00000000a80425fb" in out
    assert "NoNewPrivs:\t1" in out
    assert out.count("lo\n") == 1 and "eth0" not in out
    assert "ro-proc" in out and "ro-sys" in out and "ptmx" in out
    # only the shell, ps and wc: nothing of the host is visible
    assert out.strip().endswith("4")
    # a non-root user keeps no effective capabilities
    code, out = run(new(croot, busybox, "grep", "CapEff", "/proc/self/status", user="app"))
    assert out.strip() == "CapEff:\t0000000000000000"


def test_network_host_shares_interfaces(croot, busybox):
    code, out = run(new(croot, busybox, "ls", "/sys/class/net", network="host"))
    assert code == 0
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


def test_stdin_passthrough_and_devnull(croot, busybox):
    r, w = os.pipe()
    os.write(w, b"from stdin\n")
    os.close(w)
    c = new(croot, busybox, "cat", interactive=True)
    try:
        code, out = run(c, stdin=r)
    finally:
        os.close(r)
    assert (code, out) == (0, "from stdin\n")
    assert run(new(croot, busybox, "cat")) == (0, "")


def test_tty(croot, busybox):
    c = new(croot, busybox, "sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; "
            "ls -l /proc/self/fd/0", terminal=True)
    code, out = run(c)
    assert code == 0
    assert "is-a-tty" in out and "/dev/pts/0" in out


def test_lifecycle_names_list_remove(croot, busybox):
    c = new(croot, busybox, "true", name="web")
    assert len(c.id) == 64 and c.state().status == "created"
    with pytest.raises(ContainerError, match="already in use"):
        new(croot, busybox, "true", name="web")
    with pytest.raises(UsageError):
        new(croot, busybox, "true", name="bad/name")
    other = new(croot, busybox, "true")
    assert other.name and other.name != "web"
    assert rt.get_container(croot, "web").id == c.id
    assert rt.get_container(croot, c.id[:10]).id == c.id
    assert {x.id for x in rt.list_containers(croot)} == {c.id, other.id}
    assert rt.list_containers(croot, all=False) == []
    assert run(c)[0] == 0
    rt.remove(c)
    with pytest.raises(NotFoundError):
        rt.get_container(croot, "web")
    # the name is free again
    new(croot, busybox, "true", name="web")


def test_detached_logs_stop_and_rm(croot, busybox):
    c = new(croot, busybox, "sh", "-c", "echo started; echo err >&2; sleep 60", name="bg")
    pid = rt.start_detached(c)
    assert pid > 0
    s = c.state()
    assert s.status == "running" and s.pid == pid
    assert [x.id for x in rt.list_containers(croot, all=False)] == [c.id]
    deadline = time.monotonic() + 5
    while b"err" not in rt.read_logs(c) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rt.read_logs(c) == b"started\nerr\n"
    with pytest.raises(ContainerError, match="running"):
        rt.remove(c)
    with pytest.raises(ContainerError, match="already running"):
        rt.start_detached(c)
    # sh as PID 1 ignores SIGTERM: stop falls back to SIGKILL after the timeout
    t0 = time.monotonic()
    rt.stop(c, timeout=1)
    took = time.monotonic() - t0
    assert 0.9 < took < 5
    s = c.state()
    assert (s.status, s.exit_code) == ("exited", 137)
    rt.remove(c)
    assert not os.path.exists(c.dir)


def test_stop_honours_stop_signal_and_handler(croot, busybox):
    c = new(croot, busybox, "sh", "-c", "trap 'echo bye; exit 7' USR1; echo ready; "
            "while true; do sleep 0.1; done", stop_signal="SIGUSR1")
    rt.start_detached(c)
    # Signal only once the trap is set: before it, PID 1 ignores USR1.
    deadline = time.monotonic() + 10
    while rt.read_logs(c) != b"ready\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    rt.stop(c, timeout=10)
    assert time.monotonic() - t0 < 3
    assert c.state().exit_code == 7
    assert rt.read_logs(c) == b"ready\nbye\n"


def test_detached_does_not_hold_callers_pipes(croot, busybox, tmp_path):
    c = new(croot, busybox, "sleep", "60")
    code = (f"import sys; sys.path.insert(0, {str(Path.cwd())!r});"
            "from ocikit.oci.runtime import containers as rt;"
            f"c = rt.get_container({str(croot)!r}, {c.id!r}); print(rt.start_detached(c))")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 10
    assert int(res.stdout) == c.state().pid
    rt.remove(c, force=True)
    assert not os.path.exists(c.dir)


def test_dead_supervisor_is_noticed(croot, busybox):
    c = new(croot, busybox, "sleep", "60")
    pid = rt.start_detached(c)
    sup = c.state().supervisor_pid
    assert sup not in (0, os.getpid())
    os.kill(sup, 9)
    deadline = time.monotonic() + 10
    while c.state().status == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    s = c.state()
    assert s.status == "exited" and s.exit_code == 255
    # the container died with its supervisor (no orphan left running)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


def test_exec(croot, busybox):
    c = new(croot, busybox, "sh", "-c", "echo inside > /tmp/f; sleep 60", env=("A=1",))
    rt.start_detached(c)
    try:
        deadline = time.monotonic() + 5
        while not (Path(c.spec.upper_dir) / "tmp" / "f").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with tempfile.TemporaryFile() as out:
            code = rt.exec_in(c, ProcessSpec(args=("sh", "-c", 'cat /tmp/f; echo "$A$B $$"; '
                                                   "hostname; id -u; exit 4"),
                                             env=("B=2",), user="app"),
                              stdout=out.fileno(), stderr=out.fileno())
            out.seek(0)
            lines = out.read().decode().splitlines()
        assert code == 4
        assert lines[0] == "inside"
        assert lines[1].startswith("12 ") and lines[1] != "12 1"
        assert lines[2:] == [c.id[:12], "1000"]
        with tempfile.TemporaryFile() as out:
            code = rt.exec_in(c, ProcessSpec(args=("sh", "-c", "test -t 1 && echo tty"),
                                             terminal=True), stdout=out.fileno())
            out.seek(0)
            assert (code, out.read()) == (0, b"tty\r\n")
        with pytest.raises(StartError) as ei:
            rt.exec_in(c, ProcessSpec(args=("nosuch",)))
        assert ei.value.exit_code == 127
    finally:
        rt.remove(c, force=True)
    with pytest.raises(ContainerError, match="not running"):
        rt.exec_in(new(croot, busybox, "true"), ProcessSpec(args=("true",)))


def test_volumes_bind_ro_and_named(croot, busybox, tmp_path):
    from ocikit.oci.runtime.volumes import list_volumes, parse_volume_arg, remove_volume

    vroot = tmp_path / "volumes"
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "in").write_text("from host\n")
    ro = parse_volume_arg(f"{host}:/mnt/ro:ro", vroot)
    named = parse_volume_arg("cache:/etc", vroot)
    assert named.kind == "volume" and list_volumes(vroot) == ["cache"]
    c = new(croot, busybox, "sh", "-c", "cat /mnt/ro/in; touch /mnt/ro/x || echo ro-ok; "
            "ls /etc/passwd && echo vol > /etc/kept", mounts=(ro, named))
    code, out = run(c, remove=True)
    assert code == 0, out
    assert "from host" in out and "ro-ok" in out and "/etc/passwd" in out
    data = Path(named.source)
    assert (data / "kept").read_text() == "vol\n"
    # the empty volume got the image's /etc first, as docker does
    assert (data / "passwd").exists()
    c2 = new(croot, busybox, "cat", "/etc/kept", mounts=(named,))
    assert run(c2) == (0, "vol\n")
    with pytest.raises(UsageError):
        parse_volume_arg("rel/path:/x", vroot)
    remove_volume(vroot, "cache")
    assert list_volumes(vroot) == []


def test_twenty_containers_are_cheap(croot, busybox):
    def du(p: Path) -> int:
        return sum(os.lstat(os.path.join(d, f)).st_blocks * 512
                   for d, dirs, files in os.walk(p) for f in dirs + files)

    first = new(croot, busybox, "sh", "-c", "echo x > /tmp/x")
    run(first)
    base = du(croot)
    for _ in range(20):
        run(new(croot, busybox, "sh", "-c", "echo x > /tmp/x"))
    assert du(croot) - base < 5 * 1024 * 1024


def test_published_port(croot, busybox, tmp_path):
    import socket
    import urllib.request

    from ocikit.oci.runtime.spec import PortMapping

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = new(croot, busybox, "sh", "-c", "mkdir -p /www && echo served > /www/index.html && "
            "exec httpd -f -p 80 -h /www",
            ports=(PortMapping(host_port=port, container_port=80, host_ip="127.0.0.1"),))
    rt.start_detached(c)
    try:
        body = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.05)
        assert body == b"served\n"
    finally:
        rt.stop(c, timeout=1)
        rt.remove(c)


def test_memory_limit_oom_kills(croot, busybox):
    c = new(croot, busybox, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1",
            limits=Limits(memory=16 * 1024 * 1024, pids=64, cpus=0.5))
    code, _ = run(c)
    assert code == 137
    assert c.state().oom_killed
    ok = new(croot, busybox, "dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1",
             limits=Limits(memory=64 * 1024 * 1024))
    assert run(ok)[0] == 0


def test_pids_limit(croot, busybox):
    c = new(croot, busybox, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done 2>&1; wait",
            limits=Limits(pids=4))
    # busybox sh gives up (status 2) when fork fails
    code, out = run(c)
    assert code == 2
    assert "can't fork" in out or "Resource temporarily unavailable" in out


def test_resolve_user_and_helpers(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:34::/var/www:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndata:x:34:\nextra:x:99:web,other\n")
    u = resolve_user("web", str(tmp_path))
    assert (u.uid, u.gid, u.groups, u.home) == (33, 34, (99,), "/var/www")
    u = resolve_user("4242:data", str(tmp_path))
    assert (u.uid, u.gid, u.groups, u.home) == (4242, 34, (34,), "/")
    with pytest.raises(StartError, match="group nope"):
        resolve_user("web:nope", str(tmp_path))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "etc").mkdir()
    os.symlink("/etc/shadow", tmp_path / "root" / "etc" / "hosts")
    os.symlink("../../../..", tmp_path / "root" / "up")
    assert secure_join(str(tmp_path / "root"), "/etc/hosts") == str(tmp_path / "root/etc/shadow")
    assert secure_join(str(tmp_path / "root"), "up/x") == str(tmp_path / "root/x")


def test_many_layers_fit_the_mount_options(tmp_path):
    lowers = [str(tmp_path / "snapshots" / f"{i:064x}") for i in range(120)]
    base, opts = overlay_options(lowers, "/u", "/w", links_dir=str(tmp_path / "l"))
    assert base == str(tmp_path / "l") and len(opts) < 4096
    assert opts.startswith("lowerdir=0:1:2:")
    base, opts = overlay_options(lowers[:50], "/u", "/w")
    assert base == str(tmp_path / "snapshots") and f"lowerdir={0:064x}:" in opts


def test_many_real_layers(croot, busybox, tmp_path):
    layers = [str(busybox)]
    for i in range(70):
        d = tmp_path / "snapshots" / f"{i:064x}"
        (d / "layers").mkdir(parents=True)
        (d / "layers" / str(i)).write_text(str(i))
        layers.insert(0, str(d))
    c = rt.create_container(croot, ContainerSpec(
        process=ProcessSpec(args=("sh", "-c", "ls /layers | wc -l")), lower_dirs=tuple(layers)))
    assert run(c) == (0, "70\n")


def test_foreground_forwards_signals(croot, busybox):
    import signal

    c = new(croot, busybox, "sh", "-c", "trap 'echo got-term; exit 5' TERM; "
            "while true; do sleep 0.05; done")
    code = (f"import sys; sys.path.insert(0, {str(Path.cwd())!r});"
            "from ocikit.oci.runtime import containers as rt;"
            f"c = rt.get_container({str(croot)!r}, {c.id!r}); sys.exit(rt.run_foreground(c))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while c.state().status != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert (p.returncode, out) == (5, b"got-term\n")
    assert c.state().exit_code == 5


def test_auto_remove_detached(croot, busybox):
    c = new(croot, busybox, "true", auto_remove=True)
    rt.start_detached(c)
    deadline = time.monotonic() + 10
    while os.path.exists(c.dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(c.dir)


@pytest.mark.timeout(60)
def test_tty_from_a_terminal_raw_mode_and_window_size(croot, busybox):
    import fcntl
    import struct
    import termios
    import threading

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    before = termios.tcgetattr(slave)
    got = bytearray()

    def reader():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            got.extend(data)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    c = new(croot, busybox, "sh", terminal=True, interactive=True)
    os.write(master, b"busybox stty size; exit 3\n")
    try:
        code = rt.run_foreground(c, stdin=slave, stdout=slave, stderr=slave)
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(slave)
        t.join(5)
        os.close(master)
    assert code == 3
    assert b"33 101" in bytes(got)


def test_threaded_caller(croot, busybox):
    import threading

    # a raw clone is unsafe with other threads alive: a forked helper starts it instead
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert run(new(croot, busybox, "sh", "-c", "echo $$; exit 3")) == (3, "1\n")
        with pytest.raises(StartError) as ei:
            run(new(croot, busybox, "nosuch"))
        assert ei.value.exit_code == 127
    finally:
        stop.set()
        t.join()
