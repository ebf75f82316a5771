"""Run ocikit and the anchor tools side by side on the same images; print ratios.

    .venv/bin/python bench/run.py [pull ...] [--rounds N]

Each benchmark alternates the tools within one run (so drift hits both)
and prints the median wall time of each and the median ratio. Timings are
whole processes started from the venv's ``bin/ocikit``, as a user runs them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.image import CACHE, TAG, build  # noqa: E402
from fixtures.registry import RegistryServer  # noqa: E402

OCIKIT = str(Path(sys.executable).parent / "ocikit")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    run(cmd, env)
    return time.perf_counter() - t0


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def report(name: str, ours: list[float], theirs: list[float], anchor: str) -> None:
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(f"{name}: ocikit median {statistics.median(ours):.3f}s, {anchor} median "
          f"{statistics.median(theirs):.3f}s, ratio {statistics.median(ratios):.2f}x "
          f"(rounds {len(ours)}; per-round {', '.join(f'{r:.2f}' for r in ratios)})",
          flush=True)


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
            env = dict(os.environ, OCIKIT_STORE=str(store), OCIKIT_CONFIG=str(work / "none"))
            ours.append(timed([OCIKIT, "pull", "-q", ref], env))
            shutil.rmtree(store)
            dest = work / "skopeo-oci"
            theirs.append(timed(["skopeo", "copy", "--src-tls-verify=false",
                                 f"docker://{ref}", f"oci:{dest}:{TAG}"]))
            shutil.rmtree(dest)
        report("pull", ours, theirs, "skopeo copy docker:// oci:")
    finally:
        reg.stop()


BENCHES: dict[str, Callable[[Path, int], None]] = {"pull": bench_pull}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", default=list(BENCHES), choices=[*BENCHES, []])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for name in args.which or list(BENCHES):
            BENCHES[name](Path(tmp), args.rounds)


if __name__ == "__main__":
    main()
