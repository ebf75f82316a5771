"""Two images for the diff benchmark: the benchmark image's five layers, each
with a top layer of its own.

A's top layer adds a few files; B's rewrites Python modules, changes modes,
deletes a header directory (whiteout), empties a locale (opaque), and adds
about 20 MB of new files. Both live in ``bench/cache/diff`` (an OCI layout,
tags ``a`` and ``b``), the shared blobs hardlinked from the benchmark image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from pathlib import Path

from bench.image import CACHE, IMAGE, TAG, build

LAYOUT = CACHE / "diff"
MTIME = 1_700_000_000


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE) -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = MTIME
    ti.mode = mode
    ti.type = kind
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def _top_a() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc", kind=tarfile.DIRTYPE, mode=0o755)
        for i in range(20):
            _add(tf, f"etc/a-{i}.conf", f"setting = {i}\n".encode())
    return buf.getvalue()


def _top_b() -> bytes:
    rnd = random.Random(5)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        py = Path("/usr/lib/python3.11")
        for sub in ("json", "email", "http", "xml/dom"):
            for f in sorted((py / sub).glob("*.py")):
                rel = str(f.relative_to("/"))
                _add(tf, rel, f.read_bytes() + b"\n# patched\n")
        for f in sorted(Path("/usr/sbin").iterdir())[:50]:
            if f.is_file() and not f.is_symlink():
                _add(tf, str(f.relative_to("/")), f.read_bytes(), mode=0o700)
        _add(tf, "usr/include/.wh.linux")
        _add(tf, "usr/share/locale/de", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "usr/share/locale/de/.wh..wh..opq")
        _add(tf, "usr/share/locale/de/README", b"emptied\n")
        _add(tf, "opt", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "opt/app", kind=tarfile.DIRTYPE, mode=0o755)
        for i in range(400):
            _add(tf, f"opt/app/data-{i:03}.bin", rnd.randbytes(50_000))
    return buf.getvalue()


def _blob(blobs: Path, data: bytes) -> dict[str, object]:
    d = hashlib.sha256(data).hexdigest()
    (blobs / d).write_bytes(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def build_pair(force: bool = False) -> Path:
    """The layout with tags ``a`` and ``b``; built if missing."""
    if (LAYOUT / "index.json").exists() and not force:
        return LAYOUT
    base = build()
    tmp = CACHE / "diff.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for p in (base / "blobs" / "sha256").iterdir():
        os.link(p, blobs / p.name)
    index = json.loads((base / "index.json").read_text())
    [entry] = [m for m in index["manifests"]
               if m["annotations"]["org.opencontainers.image.ref.name"] == TAG]
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    entries = []
    for tag, raw in (("a", _top_a()), ("b", _top_b())):
        layer = _blob(blobs, gzip.compress(raw, 6, mtime=0))
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        cfg = json.loads(json.dumps(config))
        cfg["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(raw).hexdigest())
        cfg["history"].append({"created": "2023-11-14T22:13:20Z", "created_by": f"top {tag}"})
        cdesc = _blob(blobs, json.dumps(cfg, sort_keys=True).encode())
        cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
        m = json.loads(json.dumps(manifest))
        m["config"] = cdesc
        m["layers"].append(layer)
        mdesc = _blob(blobs, json.dumps(m, sort_keys=True).encode())
        mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        entries.append(mdesc)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    shutil.rmtree(LAYOUT, ignore_errors=True)
    tmp.rename(LAYOUT)
    return LAYOUT


__all__ = ["IMAGE", "LAYOUT", "build_pair"]
