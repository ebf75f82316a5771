"""Parity with umoci: the same OCI layout unpacked by both, compared tree by tree."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fixtures.images import (
    Entry,
    LayoutWriter,
    dir,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
)
from fixtures.trees import describe, diff, load_image
from ocikit.oci.unpack import unpack_image

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")

CAP = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

LAYERS = [
    [dir("bin"), file("bin/sh", b"#!sh\n" * 1000, mode=0o755), hardlink("bin/ash", "bin/sh"),
     dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), symlink("lib64", "/usr/lib"),
     symlink("ll", "lib64"), file("usr/lib/libc.so", b"\x7fELF" + bytes(range(256)) * 50),
     dir("etc"), file("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
     dir("home"), dir("home/app", mode=0o750, uid=1000, gid=1000),
     file("home/app/.profile", "p", uid=1000, gid=1000, mode=0o600),
     dir("tmp", mode=0o1777), dir("empty"), dir("ro", mode=0o555), file("ro/f", "r"),
     file("usr/bin/su", "su", mode=0o4755), file("usr/bin/wall", "w", mode=0o2711, gid=5),
     fifo("run/ctl", mode=0o600), Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
     file("usr/bin/ping", "ping", mode=0o755, xattrs={"security.capability": CAP}),
     file("data/x", "x", xattrs={"user.k": b"v\x00\xff"}),
     dir("wd"), file("wd/a", "a"), dir("wd/sub"), file("wd/sub/b", "b"),
     dir("opq"), file("opq/old", "o"), file("swap", "was a file"),
     dir("swapdir"), file("swapdir/in", "in")],
    [file("lib/added-through-symlink", "s"), file("ll/chain", "c"),
     whiteout("wd/a"), whiteout("wd/sub"), opaque("opq"), file("opq/new", "n"),
     dir("swap"), file("swap/now-dir", "d"), symlink("swapdir", "bin"),
     hardlink("etc/sh-link", "bin/sh"), file("bin/sh", "replaced", mode=0o755),
     file("home/app/more", "m", uid=1000, gid=1000)],
    [whiteout("bin/ash"), file("swap", "file again"), file("new/deep/file", "deep"),
     hardlink("etc/passwd2", "etc/passwd")],
]


def _umoci(layout, tag, bundle):
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True,
                   capture_output=True, timeout=120)
    return bundle / "rootfs"


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_parity_with_umoci(tmp_path, compression):
    LayoutWriter(tmp_path / "layout").image(LAYERS, compression=compression, tag="t")
    theirs = _umoci(tmp_path / "layout", "t", tmp_path / "bundle")
    lay, man, cfg = load_image(tmp_path / "layout", "t")
    ours = tmp_path / "ours"
    unpack_image(lay, man, cfg, ours)
    a, b = describe(ours), describe(theirs)
    assert diff(a, b) == []
    assert a["<hardlinks>"]  # the comparison saw hardlink groups


def test_zstd_equals_its_gzip_twin(tmp_path):
    # umoci 0.4.7 cannot read zstd: compare a zstd image against the gzip one umoci read.
    LayoutWriter(tmp_path / "layout").image(LAYERS, compression="gzip", tag="gz")
    LayoutWriter(tmp_path / "layout").image(LAYERS, compression="zstd", tag="zs")
    theirs = _umoci(tmp_path / "layout", "gz", tmp_path / "bundle")
    lay, man, cfg = load_image(tmp_path / "layout", "zs")
    ours = tmp_path / "ours"
    unpack_image(lay, man, cfg, ours)
    assert diff(describe(ours), describe(theirs)) == []
