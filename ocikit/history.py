"""``history``: an image's history entries beside the layers they made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ocikit.oci.descriptor import Descriptor
from ocikit.oci.digest import Digest
from ocikit.oci.layer import open_layer
from ocikit.oci.layout import Layout
from ocikit.resolve import Image


@dataclass(frozen=True)
class HistoryRow:
    created: str
    created_by: str
    comment: str
    empty_layer: bool
    size: int | None               # compressed, as stored or served
    uncompressed_size: int | None  # None where the layer is not stored locally
    digest: str                    # the layer's digest, "" for empty-layer rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def uncompressed_size(layout: Layout, desc: Descriptor,
                      diff_id: Digest | None = None) -> int | None:
    """Length of the layer's tar stream, read through to its end (and verified)."""
    if not layout.has_blob(desc.digest):
        return None
    with layout.open_blob(desc.digest) as f, \
            open_layer(f, desc.media_type, diff_id, layer=str(desc.digest)) as stream:
        stream.verify()
        return stream.count


def image_history(img: Image) -> list[HistoryRow]:
    layers = list(img.parsed.layers)
    ids = img.config.diff_ids if len(img.config.diff_ids) == len(layers) else ()

    def unpacked(i: int) -> int | None:
        if img.blobs is None:
            return None
        return uncompressed_size(img.blobs, layers[i], ids[i] if ids else None)

    rows: list[HistoryRow] = []
    li = 0
    for h in img.config.history:
        if h.empty_layer:
            rows.append(HistoryRow(h.created, h.created_by, h.comment, True, 0, 0, ""))
            continue
        desc = layers[li] if li < len(layers) else None
        rows.append(HistoryRow(
            h.created, h.created_by, h.comment, False,
            desc.size if desc else None,
            unpacked(li) if desc else None,
            str(desc.digest) if desc else ""))
        li += 1
    # Layers the history does not mention (or no history at all).
    for i in range(li, len(layers)):
        rows.append(HistoryRow("", "", "", False, layers[i].size, unpacked(i),
                               str(layers[i].digest)))
    rows.reverse()
    return rows
