"""``efficiency``: how much of an image its layers carry for nothing.

Every layer is read (headers only): from the image's layout or the store,
or downloaded for the command and deleted after (oci/efficiency.py measures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ocikit.layerblobs import LayerBlobs
from ocikit.oci.descriptor import Descriptor, Platform
from ocikit.oci.efficiency import Efficiency, efficiency
from ocikit.oci.layout import Store
from ocikit.progress import Progress, no_progress
from ocikit.resolve import REMOTE_READ, Image, open_image

if TYPE_CHECKING:
    from ocikit.registry.client import RegistryClient


@dataclass(frozen=True)
class EfficiencyReport:
    image: Image
    result: Efficiency
    fetched: tuple[Descriptor, ...]


def image_efficiency(ref: str, store: Store, *, platform: Platform | None = None,
                     client_factory: Callable[[], RegistryClient] | None = None,
                     progress: Progress = no_progress) -> EfficiencyReport:
    img = open_image(ref, store, platform=platform, mode=REMOTE_READ,
                     client_factory=client_factory)
    layers = img.parsed.layers
    ids = img.config.diff_ids
    with LayerBlobs(store, client_factory, progress) as blobs:
        inputs = blobs.inputs([[(img, d, ids[i] if len(ids) == len(layers) else None)]
                               for i, d in enumerate(layers)])
        result = efficiency(inputs)
        fetched = tuple(blobs.fetched)
    return EfficiencyReport(img, result, fetched)


__all__ = ["EfficiencyReport", "image_efficiency"]
