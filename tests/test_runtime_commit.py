"""container diff and the upper dir as an OCI layer, from a real container's writes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from ocikit.oci.runtime import containers as rt
from ocikit.oci.runtime.commit import container_diff, upper_to_layer_tar
from ocikit.oci.runtime.spec import ContainerSpec, ProcessSpec
from tests.test_runtime import make_busybox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

SCRIPT = """
echo new > /etc/newfile
echo more >> /etc/passwd
rm /bin/wc /bin/nc
mkdir -p /data/sub && echo f > /data/sub/f
echo a > /tmp/a && ln /tmp/a /tmp/b
rm -rf /home && mkdir /home && echo n > /home/new
ln -s /etc/passwd /tmp/link
"""


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> tuple[rt.Container, Path]:
    root = tmp_path_factory.mktemp("commit")
    lower = make_busybox(root)
    c = rt.create_container(root / "containers", ContainerSpec(
        process=ProcessSpec(args=("sh", "-c", SCRIPT)), lower_dirs=(str(lower),)))
    with tempfile.TemporaryFile() as out:
        code = rt.run_foreground(c, stdout=out.fileno(), stderr=out.fileno())
        out.seek(0)
        assert code == 0, out.read()
    # as if the container had set a trusted.overlay.* xattr itself (stored escaped)
    os.setxattr(Path(c.spec.upper_dir) / "etc" / "newfile", "trusted.overlay.overlay.origin",
                b"mine")
    return c, lower


def test_diff_lines(changed):
    c, _ = changed
    lines = [str(x) for x in container_diff(c.spec.upper_dir, c.spec.lower_dirs)]
    assert lines == [
        "C /bin", "D /bin/nc", "D /bin/wc",
        "A /data", "A /data/sub", "A /data/sub/f",
        "C /etc", "A /etc/newfile", "C /etc/passwd",
        "C /home", "D /home/app", "A /home/new",
        "C /tmp", "A /tmp/a", "A /tmp/b", "A /tmp/link",
    ]


def _apply(tar_data: bytes, root: Path) -> None:
    """A minimal OCI layer applier, enough to check the layer's meaning."""
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tf:
        for m in tf.getmembers():
            parent, _, name = m.name.rpartition("/")
            target = root / parent
            if name == ".wh..wh..opq":
                for child in list(target.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                continue
            if name.startswith(".wh."):
                victim = target / name[4:]
                if victim.is_dir() and not victim.is_symlink():
                    shutil.rmtree(victim)
                else:
                    victim.unlink()
                continue
            path = root / m.name
            if path.exists() and not path.is_dir() and not m.isdir():
                path.unlink()
            if m.isdir() and path.is_dir():
                continue
            tf.extract(m, root, filter="fully_trusted")


def test_layer_tar_round_trip(changed, tmp_path):
    c, lower = changed
    buf = io.BytesIO()
    diff_id, size = upper_to_layer_tar(c.spec.upper_dir, buf)
    data = buf.getvalue()
    assert size == len(data)
    assert diff_id.hex == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    names = set(members)
    assert {"bin/.wh.wc", "bin/.wh.nc", "home/.wh..wh..opq", "home/new", "etc/newfile",
            "data/sub/f"} <= names
    # whiteouts are plain empty files, never hardlinks of each other
    assert members["bin/.wh.wc"].isfile() and members["bin/.wh.nc"].isfile()
    links = [m for m in members.values() if m.islnk()]
    assert [(m.name, m.linkname) for m in links] == [("tmp/b", "tmp/a")]
    assert members["tmp/link"].issym() and members["tmp/link"].linkname == "/etc/passwd"
    x = members["etc/newfile"].pax_headers
    assert x.get("SCHILY.xattr.trusted.overlay.origin") == "mine"
    assert not any(k.startswith("SCHILY.xattr.trusted.overlay.opaque")
                   for m in members.values() for k in m.pax_headers)
    # applied on the image, the layer gives the container's view
    rootfs = tmp_path / "rootfs"
    shutil.copytree(lower, rootfs, symlinks=True)
    _apply(data, rootfs)
    assert (rootfs / "etc" / "newfile").read_text() == "new\n"
    assert not (rootfs / "bin" / "wc").exists() and (rootfs / "bin" / "ls").exists()
    assert sorted(os.listdir(rootfs / "home")) == ["new"]
    assert (rootfs / "etc" / "passwd").read_text().endswith("more\n")
    assert os.stat(rootfs / "tmp" / "a").st_ino == os.stat(rootfs / "tmp" / "b").st_ino


def test_whiteouts_sharing_an_inode(tmp_path):
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    os.mknod(upper / "d" / "gone1", 0o600 | 0o020000, 0)
    os.link(upper / "d" / "gone1", upper / "d" / "gone2")
    assert os.stat(upper / "d" / "gone2").st_nlink == 2
    buf = io.BytesIO()
    upper_to_layer_tar(str(upper), buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        got = [(m.name, m.type) for m in tf.getmembers()]
    assert got == [("d", tarfile.DIRTYPE), ("d/.wh.gone1", tarfile.REGTYPE),
                   ("d/.wh.gone2", tarfile.REGTYPE)]
    assert [str(x) for x in container_diff(str(upper), [str(tmp_path / "none")])] == [
        "A /d", "D /d/gone1", "D /d/gone2"]
