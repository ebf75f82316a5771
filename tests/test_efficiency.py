"""``ocikit efficiency``: wasted bytes and dive's score on an image built to known numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fixtures.images import LayoutWriter, dir, file, hardlink, opaque, whiteout
from fixtures.proxy import FaultProxy
from fixtures.registry import RegistryServer
from fixtures.seed import push, target_for
from tests.cli import assert_one_line_error, ocikit

LAYERS = [
    [dir("app"), file("app/big", b"a" * 1000), file("app/keep", b"k" * 100),
     dir("cache"), file("cache/a", b"x" * 300), file("cache/b", b"y" * 200),
     file("tmp.log", b"l" * 50), hardlink("app/big-link", "app/big")],
    # Rewrites app/big, deletes a file and a whole directory.
    [dir("app"), file("app/big", b"b" * 1000), whiteout("tmp.log"), whiteout("cache")],
    # An opaque app/ hides app/big (of layer 1) and app/keep (of layer 0).
    [dir("app"), opaque("app"), file("app/only", b"o" * 5), file("new", b"n" * 10)],
]
# Worked out by hand: see the module docstring of ocikit/oci/efficiency.py.
WASTED = [("/app/big", 1000, 0, 1, "overwritten"), ("/app/big", 1000, 1, 2, "removed"),
          ("/cache/a", 300, 0, 1, "removed"), ("/cache/b", 200, 0, 1, "removed"),
          ("/app/keep", 100, 0, 2, "removed"), ("/tmp.log", 50, 0, 1, "removed")]
# dive: per path (sightings, cumulative, smallest); a file's whiteout is a
# sighting of 0, a directory's whiteout one of the directory's total size.
#   app/big (2, 2000, 1000)  app/keep (1, 100, 100)  cache/a (1, 300, 300)
#   cache/b (1, 200, 200)    tmp.log (2, 50, 0)      cache (1, 500, 500)
#   app/only (1, 5, 5)       new (1, 10, 10)         app/big-link (1, 0, 0)
DIVE_SCORE = 2115 / 3165
DIVE_WASTED = 2000 + 50


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("efficiency") / "layout"
    w = LayoutWriter(root)
    w.image(LAYERS, tag="wasteful")
    w.image(LAYERS[:1], tag="lean")
    return root


def test_numbers_of_a_crafted_image(layout: Path) -> None:
    r = ocikit("efficiency", "--json", f"oci:{layout}:wasteful")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["Efficiency"] == pytest.approx(DIVE_SCORE)
    assert doc["DiveWastedBytes"] == DIVE_WASTED
    assert doc["LayerBytes"] == [1650, 1000, 15]
    assert doc["UserBytes"] == 1015
    assert doc["UserWastedRatio"] == pytest.approx(DIVE_WASTED / 1015)
    assert doc["WastedBytes"] == sum(w[1] for w in WASTED)
    got = [(w["Path"], w["Size"], w["Layer"], w["ByLayer"], w["How"]) for w in doc["Wasted"]]
    assert sorted(got) == sorted(WASTED)
    assert got[0][1] == 1000 and got[-1] == ("/tmp.log", 50, 0, 1, "removed")
    inefficient = {x["Path"]: (x["Count"], x["CumulativeSize"]) for x in doc["Inefficiencies"]}
    assert inefficient == {"/app/big": (2, 2000), "/tmp.log": (2, 50)}
    assert doc["Fetched"] == []

    r = ocikit("efficiency", "--top", "2", f"oci:{layout}:wasteful")
    assert r.code == 0, r
    assert f"{DIVE_SCORE * 100:.4f} %" in r.out
    assert "2650 (2.65kB)" in r.out
    rows = [ln for ln in r.out.splitlines() if ln.endswith("/app/big")]
    assert len(rows) == 2  # --top 2: the two largest


def test_lean_image_scores_one(layout: Path) -> None:
    r = ocikit("efficiency", "--json", "--min-efficiency", "1", f"oci:{layout}:lean")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["Efficiency"] == 1.0 and doc["WastedBytes"] == 0 and doc["Wasted"] == []


def test_min_efficiency_sets_the_exit_code(layout: Path) -> None:
    ref = f"oci:{layout}:wasteful"
    r = ocikit("efficiency", "--min-efficiency", "0.6", ref)
    assert r.code == 0, r
    r = ocikit("efficiency", "--min-efficiency", "0.7", ref)
    assert_one_line_error(r, 1, "efficiency 0.6682 is under 0.7")
    assert "Efficiency:" in r.out  # the report is still printed
    r = ocikit("efficiency", "--min-efficiency", "1.5", ref)
    assert r.code == 2, r


def test_remote_image_is_read_and_nothing_kept(layout: Path, registry: RegistryServer,
                                               fault_proxy: FaultProxy,
                                               tmp_path: Path) -> None:
    img = push(layout, target_for(registry, tmp_path), "efficiency/app", "wasteful", tmp_path,
               src_tag="wasteful")
    r = ocikit("efficiency", "--json", "--progress=none",
               f"{fault_proxy.host}/efficiency/app:wasteful")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["Efficiency"] == pytest.approx(DIVE_SCORE)
    assert sorted(x["Digest"] for x in doc["Fetched"]) == sorted(img.layer_digests)
    store = Path(os.environ["OCIKIT_STORE"])
    assert not list((store / "blobs" / "sha256").glob("*"))
    assert not [p for p in (store / "tmp").iterdir() if p.name.startswith("layer-")]
