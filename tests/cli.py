"""Run the ocikit CLI as a user does: a separate process, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.out}\nstderr: {self.err}"


def ocikit(*args: str, input: str | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> Result:
    r = subprocess.run([sys.executable, "-m", "ocikit", *args], capture_output=True, text=True,
                       input=input, timeout=timeout, env=env or dict(os.environ))
    return Result(r.returncode, r.stdout, r.stderr)


def assert_one_line_error(r: Result, code: int, *needles: str) -> None:
    """A failure is one clear line on stderr, never a traceback."""
    assert r.code == code, str(r)
    assert "Traceback" not in r.err, str(r)
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert lines, str(r)
    assert lines[-1].startswith("ocikit: ") or code == 2, str(r)
    for n in needles:
        assert n in r.err, f"{n!r} not in stderr: {r.err}"
