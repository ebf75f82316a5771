"""``ocikit run`` and the container lifecycle: registry → store → snapshots → container."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.images import LayoutWriter, busybox_entries, file, whiteout
from fixtures.registry import free_port
from fixtures.seed import SeedSet
from tests.cli import assert_one_line_error, ocikit

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root here")


def store_root() -> Path:
    return Path(os.environ["OCIKIT_STORE"])


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames + dirnames):
            p = Path(dirpath, n)
            st = p.lstat()
            h.update(f"{p.relative_to(root)} {st.st_mode} {st.st_uid} {st.st_size}\n".encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def busybox_ref(seeded_registry: SeedSet) -> str:
    return seeded_registry.busybox.ref


def inspect(name: str) -> dict:
    r = ocikit("container", "inspect", name)
    assert r.code == 0, r
    return json.loads(r.out)[0]


def test_run_rm_pulls_and_runs(busybox_ref: str) -> None:
    r = ocikit("run", "--rm", busybox_ref, "sh", "-c", "echo hello; echo $$; hostname")
    assert r.code == 0, r
    lines = r.out.split()
    assert lines[0] == "hello" and lines[1] == "1" and len(lines[2]) == 12
    assert not [p for p in (store_root() / "containers").iterdir() if p.name != ".lock"]
    assert ocikit("images", "-q").out.strip() == busybox_ref  # run kept what it pulled
    assert ocikit("run", "--rm", busybox_ref, "sh", "-c", "exit 7").code == 7
    r = ocikit("run", "--rm", busybox_ref, "no-such-command")
    assert_one_line_error(r, 127, "no-such-command")
    r = ocikit("run", "--rm", busybox_ref, "/etc/passwd")
    assert r.code == 126, r
    r = ocikit("run", "--rm", f"{busybox_ref}-missing", "true")
    assert_one_line_error(r, 125)
    r = ocikit("run", "--rm", "-p", "8080:80", "--network", "host", busybox_ref, "true")
    assert_one_line_error(r, 2, "--network host")


def test_env_user_workdir(busybox_ref: str) -> None:
    r = ocikit("run", "--rm", "-e", "FOO=bar", "-u", "app", "-w", "/tmp", busybox_ref,
               "sh", "-c", "echo $FOO $(id -u):$(id -g) $(pwd)")
    assert r.code == 0, r
    assert r.out.strip() == "bar 1000:1000 /tmp"


def test_create_start_ps_rm_and_isolation(busybox_ref: str) -> None:
    assert ocikit("pull", "-q", busybox_ref).code == 0
    a = ocikit("create", "--name", "a", busybox_ref, "sh", "-c",
               "echo from-a > /etc/written; rm /etc/group")
    b = ocikit("create", "--name", "b", busybox_ref, "sh", "-c",
               "test ! -e /etc/written && test -e /etc/group && echo clean")
    assert a.code == 0 and b.code == 0, (a, b)
    lowers = inspect("a")["Storage"]["LowerDirs"]
    assert lowers and all(Path(d).is_dir() for d in lowers)
    assert all(Path(d).parent == store_root() / "snapshots" for d in lowers)
    before = [tree_digest(Path(d)) for d in lowers]
    assert ocikit("ps", "-a", "--json").code == 0
    names = {c["Name"]: c["State"] for c in json.loads(ocikit("ps", "-a", "--json").out)}
    assert names == {"a": "created", "b": "created"}
    r = ocikit("start", "-a", "a")
    assert r.code == 0, r
    r = ocikit("start", "-a", "b")
    assert r.code == 0 and r.out.strip() == "clean", r
    info = inspect("a")
    upper = Path(info["Storage"]["UpperDir"])
    assert (upper / "etc" / "written").read_text() == "from-a\n"
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 0
    assert [tree_digest(Path(d)) for d in lowers] == before  # snapshots untouched
    diff = ocikit("container", "diff", "a").out.splitlines()
    assert "A /etc/written" in diff and "D /etc/group" in diff and "C /etc" in diff
    assert_one_line_error(ocikit("create", "--name", "a", busybox_ref), 125, "already in use")
    assert ocikit("rm", "a", "b").code == 0
    assert json.loads(ocikit("ps", "-a", "--json").out) == []
    assert not upper.exists()
    assert all(Path(d).is_dir() for d in lowers)  # the image stays


def test_detached_logs_exec_stop(busybox_ref: str) -> None:
    r = ocikit("run", "-d", "--name", "bg", busybox_ref, "sh", "-c",
               "trap 'exit 0' TERM; echo started; while true; do sleep 0.1; done")
    assert r.code == 0, r
    cid = r.out.strip()
    assert len(cid) == 64
    deadline = time.monotonic() + 10
    while "started" not in ocikit("logs", "bg").out and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ocikit("logs", "bg").out == "started\n"
    running = json.loads(ocikit("ps", "--json").out)
    assert [c["Name"] for c in running] == ["bg"] and running[0]["Pid"] > 0
    r = ocikit("exec", "bg", "sh", "-c", "echo $$ > /tmp/pid; cat /tmp/pid; exit 4")
    assert r.code == 4 and r.out.strip() != "1", r
    t0 = time.monotonic()
    assert ocikit("stop", "-t", "5", "bg").code == 0
    assert time.monotonic() - t0 < 5
    info = inspect(cid[:12])
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 0
    assert json.loads(ocikit("ps", "--json").out) == []
    assert ocikit("rm", "bg").code == 0


def test_stop_kills_after_timeout(busybox_ref: str) -> None:
    assert ocikit("run", "-d", "--name", "stubborn", busybox_ref, "sleep", "100").code == 0
    t0 = time.monotonic()
    assert ocikit("stop", "-t", "1", "stubborn").code == 0
    assert time.monotonic() - t0 < 8
    assert inspect("stubborn")["State"]["ExitCode"] == 137
    assert ocikit("rm", "-f", "stubborn").code == 0


def test_volumes_survive_rm(busybox_ref: str, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "in").write_text("from host\n")
    r = ocikit("run", "--rm", "-v", "data:/data", "-v", f"{host}:/h:ro", busybox_ref,
               "sh", "-c", "cat /h/in; echo kept > /data/file; touch /h/x 2>/dev/null || "
               "echo read-only")
    assert r.code == 0, r
    assert r.out == "from host\nread-only\n"
    assert json.loads(ocikit("volume", "ls", "--json").out)[0]["Name"] == "data"
    r = ocikit("run", "--rm", "-v", "data:/data", busybox_ref, "cat", "/data/file")
    assert r.out == "kept\n", r
    assert ocikit("volume", "rm", "data").code == 0
    assert json.loads(ocikit("volume", "ls", "--json").out) == []


def test_named_volume_filled_from_image(busybox_ref: str) -> None:
    r = ocikit("run", "--rm", "-v", "etcvol:/etc", busybox_ref, "cat", "/etc/group")
    assert r.code == 0 and "app:x:1000" in r.out, r


def test_commit_then_unpack(busybox_ref: str, tmp_path: Path) -> None:
    assert ocikit("run", "--name", "c", busybox_ref, "sh", "-c",
                  "echo new > /new-file; rm /etc/group").code == 0
    r = ocikit("commit", "c", "local/committed:1")
    assert r.code == 0, r
    out = tmp_path / "rootfs"
    r = ocikit("unpack", "local/committed:1", str(out))
    assert r.code == 0, r
    assert (out / "new-file").read_text() == "new\n"
    assert not (out / "etc" / "group").exists() and (out / "etc" / "passwd").exists()
    hist = json.loads(ocikit("history", "--json", "local/committed:1").out)
    assert hist[0]["created_by"].startswith("ocikit commit")
    r = ocikit("run", "--rm", "local/committed:1", "cat", "/new-file")
    assert r.out == "new\n", r
    ocikit("rm", "c")


def test_published_port(busybox_ref: str, tmp_path: Path) -> None:
    port = free_port()
    r = ocikit("run", "-d", "--name", "web", "-p", f"127.0.0.1:{port}:80", busybox_ref,
               "sh", "-c", "mkdir -p /www && echo served > /www/index.html && "
               "httpd -f -p 80 -h /www")
    assert r.code == 0, r
    try:
        body = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                    body = b"".join(iter(lambda: s.recv(4096), b""))
                if b"served" in body:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert b"200 OK" in body and b"served" in body
    finally:
        ocikit("rm", "-f", "web")


def test_memory_limit_oom_is_137(busybox_ref: str) -> None:
    r = ocikit("run", "--rm", "--memory", "16m", busybox_ref, "sh", "-c",
               "dd if=/dev/zero bs=1M count=64 | sed 's/^/x/' > /dev/null; "
               "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived")
    assert r.code == 137, r


def test_many_containers_share_layers(busybox_ref: str) -> None:
    assert ocikit("create", "--name", "first", busybox_ref, "true").code == 0
    du = subprocess.run(["du", "-sb", str(store_root())], capture_output=True, text=True)
    before = int(du.stdout.split()[0])
    for i in range(20):
        assert ocikit("create", "--name", f"c{i}", busybox_ref, "true").code == 0
    du = subprocess.run(["du", "-sb", str(store_root())], capture_output=True, text=True)
    assert int(du.stdout.split()[0]) - before < 5_000_000


def test_run_many_layer_image(tmp_path: Path) -> None:
    layout = tmp_path / "many"
    w = LayoutWriter(layout)
    layers = [busybox_entries()] + [[file(f"layer{i}", f"{i}\n")] for i in range(60)]
    layers.append([whiteout("layer5")])
    w.image(layers, tag="v1")
    r = ocikit("run", "--rm", f"oci:{layout}:v1", "sh", "-c",
               "cat /layer59; test ! -e /layer5 && echo gone")
    assert r.code == 0, r
    assert r.out == "59\ngone\n"


def test_rmi_and_gc_respect_containers(busybox_ref: str) -> None:
    assert ocikit("create", "--name", "user", busybox_ref, "true").code == 0
    snaps = store_root() / "snapshots"
    assert len(list(snaps.iterdir())) == 1
    r = ocikit("rmi", busybox_ref)
    assert_one_line_error(r, 1, "in use by container(s) user")
    assert ocikit("rmi", "-f", busybox_ref).code == 0
    # The image's name is gone but the container still runs on its snapshot.
    assert ocikit("gc").code == 0
    assert len(list(snaps.iterdir())) == 1
    assert ocikit("start", "-a", "user").code == 0
    assert ocikit("rm", "user").code == 0
    r = ocikit("gc", "--json")
    assert r.code == 0 and json.loads(r.out)["SnapshotsRemoved"] == 1, r
    assert not list(snaps.iterdir())
