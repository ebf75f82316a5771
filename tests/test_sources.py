"""Every command that takes an image takes oci:DIR[:TAG] and docker-archive:FILE too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fixtures.images import write_busybox
from tests.cli import ocikit
from tests.test_copy import docker_save_tar


def test_docker_archive_inspect_unpack_run(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    docker_save_tar(archive, "example/app:1.0")
    insp = ocikit("inspect", f"docker-archive:{archive}")
    assert insp.code == 0, insp
    assert json.loads(insp.out)["Source"] == "docker-archive"
    hist = json.loads(ocikit("history", "--json", f"docker-archive:{archive}").out)
    assert [h["created_by"] for h in hist] == ["ADD motd", "ADD rootfs"]
    r = ocikit("unpack", f"docker-archive:{archive}", str(tmp_path / "rootfs"))
    assert r.code == 0, r
    assert (tmp_path / "rootfs" / "etc" / "motd").read_text() == "from a docker save\n"
    if os.geteuid() == 0:
        r = ocikit("run", "--rm", f"docker-archive:{archive}", "cat", "/etc/motd")
        assert r.code == 0 and r.out == "from a docker save\n", r
    # nothing of the conversion is left behind in the store's tmp/
    tmp = Path(os.environ["OCIKIT_STORE"]) / "tmp"
    assert not [p for p in tmp.iterdir() if p.name.startswith("archive-")]


def test_oci_layout_source_for_inspect_history_unpack(tmp_path: Path) -> None:
    built = write_busybox(tmp_path / "layout", tag="v1")
    insp = json.loads(ocikit("inspect", f"oci:{tmp_path / 'layout'}:v1").out)
    assert insp["Digest"] == built.manifest_digest and insp["Source"] == "oci"
    assert ocikit("history", f"oci:{tmp_path / 'layout'}:v1").code == 0
    r = ocikit("unpack", f"oci:{tmp_path / 'layout'}:v1", str(tmp_path / "rootfs"))
    assert r.code == 0, r
    assert (tmp_path / "rootfs" / "bin" / "busybox").stat().st_mode & 0o111
    # unpack reads a layout in place: nothing is copied into the store
    blobs = Path(os.environ["OCIKIT_STORE"]) / "blobs" / "sha256"
    assert not blobs.exists() or not list(blobs.iterdir())
    r = ocikit("inspect", f"oci:{tmp_path / 'layout'}:nope")
    assert r.code == 1 and "nope" in r.err


@pytest.mark.parametrize("source", ["oci:/nonexistent/dir", "docker-archive:/nonexistent.tar"])
def test_missing_sources_are_one_line_errors(source: str) -> None:
    r = ocikit("inspect", source)
    assert r.code == 1 and "Traceback" not in r.err and r.err.startswith("ocikit: "), r


def test_pull_imports_layouts_and_archives(tmp_path: Path) -> None:
    built = write_busybox(tmp_path / "My Layout", tag="v1")
    r = ocikit("pull", f"oci:{tmp_path / 'My Layout'}:v1")
    assert r.code == 0, r
    assert r.out.strip() == "localhost/my-layout:v1"
    r = ocikit("pull", "-q", f"oci:{tmp_path / 'My Layout'}:v1")
    assert r.out.strip() == built.manifest_digest
    archive = tmp_path / "app.tar"
    docker_save_tar(archive, "example/app:1.0")
    r = ocikit("pull", f"docker-archive:{archive}")
    assert r.code == 0 and r.out.strip() == "docker.io/example/app:1.0", r
    names = sorted(i["Name"] for i in json.loads(ocikit("images", "--json").out))
    assert names == ["docker.io/example/app:1.0", "localhost/my-layout:v1"]
    r = ocikit("unpack", "example/app:1.0", str(tmp_path / "rootfs"))
    assert r.code == 0 and (tmp_path / "rootfs" / "etc" / "motd").exists(), r
