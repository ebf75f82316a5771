"""Layer blobs to read for diff and efficiency: local where possible, else fetched.

A layer is read from the image's own layout or the store when either has
it; otherwise it is downloaded (digest verified) into the store's ``tmp/``
for the length of the command and deleted after: ``diff`` and
``efficiency`` of a remote image store nothing (SPEC.md).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from ocikit.errors import NotFoundError
from ocikit.oci.descriptor import Descriptor
from ocikit.oci.diff import LayerInput
from ocikit.oci.digest import Digest
from ocikit.oci.layout import Layout, Store
from ocikit.progress import BLOB_DONE, BLOB_PROGRESS, BLOB_START, Progress, ProgressEvent
from ocikit.resolve import Image

if TYPE_CHECKING:
    from ocikit.registry.client import RegistryClient

_MAX_DOWNLOADS = 4


class LayerBlobs:
    """Hands out ``LayerInput``s; a context manager that deletes what it fetched."""

    def __init__(self, store: Store, client_factory: Callable[[], RegistryClient] | None,
                 progress: Progress) -> None:
        self.store = store
        self._client_factory = client_factory
        self._client: RegistryClient | None = None
        self.progress = progress
        self._files: dict[Digest, Path] = {}
        self.fetched: list[Descriptor] = []

    def __enter__(self) -> LayerBlobs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for path in self._files.values():
            for p in (path, path.with_name(path.name + ".etag")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        self._files.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _local(self, img: Image, desc: Descriptor) -> Layout | None:
        for layout in (img.blobs, self.store):
            if layout is not None and layout.has_blob(desc.digest):
                return layout
        return None

    def inputs(self, wanted: Sequence[Sequence[tuple[Image, Descriptor, Digest | None]]]
               ) -> list[LayerInput]:
        """One input per item of ``wanted``, each a list of equivalent sources.

        Sources are (image, layer descriptor, diff_id); a local one is
        preferred, else the first remote one is downloaded (all downloads
        at once, before any is read).
        """
        out: list[LayerInput | None] = []
        todo: dict[Digest, tuple[Image, Descriptor]] = {}
        for sources in wanted:
            chosen: LayerInput | None = None
            for img, desc, diff_id in sources:
                layout = self._local(img, desc)
                if layout is not None:
                    chosen = LayerInput(str(desc.digest), desc.media_type, diff_id,
                                        _opener(layout, desc.digest))
                    break
            if chosen is None:
                img, desc, _ = sources[0]
                if img.ref is None:
                    raise NotFoundError(f"layer {desc.digest} of {img.name} is not stored "
                                        "anywhere ocikit can read it")
                todo.setdefault(desc.digest, (img, desc))
            out.append(chosen)
        self._download(list(todo.values()))
        result: list[LayerInput] = []
        for sources, got in zip(wanted, out, strict=True):
            if got is None:
                _, desc, diff_id = sources[0]
                path = self._files[desc.digest]
                got = LayerInput(str(desc.digest), desc.media_type, diff_id, _file_opener(path))
            result.append(got)
        return result

    def _download(self, todo: list[tuple[Image, Descriptor]]) -> None:
        todo = [t for t in todo if t[1].digest not in self._files]
        if not todo:
            return
        if self._client is None:
            if self._client_factory is None:
                from ocikit.registry.client import RegistryClient as _Client

                self._client = _Client()
            else:
                self._client = self._client_factory()
        client = self._client
        self.store.tmp_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

        def fetch(item: tuple[Image, Descriptor]) -> None:
            img, desc = item
            assert img.ref is not None
            path = self.store.tmp_dir / f"layer-{tag}-{desc.digest.hex[:16]}"
            self._files[desc.digest] = path
            digest = str(desc.digest)
            self.progress(ProgressEvent(BLOB_START, img.name, digest, 0, desc.size))
            done = [0]

            def on_bytes(n: int) -> None:
                done[0] += n
                self.progress(ProgressEvent(BLOB_PROGRESS, img.name, digest, done[0],
                                            desc.size))

            client.fetch_blob(img.ref, desc, path, on_bytes)
            self.progress(ProgressEvent(BLOB_DONE, img.name, digest, desc.size, desc.size))
            self.fetched.append(desc)

        with ThreadPoolExecutor(max_workers=min(_MAX_DOWNLOADS, len(todo)),
                                thread_name_prefix="ocikit-layer") as pool:
            for f in [pool.submit(fetch, t) for t in todo]:
                f.result()


def _file_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def _opener(layout: Layout, digest: Digest) -> Callable[[], BinaryIO]:
    return lambda: layout.open_blob(digest)


__all__ = ["LayerBlobs"]
