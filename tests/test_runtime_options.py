"""docker-run option rules: process from image config, -p, --memory, --cpus, -e."""

from __future__ import annotations

import json

import pytest

from ocikit.errors import UsageError
from ocikit.oci.descriptor import ImageConfig
from ocikit.oci.runtime.options import (
    ImageDefaults,
    merge_env,
    parse_cpus,
    parse_memory,
    parse_publish,
    process_from_image,
)
from ocikit.oci.runtime.spec import ContainerSpec, Limits, Mount, PortMapping, ProcessSpec


def config(**cfg) -> ImageDefaults:
    return ImageDefaults.of(ImageConfig.parse(json.dumps({
        "architecture": "amd64", "os": "linux", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": []}}).encode()))


@pytest.mark.parametrize("cfg", [
    {}, None, "not an object", {"Entrypoint": "/bin/sh -c", "Cmd": None},
    {"Entrypoint": ["/ep", 1], "Cmd": ["a"], "Env": ["A=1"], "WorkingDir": "/w",
     "User": "app:app", "Labels": {"a": "b", "n": 1}, "StopSignal": "SIGQUIT"},
    {"Env": None, "Labels": None, "WorkingDir": None, "User": None, "StopSignal": None},
    {"Cmd": [], "Entrypoint": []},
])
def test_image_defaults_read_the_config_as_image_config_does(cfg):
    """The container start path reads the config JSON itself (fastrun); the result
    must be what the image machinery makes of the same bytes."""
    obj = {"architecture": "amd64", "os": "linux", "config": cfg,
           "rootfs": {"type": "layers", "diff_ids": []}}
    parsed = ImageConfig.parse(json.dumps(obj).encode())
    assert ImageDefaults.from_json(obj) == ImageDefaults.of(parsed)


def test_entrypoint_and_cmd_rules():
    img = config(Entrypoint=["/ep"], Cmd=["a", "b"], Env=["PATH=/x", "A=1"],
                 WorkingDir="/srv", User="app")
    p = process_from_image(img)
    assert (p.args, p.cwd, p.user) == (("/ep", "a", "b"), "/srv", "app")
    assert process_from_image(img, command=["c"]).args == ("/ep", "c")
    assert process_from_image(img, entrypoint="sh").args == ("sh",)
    assert process_from_image(img, entrypoint="", command=["ls"]).args == ("ls",)
    p = process_from_image(img, env=["A=2", "B=3"], workdir="/w", user="0:0", tty=True)
    assert p.env == ("PATH=/x", "A=2", "B=3")
    assert (p.cwd, p.user, p.terminal) == ("/w", "0:0", True)
    with pytest.raises(UsageError):
        process_from_image(config())
    with pytest.raises(UsageError):
        process_from_image(img, workdir="rel")


def test_env_from_host():
    assert merge_env(["A=1"], ["H", "NOPE"], {"H": "v"}) == ("A=1", "H=v")
    with pytest.raises(UsageError):
        merge_env([], ["=x"], {})


def test_publish_memory_cpus():
    assert parse_publish("8080:80") == PortMapping(8080, 80)
    assert parse_publish("127.0.0.1:8080:80/tcp") == PortMapping(8080, 80, "127.0.0.1")
    assert parse_publish("[::1]:8080:80") == PortMapping(8080, 80, "::1")
    for bad in ("80", "a:b", "1:2:3:4", "8080:80/udp", "0:80", "70000:80"):
        with pytest.raises(UsageError):
            parse_publish(bad)
    assert parse_memory("64m") == 64 << 20
    assert parse_memory("1g") == 1 << 30
    assert parse_memory("10485760") == 10485760
    for bad in ("lots", "1k"):
        with pytest.raises(UsageError):
            parse_memory(bad)
    assert parse_cpus("1.5") == 1.5
    with pytest.raises(UsageError):
        parse_cpus("0")


def test_spec_json_round_trip():
    spec = ContainerSpec(
        process=ProcessSpec(args=("sh",), env=("A=1",), cwd="/w", user="app",
                            additional_gids=(5,), terminal=True, interactive=True),
        lower_dirs=("/s/a", "/s/b"), id="f" * 64, name="n", image="busybox", hostname="h",
        mounts=(Mount("/v", "/data", readonly=True, kind="volume", name="v"),),
        network="host", ports=(PortMapping(1, 2, "127.0.0.1"),),
        limits=Limits(memory=1 << 20, cpus=0.5, pids=10), stop_signal="SIGQUIT",
        stop_timeout=3, auto_remove=True, labels=(("k", "v"),))
    assert ContainerSpec.from_json(spec.to_json()) == spec
    # unknown keys are ignored, missing ones default
    assert ContainerSpec.from_dict({"process": {"args": ["x"]}, "future": 1}).network == "none"
