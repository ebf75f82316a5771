"""Containers from images: image → snapshots → a container over them; commit back.

The runtime itself (namespaces, overlay, supervisor) is ``ocikit.oci.runtime``;
this module only joins it to the store. It never imports the registry client
unless an image has to be pulled, so ``run`` of a stored image starts fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ocikit.errors import NotFoundError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor, ImageConfig, Manifest
from ocikit.oci.digest import Digest
from ocikit.oci.layout import Store
from ocikit.oci.reference import Reference
from ocikit.oci.runtime.containers import Container, create_container
from ocikit.oci.runtime.options import (
    MANIFEST_LABEL,
    MANIFEST_TYPE_LABEL,
    ImageDefaults,
    ImageRef,
    RunOptions,
    container_spec,
)

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ocikit.progress import Progress
    from ocikit.registry.client import RegistryClient

__all__ = ["MANIFEST_LABEL", "MANIFEST_TYPE_LABEL", "RunOptions", "commit", "create"]


def create(store: Store, image: str, opts: RunOptions, *,
           client_factory: Callable[[], RegistryClient] | None = None,
           progress: Progress | None = None) -> Container:
    """Create a container from ``image`` (pulled first if it is not stored)."""
    from ocikit.oci.snapshot import ensure_snapshots
    from ocikit.resolve import PULL, open_image

    store.init()
    with store.writing():
        img = open_image(image, store, platform=opts.platform, mode=PULL,
                         client_factory=client_factory, progress=progress)
        assert img.blobs is not None
        snapshots = ensure_snapshots(store, img.parsed, img.config)
    source = ImageRef(name=img.name, image_id=str(img.parsed.config.digest),
                      manifest_digest=str(img.manifest.digest),
                      manifest_type=img.manifest.media_type,
                      snapshots=tuple(str(p) for p in snapshots))
    spec = container_spec(source, ImageDefaults.of(img.config), opts, store.volumes_dir)
    return create_container(store.containers_dir, spec)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _committed_config(base: ImageConfig, container: Container, diff_id: Digest,
                      author: str, message: str) -> bytes:
    raw: dict[str, Any] = json.loads(json.dumps(base.raw))
    cfg = dict(raw.get("config") or {})
    p = container.spec.process
    # docker commit keeps the container's command, env, user and workdir.
    ep = list(base.entrypoint or ())
    args = list(p.args)
    cfg["Cmd"] = args[len(ep):] if ep and args[:len(ep)] == ep else args
    if ep and args[:len(ep)] != ep:
        cfg["Entrypoint"] = None
    cfg["Env"] = list(p.env)
    if p.user:
        cfg["User"] = p.user
    if p.cwd and p.cwd != "/":
        cfg["WorkingDir"] = p.cwd
    raw["config"] = cfg
    created = _now()
    raw["created"] = created
    rootfs = dict(raw.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = [*[str(d) for d in base.diff_ids], str(diff_id)]
    raw["rootfs"] = rootfs
    history = list(raw.get("history") or [])
    entry: dict[str, Any] = {"created": created,
                             "created_by": "ocikit commit " + " ".join(p.args)}
    if author:
        entry["author"] = author
        raw["author"] = author
    if message:
        entry["comment"] = message
    history.append(entry)
    raw["history"] = history
    return json.dumps(raw, separators=(",", ":")).encode()


def commit(store: Store, container: Container, ref: Reference, *, author: str = "",
           message: str = "") -> Descriptor:
    """A new image whose top layer is the container's upper directory."""
    import gzip
    import shutil
    import tempfile

    from ocikit.oci.runtime.commit import upper_to_layer_tar

    labels = dict(container.spec.labels)
    base_digest = labels.get(MANIFEST_LABEL)
    if not base_digest:
        raise NotFoundError(f"container {container.name} has no record of its image")
    base_desc = Descriptor(labels.get(MANIFEST_TYPE_LABEL, mt.OCI_MANIFEST),
                           Digest.parse(base_digest), 0)
    if not store.has_blob(base_desc.digest):
        raise NotFoundError(f"the image of container {container.name} ({base_digest}) is no "
                            "longer in the store")
    base_blob = store.read_manifest(base_desc)
    base = base_blob.parsed
    assert isinstance(base, Manifest)
    base_config = ImageConfig.parse(store.read_blob(base.config.digest))
    docker = base_blob.media_type == mt.DOCKER_MANIFEST
    store.init()
    with store.writing():
        fd, tmp_name = tempfile.mkstemp(dir=store.tmp_dir, prefix="commit-")
        try:
            with os.fdopen(fd, "w+b") as raw_tar:
                diff_id, _ = upper_to_layer_tar(container.spec.upper_dir, raw_tar)
                raw_tar.seek(0)
                gz_name = tmp_name + ".gz"
                with open(gz_name, "wb") as gz_out:
                    with gzip.GzipFile(fileobj=gz_out, mode="wb", compresslevel=6,
                                       mtime=0) as gz:
                        shutil.copyfileobj(raw_tar, gz, 1 << 20)
            layer_digest = _sha256_file(gz_name)
            layer = Descriptor(mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
                               layer_digest, os.path.getsize(gz_name))
            store.adopt_verified_file(Path(gz_name), layer_digest)
        finally:
            for n in (tmp_name, tmp_name + ".gz"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(n)
        config_bytes = _committed_config(base_config, container, diff_id, author, message)
        config = store.put_blob(config_bytes, mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
            "config": config.to_dict(),
            "layers": [d.to_dict() for d in (*base.layers, layer)],
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        desc = store.put_blob(data, manifest["mediaType"])
        store.set_name(str(ref), desc)
    return desc


def _sha256_file(path: str) -> Digest:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return Digest("sha256", h.hexdigest())
