"""``ocikit diff``: layers, config and files between two images whose differences are known."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from fixtures.images import (
    LayoutWriter,
    compress,
    dir,
    file,
    hardlink,
    opaque,
    symlink,
    tar_bytes,
    whiteout,
)
from fixtures.proxy import FaultProxy
from fixtures.registry import RegistryServer
from fixtures.seed import SeededImage, push, target_for
from ocikit.oci.diff import LayerInput, diff_files
from ocikit.oci.digest import Digest
from tests.cli import assert_one_line_error, ocikit

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

BASE = [
    dir("etc"), file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
    file("etc/removed", "whited out in B\n"), file("etc/motd", "v1\n"),
    file("etc/grow", "short\n"), file("etc/owned", "owner changes\n"),
    dir("data"), file("data/old", "hidden by the opaque dir\n"), dir("data/sub"),
    file("data/sub/deep", "hidden too\n"),
    dir("bin"), file("bin/tool", "#!/bin/sh\necho tool\n", mode=0o755),
    symlink("link", "/etc/passwd"),
    file("thing", "a file that becomes a directory\n"),
    file("same", "identical in both\n"),
    dir("opt"), file("opt/keep", "untouched\n"),
]
TOP_A = [dir("etc"), file("etc/a-only", "only A has it\n")]
TOP_B = [
    whiteout("etc/removed"),
    dir("data"), opaque("data"), file("data/new", "from the top layer of B\n"),
    dir("etc"), file("etc/motd", "v2\n"), file("etc/grow", "much longer now\n"),
    file("etc/owned", "owner changes\n", uid=1000, gid=1000),
    file("bin/tool", "#!/bin/sh\necho tool\n", mode=0o700),
    symlink("link", "/etc/motd"),
    dir("thing"), file("thing/inside", "inside the new directory\n"),
    file("same", "identical in both\n"),
]
CONFIG_B = {"Env": ["PATH=/usr/bin:/bin", "MODE=prod"], "Cmd": ["/bin/tool"],
            "Entrypoint": ["/bin/sh", "-c"], "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"version": "2"}, "User": "1000", "WorkingDir": "/data"}

# (path, change, fields) from A to B.
EXPECTED = {
    ("/etc/a-only", "removed", ()),
    ("/etc/removed", "removed", ()),
    ("/data/old", "removed", ()),
    ("/data/sub", "removed", ()),
    ("/data/sub/deep", "removed", ()),
    ("/data/new", "added", ()),
    ("/etc/motd", "changed", ("content",)),
    ("/etc/grow", "changed", ("size", "content")),
    ("/etc/owned", "changed", ("owner",)),
    ("/bin/tool", "changed", ("mode",)),
    ("/link", "changed", ("link",)),
    ("/thing", "changed", ("type", "mode")),
    ("/thing/inside", "added", ()),
}


@dataclass(frozen=True)
class Pushed:
    layout: Path
    a: SeededImage
    b: SeededImage
    zstd_b: SeededImage  # B with every layer recompressed as zstd
    registry: RegistryServer


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    work = tmp_path_factory.mktemp("diff-images")
    layout = work / "layout"
    w = LayoutWriter(layout)
    w.image([BASE, TOP_A], tag="a")
    w.image([BASE, TOP_B], tag="b", config=CONFIG_B)
    w.image([BASE, TOP_B], tag="zstd-b", config=CONFIG_B, compression="zstd")
    t = target_for(registry, work)
    return Pushed(layout,
                  push(layout, t, "diff/app", "a", work, src_tag="a"),
                  push(layout, t, "diff/app", "b", work, src_tag="b"),
                  push(layout, t, "diff/app", "zstd-b", work, src_tag="zstd-b"),
                  registry)


def change_set(doc: dict) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(c["Path"], c["Change"], tuple(c["Fields"])) for c in doc["Files"]["Changes"]}


def store_blobs() -> set[str]:
    d = Path(os.environ["OCIKIT_STORE"]) / "blobs" / "sha256"
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


# -- through the CLI --------------------------------------------------------------

def test_layer_and_config_diff_of_registry_refs_downloads_no_layer(
        pushed: Pushed, fault_proxy: FaultProxy) -> None:
    a = f"{fault_proxy.host}/diff/app:a"
    b = f"{fault_proxy.host}/diff/app:b"
    r = ocikit("diff", "--json", a, b)
    assert r.code == 0, r
    doc = json.loads(r.out)
    layers = doc["Layers"]
    assert [x["Status"] for x in layers] == ["shared", "only-a", "only-b"]
    assert layers[0]["A"]["Digest"] == pushed.a.layer_digests[0] == layers[0]["B"]["Digest"]
    assert layers[1]["A"]["Digest"] == pushed.a.layer_digests[1]
    assert layers[2]["B"]["Digest"] == pushed.b.layer_digests[1]
    assert doc["Summary"]["SharedBytes"] == layers[0]["A"]["Size"]
    assert doc["Files"] is None and doc["Fetched"] == []
    config = {(c["Field"], c["Key"]): (c["A"], c["B"]) for c in doc["Config"]}
    assert config == {
        ("Cmd", ""): (["/bin/sh"], ["/bin/tool"]),
        ("Entrypoint", ""): (None, ["/bin/sh", "-c"]),
        ("User", ""): ("", "1000"),
        ("WorkingDir", ""): ("", "/data"),
        ("Env", "PATH"): ("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          "/usr/bin:/bin"),
        ("Env", "MODE"): (None, "prod"),
        ("Labels", "version"): (None, "2"),
        ("ExposedPorts", "8080/tcp"): (None, True),
    }
    # Manifests and configs only: no layer blob was asked for, nothing stored.
    layer_digests = set(pushed.a.layer_digests) | set(pushed.b.layer_digests)
    blob_paths = [q.path for q in fault_proxy.requests if "/blobs/" in q.path]
    assert blob_paths, "the configs come through /blobs/"
    assert not [p for p in blob_paths if p.rsplit("/", 1)[-1] in layer_digests]
    assert {p.rsplit("/", 1)[-1] for p in blob_paths} == {pushed.a.config_digest,
                                                          pushed.b.config_digest}
    assert store_blobs() == set()

    r = ocikit("diff", a, b)
    assert r.code == 0, r
    assert "1 shared" in r.out and "1 only in A" in r.out and "1 only in B" in r.out
    assert "~ Cmd: [\"/bin/sh\"] -> [\"/bin/tool\"]" in r.out
    assert "+ ExposedPorts 8080/tcp" in r.out


def test_files_diff_of_registry_refs(pushed: Pushed, fault_proxy: FaultProxy) -> None:
    a = f"{fault_proxy.host}/diff/app:a"
    b = f"{fault_proxy.host}/diff/app:b"
    r = ocikit("diff", "--files", "--json", "--progress=none", a, b)
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert change_set(doc) == EXPECTED
    files = doc["Files"]
    assert (files["Added"], files["Removed"], files["Changed"]) == (2, 5, 6)
    sizes = {c["Path"]: c for c in files["Changes"]}
    assert files["AddedBytes"] == len("from the top layer of B\n") + len(
        "inside the new directory\n")
    assert files["RemovedBytes"] == sum(len(x) for x in (
        "only A has it\n", "whited out in B\n", "hidden by the opaque dir\n", "hidden too\n"))
    motd = sizes["/etc/motd"]
    assert motd["A"]["Digest"] == "sha256:" + hashlib.sha256(b"v1\n").hexdigest()
    assert motd["B"]["Digest"] == "sha256:" + hashlib.sha256(b"v2\n").hexdigest()
    assert sizes["/bin/tool"]["A"]["Mode"] == "0755" and sizes["/bin/tool"]["B"]["Mode"] == "0700"
    assert sizes["/link"]["B"]["Link"] == "/etc/motd"
    assert sizes["/thing"]["A"]["Type"] == "file" and sizes["/thing"]["B"]["Type"] == "dir"
    assert (sizes["/etc/owned"]["B"]["Uid"], sizes["/etc/owned"]["B"]["Gid"]) == (1000, 1000)
    # Every layer was fetched once (the shared base once), nothing stored or left behind.
    fetched = sorted(x["Digest"] for x in doc["Fetched"])
    assert fetched == sorted({*pushed.a.layer_digests, *pushed.b.layer_digests})
    for d in fetched:
        assert len(fault_proxy.requests_for(f"/blobs/{d}", "GET")) == 1
    assert store_blobs() == set()
    tmp = Path(os.environ["OCIKIT_STORE"]) / "tmp"
    assert not [p for p in tmp.iterdir() if p.name.startswith("layer-")]

    # The readable form says the same, in docker diff's letters.
    r = ocikit("diff", "--files", "--progress=none", a, b)
    assert r.code == 0, r
    lines = {ln.split()[1]: ln.split()[0] for ln in r.out.splitlines() if ln.startswith("  ")
             and ln.split()[0] in ("A", "C", "D") and ln.split()[1].startswith("/")}
    assert lines == {p: {"added": "A", "removed": "D", "changed": "C"}[c]
                     for p, c, _ in EXPECTED}
    assert "2 added (49B), 5 removed (66B), 6 changed" in r.out
    assert "fetched 3 from the registry" in r.out


def test_files_diff_reads_only_what_it_needs(pushed: Pushed, fault_proxy: FaultProxy) -> None:
    """A pulled A and a remote B: only B's own layer is downloaded."""
    r = ocikit("pull", "-q", pushed.a.ref)
    assert r.code == 0, r
    stored = store_blobs()
    b = f"{fault_proxy.host}/diff/app:b"
    r = ocikit("diff", "--files", "--json", "--progress=none", pushed.a.ref, b)
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert change_set(doc) == EXPECTED
    assert [x["Digest"] for x in doc["Fetched"]] == [pushed.b.layer_digests[1]]
    assert store_blobs() == stored
    # Reversed, the same changes mirrored.
    r = ocikit("diff", "--files", "--json", "--progress=none", b, pushed.a.ref)
    mirrored = {(p, {"added": "removed", "removed": "added"}.get(c, c), f)
                for p, c, f in EXPECTED}
    assert change_set(json.loads(r.out)) == mirrored


def test_recompressed_layers_need_no_file_reading(pushed: Pushed,
                                                  fault_proxy: FaultProxy) -> None:
    b = f"{fault_proxy.host}/diff/app:b"
    z = f"{fault_proxy.host}/diff/app:zstd-b"
    r = ocikit("diff", "--files", "--json", b, z)
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert [x["Status"] for x in doc["Layers"]] == ["recompressed", "recompressed"]
    assert doc["Summary"]["CommonBase"] == 2
    assert doc["Files"]["Changes"] == [] and doc["Files"]["LayersRead"] == []
    assert doc["Fetched"] == [] and doc["Config"] == []
    assert not [q for q in fault_proxy.requests if q.path.rsplit("/", 1)[-1]
                in {*pushed.b.layer_digests, *pushed.zstd_b.layer_digests}]


def _tree(root: Path) -> dict[str, tuple]:
    """What a root filesystem on disk holds, in the fields ``diff --files`` compares."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = ("dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode)
                    else "file" if stat.S_ISREG(st.st_mode) else "other")
            content = hashlib.sha256(p.read_bytes()).hexdigest() if kind == "file" else ""
            out["/" + str(p.relative_to(root))] = (
                kind, st.st_size if kind == "file" else 0, stat.S_IMODE(st.st_mode),
                (st.st_uid, st.st_gid), os.readlink(p) if kind == "symlink" else "", content)
    return out


def _disk_diff(a: dict[str, tuple], b: dict[str, tuple]) -> set[tuple[str, str, tuple]]:
    names = ("type", "size", "mode", "owner", "link", "content")
    out: set[tuple[str, str, tuple]] = set()
    for p in a.keys() | b.keys():
        if p not in b:
            out.add((p, "removed", ()))
        elif p not in a:
            out.add((p, "added", ()))
        elif a[p] != b[p]:
            fields = [n for n, x, y in zip(names, a[p], b[p], strict=True) if x != y]
            if a[p][0] == "symlink" and "mode" in fields:
                fields.remove("mode")  # a symlink's mode means nothing on Linux
            if a[p][0] != b[p][0]:  # another type: only type, mode and owner compare
                fields = [f for f in fields if f in ("type", "mode", "owner")]
            if fields:
                out.add((p, "changed", tuple(fields)))
    return out


def test_files_diff_matches_umoci_unpack_and_a_tree_walk(pushed: Pushed,
                                                         tmp_path: Path) -> None:
    """The streaming diff equals diffing the two trees umoci unpacks."""
    trees = {}
    for tag in ("a", "b"):
        u = subprocess.run(["umoci", "unpack", "--image", f"{pushed.layout}:{tag}",
                            str(tmp_path / tag)], capture_output=True, text=True)
        assert u.returncode == 0, u.stderr
        trees[tag] = _tree(tmp_path / tag / "rootfs")
    expected = _disk_diff(trees["a"], trees["b"])
    assert expected == EXPECTED  # the test images are what this file says
    r = ocikit("diff", "--files", "--json", f"oci:{pushed.layout}:a", f"oci:{pushed.layout}:b")
    assert r.code == 0, r
    assert change_set(json.loads(r.out)) == expected


def test_diff_errors_are_one_line(pushed: Pushed, tmp_path: Path) -> None:
    r = ocikit("diff", f"oci:{pushed.layout}:a", f"oci:{pushed.layout}:nope")
    assert_one_line_error(r, 1, "nope")
    r = ocikit("diff", f"oci:{pushed.layout}:a", "Bad//Ref")
    assert_one_line_error(r, 2)
    # A layer whose bytes do not match its diff_id fails the file diff, naming it.
    bad = tmp_path / "bad"
    w = LayoutWriter(bad)
    w.image([BASE], tag="base")
    built = w.image([BASE, TOP_A], tag="top")
    top = bad / "blobs" / "sha256" / built.layer_digests[1].split(":")[1]
    top.write_bytes(compress(tar_bytes([*TOP_A, file("extra", "x")]), "gzip"))
    r = ocikit("diff", "--files", f"oci:{bad}:base", f"oci:{bad}:top")
    assert_one_line_error(r, 1, built.layer_digests[1])


# -- the file diff on its own (in memory, fast) -----------------------------------

def _opener(blob: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(blob)


def _inputs(layers: list[list]) -> list[LayerInput]:
    out = []
    for entries in layers:
        raw = tar_bytes(entries)
        blob = compress(raw, "gzip")
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        out.append(LayerInput(digest, GZIP, Digest.from_bytes(raw), _opener(blob)))
    return out


def _changes(base: list[list], a: list[list], b: list[list]) -> set[tuple[str, str, tuple]]:
    d = diff_files(_inputs(base), _inputs(a), _inputs(b))
    return {(c.path, c.change, c.fields) for c in d.changes}


def test_shared_base_gives_the_same_answer_as_reading_everything() -> None:
    with_base = _changes([BASE], [TOP_A], [TOP_B])
    assert with_base == EXPECTED
    assert _changes([], [BASE, TOP_A], [BASE, TOP_B]) == EXPECTED


def test_parents_resolve_through_symlinks_of_the_base() -> None:
    base = [dir("usr"), dir("usr/lib"), file("usr/lib/libc", "c"), symlink("lib", "usr/lib"),
            dir("x"), file("x/f", "same size 1")]
    a: list = [file("other", "1")]
    b = [dir("lib/extra"), file("lib/extra/so", "new"), whiteout("lib/libc"),
         symlink("lnk", "/x"), file("lnk/f", "same size 2")]
    assert _changes([base], [a], [b]) == {
        ("/other", "removed", ()),
        ("/usr/lib/extra", "added", ()), ("/usr/lib/extra/so", "added", ()),
        ("/usr/lib/libc", "removed", ()),
        ("/lnk", "added", ()),
        # Written as lnk/f, so the base pass did not hash x/f: hashed afterwards.
        ("/x/f", "changed", ("content",)),
    }


def test_whiteouts_hide_only_lower_layers_and_dirs_go_whole() -> None:
    base = [dir("app"), file("app/a", "1"), dir("app/d"), file("app/d/x", "2"),
            file("keep", "k"), file("twice", "old")]
    # In one layer: re-added after (or before) its own whiteout, the file stays.
    b = [file("twice", "new"), whiteout("twice"), whiteout("app/d"), dir("app/d"),
         file("app/d/y", "3"), whiteout("keep")]
    assert _changes([base], [[]], [b]) == {
        ("/twice", "changed", ("content",)),
        ("/app/d/x", "removed", ()), ("/app/d/y", "added", ()),
        ("/keep", "removed", ()),
    }


def test_hardlinks_and_dir_replaced_by_file() -> None:
    base = [dir("bin"), file("bin/busybox", "bb", mode=0o755), hardlink("bin/sh", "bin/busybox"),
            dir("conf"), file("conf/a", "a")]
    b = [file("bin/busybox", "b2", mode=0o755), file("conf", "now a file")]
    assert _changes([base], [[]], [b]) == {
        ("/bin/busybox", "changed", ("content",)),  # bin/sh keeps the old inode's content
        ("/conf", "changed", ("type", "mode")),
        ("/conf/a", "removed", ()),
    }


def test_history_shows_uncompressed_sizes_of_stored_layers(pushed: Pushed) -> None:
    r = ocikit("history", "--json", f"oci:{pushed.layout}:b")
    assert r.code == 0, r
    rows = json.loads(r.out)
    assert [x["uncompressed_size"] for x in rows] == [len(tar_bytes(TOP_B)), len(tar_bytes(BASE))]
    assert [x["digest"] for x in rows] == pushed.b.layer_digests[::-1]


def test_deeply_nested_layers_are_no_problem() -> None:
    deep = "/".join(["d"] * 3000)
    changes = _changes([[dir("x")]], [[]], [[file(f"{deep}/f", "deep"), whiteout("x")]])
    assert len(changes) == 3002
    assert (f"/{deep}/f", "added", ()) in changes and ("/x", "removed", ()) in changes
