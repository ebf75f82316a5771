"""``push``: a stored image (or an ``oci:``/``docker-archive:`` one) into a registry.

A push is a copy whose source is looked up in the store first and whose
destination is a registry. Blobs the registry has are skipped after a HEAD;
blobs that another repository of the same registry holds (the store's
``index.json`` names say where its images came from) are mounted, so no byte
of them travels; the rest are uploaded in parallel. Pushing again only
confirms the tag: one HEAD.
"""

from __future__ import annotations

from ocikit.copy import (
    MAX_PARALLEL,
    CopyResult,
    RegistrySink,
    Source,
    open_source,
    transfer,
)
from ocikit.errors import NotFoundError, UsageError
from ocikit.oci.descriptor import Platform
from ocikit.oci.layout import Store
from ocikit.oci.location import (
    ArchiveLocation,
    LayoutLocation,
    Location,
    RegistryLocation,
    parse_location,
)
from ocikit.oci.reference import Reference
from ocikit.progress import Progress, no_progress
from ocikit.registry.client import RegistryClient
from ocikit.registry.upload import DEFAULT_CHUNK_SIZE


def _dest_ref(src: Location, dest: str | Location | None) -> Reference:
    if dest is None:
        if isinstance(src, RegistryLocation):
            return src.ref
        raise UsageError(f"push {src} needs a destination reference (push SRC DEST)")
    loc = parse_location(dest) if isinstance(dest, str) else dest
    if not isinstance(loc, RegistryLocation):
        raise UsageError(f"push writes to a registry, not to {loc} (use copy)")
    return loc.ref


def push(src: str | Location, dest: str | Location | None, store: Store,
         client: RegistryClient, *, platform: Platform | None = None,
         referrers: bool = False, progress: Progress = no_progress,
         chunk_size: int = DEFAULT_CHUNK_SIZE, max_workers: int = MAX_PARALLEL) -> CopyResult:
    """Upload ``src`` to the registry reference ``dest`` (default: ``src``'s own name).

    A plain ``src`` must be in the store; ``oci:`` and ``docker-archive:``
    sources need ``dest``.
    """
    src_loc = parse_location(src) if isinstance(src, str) else src
    dest_ref = _dest_ref(src_loc, dest)
    source: Source
    if isinstance(src_loc, RegistryLocation) and not src_loc.explicit:
        from ocikit.copy import stored_source

        found = stored_source(store, src_loc.ref, progress)
        if found is None:
            raise NotFoundError(f"image {src_loc.ref} is not in the store (pull it first)")
        source = found
    else:
        assert isinstance(src_loc, LayoutLocation | ArchiveLocation | RegistryLocation)
        source = open_source(src_loc, store, lambda: client, "registry", progress)
    try:
        from ocikit.copy import store_hints

        sink = RegistrySink(client, dest_ref, chunk_size=chunk_size, hints=store_hints(store))
        return transfer(source, sink, platform=platform, referrers=referrers,
                        progress=progress, max_workers=max_workers)
    finally:
        source.close()


__all__ = ["push"]
