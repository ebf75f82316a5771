"""SPEC's exit codes and output rules that hold for every command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fixtures.proxy import FaultProxy
from fixtures.seed import SeedSet
from tests.cli import assert_one_line_error, ocikit


def test_usage_errors_exit_2() -> None:
    assert_one_line_error(ocikit("no-such-command"), 2)
    assert_one_line_error(ocikit("pull"), 2)
    assert_one_line_error(ocikit("pull", "--platform", "linux", "busybox"), 2, "platform")
    assert_one_line_error(ocikit("inspect", "UPPER CASE"), 2, "invalid reference")


def test_debug_shows_the_traceback_only_when_asked() -> None:
    r = ocikit("inspect", "127.0.0.1:1/x:y", timeout=60)
    assert_one_line_error(r, 1, "127.0.0.1:1")
    r = ocikit("--debug", "inspect", "127.0.0.1:1/x:y", timeout=60)
    assert r.code == 1 and "Traceback" in r.err


def test_broken_stdout_pipe_ends_quietly(seeded_registry: SeedSet) -> None:
    assert ocikit("pull", "-q", seeded_registry.busybox.ref).code == 0
    # `ocikit inspect … | head -c 1`: the reader goes away after one byte.
    p = subprocess.Popen(f"{sys.executable} -m ocikit inspect {seeded_registry.busybox.ref} "
                         "| head -c 1 >/dev/null; echo ${PIPESTATUS[0]}",
                         shell=True, executable="/bin/bash", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert out.strip() in ("0", "141"), (out, err)


def test_ctrl_c_exits_130_and_keeps_the_partial(seeded_registry: SeedSet,
                                                fault_proxy: FaultProxy) -> None:
    img = seeded_registry.busybox
    layer = img.layer_digests[0]
    # Each attempt stalls after 100 kB (a cut would be retried): stop it with SIGINT.
    fault_proxy.add_fault("cut", path_contains=f"/blobs/{layer}", times=None, after=100_000)
    p = subprocess.Popen([sys.executable, "-m", "ocikit", "pull",
                          f"{fault_proxy.host}/{img.name}:{img.tag}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            layer in q.path for q in fault_proxy.requests):
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err
    store = os.environ["OCIKIT_STORE"]
    assert not os.path.exists(f"{store}/blobs/sha256/{layer.split(':')[1]}")
