"""Run ocikit and the anchor tools side by side on the same images; print ratios.

    .venv/bin/python bench/run.py [pull push unpack diff run] [--rounds N]

Each benchmark alternates the tools within one run (so drift hits both)
and prints the median wall time of each and the median ratio. Timings are
whole processes started from the venv's ``bin/ocikit``, as a user runs them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.common import OCIKIT, install, ocikit_env, report, run, timed  # noqa: E402
from bench.containers import bench_run  # noqa: E402
from bench.image import CACHE, TAG, build  # noqa: E402
from bench.unpack import bench_unpack  # noqa: E402
from fixtures.registry import RegistryServer  # noqa: E402


def seeded_registry(work: Path) -> tuple[RegistryServer, str]:
    """A registry holding the benchmark image (pushed once per registry dir)."""
    image = build()
    reg = RegistryServer(CACHE / "registry").start()
    ref = f"{reg.host}/bench/usr:{TAG}"
    run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{image}:{TAG}", f"docker://{ref}"])
    return reg, ref


def bench_pull(work: Path, rounds: int) -> None:
    reg, ref = seeded_registry(work)
    try:
        ours, theirs = [], []
        for _ in range(rounds):
            store = work / "store"
            env = ocikit_env(store, OCIKIT_CONFIG=str(work / "none"))
            ours.append(timed([OCIKIT, "pull", "-q", ref], env))
            shutil.rmtree(store)
            dest = work / "skopeo-oci"
            theirs.append(timed(["skopeo", "copy", "--src-tls-verify=false",
                                 f"docker://{ref}", f"oci:{dest}:{TAG}"]))
            shutil.rmtree(dest)
        report("pull", ours, theirs, "skopeo copy docker:// oci:")
    finally:
        reg.stop()


def bench_push(work: Path, rounds: int) -> None:
    """``ocikit push oci:`` vs ``skopeo copy oci: docker://`` into an empty registry.

    Each round gets a registry of its own, so neither tool finds a blob there
    (skopeo's blob-info cache would otherwise mount from an earlier round).
    """
    image = build()
    ours, theirs = [], []
    env = ocikit_env(work / "store", OCIKIT_CONFIG=str(work / "none"))
    for i in range(rounds):
        for tool in (("ocikit", "skopeo") if i % 2 == 0 else ("skopeo", "ocikit")):
            reg = RegistryServer(work / f"push-{i}-{tool}" / "storage").start()
            try:
                ref = f"{reg.host}/bench/push-{tool}-{i}:{TAG}"
                if tool == "ocikit":
                    ours.append(timed([OCIKIT, "push", "-q", f"oci:{image}:{TAG}", ref], env))
                else:
                    theirs.append(timed(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                                         f"oci:{image}:{TAG}", f"docker://{ref}"]))
            finally:
                reg.stop()
                shutil.rmtree(reg.root.parent, ignore_errors=True)
    report("push", ours, theirs, "skopeo copy oci: docker://")


def bench_diff(work: Path, rounds: int) -> None:
    """``ocikit diff --files`` vs ``umoci unpack`` of both images and ``diff -r``.

    Two ~500 MB images sharing five base layers, each with a top layer of its
    own (bench/diff_image.py): ocikit streams the base headers once and the
    two top layers; by hand, both images are unpacked and compared.
    """
    from bench.diff_image import build_pair

    layout = build_pair()
    env = ocikit_env(work / "store", OCIKIT_CONFIG=str(work / "none"))
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(timed([OCIKIT, "diff", "--files", f"oci:{layout}:a", f"oci:{layout}:b"],
                          env))
        t0 = time.perf_counter()
        for tag in ("a", "b"):
            run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(work / f"unpacked-{tag}")])
        r = subprocess.run(["diff", "-r", "--no-dereference", str(work / "unpacked-a" / "rootfs"),
                            str(work / "unpacked-b" / "rootfs")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode not in (0, 1):  # 1: the trees differ, as they should
            raise SystemExit(f"diff -r failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        theirs.append(time.perf_counter() - t0)
        for tag in ("a", "b"):
            shutil.rmtree(work / f"unpacked-{tag}")
    report("diff --files", ours, theirs, "umoci unpack x2 + diff -r")


BENCHES: dict[str, Callable[[Path, int], None]] = {
    "pull": bench_pull, "push": bench_push, "unpack": bench_unpack, "diff": bench_diff,
    "run": bench_run,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", default=list(BENCHES), choices=[*BENCHES, []])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    install()
    for name in args.which or list(BENCHES):
        # A fresh work folder per benchmark: each may start servers in it.
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            BENCHES[name](Path(tmp).absolute(), args.rounds)


if __name__ == "__main__":
    main()
