"""Bad inputs and a hostile machine: one clear line, the right exit code, and
nothing already stored lost or corrupted.

Full disks are real: small tmpfs mounts (the tests run as root), unmounted in
teardown. Each command runs as a separate process through ``tests.cli``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.images import LayoutWriter, dir, file
from fixtures.proxy import FaultProxy
from fixtures.registry import RegistryServer
from fixtures.seed import SeedSet
from tests.cli import Result, assert_one_line_error, ocikit

Mount = Callable[[str, str], Path]


def store_root() -> Path:
    return Path(os.environ["OCIKIT_STORE"])


def blob(digest: str, root: Path | None = None) -> Path:
    return (root or store_root()) / "blobs" / "sha256" / digest.split(":")[1]


def assert_store_consistent(root: Path) -> None:
    """index.json is an index, every blob hashes to its name, no name points
    at a missing manifest, config or layer."""
    doc = json.loads((root / "index.json").read_bytes())
    assert isinstance(doc["manifests"], list)
    blobs = root / "blobs" / "sha256"
    for f in blobs.iterdir():
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name, f
    for m in doc["manifests"]:
        path = blob(m["digest"], root)
        assert path.is_file(), m
        manifest = json.loads(path.read_bytes())
        for d in [manifest["config"], *manifest["layers"]]:
            assert blob(d["digest"], root).is_file(), d


def snapshot_of(root: Path) -> dict[str, bytes]:
    """Every file under blobs/ and index.json, to prove nothing changed."""
    out = {"index.json": (root / "index.json").read_bytes()}
    for f in (root / "blobs" / "sha256").iterdir():
        out[f.name] = f.read_bytes()
    return out


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``tmpfs("name", "512k")`` mounts a small tmpfs under tmp_path."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        p = tmp_path / name
        p.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(p)], check=True)
        mounted.append(p)
        return p

    yield mount
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def used_kib(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def fill(path: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


# -- full disks ------------------------------------------------------------------------

def test_full_store_pull_fails_cleanly_then_resumes(seeded_registry: SeedSet, tmpfs: Mount,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    img = seeded_registry.busybox
    store = tmpfs("store", "512k")  # the layer alone is ~1 MB
    monkeypatch.setenv("OCIKIT_STORE", str(store))
    r = ocikit("pull", img.ref)
    assert_one_line_error(r, 1, "No space left", str(store), "ocikit gc")
    assert r.err.splitlines()[-1].count("ocikit:") == 1
    assert_store_consistent(store)
    assert json.loads((store / "index.json").read_bytes())["manifests"] == []
    remount(store, "size=4m")  # space freed
    r = ocikit("pull", img.ref)
    assert r.code == 0, r
    assert "resuming" in r.err  # the part written before the disk filled was kept
    assert_store_consistent(store)
    assert ocikit("inspect", img.ref).code == 0


def test_full_store_keeps_index_when_a_name_cannot_be_written(
        seeded_registry: SeedSet, tmpfs: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    img = seeded_registry.busybox
    store = tmpfs("store", "4m")
    monkeypatch.setenv("OCIKIT_STORE", str(store))
    assert ocikit("pull", "-q", img.ref).code == 0
    before = snapshot_of(store)
    filler = fill(store)
    other = f"{img.host}/robust/other:1"
    assert_one_line_error(ocikit("tag", img.ref, other), 1, "no space left", "index.json")
    assert_one_line_error(ocikit("rmi", img.ref), 1, "no space left", "index.json")
    assert snapshot_of(store) == before
    assert not [p for p in (store / "tmp").iterdir() if p.name != "gc.lock"]
    filler.unlink()
    assert ocikit("tag", img.ref, other).code == 0
    assert_store_consistent(store)


def test_full_dest_unpack_leaves_nothing(seeded_registry: SeedSet, tmpfs: Mount) -> None:
    img = seeded_registry.busybox
    assert ocikit("pull", "-q", img.ref).code == 0
    dest = tmpfs("dest", "600k")  # the root filesystem is ~2 MB
    r = ocikit("unpack", img.ref, str(dest / "rootfs"))
    assert_one_line_error(r, 1, "No space left", img.layer_digests[0])
    assert not (dest / "rootfs").exists()
    r = ocikit("unpack", "--bundle", img.ref, str(dest / "bundle"))
    assert_one_line_error(r, 1, "No space left")
    assert list(dest.iterdir()) == []  # no rootfs without config.json, no empty folder
    assert_store_consistent(store_root())


def test_full_store_during_run_leaves_no_half_snapshot(
        seeded_registry: SeedSet, tmpfs: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    img = seeded_registry.busybox
    store = tmpfs("store", "8m")
    monkeypatch.setenv("OCIKIT_STORE", str(store))
    assert ocikit("pull", "-q", img.ref).code == 0
    remount(store, f"size={used_kib(store) + 300}k")  # the snapshot needs ~2 MB
    r = ocikit("run", "--rm", img.ref, "true")
    assert_one_line_error(r, 125, "No space left", img.layer_digests[0])
    assert list((store / "snapshots").iterdir()) == []
    assert [p.name for p in (store / "tmp").iterdir() if p.is_dir()] == []
    assert list((store / "containers").iterdir()) == []
    assert_store_consistent(store)
    remount(store, "size=16m")
    r = ocikit("run", "--rm", img.ref, "echo", "hi")
    assert r.code == 0 and r.out == "hi\n", r


# -- a damaged store ---------------------------------------------------------------------

BAD_INDEXES = {
    "garbage": b"garbage{",
    "empty": b"",
    "list": b"[]",
    "manifests-object": b'{"schemaVersion":2,"manifests":{}}',
    "no-manifests": b'{"schemaVersion":2}',
    "entry-not-object": b'{"schemaVersion":2,"manifests":[1]}',
    "entry-bad-digest": b'{"schemaVersion":2,"manifests":[{"digest":"bad","size":1}]}',
    "entry-bad-annotations": b'{"schemaVersion":2,"manifests":[{"digest":"sha256:' +
    b"0" * 64 + b'","size":1,"annotations":["x"]}]}',
}


@pytest.fixture
def pulled(seeded_registry: SeedSet) -> str:
    ref = seeded_registry.busybox.ref
    assert ocikit("pull", "-q", ref).code == 0
    return ref


@pytest.mark.parametrize("kind", sorted(BAD_INDEXES))
def test_corrupt_index_is_refused_not_overwritten(pulled: str, kind: str) -> None:
    root = store_root()
    (root / "index.json").write_bytes(BAD_INDEXES[kind])
    before = snapshot_of(root)
    for args in (("images",), ("pull", pulled), ("gc",)):
        r = ocikit(*args)
        assert_one_line_error(r, 1, "index.json is corrupt", "leaves it as it is")
    assert snapshot_of(root) == before  # no name lost, no blob collected


def test_corrupt_index_every_command_says_so(pulled: str, tmp_path: Path) -> None:
    root = store_root()
    (root / "index.json").write_bytes(b"garbage{")
    before = snapshot_of(root)
    for args in (("inspect", pulled), ("history", pulled), ("tag", pulled, "other:1"),
                 ("rmi", pulled), ("unpack", pulled, str(tmp_path / "u")),
                 ("diff", pulled, pulled)):
        assert_one_line_error(ocikit(*args), 1, "index.json is corrupt")
    assert_one_line_error(ocikit("run", "--rm", pulled, "true"), 125, "index.json is corrupt")
    assert snapshot_of(root) == before
    assert not (tmp_path / "u").exists()


def flip_gzip_mtime(path: Path) -> None:
    """Change a gzip blob's bytes but not what it inflates to: only the digest can tell."""
    data = bytearray(path.read_bytes())
    data[4] ^= 0xFF
    path.write_bytes(bytes(data))


def test_changed_layer_blob_is_detected_and_repaired_by_pull(seeded_registry: SeedSet,
                                                              pulled: str,
                                                              tmp_path: Path) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    flip_gzip_mtime(blob(layer))
    r = ocikit("unpack", pulled, str(tmp_path / "u"))
    assert_one_line_error(r, 1, layer, "corrupt", "pull the image again")
    assert not (tmp_path / "u").exists()
    assert not blob(layer).exists()  # set aside, so a pull fetches it again
    r = ocikit("pull", pulled)
    assert r.code == 0 and "Downloaded newer image" in r.err, r
    assert_store_consistent(store_root())
    assert ocikit("unpack", pulled, str(tmp_path / "u")).code == 0
    # The same through run: no snapshot is made of it.
    flip_gzip_mtime(blob(layer))
    assert_one_line_error(ocikit("run", "--rm", pulled, "true"), 125, layer, "corrupt")
    assert list((store_root() / "snapshots").iterdir()) == []
    assert ocikit("pull", "-q", pulled).code == 0
    assert_store_consistent(store_root())


def test_changed_config_or_manifest_is_detected(seeded_registry: SeedSet, pulled: str) -> None:
    img = seeded_registry.busybox
    assert img.config_digest is not None
    for digest in (img.config_digest, img.digest):
        path = blob(digest)
        path.write_bytes(path.read_bytes().replace(b"{", b"{ ", 1))  # still valid JSON
        assert_one_line_error(ocikit("inspect", pulled), 1, digest, "corrupt")
        # gc must not guess what an unreadable manifest uses
        r = ocikit("gc")
        if digest == img.digest:
            assert_one_line_error(r, 1, digest, "nothing was removed")
            assert all(blob(d).is_file() for d in img.layer_digests)
        assert ocikit("pull", "-q", pulled).code == 0
        assert_store_consistent(store_root())


def test_push_of_a_changed_blob_fails_naming_it(registry: RegistryServer,
                                                 tmp_path: Path) -> None:
    # A layer no registry has seen, so the upload has to send our bytes.
    layout = tmp_path / "layout"
    LayoutWriter(layout).image([[dir("etc"), file("etc/unique", os.urandom(2048).hex())]],
                               tag="v1")
    assert ocikit("pull", "-q", f"oci:{layout}:v1").code == 0
    name = f"localhost/{layout.name}:v1"
    layer = json.loads(ocikit("inspect", name).out)["Layers"][0]["Digest"]
    flip_gzip_mtime(blob(layer))
    host = registry.host
    r = ocikit("push", name, f"{host}/robust/changed:1")
    assert_one_line_error(r, 1, layer)
    assert ocikit("inspect", f"docker://{host}/robust/changed:1").code == 1


def test_missing_blobs(seeded_registry: SeedSet, pulled: str, tmp_path: Path) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    blob(layer).unlink()
    r = ocikit("unpack", pulled, str(tmp_path / "u"))
    assert_one_line_error(r, 1, layer, "missing", "pull the image again")
    assert_one_line_error(ocikit("run", "--rm", pulled, "true"), 125, layer, "missing")
    assert ocikit("gc").code == 0  # a missing layer hides nothing else
    r = ocikit("pull", pulled)
    assert r.code == 0 and "Downloaded newer image" in r.err, r
    # A name whose manifest is missing: gc removes nothing rather than guess.
    config = blob(img.config_digest or "")
    blob(img.digest).unlink()
    assert ocikit("images").code == 0
    assert_one_line_error(ocikit("inspect", pulled), 1, img.digest, "missing")
    assert_one_line_error(ocikit("gc"), 1, img.digest, "nothing was removed")
    assert config.is_file() and blob(layer).is_file()
    assert ocikit("pull", "-q", pulled).code == 0
    assert_store_consistent(store_root())


def test_damaged_partial_download_is_fetched_again(seeded_registry: SeedSet) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    assert ocikit("images").code == 0  # creates the store
    partial = store_root() / "ingest" / ("sha256-" + layer.split(":")[1])
    partial.write_bytes(os.urandom(300_000))  # what an earlier run "kept"
    r = ocikit("pull", "-q", img.ref)
    assert r.code == 0, r
    assert_store_consistent(store_root())
    assert not partial.exists()


def test_rmi_still_untags_when_gc_cannot_run(seeded_registry: SeedSet, pulled: str) -> None:
    other = seeded_registry.layers
    assert ocikit("pull", "-q", other.ref).code == 0
    blob(other.digest).unlink()  # the other image is damaged
    r = ocikit("rmi", pulled)
    assert r.code == 0 and "warning" in r.err and other.digest in r.err, r
    assert pulled not in ocikit("images", "-q").out


# -- where the store is -------------------------------------------------------------------

def test_store_that_is_not_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for store in (afile, afile / "sub"):
        monkeypatch.setenv("OCIKIT_STORE", str(store))
        for args in (("images",), ("pull", "127.0.0.1:1/x:y"), ("ps",), ("gc",)):
            r = ocikit(*args)
            assert_one_line_error(r, 1, "cannot use", str(store))
            assert "not a directory" in r.err.lower(), r
    assert afile.read_text() == "x"


def test_read_only_store(seeded_registry: SeedSet, tmpfs: Mount,
                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    img = seeded_registry.busybox
    store = tmpfs("store", "8m")
    monkeypatch.setenv("OCIKIT_STORE", str(store))
    assert ocikit("pull", "-q", img.ref).code == 0
    remount(store, "ro")
    # Reading works; writing says why not, naming the store.
    assert ocikit("images").code == 0
    assert ocikit("inspect", img.ref).code == 0
    assert ocikit("unpack", img.ref, str(tmp_path / "u")).code == 0
    for args in (("pull", seeded_registry.layers.ref), ("tag", img.ref, "x:1"),
                 ("rmi", img.ref), ("gc",)):
        assert_one_line_error(ocikit(*args), 1, "Read-only file system", str(store))


def test_relative_store_option(seeded_registry: SeedSet, tmp_path: Path) -> None:
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "ocikit", "--store", "rel", "pull", "-q",
                        seeded_registry.busybox.ref], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_store_consistent(tmp_path / "rel")
    r2 = ocikit("--store", str(tmp_path / "rel"), "images", "-q")
    assert r2.out.split() == [seeded_registry.busybox.ref]


# -- bad configuration ---------------------------------------------------------------------

def test_garbage_config_files(seeded_registry: SeedSet, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    ref = seeded_registry.busybox.ref
    config = Path(os.environ["OCIKIT_CONFIG"])
    config.write_bytes(b"\xff\xfe not [ toml")
    assert_one_line_error(ocikit("pull", ref), 2, str(config))
    config.unlink()
    # docker's config.json: refused, named, and never rewritten by login
    docker = Path(os.environ["DOCKER_CONFIG"])
    docker.mkdir()
    (docker / "config.json").write_text("not json{")
    assert_one_line_error(ocikit("pull", ref), 2, str(docker / "config.json"))
    r = ocikit("login", "-u", "a", "--password-stdin", seeded_registry.busybox.host,
               input="pw\n")
    assert_one_line_error(r, 2, str(docker / "config.json"))
    assert (docker / "config.json").read_text() == "not json{"


# -- bad input from users and registries ------------------------------------------------------

def test_overlong_reference_is_one_short_line() -> None:
    r = ocikit("pull", "x" * 100_000)
    assert_one_line_error(r, 2, "too long")
    assert len(r.err) < 500


def test_huge_manifest_is_refused(seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    huge = b"{" + b" " * (5 << 20) + b"}"
    fault_proxy.add_fault("status", path_contains="/manifests/", method="*", times=None,
                          code=200, body=huge,
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    ref = f"{fault_proxy.host}/{seeded_registry.busybox.name}:latest"
    for cmd in ("pull", "inspect"):
        assert_one_line_error(ocikit(cmd, ref), 1, "larger than")
    assert json.loads((store_root() / "index.json").read_bytes())["manifests"] == []


def test_python_m_ocikit_without_arguments_prints_help() -> None:
    r = ocikit()
    assert r.code in (0, 2) and "Traceback" not in r.err, r
    assert "Usage:" in r.out + r.err and "pull" in r.out + r.err


# -- concurrency ------------------------------------------------------------------------------

def test_gc_during_a_pull(seeded_registry: SeedSet, fault_proxy: FaultProxy) -> None:
    img = seeded_registry.layers
    first = img.layer_digests[0]
    # The layer download waits 2 s (Retry-After) with the config already stored
    # but no name pointing at it yet: the moment gc must not collect it.
    fault_proxy.add_fault("status", path_contains=f"/blobs/{first}", times=1, code=429,
                          retry_after="2")
    ref = f"{fault_proxy.host}/{img.name}:{img.tag}"
    pull = subprocess.Popen([sys.executable, "-m", "ocikit", "pull", "-q", ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not fault_proxy.requests_for(f"/blobs/{first}"):
        time.sleep(0.05)
    assert img.config_digest is not None and blob(img.config_digest).is_file()
    gc = ocikit("gc", "--json")
    _, err = pull.communicate(timeout=60)
    assert pull.returncode == 0, err
    assert gc.code == 0 and json.loads(gc.out)["BlobsRemoved"] == 0, gc
    assert_store_consistent(store_root())
    assert ocikit("inspect", ref).code == 0


def _run_together(*commands: tuple[str, ...]) -> list[Result]:
    procs = [subprocess.Popen([sys.executable, "-m", "ocikit", *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        results.append(Result(p.returncode, out, err))
    return results


def test_concurrent_rmi_and_tag_of_one_name(seeded_registry: SeedSet, pulled: str) -> None:
    name = f"{seeded_registry.busybox.host}/robust/same:1"
    results = _run_together(("tag", pulled, name), ("tag", pulled, name))
    assert [r.code for r in results] == [0, 0], results
    names = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((store_root() / "index.json").read_bytes())["manifests"]]
    assert sorted(names) == sorted([pulled, name])
    results = _run_together(("rmi", name), ("rmi", name))
    assert sorted(r.code for r in results) == [0, 1], results
    assert_one_line_error(next(r for r in results if r.code), 1, name)
    assert ocikit("images", "-q").out.split() == [pulled]
    assert_store_consistent(store_root())


def test_tag_racing_rmi_never_names_missing_blobs(seeded_registry: SeedSet, pulled: str) -> None:
    copy = f"{seeded_registry.busybox.host}/robust/copy:1"
    for _ in range(3):
        results = _run_together(("rmi", pulled), ("tag", pulled, copy))
        for r in results:
            assert r.code == 0 or (r.code == 1 and "Traceback" not in r.err), r
        assert_store_consistent(store_root())
        for name in (pulled, copy):
            ocikit("rmi", name)
        assert ocikit("pull", "-q", pulled).code == 0


def test_gc_leaves_recent_tmp_files_of_running_commands() -> None:
    store = store_root()
    assert ocikit("gc").code == 0
    fresh = store / "tmp" / "archive-in-use"
    fresh.mkdir()
    old = store / "tmp" / "layer-left-by-a-killed-command"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert ocikit("gc").code == 0
    assert fresh.is_dir() and not old.exists()
