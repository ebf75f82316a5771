"""The container start path (commands/fastrun.py) against the full command line.

``ocikit run``/``create`` of a stored image skip click and the typed image
model; whatever they do must be what the full path does. The full path is
reached here by putting a global option first (``ocikit --store DIR run``),
which the start path never takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from fixtures.images import LayoutWriter, busybox_entries, file
from ocikit.commands import runflags
from ocikit.commands.containers import create as create_cmd
from ocikit.commands.containers import run as run_cmd
from ocikit.commands.fastrun import stored_name
from ocikit.oci.reference import Reference
from tests.cli import assert_one_line_error, ocikit

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root here")

ARGVS = [
    ["busybox"],
    ["--rm", "busybox", "true"],
    ["--rm", "-it", "busybox", "sh", "-c", "echo hi"],
    ["-ite", "A=1", "busybox"],
    ["-eA=1", "-e", "B", "--env=C=3", "busybox", "env"],
    ["--name", "x", "--name=y", "-h", "host", "-w", "/tmp", "-u", "1:2", "busybox"],
    ["--network", "host", "--memory", "64m", "-m", "32m", "--cpus", "0.5", "busybox"],
    ["--pids-limit", "12", "--pids-limit=-1", "busybox"],
    ["-v", "data:/data", "-v/tmp:/x:ro", "-p", "8080:80", "--publish=127.0.0.1:1:2", "busybox"],
    ["--entrypoint", "", "busybox", "ls", "-l", "--", "-x"],
    ["--entrypoint", "-x", "busybox"],  # a value may start with a dash
    ["--", "busybox", "--rm"],
    ["busybox", "--rm", "-e", "X"],  # after the image everything is the command
    ["--platform", "linux/amd64", "busybox"],
    ["--env-file", "/etc/hostname", "busybox"],
    ["-d", "--rm", "busybox"],
    ["-dit", "busybox"],
]

REFUSED = [
    [], ["--rm"], ["--help"], ["--nope", "busybox"], ["-x", "busybox"], ["--rm=yes", "busybox"],
    ["--network", "bridge", "busybox"], ["--network=bridge", "busybox"],
    ["--pids-limit", "many", "busybox"],
    ["--env-file", "/no/such/file", "busybox"], ["--env-file", "/tmp", "busybox"],
    ["-e"], ["-e", "A=1"], ["-tX", "busybox"],
]
# Click accepts these; the start path leaves them to it rather than copy int()'s rules.
DEFERRED = [["--pids-limit", "1_0", "busybox"], ["--pids-limit", " 7", "busybox"]]


def click_parse(cmd: click.Command, argv: list[str]) -> dict[str, object] | None:
    try:
        ctx = cmd.make_context(cmd.name, list(argv), resilient_parsing=False)
    except click.exceptions.Exit:
        return None
    except click.UsageError:
        return None
    return dict(ctx.params)


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_flags_parse_as_click_does(argv: list[str]) -> None:
    for cmd, flags in ((run_cmd, (runflags.DETACH, *runflags.RUN_FLAGS)),
                       (create_cmd, runflags.RUN_FLAGS)):
        if cmd is create_cmd and any(a.startswith("-d") for a in argv):
            continue
        want = click_parse(cmd, argv)
        got = runflags.parse(argv, flags)
        assert want is not None and got is not None
        params = dict(got.values, image=got.image, command=got.command)
        assert params == want


@pytest.mark.parametrize("argv", REFUSED, ids=lambda a: " ".join(a) or "(nothing)")
def test_what_click_refuses_goes_to_click(argv: list[str]) -> None:
    assert click_parse(run_cmd, argv) is None
    assert runflags.parse(argv, (runflags.DETACH, *runflags.RUN_FLAGS)) is None


@pytest.mark.parametrize("argv", DEFERRED, ids=" ".join)
def test_unusual_values_go_to_click(argv: list[str]) -> None:
    assert click_parse(run_cmd, argv) is not None
    assert runflags.parse(argv, (runflags.DETACH, *runflags.RUN_FLAGS)) is None


@pytest.mark.parametrize("text", [
    "busybox", "busybox:1.36", "library/busybox", "docker.io/library/busybox:latest",
    "index.docker.io/library/busybox", "localhost/app", "localhost:5000/a/b:c",
    "127.0.0.1:5000/x_y/z-1:v1.2", "ghcr.io/o/p", "my.reg/deep/ly/nested:t",
])
def test_stored_names_are_the_references_full_names(text: str) -> None:
    assert stored_name(text) == str(Reference.parse(text))


@pytest.mark.parametrize("text", [
    "", " busybox", "Busybox", "busybox:", "busybox@sha256:" + "a" * 64, "oci:/tmp/x:1",
    "docker://busybox", "docker-archive:/tmp/x.tar", "a" * 2000, "bad/-name",
])
def test_other_references_go_to_the_full_path(text: str) -> None:
    assert stored_name(text) is None


# -- against real containers ----------------------------------------------------
@pytest.fixture
def app_image(tmp_path: Path) -> str:
    """A stored image whose config sets everything a container takes from it."""
    w = LayoutWriter(tmp_path / "appimg")
    w.image([busybox_entries(), [file("srv/app/hello", "hi\n")]], tag="v1", config={
        "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $GREETING from $(pwd) as $(id -u)"],
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"], "WorkingDir": "/srv/app",
        "User": "1000", "Labels": {"org.example": "yes"}, "StopSignal": "SIGQUIT"})
    assert ocikit("pull", "-q", f"oci:{tmp_path / 'appimg'}:v1").code == 0
    return "localhost/appimg:v1"


def full(*args: str) -> list[str]:
    """Arguments that make ``ocikit`` take the full (click) path."""
    return ["--store", os.environ["OCIKIT_STORE"], *args]


def config_of(name: str) -> dict[str, object]:
    r = ocikit("container", "inspect", name)
    assert r.code == 0, r
    cid = json.loads(r.out)[0]["Id"]
    path = Path(os.environ["OCIKIT_STORE"], "containers", cid, "config.json")
    spec: dict[str, object] = json.loads(path.read_text())
    for key in ("id", "name", "hostname", "created", "upper_dir", "work_dir", "merged_dir",
                "etc_dir"):
        spec.pop(key)
    return spec


@needs_root
def test_both_paths_make_the_same_container(app_image: str, tmp_path: Path) -> None:
    opts = ["-e", "X=1", "-v", "vol:/data", "-v", f"{tmp_path}:/host:ro", "-p", "8080:80",
            "--memory", "64m", "--pids-limit", "50", "-w", "/tmp", "-t"]
    assert ocikit("create", "--name", "fast", *opts, app_image, "id").code == 0
    assert ocikit(*full("create", "--name", "slow", *opts, app_image, "id")).code == 0
    assert config_of("fast") == config_of("slow")
    assert ocikit("create", "--name", "fast2", app_image).code == 0
    assert ocikit(*full("create", "--name", "slow2", app_image)).code == 0
    fast = config_of("fast2")
    assert fast == config_of("slow2")
    assert fast["stop_signal"] == "SIGQUIT"
    r = ocikit("run", "--rm", app_image)
    assert (r.code, r.out) == (0, "hello from /srv/app as 1000\n"), r


@needs_root
def test_a_start_imports_neither_click_nor_the_image_model_nor_dataclasses(app_image: str) -> None:
    assert ocikit("create", app_image).code == 0  # the first one unpacks the snapshots

    def imports(*args: str) -> set[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        r = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                           text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}

    # what the interpreter loads anyway (an editable install's finder loads pathlib)
    baseline = imports("-c", "pass")
    imported = imports("-m", "ocikit", "run", "--rm", app_image, "true") - baseline
    assert "ocikit.commands.fastrun" in imported
    heavy = {"click", "typing", "pathlib", "dataclasses", "requests", "tempfile",
             "ocikit.oci.descriptor", "ocikit.oci.layout", "ocikit.oci.reference",
             "ocikit.resolve", "ocikit.progress"}
    assert not heavy & imported, sorted(heavy & imported)


@needs_root
def test_what_the_start_path_cannot_do_the_full_path_does(app_image: str,
                                                          tmp_path: Path) -> None:
    store = Path(os.environ["OCIKIT_STORE"])
    # a platform choice, a layout source, options click must explain
    assert ocikit("run", "--rm", "--platform", "linux/amd64", app_image, "true").code == 0
    w = LayoutWriter(tmp_path / "lay")
    w.image([busybox_entries()], tag="t")
    assert ocikit("run", "--rm", f"oci:{tmp_path / 'lay'}:t", "echo", "ok").out == "ok\n"
    r = ocikit("run", "--rm", "--network", "bridge", app_image)
    assert r.code == 2 and "bridge" in r.err, r
    assert "Usage: ocikit run" in ocikit("run", "--help").out
    # snapshots gone (as after a gc): the full path unpacks them again
    snapshots = [p for p in (store / "snapshots").iterdir()]
    for p in snapshots:
        subprocess.run(["rm", "-rf", str(p)], check=True)
    r = ocikit("run", "--rm", app_image)
    assert r.code == 0 and r.out.startswith("hello"), r
    # a corrupt manifest is found and reported by the full path, never run
    entry = json.loads((store / "index.json").read_text())["manifests"]
    digest = next(m["digest"] for m in entry
                  if m["annotations"]["org.opencontainers.image.ref.name"] == app_image)
    blob = store / "blobs" / "sha256" / digest.split(":")[1]
    blob.write_bytes(blob.read_bytes().replace(b'"layers"', b'"layers" '))
    r = ocikit("run", "--rm", app_image, "true")
    assert_one_line_error(r, 125, "corrupt")
    # an unknown name: the full path tries the registry (a docker.io name cannot resolve
    # here), and fails as before
    r = ocikit("create", "localhost:1/none:here")
    assert_one_line_error(r, 125)
