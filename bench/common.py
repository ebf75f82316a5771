"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / "cache" / "venv"
# A regular (not editable) install, as users have it: the editable install's
# import hook alone costs ~25 ms at every start.
OCIKIT = str(VENV / "bin" / "ocikit")


def install() -> None:
    """(Re)install the working tree into the benchmark venv."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(ROOT)], check=True)


def ocikit_env(store: Path, **extra: str) -> dict[str, str]:
    """The environment ocikit runs in: its own store, and bytecode caching on.

    This machine sets PYTHONDONTWRITEBYTECODE, which would make every run
    recompile every module; a user's install has its .pyc files.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(OCIKIT_STORE=str(store), **extra)
    return env


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    run(cmd, env)
    return time.perf_counter() - t0


def report(name: str, ours: list[float], theirs: list[float], anchor: str) -> float:
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    ratio = statistics.median(ratios)
    print(f"{name}: ocikit median {statistics.median(ours):.3f}s, {anchor} median "
          f"{statistics.median(theirs):.3f}s, ratio {ratio:.2f}x "
          f"(rounds {len(ours)}; per-round {', '.join(f'{r:.2f}' for r in ratios)})",
          flush=True)
    return ratio
