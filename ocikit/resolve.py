"""Finding an image by what the user typed: the store, an OCI layout, a registry.

A plain reference is looked up in the store first, then in the registry;
``docker://`` skips the store; ``oci:DIR[:TAG]`` reads a layout folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ocikit.errors import NotFoundError, UnsupportedError
from ocikit.oci.descriptor import (
    MAX_CONFIG_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    ManifestBlob,
    Platform,
)
from ocikit.oci.digest import Digest
from ocikit.oci.layout import INDEX_DIGEST, REF_NAME, Layout, Store
from ocikit.oci.location import (
    ArchiveLocation,
    LayoutLocation,
    Location,
    RegistryLocation,
    parse_location,
)
from ocikit.oci.reference import Reference
from ocikit.progress import Progress, no_progress

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocikit.registry.client import RegistryClient


@dataclass(frozen=True)
class Image:
    """One platform's image, its manifest and config read and verified."""

    name: str
    digest: Digest  # what the name resolved to: the index's digest for an index
    manifest: ManifestBlob
    index: ManifestBlob | None
    config_bytes: bytes
    config: ImageConfig
    blobs: Layout | None  # where the layers can be read locally; None if remote
    source: str  # "store", "oci" or "registry"
    ref: Reference | None = None

    @property
    def parsed(self) -> Manifest:
        assert isinstance(self.manifest.parsed, Manifest)
        return self.manifest.parsed

    @property
    def platform(self) -> Platform:
        return self.config.platform


def find_stored(store: Store, ref: Reference) -> Descriptor | None:
    """The store's entry for ``ref``: by full name, or by digest."""
    desc = store.find(str(ref))
    if desc is not None:
        return desc
    if ref.digest is not None:
        for e in store.entries():
            same_repo = not e.name or e.name.startswith(ref.name + ":") or \
                e.name.startswith(ref.name + "@")
            if same_repo and (e.descriptor.digest == ref.digest or
                              e.descriptor.annotations.get(INDEX_DIGEST) == str(ref.digest)):
                return e.descriptor
    return None


def _from_layout(layout: Layout, desc: Descriptor, name: str, source: str,
                 platform: Platform | None, ref: Reference | None = None) -> Image:
    top = layout.read_manifest(desc)
    index_blob = None
    image = top
    digest = top.digest
    if isinstance(top.parsed, Index):
        index_blob = top
        image = layout.read_manifest(top.parsed.choose(platform, name))
    elif desc.annotations.get(INDEX_DIGEST):
        digest = Digest.parse(desc.annotations[INDEX_DIGEST])
        if layout.has_blob(digest):
            index_blob = layout.read_manifest(Descriptor("", digest, layout.blob_size(digest)))
    if not isinstance(image.parsed, Manifest):
        raise UnsupportedError(f"{name}: {image.digest} is not an image manifest")
    cfg = image.parsed.config
    config_bytes = layout.read_blob(cfg.digest, limit=MAX_CONFIG_SIZE)
    return Image(name=name, digest=digest, manifest=image, index=index_blob,
                 config_bytes=config_bytes,
                 config=ImageConfig.parse(config_bytes, f"config {cfg.digest}"),
                 blobs=layout, source=source, ref=ref)


def open_stored(store: Store, ref: Reference, platform: Platform | None = None) -> Image | None:
    desc = find_stored(store, ref)
    if desc is None:
        return None
    return _from_layout(store, desc, str(ref), "store", platform, ref)


def open_layout(loc: LayoutLocation, platform: Platform | None = None) -> Image:
    layout = Layout(loc.path)
    return _from_layout(layout, layout.select(loc.tag), str(loc), "oci", platform)


def open_remote(client: RegistryClient, ref: Reference,
                platform: Platform | None = None) -> Image:
    """Manifests and config from the registry; no layer is downloaded."""
    top = client.get_manifest(ref)
    index_blob = None
    image = top
    if isinstance(top.parsed, Index):
        index_blob = top
        image = client.get_manifest(ref.with_digest(top.parsed.choose(platform, str(ref)).digest))
    if not isinstance(image.parsed, Manifest):
        raise UnsupportedError(f"{ref}: {image.digest} is not an image manifest")
    cfg = image.parsed.config
    config_bytes = client.get_blob_bytes(ref, cfg, MAX_CONFIG_SIZE)
    return Image(name=str(ref), digest=top.digest, manifest=image, index=index_blob,
                 config_bytes=config_bytes,
                 config=ImageConfig.parse(config_bytes, f"config {cfg.digest}"),
                 blobs=None, source="registry", ref=ref)


def open_archive(loc: ArchiveLocation, store: Store, platform: Platform | None = None) -> Image:
    """A docker-archive, converted to an OCI layout in the store's tmp/ for this process."""
    import atexit
    import shutil
    import tempfile

    from ocikit.copy import copy

    store.init()
    tmp = Path(tempfile.mkdtemp(dir=store.tmp_dir, prefix="archive-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    copy(loc, LayoutLocation(tmp, "image"), store=store, platform=platform)
    img = open_layout(LayoutLocation(tmp, "image"), platform)
    return Image(name=str(loc), digest=img.digest, manifest=img.manifest, index=img.index,
                 config_bytes=img.config_bytes, config=img.config, blobs=img.blobs,
                 source="docker-archive", ref=None)


def import_blobs(store: Store, img: Image) -> Image:
    """Copy a layout image's blobs into the store (verified), so snapshots can use them."""
    if img.blobs is store or img.blobs is None:
        return img
    src = img.blobs
    store.init()
    for d in (img.parsed.config, *img.parsed.layers):
        if not store.has_blob(d.digest):
            with src.open_blob(d.digest) as f:
                store.put_blob_stream(f, d)
    store.put_blob(img.manifest.data, img.manifest.media_type)
    if img.index is not None:
        store.put_blob(img.index.data, img.index.media_type)
    return Image(name=img.name, digest=img.digest, manifest=img.manifest, index=img.index,
                 config_bytes=img.config_bytes, config=img.config, blobs=store,
                 source=img.source, ref=img.ref)


# How much of a remote image a command may fetch.
LOCAL_ONLY = "local"    # the store or a layout only
REMOTE_READ = "remote"  # manifests and configs only, nothing stored (inspect, history, diff)
PULL = "pull"           # pull into the store what is missing (run, create, unpack)


def open_image(text: str | Location, store: Store, *, platform: Platform | None = None,
               mode: str = REMOTE_READ,
               client_factory: Callable[[], RegistryClient] | None = None,
               progress: Progress | None = None, import_layout: bool = True) -> Image:
    """The image ``text`` names; ``import_layout=False`` reads a layout's blobs in place."""
    loc = parse_location(text) if isinstance(text, str) else text
    if isinstance(loc, LayoutLocation):
        img = open_layout(loc, platform)
        return import_blobs(store, img) if mode == PULL and import_layout else img
    if isinstance(loc, ArchiveLocation):
        img = open_archive(loc, store, platform)
        return import_blobs(store, img) if mode == PULL else img
    assert isinstance(loc, RegistryLocation)
    ref = loc.ref
    if not loc.explicit:
        found = open_stored(store, ref, platform)
        if found is not None:
            return found
    if mode == LOCAL_ONLY:
        raise NotFoundError(f"image {ref} is not in the store")
    if client_factory is None:
        from ocikit.registry.client import RegistryClient as _Client

        client: RegistryClient = _Client()
    else:
        client = client_factory()
    if mode == PULL:
        from ocikit.pulling import pull

        pull(ref, store, client, platform=platform, progress=progress or no_progress)
        found = open_stored(store, ref, platform)
        if found is None:
            raise NotFoundError(f"image {ref} vanished from the store after the pull")
        return found
    return open_remote(client, ref, platform)


__all__ = ["LOCAL_ONLY", "PULL", "REF_NAME", "REMOTE_READ", "Image", "find_stored",
           "import_blobs", "open_image", "open_layout", "open_remote", "open_stored"]
