"""A corpus of hostile layers, each unpacked beside a sentinel tree that must not change.

Each case either fails with a LayerError naming the layer, or is confined to
the root (SPEC.md "Applying layers"); in both, nothing outside the root is
created, changed or removed.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import hostile as h
from fixtures.images import Entry, LayoutWriter, dir, file, hardlink, opaque, symlink, tar_bytes
from fixtures.trees import load_image, tree_hash
from ocikit.errors import LayerError, UnsafeLayerError, VerificationError
from ocikit.oci.unpack import unpack_image

OK, FAIL = "ok", "fail"
Layers = list  # list of entry lists or raw tar bytes


def _cases(s: str) -> dict[str, tuple[Callable[[], Layers], str]]:
    """name -> (layers, outcome); ``s`` is the sentinel's absolute path."""
    return {
        "dotdot-traversal": (lambda: [[file("../../sentinel/file", "pwned")]], OK),
        "absolute-path": (lambda: [[file(f"{s}/file", "pwned")]], OK),
        "pax-long-traversal": (lambda: [[file("../" * 60 + "sentinel/file", "pwned")]], OK),
        "symlink-then-write": (lambda: [[symlink("evil", "../../sentinel"),
                                         file("evil/file", "pwned")]], OK),
        "absolute-symlink-then-write": (lambda: [[symlink("evil", s),
                                                  file("evil/file", "pwned")]], OK),
        "symlink-dotdot-in-middle": (lambda: [[dir("b"), symlink("a", "b/../../../.."),
                                               file("a/sentinel/file", "pwned")]], OK),
        "dir-to-symlink-across-layers": (lambda: [
            [dir("d"), file("d/a", "a")], [symlink("d", "../../sentinel")],
            [file("d/file", "pwned"), file("d/dir/inner", "pwned")]], OK),
        "symlink-swap-same-layer": (lambda: [[dir("d"), file("d/a", "a"),
                                              symlink("d", s), file("d/file", "pwned")]], OK),
        "hardlink-out-dotdot": (lambda: [[hardlink("h", "../../sentinel/file")]], FAIL),
        "hardlink-out-absolute": (lambda: [[hardlink("h", f"{s}/file")]], FAIL),
        "hardlink-through-symlink": (lambda: [[symlink("l", s), hardlink("h", "l/file")]], FAIL),
        "hardlink-to-outward-symlink-then-write": (lambda: [
            [symlink("l", s), hardlink("h", "l"), file("h/file", "pwned")]], OK),
        "hardlink-to-directory": (lambda: [[dir("etc"), hardlink("h", "etc")]], FAIL),
        "whiteout-dotdot": (lambda: [[file("../../.wh.sentinel", "")]], OK),
        "whiteout-parent-name": (lambda: [[dir("x"), file("x/.wh...", "")]], FAIL),
        "whiteout-dot-name": (lambda: [[dir("x"), file("x/.wh..", "")]], FAIL),
        "whiteout-through-symlink": (lambda: [[symlink("up", "../.."),
                                               file("up/.wh.sentinel", "")],
                                              [symlink("abs", s), file("abs/.wh.file", "")]], OK),
        "opaque-through-symlink": (lambda: [[symlink("s", s)], [opaque("s"),
                                                                 file("s/new", "n")]], OK),
        "symlink-loop": (lambda: [[symlink("a", "b"), symlink("b", "a"), file("a/x", "x")]],
                         FAIL),
        "self-symlink": (lambda: [[symlink("me", "me"), file("me/x", "x")]], FAIL),
        "device-nodes": (lambda: [[Entry("dev/sda", "block", mode=0o660, devmajor=8),
                                   Entry("dev/mem", "char", mode=0o640, devmajor=1,
                                         devminor=1)]], OK),
        "huge-declared-size": (lambda: [h.header("big", size=8 << 30) + b"short"], FAIL),
        "garbage-size-field": (lambda: [h.member("a", b"x") +
                                        h.header("b", size_field=b"zzzzzzzzzzz\0") + h.end()],
                               FAIL),
        "bad-checksum-mid-archive": (lambda: [h.member("a", b"x") +
                                              h.header("b", bad_checksum=True) + h.end()], FAIL),
        "long-component": (lambda: [[file("d/" + "n" * 300, "x")]], FAIL),
        "very-deep-path": (lambda: [[file("d/" * 500 + "f", "deep")]], OK),
        "root-as-file": (lambda: [[file("./", "x")]], FAIL),
        "file-under-file": (lambda: [[file("f", "f"), file("f/x", "x")]], FAIL),
        "raw-absolute-and-dotdot": (lambda: [h.member(f"{s}/file", b"pwned") +
                                             h.member("../../sentinel/dir/inner", b"pwned") +
                                             h.end()], OK),
    }


SENTINEL = {"file": b"keep me", "dir/inner": b"keep me too"}


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    s = tmp_path / "sentinel"
    for rel, data in SENTINEL.items():
        (s / rel).parent.mkdir(parents=True, exist_ok=True)
        (s / rel).write_bytes(data)
    os.symlink("/etc", s / "link")
    return s


def test_corpus_is_large_enough(tmp_path):
    assert len(_cases(str(tmp_path))) >= 15


@pytest.mark.parametrize("name", sorted(_cases("/x")))
def test_hostile_layer(tmp_path, sentinel, name):
    make, outcome = _cases(str(sentinel))[name]
    before = tree_hash(tmp_path / "sentinel")
    work = tmp_path / "work"
    work.mkdir()
    LayoutWriter(tmp_path / "layout").image(make(), tag="t")
    lay, man, cfg = load_image(tmp_path / "layout", "t")
    root = work / "root"
    if outcome == FAIL:
        with pytest.raises(LayerError) as ei:
            unpack_image(lay, man, cfg, root)
        assert ei.value.layer.startswith("sha256:")
        assert not root.exists()
    else:
        unpack_image(lay, man, cfg, root)
        assert os.listdir(work) == ["root"]
    assert tree_hash(tmp_path / "sentinel") == before
    assert sorted(os.listdir(tmp_path)) == ["home", "layout", "sentinel", "work"]


def test_confined_writes_land_inside(tmp_path, sentinel):
    LayoutWriter(tmp_path / "layout").image(
        [[symlink("evil", str(sentinel)), file("evil/file", "pwned")]], tag="t")
    lay, man, cfg = load_image(tmp_path / "layout", "t")
    unpack_image(lay, man, cfg, tmp_path / "root")
    inside = tmp_path / "root" / str(sentinel).lstrip("/") / "file"
    assert inside.read_text() == "pwned"


def test_unsafe_entries_name_layer_and_entry(tmp_path):
    LayoutWriter(tmp_path / "layout").image([[dir("x"), file("x/.wh...", "")]], tag="t")
    lay, man, cfg = load_image(tmp_path / "layout", "t")
    with pytest.raises(UnsafeLayerError) as ei:
        unpack_image(lay, man, cfg, tmp_path / "root")
    assert ei.value.entry == "x/.wh..." and str(man.layers[0].digest) in str(ei.value)


def test_truncated_gzip_fails_and_leaves_nothing(tmp_path, sentinel):
    raw = tar_bytes([file("a", os.urandom(100_000)), file("b", "b")])
    w = LayoutWriter(tmp_path / "layout")
    img = w.image([raw], tag="t")
    blob = tmp_path / "layout/blobs/sha256" / img.layer_digests[0].split(":")[1]
    blob.write_bytes(gzip.compress(raw)[:20_000])
    lay, man, cfg = load_image(tmp_path / "layout", "t")
    # The blob's digest catches the truncation before the gzip reader does.
    with pytest.raises((LayerError, VerificationError), match=r"truncated|corrupt"):
        unpack_image(lay, man, cfg, tmp_path / "root")
    assert not (tmp_path / "root").exists()
