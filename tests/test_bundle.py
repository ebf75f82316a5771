"""Runtime bundles: config.json from the image config, and runc running it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from fixtures.images import LayoutWriter, busybox_entries, file, symlink
from fixtures.trees import load_image
from ocikit.errors import NotFoundError
from ocikit.oci.bundle import DEFAULT_CAPABILITIES, process_args, resolve_user, write_bundle

IMAGE_CONFIG = {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hello from $HOME as $(id -u)"],
                "Env": ["PATH=/bin", "GREETING=hi"], "WorkingDir": "/home/app",
                "User": "app"}


def _busybox(tmp_path, config=None, extra=()):
    LayoutWriter(tmp_path / "layout").image([busybox_entries(), *extra], tag="bb",
                                            config=config or IMAGE_CONFIG)
    return load_image(tmp_path / "layout", "bb")


def test_config_from_image(tmp_path):
    lay, man, cfg = _busybox(tmp_path)
    path = write_bundle(lay, man, cfg, tmp_path / "bundle")
    doc = json.loads(path.read_text())
    p = doc["process"]
    assert p["args"] == ["/bin/sh", "-c", "echo hello from $HOME as $(id -u)"]
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert p["cwd"] == "/home/app" and p["noNewPrivileges"] is True
    assert "GREETING=hi" in p["env"] and "HOME=/home/app" in p["env"]
    assert p["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert {n["type"] for n in doc["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts",
                                                               "mount"}
    assert {m["destination"] for m in doc["mounts"]} >= {"/proc", "/dev", "/dev/pts",
                                                         "/dev/shm", "/dev/mqueue", "/sys"}
    assert "/proc/kcore" in doc["linux"]["maskedPaths"]
    assert (tmp_path / "bundle/rootfs/bin/busybox").is_file()


def test_user_resolution(tmp_path):
    lay, man, cfg = _busybox(tmp_path, extra=[[symlink("etc/shadow-link", "/../../etc/shadow")]])
    root = tmp_path / "rootfs"
    from ocikit.oci.unpack import unpack_image
    unpack_image(lay, man, cfg, root)
    assert resolve_user(root, "").uid == 0
    assert resolve_user(root, "app:staff").gid == 50
    assert resolve_user(root, "app").additional_gids == (50,)
    u = resolve_user(root, "4242")
    assert (u.uid, u.gid) == (4242, 0)
    assert resolve_user(root, "1000:1").gid == 1
    with pytest.raises(NotFoundError):
        resolve_user(root, "nobody-here")
    with pytest.raises(NotFoundError):
        resolve_user(root, "app:nogroup-here")


def test_passwd_symlink_out_of_rootfs_is_confined(tmp_path):
    lay, man, cfg = _busybox(tmp_path, extra=[[symlink("etc/passwd", "/../../../../etc/passwd"),
                                               file("x", "")]])
    root = tmp_path / "rootfs"
    from ocikit.oci.unpack import unpack_image
    unpack_image(lay, man, cfg, root)
    # the host's /etc/passwd has root; inside the rootfs the link dangles
    with pytest.raises(NotFoundError):
        resolve_user(root, "root")


def test_process_args_overrides(tmp_path):
    _lay, _man, cfg = _busybox(tmp_path)
    assert process_args(cfg, cmd=["id"]) == ["/bin/sh", "-c", "id"]
    assert process_args(cfg, entrypoint=["/bin/true"]) == ["/bin/true"]


@pytest.mark.skipif(shutil.which("runc") is None or os.geteuid() != 0, reason="needs runc, root")
def test_runc_runs_the_bundle(tmp_path):
    lay, man, cfg = _busybox(tmp_path)
    write_bundle(lay, man, cfg, tmp_path / "bundle")
    cid = f"ocikit-test-{os.getpid()}"
    root = tmp_path / "runc-root"
    try:
        r = subprocess.run(["runc", "--root", str(root), "run", "--bundle",
                            str(tmp_path / "bundle"), cid],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "--root", str(root), "delete", "-f", cid],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello from /home/app as 1000"
    # a failing command's exit code comes through
    write_bundle(lay, man, cfg, tmp_path / "b2", cmd=["exit 3"])
    try:
        r = subprocess.run(["runc", "--root", str(root), "run", "--bundle", str(tmp_path / "b2"),
                            cid + "-2"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "--root", str(root), "delete", "-f", cid + "-2"],
                       capture_output=True, timeout=30)
    assert r.returncode == 3, r.stderr
