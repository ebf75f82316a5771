"""The Python API: what the CLI does, as functions.

    import ocikit
    result = ocikit.pull("busybox")                 # -> PullResult
    img = ocikit.inspect("busybox")                  # -> Image (manifest, config, ...)
    ocikit.unpack("busybox", "/tmp/rootfs")
    code = ocikit.run("busybox", ["echo", "hi"])     # foreground, returns the exit code

Every function takes ``store=`` (a path; default ``$OCIKIT_STORE`` as the CLI)
and raises ``ocikit.OcikitError`` subclasses on failure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocikit.oci.descriptor import Platform
from ocikit.oci.layout import Store
from ocikit.progress import Progress, no_progress
from ocikit.settings import store_root

if TYPE_CHECKING:
    from ocikit.diff import ImageDiff
    from ocikit.efficiency import EfficiencyReport
    from ocikit.pulling import PullResult
    from ocikit.resolve import Image


def open_store(store: str | os.PathLike[str] | None = None) -> Store:
    s = Store(store_root(store))
    s.init()
    return s


def _platform(platform: str | Platform | None) -> Platform | None:
    return Platform.parse(platform) if isinstance(platform, str) else platform


def pull(ref: str, *, store: str | os.PathLike[str] | None = None,
         platform: str | Platform | None = None, progress: Progress = no_progress
         ) -> PullResult:
    """Fetch ``ref`` into the store, verifying every digest."""
    from ocikit.oci.location import RegistryLocation, parse_location
    from ocikit.pulling import pull as _pull
    from ocikit.registry.client import RegistryClient
    from ocikit.registry.config import load_config

    loc = parse_location(ref)
    if not isinstance(loc, RegistryLocation):
        from ocikit.errors import UsageError

        raise UsageError(f"{ref}: pull takes a registry reference")
    with RegistryClient(load_config()) as client:
        return _pull(loc.ref, open_store(store), client, platform=_platform(platform),
                     progress=progress)


def inspect(ref: str, *, store: str | os.PathLike[str] | None = None,
            platform: str | Platform | None = None) -> Image:
    """A stored, layout (``oci:DIR[:TAG]``) or remote image's manifest and config."""
    from ocikit.resolve import REMOTE_READ, open_image

    return open_image(ref, open_store(store), platform=_platform(platform), mode=REMOTE_READ)


def unpack(ref: str, dest: str | os.PathLike[str], *, bundle: bool = False,
           store: str | os.PathLike[str] | None = None,
           platform: str | Platform | None = None, rootless: bool | None = None) -> None:
    """The image's root filesystem at ``dest`` (pulled first if need be)."""
    from ocikit.oci.bundle import write_bundle
    from ocikit.oci.unpack import unpack_image
    from ocikit.resolve import PULL, open_image

    img = open_image(ref, open_store(store), platform=_platform(platform), mode=PULL,
                     import_layout=False)
    assert img.blobs is not None
    if bundle:
        write_bundle(img.blobs, img.parsed, img.config, Path(dest), rootless=rootless)
    else:
        unpack_image(img.blobs, img.parsed, img.config, Path(dest), rootless=rootless)


def run(ref: str, command: Sequence[str] = (), *, store: str | os.PathLike[str] | None = None,
        remove: bool = True, **options: Any) -> int:
    """Create and run a container in the foreground; returns its exit code.

    ``options`` are ``ocikit.containers.RunOptions`` fields (env, volumes, user, ...).
    """
    from ocikit.containers import RunOptions, create
    from ocikit.oci.runtime.containers import run_foreground

    opts = RunOptions(command=tuple(command), auto_remove=remove, **options)
    return run_foreground(create(open_store(store), ref, opts))


def diff_images(a: str, b: str, *, files: bool = False,
                store: str | os.PathLike[str] | None = None,
                platform: str | Platform | None = None) -> ImageDiff:
    """What two images share and what changed (``files=True``: file by file)."""
    from ocikit.diff import diff_images as _diff

    return _diff(a, b, open_store(store), files=files, platform=_platform(platform))


def image_efficiency(ref: str, *, store: str | os.PathLike[str] | None = None,
                     platform: str | Platform | None = None) -> EfficiencyReport:
    """Bytes later layers overwrite or delete, and dive's efficiency score."""
    from ocikit.efficiency import image_efficiency as _eff

    return _eff(ref, open_store(store), platform=_platform(platform))
