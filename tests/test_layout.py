from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
from pathlib import Path

import pytest

from fixtures.images import LayoutWriter, write_busybox
from fixtures.schemas import validate
from ocikit.errors import UnsupportedError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor, Index, Manifest, Platform, parse_manifest
from ocikit.oci.digest import Digest, sha256_of
from ocikit.oci.layout import REF_NAME, Layout, Store


def test_put_blob_stream_verifies_and_is_atomic(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.init()
    data = b"hello" * 1000
    good = Descriptor("x", sha256_of(data), len(data))
    bad_size = Descriptor("x", sha256_of(data), len(data) - 1)
    with pytest.raises(VerificationError, match="more than"):
        store.put_blob_stream(io.BytesIO(data), bad_size)
    wrong = Descriptor("x", sha256_of(b"other"), len(data))
    with pytest.raises(VerificationError, match="digest mismatch"):
        store.put_blob_stream(io.BytesIO(data), wrong)
    assert not store.has_blob(wrong.digest)
    assert list(store.tmp_dir.iterdir()) == []
    store.put_blob_stream(io.BytesIO(data), good)
    assert store.read_blob(good.digest) == data


def test_corrupt_blob_detected_on_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.init()
    d = store.put_blob(b"content")
    store.blob_path(d.digest).write_bytes(b"tampered")
    with pytest.raises(VerificationError, match="corrupt"):
        store.read_blob(d.digest)


def test_names_one_entry_each_and_schema_valid(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.init()
    a = store.put_blob(b"{}", mt.OCI_MANIFEST)
    b = store.put_blob(b"{ }", mt.OCI_MANIFEST)
    store.set_name("docker.io/library/x:1", a)
    store.set_name("docker.io/library/x:1", b)
    store.set_name("docker.io/library/x:2", a)
    names = [(e.name, e.descriptor.digest) for e in store.entries()]
    assert names == [("docker.io/library/x:1", b.digest), ("docker.io/library/x:2", a.digest)]
    doc = json.loads((store.root / "index.json").read_text())
    validate(doc, "image-index-schema.json")
    validate(json.loads((store.root / "oci-layout").read_text()), "image-layout-schema.json")
    assert doc["manifests"][0]["annotations"][REF_NAME] == "docker.io/library/x:1"
    store.remove_name("docker.io/library/x:1")
    assert [e.name for e in store.entries()] == ["docker.io/library/x:2"]


def _add_names(root: str, start: int) -> None:
    s = Store(root)
    d = s.put_blob(f"m{start}".encode(), mt.OCI_MANIFEST)
    for i in range(start, start + 25):
        s.set_name(f"r/x:{i}", d)


def test_two_processes_keep_index_consistent(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.init()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_names, args=(str(store.root), n)) for n in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    names = sorted(e.name for e in store.entries())
    assert len(names) == 50 and len(set(names)) == 50


def test_store_readable_by_skopeo_and_umoci(tmp_path: Path) -> None:
    src = tmp_path / "src"
    built = write_busybox(src)
    store = Store(tmp_path / "s")
    store.init()
    layout = Layout(src)
    desc = layout.find("latest")
    assert desc is not None
    m = layout.read_manifest(desc)
    assert isinstance(m.parsed, Manifest)
    for d in (m.parsed.config, *m.parsed.layers):
        with layout.open_blob(d.digest) as f:
            store.put_blob_stream(f, d)
    store.put_blob(m.data, m.media_type)
    store.set_name("docker.io/library/busybox:latest", m.descriptor)
    name = "docker.io/library/busybox:latest"
    out = subprocess.run(["skopeo", "inspect", f"oci:{store.root}:{name}"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["Digest"] == built.manifest_digest
    r = subprocess.run(["umoci", "unpack", "--image",
                        f"{store.root}:docker.io/library/busybox:latest", str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b" / "rootfs" / "bin" / "busybox").stat().st_size > 100_000


def test_parse_manifest_rules() -> None:
    w_manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                             "config": {"mediaType": mt.OCI_CONFIG,
                                        "digest": str(sha256_of(b"{}")), "size": 2},
                             "layers": []}).encode()
    mb = parse_manifest(w_manifest, mt.OCI_MANIFEST)
    assert isinstance(mb.parsed, Manifest) and mb.digest == sha256_of(w_manifest)
    with pytest.raises(VerificationError, match="served as"):
        parse_manifest(w_manifest, mt.DOCKER_MANIFEST)
    with pytest.raises(UnsupportedError, match="schema 1"):
        parse_manifest(json.dumps({"schemaVersion": 1, "name": "x"}).encode(), "")
    with pytest.raises(VerificationError):
        parse_manifest(b"[1,2]", mt.OCI_MANIFEST)
    with pytest.raises(VerificationError, match="larger"):
        parse_manifest(b" " * (4 << 20 + 1), mt.OCI_MANIFEST)
    evil = json.loads(w_manifest)
    evil["config"]["digest"] = "sha256:../../../etc/passwd"
    with pytest.raises(VerificationError):
        parse_manifest(json.dumps(evil).encode(), mt.OCI_MANIFEST)


def test_index_platform_selection(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "l")
    amd = w.image([[]], arch="amd64")
    arm = w.image([[]], arch="arm64", variant="v8")
    _, data = w.index([(amd, {"os": "linux", "architecture": "amd64"}),
                       (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})])
    idx = parse_manifest(data, mt.OCI_INDEX).parsed
    assert isinstance(idx, Index)
    sel = idx.select(Platform.parse("linux/arm64"))
    assert sel is not None and str(sel.digest) == arm.manifest_digest
    sel = idx.select(Platform.parse("linux/arm64/v8"))
    assert sel is not None and str(sel.digest) == arm.manifest_digest
    assert idx.select(Platform.parse("linux/s390x")) is None
    assert idx.select(Platform("linux", "amd64")) is not None
    assert Digest.parse(amd.manifest_digest) == idx.manifests[0].digest


def test_store_root_default_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocikit.settings import store_root

    monkeypatch.delenv("OCIKIT_STORE")
    if os.geteuid() == 0:
        assert store_root() == Path("/var/lib/ocikit")
    assert store_root("/x") == Path("/x")
