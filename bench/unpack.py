"""Unpack: ``ocikit unpack`` vs ``umoci unpack`` vs GNU tar of the same layers in order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.common import OCIKIT, ocikit_env, report, run, timed
from bench.image import TAG, build, build_minbase


def _layers(layout: Path) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest).read_text())
    return [layout / "blobs" / "sha256" / ly["digest"].split(":")[1]
            for ly in manifest["layers"]]


def _scratch(work: Path) -> Path:
    # tmpfs when there is one: the disk's noise here is larger than the
    # difference between the tools.
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else work
    d = base / "ocikit-bench-unpack"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    return d


def bench_one(name: str, layout: Path, work: Path, rounds: int) -> None:
    scratch = _scratch(work)
    env = ocikit_env(work / "store")
    layers = _layers(layout)
    ours, umoci, tar = [], [], []
    try:
        for _ in range(rounds):
            dest = scratch / "ocikit"
            ours.append(timed([OCIKIT, "unpack", "--progress=none", f"oci:{layout}:{TAG}",
                               str(dest)], env))
            shutil.rmtree(dest)
            dest = scratch / "umoci"
            umoci.append(timed(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(dest)]))
            shutil.rmtree(dest)
            dest = scratch / "tar"
            dest.mkdir()

            def tar_all(dest: Path = dest) -> None:
                for blob in layers:
                    run(["tar", "-xzf", str(blob), "-C", str(dest)])

            import time

            t0 = time.perf_counter()
            tar_all()
            tar.append(time.perf_counter() - t0)
            shutil.rmtree(dest)
        report(f"unpack {name}", ours, umoci, "umoci unpack")
        report(f"unpack {name}", ours, tar, "tar -xzf per layer")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bench_unpack(work: Path, rounds: int) -> None:
    bench_one("usr image", build(), work, rounds)
    minbase = build_minbase()
    if minbase is None:
        print("unpack minbase: skipped (no bench/cache/minbase-root; see bench/image.py)")
    else:
        bench_one("debian minbase", minbase, work, rounds)
