"""One layer blob as its uncompressed tar stream, with its diff_id verified.

The compression is chosen by media type and checked against the magic bytes
(a gzip-typed blob that is not gzip is an error, not a guess). Multi-member
gzip and multi-frame zstd are read whole. The diff_id covers the entire
uncompressed stream, including anything after the tar end-of-archive blocks,
so ``verify()`` reads to EOF before comparing (image-spec config.md).

Decompression runs in a helper thread: zlib, isal and zstandard release the
GIL while inflating, so it overlaps with the extractor's system calls.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import types
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import zstandard

from ocikit.errors import LayerError
from ocikit.oci import mediatypes as mt
from ocikit.oci.digest import Digest

_inflate_mod: types.ModuleType
try:  # ISA-L inflates gzip 2-3x faster than zlib; optional
    from isal import isal_zlib as _inflate_mod  # type: ignore[import-not-found,no-redef,unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    _inflate_mod = zlib

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IN_CHUNK = 1 << 20
# Bounds the memory one compressed chunk may inflate to (a zip bomb stays a
# stream, never a buffer).
_OUT_MAX = 4 << 20
_QUEUE_DEPTH = 8


def compression_of(media_type: str) -> str | None:
    """'gzip', 'zstd', 'none', or None when the media type does not say."""
    if media_type in mt.GZIP_LAYERS:
        return "gzip"
    if media_type in mt.ZSTD_LAYERS:
        return "zstd"
    if media_type in mt.PLAIN_LAYERS:
        return "none"
    return None


def _sniff(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Prefixed:
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:  # a short read: every reader here loops until b""
            head, self._head = self._head, b""
            return head
        return self._rest.read(n)


def _gunzip(src: _Prefixed, what: str) -> Iterator[bytes]:
    d: Any = _inflate_mod.decompressobj(31)
    started = False
    while True:
        data = src.read(_IN_CHUNK)
        if not data:
            break
        while data:
            if d.eof:
                # Another gzip member follows (pigz, concatenated layers).
                if not data.startswith(GZIP_MAGIC):
                    raise LayerError(f"{what}: garbage after the gzip stream")
                d = _inflate_mod.decompressobj(31)
            started = True
            try:
                out = d.decompress(data, _OUT_MAX)
            except zlib.error as e:
                raise LayerError(f"{what}: corrupt gzip stream ({e})") from None
            except Exception as e:  # isal raises its own error type
                raise LayerError(f"{what}: corrupt gzip stream ({e})") from None
            if out:
                yield out
            data = d.unconsumed_tail if not d.eof else d.unused_data
    if not started or not d.eof:
        raise LayerError(f"{what}: truncated gzip stream")


def _unzstd(src: Any, what: str) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(
        src, read_size=_IN_CHUNK, read_across_frames=True, closefd=False)
    try:
        while True:
            out = reader.read(_OUT_MAX)
            if not out:
                break
            yield out
    except zstandard.ZstdError as e:
        raise LayerError(f"{what}: corrupt zstd stream ({e})") from None


def _plain(src: _Prefixed) -> Iterator[bytes]:
    while True:
        data = src.read(_IN_CHUNK)
        if not data:
            return
        yield data


class LayerStream(io.RawIOBase):
    """The uncompressed bytes of one layer; ``verify()`` checks the diff_id.

    Use it as a context manager so the decompressing thread always ends.
    """

    def __init__(self, blob: BinaryIO, media_type: str, diff_id: Digest | None, *,
                 layer: str, threaded: bool = True,
                 progress: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.layer = layer
        self._what = f"layer {layer}"
        self._diff_id = diff_id
        self._hash = hashlib.new(diff_id.algorithm if diff_id else "sha256")
        self.count = 0
        self._progress = progress
        head = blob.read(4)
        sniffed = _sniff(head)
        declared = compression_of(media_type)
        if declared is not None and declared != sniffed:
            raise LayerError(f"{self._what}: media type {media_type} says {declared} "
                                 f"but the content is {sniffed}", layer=layer)
        self.compression = declared or sniffed
        src = _Prefixed(head, blob)
        if self.compression == "gzip":
            self._chunks = _gunzip(src, self._what)
        elif self.compression == "zstd":
            self._chunks = _unzstd(src, self._what)
        else:
            self._chunks = _plain(src)
        self._buf = memoryview(b"")
        self._queue: queue.Queue[bytes | BaseException | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._eof = False
        if threaded and self.compression != "none":
            self._queue = queue.Queue(_QUEUE_DEPTH)
            self._thread = threading.Thread(target=self._pump, name="layer-inflate",
                                            daemon=True)
            self._thread.start()

    # -- producer side -----------------------------------------------------
    def _pump(self) -> None:
        assert self._queue is not None
        item: bytes | BaseException | None
        try:
            for chunk in self._chunks:
                # Hash here: hashlib releases the GIL too.
                self._hash.update(chunk)
                while not self._stop.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item = None
        except BaseException as e:  # handed to the reader, raised there
            item = e
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _next_chunk(self) -> bytes | None:
        if self._eof:
            return None
        if self._queue is None:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                return None
            except LayerError as e:
                e.layer = self.layer
                raise
            self._hash.update(chunk)
        else:
            got = self._queue.get()
            if isinstance(got, BaseException):
                self._eof = True
                if isinstance(got, LayerError):
                    got.layer = self.layer
                    raise got
                if isinstance(got, OSError):
                    raise LayerError(f"{self._what}: read failed: {got}",
                                     layer=self.layer) from got
                raise got
            if got is None:
                self._eof = True
                return None
            chunk = got
        self.count += len(chunk)
        if self._progress is not None:
            self._progress(len(chunk))
        return chunk

    # -- RawIOBase ---------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = self._next_chunk()
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def verify(self) -> Digest:
        """Read to EOF and compare with the diff_id; returns the digest seen."""
        if self.closed and not self._eof:
            # The inflate thread is gone: waiting on its queue would never end.
            raise LayerError(f"{self._what}: verified after the stream was closed",
                             layer=self.layer)
        self._buf = memoryview(b"")
        while self._next_chunk() is not None:
            pass
        got = Digest(self._hash.name, self._hash.hexdigest())
        if self._diff_id is not None and got != self._diff_id:
            raise LayerError(f"{self._what}: diff_id mismatch (config says {self._diff_id}, "
                             f"content is {got})", layer=self.layer)
        return got

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        super().close()


def open_layer(blob: BinaryIO, media_type: str, diff_id: Digest | None, *, layer: str,
               progress: Callable[[int], None] | None = None) -> LayerStream:
    """The uncompressed stream of a layer blob (a context manager)."""
    try:
        return LayerStream(blob, media_type, diff_id, layer=layer, progress=progress)
    except OSError as e:
        raise LayerError(f"layer {layer}: cannot read: {e}", layer=layer) from None
