"""``ocikit pull`` and the image commands against a real docker-registry."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.proxy import FaultProxy
from fixtures.schemas import validate
from fixtures.seed import SeedSet
from ocikit.oci.layout import INDEX_DIGEST, REF_NAME
from tests.cli import assert_one_line_error, ocikit


def store_root() -> Path:
    return Path(os.environ["OCIKIT_STORE"])


def index_doc() -> dict:
    return json.loads((store_root() / "index.json").read_text())


def blob(digest: str) -> Path:
    return store_root() / "blobs" / "sha256" / digest.split(":")[1]


def test_pull_oci_image(seeded_registry: SeedSet, tmp_path: Path) -> None:
    img = seeded_registry.busybox
    r = ocikit("pull", "--progress=plain", img.ref)
    assert r.code == 0, r
    assert r.out.strip() == img.ref
    assert img.digest in r.err
    for d in (img.digest, img.config_digest, *img.layer_digests):
        assert d is not None and blob(d).is_file()
        assert "sha256:" + hashlib.sha256(blob(d).read_bytes()).hexdigest() == d
    doc = index_doc()
    validate(doc, "image-index-schema.json")
    validate(json.loads(blob(img.digest).read_text()), "image-manifest-schema.json")
    validate(json.loads(blob(img.config_digest or "").read_text()), "config-schema.json")
    [entry] = doc["manifests"]
    assert entry["annotations"][REF_NAME] == img.ref and entry["digest"] == img.digest
    out = subprocess.run(["skopeo", "inspect", f"oci:{store_root()}:{img.ref}"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["Digest"] == img.digest
    # umoci reads the store as it is.
    u = subprocess.run(["umoci", "unpack", "--image", f"{store_root()}:{img.ref}",
                        str(tmp_path / "bundle")], capture_output=True, text=True)
    assert u.returncode == 0, u.stderr
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").exists()


def test_pull_quiet_prints_digest_and_second_pull_transfers_nothing(
        seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    ref = f"{fault_proxy.host}/{img.name}:{img.tag}"
    r = ocikit("pull", "-q", ref)
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    fault_proxy.clear()
    r = ocikit("pull", "-q", ref)
    assert r.code == 0 and r.out.strip() == img.digest, r
    assert [q.method for q in fault_proxy.requests if "/manifests/" in q.path] == ["HEAD"]
    assert not any("/blobs/" in q.path for q in fault_proxy.requests)
    # A pull again keeps one entry per name.
    assert len(index_doc()["manifests"]) == 1


def test_pull_docker_schema2_keeps_its_digest(seeded_registry: SeedSet) -> None:
    img = seeded_registry.busybox_docker
    r = ocikit("pull", "-q", img.ref)
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    raw = ocikit("inspect", "--raw", img.ref)
    assert raw.code == 0, raw
    assert "sha256:" + hashlib.sha256(raw.out.encode()).hexdigest() == img.digest
    entry = index_doc()["manifests"][0]
    assert entry["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_pull_multi_platform(seeded_registry: SeedSet) -> None:
    img = seeded_registry.multi
    r = ocikit("pull", "-q", img.ref)
    assert r.code == 0, r
    assert r.out.strip() == img.digest  # the index's digest, as docker prints
    [entry] = index_doc()["manifests"]
    assert entry["digest"] == img.platforms["linux/amd64"]
    assert entry["annotations"][INDEX_DIGEST] == img.digest
    assert entry["platform"]["architecture"] == "amd64"
    assert blob(img.digest).is_file()
    r = ocikit("pull", "-q", "--platform", "linux/arm64", img.ref)
    assert r.code == 0, r
    [entry] = index_doc()["manifests"]
    assert entry["digest"] == img.platforms["linux/arm64/v8"]
    insp = json.loads(ocikit("inspect", img.ref).out)
    assert insp["Platform"] == "linux/arm64/v8" and insp["Digest"] == img.digest
    r = ocikit("pull", "--platform", "linux/s390x", img.ref)
    assert_one_line_error(r, 1, "linux/s390x", "linux/amd64")


def test_pull_zstd_layers(seeded_registry: SeedSet) -> None:
    img = seeded_registry.zstd
    assert any(mt.endswith("+zstd") for mt in img.layer_media_types)
    r = ocikit("pull", "-q", img.ref)
    assert r.code == 0, r
    for d in img.layer_digests:
        assert blob(d).is_file()


def test_pull_by_digest(seeded_registry: SeedSet) -> None:
    img = seeded_registry.layers
    r = ocikit("pull", "-q", img.digest_ref)
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    assert index_doc()["manifests"][0]["annotations"][REF_NAME] == img.digest_ref


def test_docker_io_through_mirror(seeded_registry: SeedSet, write_config) -> None:
    write_config({"registries": {"docker.io": {
        "mirrors": ["http://127.0.0.1:1", f"http://{seeded_registry.registry.host}"]}}})
    r = ocikit("pull", "-q", "busybox")
    assert r.code == 0, r
    assert r.out.strip() == seeded_registry.library_busybox.digest
    assert index_doc()["manifests"][0]["annotations"][REF_NAME] == \
        "docker.io/library/busybox:latest"
    listed = json.loads(ocikit("images", "--json").out)
    assert [i["Name"] for i in listed] == ["docker.io/library/busybox:latest"]


@pytest.mark.parametrize("ref", ["Busybox", "busybox:", "a//b", "x@sha256:1234"])
def test_malformed_reference_exits_2(ref: str) -> None:
    r = ocikit("pull", ref)
    assert_one_line_error(r, 2, "invalid reference")


def test_unknown_tag_and_repo(seeded_registry: SeedSet) -> None:
    host = seeded_registry.registry.host
    r = ocikit("pull", f"{host}/busybox:nope")
    assert_one_line_error(r, 1, f"{host}/busybox:nope")
    r = ocikit("pull", f"{host}/nothing/here")
    assert_one_line_error(r, 1, "nothing/here")
    assert not (store_root() / "index.json").exists() or index_doc()["manifests"] == []


def test_unreachable_registry() -> None:
    r = ocikit("pull", "127.0.0.1:1/x/y:z", timeout=60)
    assert_one_line_error(r, 1, "127.0.0.1:1")


def test_corrupt_blob_is_refused_and_nothing_stored(seeded_registry: SeedSet,
                                                    fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    fault_proxy.add_fault("corrupt", path_contains=f"/blobs/{layer}", times=None, offset=1000)
    r = ocikit("pull", f"{fault_proxy.host}/{img.name}:{img.tag}")
    assert_one_line_error(r, 1, layer)
    assert not blob(layer).exists()
    assert index_doc()["manifests"] == []
    assert not list((store_root() / "ingest").iterdir())


def test_cut_connection_resumes_within_the_run(seeded_registry: SeedSet,
                                               fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    fault_proxy.add_fault("cut", path_contains=f"/blobs/{layer}", after=300_000)
    r = ocikit("pull", "-q", f"{fault_proxy.host}/{img.name}:{img.tag}")
    assert r.code == 0, r
    assert blob(layer).is_file()
    ranges = [q.range for q in fault_proxy.requests if layer in q.path and q.method == "GET"]
    assert ranges[0] is None and ranges[-1] == "bytes=300000-", ranges


def test_interrupted_pull_resumes_next_run(seeded_registry: SeedSet,
                                          fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    ref = f"{fault_proxy.host}/{img.name}:{img.tag}"
    # Every attempt is cut after the first 200 kB: the run gives up, keeping the part.
    fault_proxy.add_fault("cut", path_contains=f"/blobs/{layer}", times=None, after=200_000)
    r = ocikit("pull", ref, timeout=120)
    assert_one_line_error(r, 1)
    partial = store_root() / "ingest" / ("sha256-" + layer.split(":")[1])
    assert partial.is_file() and partial.stat().st_size >= 200_000
    assert not blob(layer).exists() and index_doc()["manifests"] == []
    fault_proxy.clear()
    r = ocikit("pull", "-q", ref)
    assert r.code == 0, r
    gets = [q for q in fault_proxy.requests if layer in q.path and q.method == "GET"]
    assert gets and gets[0].range is not None and gets[0].range.startswith("bytes=")
    assert sum(q.bytes_sent for q in gets) < 1_200_000  # only the rest travelled
    assert blob(layer).is_file() and not partial.exists()


def test_retries_503_and_429_with_retry_after(seeded_registry: SeedSet,
                                              fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    fault_proxy.add_fault("status", path_contains="/manifests/", method="*", times=2, code=503,
                          body="upstream busy")
    fault_proxy.add_fault("status", path_contains="/blobs/", times=1, code=429, retry_after="1",
                          body="Too Many Requests")
    t0 = time.monotonic()
    r = ocikit("pull", "-q", f"{fault_proxy.host}/{img.name}:{img.tag}")
    assert r.code == 0, r
    assert time.monotonic() - t0 >= 1.0  # Retry-After honoured
    assert sum(1 for q in fault_proxy.requests if q.status in (429, 503)) == 3


def test_killed_pull_leaves_store_consistent(seeded_registry: SeedSet,
                                             fault_proxy: FaultProxy) -> None:
    img = seeded_registry.layers
    ref = f"{fault_proxy.host}/{img.name}:{img.tag}"
    fault_proxy.add_fault("cut", path_contains="/blobs/", times=None, after=50_000)
    p = subprocess.Popen([sys.executable, "-m", "ocikit", "pull", ref],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            "/blobs/" in q.path for q in fault_proxy.requests):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    for d in store_root().joinpath("blobs", "sha256").iterdir():
        assert "sha256:" + hashlib.sha256(d.read_bytes()).hexdigest() == "sha256:" + d.name
    fault_proxy.clear()
    r = ocikit("pull", "-q", ref)
    assert r.code == 0, r
    assert r.out.strip() == img.digest


def test_concurrent_pulls_keep_index_consistent(seeded_registry: SeedSet) -> None:
    imgs = [seeded_registry.busybox, seeded_registry.layers, seeded_registry.zstd,
            seeded_registry.busybox_docker]
    procs = [subprocess.Popen([sys.executable, "-m", "ocikit", "pull", "-q", i.ref],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in imgs]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    names = sorted(m["annotations"][REF_NAME] for m in index_doc()["manifests"])
    assert names == sorted(i.ref for i in imgs)


def test_image_commands(seeded_registry: SeedSet) -> None:
    img = seeded_registry.layers
    assert ocikit("pull", "-q", img.ref).code == 0
    listed = json.loads(ocikit("images", "--json").out)
    assert [i["Name"] for i in listed] == [img.ref]
    assert listed[0]["Digest"] == img.digest and listed[0]["Id"] == img.config_digest
    table = ocikit("images")
    assert table.code == 0 and img.name in table.out and "TAG" in table.out
    insp = json.loads(ocikit("inspect", img.ref).out)
    assert insp["Digest"] == img.digest
    assert [ly["Digest"] for ly in insp["Layers"]] == img.layer_digests
    cfg = ocikit("inspect", "--config", img.ref)
    assert "sha256:" + hashlib.sha256(cfg.out.encode()).hexdigest() == img.config_digest
    hist = json.loads(ocikit("history", "--json", img.ref).out)
    layer_rows = [h for h in hist if not h["empty_layer"]]
    assert [h["digest"] for h in layer_rows] == list(reversed(img.layer_digests))
    assert all(h["uncompressed_size"] and h["uncompressed_size"] >= h["size"] // 2
               for h in layer_rows)
    text = ocikit("history", img.ref)
    assert text.code == 0 and "CREATED BY" in text.out
    # tag, rmi, gc
    other = f"{seeded_registry.registry.host}/copy/layers:v2"
    assert ocikit("tag", img.ref, other).code == 0, "tag"
    assert sorted(i["Name"] for i in json.loads(ocikit("images", "--json").out)) == \
        sorted([img.ref, other])
    r = ocikit("rmi", img.ref)
    assert r.code == 0, r
    assert all(blob(d).is_file() for d in img.layer_digests)  # still used by the tag
    r = ocikit("rmi", other)
    assert r.code == 0, r
    assert not any(blob(d).exists() for d in img.layer_digests)
    assert_one_line_error(ocikit("rmi", other), 1, other)
    r = ocikit("gc", "--json")
    assert r.code == 0 and json.loads(r.out)["BlobsRemoved"] == 0


def test_remote_inspect_stores_nothing(seeded_registry: SeedSet) -> None:
    img = seeded_registry.multi
    r = ocikit("inspect", img.ref)
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["Digest"] == img.digest and doc["Source"] == "registry"
    raw = ocikit("inspect", "--raw", img.ref)
    assert "sha256:" + hashlib.sha256(raw.out.encode()).hexdigest() == img.digest
    assert ocikit("history", img.ref).code == 0
    blobs = store_root() / "blobs" / "sha256"
    assert not blobs.exists() or not list(blobs.iterdir())


def test_tags_lists_every_tag(seeded_registry: SeedSet) -> None:
    img = seeded_registry.busybox
    r = ocikit("tags", "--json", f"{img.host}/{img.name}")
    assert r.code == 0, r
    assert sorted(json.loads(r.out)) == sorted(img.tags)
