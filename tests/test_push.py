"""``ocikit push`` against Debian's docker-registry, checked with skopeo and umoci."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from fixtures.images import LayoutWriter, write_busybox
from fixtures.proxy import FaultProxy
from fixtures.registry import RegistryServer
from fixtures.seed import SeedSet, skopeo_env, skopeo_inspect_raw, target_for
from tests.cli import assert_one_line_error, ocikit

pytestmark = pytest.mark.timeout(240)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def uploaded_bytes(proxy: FaultProxy, repo: str) -> int:
    return sum(r.bytes_received for r in proxy.requests
               if f"/v2/{repo}/blobs/uploads/" in r.path)


def test_push_layout_then_skopeo_and_umoci_read_it(registry: RegistryServer,
                                                   tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    built = write_busybox(layout)
    repo = unique("pushed/busybox")
    r = ocikit("push", "-q", f"oci:{layout}:latest", registry.ref(f"{repo}:v1"))
    assert r.code == 0, r
    assert r.out.strip() == built.manifest_digest
    t = target_for(registry, tmp_path)
    raw = skopeo_inspect_raw(t, f"{repo}:v1", tmp_path)
    assert sha256(raw) == built.manifest_digest and raw == built.manifest
    dest = tmp_path / "copied"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                    f"docker://{registry.ref(f'{repo}:v1')}", f"oci:{dest}:v1"],
                   env=skopeo_env(tmp_path), check=True, capture_output=True, timeout=120)
    u = subprocess.run(["umoci", "unpack", "--image", f"{dest}:v1", str(tmp_path / "bundle")],
                       capture_output=True, text=True, timeout=120)
    assert u.returncode == 0, u.stderr
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").is_file()


def test_push_again_only_confirms(seeded_registry: SeedSet, fault_proxy: FaultProxy,
                                  tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    built = write_busybox(layout, extra_layers=[[]])
    dest = fault_proxy.ref(unique("again") + ":1")
    r = ocikit("push", "--progress=plain", f"oci:{layout}:latest", dest)
    assert r.code == 0, r
    assert r.out.strip() == built.manifest_digest
    assert "uploading" in r.err
    fault_proxy.clear()
    r = ocikit("push", f"oci:{layout}:latest", dest)
    assert r.code == 0, r
    assert r.out.strip() == built.manifest_digest and "up to date" in r.err
    assert [(q.method, "/manifests/" in q.path) for q in fault_proxy.requests] == \
        [("HEAD", True)]


def test_push_from_store_mounts_across_repositories(seeded_registry: SeedSet,
                                                    fault_proxy: FaultProxy) -> None:
    img = seeded_registry.layers
    src = f"{fault_proxy.host}/{img.name}:{img.tag}"
    assert ocikit("pull", "-q", src).code == 0
    fault_proxy.clear()
    repo = unique("mounted/layers")
    r = ocikit("push", "--progress=plain", src, fault_proxy.ref(f"{repo}:copy"))
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    mounts = [q for q in fault_proxy.requests if "mount=" in q.path and q.method == "POST"]
    assert len(mounts) == len(set(img.layer_digests)) + 1, mounts
    assert all(q.status == 201 and f"from={img.name}" in q.path for q in mounts)
    assert uploaded_bytes(fault_proxy, repo) == 0
    assert not any(q.method in ("PATCH", "PUT") and "/blobs/" in q.path
                   for q in fault_proxy.requests)
    assert "mounted from" in r.err
    # default destination: the stored name itself, already there
    r = ocikit("push", src)
    assert r.code == 0 and r.out.strip() == img.digest, r


def _big_layout(root: Path, size: int) -> tuple[str, str, int]:
    """An image with one uncompressed layer of about ``size`` incompressible bytes."""
    buf = io.BytesIO()
    data = os.urandom(size)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("big.bin")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    built = LayoutWriter(root).image([buf.getvalue()], compression="none", tag="latest")
    return built.manifest_digest, built.layer_digests[0], len(buf.getvalue())


def test_chunked_upload_survives_a_failed_chunk(seeded_registry: SeedSet,
                                                fault_proxy: FaultProxy,
                                                tmp_path: Path) -> None:
    size = 64 << 20
    digest, layer, layer_size = _big_layout(tmp_path / "big", size)
    chunks = -(-layer_size // (8 << 20))
    repo = unique("chunked")
    fault_proxy.add_fault("status", path_contains=f"/v2/{repo}/blobs/uploads/", method="PATCH",
                          times=1, code=500, body="chunk lost")
    r = ocikit("push", "-q", "--chunk-size", "8M", f"oci:{tmp_path / 'big'}:latest",
               fault_proxy.ref(f"{repo}:1"))
    assert r.code == 0, r
    assert r.out.strip() == digest
    patches = [q for q in fault_proxy.requests if q.method == "PATCH"]
    assert len(patches) == chunks + 1, [(q.status, q.bytes_received) for q in patches]
    assert [q.fault for q in patches].count("status") == 1
    assert all(q.bytes_received <= 8 << 20 for q in patches)
    # the registry was asked where it stood, and only the lost chunk went again
    assert any(q.method == "GET" and "/blobs/uploads/" in q.path and q.status == 204
               for q in fault_proxy.requests)
    assert uploaded_bytes(fault_proxy, repo) < size + (9 << 20)
    t = target_for(seeded_registry.registry, tmp_path)
    assert sha256(skopeo_inspect_raw(t, f"{repo}:1", tmp_path)) == digest
    r = ocikit("pull", "-q", f"{seeded_registry.registry.host}/{repo}:1")
    assert r.code == 0, r
    blob = Path(os.environ["OCIKIT_STORE"]) / "blobs" / "sha256" / layer.split(":")[1]
    assert blob.stat().st_size > size


def test_push_index_whole_or_one_platform(seeded_registry: SeedSet,
                                          registry: RegistryServer, tmp_path: Path) -> None:
    multi = seeded_registry.multi
    repo = unique("multi")
    r = ocikit("push", "-q", f"oci:{multi.layout}:latest", registry.ref(f"{repo}:all"))
    assert r.code == 0, r
    assert r.out.strip() == multi.digest
    t = target_for(registry, tmp_path)
    for digest in multi.platforms.values():
        raw = skopeo_inspect_raw(t, f"{repo}@{digest}", tmp_path)
        assert sha256(raw) == digest
    r = ocikit("push", "-q", "--platform", "linux/arm64", f"oci:{multi.layout}:latest",
               registry.ref(f"{repo}:arm"))
    assert r.code == 0, r
    assert r.out.strip() == multi.platforms["linux/arm64/v8"]


def test_push_docker_archive_prints_the_new_digest(registry: RegistryServer,
                                                   tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    built = write_busybox(layout)
    archive = tmp_path / "bb.tar"
    assert ocikit("copy", f"oci:{layout}:latest", f"docker-archive:{archive}:bb:1").code == 0
    repo = unique("from-archive")
    r = ocikit("push", f"docker-archive:{archive}", registry.ref(f"{repo}:1"))
    assert r.code == 0, r
    digest = r.out.strip()
    assert digest != built.manifest_digest and digest in r.err and "no manifest" in r.err
    raw = skopeo_inspect_raw(target_for(registry, tmp_path), f"{repo}:1", tmp_path)
    assert sha256(raw) == digest
    doc = json.loads(raw)
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["config"]["digest"] == built.config_digest


def test_push_errors(registry: RegistryServer, tmp_path: Path) -> None:
    r = ocikit("push", f"{registry.host}/not/stored:1")
    assert_one_line_error(r, 1, "not in the store")
    write_busybox(tmp_path / "layout")
    r = ocikit("push", f"oci:{tmp_path / 'layout'}:latest")
    assert_one_line_error(r, 2, "destination")
    r = ocikit("push", f"oci:{tmp_path / 'layout'}:latest", f"oci:{tmp_path / 'other'}")
    assert_one_line_error(r, 2, "copy")
    r = ocikit("push", f"oci:{tmp_path / 'layout'}:latest", "127.0.0.1:1/x:1", timeout=90)
    assert_one_line_error(r, 1, "127.0.0.1:1")
    r = ocikit("push", "--chunk-size", "lots", f"oci:{tmp_path / 'layout'}:latest",
               registry.ref("x:1"))
    assert_one_line_error(r, 2, "invalid size")

