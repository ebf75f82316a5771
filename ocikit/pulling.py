"""``pull``: a reference's manifest, config and layers into the store.

Order matters for crash safety: blobs first (each verified, then renamed
into place), the manifest after them, the name in ``index.json`` last. A
pull killed at any point leaves verified blobs and resumable partial
downloads in ``ingest/``, never a name pointing at missing content.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ocikit.errors import NotFoundError, OcikitError, VerificationError
from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor, Index, Manifest, ManifestBlob, Platform
from ocikit.oci.digest import Digest
from ocikit.oci.layout import INDEX_DIGEST, Store
from ocikit.oci.location import ArchiveLocation, LayoutLocation
from ocikit.oci.reference import Reference
from ocikit.parallel import run_all
from ocikit.progress import (
    BLOB_DONE,
    BLOB_EXISTS,
    BLOB_PROGRESS,
    BLOB_START,
    RESOLVED,
    STORED,
    Progress,
    ProgressEvent,
    no_progress,
)
from ocikit.registry.client import RegistryClient

MAX_PARALLEL = 4


@dataclass(frozen=True)
class PullResult:
    """What a pull stored: ``digest`` is what the reference resolved to."""

    name: str
    digest: Digest
    manifest: Descriptor
    platform: Platform | None
    downloaded: int  # blobs actually transferred (0 when all were stored)


class _Cancelled(OcikitError):
    pass


def store_name(ref: Reference) -> str:
    """The name an image is kept under in index.json: the full reference."""
    return str(ref)


def pull(ref: Reference, store: Store, client: RegistryClient, *,
         platform: Platform | None = None, progress: Progress = no_progress,
         max_workers: int = MAX_PARALLEL) -> PullResult:
    store.init()
    name = store_name(ref)
    with store.writing():
        current = _already_stored(store, name, ref, client, platform)
        if current is not None:
            return current
        top = client.get_manifest(ref)
        progress(ProgressEvent(RESOLVED, str(ref), str(top.digest), message=top.media_type))
        index_blob: ManifestBlob | None = None
        image = top
        if isinstance(top.parsed, Index):
            index_blob = top
            chosen = top.parsed.choose(platform, str(ref))
            image = client.get_manifest(ref.with_digest(chosen.digest))
            if not isinstance(image.parsed, Manifest):
                raise NotFoundError(f"{ref}: index entry {chosen.digest} is not an image manifest")
        assert isinstance(image.parsed, Manifest)
        manifest = image.parsed
        if manifest.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            raise NotFoundError(
                f"{ref} is not a container image (config type {manifest.config.media_type})")

        if not store.has_blob(manifest.config.digest):
            config = client.get_blob_bytes(ref, manifest.config)
            store.put_blob(config, manifest.config.media_type)
        downloaded = _fetch_layers(ref, store, client, manifest.layers, progress, max_workers)

        store.put_blob(image.data, image.media_type)
        extra: dict[str, str] = {}
        desc = image.descriptor
        if index_blob is not None:
            store.put_blob(index_blob.data, index_blob.media_type)
            extra[INDEX_DIGEST] = str(index_blob.digest)
            chosen_platform = next((d.platform for d in index_blob.parsed.manifests  # type: ignore[union-attr]
                                    if d.digest == image.digest), None)
            desc = Descriptor(image.media_type, image.digest, len(image.data),
                              platform=chosen_platform)
        store.set_name(name, desc, extra)
        progress(ProgressEvent(STORED, name, str(top.digest)))
    return PullResult(name=name, digest=top.digest, manifest=desc,
                      platform=desc.platform, downloaded=downloaded)


def _already_stored(store: Store, name: str, ref: Reference, client: RegistryClient,
                    platform: Platform | None) -> PullResult | None:
    """A stored image the tag still points at, checked with a HEAD request.

    HEAD does not count against Docker Hub's pull quota, and a pull of an
    unchanged tag then transfers nothing. The Accept set is the same as for
    the GET, so the digests compare.
    """
    desc = store.find(name)
    if desc is None:
        return None
    if ref.digest is not None:
        remote = ref.digest
    else:
        try:
            remote = client.resolve(ref).digest
        except OcikitError:
            return None
    index_digest = desc.annotations.get(INDEX_DIGEST)
    if remote != desc.digest and str(remote) != index_digest:
        return None
    if index_digest and platform is not None and (
            desc.platform is None or not desc.platform.matches(platform)):
        return None
    try:
        manifest = store.read_manifest(desc).parsed
    except OcikitError:
        return None
    if not isinstance(manifest, Manifest) or not all(
            store.has_blob(d.digest) for d in (manifest.config, *manifest.layers)):
        return None
    return PullResult(name=name, digest=remote, manifest=desc, platform=desc.platform,
                      downloaded=0)


def _fetch_layers(ref: Reference, store: Store, client: RegistryClient,
                  layers: tuple[Descriptor, ...], progress: Progress, max_workers: int) -> int:
    todo: list[Descriptor] = []
    seen: set[Digest] = set()
    for layer in layers:
        if layer.digest in seen:
            continue
        seen.add(layer.digest)
        if store.has_blob(layer.digest):
            progress(ProgressEvent(BLOB_EXISTS, str(ref), str(layer.digest), layer.size,
                                   layer.size))
        elif layer.urls and not layer.media_type.startswith("application/vnd.oci"):
            # Foreign (non-distributable) layers live elsewhere; docker skips
            # them too unless the daemon is told otherwise.
            raise NotFoundError(f"{ref}: layer {layer.digest} is a foreign layer "
                                f"({layer.urls[0]}) that ocikit does not download")
        else:
            todo.append(layer)
    if not todo:
        return 0
    cancel = threading.Event()

    def fetch(layer: Descriptor) -> None:
        with store.ingesting(layer.digest) as partial:
            if store.has_blob(layer.digest):  # another process stored it meanwhile
                progress(ProgressEvent(BLOB_EXISTS, str(ref), str(layer.digest), layer.size,
                                       layer.size))
                return
            have = partial.stat().st_size if partial.exists() else 0
            progress(ProgressEvent(BLOB_START, str(ref), str(layer.digest), have, layer.size))
            done = [have]

            def on_bytes(n: int) -> None:
                if cancel.is_set():
                    raise _Cancelled("cancelled")
                done[0] += n
                progress(ProgressEvent(BLOB_PROGRESS, str(ref), str(layer.digest), done[0],
                                       layer.size))

            try:
                client.fetch_blob(ref, layer, partial, on_bytes)
            except VerificationError:
                if not have:
                    raise
                # The part kept from an earlier run was damaged (fetch_blob has
                # dropped it): one fresh download before giving up.
                done[0] = 0
                progress(ProgressEvent(BLOB_START, str(ref), str(layer.digest), 0, layer.size))
                client.fetch_blob(ref, layer, partial, on_bytes)
            store.adopt_verified_file(partial, layer.digest)
        progress(ProgressEvent(BLOB_DONE, str(ref), str(layer.digest), layer.size, layer.size))

    run_all(fetch, todo, max_workers=max_workers, cancel=cancel, name="ocikit-pull")
    return len(todo)


ClientFactory = Callable[[], RegistryClient]


def local_name(loc: LayoutLocation | ArchiveLocation) -> Reference:
    """The store name of an image pulled from a layout or an archive.

    An archive's own RepoTags win; otherwise ``localhost/<folder>:<tag>``,
    as podman names what it pulls from an ``oci:`` layout.
    """
    if isinstance(loc, ArchiveLocation):
        from ocikit.oci.archive import DockerArchive

        with DockerArchive(loc.path) as archive:
            tags = archive.select(loc.ref).repo_tags
        if tags:
            return Reference.parse(tags[0])
    base = re.sub(r"[^a-z0-9._-]+", "-", loc.path.absolute().name.lower()).strip("._-")
    tag = (loc.tag if isinstance(loc, LayoutLocation) else "") or "latest"
    return Reference.parse(f"localhost/{base or 'image'}:{tag}")


def pull_local(loc: LayoutLocation | ArchiveLocation, store: Store, *,
               platform: Platform | None = None) -> PullResult:
    """Import an image from an OCI layout or a docker-archive into the store."""
    from ocikit.resolve import PULL, open_image

    store.init()
    name = str(local_name(loc))
    # Blobs imported before the name points at them: keep gc away meanwhile.
    with store.writing():
        img = open_image(loc, store, platform=platform, mode=PULL)
        desc = img.manifest.descriptor
        extra: dict[str, str] = {}
        if img.index is not None:
            extra[INDEX_DIGEST] = str(img.index.digest)
            desc = Descriptor(desc.media_type, desc.digest, desc.size, platform=img.platform)
        store.set_name(name, desc, extra)
    return PullResult(name=name, digest=img.digest, manifest=desc, platform=desc.platform,
                      downloaded=0)
