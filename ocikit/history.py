"""``history``: an image's history entries beside the layers they made."""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any

from ocikit.oci import mediatypes as mt
from ocikit.oci.descriptor import Descriptor
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


def uncompressed_size(layout: Layout, desc: Descriptor) -> int | None:
    """Length of the layer's tar stream, read through to its end."""
    if not layout.has_blob(desc.digest):
        return None
    total = 0
    with layout.open_blob(desc.digest) as f:
        head = f.read(4)
        f.seek(0)
        if desc.media_type in mt.ZSTD_LAYERS or head == b"\x28\xb5\x2f\xfd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            while chunk := reader.read(1 << 20):
                total += len(chunk)
            return total
        if head[:2] != b"\x1f\x8b":
            return layout.blob_size(desc.digest)
        # Multi-member gzip: a new decompressor for each member.
        d = zlib.decompressobj(31)
        while chunk := f.read(1 << 20):
            while chunk:
                total += len(d.decompress(chunk))
                if d.eof:
                    chunk = d.unused_data
                    d = zlib.decompressobj(31)
                    if chunk and chunk[:2] != b"\x1f\x8b":
                        break
                else:
                    chunk = b""
        total += len(d.flush())
    return total


def image_history(img: Image) -> list[HistoryRow]:
    layers = list(img.parsed.layers)
    rows: list[HistoryRow] = []
    li = 0
    for h in img.config.history:
        if h.empty_layer:
            rows.append(HistoryRow(h.created, h.created_by, h.comment, True, 0, 0, ""))
            continue
        desc = layers[li] if li < len(layers) else None
        li += 1
        rows.append(HistoryRow(
            h.created, h.created_by, h.comment, False,
            desc.size if desc else None,
            uncompressed_size(img.blobs, desc) if desc and img.blobs is not None else None,
            str(desc.digest) if desc else ""))
    # Layers the history does not mention (or no history at all).
    for desc in layers[li:]:
        rows.append(HistoryRow("", "", "", False, desc.size,
                               uncompressed_size(img.blobs, desc) if img.blobs else None,
                               str(desc.digest)))
    rows.reverse()
    return rows
