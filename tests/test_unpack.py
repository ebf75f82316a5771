"""Unit cases of the extractor, the layer reader and the tar reader."""

from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from fixtures.images import (
    Entry,
    LayoutWriter,
    dir,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    tar_bytes,
    whiteout,
)
from fixtures.trees import load_image, unpack_layers
from ocikit.errors import LayerError, UsageError
from ocikit.oci import mediatypes as mt
from ocikit.oci.digest import Digest
from ocikit.oci.layer import open_layer
from ocikit.oci.tarstream import TarReader, clean_name
from ocikit.oci.unpack import read_in_root, unpack_image

CAP = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def _read(p: Path) -> bytes:
    return p.read_bytes()


def test_clean_name():
    assert clean_name("a/../b") == ("b",)
    assert clean_name("/../../etc/x") == ("etc", "x")
    assert clean_name("./a//b/.") == ("a", "b")
    assert clean_name("..") == ()


def test_files_dirs_owners_modes_times(tmp_path):
    out = unpack_layers(tmp_path, [[
        dir("bin", mode=0o755), file("bin/su", b"su", mode=0o4755, uid=0, gid=0),
        file("bin/wall", b"w", mode=0o2755, gid=5), dir("tmp", mode=0o1777),
        dir("home/app", mode=0o700, uid=1000, gid=1000),
        file("home/app/f", b"x" * 100_000, uid=1000, gid=1000, mode=0o600),
        dir("ro", mode=0o555), file("ro/inside", b"i"), dir("empty"),
        fifo("run.fifo", mode=0o620),
        Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
        Entry("dev/loop0", "block", mode=0o660, devmajor=7, devminor=0),
    ]])
    st = os.lstat(out / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(out / "bin/wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(out / "tmp").st_mode) == 0o1777
    st = os.lstat(out / "home/app/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert st.st_mtime == 1_700_000_000
    assert os.lstat(out / "home/app").st_uid == 1000
    assert os.lstat(out / "home/app").st_mtime == 1_700_000_000  # after its contents
    assert stat.S_IMODE(os.lstat(out / "ro").st_mode) == 0o555
    assert (out / "ro/inside").read_bytes() == b"i"
    assert stat.S_ISFIFO(os.lstat(out / "run.fifo").st_mode)
    assert os.lstat(out / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(out / "dev/loop0").st_mode)
    assert (out / "empty").is_dir()
    assert (out / "home/app/f").read_bytes() == b"x" * 100_000


def test_xattrs_capability_after_chown_and_overlay_escape(tmp_path):
    out = unpack_layers(tmp_path, [[
        file("ping", b"p", mode=0o755, uid=1000, xattrs={"security.capability": CAP,
                                                        "user.note": b"\xff\x00bin"}),
        dir("d", xattrs={"trusted.overlay.opaque": b"y", "user.d": b"1"}),
    ]])
    assert os.getxattr(out / "ping", "security.capability") == CAP
    assert os.getxattr(out / "ping", "user.note") == b"\xff\x00bin"
    names = os.listxattr(out / "d")
    assert "trusted.overlay.opaque" not in names
    assert os.getxattr(out / "d", "trusted.overlay.overlay.opaque") == b"y"


def test_whiteouts_and_opaque_hide_only_lower_layers(tmp_path):
    out = unpack_layers(tmp_path, [
        [dir("a"), file("a/1", "1"), file("a/2", "2"), dir("b"), file("b/x", "x"),
         file("c", "c"), dir("o"), file("o/lower", "l"), dir("o/sub"), file("o/sub/l", "l")],
        # the opaque marker after entries of its own layer: they stay
        [file("o/new", "n"), file("o/sub/new", "n"), opaque("o"), whiteout("a/1"),
         whiteout("b"), file("c2", "c2"), whiteout("c2"), whiteout("nothing")],
    ])
    assert sorted(os.listdir(out / "a")) == ["2"]
    assert not (out / "b").exists()
    assert (out / "c2").read_text() == "c2"  # same-layer entry survives its whiteout
    assert sorted(os.listdir(out / "o")) == ["new", "sub"]
    assert sorted(os.listdir(out / "o/sub")) == ["new"]
    assert not any(n.startswith(".wh.") for _, ds, fs in os.walk(out) for n in ds + fs)


def test_type_changes_across_layers(tmp_path):
    out = unpack_layers(tmp_path, [
        [file("x", "file"), dir("d"), file("d/in", "i"), dir("s"), file("s/keep", "k")],
        [dir("x"), file("x/now-dir", "y"), file("d", "now a file"),
         symlink("s", "/elsewhere")],
        [file("x", "file again")],
    ])
    assert (out / "x").read_text() == "file again"
    assert (out / "d").read_text() == "now a file"
    assert os.readlink(out / "s") == "/elsewhere"  # the dir was unlinked, not followed


def test_parent_symlinks_resolve_inside_root(tmp_path):
    out = unpack_layers(tmp_path, [
        [dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), symlink("lib64", "/usr/lib"),
         symlink("up", "../../../usr"), symlink("chain1", "chain2"), symlink("chain2", "lib")],
        [file("lib/a", "a"), file("lib64/b", "b"), file("up/lib/c", "c"),
         file("chain1/d", "d")],
    ])
    assert sorted(os.listdir(out / "usr/lib")) == ["a", "b", "c", "d"]
    assert os.path.islink(out / "lib")


def test_hardlinks_same_and_earlier_layers(tmp_path):
    out = unpack_layers(tmp_path, [
        [file("a", "A", mode=0o640, uid=7), hardlink("a2", "a")],
        [hardlink("a3", "/a"), whiteout("a")],
        [whiteout("a2")],
    ])
    assert (out / "a3").read_text() == "A"  # the original's deletion keeps the content
    assert not (out / "a").exists()
    st = os.lstat(out / "a3")
    assert st.st_uid == 7 and stat.S_IMODE(st.st_mode) == 0o640


def test_hardlink_to_missing_target_fails(tmp_path):
    with pytest.raises(LayerError, match="does not exist"):
        unpack_layers(tmp_path, [[hardlink("x", "nothing")]])


def test_root_entry_and_implicit_parents(tmp_path):
    out = unpack_layers(tmp_path, [[dir(".", mode=0o711), file("deep/er/f", "f")]])
    assert stat.S_IMODE(os.lstat(out).st_mode) == 0o711
    assert stat.S_IMODE(os.lstat(out / "deep/er").st_mode) == 0o755


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions(tmp_path, compression):
    out = unpack_layers(tmp_path, [[file("f", b"z" * 300_000)], [file("g", "g")]],
                        compression=compression)
    assert (out / "f").read_bytes() == b"z" * 300_000


def _layer_stream(blob: bytes, media_type: str, raw: bytes) -> bytes:
    with open_layer(io.BytesIO(blob), media_type, Digest.from_bytes(raw), layer="L") as s:
        data = io.BufferedReader(s).read()
        s.verify()
    return data


def test_multi_member_gzip_and_multi_frame_zstd_and_trailing_bytes():
    raw = tar_bytes([file("a", "a" * 5000), file("b", "b")]) + b"trailing bytes after tar"
    half = len(raw) // 2
    gz = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    assert _layer_stream(gz, mt.OCI_LAYER_GZIP, raw) == raw
    c = zstandard.ZstdCompressor()
    zs = c.compress(raw[:half]) + c.compress(raw[half:])
    assert _layer_stream(zs, mt.OCI_LAYER_ZSTD, raw) == raw


def test_layer_errors_name_the_layer():
    raw = tar_bytes([file("a", os.urandom(50_000))])
    gz = gzip.compress(raw)
    with pytest.raises(LayerError, match=r"layer L.*truncated") as ei:
        _layer_stream(gz[: len(gz) // 2], mt.OCI_LAYER_GZIP, raw)
    assert ei.value.layer == "L"
    with pytest.raises(LayerError, match="diff_id mismatch"):
        _layer_stream(gz, mt.OCI_LAYER_GZIP, raw + b"x")
    with pytest.raises(LayerError, match="says gzip"):
        _layer_stream(raw, mt.OCI_LAYER_GZIP, raw)
    with pytest.raises(LayerError, match="says none"):
        _layer_stream(gz, mt.OCI_LAYER, raw)
    bad = bytearray(gz)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(LayerError, match="layer L"):
        _layer_stream(bytes(bad), mt.OCI_LAYER_GZIP, raw)


def test_tar_reader_long_names_pax_and_bad_checksum():
    long = "d/" + "n" * 300
    raw = tar_bytes([file(long, "x", xattrs={"user.a": b"\x00\xff"})])
    r = TarReader(io.BytesIO(raw))
    m = r.next()
    assert m is not None and m.name == long and m.xattrs == {"user.a": b"\x00\xff"}
    assert r.read(10) == b"x"
    assert r.next() is None
    bad = bytearray(tar_bytes([file("a", "1"), file("b", "2")]))
    bad[1024 + 10] ^= 1  # second member's header (PAX-free: plain ustar)
    from ocikit.oci.tarstream import TarFormatError
    r = TarReader(io.BytesIO(bytes(bad)))
    assert r.next() is not None
    with pytest.raises(TarFormatError, match="checksum"):
        r.next()


def test_dest_must_be_empty_and_failure_leaves_it_clean(tmp_path):
    LayoutWriter(tmp_path / "layout").image([[file("a", "a")], [hardlink("b", "missing")]],
                                            tag="t")
    lay, man, cfg = load_image(tmp_path / "layout", "t")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(UsageError):
        unpack_image(lay, man, cfg, full)
    with pytest.raises(LayerError):
        unpack_image(lay, man, cfg, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayerError):
        unpack_image(lay, man, cfg, empty)
    assert list(empty.iterdir()) == []


def test_rootless_mode_skips_owners_and_devices(tmp_path):
    warnings: list[str] = []
    out = unpack_layers(tmp_path, [[
        file("f", "f", uid=1000, gid=1000),
        Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3)]],
        rootless=True, warn=warnings.append)
    assert os.lstat(out / "f").st_uid == os.geteuid()
    assert not (out / "dev/null").exists()
    assert any("dev/null" in w for w in warnings)


def test_read_in_root_confines_symlinks(tmp_path):
    out = unpack_layers(tmp_path, [[dir("etc"), symlink("etc/passwd", "/../../../etc/hostname"),
                                    symlink("etc/group", "../real"), file("real", "g")]])
    assert read_in_root(out, "/etc/passwd") is None  # /etc/hostname inside the root: absent
    assert read_in_root(out, "/etc/group") == b"g"


def test_verify_after_close_raises_instead_of_hanging() -> None:
    import gzip
    import io

    from fixtures.images import file, tar_bytes
    from ocikit.errors import LayerError
    from ocikit.oci.layer import open_layer

    raw = tar_bytes([file("a", b"x" * 100_000)])
    stream = open_layer(io.BytesIO(gzip.compress(raw)), "application/vnd.oci.image.layer.v1"
                        ".tar+gzip", None, layer="sha256:test")
    stream.read(10)
    stream.close()
    with pytest.raises(LayerError, match="closed"):
        stream.verify()
