"""``ocikit copy`` between docker-registry, OCI layouts and docker-save archives."""

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

from fixtures.images import (
    busybox_entries,
    compress,
    dir,
    file,
    tar_bytes,
    write_busybox,
)
from fixtures.proxy import FaultProxy
from fixtures.registry import RegistryServer
from fixtures.seed import SeedSet, skopeo_env, skopeo_inspect_raw, target_for
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor
from ocikit.oci.digest import Digest, sha256_of
from ocikit.oci.reference import Reference
from ocikit.registry.client import RegistryClient
from ocikit.registry.credentials import Credentials
from ocikit.registry.upload import Uploader, get_referrers_index, referrers_tag
from tests.cli import assert_one_line_error, ocikit

pytestmark = pytest.mark.timeout(240)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def store_blobs() -> list[Path]:
    d = Path(os.environ["OCIKIT_STORE"]) / "blobs" / "sha256"
    return list(d.iterdir()) if d.is_dir() else []


def umoci_unpack(image: str, dest: Path) -> None:
    u = subprocess.run(["umoci", "unpack", "--image", image, str(dest)], capture_output=True,
                       text=True, timeout=120)
    assert u.returncode == 0, u.stderr


# -- docker-save archives built here, as docker writes them ---------------------------

CONFIG_EXTRA = {"Labels": {"built.by": "test_copy"}}


def docker_save_tar(path: Path, tag: str) -> tuple[bytes, list[bytes]]:
    """A classic ``docker save`` tarball; returns (config bytes, layer tars)."""
    layers = [tar_bytes(busybox_entries()),
              tar_bytes([dir("etc"), file("etc/motd", "from a docker save\n")])]
    diff_ids = [sha256(x) for x in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": ["/bin/sh"], **CONFIG_EXTRA},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "ADD rootfs"},
                    {"created": "2024-01-02T03:04:05Z", "created_by": "ADD motd"}],
    }).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    ids = [hashlib.sha256(f"v1id{i}".encode()).hexdigest() for i in range(len(layers))]
    members: list[tuple[str, bytes]] = [(f"{config_hex}.json", config)]
    for layer_id, data in zip(ids, layers, strict=True):
        members += [(f"{layer_id}/VERSION", b"1.0"), (f"{layer_id}/json", b"{}"),
                    (f"{layer_id}/layer.tar", data)]
    repo, _, t = tag.rpartition(":")
    members.append(("manifest.json", json.dumps([{
        "Config": f"{config_hex}.json", "RepoTags": [tag],
        "Layers": [f"{i}/layer.tar" for i in ids]}]).encode()))
    members.append(("repositories", json.dumps({repo: {t: ids[-1]}}).encode()))
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return config, layers


def read_archive(path: Path) -> tuple[list[dict], dict[str, bytes]]:
    with tarfile.open(path) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()  # type: ignore[union-attr]
                 if m.isfile()}
    return json.loads(files["manifest.json"]), files


def test_docker_save_archive_round_trips(registry: RegistryServer, tmp_path: Path) -> None:
    archive = tmp_path / "saved.tar"
    config, layers = docker_save_tar(archive, "example/app:1.0")
    repo = unique("from-save")
    dest = registry.ref(f"{repo}:1")
    r = ocikit("copy", f"docker-archive:{archive}", dest)
    assert r.code == 0, r
    digest = r.out.strip()
    assert "no manifest" in r.err and digest in r.err
    raw = skopeo_inspect_raw(target_for(registry, tmp_path), f"{repo}:1", tmp_path)
    assert sha256(raw) == digest
    doc = json.loads(raw)
    assert doc["mediaType"] == mt.DOCKER_MANIFEST
    assert doc["config"]["digest"] == sha256(config)
    assert [x["digest"] for x in doc["layers"]] == [sha256(x) for x in layers]

    # back out of the registry into a docker-save archive: same config and layer bytes
    out = tmp_path / "again.tar"
    r = ocikit("copy", dest, f"docker-archive:{out}")
    assert r.code == 0, r
    manifest, files = read_archive(out)
    [entry] = manifest
    assert entry["RepoTags"] == [f"{registry.host}/{repo}:1"]
    assert files[entry["Config"]] == config
    assert [files[x] for x in entry["Layers"]] == layers
    # and in again: the manifest made from it is the same, so is the digest
    r = ocikit("copy", "-q", f"docker-archive:{out}", registry.ref(f"{repo}:2"))
    assert r.code == 0 and r.out.strip() == digest, r

    # docker-archive -> oci: gives an OCI image that umoci unpacks
    r = ocikit("copy", f"docker-archive:{archive}:example/app:1.0", f"oci:{tmp_path / 'oci'}:app")
    assert r.code == 0, r
    umoci_unpack(f"{tmp_path / 'oci'}:app", tmp_path / "bundle")
    assert (tmp_path / "bundle" / "rootfs" / "etc" / "motd").read_text() == "from a docker save\n"
    r = ocikit("copy", f"docker-archive:{archive}:other:tag", f"oci:{tmp_path / 'x'}")
    assert_one_line_error(r, 1, "other:tag")


def test_oci_shaped_docker_archive_keeps_its_digest(registry: RegistryServer,
                                                   tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    built = write_busybox(layout)
    archive = tmp_path / "oci-save.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(layout, arcname=".")
        data = json.dumps([{"Config": f"blobs/sha256/{built.config_digest.split(':')[1]}",
                            "RepoTags": ["bb:latest"],
                            "Layers": [f"blobs/sha256/{d.split(':')[1]}"
                                       for d in built.layer_digests]}]).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    r = ocikit("copy", "-q", f"docker-archive:{archive}", registry.ref(unique("ocisave") + ":1"))
    assert r.code == 0, r
    assert r.out.strip() == built.manifest_digest


def test_registry_to_registry_keeps_the_index(seeded_registry: SeedSet,
                                              fault_proxy: FaultProxy, tmp_path: Path) -> None:
    multi = seeded_registry.multi
    repo = unique("multi-copy")
    r = ocikit("copy", "--progress=plain", f"{fault_proxy.host}/{multi.name}:{multi.tag}",
               fault_proxy.ref(f"{repo}:latest"))
    assert r.code == 0, r
    assert r.out.strip() == multi.digest
    t = target_for(seeded_registry.registry, tmp_path)
    assert sha256(skopeo_inspect_raw(t, f"{repo}:latest", tmp_path)) == multi.digest
    for digest in multi.platforms.values():
        assert sha256(skopeo_inspect_raw(t, f"{repo}@{digest}", tmp_path)) == digest
    assert store_blobs() == []  # streamed, nothing stored
    # --platform picks one manifest
    r = ocikit("copy", "-q", "--platform", "linux/arm64/v8", multi.ref,
               seeded_registry.registry.ref(f"{repo}:arm"))
    assert r.code == 0, r
    assert r.out.strip() == multi.platforms["linux/arm64/v8"]


def test_registry_to_registry_across_registries_streams(seeded_registry: SeedSet,
                                                        fault_proxy: FaultProxy,
                                                        basic_registry: RegistryServer,
                                                        tmp_path: Path) -> None:
    img = seeded_registry.layers
    user, password = next(iter(basic_registry.users.items()))
    r = ocikit("login", "-u", user, "--password-stdin", basic_registry.host, input=password)
    assert r.code == 0, r
    repo = unique("across")
    r = ocikit("copy", "-q", "--chunk-size", "256k", f"docker://{img.ref}",
               basic_registry.ref(f"{repo}:1"))
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    t = target_for(basic_registry, tmp_path)
    assert sha256(skopeo_inspect_raw(t, f"{repo}:1", tmp_path)) == img.digest
    assert store_blobs() == []


def test_registry_and_oci_layout(seeded_registry: SeedSet, registry: RegistryServer,
                                 tmp_path: Path) -> None:
    img = seeded_registry.busybox
    oci = tmp_path / "oci"
    r = ocikit("copy", "-q", img.ref, f"oci:{oci}:bb")
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    out = subprocess.run(["skopeo", "inspect", f"oci:{oci}:bb"], capture_output=True, text=True,
                         check=True, env=skopeo_env(tmp_path)).stdout
    assert json.loads(out)["Digest"] == img.digest
    repo = unique("from-oci")
    r = ocikit("copy", "-q", f"oci:{oci}:bb", registry.ref(f"{repo}:1"))
    assert r.code == 0 and r.out.strip() == img.digest, r
    # a Docker schema2 image becomes OCI in a layout, and says its digest changed
    docker = seeded_registry.busybox_docker
    r = ocikit("copy", docker.ref, f"oci:{oci}:docker")
    assert r.code == 0, r
    new = r.out.strip()
    assert new != docker.digest and docker.digest in r.err and "changed" in r.err
    index = json.loads((oci / "index.json").read_text())
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"]
                  for m in index["manifests"]) == ["bb", "docker"]
    umoci_unpack(f"{oci}:docker", tmp_path / "bundle")
    assert (tmp_path / "bundle" / "rootfs" / "bin" / "busybox").is_file()


def test_store_to_docker_archive(seeded_registry: SeedSet, tmp_path: Path) -> None:
    img = seeded_registry.zstd
    assert ocikit("pull", "-q", img.ref).code == 0
    out = tmp_path / "zstd.tar"
    r = ocikit("copy", img.ref, f"docker-archive:{out}:mine:v1")
    assert r.code == 0, r
    manifest, files = read_archive(out)
    [entry] = manifest
    assert entry["RepoTags"] == ["mine:v1"]
    config = json.loads(files[entry["Config"]])
    assert [sha256(files[x]) for x in entry["Layers"]] == config["rootfs"]["diff_ids"]
    assert sha256(files[entry["Config"]]) == img.config_digest
    assert json.loads(files["repositories"]) == {
        "mine": {"v1": config["rootfs"]["diff_ids"][-1].split(":")[1]}}


def test_referrers_come_along(seeded_registry: SeedSet, registry: RegistryServer) -> None:
    img = seeded_registry.busybox
    src_repo = unique("signed")
    assert ocikit("copy", img.ref, registry.ref(f"{src_repo}:1")).code == 0
    client = RegistryClient(credentials=Credentials.anonymous())
    src = Reference.parse(registry.ref(f"{src_repo}:1"))
    up = Uploader(client, src)
    empty = b"{}"
    sig = b"a signature over " + img.digest.encode()
    def opener(data: bytes):
        return lambda off: io.BytesIO(data[off:])

    for data, media_type in ((empty, mt.OCI_EMPTY), (sig, "application/vnd.example.sig")):
        up.upload(Descriptor(media_type, sha256_of(data), len(data)), opener(data))
    subject = Digest.parse(img.digest)
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
           "artifactType": "application/vnd.example.sig",
           "config": {"mediaType": mt.OCI_EMPTY, "digest": str(sha256_of(empty)), "size": 2},
           "layers": [{"mediaType": "application/vnd.example.sig",
                       "digest": str(sha256_of(sig)), "size": len(sig)}],
           "subject": {"mediaType": mt.OCI_MANIFEST, "digest": img.digest,
                       "size": len(img.manifest)}}
    data = json.dumps(doc).encode()
    pushed = up.put_manifest(data, mt.OCI_MANIFEST, str(sha256_of(data)))
    referrer = Descriptor(mt.OCI_MANIFEST, pushed.digest, len(data),
                          artifact_type="application/vnd.example.sig")
    up.add_referrer(subject, referrer)

    dest_repo = unique("signed-copy")
    r = ocikit("copy", "--progress=plain", "--referrers", registry.ref(f"{src_repo}:1"),
               registry.ref(f"{dest_repo}:1"))
    assert r.code == 0, r
    assert r.out.strip() == img.digest
    dest = Reference.parse(registry.ref(f"{dest_repo}:1"))
    entries = get_referrers_index(client, dest, referrers_tag(subject))
    assert [(e.digest, e.artifact_type) for e in entries] == \
        [(pushed.digest, "application/vnd.example.sig")]
    assert client.get_manifest(dest.with_digest(pushed.digest)).data == data
    # without --referrers nothing of it travels
    other = Reference.parse(registry.ref(unique("unsigned") + ":1"))
    assert ocikit("copy", registry.ref(f"{src_repo}:1"), str(other)).code == 0
    assert get_referrers_index(client, other, referrers_tag(subject)) == []
    client.close()


def test_copy_usage_errors(tmp_path: Path) -> None:
    assert_one_line_error(ocikit("copy", "oci:"), 2)
    r = ocikit("copy", f"oci:{tmp_path / 'missing'}", f"oci:{tmp_path / 'x'}")
    assert_one_line_error(r, 1, "missing")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(compress(b"not a tar at all" * 100, "gzip"))
    r = ocikit("copy", f"docker-archive:{bad}", f"oci:{tmp_path / 'x'}")
    assert_one_line_error(r, 1, "bad.tar")
