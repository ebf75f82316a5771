"""Snapshots: chain IDs, overlay form, and overlayfs over them == the flattened unpack."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from fixtures.images import LayoutWriter, dir, file, opaque, symlink, whiteout
from fixtures.trees import describe, diff, load_image
from ocikit.errors import LayerError, VerificationError
from ocikit.oci.digest import Digest
from ocikit.oci.layout import Store
from ocikit.oci.snapshot import chain_ids, ensure_snapshots, snapshot_path
from ocikit.oci.unpack import unpack_image
from tests.test_unpack_umoci import LAYERS


def _store_with(tmp_path, layers, tag="t"):
    store = Store(tmp_path / "store")
    store.init()
    LayoutWriter(store.root).image(layers, tag=tag)
    return store, *load_image(store.root, tag)[1:]


def test_chain_ids():
    a, b, c = (Digest.from_bytes(x) for x in (b"a", b"b", b"c"))
    ab = hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = hashlib.sha256(f"sha256:{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, Digest("sha256", ab), Digest("sha256", abc)]


def test_overlay_form_and_idempotence(tmp_path):
    store, man, cfg = _store_with(tmp_path, [
        [dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), file("gone", "g"),
         dir("o"), file("o/x", "x")],
        [whiteout("gone"), opaque("o"), file("o/y", "y"), file("lib/z", "z")],
    ])
    paths = ensure_snapshots(store, man, cfg)
    assert paths == [snapshot_path(store, c) for c in chain_ids(cfg.diff_ids)]
    top = paths[1]
    st = os.lstat(top / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(top / "o", "trusted.overlay.opaque") == b"y"
    # lib/z resolved through the lower symlink into usr/lib, copied-up parents
    assert (top / "usr/lib/z").read_text() == "z"
    assert not (top / "lib").exists()
    mtime = os.stat(top).st_mtime_ns
    assert ensure_snapshots(store, man, cfg) == paths  # unpacked once
    assert os.stat(top).st_mtime_ns == mtime
    assert not list(store.tmp_dir.glob("snapshot-*"))


def test_failed_layer_leaves_no_snapshot(tmp_path):
    store, man, cfg = _store_with(tmp_path, [[file("a", "a")], [file("b", "b")]])
    blob = store.blob_path(man.layers[1].digest)
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    # The blob's digest catches the truncation before the gzip reader does.
    with pytest.raises((LayerError, VerificationError)):
        ensure_snapshots(store, man, cfg)
    chains = chain_ids(cfg.diff_ids)
    assert snapshot_path(store, chains[0]).is_dir()
    assert not snapshot_path(store, chains[1]).exists()
    assert not [p for p in store.tmp_dir.iterdir() if p.is_dir()]


def test_overlay_mount_equals_flattened_unpack(tmp_path):
    store, man, cfg = _store_with(tmp_path, LAYERS)
    paths = ensure_snapshots(store, man, cfg)
    lay, _, _ = load_image(store.root, "t")
    flat = tmp_path / "flat"
    unpack_image(lay, man, cfg, flat)
    merged, upper, work = (tmp_path / n for n in ("merged", "upper", "work"))
    for p in (merged, upper, work):
        p.mkdir()
    # Relative lower names from inside snapshots/, as the runtime mounts them.
    lowers = ":".join(p.name for p in reversed(paths))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lowers},upperdir={upper},workdir={work},"
                    "redirect_dir=off,metacopy=off", str(merged)],
                   check=True, cwd=store.snapshots_dir, timeout=30)
    try:
        # Hardlinks to files of lower layers are copies in a snapshot; all else matches.
        assert diff(describe(merged, links=False), describe(flat, links=False)) == []
    finally:
        subprocess.run(["umount", str(merged)], check=True, timeout=30)
