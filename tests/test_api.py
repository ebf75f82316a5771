"""The Python API does what the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ocikit
from fixtures.seed import SeedSet


def test_pull_inspect_unpack_run(seeded_registry: SeedSet, tmp_path: Path) -> None:
    img = seeded_registry.layers
    result = ocikit.pull(img.ref)
    assert str(result.digest) == img.digest and result.downloaded == len(img.layer_digests)
    info = ocikit.inspect(img.ref)
    assert info.source == "store" and str(info.digest) == img.digest
    assert [str(d.digest) for d in info.parsed.layers] == img.layer_digests
    ocikit.unpack(img.ref, tmp_path / "rootfs")
    assert (tmp_path / "rootfs" / "data" / "new").read_text() == "from the top layer\n"
    assert not (tmp_path / "rootfs" / "etc" / "removed").exists()
    if os.geteuid() == 0:
        assert ocikit.run(img.ref, ["sh", "-c", "exit 5"]) == 5
    with pytest.raises(ocikit.NotFoundError):
        ocikit.pull(f"{img.host}/{img.name}:missing")
    with pytest.raises(ocikit.UsageError):
        ocikit.pull("Bad Ref")
    with pytest.raises(AttributeError):
        _ = getattr(ocikit, "nothing")  # noqa: B009 - the module-level __getattr__ path


def test_diff_and_efficiency(seeded_registry: SeedSet) -> None:
    a, b = seeded_registry.busybox, seeded_registry.layers
    d = ocikit.diff_images(a.ref, b.ref, files=True)
    assert d.files is not None
    added = {c.path for c in d.files.of("added")}
    assert "/data/new" in added or "data/new" in added, added
    report = ocikit.image_efficiency(b.ref)
    assert 0 < report.result.score <= 1
