"""The package as users get it: a wheel holding only ``ocikit``, and every command importable."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.cli import ocikit

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_one_import_name(tmp_path: Path) -> None:
    # An editable install hides a missing `packages` entry; a wheel does not.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [wheel] = list((tmp_path / "dist").glob("ocikit-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
        z.extractall(tmp_path / "site")
    assert {t for t in tops if not t.endswith(".dist-info")} == {"ocikit"}
    # -S skips site's .pth files (where the editable install's finder hooks in);
    # the dependencies still come from site-packages, after the wheel.
    purelib = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}:{purelib}")
    code = ("import ocikit, ocikit.commands.cli as c, importlib;"
            "[importlib.import_module(v.split(':')[0]) for v in c.COMMANDS.values()];"
            "import ocikit.oci.runtime.containers as r; print(r.__file__)")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(tmp_path / "site"))


def test_every_command_has_help() -> None:
    r = ocikit("--help")
    assert r.code == 0, r
    from ocikit.commands.cli import COMMANDS

    for name in COMMANDS:
        assert name in r.out
        h = ocikit(name, "--help")
        assert h.code == 0 and "Usage:" in h.out, h


def test_no_top_level_oci_module_is_imported() -> None:
    r = subprocess.run([sys.executable, "-c",
                        "import sys, ocikit.commands.cli, ocikit.oci.layout, ocikit.pulling;"
                        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                        "('oci', 'registry', 'commands')))"],
                       capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r
