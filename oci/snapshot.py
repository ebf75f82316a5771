"""Layer snapshots in the store: each layer unpacked once, keyed by chain ID.

``snapshots/<hex of chain id>/`` holds one layer in overlay form (whiteouts
as 0/0 character devices, ``trusted.overlay.opaque`` on opaque directories),
written over the snapshots below it so parent symlinks resolve as in the
flattened tree. A snapshot is unpacked into ``tmp/`` and renamed into place,
so it is complete or absent; a lock file per chain ID keeps two processes
from unpacking the same layer at once. Snapshots are never written again
once published: containers share them as read-only overlay lower layers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ocikit.errors import LayerError, StoreError
from ocikit.oci.descriptor import ImageConfig, Manifest
from ocikit.oci.digest import Digest
from ocikit.oci.layout import Store
from ocikit.oci.storeview import chain_id_texts

# Not typing.TYPE_CHECKING: importing typing costs ~15 ms at every container start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # The extractor is imported only when a layer has to be unpacked: a
    # container start over existing snapshots does not pay for it.
    from ocikit.oci.unpack import ProgressFn, WarnFn


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """image-spec config.md: ChainID(L0) = DiffID(L0),
    ChainID(Ln) = SHA256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    return [Digest.parse(c) for c in chain_id_texts([str(d) for d in diff_ids])]


def snapshot_path(store: Store, chain_id: Digest) -> Path:
    # The hex alone: overlayfs reads ':' and ',' in lowerdir as separators.
    return store.snapshots_dir / chain_id.hex


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_snapshots(store: Store, manifest: Manifest, config: ImageConfig, *,
                     progress: ProgressFn | None = None,
                     warn: WarnFn | None = None) -> list[Path]:
    """Unpack every layer not yet in ``snapshots/``; their paths, bottom layer first."""
    if len(manifest.layers) != len(config.diff_ids):
        from ocikit.oci.unpack import check_layers

        check_layers(manifest, config)
    store.snapshots_dir.mkdir(parents=True, exist_ok=True)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    n = len(manifest.layers)
    for i, (desc, chain) in enumerate(zip(manifest.layers, chain_ids(config.diff_ids),
                                          strict=True)):
        final = snapshot_path(store, chain)
        if not final.is_dir():
            lock = store.tmp_dir / f"snapshot-{chain.hex}.lock"
            with _locked(lock):
                if not final.is_dir():  # another process may have finished it meanwhile
                    report: Callable[[int], None] | None = None
                    if progress is not None:
                        report = _reporter(progress, i, n, str(desc.digest), desc.size)
                    _unpack_one(store, desc.media_type, desc.digest, config.diff_ids[i],
                                final, list(reversed(paths)), report, warn)
            with contextlib.suppress(OSError):
                lock.unlink()
        paths.append(final)
    return paths


def _reporter(progress: ProgressFn, i: int, n: int, digest: str, size: int
              ) -> Callable[[int], None]:
    done = 0

    from ocikit.oci.unpack import LayerProgress

    def report(k: int) -> None:
        nonlocal done
        done += k
        progress(LayerProgress(i, n, digest, size, done))
    return report


def _unpack_one(store: Store, media_type: str, digest: Digest, diff_id: Digest, final: Path,
                lowers: list[Path], progress: Callable[[int], None] | None,
                warn: WarnFn | None) -> None:
    from ocikit.oci.unpack import apply_layer_blob, remove_tree

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"snapshot-{final.name[:12]}-", dir=store.tmp_dir))
    except OSError as e:
        raise StoreError(f"cannot create a snapshot in {store.tmp_dir}: {e.strerror}") from None
    try:
        with store.open_blob(digest) as blob:
            apply_layer_blob(blob, media_type, str(digest), diff_id, tmp, lowers=lowers,
                             overlay=True, warn=warn, progress=progress)
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise
    if not final.is_dir():  # pragma: no cover - rename succeeded or raised
        raise LayerError(f"snapshot of layer {digest} vanished", layer=str(digest))
