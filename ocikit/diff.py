"""``diff``: two images (stored, remote or in a layout) compared.

Layers and config come from manifests and configs alone: for registry
references nothing else is fetched. ``files=True`` reads the layers the two
images do not share, and the shared base's headers (oci/diff.py); a layer
no local layout has is downloaded for the command and deleted after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ocikit.layerblobs import LayerBlobs
from ocikit.oci.descriptor import Descriptor, Platform
from ocikit.oci.diff import (
    ConfigChange,
    FileDiff,
    LayerDiff,
    LayerSide,
    diff_config,
    diff_files,
    diff_layers,
)
from ocikit.oci.layout import Store
from ocikit.progress import Progress, no_progress
from ocikit.resolve import REMOTE_READ, Image, open_image

if TYPE_CHECKING:
    from ocikit.registry.client import RegistryClient


@dataclass(frozen=True)
class ImageDiff:
    a: Image
    b: Image
    layers: LayerDiff
    config: list[ConfigChange]
    files: FileDiff | None  # with files=True
    fetched: tuple[Descriptor, ...]  # layer blobs downloaded for the file diff


def _side(img: Image, i: int) -> LayerSide:
    ids = img.config.diff_ids
    layers = img.parsed.layers
    return LayerSide(i, layers[i], ids[i] if len(ids) == len(layers) else None)


def diff_images(a: str, b: str, store: Store, *, files: bool = False,
                platform: Platform | None = None,
                client_factory: Callable[[], RegistryClient] | None = None,
                progress: Progress = no_progress) -> ImageDiff:
    img_a = open_image(a, store, platform=platform, mode=REMOTE_READ,
                       client_factory=client_factory)
    img_b = open_image(b, store, platform=platform, mode=REMOTE_READ,
                       client_factory=client_factory)
    layers = diff_layers(img_a.parsed, img_a.config, img_b.parsed, img_b.config)
    config = diff_config(img_a.config, img_b.config)
    if not files:
        return ImageDiff(img_a, img_b, layers, config, None, ())
    k = layers.common_base
    na, nb = len(img_a.parsed.layers), len(img_b.parsed.layers)
    if k == na == nb:  # the same layers make the same tree: nothing to read
        return ImageDiff(img_a, img_b, layers, config, FileDiff((), ()), ())
    with LayerBlobs(store, client_factory, progress) as blobs:
        wanted = []
        for i in range(k):  # either image's copy will do
            sa, sb = _side(img_a, i), _side(img_b, i)
            wanted.append([(img_a, sa.descriptor, sa.diff_id), (img_b, sb.descriptor, sb.diff_id)])
        for img, n in ((img_a, na), (img_b, nb)):
            for i in range(k, n):
                s = _side(img, i)
                wanted.append([(img, s.descriptor, s.diff_id)])
        inputs = blobs.inputs(wanted)
        result = diff_files(inputs[:k], inputs[k:k + na - k], inputs[k + na - k:])
        fetched = tuple(blobs.fetched)
    return ImageDiff(img_a, img_b, layers, config, result, fetched)


__all__ = ["ImageDiff", "diff_images"]
