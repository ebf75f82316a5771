"""The benchmark image: ~500 MB uncompressed, tens of thousands of files from /usr.

Built once into ``bench/cache/image`` (an OCI layout) and reused; GNU tar
and gzip make the layers because the benchmark measures pulling and
unpacking, not how the image was made.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "cache"
IMAGE = CACHE / "image"
TAG = "bench"
# Five layers of different shapes: many small headers, small text files,
# compressible data, binaries.
LAYER_SOURCES = (
    ["usr/include"],
    ["usr/lib/python3.11"],
    ["usr/share/locale"],
    ["usr/lib/gcc"],
    ["usr/sbin", "usr/libexec"],
)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _diff_id(gz: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(gz, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build(force: bool = False) -> Path:
    """The OCI layout holding the image tagged ``bench``; built if missing."""
    return build_layout(IMAGE, Path("/"), LAYER_SOURCES, force=force)


MINBASE_ROOT = CACHE / "minbase-root"
MINBASE = CACHE / "minbase"


def build_minbase(force: bool = False) -> Path | None:
    """A one-layer image of a ``debootstrap --variant=minbase`` tree, if there is one.

    Make the tree first (a few minutes, needs Debian's mirror):
    ``debootstrap --variant=minbase bookworm bench/cache/minbase-root``.
    """
    if not (MINBASE_ROOT / "usr").is_dir():
        return None
    return build_layout(MINBASE, MINBASE_ROOT, (["."],), force=force)


def build_layout(dest: Path, root: Path, layer_sources: tuple[list[str], ...], *,
                 force: bool = False) -> Path:
    """An OCI layout at ``dest`` whose layers are tars of ``root``'s paths, in order."""
    if (dest / "index.json").exists() and not force:
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids = [], []
    for i, sources in enumerate(layer_sources):
        present = [s for s in sources if (root / s).exists()]
        out = tmp / f"layer{i}.tar.gz"
        with open(out, "wb") as f:
            tar = subprocess.Popen(
                ["tar", "-C", str(root), "--sort=name", "--mtime=@1700000000",
                 "--numeric-owner", "--xattrs", "--exclude=./proc/*", "--exclude=./sys/*",
                 "--exclude=./dev/*", "-cf", "-", *present],
                stdout=subprocess.PIPE)
            subprocess.run(["gzip", "-6", "-n"], stdin=tar.stdout, stdout=f, check=True)
            assert tar.stdout is not None
            tar.stdout.close()
            if tar.wait() not in (0, 1):  # 1: a file changed while read
                raise RuntimeError(f"tar of {present} failed")
        digest = _sha256_file(out)
        diff_ids.append("sha256:" + _diff_id(out))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": "sha256:" + digest, "size": out.stat().st_size})
        out.rename(blobs / digest)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"ADD {' '.join(s)}"}
                    for s in layer_sources],
    }, sort_keys=True).encode()
    cdigest = hashlib.sha256(config).hexdigest()
    (blobs / cdigest).write_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + cdigest, "size": len(config)},
        "layers": layers}, sort_keys=True).encode()
    mdigest = hashlib.sha256(manifest).hexdigest()
    (blobs / mdigest).write_bytes(manifest)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + mdigest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": TAG}}]}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
